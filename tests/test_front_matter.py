"""Issue 14: front matter is read strictly, and each mistake is said once, with its file, its line and the fix.

Real `publisher ingest` and `publisher run --once` processes on a fresh copy of the project (the sample content plus
the files a test adds). A broken publication is reported and skipped; the command still exits 0 and the sample
publishes (content/README.md).
"""

from __future__ import annotations

import re
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

from publisher.models import suggest_topic

from .test_delivery_faults import publisher

SKIPPED = "  skipped source 'content': "


def write(project: Path, name: str, text: str) -> None:
    path = project / "content" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")


def skipped_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith(SKIPPED)]


def toml_publication(title: str, *, topics: str = '["security-cooperation"]', date: str | None = "2024-05-01") -> str:
    lines = ["+++", f'title = "{title}"'] + ([f"date = {date}"] if date else []) + [f"topics = {topics}", 'content_type = "Commentary"', "+++"]
    return "\n".join(lines) + "\nThe body.\n"


def test_a_misspelt_topic_is_refused_with_its_line_and_the_likely_slug(project: Path) -> None:
    write(project, "publications/x.md", toml_publication("Misspelt", topics='["securty-cooperation"]'))  # topics: line 4
    proc = publisher(project, "ingest")
    assert proc.returncode == 0, proc.stderr
    assert "ingest: 22 new, 0 updated, 0 unchanged, 1 skipped" in proc.stdout
    assert skipped_lines(proc.stderr) == [
        f"{SKIPPED}publications/x.md:4: unknown topic 'securty-cooperation'; did you mean 'security-cooperation'?"]
    assert '"Misspelt"' not in proc.stdout


def test_a_topic_with_no_close_match_lists_the_known_ones_and_a_new_topic_file_makes_it_known(project: Path) -> None:
    write(project, "publications/x.md", toml_publication("Space", topics='["security-cooperation", "space"]'))
    proc = publisher(project, "ingest")
    assert skipped_lines(proc.stderr) == [(f"{SKIPPED}publications/x.md:4: unknown topic 'space'; known topics: security-cooperation; "
                                           "or create topics/space.md (with a name) to add it")], proc.stderr
    # The fix the message gives: the topic file comes after publications/ in the folder, and is read first.
    write(project, "topics/space.md", '+++\nname = "Space"\n+++\n')
    proc = publisher(project, "ingest")
    assert proc.returncode == 0 and skipped_lines(proc.stderr) == [], proc.stderr
    assert "ingest: 1 new, 0 updated, 22 unchanged, 0 skipped" in proc.stdout
    assert '  new: "Space" (publications/x.md)' in proc.stdout


def test_a_topic_the_store_knows_is_known_without_its_file(project: Path) -> None:
    write(project, "topics/archive.md", '+++\nname = "Archive"\n+++\n')
    assert publisher(project, "ingest").returncode == 0
    (project / "content" / "topics" / "archive.md").unlink()  # its topic stays in the store, as its publications do
    write(project, "publications/x.md", toml_publication("Archived", topics='["archive"]'))
    proc = publisher(project, "ingest")
    assert skipped_lines(proc.stderr) == [] and '  new: "Archived" (publications/x.md)' in proc.stdout, proc.stdout + proc.stderr


def test_a_missing_date_is_refused_with_the_fix_in_the_files_own_syntax(project: Path) -> None:
    write(project, "publications/undated.md", toml_publication("Undated", date=None))
    write(project, "publications/undated-yaml.md", "---\ntitle: Undated in YAML\ncontent_type: Report\ndate:\n---\nBody.\n")
    today = datetime.now(ZoneInfo("UTC")).date().isoformat()  # [site].timezone of the sample config
    proc = publisher(project, "ingest")
    assert proc.returncode == 0, proc.stderr
    assert "22 new, 0 updated, 0 unchanged, 2 skipped" in proc.stdout
    assert skipped_lines(proc.stderr) == [
        f"{SKIPPED}publications/undated-yaml.md:4: missing required key 'date'; add date: {today} (the day it was published) to the front matter",
        f"{SKIPPED}publications/undated.md:1: missing required key 'date'; add date = {today} (the day it was published) to the front matter",
    ]
    assert "Undated" not in proc.stdout


