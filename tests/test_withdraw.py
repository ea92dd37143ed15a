"""Unpublishing: a publication whose file is deleted from content/, or made a draft, is withdrawn at the next ingest
(store, feeds, site, the next digest and retries of a sent one), unless another file still gives its id; and nothing
is withdrawn when the folder looks lost rather than emptied.

Through the real command on the embedded defaults (the sample project in a temporary directory), and one test with
the in-process pipeline and a real SMTP relay for a deferred recipient's retry.
"""

from __future__ import annotations

import email
import email.policy
import shutil
from datetime import datetime, timedelta, timezone
from pathlib import Path

import feedparser

from publisher.config import Config
from publisher.delivery.send import retry_deferred
from publisher.ingest import ingest
from publisher.pipeline import run_ingest, send_digest
from publisher.sources.files import FilesSource
from publisher.store import open_store

from .conftest import NOW
from .smtp_faults import relay
from .test_first_hour import run_ok
from .test_retries import b_is_over_quota, smtp

STEM = "2024-02-26-yes-to-striking-iranian-backed-militants"
TITLE = "Yes to Striking Iranian-Backed Militants"
TOPIC = "security-cooperation"


def new_pub(title: str, *, extra: str = "") -> str:
    return f'+++\ntitle = "{title}"\ndate = 2026-11-20\ncontent_type = "Commentary"\ntopics = ["{TOPIC}"]\n{extra}+++\nA body.\n'


def feed(project: Path) -> feedparser.FeedParserDict:
    parsed = feedparser.parse((project / "public" / "feeds" / "all.rss").read_bytes())
    assert not parsed.bozo, parsed.bozo_exception
    return parsed


def titles(project: Path) -> list[str]:
    return [e.title for e in feed(project).entries]


def guid(project: Path, title: str) -> str:
    [entry] = [e for e in feed(project).entries if e.title == title]
    return entry.id


def page(project: Path, *parts: str) -> str:
    return (project / "public").joinpath(*parts, "index.html").read_text(encoding="utf-8")


def outbox_files(project: Path) -> set[Path]:
    folder = project / "var" / "outbox" / "new"
    return set(folder.iterdir()) if folder.exists() else set()


def text_of(raw: bytes) -> str:
    msg = email.message_from_bytes(raw, policy=email.policy.default)
    part = msg.get_body(preferencelist=("plain",))  # type: ignore[attr-defined]
    assert part is not None
    return part.get_content()


def test_a_deleted_file_is_withdrawn_from_the_feeds_the_site_and_the_next_digest(project: Path) -> None:
    run_ok(project, "run", "--once")  # the first issue goes out with it: history from now on
    assert TITLE in titles(project) and (project / "public" / "publications" / STEM).is_dir()
    [first_copy] = (project / "public" / "digests").glob("20*.html")
    assert TITLE in first_copy.read_text(encoding="utf-8")

    (project / "content" / "publications" / f"{STEM}.md").unlink()
    proc = run_ok(project, "run", "--once")
    assert "ingest: 0 new, 0 updated, 21 unchanged, 0 skipped, 1 withdrawn" in proc.stdout, proc.stdout
    assert f'  withdrawn: "{TITLE}" (publications/{STEM}.md deleted)' in proc.stdout
    assert TITLE not in titles(project) and len(titles(project)) == 21
    assert TITLE not in page(project) and TITLE not in page(project, "topics", TOPIC)
    assert not (project / "public" / "publications" / STEM).exists()
    assert TITLE in first_copy.read_text(encoding="utf-8")  # a sent issue's web copy is history, left as it was
    again = run_ok(project, "run", "--once")
    assert "ingest: 0 new, 0 updated, 21 unchanged, 0 skipped\n" in again.stdout  # said once

    # The next digest: two new publications ingested, one of them deleted before the issue goes out.
    pubs = project / "content" / "publications"
    (pubs / "fresh-alpha.md").write_text(new_pub("Fresh Alpha Note"), encoding="utf-8")
    (pubs / "fresh-beta.md").write_text(new_pub("Fresh Beta Note"), encoding="utf-8")
    assert "ingest: 2 new" in run_ok(project, "ingest").stdout
    (pubs / "fresh-alpha.md").unlink()
    preview = run_ok(project, "digest", "preview", "--text").stdout
    assert "Fresh Beta Note" in preview  # (the preview reads content/ as it is now, over the store)
    before = outbox_files(project)
    proc = run_ok(project, "run", "--once", "--force-digest")
    assert '  withdrawn: "Fresh Alpha Note" (publications/fresh-alpha.md deleted)' in proc.stdout, proc.stdout
    sent = sorted(outbox_files(project) - before)
    assert sent, proc.stdout
    for path in sent:
        body = text_of(path.read_bytes())
        assert "Fresh Beta Note" in body and "Fresh Alpha Note" not in body and TITLE not in body


