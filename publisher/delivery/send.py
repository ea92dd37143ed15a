"""Send the due issue: select, render each variant once, then one claimed send-log row per subscriber."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from subscribers.tokens import make_token

from ..config import Config
from ..digest import RenderedIssue, Renderer, issue_id_for, select_issue
from ..errors import DeliveryError
from ..fsutil import write_atomic
from ..models import DigestIssue, Publication, Subscriber, SubscriberStatus
from ..store import Store
from .backends import Backend, make_backend
from .message import build_message, message_id

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


@dataclass(frozen=True)
class PlannedIssue:
    id: str
    cutoff: datetime
    publications: tuple[Publication, ...]  # every publication in the window, before any cap or topic filter
    base: DigestIssue  # the variant with every topic


def plan_issue(cfg: Config, store: Store, now: datetime) -> PlannedIssue:
    """The next issue: an unfinished one is resumed with its own cutoff, else a new one up to now."""
    opened = store.open_issue()
    issue_id, cutoff = opened if opened else (issue_id_for(now, cfg.site.timezone, store.issue_ids()), now)
    last = store.last_sent_issue()
    pubs = store.publications(seen_after=last[1] if last else None, seen_until=cutoff)
    return PlannedIssue(issue_id, cutoff, tuple(pubs), _select(cfg, issue_id, pubs, now, ()))


def _select(cfg: Config, issue_id: str, pubs: Sequence[Publication], now: datetime, topics: tuple[str, ...]) -> DigestIssue:
    d = cfg.digest
    return select_issue(issue_id, pubs, now, type_order=d.type_order, max_items=d.max_items, topics=topics, note=d.note)


def links_for(cfg: Config, subscriber: Subscriber) -> dict[str, str]:
    base = cfg.site.base_url.rstrip("/")
    key = cfg.secret_key.get()
    return {
        "unsubscribe_url": f"{base}/unsubscribe/{make_token(key, 'unsubscribe', subscriber.id)}",
        "preferences_url": f"{base}/preferences/{make_token(key, 'preferences', subscriber.id)}",
    }


def render_variants(cfg: Config, plan: PlannedIssue, recipients: list[Subscriber]) -> dict[tuple[str, ...], RenderedIssue]:
    """Every distinct topic selection, rendered once, before anything is sent (a template error sends nothing)."""
    renderer = Renderer(cfg)
    variants: dict[tuple[str, ...], RenderedIssue] = {}
    for key in sorted({s.topics for s in recipients} | {()}):
        issue = plan.base if not key else _select(cfg, plan.id, plan.publications, plan.base.created_at, key)
        variants[key] = renderer.render(issue)
    return variants


def send_issue(cfg: Config, store: Store, now: datetime, backend: Backend | None = None) -> SendOutcome:
    plan = plan_issue(cfg, store, now)
    outcome = SendOutcome(plan.id)
    if plan.base.is_empty and not cfg.digest.send_empty:
        outcome.reason = "nothing new since the last issue"
        return outcome
    recipients = store.subscribers(status=SubscriberStatus.ACTIVE)
    variants = render_variants(cfg, plan, recipients)
    store.start_issue(plan.id, plan.cutoff, now)
    outcome.archive = write_archive(cfg, variants[()])
    backend = backend or make_backend(cfg)
    domain = cfg.digest.from_address.rpartition("@")[2] or "localhost"
    try:
        for sub in recipients:
            rendered = variants[sub.topics]
            if rendered.issue.is_empty and not cfg.digest.send_empty:
                outcome.skipped += 1
                continue
            if not store.claim_send(plan.id, sub.id, message_id(plan.id, sub.id, domain), now):
                outcome.skipped += 1  # already sent (or being sent) by an earlier or parallel run
                continue
            try:
                backend.send(build_message(cfg, rendered, sub, links_for(cfg, sub), now), cfg.digest.from_address, sub.email)
            except DeliveryError as exc:
                store.mark_send(plan.id, sub.id, "failed", now, str(exc))
                outcome.failed += 1
                outcome.failures.append(str(exc))
                log.error("%s", exc)
                continue
            store.mark_send(plan.id, sub.id, "sent", now)
            outcome.sent += 1
    finally:
        backend.close()
    store.finish_issue(plan.id, now)
    if cfg.delivery.backend == "outbox":
        outcome.outbox = cfg.path(cfg.delivery.outbox_dir)
    return outcome


def write_archive(cfg: Config, rendered: RenderedIssue) -> Path:
    """The view-in-browser copy: the everything variant, with links that lead to the site instead of a person."""
    base = cfg.site.base_url.rstrip("/")
    html, _ = rendered.personalise({"unsubscribe_url": f"{base}/unsubscribe", "preferences_url": f"{base}/preferences", "email": "you"})
    path = cfg.path(cfg.site.public_dir) / "digests" / f"{rendered.issue.id}.html"
    write_atomic(path, html.encode("utf-8"))
    return path
