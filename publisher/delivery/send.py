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

import json
import logging
import os
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
from ..digest.issue import PlannedIssue, plan_issue, render_fitting, render_variants, replan_issue
from ..digest.render import RenderedIssue, Renderer
from ..models import Subscriber, SubscriberStatus
from ..store import Store
from .api import Prepared, Recipient, Result
from .backends import ApiTransport, Transport, Variant, transport_factory
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
    fault: str = ""  # what stopped the send and needs a human (or a fix of the machine); "" when nothing did
    retried: int = 0  # earlier issues' deferred recipients delivered by this run's retries
    next_retry: datetime | None = None  # when the service next retries what is still deferred

    @property
    def exit_code(self) -> int:
        """0 all done; 3 recipients left deferred (the service retries them); 4 a fault stopped the send."""
        return 4 if self.fault else 3 if self.deferred else 0


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
               workers: int | None = None, stop: threading.Event | None = None, progress: Progress | None = None,
               due: datetime | None = None) -> SendOutcome:
    """Send the due issue (resuming an interrupted one), then retry earlier issues' deferred recipients.

    ``due``: take only deferred rows due by then (the service); None takes every deferred row at once (an
    operator's `digest send`: "try again now"). The new issue goes first: stragglers never hold it back.
    """
    stop = stop or threading.Event()
    outcome = _send_planned(cfg, store, now, make_transport=make_transport, workers=workers, stop=stop, progress=progress, due=due)
    if not (outcome.stopped or outcome.fault):
        retried = retry_deferred(cfg, store, now, due=due, make_transport=make_transport, stop=stop, skip=(outcome.issue_id,))
        for name in ("sent", "deferred", "failed"):
            setattr(outcome, name, getattr(outcome, name) + getattr(retried, name))
        outcome.retried, outcome.fault, outcome.stopped = retried.sent, retried.fault, retried.stopped
        outcome.failures += retried.failures[: 20 - len(outcome.failures)]
        outcome.next_retry = retried.next_retry
    return outcome


def _send_planned(cfg: Config, store: Store, now: datetime, *, make_transport: Callable[[], Transport] | None,
                  workers: int | None, stop: threading.Event, progress: Progress | None, due: datetime | None) -> SendOutcome:
    recover(cfg, store, _now())
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
    engine = _Engine(cfg, store, plan.id, variants, make_transport or factory, workers or default_workers, stop, outcome, progress, due=due)
    engine.run(store.recipients(started, batch=cfg.delivery.batch_size))
    if not outcome.stopped and not outcome.fault and store.unfinished_sends(plan.id, queued_only=True) == 0:
        store.finish_issue(plan.id, now)  # every recipient tried: it has gone out; what is deferred is retried on its own
        write_index(cfg, store)
        outcome.finished = True
    outcome.next_retry = store.next_retry(plan.id)
    if cfg.delivery.backend == "outbox":
        outcome.outbox = cfg.path(cfg.delivery.outbox_dir)
    return outcome


def retry_deferred(cfg: Config, store: Store, now: datetime, *, due: datetime | None = None, make_transport: Callable[[], Transport] | None = None,
                   stop: threading.Event | None = None, skip: tuple[str, ...] = ()) -> SendOutcome:
    """Retry the deferred recipients of issues that have gone out (``due``: only those due by then; None: all),
    oldest issue first, after marking what is older than [delivery].give_up_after undeliverable. One outcome
    summed over the issues; an issue still being walked is left to :func:`send_issue`."""
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
        engine = _Engine(cfg, store, issue_id, variants, make_transport or factory, workers, stop, outcome, None, due=due)
        engine.run(store.deferred_recipients(issue_id, due, batch=cfg.delivery.batch_size))
        for name in ("sent", "deferred", "failed", "skipped"):
            setattr(total, name, getattr(total, name) + getattr(outcome, name))
        total.failures += outcome.failures[: 20 - len(total.failures)]
        total.fault, total.stopped = outcome.fault, outcome.stopped
    total.retried = total.sent
    total.next_retry = store.next_retry()
    return total


