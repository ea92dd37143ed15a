"""Issue 13's acceptance: an issue sent by `publisher worker` processes on Celery (engine = "celery").

Real processes on the real PostgreSQL and RabbitMQ on loopback: the coordinator (`publisher digest send`) and two
`publisher worker` subprocesses send to a real SMTP server (aiosmtpd on a free port). Only what an operator sets to
use the fleet is changed (engine, broker, store, relay); every wait and timeout is the default. Each test has a
broker queue and a database schema of its own.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from publisher.config import load_config
from publisher.errors import ConfigError

from .conftest import BROKER
from .smtp_faults import FaultyRelay, relay
from .test_delivery_faults import env_for, output, publisher, smtp_project, start, wait_for


def subscribe(project: Path, n: int, env: dict[str, str]) -> list[str]:
    emails = [f"reader{i}@example.com" for i in range(n)]
    (project / "list.csv").write_text("email\n" + "".join(e + "\n" for e in emails), encoding="utf-8")
    for args in (["ingest"], ["subscribers", "import", "list.csv", "--confirmed"]):
        proc = publisher(project, *args, env=env, timeout=300)
        assert proc.returncode == 0, proc.stderr
    return emails


@contextmanager
def workers(project: Path, env: dict[str, str], n: int = 2) -> Iterator[list[subprocess.Popen[str]]]:
    # Names unique on the broker: Celery gives each node an exclusive control queue (<name>@<host>.celery.pidbox),
    # and tests running at once share the one RabbitMQ (two files' "w1" collided: a real cross-test clash).
    tag = uuid.uuid4().hex[:6]
    procs = [start(project, "worker", "--name", f"w{i}-{tag}", env=env) for i in range(n)]
    try:
        assert wait_for(lambda: f"workers: {n} alive" in publisher(project, "status", env=env).stdout, 60), \
            [output(project, p) for p in procs]
        yield procs
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
                pytest.fail("`publisher worker` did not stop within 30 s of SIGTERM")


def worker_log(project: Path) -> str:
    return (project / "worker.log").read_text(encoding="utf-8")


def test_a_coordinator_and_two_workers_send_20000_subscribers_each_exactly_once(project: Path, fleet_env: dict[str, str]) -> None:
    handler = FaultyRelay()
    with relay(handler) as port:
        smtp_project(project, port)
        emails = subscribe(project, 20_000, fleet_env)
        with workers(project, fleet_env):
            started = time.monotonic()
            sent = publisher(project, "digest", "send", "--no-progress", env=fleet_env, timeout=600)
            took = time.monotonic() - started
            status = publisher(project, "status", env=fleet_env).stdout
    assert sent.returncode == 0, sent.stdout + sent.stderr + worker_log(project)[-3000:]
    assert "20000 sent" in sent.stdout, sent.stdout
    assert sorted(handler.delivered) == sorted(emails) and set(handler.delivered.values()) == {1}
    assert "last issue" in status and "20000 sent" in status, status
    # Both workers sent a share (each line of status names one, with what it sent).
    shares = [int(line.split(": ")[1].split(" sent")[0]) for line in status.splitlines() if " on " in line and " sent, " in line]
    assert len(shares) == 2 and all(s > 0 for s in shares) and sum(shares) == 20_000, status
    print(f"20,000 messages by two workers in {took:.1f} s ({20_000 / took:.0f}/s); shares {shares}")


def test_the_same_task_delivered_twice_sends_nothing_twice(project: Path, fleet_env: dict[str, str]) -> None:
    """While `publisher digest send` runs, copies of a task covering every subscriber reach the broker again and again
    (as a broker's redelivery or a second coordinator would send them), and more after the issue went out: each
    subscriber gets one message."""
    from publisher.delivery import fleet

    handler = FaultyRelay()
    with relay(handler) as port:
        smtp_project(project, port)
        emails = subscribe(project, 2_000, fleet_env)
        plan = publisher(project, "digest", "send", "--dry-run", env=fleet_env).stdout
        issue_id = plan.split()[1].rstrip(":")
        queue = fleet_env["PUBLISHER_DELIVERY__TASK_QUEUE"]
        app = fleet.make_app(BROKER, queue)
        copy = {"v": 1, "issue": issue_id, "lo": 1, "hi": 10**9, "due": None, "dispatch": "a-copy"}
        copies = 0
        with workers(project, fleet_env):
            coordinator = start(project, "digest", "send", "--no-progress", env=fleet_env)
            while coordinator.poll() is None:
                if copies < 20:  # each copy walks all 2,000 rows (seconds on a loaded machine): enough to overlap the send
                    app.send_task(fleet.TASK, args=[copy], queue=queue)
                    copies += 1
                time.sleep(0.1)
            for _ in range(3):  # late copies, after the issue has gone out
                app.send_task(fleet.TASK, args=[copy], queue=queue)
            copies += 3
            # Every copy was taken (with the coordinator's own task): the log has each one's outcome.
            assert wait_for(lambda: worker_log(project).count("succeeded in") >= copies + 1, 240), worker_log(project)[-2000:]
        assert coordinator.returncode == 0, output(project, coordinator)
    assert copies >= 4
    assert sorted(handler.delivered) == sorted(emails) and set(handler.delivered.values()) == {1}


def test_one_rate_holds_across_the_fleet(project: Path, fleet_env: dict[str, str]) -> None:
    """[delivery.smtp].rate_limit = 40 a second, two workers with two connections each: 240 messages take about
    six seconds, and no second of them carries much more than 40."""
    handler = FaultyRelay()
    stamps: list[float] = []
    deliver = handler.handle_DATA

    async def stamped(server, session, envelope):  # type: ignore[no-untyped-def]
        stamps.append(time.monotonic())
        return await deliver(server, session, envelope)

    handler.handle_DATA = stamped  # type: ignore[method-assign]
    env = {**fleet_env, "PUBLISHER_DELIVERY__SMTP__RATE_LIMIT": "40"}
    with relay(handler) as port:
        smtp_project(project, port)
        subscribe(project, 240, env)
        with workers(project, env):
            sent = publisher(project, "digest", "send", "--no-progress", env=env, timeout=120)
    assert sent.returncode == 0, sent.stdout + sent.stderr
    assert len(stamps) == 240
    span = stamps[-1] - stamps[0]
    busiest = max(sum(1 for s in stamps if t <= s < t + 1.0) for t in stamps)
    assert 5.0 <= span <= 9.0, span
    assert busiest <= 40 + 8 + 2, busiest  # the rate, one draw's small burst (a fifth of a second), jitter
    print(f"240 messages at 40/s over two workers: {span:.1f} s, at most {busiest} in any second")


def test_celery_with_a_sqlite_store_is_refused_with_the_fix(project: Path) -> None:
    with pytest.raises(ConfigError, match="needs PostgreSQL") as err:
        load_config(project / "config.toml", env={"PUBLISHER_DELIVERY__ENGINE": "celery"})
    assert "delivery.engine" in str(err.value) and "threads" in str(err.value)
    proc = publisher(project, "worker", env=env_for(PUBLISHER_DELIVERY__ENGINE="celery"))
    assert proc.returncode == 2 and "needs PostgreSQL" in proc.stderr, proc.stderr
    proc = publisher(project, "worker")
    assert proc.returncode == 2 and 'engine = "celery"' in proc.stderr, proc.stderr


def test_a_broker_password_in_the_file_is_refused(project: Path) -> None:
    with pytest.raises(ConfigError, match="PUBLISHER_BROKER_URL"):
        load_config(project / "config.toml", env={"PUBLISHER_DELIVERY__BROKER_URL": "amqp://user:s3cret@mq:5672//"})


def test_variants_round_trip_through_the_store_format(cfg) -> None:  # type: ignore[no-untyped-def]
    from publisher.delivery.fleet import dump_variant, load_variant
    from publisher.delivery.send import compose
    from publisher.digest import plan_issue, render_variants
    from publisher.pipeline import now_utc, open_project_store

    store = open_project_store(cfg)
    try:
        from publisher.ingest import run_sources

        run_sources(cfg, store, now_utc())
        plan = plan_issue(cfg, store, now_utc())
        variants = compose(cfg, plan, render_variants(cfg, plan, [()]), now_utc())
        original, _ = variants.get(())
        again = load_variant(dump_variant(original))
        links = {"unsubscribe_url": "https://x.test/u", "preferences_url": "https://x.test/p"}
        assert again.message.for_recipient("<m@b.test>", "a@b.test", links) == original.message.for_recipient("<m@b.test>", "a@b.test", links)
        assert again.prepared == original.prepared
    finally:
        store.close()


def test_redis_works_as_the_broker_too(project: Path, postgres_url: str) -> None:
    """The same send with Redis (redis://) in place of RabbitMQ: one worker, everyone once."""
    redis_url = os.environ.get("PUBLISHER_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
    try:
        socket.create_connection(("127.0.0.1", 6379), timeout=2).close()
    except OSError as exc:
        if os.environ.get("CI"):
            pytest.fail(f"no Redis at 127.0.0.1:6379 ({exc})")
        pytest.skip(f"no Redis at 127.0.0.1:6379 ({exc})")
    env = env_for(PUBLISHER_STORE__URL=postgres_url, PUBLISHER_DELIVERY__ENGINE="celery", PUBLISHER_BROKER_URL=redis_url,
                  PUBLISHER_DELIVERY__TASK_QUEUE=f"publisher-test-{uuid.uuid4().hex[:8]}")
    handler = FaultyRelay()
    with relay(handler) as port:
        smtp_project(project, port)
        emails = subscribe(project, 500, env)
        with workers(project, env, n=1):
            sent = publisher(project, "digest", "send", "--no-progress", env=env, timeout=120)
    assert sent.returncode == 0, sent.stdout + sent.stderr + worker_log(project)[-2000:]
    assert sorted(handler.delivered) == sorted(emails) and set(handler.delivered.values()) == {1}


def test_pending_rows_are_hinted_in_ranges_of_at_most_task_size_and_the_gone_are_left_out(store) -> None:  # type: ignore[no-untyped-def]
    """The coordinator's hints: consecutive pending rows, ``size`` at a time; a subscriber who left is not waited for."""
    from datetime import datetime, timezone

    from sqlalchemy import text

    now = datetime.now(timezone.utc)
    with store.engine.begin() as conn:
        for i in range(1, 12):
            conn.execute(text("INSERT INTO subscribers (email, status, created_at, updated_at) VALUES (:e, 'active', :n, :n)"),
                         {"e": f"a{i}@example.com", "n": now})
    store.start_issue("I", now, now, note="", publications=0)
    store.queue_rows("I", [(i, f"<m{i}@example.com>") for i in (1, 2, 3, 5, 7, 8, 9, 10, 11)], now)
    assert store.pending_ranges("I", None, 4) == [(1, 5), (7, 10), (11, 11)]
    assert store.pending_ranges("I", None, 4, handed_back_only=True) == []  # all wait behind their hints
    assert store.pending_count("I") == 9
    with store.engine.begin() as conn:
        conn.execute(text("UPDATE subscribers SET status = 'unsubscribed' WHERE id = 11"))
    assert store.pending_count("I") == 8 and store.pending_ranges("I", None, 4) == [(1, 5), (7, 10)]
    assert store.drop_unclaimable("I") == 1


# -- a worker dying on another machine ---------------------------------------------------------------------------


def test_the_warm_up_holds_back_the_fleets_rows_too(project: Path, fleet_env: dict[str, str]) -> None:
    """With the warm-up on, the coordinator makes rows only for today's allowance (200 of 250 on the first day): the
    workers send those, the issue stays open and says so. With the warm-up off again (or the next day), the next
    send finishes the issue: everyone once."""
    handler = FaultyRelay()
    warming = fleet_env | {"PUBLISHER_DELIVERY__WARMUP": "true"}
    with relay(handler) as port:
        smtp_project(project, port)
        emails = subscribe(project, 250, warming)
        with workers(project, warming):
            first = publisher(project, "digest", "send", "--no-progress", env=warming, timeout=300)
            assert first.returncode == 0, first.stdout + first.stderr + worker_log(project)[-3000:]
            assert "200 sent" in first.stdout and "50 held back by the warm-up" in first.stdout, first.stdout
            assert len(handler.delivered) == 200
            status = publisher(project, "status", env=warming).stdout
            assert "200 of today's 200 sent" in status and "(held by the warm-up)" in status, status
            again = publisher(project, "digest", "send", "--no-progress", env=warming, timeout=300)
            assert "warm-up's allowance for today is used" in again.stdout and len(handler.delivered) == 200, again.stdout
            rest = publisher(project, "digest", "send", "--no-progress", env=fleet_env, timeout=300)
    assert rest.returncode == 0 and "50 sent" in rest.stdout, rest.stdout + rest.stderr
    assert sorted(handler.delivered) == sorted(emails) and set(handler.delivered.values()) == {1}
