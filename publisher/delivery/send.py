"""Send the due issue, exactly once per subscriber, through a crash, a restart or a flaky relay.

1. Recover: runs whose process died (their lock is free: see ``store.liveness``) are marked finished, and
   their journals replayed into the send log, so what they sent is known before anything is claimed.
2. Plan the issue (an interrupted one is resumed with its own cutoff) and render each variant once.
3. Walk the subscribers who were active when the issue started, in batches by id (constant memory).
4. Claim each batch in the send log (one transaction), hand it to a worker: one worker per SMTP
   connection (or per API session), each with its own transport.
5. A worker sends, writes each outcome to the run's journal (one append per message, or per API request),
   retries what came back deferred a few times with backoff and jitter (or the server's Retry-After) up
   to [delivery].attempts, and records the batch (one transaction). A hard failure (a bad mailbox)
   suppresses the address; a refusal of the sender (relay access denied, bad credentials) never does, and
   when it hits most of the first recipients a circuit breaker stops the send with the relay's words.
6. Any error in a worker (a full disk, a database error, a transport that cannot be built) stops the
   whole send within seconds, with that error as the outcome's ``fault``.
7. The issue has gone out once every recipient was tried: what is still deferred is retried by
   :func:`retry_deferred` (the service does it on its own schedule) until [delivery].give_up_after.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from pathlib import Path

from subscribers.links import links_for as subscriber_links

from ..config import Config, parse_duration
from ..digest.archive import write_copy, write_index
from ..digest.issue import PlannedIssue, plan_issue, render_fitting, render_variants, replan_issue
from ..digest.render import RenderedIssue, Renderer
from ..models import Subscriber, SubscriberStatus
from ..store import Store
from .api import Prepared, Recipient, Result
from .backends import Transport, Variant, transport_factory
from .engine import Engine, Progress, SendOutcome, Settings, replay_journals
from .message import MessageIds, compile_message, list_id, sender_domain
from .ports import RateLimiter
from .warmup import Allowance, Ramp

log = logging.getLogger(__name__)
__all__ = ["SendOutcome", "archive", "compose", "deliver", "finish", "links_for", "merge", "recover", "retry_deferred", "send_test"]


def links_for(cfg: Config, subscriber: Subscriber) -> dict[str, str]:
    """The subscriber's signed links with this configuration's site and key (see ``subscribers.links``)."""
    return subscriber_links(cfg.site.base_url, cfg.secret_key.get(), subscriber)


def prepare(cfg: Config, rendered: RenderedIssue, *, test: bool = False) -> Prepared:
    extra = {"Feedback-ID": cfg.delivery.feedback_id} if cfg.delivery.feedback_id else {}
    return Prepared(rendered.issue.id, ("[TEST] " if test else "") + rendered.subject, cfg.digest.from_name, cfg.digest.from_address,
                    cfg.digest.reply_to, rendered.html, rendered.text,
                    list_id(cfg), extra, rendered.slots)


def recipient(cfg: Config, issue_id: str, sub: Subscriber, ids: MessageIds) -> Recipient:
    return Recipient(sub.id, sub.email, ids(issue_id, sub.id), links_for(cfg, sub), f"{issue_id}:{sub.id}")


def compose(cfg: Config, plan: PlannedIssue, rendered: dict[tuple[str, ...], RenderedIssue], now: datetime) -> _Variants:
    """Stage "compose": each rendered variant compiled once, as MIME for SMTP and as parts for the APIs."""
    return _Variants(cfg, plan, Renderer(cfg), rendered, now)


def deliver(cfg: Config, store: Store, plan: PlannedIssue, variants: _Variants, now: datetime, *,
            make_transport: Callable[[], Transport] | None = None, workers: int | None = None, stop: threading.Event | None = None,
            progress: Progress | None = None, due: datetime | None = None) -> SendOutcome:
    """Stage "deliver": the issue recorded as started, then every recipient who had joined by then walked, claimed,
    sent and recorded by the engine. The outcome says whether everyone was tried (``finished``)."""
    outcome = SendOutcome(plan.id)
    store.start_issue(plan.id, plan.cutoff, now, note=plan.note, publications=len(plan.publications))
    started = store.issue_started(plan.id)
    outcome.total = store.count_recipients(started)
    if progress:
        progress("total", outcome.total)
    allowance = warmup_allowance(cfg, store, now)
    if allowance is not None and allowance.state().left == 0:  # today's messages have gone: nothing to walk
        done = sum(n for status, n in store.send_counts(plan.id).items() if status not in ("queued", "deferred"))
        outcome.held = max(0, outcome.total - done)
    elif cfg.delivery.engine == "celery" and make_transport is None:  # the `publisher worker` processes send it
        from . import fleet

        fleet.deliver(cfg, store, plan.id, variants, store.recipients(started, batch=cfg.delivery.task_size), outcome,
                      stop or threading.Event(), progress, due, recover=lambda: recover(cfg, store, _now()), allowance=allowance)
    else:
        factory, default_workers = transport_factory(cfg)
        engine = _engine(cfg, store, plan.id, variants, make_transport or factory, workers or default_workers, stop or threading.Event(),
                         outcome, progress, due, allowance=allowance)
        engine.run(store.recipients(started, batch=cfg.delivery.batch_size))
    if outcome.held and allowance is not None:  # the walk stopped: everybody not walked waits too
        rows = sum(store.send_counts(plan.id).values())  # everyone with a row is sent, deferred or on the way
        outcome.held = max(outcome.held, outcome.total - rows)
        outcome.held_until = allowance.resumes_at
        log.warning("digest %s: the warm-up's allowance for today (%s messages, day %d of the ramp) is used; %d recipient(s) "
                    "wait for %s", plan.id, allowance.limit, allowance.day_number, outcome.held, allowance.resumes_at.isoformat())
    outcome.finished = (not outcome.stopped and not outcome.fault and not outcome.held
                        and store.unfinished_sends(plan.id, queued_only=True) == 0)
    outcome.next_retry = store.next_retry(plan.id)
    if cfg.delivery.backend == "outbox":
        outcome.outbox = cfg.path(cfg.delivery.outbox_dir)
    return outcome


def archive(cfg: Config, rendered: dict[tuple[str, ...], RenderedIssue]) -> Path:
    """Stage "archive": the issue's web copy (the everything variant), written before the first message goes out,
    since every message links to it (and a copy that cannot be written stops the send before anything is sent)."""
    return write_copy(cfg, rendered[()])


def finish(cfg: Config, store: Store, outcome: SendOutcome, now: datetime) -> None:
    """Stage "finish": once everyone was tried the issue has gone out (what is deferred is retried on its own),
    and the archive's index lists it."""
    if outcome.finished:
        store.finish_issue(outcome.issue_id, now)
        write_index(cfg, store)