def test_a_file_renamed_or_moved_keeping_its_id_is_an_update_not_a_withdrawal(project: Path) -> None:
    pubs = project / "content" / "publications"
    (pubs / "kept.md").write_text(new_pub("Kept Under Its Id", extra='id = "kept-under-its-id"\n'), encoding="utf-8")
    run_ok(project, "run", "--once")
    entry_id = guid(project, "Kept Under Its Id")
    (pubs / "kept.md").rename(pubs / "kept-renamed.md")
    proc = run_ok(project, "run", "--once")
    assert "ingest: 0 new, 1 updated, 22 unchanged, 0 skipped\n" in proc.stdout, proc.stdout  # its page URL moved
    assert "withdrawn" not in proc.stdout
    assert guid(project, "Kept Under Its Id") == entry_id
    assert (project / "public" / "publications" / "kept-renamed").is_dir() and not (project / "public" / "publications" / "kept").exists()
    (pubs / "2026").mkdir()
    (pubs / "kept-renamed.md").rename(pubs / "2026" / "kept-renamed.md")  # moved: the same page URL, nothing changed
    proc = run_ok(project, "run", "--once")
    assert "ingest: 0 new, 0 updated, 23 unchanged, 0 skipped\n" in proc.stdout, proc.stdout
    assert guid(project, "Kept Under Its Id") == entry_id


def test_draft_keeps_a_new_file_out_withdraws_a_published_one_and_false_publishes_it_again(project: Path) -> None:
    pubs = project / "content" / "publications"
    # A new draft, incomplete as drafts are (no date, no content_type): not published, not an error.
    (pubs / "unfinished.md").write_text('+++\ntitle = "Not Ready Yet"\ndraft = true\n+++\nNotes.\n', encoding="utf-8")
    proc = run_ok(project, "run", "--once")
    assert "ingest: 22 new, 0 updated, 0 unchanged, 0 skipped, 1 draft\n" in proc.stdout, proc.stdout + proc.stderr
    assert "Not Ready Yet" not in titles(project) and not (project / "public" / "publications" / "unfinished").exists()
    assert "1 draft\n" in run_ok(project, "ingest").stdout  # still a draft, not read again as a change

    # A published one made a draft: withdrawn; back to false: published again, under the same feed entry id.
    path = pubs / f"{STEM}.md"
    text = path.read_text(encoding="utf-8")
    entry_id = guid(project, TITLE)
    path.write_text(text.replace("+++\n", "+++\ndraft = true\n", 1), encoding="utf-8")
    proc = run_ok(project, "run", "--once")
    assert "ingest: 0 new, 0 updated, 21 unchanged, 0 skipped, 1 withdrawn, 2 drafts\n" in proc.stdout, proc.stdout
    assert f'  withdrawn: "{TITLE}" (publications/{STEM}.md is a draft)' in proc.stdout
    assert TITLE not in titles(project) and not (project / "public" / "publications" / STEM).exists()
    path.write_text(text.replace("+++\n", "+++\ndraft = false\n", 1), encoding="utf-8")
    proc = run_ok(project, "run", "--once")
    assert "ingest: 1 new, 0 updated, 21 unchanged, 0 skipped, 1 draft\n" in proc.stdout, proc.stdout
    assert guid(project, TITLE) == entry_id and (project / "public" / "publications" / STEM).is_dir()

    # Anything but true or false is an error naming the file, the line and the fix; what the file gave stays.
    path.write_text(text.replace("+++\n", '+++\ndraft = "yes"\n', 1), encoding="utf-8")
    proc = run_ok(project, "run", "--once")
    assert f"publications/{STEM}.md:2: draft must be true or false, got 'yes'; write draft = true" in proc.stderr, proc.stderr
    assert "ingest: 0 new, 0 updated, 21 unchanged, 1 skipped, 1 draft\n" in proc.stdout and TITLE in titles(project)