def test_yaml_errors_name_the_line_in_the_file(project: Path) -> None:
    head = "---\ntitle: Broken\ndate: 2024-05-01\ncontent_type: Commentary\n"  # lines 1-4
    write(project, "publications/a-colon.md", head + "summary: one: two\n---\nBody.\n")  # line 5
    write(project, "publications/b-date.md", head.replace("2024-05-01", "2024-02-30") + "---\nBody.\n")  # line 3
    write(project, "publications/c-quote.md", head + 'summary: "never closed\nauthors: [A]\n---\nBody.\n')  # opened on line 5
    write(project, "publications/d-list.md", head + "topics: [security-cooperation\nauthors: [A]\n---\nBody.\n")  # opened on line 5
    proc = publisher(project, "ingest")
    assert proc.returncode == 0, proc.stderr
    assert skipped_lines(proc.stderr) == [
        f"{SKIPPED}publications/a-colon.md:5: invalid YAML front matter: mapping values are not allowed here",
        f"{SKIPPED}publications/b-date.md:3: invalid YAML front matter: '2024-02-30' is not a date (day is out of range for month)",
        f"{SKIPPED}publications/c-quote.md:5: invalid YAML front matter: while scanning a quoted scalar from this line, found unexpected end of stream",
        (f"{SKIPPED}publications/d-list.md:6: invalid YAML front matter: expected ',' or ']', but got ':' "
         "(while parsing a flow sequence that starts on line 5)"),
    ]


def test_each_error_and_warning_is_said_once_by_ingest_and_by_run_once(project: Path) -> None:
    write(project, "publications/x.md", toml_publication("Misspelt", topics='["securty-cooperation"]'))
    write(project, "publications/z.md", "---\ntitle: Z\ndate: 2024-05-01\ncontent_type: Commentary: extra\n---\n")
    write(project, "publications/w.md", toml_publication("No alt").replace("+++\nThe", '[image]\nsrc = "https://www.example.org/w.png"\n+++\nThe'))
    for args in (["ingest"], ["run", "--once"]):
        proc = publisher(project, *args)
        assert proc.returncode == 0, proc.stderr
        said = proc.stdout + proc.stderr
        assert "2 skipped" in proc.stdout, said
        for what in ("publications/x.md:4: unknown topic", "publications/z.md:4: invalid YAML", "publications/w.md: image has no alt text"):
            assert said.count(what) == 1, f"{args}: {what!r} said {said.count(what)} times:\n{said}"
        assert "ERROR" not in said and "publisher.ingest" not in said  # the report is printed, not logged as well


def test_ingest_lists_new_publications_by_title_and_file_newest_first_and_caps_the_list(project: Path) -> None:
    for i in range(3):
        write(project, f"publications/zz-{i}.md", toml_publication(f"Extra {i}"))
    proc = publisher(project, "ingest")
    assert proc.returncode == 0, proc.stderr
    new = [line for line in proc.stdout.splitlines() if line.startswith("  new: ")]
    assert len(new) == 20, proc.stdout
    assert new[:3] == ['  new: "Extra 0" (publications/zz-0.md)', '  new: "Extra 1" (publications/zz-1.md)',  # newest first
                       '  new: "Extra 2" (publications/zz-2.md)']
    assert new[4] == '  new: "Japan\'s Alliance with the U.S. Has Just Gone Global" (publications/2024-04-16-japans-alliance-with-the-us-has-gone-global.md)'
    assert all(re.fullmatch(r'  new: ".+" \(publications/[^ ]+\.md\)', line) for line in new), new
    assert proc.stdout.splitlines()[-1] == "  ... and 5 more"
    assert publisher(project, "ingest").stdout.splitlines() == ["ingest: 0 new, 0 updated, 25 unchanged, 0 skipped"]


def test_suggest_topic() -> None:
    known = {"security-cooperation", "defense"}
    assert suggest_topic("securty-cooperation", known) == " did you mean 'security-cooperation'?"
    assert suggest_topic("space", known) == " known topics: defense, security-cooperation; or create content/topics/space.md (with a name) to add it"
    assert suggest_topic("space", []) == " there are no topics yet; create content/topics/space.md (with a name) to add it"
    many = [f"topic-{i:02d}" for i in range(12)]
    assert suggest_topic("zzz", many).startswith(" known topics: topic-00, topic-01,") and "topic-09 and 2 more;" in suggest_topic("zzz", many)
