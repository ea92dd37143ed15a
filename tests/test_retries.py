"""Issue 12, point 2 and 4: deferred recipients are retried on their own schedule, never hold back or merge into a
newer issue, are given up (undeliverable, not bounced) after [delivery].give_up_after, and soft bounces add up.

A real store, a real SMTP server (aiosmtpd) answering per recipient, the real engine.
"""

from __future__ import annotations

import email
import email.policy
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from sqlalchemy import select

from publisher.config import Config
from publisher.delivery.send import retry_deferred
from publisher.models import Publication, SubscriberStatus
from publisher.pipeline import run_ingest, send_digest
from publisher.store import Store, open_store, tables
from subscribers import add_subscriber

from .conftest import NOW
from .smtp_faults import FaultyRelay, relay

# The engine stamps rows with the real clock, so these tests plan their issues on it too (a fixed NOW would
# drift past give_up_after as the calendar moves on).
T0 = datetime.now(timezone.utc)


class PerRecipient(FaultyRelay):
    """``answers[address]``: the reply to RCPT for that address (else 250)."""

    def __init__(self) -> None:
        super().__init__()
        self.answers: dict[str, str] = {}

    async def handle_RCPT(self, server: Any, session: Any, envelope: Any, address: str, rcpt_options: list[str]) -> str:
        if address in self.answers:
            return self.answers[address]
        return await super().handle_RCPT(server, session, envelope, address, rcpt_options)


def b_is_over_quota(cfg: Config) -> tuple[Store, PerRecipient, datetime]:
    """The sample content ingested on the real clock (the engine stamps rows with it), readers a@ and b@ confirmed,
    and a relay whose answer to b is "mailbox full": (the open store, the relay's handler, now)."""
    store = open_store(cfg.store_url)
    now = datetime.now(timezone.utc)
    run_ingest(cfg, store, now)
    for address in ("a@example.com", "b@example.com"):
        add_subscriber(store, address, now - timedelta(days=1), confirmed=True)
    handler = PerRecipient()
    handler.answers["b@example.com"] = "452 4.2.2 <b@example.com>: Mailbox temporarily over quota"
    return store, handler, now


def smtp(cfg: Config, port: int) -> Config:
    d = replace(cfg.delivery, backend="smtp", smtp=replace(cfg.delivery.smtp, host="127.0.0.1", port=port, security="none"))
    return replace(cfg, delivery=d)


@pytest.fixture
def db(cfg: Config) -> Store:
    store = open_store(cfg.store_url)
    run_ingest(cfg, store, NOW)
    for address in ("a@example.com", "b@example.com", "c@example.com"):
        add_subscriber(store, address, NOW - timedelta(days=1), confirmed=True)
    yield store
    store.close()


def row(db: Store, issue: str, address: str) -> Any:
    sub = db.subscriber(address)
    assert sub is not None
    with db.engine.connect() as conn:
        return conn.execute(select(tables.send_log).where(tables.send_log.c.issue_id == issue, tables.send_log.c.subscriber_id == sub.id)).one()


def subjects_to(handler: FaultyRelay, address: str) -> list[str]:
    got = []
    for raw in handler.messages:
        msg = email.message_from_bytes(raw, policy=email.policy.default)
        if msg["To"] and address in str(msg["To"]):
            got.append(f"{msg['Message-ID']}")
    return got


def test_a_deferred_recipient_backs_off_from_a_minute_and_never_holds_back_or_merges_into_the_next_issue(cfg: Config, db: Store) -> None:
    handler = PerRecipient()
    handler.answers["b@example.com"] = "452 4.2.2 <b@example.com>: Mailbox temporarily over quota"
    with relay(handler) as port:
        c = smtp(cfg, port)
        first = send_digest(c, db, T0)
        assert first.finished and (first.sent, first.deferred) == (2, 1) and first.exit_code == 3
        r = row(db, first.issue_id, "b@example.com")
        assert r.status == "deferred" and r.kind == "soft" and r.deferrals == 1
        wait = (r.next_attempt_at - datetime.now(timezone.utc)).total_seconds()
        assert 50 <= wait <= 70  # [delivery].retry_first, with jitter
        # Nothing is due yet: the service's look (due = now) sends nothing.
        assert retry_deferred(c, db, datetime.now(timezone.utc), due=datetime.now(timezone.utc)).sent == 0
        # Due in a minute; still refused: the next wait doubles.
        later = datetime.now(timezone.utc) + timedelta(minutes=2)
        again = retry_deferred(c, db, later, due=later)
        assert (again.sent, again.deferred) == (0, 1)
        r = row(db, first.issue_id, "b@example.com")
        assert r.deferrals == 2 and 100 <= (r.next_attempt_at - datetime.now(timezone.utc)).total_seconds() <= 140

        # A new issue goes out to everyone at once, b included, while b's copy of the first is still deferred.
        db.upsert_publication(Publication("new-report", "http://127.0.0.1:8000/new", "A new report", "Summary.", "report",
                                          T0 + timedelta(days=2), None, ("security-cooperation",)), T0 + timedelta(days=2))
        handler.answers.clear()  # b's mailbox has room again
        second = send_digest(c, db, T0 + timedelta(days=2), due=datetime.now(timezone.utc))  # b's retry is not due yet
        assert second.issue_id != first.issue_id and second.finished
        assert row(db, second.issue_id, "b@example.com").status == "sent"
        assert row(db, first.issue_id, "b@example.com").status == "deferred"  # not merged, not dropped
        # Its own retry then delivers the first issue to b, as it was (its own Message-ID).
        due = datetime.now(timezone.utc) + timedelta(hours=1)
        assert retry_deferred(c, db, due, due=due).sent == 1
    to_b = subjects_to(handler, "b@example.com")
    assert len(to_b) == 2 and len(set(to_b)) == 2 and any(first.issue_id in m for m in to_b) and any(second.issue_id in m for m in to_b)
    assert all(len(subjects_to(handler, a)) == 2 for a in ("a@example.com", "c@example.com"))  # one of each issue