def merge(outcome: SendOutcome, retried: SendOutcome) -> SendOutcome:
    """The retries of earlier issues added to this issue's outcome (what a command prints and exits with)."""
    for name in ("sent", "deferred", "failed"):
        setattr(outcome, name, getattr(outcome, name) + getattr(retried, name))
    outcome.fault, outcome.stopped = retried.fault, retried.stopped
    outcome.failures += retried.failures[: 20 - len(outcome.failures)]
    outcome.next_retry = retried.next_retry
    return outcome


def retry_deferred(cfg: Config, store: Store, now: datetime, *, due: datetime | None = None, make_transport: Callable[[], Transport] | None = None,
                   stop: threading.Event | None = None, skip: tuple[str, ...] = ()) -> SendOutcome:
    """Retry the deferred recipients of issues that have gone out (``due``: only those due by then; None: all),
    oldest issue first, after marking what is older than [delivery].give_up_after undeliverable. One outcome
    summed over the issues; an issue still being walked is left to the "deliver" stage."""
    recover(cfg, store, _now())
    give_up = timedelta(seconds=parse_duration(cfg.delivery.give_up_after))
    total = SendOutcome("retries")
    total.reason = "retries of earlier issues"
    gave_up = store.give_up(now - give_up, now, soft_bounce_limit=cfg.subscribers.soft_bounce_limit)
    if gave_up:
        log.warning("%d recipient(s) still deferred after %s are marked undeliverable (not bounced)", gave_up, cfg.delivery.give_up_after)
    opened = store.open_issue()
    stop = stop or threading.Event()
    factory, workers = transport_factory(cfg)
    for issue_id in store.due_retries(due or now + timedelta(days=3650)):
        if (opened and opened[0] == issue_id) or issue_id in skip or stop.is_set() or total.fault:
            continue
        plan = replan_issue(cfg, store, issue_id, now)
        renderer = Renderer(cfg)
        variants = _Variants(cfg, plan, renderer, {}, now)
        outcome = SendOutcome(issue_id)
        log.info("retrying the deferred recipients of %s", issue_id)
        if cfg.delivery.engine == "celery" and make_transport is None:
            from . import fleet

            fleet.deliver(cfg, store, issue_id, variants, None, outcome, stop, None, due, recover=lambda: recover(cfg, store, _now()))
        else:
            engine = _engine(cfg, store, issue_id, variants, make_transport or factory, workers, stop, outcome, None, due,
                             allowance=warmup_allowance(cfg, store, now))
            engine.run(store.deferred_recipients(issue_id, due, batch=cfg.delivery.batch_size))
        for name in ("sent", "deferred", "failed", "skipped"):
            setattr(total, name, getattr(total, name) + getattr(outcome, name))
        total.failures += outcome.failures[: 20 - len(total.failures)]
        total.fault, total.stopped = outcome.fault, outcome.stopped
        total.held += outcome.held
    total.next_retry = store.next_retry()
    return total


