"""A send run is known dead the instant its process dies (kill -9), on SQLite (flock) and PostgreSQL (advisory lock).

The holder is a real child process; it is killed with a real SIGKILL. No heartbeat, no timeout to wait out.
"""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
import uuid
from datetime import datetime, timezone

from publisher.store import Store, tables

HOLD = """
import sys, time
from publisher.store import open_store
store = open_store(sys.argv[1])
lock = store.hold_run(sys.argv[2])
store.register_run(sys.argv[2], "2026-W49", __import__("datetime").datetime.now(__import__("datetime").timezone.utc), "child:1")
print("held", flush=True)
time.sleep(600)
"""


def url_of(store: Store) -> str:
    return store.engine.url.render_as_string(hide_password=False)


def holder_process(store: Store, run_id: str) -> subprocess.Popen[str]:
    proc = subprocess.Popen([sys.executable, "-c", HOLD, url_of(store), run_id], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "held", proc.stderr.read() if proc.stderr else ""
    return proc


def test_a_run_is_alive_while_its_process_lives_and_dead_the_moment_it_is_killed(store: Store) -> None:
    proc = holder_process(store, "run-a")
    try:
        assert store.run_alive("run-a")
        assert store.dead_runs() == []  # a live run is never taken for dead
        assert store.run_alive("run-a")  # testing it did not take its lock away
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        began = time.monotonic()
        assert not store.run_alive("run-a")
        assert store.dead_runs() == ["run-a"]
        store.retire_runs(["run-a"], datetime.now(timezone.utc))
        assert time.monotonic() - began < 2  # no heartbeat to go stale
        with store.engine.connect() as conn:
            finished = conn.execute(tables.send_runs.select().where(tables.send_runs.c.id == "run-a")).one().finished_at
        assert finished is not None
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()


def test_a_run_of_this_process_holds_until_released(store: Store) -> None:
    lock = store.hold_run("run-b")
    assert store.run_alive("run-b")
    lock.release()
    assert not store.run_alive("run-b")
    assert not store.run_alive("never-existed")


def test_a_lock_whose_postgresql_connection_was_dropped_is_known_lost(store: Store) -> None:
    """The server drops the session holding a run's lock (a restart, idle_session_timeout, a proxy): the run must
    learn it has lost the lock (and stop claiming), and letting go must not raise."""
    if store.engine.dialect.name != "postgresql":
        lock = store.hold_run("run-c")
        assert lock.held()
        lock.release()
        return
    from sqlalchemy import text

    lock = store.hold_run("run-c")
    assert lock.held() and store.run_alive("run-c")
    # That lock's own session only: every advisory-lock holder on the server would also be other tests' send runs
    # (the suite runs in two processes, and the fleet tests' workers hold such locks).
    holder_pid = lock.conn.execute(text("SELECT pg_backend_pid()")).scalar_one()  # type: ignore[attr-defined]
    lock.conn.commit()  # type: ignore[attr-defined]
    with store.engine.connect() as conn:
        conn.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": holder_pid})
        conn.commit()
    deadline = time.monotonic() + 5
    while store.run_alive("run-c") and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not store.run_alive("run-c")  # to everyone else it is dead now...
    assert not lock.held()  # ...and the run knows it
    lock.release()  # no exception, and no broken connection back in the pool
    assert store.run_alive("run-c") is False


def test_a_dead_runs_journal_is_replayed_once_before_its_rows_are_handed_back(store: Store, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Outcomes a run wrote to its journal and never recorded are recorded once, however often the journal is replayed;
    what it claimed with no outcome is handed back, due at once."""
    from publisher.delivery.api import Result
    from publisher.delivery.engine import _Journal, replay_journals
    from publisher.models import SubscriberStatus

    now = datetime.now(timezone.utc)
    subs = [store.add_subscriber(f"r{i}@example.com", SubscriberStatus.ACTIVE, (), now)[0] for i in range(3)]
    store.start_issue("2026-W49", now, now)
    lock = store.hold_run("dead-run")
    store.register_run("dead-run", "2026-W49", now, "child:2")
    assert store.claim_batch("2026-W49", "dead-run", [(s.id, f"<{s.id}@x>") for s in subs], now, now) == {s.id for s in subs}
    journal = _Journal(tmp_path, "dead-run", "2026-W49")
    journal.write([Result(subs[0].id, "deferred", "451 4.7.1 greylisted", kind="soft")])
    journal.write([Result(subs[0].id, "sent")])  # the last line is the outcome
    journal.write([Result(subs[1].id, "failed", "552 5.2.2 mailbox full", kind="soft")])
    # subs[2]: claimed, and in flight when the run died: no line.
    lock.release()  # the process died
    dead = store.dead_runs()
    assert dead == ["dead-run"]
    written = (tmp_path / "dead-run.journal").read_bytes()
    assert replay_journals(store, tmp_path, now, soft_bounce_limit=3) == 2
    assert not (tmp_path / "dead-run.journal").exists()
    (tmp_path / "dead-run.journal").write_bytes(written)  # as if a second process replayed it at the same time
    replay_journals(store, tmp_path, now, soft_bounce_limit=3)  # reads it again, records nothing new
    store.retire_runs(dead, now)
    with store.engine.connect() as conn:
        rows = {r.subscriber_id: r for r in conn.execute(tables.send_log.select())}
        bounces = dict(conn.execute(tables.subscribers.select().with_only_columns(tables.subscribers.c.id, tables.subscribers.c.soft_bounces)).all())
    assert rows[subs[0].id].status == "sent" and rows[subs[1].id].status == "failed" and bounces[subs[1].id] == 1
    assert rows[subs[2].id].status == "deferred" and rows[subs[2].id].next_attempt_at <= datetime.now(timezone.utc)


def test_another_machines_dead_run_keeps_its_rows_until_a_worker_there_could_replay_its_journal(store: Store, cfg) -> None:  # type: ignore[no-untyped-def]
    """Its journal is on that machine's disk: handed back at once, what it sent and had not recorded would go twice.
    With no worker alive on that machine, its rows are handed back when the default grace runs out, not before."""
    from publisher.delivery.send import HANDOVER_GRACE, recover
    from publisher.models import SubscriberStatus

    now = datetime.now(timezone.utc)
    subs = [store.add_subscriber(f"r{i}@example.com", SubscriberStatus.ACTIVE, (), now)[0] for i in range(3)]
    store.start_issue("2026-W49", now, now)
    far, near = f"far-{uuid.uuid4().hex}", f"near-{uuid.uuid4().hex}"  # run ids are unique, as the send engine makes them
    for run_id, host in ((far, "machine-z:4242"), (near, f"{socket.gethostname()}:4242")):
        lock = store.hold_run(run_id)
        store.register_run(run_id, "2026-W49", now, host)
        lock.release()  # both processes died
    store.claim_batch("2026-W49", far, [(s.id, f"<{s.id}@x>") for s in subs[:2]], now, now)
    store.claim_batch("2026-W49", near, [(subs[2].id, f"<{subs[2].id}@x>")], now, now)

    def held_by() -> dict[int, str | None]:
        with store.engine.connect() as conn:
            return {r.subscriber_id: (r.status, r.claimed_by) for r in conn.execute(tables.send_log.select())}

    began = time.monotonic()
    recover(cfg, store, datetime.now(timezone.utc))
    assert held_by()[subs[2].id][0] == "deferred"  # this machine's: its journal was just replayed, its rows go back at once
    while time.monotonic() - began < HANDOVER_GRACE - 1:
        assert all(held_by()[s.id] == ("queued", far) for s in subs[:2]), "another machine's rows went back before its grace"
        recover(cfg, store, datetime.now(timezone.utc))
        time.sleep(1)
    while time.monotonic() - began < HANDOVER_GRACE + 3 and held_by()[subs[0].id][0] == "queued":
        recover(cfg, store, datetime.now(timezone.utc))
        time.sleep(0.5)
    assert all(held_by()[s.id][0] == "deferred" for s in subs[:2]), "another machine's rows were never handed back"
