"""Send the due issue, exactly once per subscriber, through a crash, a restart or a flaky relay.

1. Plan the issue (an interrupted one is resumed with its own cutoff) and render each variant once.
2. Walk the subscribers who were active when the issue started, in batches by id (constant memory).
3. Claim each batch in the send log (one transaction), hand it to a worker: one worker per SMTP
   connection (or per API session), each with its own transport.
4. A worker sends, retries what came back deferred with exponential backoff and jitter (or the
   server's Retry-After) up to [delivery].attempts, and records the batch (one transaction). A 5xx
   marks the send failed and the subscriber bounced. What is still deferred waits for the next run.
5. Stop (SIGTERM, Ctrl-C) finishes the message in flight, records everything, and leaves the rest for
   the next run. The issue is finished when no row is queued or deferred.
"""

from __future__ import annotations

import logging
import queue
import random
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from urllib.parse import urlsplit

from subscribers.tokens import make_token

from ..config import Config, parse_duration
from ..digest.archive import write_copy, write_index
from ..digest.issue import PlannedIssue, plan_issue, render_fitting, render_variants
from ..digest.render import RenderedIssue, Renderer
from ..models import Subscriber, SubscriberStatus
from ..store import Store
from .api import Prepared, Recipient, Result
from .backends import Transport, Variant, transport_factory
from .message import compile_message, message_id

log = logging.getLogger(__name__)
Progress = Callable[[str, int], None]  # ("total", n) once, then (status, count) as results are recorded


@dataclass
class SendOutcome:
    issue_id: str
    sent: int = 0
    deferred: int = 0
    failed: int = 0
    skipped: int = 0  # already sent by an earlier run, or nothing in their topics this time
    total: int = 0
    finished: bool = False
    stopped: bool = False
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


def prepare(cfg: Config, rendered: RenderedIssue, *, test: bool = False) -> Prepared:
    extra = {"Feedback-ID": cfg.delivery.feedback_id} if cfg.delivery.feedback_id else {}
    return Prepared(rendered.issue.id, ("[TEST] " if test else "") + rendered.subject, cfg.digest.from_name, cfg.digest.from_address,
                    cfg.digest.reply_to, rendered.html, rendered.text,
                    f"{cfg.site.name} <digest.{urlsplit(cfg.site.base_url).hostname}>", extra, rendered.slots)


def recipient(cfg: Config, issue_id: str, sub: Subscriber, domain: str) -> Recipient:
    return Recipient(sub.id, sub.email, message_id(issue_id, sub.id, domain), links_for(cfg, sub), f"{issue_id}:{sub.id}")


def send_issue(cfg: Config, store: Store, now: datetime, *, make_transport: Callable[[], Transport] | None = None,
               workers: int | None = None, stop: threading.Event | None = None, progress: Progress | None = None) -> SendOutcome:
    plan = plan_issue(cfg, store, now)
    outcome = SendOutcome(plan.id)
    if plan.is_empty(cfg) and not cfg.digest.send_empty:
        outcome.reason = "nothing new since the last issue"
        return outcome
    renderer = Renderer(cfg)
    rendered = render_variants(cfg, plan, store.subscriber_topic_sets(), renderer)
    variants = _Variants(cfg, plan, renderer, rendered, now)
    store.start_issue(plan.id, plan.cutoff, now, note=plan.note, publications=len(plan.publications))
    started = store.issue_started(plan.id)
    outcome.archive = write_copy(cfg, rendered[()])  # the everything variant is always rendered
    outcome.total = store.count_recipients(started)
    if progress:
        progress("total", outcome.total)
    factory, default_workers = transport_factory(cfg)
    engine = _Engine(cfg, store, plan.id, variants, make_transport or factory, workers or default_workers, stop or threading.Event(), outcome, progress)
    engine.run(store.recipients(started, batch=cfg.delivery.batch_size))
    if not outcome.stopped and store.unfinished_sends(plan.id) == 0:
        store.finish_issue(plan.id, now)
        write_index(cfg, store)
        outcome.finished = True
    if cfg.delivery.backend == "outbox":
        outcome.outbox = cfg.path(cfg.delivery.outbox_dir)
    return outcome


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
        [result] = transport.send(variant, [recipient(cfg, f"test-{plan.id}", sub, variant.message.domain)])
    finally:
        transport.close()
    return result


def _now() -> datetime:
    return datetime.now(timezone.utc)


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


