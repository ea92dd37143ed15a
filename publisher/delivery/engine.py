"""The send engine: claim batches in the send log, hand them to workers, journal and record every outcome.

It depends on three small protocols (``ports``): a :class:`~.ports.SendLog` (the store), a
:class:`~.ports.Mailer` per worker (SMTP, the outbox, a mail API) and a :class:`~.ports.WorkQueue` between
the claimer and the workers, plus plain :class:`Settings`. It imports neither the configuration nor SQL;
``send.py`` builds all of that from the configuration and runs the stages.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import random
import re
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path

from ..models import Subscriber
from .api import Recipient, Result
from .ports import Allowance, Mailer, RateLimiter, SendLog, Variants, WorkQueue

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
    next_retry: datetime | None = None  # when the service next retries what is still deferred
    held: int = 0  # recipients the warm-up held back: today's allowance was used (they go from held_until)
    held_until: datetime | None = None

    @property
    def exit_code(self) -> int:
        """0 all done; 3 recipients left deferred (the service retries them); 4 a fault stopped the send."""
        return 4 if self.fault else 3 if self.deferred else 0


@dataclass(frozen=True)
class Settings:
    """What the engine needs to know, as plain values ([delivery] and friends, read by ``send.py``)."""

    attempts: int = 3  # quick tries per message in one run
    retry_base: float = 2.0  # seconds: the quick tries' backoff
    retry_first: float = 60.0  # seconds: the service's first retry of a deferred row; doubling up to retry_max
    retry_max: float = 4 * 3600.0
    stale_after: float = 120.0  # seconds: only judges runs of versions without a lock
    rate_limit: float = 0.0  # messages a second across the workers; 0: unlimited
    send_empty: bool = False
    soft_bounce_limit: int = 3
    journal_dir: Path = Path("var/journal")
    domain: str = "localhost"  # of the Message-IDs

    def retry_in(self, deferrals: int) -> float:
        """Seconds until a row deferred ``deferrals`` times is due again: retry_first doubling up to retry_max, +-10%."""
        return min(self.retry_max, self.retry_first * 2 ** min(deferrals - 1, 30)) * (0.9 + 0.2 * random.random())


class ThreadQueue:
    """The one-machine work queue: a bounded queue between the claimer and the worker threads."""

    def __init__(self, size: int) -> None:
        self.q: queue.Queue[list[Subscriber] | None] = queue.Queue(maxsize=size)

    def put(self, batch: list[Subscriber] | None, timeout: float) -> bool:
        try:
            self.q.put(batch, timeout=timeout)
            return True
        except queue.Full:
            return False

    def get(self, timeout: float) -> list[Subscriber] | None:
        try:
            return self.q.get(timeout=timeout)
        except queue.Empty:
            return []

    def drain(self) -> None:
        while True:
            try:
                self.q.get_nowait()
            except queue.Empty:
                return


Reconcile = Callable[[str, list[Recipient]], list[Result]]  # (issue id, recipients) -> what the provider says it accepted


def replay_journals(store: SendLog, folder: Path, now: datetime, reconcile: Reconcile | None = None, *,
                    retry_in: Callable[[int], float] | None = None, soft_bounce_limit: int = 0) -> int:
    """Record what the journals of dead runs say they sent, then drop the journals.

    Only rows those runs still hold, and only rows not recorded yet (a journal also holds what its run did record),
    so a replay is idempotent: two processes replaying one journal at once record each outcome once. A subscriber's
    last line is their outcome. An API request the dead run had sent without an answer (``inflight`` with no
    outcome after it) is unknown: with ``reconcile`` the provider is asked which of its recipients it accepted
    (Postmark's outbound search, Mailgun's events), and those are recorded as sent, so only the others go again.
    Call it before the dead runs are retired (their rows must still be theirs).
    """
    if not folder.is_dir():
        return 0
    replayed = 0
    for path in sorted(folder.glob("*.journal")):
        run_id = path.stem
        if store.run_alive(run_id):
            continue
        last: dict[str, dict[int, tuple[str, str, int, str]]] = {}
        unknown: dict[str, dict[int, Recipient]] = {}
        try:
            fh = path.open("rb")
        except FileNotFoundError:
            continue  # its run finished (and removed it) a moment ago
        with fh:
            for line in fh:
                try:  # the last line of a killed run may be cut short: it is skipped, its message counts as in flight
                    entry = json.loads(line)
                    if entry[0] == "inflight":
                        _, issue_id, batch = entry
                        unknown.setdefault(str(issue_id), {}).update(
                            (int(sid), Recipient(int(sid), str(email), str(mid), {}, str(key))) for sid, email, mid, key in batch)
                        continue
                    issue_id, sid, status, error, kind = entry
                except (ValueError, TypeError, IndexError):
                    continue
                if status in ("sent", "failed", "deferred") and isinstance(sid, int):
                    seen = last.setdefault(str(issue_id), {})
                    tries = seen[sid][2] + 1 if sid in seen else 1
                    seen[sid] = (status, str(error), tries, str(kind))
                    unknown.get(str(issue_id), {}).pop(sid, None)
        for issue_id, pending in unknown.items():
            if pending and reconcile is not None:
                try:
                    found = [r for r in reconcile(issue_id, list(pending.values())) if r.status == "sent"]
                except Exception as exc:  # noqa: BLE001 - the provider cannot be asked: those are sent again
                    log.warning("could not ask the provider about %d message(s) in flight when a run died (%s); they are sent again",
                                len(pending), exc)
                    found = []
                last.setdefault(issue_id, {}).update((r.subscriber_id, ("sent", "", 1, "")) for r in found)
                log.info("%d of %d message(s) in flight when a run died were accepted by the provider", len(found), len(pending))
        for issue_id, outcomes in last.items():
            rows = [(sid, status, error, tries, kind) for sid, (status, error, tries, kind) in outcomes.items()]
            store.record_sends(issue_id, rows, now, run_id=run_id, only_queued=True, retry_in=retry_in, soft_bounce_limit=soft_bounce_limit)
            replayed += len(rows)
        path.unlink(missing_ok=True)
    if replayed:
        log.info("recovered %d outcome(s) from the journals of send runs that died", replayed)
    return replayed


class _Journal:
    """An append-only file per run: one line per outcome, written as the relay answers (a write(2) each, no fsync:
    a kill -9 does not lose what reached the kernel). Replayed by the next run if this one dies; gone when the
    run has recorded everything in the send log."""

    def __init__(self, folder: Path, run_id: str, issue_id: str) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.path = folder / f"{run_id}.journal"
        self.issue_id = issue_id
        self.fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)

    def inflight(self, recipients: list[Recipient]) -> None:
        """An API request about to go: if the run dies before its answer, the next run asks the provider."""
        batch = [[r.subscriber_id, r.email, r.message_id, r.idempotency_key] for r in recipients]
        os.write(self.fd, (json.dumps(["inflight", self.issue_id, batch]) + "\n").encode("utf-8"))

    def write(self, results: list[Result]) -> None:
        """One line per outcome, [issue, subscriber, status, error, kind]: one try each (replay counts the lines)."""
        lines = "".join(json.dumps([self.issue_id, r.subscriber_id, r.status, r.error, r.kind]) + "\n" for r in results)
        os.write(self.fd, lines.encode("utf-8"))

    def close(self, *, keep: bool) -> None:
        os.close(self.fd)
        if not keep:
            self.path.unlink(missing_ok=True)


class _Breaker:
    """Trips when the relay refuses the sender, not the recipients.

    - Refusals of us (kind "sender"): 5 that are at least 80% of the first 20 results, or later 50 in a row that
      span at least 3 recipient domains (one company's server refusing its own people is not our relay).
    - The same permanent refusal for most of the first 20 (with addresses taken out): a relay that calls every
      address unknown is misconfigured (or refusing us in words we do not know), not holding a list of bad addresses.
    """

    FIRST, SHARE, RUN, DOMAINS = 20, 0.8, 50, 3

    def __init__(self) -> None:
        self.seen = self.refused = 0
        self.row: list[str] = []  # domains of the current run of sender refusals
        self.early: Counter[str] = Counter()  # the first results' refusals, addresses taken out
        self.lock = threading.Lock()

    def note(self, results: list[Result], domains: list[str]) -> str:
        """The refusal that trips the breaker, or ""."""
        with self.lock:
            for r, domain in zip(results, domains, strict=False):
                self.seen += 1
                sender = r.kind == "sender"
                self.refused += sender
                self.row = [*self.row, domain][-self.RUN:] if sender else []
                if self.seen <= self.FIRST and r.status == "failed":
                    self.early[_ADDRESS.sub("<address>", r.error)] += 1
                if sender and self.seen <= self.FIRST and self.refused >= 5 and self.refused >= self.SHARE * self.seen:
                    return r.error
                if sender and len(self.row) >= self.RUN and len(set(self.row)) >= self.DOMAINS:
                    return r.error
                if self.seen == self.FIRST and self.early and self.early.most_common(1)[0][1] >= self.SHARE * self.FIRST:
                    self.suspect = self.early.most_common(1)[0][0]
                    return f"{self.suspect} (the same answer for nearly every recipient, so it is not about them)"
        return ""

    suspect = ""  # a "hard" refusal found to be the relay's, not the recipients': recorded as deferred, nobody bounced

    def spare(self, r: Result) -> Result:
        """``r`` as it should be recorded: a failure with the suspect's words is the sender's problem."""
        if self.suspect and r.status == "failed" and _ADDRESS.sub("<address>", r.error) == self.suspect:
            return Result(r.subscriber_id, "deferred", r.error, r.retry_after, "sender")
        return r


SETTLED = ("sent", "failed", "undeliverable")  # send-log rows nobody sends again
_ADDRESS = re.compile(r"<[^<>]*>|[^\s<>]+@[^\s<>]+")


class Engine:
    """One send run over one issue: ``run(batches)`` claims, sends and records them, then lets go of everything."""

    def __init__(self, settings: Settings, log_: SendLog, issue_id: str, variants: Variants, recipient: Callable[[Subscriber], Recipient],
                 message_id: Callable[[int], str], make_mailer: Callable[[], Mailer], workers: int, stop: threading.Event,
                 outcome: SendOutcome, progress: Progress | None = None, *, due: datetime | None = None,
                 work: WorkQueue | None = None, limiter: RateLimiter | None = None, allowance: Allowance | None = None) -> None:
        self.settings, self.store, self.issue_id, self.variants = settings, log_, issue_id, variants
        self.recipient, self.message_id = recipient, message_id
        self.make_transport, self.workers, self.stop, self.outcome = make_mailer, workers, stop, outcome
        self.progress = progress or (lambda status, n: None)
        self.due = due
        self.work: WorkQueue = work or ThreadQueue(2 * workers)
        self.run_id = uuid.uuid4().hex
        self.stale = timedelta(seconds=settings.stale_after)
        self.retry_in = settings.retry_in
        self.lock = threading.Lock()
        self.halt = threading.Event()  # set on stop (a signal) or on a fault: every thread winds down
        self.breaker = _Breaker()
        self.limiter: RateLimiter | None = limiter or _rate_limiter(settings.rate_limit)
        self.allowance = allowance
        self.held = False  # the warm-up's allowance for today is used: the walk stops, the rest waits for tomorrow
        self.taken = self.tried = 0  # of the allowance: claimed, and handed to the relay (the rest is given back)

    def fail(self, fault: str) -> None:
        with self.lock:
            if not self.outcome.fault:
                self.outcome.fault = fault
                log.error("send of %s stopped: %s", self.issue_id, fault)
        self.halt.set()

    def _pause(self, seconds: float) -> None:
        """Wait, noticing a stop (a signal) within a fifth of a second."""
        until = time.monotonic() + seconds
        while not self.halted() and (left := until - time.monotonic()) > 0:
            self.halt.wait(min(0.2, left))

    def halted(self) -> bool:
        if self.stop.is_set():
            self.halt.set()
        return self.halt.is_set()

    def run(self, batches: Iterable[list[Subscriber]]) -> None:
        lock = self.lock_handle = self.store.hold_run(self.run_id)
        self.store.register_run(self.run_id, self.issue_id, _now(), holder())
        journal = None
        beating = None
        done = threading.Event()
        threads: list[threading.Thread] = []
        work = self.work
        try:
            journal = _Journal(self.settings.journal_dir, self.run_id, self.issue_id)
            self.journal = journal
            beating = threading.Thread(target=self._heartbeat, args=(done,), name="send-heartbeat", daemon=True)
            beating.start()
            threads = [threading.Thread(target=self._worker, args=(work,), name=f"send-{i}", daemon=True) for i in range(self.workers)]
            for thread in threads:
                thread.start()
            for batch in batches:
                if self.halted() or self.held:
                    break
                claimed = self._claim(batch)
                while claimed and not self.halted():
                    if work.put(claimed, timeout=0.2):  # never blocks for good: every worker may have died
                        claimed = []
        except Exception as exc:  # noqa: BLE001 - a database error, a full disk: the send stops and says why
            self.fail(_describe(exc))
        finally:
            # One end-of-work marker per worker; a worker also ends by itself once the send is halted and the queue
            # is empty, so a worker that died (and so never takes its marker) cannot keep the others waiting.
            told = 0
            while any(t.is_alive() for t in threads):
                if told < len(threads) and work.put(None, timeout=0.1):
                    told += 1
                    continue
                if self.halted():
                    work.drain()  # claimed, never tried: handed back (deferred, due at once) when the run finishes
                for thread in threads:
                    thread.join(0.05)
            done.set()
            if beating is not None:
                beating.join()
            if not self._unrecorded:  # else the next run replays the journal first, then retires this run
                try:
                    self.store.finish_run(self.run_id, _now())  # what it claimed and never tried is due again at once
                except Exception as exc:  # noqa: BLE001 - the lock below still dies with us
                    self.fail(_describe(exc))
            if journal is not None:
                journal.close(keep=self._unrecorded)
            if self.allowance is not None and self.taken > self.tried:
                try:  # claimed and never tried (a stop, a fault): not sent today, so not counted against today
                    self.allowance.give_back(self.taken - self.tried)
                except Exception:  # noqa: BLE001 - the allowance is a courtesy to the providers; the lock must still go
                    log.warning("could not give back %d of the warm-up's allowance", self.taken - self.tried, exc_info=True)
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
        if not self.lock_handle.held():
            # PostgreSQL dropped the connection holding this run's lock (a restart, an idle timeout, a proxy): to
            # everyone else this run is dead and its rows free. Claiming more would send them twice.
            self.fail("lost the database connection that holds this send run's lock, so another run may take its rows over; "
                      "stopped before claiming more. Check the database and any connection proxy (PgBouncer must not pool "
                      "in transaction mode), then `publisher digest send`")
            return []
        send_empty = self.settings.send_empty
        wanted = [s for s in batch if send_empty or not self.variants.get(s.topics)[1]]  # nothing in their topics: skip
        held: list[Subscriber] = []
        if self.allowance is not None and wanted:
            # Those an earlier day (or run) settled are not today's messages: only the rest draw on the allowance.
            settled = self.store.have_rows(self.issue_id, [s.id for s in wanted], SETTLED)
            wanted = [s for s in wanted if s.id not in settled]
            granted = self.allowance.take(len(wanted))
            if granted < len(wanted):
                wanted, held = wanted[:granted], wanted[granted:]
                self.held = True
        now = _now()
        got = self.store.claim_batch(self.issue_id, self.run_id, [(s.id, self.message_id(s.id)) for s in wanted],
                                     now, now - self.stale, due=self.due)
        if self.allowance is not None:
            self.allowance.give_back(len(wanted) - len(got))  # another run has them, or no longer subscribed
            with self.lock:
                self.taken += len(got)
        with self.lock:
            self.outcome.skipped += len(batch) - len(got) - len(held)
            self.outcome.held += len(held)
        return [s for s in wanted if s.id in got]

    def _worker(self, work: WorkQueue) -> None:
        transport = None
        try:
            transport = self.make_transport()
            while (batch := work.get(timeout=0.2)) is not None:
                if not batch:  # nothing queued for a moment
                    if self.halted():
                        return  # nobody will queue more (and the end marker may have been drained)
                    continue
                if self.halted():
                    continue  # claimed, never tried: handed back (deferred, due at once) when the run finishes
                self._deliver(transport, batch)
        except Exception as exc:  # noqa: BLE001 - the send stops within seconds, and says why
            self.fail(_describe(exc))  # never drains: the other workers' end markers stay theirs
        finally:
            if transport is not None:
                try:
                    transport.close()
                except Exception:  # noqa: BLE001
                    log.warning("closing a transport failed", exc_info=True)

    def _deliver(self, transport: Mailer, batch: list[Subscriber]) -> None:
        """Send a claimed batch with retries, then record it. What was not tried stays queued for the next run."""
        by_id = {s.id: s for s in batch}
        attempts = {s.id: 0 for s in batch}
        final: dict[int, Result] = {}
        pending = list(batch)
        # SMTP and the outbox go one message per call, so the journal knows each one the moment the relay answered.
        size = transport.max_batch if getattr(transport, "batches", False) else 1
        requests = size > 1  # an API's: each journalled before it goes (a run that dies mid-request asks the provider)
        limiter = self.limiter
        if limiter is not None and self.settings.rate_limit > 0:
            size = min(size, burst_for(self.settings.rate_limit))  # an API request carries no more than the bucket's burst
        try:
            for attempt in range(1, self.settings.attempts + 1):
                results: list[Result] = []
                for group in _groups(pending, size):
                    if self.halted():
                        break
                    variant = self.variants.get(group[0].topics)[0]
                    recipients = [self.recipient(s) for s in group]
                    if limiter is not None:
                        for _ in group:  # a token per message, the last thing before it goes
                            limiter.wait(self.halt)
                        if self.halted():
                            break  # stopped while waiting: not sent (claimed, never tried: handed back)
                    if requests:
                        self.journal.inflight(recipients)
                    got = transport.send(variant, recipients)
                    for s in group:
                        attempts[s.id] += 1
                    results += got
                    final.update((r.subscriber_id, r) for r in got)
                    self.journal.write(got)
                    tripped = self.breaker.note(got, [r.email.rpartition("@")[2].lower() for r in recipients])
                    if tripped:
                        self.fail(f"the relay refuses to send for us: {tripped}. Nobody was marked bounced. Fix the relay's settings or "
                                  "the credentials, then `publisher digest send` (or leave it to the service: it retries).")
                pending = [by_id[r.subscriber_id] for r in results if r.status == "deferred" and r.kind != "sender"]
                if not pending or self.halted() or attempt == self.settings.attempts:
                    break
                self._pause(_backoff(self.settings.retry_base, attempt, max((r.retry_after or 0) for r in results if r.status == "deferred")))
        finally:
            self._record(batch, final, attempts)

    def _record(self, batch: list[Subscriber], final: dict[int, Result], attempts: dict[int, int]) -> None:
        spared = {sid: self.breaker.spare(r) for sid, r in final.items()}
        records = [(s.id, r.status, r.error, attempts[s.id], r.kind) for s in batch if (r := spared.get(s.id))]
        try:
            self.store.record_sends(self.issue_id, records, _now(), run_id=self.run_id, retry_in=self.retry_in,
                                    soft_bounce_limit=self.settings.soft_bounce_limit)
        except Exception:
            self._unrecorded = True  # the journal has them: the next run replays it
            raise
        with self.lock:
            # What the relay or the provider took a look at counts against the warm-up (a refusal of our own sending,
            # kind "sender", reached nobody's mailbox and does not).
            self.tried += sum(1 for _, status, _, _, kind in records if not (status == "deferred" and kind == "sender"))
            for _, status, error, _, _ in records:
                setattr(self.outcome, status, getattr(self.outcome, status) + 1)
                if status != "sent" and error and len(self.outcome.failures) < 20:
                    self.outcome.failures.append(error)
        for status in ("sent", "deferred", "failed"):
            n = sum(1 for r in records if r[1] == status)
            if n:
                self.progress(status, n)


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


def burst_for(rate: float) -> int:
    """Messages a rate limit lets go at once after a pause: a tenth of a second's worth, at least 1, at most 5.

    The tokens of any second then number at most ``rate + burst - 1``: the limit itself below 20 a second (the messages
    evenly spaced, 1/rate apart), under 10% over it above, never more than 5 at once. Above 20 a second the interval
    nears the jitter of a thread's sleep or a database round trip: the burst lets a late message catch up, so the
    average stays at the limit."""
    return max(1, min(5, int(rate / 10)))


class TokenBucket:
    """A token bucket: ``rate`` tokens a second, at most ``burst`` held (full at first). Each message takes one, just
    before it goes, and waits for it when there is none: in any ``w`` seconds at most ``rate * w + burst`` go.

    Kept as one time (GCRA): ``tat``, when the bucket will be full again; a token is free while ``tat`` is at most
    ``(burst - 1) / rate`` ahead of now. Thread-safe: the connections of one process share a bucket."""

    def __init__(self, rate: float, burst: int | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        self.interval = 1.0 / rate
        self.burst = burst or burst_for(rate)
        self.tolerance = (self.burst - 1) * self.interval
        self.clock = clock
        self.tat = clock()
        self.lock = threading.Lock()

    def take(self) -> float:
        """Take a token: the time (of ``clock``) at which its message may go, now or later."""
        with self.lock:
            now = self.clock()
            at = max(now, self.tat - self.tolerance)
            self.tat = max(self.tat, at) + self.interval
            return at

    def wait(self, stop: threading.Event) -> None:
        """Take a token and wait for it (or until ``stop`` is set: the caller checks it before sending)."""
        left = self.take() - self.clock()
        if left > 0:
            stop.wait(left)


_buckets: dict[float, TokenBucket] = {}
_buckets_lock = threading.Lock()


def _rate_limiter(rate: float) -> TokenBucket | None:
    """This process's bucket for ``rate`` (one for every run it makes: a run that starts as another ends does not get a
    bucket of its own, full); None when ``rate`` is 0 (unlimited: the engine does not call a limiter at all)."""
    if rate <= 0:
        return None
    with _buckets_lock:
        return _buckets.setdefault(rate, TokenBucket(rate))


def _now() -> datetime:
    return datetime.now(timezone.utc)


def holder() -> str:
    """host:pid of this process, for `publisher status`."""
    import socket

    return f"{socket.gethostname()}:{os.getpid()}"