def recover(cfg: Config, store: Store, now: datetime) -> int:
    """Runs whose process is gone are marked finished, and what their journals say they sent is recorded.
    Returns how many outcomes were replayed. Cheap when nothing died: a lock test per unfinished run."""
    dead = store.dead_runs()  # nothing changed yet: their rows stay theirs until their journals are replayed
    settings = settings_of(cfg)
    replayed = replay_journals(store, settings.journal_dir, now, reconcile=_reconciler(cfg), retry_in=settings.retry_in,
                               soft_bounce_limit=settings.soft_bounce_limit)
    store.retire_runs(_ready_to_retire(store, dead), now)  # what they held and nobody knows the outcome of: deferred, due at once
    return replayed


# A dead run of another machine keeps its rows a while: its journal (what it sent and had not recorded yet) is on that
# machine's disk, and a worker there replays it (a sibling within a second, a restarted one as it starts). Handed
# back at once, those messages would be sent twice. Only when no worker there does so in time are they sent again.
HANDOVER_GRACE = 20.0  # seconds, when no worker is alive on that machine (systemd restarts one in 5: deploy/)
HANDOVER_MAX = 120.0  # seconds, when one is alive there but has not replayed it (stuck, or its journal_dir differs)


def _ready_to_retire(store: Store, dead: list[str]) -> list[str]:
    """The dead runs that can be retired now: this machine's (their journals were just replayed), and another
    machine's once a worker there has had its chance to replay theirs (see HANDOVER_GRACE). When a run was first
    seen dead is kept in the store, so the grace runs out for short-lived callers too (cron's `run --once`)."""
    import socket

    if not dead:
        return []
    here, now = socket.gethostname(), datetime.now(timezone.utc)
    holders = store.run_holders(dead)
    ready, waiting = [], []
    for run_id in dead:
        host = holders.get(run_id, "").rpartition(":")[0]
        (ready if not host or host == here else waiting).append(run_id)
    if waiting:
        hosts_alive = {h.rpartition(":")[0] for _, h, *_ in store.live_workers(now)}
        for run_id in waiting:
            host = holders[run_id].rpartition(":")[0]
            grace = HANDOVER_MAX if host in hosts_alive else HANDOVER_GRACE
            key = f"run.dead_since:{run_id}"
            seen = store.setting(key)
            if seen is None:
                store.set_setting(key, now.isoformat())
                log.info("a send run on %s (%s) died; its rows wait up to %.0f s for a worker on %s to replay its journal",
                         host, run_id, grace, host)
                continue
            try:
                waited = max(0.0, (now - datetime.fromisoformat(seen)).total_seconds())
            except ValueError:
                waited = grace
            if waited >= grace:
                log.warning("the journal of a dead send run on %s (%s) was not replayed within %.0f s; its unrecorded "
                            "messages are sent again (at most its in-flight batches)", host, run_id, waited)
                ready.append(run_id)
    for run_id in ready:
        if run_id in waiting:
            store.set_setting(f"run.dead_since:{run_id}", None)
    return ready


def _reconciler(cfg: Config) -> Callable[[str, list[Recipient]], list[Result]] | None:
    """The provider's way to tell what it accepted, for adapters that have one (built only when asked)."""
    if cfg.delivery.backend in ("outbox", "smtp"):
        return None

    def ask(issue_id: str, recipients: list[Recipient]) -> list[Result]:
        from .backends import make_adapter

        adapter = make_adapter(cfg)
        try:
            reconcile = getattr(adapter, "reconcile", None)
            return reconcile(issue_id, recipients) if reconcile else []
        finally:
            adapter.close()  # type: ignore[attr-defined]

    return ask