class _Engine:
    def __init__(self, cfg: Config, store: Store, issue_id: str, variants: _Variants,
                 make_transport: Callable[[], Transport], workers: int, stop: threading.Event, outcome: SendOutcome,
                 progress: Progress | None) -> None:
        self.cfg, self.store, self.issue_id, self.variants = cfg, store, issue_id, variants
        self.make_transport, self.workers, self.stop, self.outcome = make_transport, workers, stop, outcome
        self.progress = progress or (lambda status, n: None)
        self.run_id = uuid.uuid4().hex
        self.stale = timedelta(seconds=parse_duration(cfg.delivery.stale_after))
        self.lock = threading.Lock()
        self.limiter = _RateLimiter(cfg.delivery.smtp.rate_limit if cfg.delivery.backend == "smtp" else 0.0)
        self.domain = cfg.digest.from_address.rpartition("@")[2] or "localhost"

    def run(self, batches: Iterable[list[Subscriber]]) -> None:
        self.store.register_run(self.run_id, self.issue_id, _now())
        done = threading.Event()
        beating = threading.Thread(target=self._heartbeat, args=(done,), name="send-heartbeat", daemon=True)
        beating.start()
        work: queue.Queue[list[Subscriber] | None] = queue.Queue(maxsize=2 * self.workers)
        threads = [threading.Thread(target=self._worker, args=(work,), name=f"send-{i}", daemon=True) for i in range(self.workers)]
        for thread in threads:
            thread.start()
        try:
            for batch in batches:
                if self.stop.is_set():
                    break
                claimed = self._claim(batch)
                if claimed:
                    work.put(claimed)
        finally:
            for _ in threads:
                work.put(None)
            for thread in threads:
                thread.join()
            done.set()
            beating.join()
            self.store.finish_run(self.run_id, _now())
            self.outcome.stopped = self.stop.is_set()

    def _heartbeat(self, done: threading.Event) -> None:
        """Beat four times per stale_after, from a thread of its own (the others may block on the relay)."""
        interval = max(0.1, self.stale.total_seconds() / 4)
        while not done.wait(interval):
            try:
                self.store.heartbeat(self.run_id, _now())
            except Exception:  # noqa: BLE001 - a missed beat is retried; the send goes on
                log.warning("send run %s: heartbeat failed", self.run_id, exc_info=True)

    def _claim(self, batch: list[Subscriber]) -> list[Subscriber]:
        send_empty = self.cfg.digest.send_empty
        wanted = [s for s in batch if send_empty or not self.variants.get(s.topics)[1]]  # nothing in their topics: skip
        now = _now()
        got = self.store.claim_batch(self.issue_id, self.run_id, [(s.id, message_id(self.issue_id, s.id, self.domain)) for s in wanted],
                                     now, now - self.stale)
        with self.lock:
            self.outcome.skipped += len(batch) - len(got)
        return [s for s in wanted if s.id in got]

    def _worker(self, work: queue.Queue[list[Subscriber] | None]) -> None:
        transport = self.make_transport()
        try:
            while (batch := work.get()) is not None:
                self._deliver(transport, batch)
        finally:
            transport.close()

    def _deliver(self, transport: Transport, batch: list[Subscriber]) -> None:
        """Send a claimed batch with retries, then record it. On stop, what was not attempted is released as deferred."""
        by_id = {s.id: s for s in batch}
        attempts = {s.id: 0 for s in batch}
        final: dict[int, Result] = {}
        pending = list(batch)
        for attempt in range(1, self.cfg.delivery.attempts + 1):
            results: list[Result] = []
            for group in _groups(pending, transport.max_batch):
                if self.stop.is_set():
                    break
                for sub in group:
                    self.limiter.wait(self.stop)
                variant = self.variants.get(group[0].topics)[0]
                results += transport.send(variant, [recipient(self.cfg, self.issue_id, s, self.domain) for s in group])
                for s in group:
                    attempts[s.id] += 1
            for res in results:
                final[res.subscriber_id] = res
            pending = [by_id[r.subscriber_id] for r in results if r.status == "deferred"]
            if not pending or self.stop.is_set() or attempt == self.cfg.delivery.attempts:
                break
            self.stop.wait(_backoff(self.cfg.delivery.retry_base, attempt, max((r.retry_after or 0) for r in results if r.status == "deferred")))
        records = []
        for sub in batch:
            res = final.get(sub.id) or Result(sub.id, "deferred", "not attempted: the send was stopped")
            records.append((sub.id, res.status, res.error, attempts[sub.id]))
        self.store.record_sends(self.issue_id, records, _now())
        with self.lock:
            for _, status, error, _ in records:
                setattr(self.outcome, status, getattr(self.outcome, status) + 1)
                if status != "sent" and error and len(self.outcome.failures) < 20:
                    self.outcome.failures.append(error)
        for status in ("sent", "deferred", "failed"):
            n = sum(1 for r in records if r[1] == status)
            if n:
                self.progress(status, n)


def _groups(subs: list[Subscriber], size: int) -> Iterable[list[Subscriber]]:
    """Consecutive runs of the same variant, at most ``size`` long (an API request carries one variant)."""
    group: list[Subscriber] = []
    for sub in sorted(subs, key=lambda s: s.topics):
        if group and (len(group) >= size or group[0].topics != sub.topics):
            yield group
            group = []
        group.append(sub)
    if group:
        yield group


def _backoff(base: float, attempt: int, retry_after: float) -> float:
    """Exponential with full jitter, never shorter than the server asked, capped at a minute."""
    return min(60.0, max(retry_after, base * (2 ** (attempt - 1)) * (0.5 + random.random())))


class _RateLimiter:
    """At most ``rate`` messages a second across all workers (0: unlimited)."""

    def __init__(self, rate: float) -> None:
        self.interval = 1.0 / rate if rate > 0 else 0.0
        self.next = time.monotonic()
        self.lock = threading.Lock()

    def wait(self, stop: threading.Event) -> None:
        if not self.interval:
            return
        with self.lock:
            now = time.monotonic()
            at = max(self.next, now)
            self.next = at + self.interval
        if at > now:
            stop.wait(at - now)
