"""Exactly once per subscriber, through a flaky relay, concurrent senders, mid-send changes and SIGKILL."""

from __future__ import annotations

import csv
import io
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

import pytest

from publisher.config import Config
from publisher.delivery import send_issue
from publisher.models import SubscriberStatus
from publisher.pipeline import run_ingest
from publisher.store import Store, open_store
from subscribers import add_subscriber, export_csv

from .conftest import NOW, TEST_SECRET_KEY
from .smtp_faults import FaultyRelay, relay


def smtp(cfg: Config, port: int, **delivery: object) -> Config:
    d = replace(cfg.delivery, backend="smtp", retry_base=0.01, batch_size=20, stale_after="1s",
                smtp=replace(cfg.delivery.smtp, host="127.0.0.1", port=port, security="none", timeout=5, connections=2))
    return replace(cfg, delivery=replace(d, **delivery))


@pytest.fixture
def db(cfg: Config) -> Store:
    store = open_store(cfg.store_url)
    run_ingest(cfg, store, NOW)
    yield store
    store.close()


def add_many(store: Store, n: int, start: int = 0) -> list[str]:
    emails = [f"reader{i}@example.com" for i in range(start, start + n)]
    for email in emails:
        add_subscriber(store, email, NOW - timedelta(days=1), confirmed=True)
    return emails


def test_a_flaky_relay_still_gives_every_good_subscriber_exactly_one_copy(cfg: Config, db: Store) -> None:
    emails = add_many(db, 900)
    refused = {emails[5], emails[450], emails[899]}
    handler = FaultyRelay(refuse=refused, tempfail=0.10, drop_every=300)
    with relay(handler) as port:
        runs = []
        for _ in range(4):  # "after at most a few runs"
            outcome = send_issue(smtp(cfg, port), db, NOW)
            runs.append(outcome)
            if outcome.finished:
                break
    assert runs[-1].finished, [(o.sent, o.deferred, o.failed) for o in runs]
    assert handler.tempfailed > 50 and handler.dropped >= 2  # the faults really happened
    good = [e for e in emails if e not in refused]
    assert all(handler.delivered[e] == 1 for e in good), {e: handler.delivered[e] for e in good if handler.delivered[e] != 1}
    assert not any(handler.delivered[e] for e in refused)
    exported = {row["email"]: row["status"] for row in csv.DictReader(io.StringIO(export_csv(db.subscribers())))}
    assert {exported[e] for e in refused} == {"bounced"} and exported[good[0]] == "active"
    assert sum(o.failed for o in runs) == 3


