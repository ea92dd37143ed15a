"""Send the due issue: plan it, render each variant once, then one claimed send-log row per subscriber."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from subscribers.tokens import make_token

from ..config import Config
from ..digest.archive import write_copy, write_index
from ..digest.issue import plan_issue, render_variants
from ..errors import DeliveryError
from ..models import Subscriber, SubscriberStatus
from ..store import Store
from .backends import Backend, make_backend
from .message import CompiledMessage, compile_message, message_id

log = logging.getLogger(__name__)


@dataclass
class SendOutcome:
    issue_id: str
    sent: int = 0
    skipped: int = 0
    failed: int = 0
    reason: str = ""  # why nothing was sent, when nothing was
    archive: Path | None = None
    outbox: Path | None = None
    failures: list[str] = field(default_factory=list)


def links_for(cfg: Config, subscriber: Subscriber) -> dict[str, str]:
    base = cfg.site.base_url.rstrip("/")
    key = cfg.secret_key.get()
    return {
        "unsubscribe_url": f"{base}/unsubscribe/{make_token(key, 'unsubscribe', subscriber.id)}",
        "preferences_url": f"{base}/preferences/{make_token(key, 'preferences', subscriber.id)}",
    }


def send_issue(cfg: Config, store: Store, now: datetime, backend: Backend | None = None) -> SendOutcome:
    plan = plan_issue(cfg, store, now)
    outcome = SendOutcome(plan.id)
    if plan.is_empty(cfg) and not cfg.digest.send_empty:
        outcome.reason = "nothing new since the last issue"
        return outcome
    recipients = store.subscribers(status=SubscriberStatus.ACTIVE)
    variants = render_variants(cfg, plan, {s.topics for s in recipients})
    messages = {key: compile_message(cfg, rendered, now) for key, rendered in variants.items()}
    store.start_issue(plan.id, plan.cutoff, now, note=plan.note, publications=len(plan.publications))
    outcome.archive = write_copy(cfg, variants[()])
    backend = backend or make_backend(cfg)
    try:
        for sub in recipients:
            if variants[sub.topics].issue.is_empty and not cfg.digest.send_empty:
                outcome.skipped += 1
                continue
            if not _send_one(cfg, store, backend, plan.id, messages[sub.topics], sub, now, outcome):
                outcome.skipped += 1
    finally:
        backend.close()
    store.finish_issue(plan.id, now)
    write_index(cfg, store)
    if cfg.delivery.backend == "outbox":
        outcome.outbox = cfg.path(cfg.delivery.outbox_dir)
    return outcome


def _send_one(cfg: Config, store: Store, backend: Backend, issue_id: str, message: CompiledMessage, sub: Subscriber,
              now: datetime, outcome: SendOutcome) -> bool:
    """Claim the send-log row, send, record. False when another run already claimed this recipient."""
    if not store.claim_send(issue_id, sub.id, message_id(issue_id, sub.id, message.domain), now):
        return False
    try:
        backend.send(message.for_recipient(sub.id, sub.email, links_for(cfg, sub)), cfg.digest.from_address, sub.email)
    except DeliveryError as exc:
        store.mark_send(issue_id, sub.id, "failed", now, str(exc))
        outcome.failed += 1
        outcome.failures.append(str(exc))
        log.error("%s", exc)
        return True
    store.mark_send(issue_id, sub.id, "sent", now)
    outcome.sent += 1
    return True
