"""Sending an issue: to the Maildir outbox and to a real SMTP server (aiosmtpd, in-process, free port)."""

from __future__ import annotations

import email
import email.policy
import mailbox
import re
import socket
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path

import pytest
from aiosmtpd.controller import Controller

from publisher.config import Config, DeliveryConfig, SmtpConfig
from publisher.errors import TemplateError
from publisher.models import SubscriberStatus
from publisher.pipeline import run_ingest, send_digest
from publisher.store import Store, open_store
from subscribers import add_subscriber

from .conftest import NOW


@pytest.fixture
def ready(cfg: Config) -> tuple[Config, Store]:
    store = open_store(cfg.store_url)
    run_ingest(cfg, store, NOW)
    add_subscriber(store, "all@example.com", NOW, confirmed=True)
    add_subscriber(store, "topic@example.com", NOW, confirmed=True, topics=["security-cooperation"])
    add_subscriber(store, "other@example.com", NOW, confirmed=True, topics=["no-such-topic"])
    add_subscriber(store, "pending@example.com", NOW)
    add_subscriber(store, "gone@example.com", NOW, confirmed=True)
    store.set_subscriber_status("gone@example.com", SubscriberStatus.UNSUBSCRIBED, NOW)
    yield cfg, store
    store.close()


def outbox(cfg: Config) -> list[email.message.EmailMessage]:
    box = mailbox.Maildir(cfg.path(cfg.delivery.outbox_dir), create=False)
    return [email.message_from_bytes(m.as_bytes(), policy=email.policy.default) for m in box]  # type: ignore[misc]


def test_outbox_gets_one_message_per_active_subscriber_with_matching_items(ready) -> None:
    cfg, store = ready
    outcome = send_digest(cfg, store, NOW)
    assert (outcome.sent, outcome.skipped, outcome.failed) == (2, 1, 0)  # other@ has nothing in its topics
    msgs = {m["To"]: m for m in outbox(cfg)}
    assert set(msgs) == {"all@example.com", "topic@example.com"}
    assert len({m["Message-ID"] for m in msgs.values()}) == 2
    for msg in msgs.values():
        assert msg["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
        assert msg["List-Id"] == "Publisher Sample Institute <digest.example.org>"
        assert all(len(line) <= 998 for line in msg.as_bytes().splitlines())
    assert store.send_counts(outcome.issue_id) == {"sent": 2}
    assert outcome.archive is not None and not re.search(r"slot-[0-9a-f]{32}-", outcome.archive.read_text(encoding="utf-8"))


def test_nothing_is_sent_twice_and_an_empty_week_sends_nothing(ready) -> None:
    cfg, store = ready
    send_digest(cfg, store, NOW)
    second = send_digest(cfg, store, NOW)
    assert second.reason == "nothing new since the last issue" and second.sent == 0
    assert len(outbox(cfg)) == 2


def test_a_template_error_sends_nothing_and_starts_no_issue(ready, project: Path) -> None:
    cfg, store = ready
    tpl = project / "templates" / "email" / "digest.txt.j2"
    tpl.write_text("{{ issue.id }\n", encoding="utf-8")
    with pytest.raises(TemplateError):
        send_digest(cfg, store, NOW)
    assert store.open_issue() is None and store.issue_ids() == []
    assert not cfg.path(cfg.delivery.outbox_dir).exists()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Recorder:
    def __init__(self) -> None:
        self.envelopes: list[tuple[str, list[str], bytes]] = []

    async def handle_DATA(self, server, session, envelope):  # noqa: ANN001, ANN201 - aiosmtpd's handler API
        self.envelopes.append((envelope.mail_from, list(envelope.rcpt_tos), envelope.original_content))
        return "250 OK"


def test_smtp_backend_delivers_to_a_real_smtp_server(ready) -> None:
    cfg, store = ready
    handler = Recorder()
    port = free_port()
    controller = Controller(handler, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        smtp_cfg = replace(cfg, delivery=DeliveryConfig(backend="smtp", retry_base=0.01, smtp=SmtpConfig(host="127.0.0.1", port=port, security="none", timeout=5)))
        outcome = send_digest(smtp_cfg, store, NOW)
    finally:
        controller.stop()
    assert outcome.sent == 2
    assert sorted(rcpt[0] for _, rcpt, _ in handler.envelopes) == ["all@example.com", "topic@example.com"]
    assert all(frm == "digest@example.org" for frm, _, _ in handler.envelopes)
    msg = email.message_from_bytes(handler.envelopes[0][2], policy=email.policy.default)
    assert msg.get_content_type() == "multipart/alternative"


def test_an_unreachable_smtp_server_fails_clearly(ready) -> None:
    cfg, store = ready
    port = free_port()  # nobody listens there
    smtp_cfg = replace(cfg, delivery=DeliveryConfig(backend="smtp", retry_base=0.01, smtp=SmtpConfig(host="127.0.0.1", port=port, security="none", timeout=2)))
    outcome = send_digest(smtp_cfg, store, NOW)
    assert (outcome.sent, outcome.deferred, outcome.failed) == (0, 2, 0)  # left for the retries, not bounced
    assert f"SMTP server 127.0.0.1:{port}: ConnectionRefusedError" in outcome.failures[0]
    # Everyone was tried, so the issue has gone out (a next one is not held back); the two deferred are retried
    # by the service from a minute on, and the exit code says so.
    assert outcome.finished and store.unfinished_sends(outcome.issue_id) == 2 and outcome.exit_code == 3
    assert outcome.next_retry is not None and 50 <= (outcome.next_retry - datetime.now(timezone.utc)).total_seconds() <= 70