def send_test(cfg: Config, store: Store, now: datetime, address: str, make_transport: Callable[[], Transport] | None = None) -> Result:
    """One copy of the next issue to ``address``, subject prefixed [TEST], outside the send log."""
    from subscribers import normalise_email

    plan = plan_issue(cfg, store, now)
    email = normalise_email(address)
    sub = store.subscriber(email) or Subscriber(0, email, SubscriberStatus.ACTIVE, now, now)
    rendered = render_variants(cfg, plan, [sub.topics])[sub.topics]
    variant = Variant(compile_message(cfg, rendered, now, test=True), prepare(cfg, rendered, test=True))
    transport = (make_transport or transport_factory(cfg)[0])()
    try:
        [result] = transport.send(variant, [recipient(cfg, f"test-{plan.id}", sub, MessageIds(variant.message.domain, store.message_id_key()))])
    finally:
        transport.close()
    return result


def _now() -> datetime:
    return datetime.now(timezone.utc)


def settings_of(cfg: Config) -> Settings:
    d = cfg.delivery
    return Settings(attempts=d.attempts, retry_base=d.retry_base, retry_first=parse_duration(d.retry_first), retry_max=parse_duration(d.retry_max),
                    stale_after=parse_duration(d.stale_after), rate_limit=_rate_limit(cfg),
                    send_empty=cfg.digest.send_empty, soft_bounce_limit=cfg.subscribers.soft_bounce_limit,
                    journal_dir=cfg.path(d.journal_dir), domain=sender_domain(cfg))


def warmup_allowance(cfg: Config, store: Store, now: datetime) -> Allowance | None:
    """Today's allowance of the sending domain while it warms up ([delivery].warmup); None when off or warmed up."""
    d = cfg.delivery
    if not d.warmup:
        return None
    allowance = Allowance(store, Ramp(d.warmup_start, d.warmup_full, d.warmup_days), sender_domain(cfg).lower(), now, cfg.site.timezone)
    return allowance if allowance.limit is not None else None


def _rate_limit(cfg: Config) -> float:
    """Messages a second for the whole send (every worker): the relay's or the provider's limit; 0: none."""
    d = cfg.delivery
    return d.smtp.rate_limit if d.backend == "smtp" else 0.0 if d.backend == "outbox" else d.api.rate_limit


def _engine(cfg: Config, store: Store, issue_id: str, variants: _Variants, make_transport: Callable[[], Transport], workers: int,
            stop: threading.Event, outcome: SendOutcome, progress: Progress | None, due: datetime | None, *,
            limiter: RateLimiter | None = None, allowance: Allowance | None = None) -> Engine:
    settings = settings_of(cfg)
    ids = MessageIds(settings.domain, store.message_id_key())
    return Engine(settings, store, issue_id, variants, lambda sub: recipient(cfg, issue_id, sub, ids),
                  lambda sid: ids(issue_id, sid), make_transport, workers, stop, outcome, progress, due=due,
                  limiter=limiter, allowance=allowance)


class _Variants:
    """The issue's variants by topic set, each rendered and compiled once; one a subscriber picked mid-send is made then."""

    def __init__(self, cfg: Config, plan: PlannedIssue, renderer: Renderer, rendered: dict[tuple[str, ...], RenderedIssue], now: datetime) -> None:
        self.cfg, self.plan, self.renderer, self.now = cfg, plan, renderer, now
        self.lock = threading.Lock()
        self.by_topics: dict[tuple[str, ...], tuple[Variant, bool]] = {}
        for key, r in rendered.items():
            self._add(key, r)

    def _add(self, key: tuple[str, ...], r: RenderedIssue) -> tuple[Variant, bool]:
        entry = (Variant(compile_message(self.cfg, r, self.now), prepare(self.cfg, r)), r.issue.is_empty)
        self.by_topics[key] = entry
        return entry

    def get(self, topics: tuple[str, ...]) -> tuple[Variant, bool]:
        """(variant, is_empty)."""
        entry = self.by_topics.get(topics)
        if entry is None:
            with self.lock:
                entry = self.by_topics.get(topics) or self._add(topics, render_fitting(self.cfg, self.plan, topics, self.renderer))
        return entry