def test_two_sends_at_once_send_each_message_once(cfg: Config, db: Store) -> None:
    emails = add_many(db, 200)
    handler = FaultyRelay(delay=0.002)
    with relay(handler) as port:
        c = smtp(cfg, port)
        outcomes = []
        threads = [threading.Thread(target=lambda: outcomes.append(send_issue(c, open_store(c.store_url), NOW))) for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
    assert sum(o.sent for o in outcomes) == 200
    assert all(handler.delivered[e] == 1 for e in emails)


def test_unsubscribed_mid_send_is_skipped_and_a_late_joiner_waits(cfg: Config, db: Store) -> None:
    emails = add_many(db, 60)
    handler = FaultyRelay()
    with relay(handler) as port:
        c = smtp(cfg, port, batch_size=10, smtp=replace(cfg.delivery.smtp, host="127.0.0.1", port=port, security="none", connections=1))
        seen = []

        def progress(status: str, n: int) -> None:  # after the first batch: one leaves, one joins, then we stop
            if status == "sent" and not seen:
                seen.append(n)
                db.set_subscriber_status(emails[-1], SubscriberStatus.UNSUBSCRIBED, NOW)
                add_subscriber(db, "late@example.com", NOW + timedelta(hours=1), confirmed=True)

        first = send_issue(c, db, NOW, progress=progress)
    assert first.finished
    assert handler.delivered[emails[-1]] == 0 and handler.delivered["late@example.com"] == 0
    assert all(handler.delivered[e] == 1 for e in emails[:-1])


PUBLISHER = [str(Path(sys.executable).parent / "publisher")]


def test_sigkill_three_times_loses_nothing(project: Path) -> None:
    handler = FaultyRelay(delay=0.01)
    with relay(handler) as port:
        (project / "config.toml").write_text(
            (project / "config.toml").read_text(encoding="utf-8")
            .replace('backend = "outbox"', 'backend = "smtp"')
            .replace('batch_size = 50', 'batch_size = 5')
            .replace('stale_after = "2m"', 'stale_after = "1s"')
            .replace('retry_base = 2.0', 'retry_base = 0.01')
            .replace('host = "localhost"', 'host = "127.0.0.1"')
            .replace('port = 587', f'port = {port}')
            .replace('security = "starttls"', 'security = "none"')
            .replace('sample_subscribers = ["reader@example.com", "analyst@example.com", "editor@example.com"]', 'sample_subscribers = []'),
            encoding="utf-8")
        env = {k: v for k, v in os.environ.items() if not k.startswith("PUBLISHER_")} | {"PUBLISHER_SECRET_KEY": TEST_SECRET_KEY}
        rows = "email\n" + "".join(f"reader{i}@example.com\n" for i in range(300))
        (project / "list.csv").write_text(rows, encoding="utf-8")
        for args in (["ingest"], ["subscribers", "import", "list.csv", "--confirmed"]):
            subprocess.run([*PUBLISHER, *args], cwd=project, env=env, check=True, capture_output=True, timeout=60)
        kills = []
        for target in (40, 120, 200):
            proc = subprocess.Popen([*PUBLISHER, "digest", "send", "--no-progress"], cwd=project, env=env,
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            deadline = time.monotonic() + 60
            while sum(handler.delivered.values()) < target and proc.poll() is None and time.monotonic() < deadline:
                time.sleep(0.01)
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=10)
            kills.append(sum(handler.delivered.values()))
            time.sleep(1.2)  # the killed run's heartbeat goes stale
        done = subprocess.run([*PUBLISHER, "digest", "send", "--no-progress"], cwd=project, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "stays open" not in done.stdout, done.stdout
    emails = [f"reader{i}@example.com" for i in range(300)]
    assert all(handler.delivered[e] >= 1 for e in emails), [e for e in emails if not handler.delivered[e]]
    duplicates = sum(handler.delivered[e] - 1 for e in emails)
    in_flight_per_kill = 5 * 2  # batch_size x connections: claimed but not yet recorded
    assert duplicates <= 3 * in_flight_per_kill, (duplicates, kills)


def test_a_mail_api_backend_through_the_engine_honours_429_and_sends_each_once(cfg: Config, db: Store) -> None:
    """Postmark's batch endpoint, throttling once, then accepting: the engine waits and sends everyone once."""
    import json

    from .servers import recording_server

    emails = add_many(db, 30)
    calls = []

    def postmark(method: str, path: str, body: bytes) -> tuple[int, dict[str, str], bytes]:
        calls.append(path)
        if len(calls) == 1:
            return 429, {"Retry-After": "0"}, b'{"ErrorCode": 429, "Message": "Rate limit exceeded"}'
        batch = json.loads(body)
        return 200, {"Content-Type": "application/json"}, json.dumps(
            [{"ErrorCode": 0, "Message": "OK", "MessageID": f"m{i}", "To": m["To"]} for i, m in enumerate(batch)]).encode()

    with recording_server(postmark) as (base, requests):
        c = replace(cfg, delivery=replace(cfg.delivery, backend="postmark", retry_base=0.01, api=replace(cfg.delivery.api, base_url=base)),
                    api_key=type(cfg.api_key)("server-token"))
        outcome = send_issue(c, db, NOW)
    assert outcome.finished and outcome.sent == 30
    sent_to = [m["To"] for r in requests[1:] for m in json.loads(r["body"])]
    assert sorted(sent_to) == sorted(set(sent_to)) and set(emails) <= set(sent_to)
    assert all(r["path"] == "/email/batch" and r["headers"]["X-Postmark-Server-Token"] == "server-token" for r in requests)