def test_the_publications_folder_moved_away_withdraws_nothing(project: Path) -> None:
    run_ok(project, "run", "--once")
    pubs = project / "content" / "publications"
    pubs.rename(project / "publications-old")  # out of content/
    proc = run_ok(project, "run", "--once")  # a source error: reported, exit status 0 as for any other
    assert "ingest: 0 new, 0 updated, 0 unchanged, 1 skipped\n" in proc.stdout, proc.stdout
    assert (f"{pubs}/: has none of the 22 files the store knows (the folder is missing): nothing was withdrawn. "
            "If the folder moved, "
            "fix [sources.content].path in config.toml; if you meant to withdraw them all, set draft = true") in proc.stderr, proc.stderr
    assert len(titles(project)) == 22 and (project / "public" / "publications" / STEM).is_dir()
    assert "has none of the 22 files" in run_ok(project, "ingest").stderr  # said again until it is fixed

    (project / "publications-old").rename(pubs)
    proc = run_ok(project, "run", "--once")
    assert "ingest: 0 new, 0 updated, 22 unchanged, 0 skipped\n" in proc.stdout, proc.stdout

    shutil.move(project / "content", project / "content-elsewhere")  # the whole folder
    proc = run_ok(project, "ingest")
    assert "folder not found: nothing was withdrawn (the store knows 22 publication file(s) from it)" in proc.stderr, proc.stderr
    shutil.move(project / "content-elsewhere", project / "content")
    assert "ingest: 0 new, 0 updated, 22 unchanged, 0 skipped\n" in run_ok(project, "ingest").stdout


def test_withdrawing_them_all_on_purpose_as_the_error_says(cfg: Config) -> None:
    store = open_store(cfg.store_url)
    folder = cfg.path(cfg.sources["content"].path)
    source = lambda: [FilesSource("content", folder, cfg.site.base_url, cfg.site.timezone)]  # noqa: E731
    assert len(ingest(source(), store, NOW).new) == 22
    for path in (folder / "publications").glob("*.md"):
        path.write_text(path.read_text(encoding="utf-8").replace("+++\n", "+++\ndraft = true\n", 1), encoding="utf-8")
    report = ingest(source(), store, NOW + timedelta(hours=1))
    assert (len(report.withdrawn), report.drafts, report.errors) == (22, 22, []) and store.count_publications() == 0
    shutil.rmtree(folder / "publications")
    report = ingest(source(), store, NOW + timedelta(hours=2))
    assert (report.withdrawn, report.errors) == ([], [])  # drafts gone: nothing held, nothing to say
    store.close()


def test_a_deferred_recipients_retry_no_longer_carries_a_withdrawn_publication(cfg: Config) -> None:
    store, handler, now = b_is_over_quota(cfg)
    with relay(handler) as port:
        c = smtp(cfg, port)
        first = send_digest(c, store, now)
        assert first.finished and (first.sent, first.deferred) == (1, 1)
        [to_a] = handler.messages
        assert TITLE in text_of(to_a)

        (cfg.path(cfg.sources["content"].path) / "publications" / f"{STEM}.md").unlink()
        report = run_ingest(cfg, store, now + timedelta(minutes=1))
        assert report.withdrawn == [f"publications/{STEM}"]

        handler.answers.clear()
        due = datetime.now(timezone.utc) + timedelta(hours=1)
        assert retry_deferred(c, store, due, due=due).sent == 1
    to_b = text_of(handler.messages[-1])
    assert "b@example.com" in email.message_from_bytes(handler.messages[-1])["To"]
    assert TITLE not in to_b and "What Sweden's Accession Means for NATO" in to_b
    archived = cfg.path(cfg.site.public_dir) / "digests" / f"{first.issue_id}.html"
    assert TITLE in archived.read_text(encoding="utf-8")  # the web copy stays as it went out
    store.close()


def test_every_known_file_gone_at_once_withdraws_nothing_but_one_deleted_file_is_withdrawn(cfg: Config, tmp_path: Path) -> None:
    store = open_store(cfg.store_url)
    folder = cfg.path(cfg.sources["content"].path)
    source = lambda: [FilesSource("content", folder, cfg.site.base_url, cfg.site.timezone)]  # noqa: E731
    ingest(source(), store, NOW)
    kept = tmp_path / "kept"
    shutil.copytree(folder / "publications", kept)
    for path in (folder / "publications").glob("*.md"):  # the folder stays, empty (a checkout gone wrong)
        path.unlink()
    report = ingest(source(), store, NOW + timedelta(hours=1))
    [err] = report.errors
    assert str(err).endswith("has none of the 22 files the store knows: nothing was withdrawn. If the folder moved, fix "
                             "[sources.content].path in config.toml; if you meant to withdraw them all, set draft = true (draft: true "
                             "in YAML front matter) in each of them, let one ingest run (it withdraws them), then delete them")
    assert report.withdrawn == [] and store.count_publications() == 22
    for path in kept.glob("*.md"):
        if path.stem != STEM:
            shutil.copy(path, folder / "publications" / path.name)
    report = ingest(source(), store, NOW + timedelta(hours=2))  # the states were kept: one file short is a deletion
    assert report.errors == [] and report.withdrawn == [f"publications/{STEM}"] and store.count_publications() == 21
    store.close()
