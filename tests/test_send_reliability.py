"""Exactly once per subscriber, through a flaky relay, concurrent senders, mid-send changes and SIGKILL."""

from __future__ import annotations

import csv
import io
import threading
from dataclasses import replace
from datetime import timedelta

import pytest

from publisher.config import Config
from publisher.models import SubscriberStatus
from publisher.pipeline import run_ingest, send_digest
from publisher.store import Store, open_store
from subscribers import add_subscriber, export_csv

from .conftest import NOW
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
        for _ in range(4):  # "after at most a few runs" (each retries what the last left deferred)
            outcome = send_digest(smtp(cfg, port), db, NOW)
            runs.append(outcome)
            if outcome.exit_code == 0:
                break
    assert runs[0].finished and runs[-1].exit_code == 0, [(o.sent, o.deferred, o.failed) for o in runs]
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
        threads = [threading.Thread(target=lambda: outcomes.append(send_digest(c, open_store(c.store_url), NOW))) for _ in range(2)]
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

        first = send_digest(c, db, NOW, progress=progress)
    assert first.finished
    assert handler.delivered[emails[-1]] == 0 and handler.delivered["late@example.com"] == 0
    assert all(handler.delivered[e] == 1 for e in emails[:-1])


# kill -9 mid-send, on the default configuration: tests/test_delivery_faults.py


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
        outcome = send_digest(c, db, NOW)
    assert outcome.finished and outcome.sent == 30
    sent_to = [m["To"] for r in requests[1:] for m in json.loads(r["body"])]
    assert sorted(sent_to) == sorted(set(sent_to)) and set(emails) <= set(sent_to)
    assert all(r["path"] == "/email/batch" and r["headers"]["X-Postmark-Server-Token"] == "server-token" for r in requests)