def recover(cfg: Config, store: Store, now: datetime) -> int:
    """Runs whose process is gone are marked finished, and what their journals say they sent is recorded.
    Returns how many outcomes were replayed. Cheap when nothing died: a lock test per unfinished run."""
    store.reap_runs(now)
    return replay_journals(store, cfg.path(cfg.delivery.journal_dir), now)


def replay_journals(store: Store, folder: Path, now: datetime) -> int:
    if not folder.is_dir():
        return 0
    replayed = 0
    for path in sorted(folder.glob("*.journal")):
        run_id = path.stem
        if store.run_alive(run_id):
            continue
        by_issue: dict[str, list[tuple[int, str, str, int, str]]] = {}
        with path.open("rb") as fh:
            for line in fh:
                try:  # the last line of a killed run may be cut short: it is skipped, its message counts as in flight
                    issue_id, sid, status, error, attempts, kind = json.loads(line)
                except (ValueError, TypeError):
                    continue
                if status in ("sent", "failed", "deferred") and isinstance(sid, int):
                    by_issue.setdefault(str(issue_id), []).append((sid, status, str(error), int(attempts), str(kind)))
        for issue_id, rows in by_issue.items():
            store.record_sends(issue_id, rows, now, run_id=run_id)  # only rows that dead run still held
            replayed += len(rows)
        path.unlink(missing_ok=True)
    if replayed:
        log.info("recovered %d outcome(s) from the journals of send runs that died", replayed)
    return replayed


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


class _Journal:
    """An append-only file per run: one line per outcome, written as the relay answers (a write(2) each, no fsync:
    a kill -9 does not lose what reached the kernel). Replayed by the next run if this one dies; gone when the
    run has recorded everything in the send log."""

    def __init__(self, folder: Path, run_id: str, issue_id: str) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.path = folder / f"{run_id}.journal"
        self.issue_id = issue_id
        self.fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)

    def write(self, results: list[Result], attempt: int) -> None:
        lines = "".join(json.dumps([self.issue_id, r.subscriber_id, r.status, r.error, attempt, getattr(r, "kind", "")]) + "\n" for r in results)
        os.write(self.fd, lines.encode("utf-8"))

    def close(self, *, keep: bool) -> None:
        os.close(self.fd)
        if not keep:
            self.path.unlink(missing_ok=True)


class _Breaker:
    """Trips when the relay refuses the sender, not the recipients: most of the first results, or a long run of them."""

    FIRST, SHARE, RUN = 20, 0.8, 50

    def __init__(self) -> None:
        self.seen = self.refused = self.in_a_row = 0
        self.lock = threading.Lock()

    def note(self, results: list[Result]) -> str:
        """The refusal that trips the breaker, or ""."""
        with self.lock:
            for r in results:
                self.seen += 1
                sender = getattr(r, "kind", "") == "sender"
                self.refused += sender
                self.in_a_row = self.in_a_row + 1 if sender else 0
                early = self.seen <= self.FIRST and self.refused >= min(5, self.FIRST) and self.refused >= self.SHARE * self.seen
                if sender and (early or self.in_a_row >= self.RUN):
                    return r.error
        return ""


