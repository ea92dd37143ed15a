"""An ingest skips the content files that did not change since the last one, and still sees every change.

A file is not read while its stat (size, mtime, ctime, device and inode) is what it was, unless that stat was taken
within 2 s of reading it (racy: a write in the same clock tick leaves the same stat); then, or when only the stat
moved, its bytes are compared and it is parsed only when they differ. Whatever was skipped must give the same
report as parsing it would: the same count, the same warnings, the same refusals.
"""

from __future__ import annotations

import os
import shutil
import time
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import delete, update

from publisher.errors import ContentFileError
from publisher.ingest import IngestReport, ingest
from publisher.sources import files as files_module
from publisher.sources.files import FilesSource
from publisher.store import Store
from publisher.store import tables as t

from .conftest import NOW

BASE = "http://127.0.0.1:8000"
OLD_NS = 1_600_000_000 * 10**9  # 2020-09-13: long before any ingest


def pub_text(title: str, *, extra: str = "") -> str:
    return f'+++\ntitle = "{title}"\ndate = 2024-03-01\ncontent_type = "Commentary"\n{extra}+++\nA body.\n'


def write(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    content = tmp_path / "content"
    write(content, "topics/defense.md", '+++\nname = "Defense"\n+++\nAbout defense.\n')
    write(content, "publications/a.md", pub_text("Alpha"))
    write(content, "publications/b.md", pub_text("Beta", extra='[image]\nsrc = "https://www.example.org/b.png"\n'))  # warned about: no alt
    write(content, "publications/c.md", pub_text("Gamma"))
    return content


@pytest.fixture
def trust_stats(monkeypatch: pytest.MonkeyPatch) -> None:
    """Files written a moment ago are trusted by their stat, as files older than 2 s are (no test waits 2 s)."""
    monkeypatch.setattr(files_module, "RACY_NS", -10**12)


@pytest.fixture
def parsed(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The paths of the files parsed (their front matter split), in order."""
    seen: list[str] = []
    real = files_module._front_matter

    def spy(source: str, path: Path, data: bytes):  # noqa: ANN202
        seen.append(path.name)
        return real(source, path, data)

    monkeypatch.setattr(files_module, "_front_matter", spy)
    return seen


def run(folder: Path, store: Store, hours: int = 0, *, base_url: str = BASE) -> IngestReport:
    return ingest([FilesSource("content", folder, base_url, "UTC")], store, NOW + timedelta(hours=hours))


def test_unchanged_files_are_neither_read_nor_parsed_and_report_the_same(folder: Path, store: Store, trust_stats: None,
                                                                         parsed: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    first = run(folder, store)
    assert (len(first.new), first.unchanged, first.topics_changed) == (3, 0, ["defense"])
    assert sorted(parsed) == ["a.md", "b.md", "c.md", "defense.md"]
    parsed.clear()

    def no_read(*args: object) -> None:
        raise AssertionError(f"read {args[1]}")

    monkeypatch.setattr(files_module, "read_inside_stat", no_read)
    second = run(folder, store, 1)
    assert parsed == []
    assert (second.new, second.updated, second.unchanged, second.topics_changed, second.errors) == ([], [], 3, [], [])
    assert (second.files_not_read, second.files_not_parsed) == (4, 0)
    assert second.warnings == first.warnings and any("b.md: image has no alt text" in w for w in second.warnings)  # still said every time
    assert "content" in second.sources_ok


def test_files_read_within_2_s_of_being_written_are_compared_by_their_bytes(folder: Path, store: Store, parsed: list[str]) -> None:
    run(folder, store)
    parsed.clear()
    second = run(folder, store, 1)  # every file was written a moment before it was read: its stat is not trusted
    assert (second.unchanged, second.files_not_read, second.files_not_parsed) == (3, 0, 4)
    assert parsed == []


def test_an_edit_in_the_same_clock_tick_is_read_even_when_its_stat_is_trusted(folder: Path, store: Store, trust_stats: None) -> None:
    """Same size, mtime put back with os.utime: only the ctime (which nobody can set) tells."""
    path = folder / "publications" / "a.md"
    os.utime(path, ns=(OLD_NS, OLD_NS))
    run(folder, store)
    before = os.stat(path)
    time.sleep(0.05)  # past the kernel's timestamp granularity (a jiffy), so the ctime moves
    path.write_text(pub_text("Alfa!"), encoding="utf-8")  # as long as "Alpha"
    os.utime(path, ns=(OLD_NS, OLD_NS))
    after = os.stat(path)
    assert (after.st_size, after.st_mtime_ns, after.st_ino) == (before.st_size, before.st_mtime_ns, before.st_ino)
    assert after.st_ctime_ns != before.st_ctime_ns

    report = run(folder, store, 1)
    assert (report.updated, report.unchanged) == (["publications/a"], 2)
    assert [p.title for p in store.publications(ids=["publications/a"])] == ["Alfa!"]


def test_a_touched_file_is_read_but_not_parsed(folder: Path, store: Store, trust_stats: None, parsed: list[str]) -> None:
    run(folder, store)
    parsed.clear()
    (folder / "publications" / "c.md").touch()
    report = run(folder, store, 1)
    assert (report.unchanged, report.files_not_read, report.files_not_parsed) == (3, 3, 1)
    assert parsed == []
    again = run(folder, store, 2)  # its new stat was recorded
    assert (again.files_not_read, again.files_not_parsed) == (4, 0)


def test_a_deleted_file_is_withdrawn_and_read_again_when_it_comes_back(folder: Path, store: Store, trust_stats: None,
                                                                       parsed: list[str]) -> None:
    run(folder, store)
    path = folder / "publications" / "c.md"
    text = path.read_text(encoding="utf-8")
    path.unlink()
    report = run(folder, store, 1)
    assert report.files_gone == ["publications/c.md"]
    assert (report.unchanged, report.errors) == (2, [])
    assert "publications/c.md" not in store.content_files("content")
    assert store.count_publications() == 2 and report.withdrawn == ["publications/c"]  # unpublished (tests/test_withdraw.py)

    parsed.clear()
    write(folder, "publications/c.md", text)
    back = run(folder, store, 2)
    assert parsed == ["c.md"] and back.new == ["publications/c"] and back.unchanged == 2 and back.files_gone == []


def test_a_broken_file_is_reported_on_every_ingest(folder: Path, store: Store, trust_stats: None) -> None:
    run(folder, store)
    path = folder / "publications" / "a.md"
    path.write_text('+++\ntitle = \n+++\n', encoding="utf-8")
    for hours in (1, 2):
        report = run(folder, store, hours)
        [err] = report.errors
        assert isinstance(err, ContentFileError) and err.path == str(path) and err.line == 2
        assert report.unchanged == 2
    # What it last gave stays published, and its state recorded: deleting the file later still withdraws that.
    assert store.content_files("content")["publications/a.md"].item_id == "publications/a"
    assert [p.title for p in store.publications(ids=["publications/a"])] == ["Alpha"]


def test_a_changed_setting_parses_every_file_again(folder: Path, store: Store, trust_stats: None) -> None:
    run(folder, store)
    report = run(folder, store, 1, base_url="https://news.example.org")
    assert sorted(report.updated) == ["publications/a", "publications/b", "publications/c"]  # their default URLs moved
    assert all(p.url.startswith("https://news.example.org/") for p in store.publications())


def test_a_publication_changed_or_deleted_in_the_store_is_read_from_its_file_again(folder: Path, store: Store, trust_stats: None) -> None:
    run(folder, store)
    p = t.publications
    with store.engine.begin() as conn:
        conn.execute(update(p).where(p.c.id == "publications/a").values(title="Tampered", content_hash="x" * 64))
        conn.execute(delete(p).where(p.c.id == "publications/b"))
        conn.execute(update(t.topics).values(name="Renamed"))
    report = run(folder, store, 1)
    assert (report.new, report.updated, report.unchanged, report.topics_changed) == (["publications/b"], ["publications/a"], 1, ["defense"])
    assert [x.title for x in store.publications(ids=["publications/a"])] == ["Alpha"]


@pytest.mark.parametrize("what", ["image", "its folder"])
def test_an_image_made_a_symlink_out_of_the_folder_refuses_its_unchanged_publication(folder: Path, store: Store, trust_stats: None,
                                                                                      tmp_path: Path, what: str) -> None:
    (folder / "images" / "2024").mkdir(parents=True)
    (folder / "images" / "2024" / "a.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    write(folder, "publications/a.md", pub_text("Alpha", extra='[image]\nsrc = "images/2024/a.png"\nalt = "A photo"\n'))
    first = run(folder, store)
    assert first.errors == [] and len(first.new) == 3
    assert [p.image.url for p in store.publications(ids=["publications/a"]) if p.image] == [f"{BASE}/media/images/2024/a.png"]
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    (secrets / "a.png").write_bytes(b"not for publishing")
    if what == "image":
        (folder / "images" / "2024" / "a.png").unlink()
        (folder / "images" / "2024" / "a.png").symlink_to(secrets / "a.png")
    else:
        shutil.rmtree(folder / "images" / "2024")
        (folder / "images" / "2024").symlink_to(secrets, target_is_directory=True)

    report = run(folder, store, 1)  # a.md itself did not change
    errors = [e for e in report.errors if isinstance(e, ContentFileError) and e.path.endswith("a.md")]
    assert len(errors) == 1 and "outside" in errors[0].reason
    assert report.unchanged == 2


def test_an_image_gone_or_too_big_is_seen_by_its_unchanged_publication(folder: Path, store: Store, trust_stats: None) -> None:
    (folder / "images").mkdir()
    image = folder / "images" / "a.png"
    image.write_bytes(b"\x89PNG\r\n\x1a\n")
    write(folder, "publications/a.md", pub_text("Alpha", extra='[image]\nsrc = "images/a.png"\nalt = "A photo"\n'))

    def small(hours: int) -> IngestReport:  # files of up to 200 bytes, on every ingest here
        return ingest([FilesSource("content", folder, BASE, "UTC", max_file_size=200)], store, NOW + timedelta(hours=hours))

    assert small(0).errors == []
    image.write_bytes(b"x" * 300)
    report = small(1)  # a.md did not change; its image did
    [err] = report.errors
    assert isinstance(err, ContentFileError) and err.path.endswith("a.md") and "image 'images/a.png' is 300 bytes, over the limit" in err.reason
    image.unlink()
    report = small(2)
    assert report.errors == [] and any("a.md: image 'images/a.png' not found" in w for w in report.warnings)
    assert small(3).warnings == report.warnings  # and said again, the file unchanged since


def test_a_recorded_file_made_a_symlink_out_of_the_folder_is_refused(folder: Path, store: Store, trust_stats: None, tmp_path: Path) -> None:
    run(folder, store)
    outside = tmp_path / "elsewhere.md"
    outside.write_text(pub_text("Alpha"), encoding="utf-8")
    path = folder / "publications" / "a.md"
    path.unlink()
    path.symlink_to(outside)
    report = run(folder, store, 1)
    [err] = report.errors
    # Refused, not gone: an error like any other, and what it gave stays published.
    assert "outside" in str(err) and report.files_gone == [] and report.withdrawn == []
    assert store.count_publications() == 3


def test_a_duplicate_id_is_reported_every_time_and_the_file_first_ingested_keeps_it(folder: Path, store: Store, trust_stats: None) -> None:
    write(folder, "publications/m.md", pub_text("Mine", extra='id = "same"\n'))
    write(folder, "publications/n.md", pub_text("Theirs", extra='id = "same"\n'))
    for hours in (0, 1):
        report = run(folder, store, hours)
        [err] = report.errors
        assert "duplicate id" in str(err) and "same" in str(err)
    write(folder, "publications/l.md", pub_text("Newcomer", extra='id = "same"\n'))  # sorts first, but is new
    report = run(folder, store, 2)
    assert len(report.errors) == 2 and report.updated == []
    assert [x.title for x in store.publications(ids=["same"])] == ["Mine"]


def test_migration_0011_builds_the_schema_the_code_declares(store: Store) -> None:
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    with store.engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}), t.metadata)
    assert [d for d in diff if "content_files" in str(d)] == []


def test_recording_the_files_never_fails_the_ingest(folder: Path, store: Store, caplog: pytest.LogCaptureFixture) -> None:
    """The records are a shortcut: when they cannot be written (here: one path twice, as two ingests at once could
    leave it on PostgreSQL), the ingest goes on and those files are read again next time."""
    run(folder, store)
    state = store.content_files("content")["publications/a.md"]
    store.save_content_files("content", [state, state])
    assert "read again next time" in caplog.text
    assert store.content_files("content")["publications/a.md"] == state  # the failed write left the old record
