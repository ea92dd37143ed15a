"""A send run is known dead the instant its process dies (kill -9), on SQLite (flock) and PostgreSQL (advisory lock).

The holder is a real child process; it is killed with a real SIGKILL. No heartbeat, no timeout to wait out.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
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
        assert store.reap_runs(datetime.now(timezone.utc)) == []  # a live run is never reaped
        assert store.run_alive("run-a")  # testing it did not take its lock away
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        began = time.monotonic()
        assert not store.run_alive("run-a")
        assert store.reap_runs(datetime.now(timezone.utc)) == ["run-a"]
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