class _Engine:
    def __init__(self, cfg: Config, store: Store, issue_id: str, variants: _Variants,
                 make_transport: Callable[[], Transport], workers: int, stop: threading.Event, outcome: SendOutcome,
                 progress: Progress | None, *, due: datetime | None = None) -> None:
        self.cfg, self.store, self.issue_id, self.variants = cfg, store, issue_id, variants
        self.make_transport, self.workers, self.stop, self.outcome = make_transport, workers, stop, outcome
        self.progress = progress or (lambda status, n: None)
        self.due = due
        self.run_id = uuid.uuid4().hex
        self.stale = timedelta(seconds=parse_duration(cfg.delivery.stale_after))
        first, most = parse_duration(cfg.delivery.retry_first), parse_duration(cfg.delivery.retry_max)
        self.retry_in = lambda n: min(most, first * 2 ** min(n - 1, 30)) * (0.9 + 0.2 * random.random())
        self.lock = threading.Lock()
        self.halt = threading.Event()  # set on stop (a signal) or on a fault: every thread winds down
        self.breaker = _Breaker()
        self.limiter = _RateLimiter(cfg.delivery.smtp.rate_limit if cfg.delivery.backend == "smtp" else 0.0)
        self.domain = cfg.digest.from_address.rpartition("@")[2] or "localhost"

    def fail(self, fault: str) -> None:
        with self.lock:
            if not self.outcome.fault:
                self.outcome.fault = fault
                log.error("send of %s stopped: %s", self.issue_id, fault)
        self.halt.set()

    def halted(self) -> bool:
        if self.stop.is_set():
            self.halt.set()
        return self.halt.is_set()

    def run(self, batches: Iterable[list[Subscriber]]) -> None:
        from ..store.liveness import holder

        lock = self.store.hold_run(self.run_id)
        self.store.register_run(self.run_id, self.issue_id, _now(), holder())
        journal = None
        beating = None
        done = threading.Event()
        threads: list[threading.Thread] = []
        work: queue.Queue[list[Subscriber] | None] = queue.Queue(maxsize=2 * self.workers)
        try:
            journal = _Journal(self.cfg.path(self.cfg.delivery.journal_dir), self.run_id, self.issue_id)
            self.journal = journal
            beating = threading.Thread(target=self._heartbeat, args=(done,), name="send-heartbeat", daemon=True)
            beating.start()
            threads = [threading.Thread(target=self._worker, args=(work,), name=f"send-{i}", daemon=True) for i in range(self.workers)]
            for thread in threads:
                thread.start()
            for batch in batches:
                if self.halted():
                    break
                claimed = self._claim(batch)
                while claimed and not self.halted():
                    try:
                        work.put(claimed, timeout=0.2)  # never blocks for good: every worker may have died
                        claimed = []
                    except queue.Full:
                        continue
        except Exception as exc:  # noqa: BLE001 - a database error, a full disk: the send stops and says why
            self.fail(_describe(exc))
        finally:
            told = 0
            while told < len(threads) and any(t.is_alive() for t in threads):
                try:
                    work.put(None, timeout=0.2)
                    told += 1
                except queue.Full:
                    if self.halt.is_set():
                        _drain(work)  # claimed, never tried: left queued, free for the next run once this one finishes
            for thread in threads:
                thread.join()
            done.set()
            if beating is not None:
                beating.join()
            try:
                self.store.finish_run(self.run_id, _now())  # its queued rows are free for the next run at once
            except Exception as exc:  # noqa: BLE001 - the lock below still dies with us
                self.fail(_describe(exc))
            if journal is not None:
                journal.close(keep=bool(self.outcome.fault) and self._unrecorded)
            lock.release()
            self.outcome.stopped = self.stop.is_set()

    _unrecorded = False  # a batch's outcomes reached the journal but not the send log (the journal is kept for replay)

    def _heartbeat(self, done: threading.Event) -> None:
        """For `publisher status` (liveness is the run's lock): from a thread of its own, the others may block on the relay."""
        interval = max(0.1, self.stale.total_seconds() / 4)
        while not done.wait(interval):
            try:
                self.store.heartbeat(self.run_id, _now())
            except Exception:  # noqa: BLE001 - a missed beat is harmless
                log.warning("send run %s: heartbeat failed", self.run_id, exc_info=True)

    def _claim(self, batch: list[Subscriber]) -> list[Subscriber]:
        send_empty = self.cfg.digest.send_empty
        wanted = [s for s in batch if send_empty or not self.variants.get(s.topics)[1]]  # nothing in their topics: skip
        now = _now()
        got = self.store.claim_batch(self.issue_id, self.run_id, [(s.id, message_id(self.issue_id, s.id, self.domain)) for s in wanted],
                                     now, now - self.stale, due=self.due)
        with self.lock:
            self.outcome.skipped += len(batch) - len(got)
        return [s for s in wanted if s.id in got]

    def _worker(self, work: queue.Queue[list[Subscriber] | None]) -> None:
        transport = None
        try:
            transport = self.make_transport()
            while (batch := work.get()) is not None:
                if self.halted():
                    continue  # claimed, never tried: left queued, free for the next run once this one finishes
                self._deliver(transport, batch)
        except Exception as exc:  # noqa: BLE001 - the send stops within seconds, and says why
            self.fail(_describe(exc))
            _drain(work)
        finally:
            if transport is not None:
                try:
                    transport.close()
                except Exception:  # noqa: BLE001
                    log.warning("closing a transport failed", exc_info=True)

    def _deliver(self, transport: Transport, batch: list[Subscriber]) -> None:
        """Send a claimed batch with retries, then record it. What was not tried stays queued for the next run."""
        by_id = {s.id: s for s in batch}
        attempts = {s.id: 0 for s in batch}
        final: dict[int, Result] = {}
        pending = list(batch)
        # SMTP and the outbox go one message per call, so the journal knows each one the moment the relay answered.
        size = transport.max_batch if isinstance(transport, ApiTransport) else 1
        try:
            for attempt in range(1, self.cfg.delivery.attempts + 1):
                results: list[Result] = []
                for group in _groups(pending, size):
                    if self.halted():
                        break
                    for sub in group:
                        self.limiter.wait(self.halt)
                    variant = self.variants.get(group[0].topics)[0]
                    got = transport.send(variant, [recipient(self.cfg, self.issue_id, s, self.domain) for s in group])
                    for s in group:
                        attempts[s.id] += 1
                    results += got
                    final.update((r.subscriber_id, r) for r in got)
                    self.journal.write(got, 1)
                    tripped = self.breaker.note(got)
                    if tripped:
                        self.fail(f"the relay refuses to send for us: {tripped}. Nobody was marked bounced. Fix the relay's settings or "
                                  "the credentials, then `publisher digest send` (or leave it to the service: it retries).")
                pending = [by_id[r.subscriber_id] for r in results if r.status == "deferred" and getattr(r, "kind", "") != "sender"]
                if not pending or self.halted() or attempt == self.cfg.delivery.attempts:
                    break
                self.halt.wait(_backoff(self.cfg.delivery.retry_base, attempt, max((r.retry_after or 0) for r in results if r.status == "deferred")))
        finally:
            self._record(batch, final, attempts)

    def _record(self, batch: list[Subscriber], final: dict[int, Result], attempts: dict[int, int]) -> None:
        records = [(s.id, r.status, r.error, attempts[s.id], getattr(r, "kind", "")) for s in batch if (r := final.get(s.id))]
        try:
            self.store.record_sends(self.issue_id, records, _now(), run_id=self.run_id, retry_in=self.retry_in,
                                    soft_bounce_limit=self.cfg.subscribers.soft_bounce_limit)
        except Exception:
            self._unrecorded = True  # the journal has them: the next run replays it
            raise
        with self.lock:
            for _, status, error, _, _ in records:
                setattr(self.outcome, status, getattr(self.outcome, status) + 1)
                if status != "sent" and error and len(self.outcome.failures) < 20:
                    self.outcome.failures.append(error)
        for status in ("sent", "deferred", "failed"):
            n = sum(1 for r in records if r[1] == status)
            if n:
                self.progress(status, n)


def _drain(work: queue.Queue[list[Subscriber] | None]) -> None:
    while True:
        try:
            work.get_nowait()
        except queue.Empty:
            return


def _describe(exc: BaseException) -> str:
    """One line naming the cause: the errno's words for a disk or network error, else the exception itself."""
    if isinstance(exc, OSError) and exc.strerror:
        where = f" ({exc.filename})" if exc.filename else ""
        return f"{exc.strerror}{where}. Free the disk or fix the path, then `publisher digest send`"
    return f"{type(exc).__name__}: {exc}"


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
