"""Issue 11, point 8: a damaged store stops every command with one clear line and a non-zero exit, never a traceback.

Real `publisher` processes against a real SQLite file that was overwritten with garbage, or damaged page by page
the way a bad disk or a half-copied backup damages it.
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
from pathlib import Path

import pytest

from .conftest import TEST_SECRET_KEY
from .servers import free_port
from .test_cli import commands
from .test_pipeline import publisher_exe

PAGE = 4096  # SQLite's default page size, which the store keeps


def argv_for(command: tuple[str, ...]) -> list[str]:
    """Every command as a user would type it (the long-running ones included: they must not start)."""
    extra = {
        ("run",): [], ("serve",): ["--port", str(free_port())], ("preview",): ["--port", str(free_port())],
        ("digest", "send"): ["--no-progress"], ("subscribers", "add"): ["new@example.com"],
        ("subscribers", "import"): ["list.csv"], ("subscribers", "remove"): ["reader@example.com"],
        ("subscribers", "show"): ["reader@example.com"], ("subscribers", "forget"): ["reader@example.com", "--yes"],
    }
    return [*command, *extra.get(command, [])]


ALL = [argv_for(c) for c in commands()] + [["run", "--once"]]


def run_all(project: Path, argvs: list[list[str]]) -> dict[str, subprocess.CompletedProcess[str]]:
    """Run the commands side by side (each a real process), each with a time limit: a hang is a failure."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PUBLISHER_")} | {"PUBLISHER_SECRET_KEY": TEST_SECRET_KEY}
    procs = {" ".join(a): subprocess.Popen([*publisher_exe(), *a], cwd=project, env=env, stdout=subprocess.PIPE,
                                           stderr=subprocess.PIPE, text=True) for a in argvs}
    done = {}
    for name, proc in procs.items():
        try:
            out, err = proc.communicate(timeout=90)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
            pytest.fail(f"`publisher {name}` did not stop on a damaged store: {err}")
        done[name] = subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
    return done


def assert_each_refused(results: dict[str, subprocess.CompletedProcess[str]], db: Path) -> None:
    for name, proc in results.items():
        assert proc.returncode != 0, f"`publisher {name}` exited 0 on a damaged store:\n{proc.stdout}"
        assert "Traceback" not in proc.stderr, f"`publisher {name}`:\n{proc.stderr}"
        errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
        assert len(errors) == 1, f"`publisher {name}`:\n{proc.stderr}"  # (`publisher run` is a service: it also logs)
        assert str(db) in errors[0] and "Restore it from a backup" in errors[0], f"`publisher {name}`: {errors[0]}"


@pytest.fixture
def sample(project: Path) -> Path:
    """The sample project after one full cycle: a real store with publications, subscribers, a sent issue, feeds."""
    (project / "list.csv").write_text("email\nimported@example.com\n", encoding="utf-8")
    results = run_all(project, [["run", "--once"]])
    assert results["run --once"].returncode == 0, results["run --once"].stderr
    assert run_all(project, [["status"]])["status"].returncode == 0  # the scheduler's job table exists now too
    return project / "var" / "publisher.db"


def test_every_command_is_covered() -> None:
    assert {tuple(a[:len(c)]) for a in ALL for c in commands()} >= set(commands())


def test_a_store_overwritten_with_garbage_stops_every_command(sample: Path) -> None:
    size = sample.stat().st_size
    for extra in sample.parent.glob("publisher.db-*"):
        extra.unlink()  # no WAL to fall back on
    sample.write_bytes(os.urandom(size))
    assert_each_refused(run_all(sample.parent.parent, ALL), sample)
    assert sample.stat().st_size == size  # and nothing wrote over it (a backup tool may still rescue it)


def test_a_truncated_store_stops_every_command(sample: Path) -> None:
    with sample.open("r+b") as fh:
        fh.truncate(sample.stat().st_size // 2)
    assert_each_refused(run_all(sample.parent.parent, ALL), sample)


def _pages(db: Path, sql: str) -> list[int]:
    con = sqlite3.connect(db)
    try:
        return [row[0] for row in con.execute(sql)]
    except sqlite3.OperationalError as exc:  # pragma: no cover - Python's bundled SQLite has dbstat
        pytest.fail(f"this SQLite has no dbstat table ({exc}); the test needs it to find the pages to damage")
    finally:
        con.close()


def _damage(db: Path, pages: list[int]) -> None:
    with db.open("r+b") as fh:
        for page in pages:
            fh.seek((page - 1) * PAGE)
            fh.write(os.urandom(PAGE))


def test_damaged_tables_with_the_schema_intact_stop_every_command(sample: Path) -> None:
    """The file still opens and migrates (its schema and alembic_version are fine), but the tables are gone bad."""
    roots = _pages(sample, "SELECT rootpage FROM sqlite_master WHERE rootpage > 0 AND tbl_name <> 'alembic_version'")
    assert len(roots) > 10
    _damage(sample, roots)
    assert_each_refused(run_all(sample.parent.parent, ALL), sample)


def test_damage_deep_in_one_table_stops_the_commands_that_read_it_and_only_those(sample: Path) -> None:
    leaves = _pages(sample, "SELECT pageno FROM dbstat WHERE name = 'publications' AND pagetype = 'leaf' ORDER BY pageno")
    assert len(leaves) > 2, "the sample's publications fit one page: nothing deep to damage"
    _damage(sample, leaves[1:])  # the first leaf stays readable: opening the store still works
    readers = [["feeds", "build"], ["run", "--once", "--force-digest"], ["ingest"]]  # each reads every publication
    assert_each_refused(run_all(sample.parent.parent, readers), sample)
    # Everything that does not need the damaged table goes on.
    others = run_all(sample.parent.parent, [["subscribers", "list"], ["subscribers", "export"], ["digest", "note", "Next week: a report."]])
    assert all(p.returncode == 0 for p in others.values()), {n: p.stderr for n, p in others.items()}
    assert "reader@example.com" in others["subscribers list"].stdout


def test_another_applications_sqlite_file_is_refused_and_left_as_it_was(project: Path) -> None:
    """[store].url pointing at someone else's database (a typo, a shared path): every command stops, and not one byte
    of that file changes (no tables of ours added to it, no WAL switched on)."""
    db = project / "var" / "publisher.db"
    db.parent.mkdir(parents=True, exist_ok=True)
    con = sqlite3.connect(db)
    con.executescript("CREATE TABLE moz_places (id INTEGER PRIMARY KEY, url TEXT); INSERT INTO moz_places (url) VALUES ('https://example.org/');")
    con.close()
    (project / "list.csv").write_text("email\nimported@example.com\n", encoding="utf-8")
    before = db.read_bytes()
    for name, proc in run_all(project, ALL).items():
        assert proc.returncode != 0, f"`publisher {name}` used another application's database:\n{proc.stdout}"
        assert "Traceback" not in proc.stderr, f"`publisher {name}`:\n{proc.stderr}"
        errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
        assert len(errors) == 1 and "another application's SQLite database" in errors[0] and "moz_places" in errors[0], proc.stderr
    assert db.read_bytes() == before and sorted(p.name for p in db.parent.iterdir()) == ["publisher.db"]