def test_after_give_up_after_a_deferred_recipient_is_undeliverable_not_bounced(cfg: Config, db: Store) -> None:
    handler = PerRecipient()
    handler.answers["c@example.com"] = "451 4.4.1 <c@example.com>: host not reachable"
    with relay(handler) as port:
        c = smtp(cfg, port)
        first = send_digest(c, db, T0)
        assert first.deferred == 1
        six_days = datetime.now(timezone.utc) + timedelta(days=6)  # past the default give_up_after (5 days)
        retry_deferred(c, db, six_days, due=six_days)
    r = row(db, first.issue_id, "c@example.com")
    assert r.status == "undeliverable"
    sub = db.subscriber("c@example.com")
    assert sub is not None and sub.status is SubscriberStatus.ACTIVE  # one undelivered issue suppresses nobody
    with db.engine.connect() as conn:
        assert conn.execute(select(tables.subscribers.c.soft_bounces).where(tables.subscribers.c.id == sub.id)).scalar_one() == 1
    assert db.unfinished_sends(first.issue_id) == 0


def test_soft_bounces_in_a_row_suppress_and_a_delivery_resets_the_count(store: Store) -> None:
    sub, _ = store.add_subscriber("full@example.com", SubscriberStatus.ACTIVE, (), NOW)
    other, _ = store.add_subscriber("fine@example.com", SubscriberStatus.ACTIVE, (), NOW)

    def issue(n: int, status: str, kind: str, who: int = sub.id) -> None:
        issue_id = f"2026-W{n:02d}"
        store.start_issue(issue_id, NOW, NOW)
        store.claim_batch(issue_id, "run", [(who, f"<{n}@x>")], NOW, NOW)
        store.record_sends(issue_id, [(who, status, "552 5.2.2 mailbox full", 1, kind)], NOW, run_id="run", soft_bounce_limit=3)

    def soft_bounces(sid: int) -> int:
        with store.engine.connect() as conn:
            return conn.execute(select(tables.subscribers.c.soft_bounces).where(tables.subscribers.c.id == sid)).scalar_one()

    issue(1, "failed", "soft")
    issue(2, "failed", "soft")
    assert soft_bounces(sub.id) == 2 and store.subscriber_by_id(sub.id).status is SubscriberStatus.ACTIVE  # type: ignore[union-attr]
    issue(3, "sent", "")
    assert soft_bounces(sub.id) == 0  # delivered: the count starts again
    for n in (4, 5, 6):
        issue(n, "failed", "soft")
    assert store.subscriber_by_id(sub.id).status is SubscriberStatus.BOUNCED  # type: ignore[union-attr]
    issue(7, "deferred", "sender", who=other.id)  # the relay refusing us: never the subscriber's fault
    assert store.subscriber_by_id(other.id).status is SubscriberStatus.ACTIVE and soft_bounces(other.id) == 0  # type: ignore[union-attr]


def test_one_worker_that_dies_ends_the_send_in_seconds_and_never_hangs_the_others(cfg: Config, db: Store) -> None:
    """Four workers; the second one's transport cannot be made (as with a disk that filled up): the send ends with that
    fault within seconds (the other workers' end markers are theirs: nobody waits for ever), and the next send
    delivers everyone once."""
    import time

    from publisher.delivery.backends import SmtpTransport

    for i in range(300):
        add_subscriber(db, f"many{i}@example.com", T0 - timedelta(days=1), confirmed=True)
    handler = PerRecipient()
    handler.delay = 0.002
    made = []

    def transport() -> SmtpTransport:
        made.append(1)
        if len(made) == 2:
            raise OSError(28, "No space left on device", "/var/spool/publisher")
        return SmtpTransport(c)

    with relay(handler) as port:
        c = smtp(cfg, port)
        began = time.monotonic()
        broken = send_digest(c, db, T0, make_transport=transport, workers=4)
        took = time.monotonic() - began
        assert broken.fault.startswith("No space left on device (/var/spool/publisher)") and took < 15, (took, broken.fault)
        assert broken.exit_code == 4 and not broken.finished
        again = send_digest(c, db, T0)
    assert again.exit_code == 0, again.failures
    everyone = [*(f"many{i}@example.com" for i in range(300)), "a@example.com", "b@example.com", "c@example.com"]
    assert all(handler.delivered[e] == 1 for e in everyone), [e for e in everyone if handler.delivered[e] != 1][:5]
