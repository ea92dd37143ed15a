"""The fleet: `publisher worker` processes on any number of machines send an issue together (engine = "celery").

- The coordinator (`publisher run`, `digest send`) plans and renders the issue, compiles each variant once and
  stores it (``issue_variants``), queues the send-log rows unclaimed and sends one Celery task per
  [delivery].task_size recipients. A task is a hint only: ``{"issue": X, "lo": 1, "hi": 500, ...}``.
- A worker takes a hint and runs the send engine over what is still claimable in that range: it claims rows in
  the send log (``FOR UPDATE SKIP LOCKED``), sends, journals and records them, exactly as the one-machine engine
  does. A hint delivered twice, late or never harms nothing: the second finds nothing to claim, and the
  coordinator hints again what nobody took.
- Liveness is the same as a send run's: each task's run holds a PostgreSQL session lock that dies with its
  process. Every process looks every second: a dead run of its own machine is recovered (its journal, on that
  machine's disk, replayed; its rows handed back) and the coordinator hints the rows again for another worker. A
  dead run of another machine waits for a worker there to replay its journal (send.HANDOVER_GRACE): handed back
  unread, what it had sent and not recorded would go twice.
- Celery redelivers a task whose worker died (``acks_late``), and a broker may deliver one twice: tasks are short
  (one range) and the send log decides, so that is harmless by design.
"""

from __future__ import annotations

import base64
import json
import logging
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable
from datetime import datetime, timedelta, timezone
from typing import Any

from kombu.exceptions import OperationalError

from ..config import Config
from ..digest.render import Slots
from ..models import Subscriber
from ..store.db import _safe_url
from .api import Prepared
from .backends import Variant, transport_factory
from .engine import SendOutcome, burst_for, holder
from .message import CompiledMessage, MessageIds, sender_domain

log = logging.getLogger(__name__)

TASK = "publisher.send_batch"
HINT_VERSION = 1
LOOK_EVERY = 1.0  # seconds between the coordinator's looks at the send log (dead workers, progress)
REHINT_AFTER = 30.0  # seconds without progress, with nothing queued at the broker, before the pending rows are hinted again


def make_app(broker_url: str, queue: str = "publisher") -> Any:
    """The Celery app both sides use: JSON only (a task carries plain data, never code), late acks, one task at a time."""
    from celery import Celery

    app = Celery("publisher", broker=broker_url, set_as_current=False)
    app.conf.update(
        task_serializer="json", accept_content=["json"], result_serializer="json", task_ignore_result=True,
        task_acks_late=True, task_reject_on_worker_lost=True,  # a worker killed mid-task: the broker hands the hint on
        worker_prefetch_multiplier=1, task_default_queue=queue, worker_hijack_root_logger=False,
        broker_connection_retry_on_startup=True, broker_connection_timeout=10,
        # Redis: a task not acked within this is delivered again (to a second worker, if the first is slow): harmless.
        broker_transport_options={"visibility_timeout": 3600}, worker_send_task_events=False, task_send_sent_event=False,
    )
    return app


# -- variants, compiled once and stored for every worker ----------------------------------------------------

def dump_variant(v: Variant) -> bytes:
    m, p = v.message, v.prepared
    return json.dumps({
        "v": 1,
        "message": {"issue_id": m.issue_id, "chunks": [base64.b64encode(c).decode("ascii") for c in m.chunks],
                    "slots": [list(s) for s in m.slots], "domain": m.domain},
        "prepared": {"issue_id": p.issue_id, "subject": p.subject, "from_name": p.from_name, "from_address": p.from_address,
                     "reply_to": p.reply_to, "html": p.html, "text": p.text, "list_id": p.list_id, "extra_headers": p.extra_headers,
                     "nonce": p.slots.nonce},
    }).encode("utf-8")


def load_variant(payload: bytes) -> Variant:
    d = json.loads(payload)
    if d.get("v") != 1:
        raise ValueError(f"a stored variant of format {d.get('v')!r}, which this version cannot read: upgrade this worker")
    m, p = d["message"], d["prepared"]
    message = CompiledMessage(m["issue_id"], tuple(base64.b64decode(c) for c in m["chunks"]), tuple((w, n) for w, n in m["slots"]), m["domain"])
    prepared = Prepared(p["issue_id"], p["subject"], p["from_name"], p["from_address"], p["reply_to"], p["html"], p["text"], p["list_id"],
                        dict(p["extra_headers"]), Slots(p["nonce"]))
    return Variant(message, prepared)


def store_variants(store: Any, issue_id: str, by_topics: dict[tuple[str, ...], tuple[Variant, bool]], saved: set[tuple[str, ...]]) -> None:
    """The variants made since the last call, into the store (the first stored is the one every worker uses)."""
    new = [(k, empty, dump_variant(v)) for k, (v, empty) in list(by_topics.items()) if k not in saved]
    if new:
        store.save_variants(issue_id, new, _now())
        saved.update(k for k, _, _ in new)


class StoredVariants:
    """A worker's view of an issue's variants: read from the store once each. A topic selection the coordinator did
    not make (a subscriber changed topics after the walk) is rendered here, stored, and the stored one used."""

    def __init__(self, cfg: Config, store: Any, issue_id: str) -> None:
        self.cfg, self.store, self.issue_id = cfg, store, issue_id
        self.cache: dict[tuple[str, ...], tuple[Variant, bool]] = {}
        self.lock = threading.Lock()
        self._renderer: Any = None

    def get(self, topics: tuple[str, ...]) -> tuple[Variant, bool]:
        entry = self.cache.get(topics)
        if entry is not None:
            return entry
        with self.lock:
            if topics not in self.cache:
                row = self.store.stored_variant(self.issue_id, topics)
                if row is None:
                    self._render(topics)
                    row = self.store.stored_variant(self.issue_id, topics)
                empty, payload = row
                self.cache[topics] = (load_variant(payload), empty)
            return self.cache[topics]

    def _render(self, topics: tuple[str, ...]) -> None:
        from ..digest.issue import replan_issue
        from .send import compose

        now = _now()
        plan = replan_issue(self.cfg, self.store, self.issue_id, now)
        variants = compose(self.cfg, plan, {}, now)
        variants.get(topics)
        store_variants(self.store, self.issue_id, variants.by_topics, set())


# -- the coordinator ------------------------------------------------------------------------------------------

class Dispatch:
    """One issue (or one issue's retries) sent by the fleet: hints out, then watch the send log until nothing is
    pending, recovering dead workers' runs and hinting their rows again as it goes."""

    def __init__(self, cfg: Config, store: Any, issue_id: str, outcome: SendOutcome, stop: threading.Event,
                 progress: Callable[[str, int], None] | None, *, recover: Callable[[], Any], app: Any = None) -> None:
        self.cfg, self.store, self.issue_id, self.outcome, self.stop = cfg, store, issue_id, outcome, stop
        self.progress = progress or (lambda status, n: None)
        self.recover = recover
        self.app = app or make_app(cfg.broker_url, cfg.delivery.task_queue)
        self.queue = cfg.delivery.task_queue
        self.id = uuid.uuid4().hex
        self.size = cfg.delivery.task_size
        self.hinted: dict[tuple[int, int], float] = {}
        self.before = store.send_counts(issue_id)
        self.seen = dict(self.before)
        self.ids = MessageIds(sender_domain(cfg), store.message_id_key())
        self.allowance: Any = None  # the warm-up's (delivery.warmup.Allowance): set by deliver()

    def hint(self, lo: int, hi: int, due: datetime | None) -> None:
        body = {"v": HINT_VERSION, "issue": self.issue_id, "lo": lo, "hi": hi, "due": due.isoformat() if due else None, "dispatch": self.id}
        self.app.send_task(TASK, args=[body], queue=self.queue)
        self.hinted[(lo, hi)] = time.monotonic()

    def walk(self, batches: Iterable[list[Subscriber]], variants: Any, due: datetime | None) -> None:
        """Queue the issue's rows, a task's worth at a time, each followed by its hint. Memory: one batch."""
        saved: set[tuple[str, ...]] = set()
        send_empty = self.cfg.digest.send_empty
        for batch in batches:
            if self.stop.is_set():
                return
            wanted = [s for s in batch if send_empty or not variants.get(s.topics)[1]]
            self.outcome.skipped += len(batch) - len(wanted)
            if self.allowance is not None and wanted:  # the warm-up: rows are made only for today's allowance
                have = self.store.have_rows(self.issue_id, [s.id for s in wanted])
                wanted = [s for s in wanted if s.id not in have]  # sent (or queued) on an earlier day: not today's
                if not wanted:
                    continue
                granted = self.allowance.take(len(wanted))
                if granted < len(wanted):
                    self.outcome.held += len(wanted) - granted
                    wanted = wanted[:granted]
                    if not wanted:
                        return
            store_variants(self.store, self.issue_id, variants.by_topics, saved)  # before any worker can need them
            self.store.queue_rows(self.issue_id, [(s.id, self.ids(self.issue_id, s.id)) for s in wanted], _now())
            self.hint(wanted[0].id, wanted[-1].id, due)

    def hint_pending(self, retry: tuple[datetime, datetime] | None, due: datetime | None) -> None:
        for lo, hi in self.store.pending_ranges(self.issue_id, retry, self.size):
            self.hint(lo, hi, due)

    def watch(self, retry: tuple[datetime, datetime] | None) -> None:
        """Until nothing of this dispatch is pending, a stop, or a worker's fault."""
        last_pending, last_change = -1, time.monotonic()
        warned = False
        while not self.stop.is_set():
            began = time.monotonic()
            self.recover()  # dead workers: journals replayed (those on this machine), their rows handed back
            fault = self.store.setting(f"fleet.fault:{self.id}")
            if fault:
                self.store.set_setting(f"fleet.halted:{self.id}", "1")  # the other workers drop this dispatch's hints
                self.outcome.fault = fault
                break
            self._count()
            pending = self.store.pending_count(self.issue_id, retry)
            if pending == 0:
                break
            now = time.monotonic()
            for lo, hi in self.store.pending_ranges(self.issue_id, retry, self.size, handed_back_only=True):
                if now - self.hinted.get((lo, hi), 0.0) > REHINT_AFTER:
                    self.hint(lo, hi, _now())  # a dead or stopped worker's rows: to another worker, now
            if pending != last_pending:
                last_pending, last_change, warned = pending, now, False
            elif now - last_change > REHINT_AFTER:
                workers = self.store.live_workers(_now())
                if not workers:
                    if not warned:
                        log.warning("%d send(s) of %s wait for a worker, and no `publisher worker` is running: start one "
                                    "(see the README's Deployment), or set [delivery].engine = \"threads\"", pending, self.issue_id)
                        warned = True
                elif self.queued_at_broker() == 0:  # workers, nothing queued, no progress: the hints were lost
                    log.warning("%d send(s) of %s are pending with no task for them at the broker (purged?); hinting them again",
                                pending, self.issue_id)
                    self.hint_pending(retry, _now())
                last_change = now
            # Looks cost more as the list grows (a count of the pending rows): never more than a fifth of the time.
            self.stop.wait(max(LOOK_EVERY, 4 * (time.monotonic() - began)))
        self._count()
        self.store.set_setting(f"fleet.fault:{self.id}", None)
        if not self.outcome.fault and not self.stop.is_set():
            self.store.drop_unclaimable(self.issue_id)
        counts = self.store.send_counts(self.issue_id)
        for name in ("sent", "failed"):
            setattr(self.outcome, name, counts.get(name, 0) - self.before.get(name, 0))
        self.outcome.deferred = counts.get("deferred", 0) if retry is None else max(0, counts.get("deferred", 0) - self.before.get("deferred", 0))
        self.outcome.stopped = self.stop.is_set()

    def _count(self) -> None:
        counts = self.store.send_counts(self.issue_id)
        for status in ("sent", "deferred", "failed"):
            n = counts.get(status, 0) - self.seen.get(status, 0)
            if n > 0:
                self.progress(status, n)
        self.seen = counts

    def queued_at_broker(self) -> int:
        try:
            with self.app.connection_for_read() as conn:
                return int(conn.default_channel.queue_declare(self.queue, passive=True).message_count)
        except Exception:  # noqa: BLE001 - cannot tell: assume the hints are there
            return 1


def deliver(cfg: Config, store: Any, issue_id: str, variants: Any, batches: Iterable[list[Subscriber]] | None, outcome: SendOutcome,
            stop: threading.Event, progress: Callable[[str, int], None] | None, due: datetime | None, *,
            recover: Callable[[], Any], allowance: Any = None) -> None:
    """The fleet's send of one issue: ``batches`` walked and hinted (a new issue), or, with ``batches`` None, what is
    deferred and due by ``due`` (None: all of it) hinted (retries); then watched until done."""
    try:
        d = Dispatch(cfg, store, issue_id, outcome, stop, progress, recover=recover)
        d.allowance = allowance
        if batches is not None:
            d.walk(batches, variants, due)
            d.watch(None)  # its first look also hints rows an earlier, interrupted dispatch handed back
        else:
            store_variants(store, issue_id, variants.by_topics, set())
            retry = (due or _now() + timedelta(days=3650), _now())
            d.hint_pending(retry, due)
            d.watch(retry)
    except (OperationalError, OSError) as exc:  # the broker is down or refuses us: the send stops and says why
        outcome.fault = (f"cannot reach the task broker at {_safe_url(cfg.broker_url)}: {exc}. Start RabbitMQ (or Redis), or fix "
                         "[delivery].broker_url / PUBLISHER_BROKER_URL; nothing was lost, the service tries again")


# -- the worker --------------------------------------------------------------------------------------------------

class Worker:
    """`publisher worker`: registered in the store (alive while its lock is held), counting what it sends."""

    def __init__(self, cfg: Config, store: Any) -> None:
        self.cfg, self.store = cfg, store
        self.id = uuid.uuid4().hex[:16]
        self.stop = threading.Event()
        self.sent = 0
        self.recent: deque[tuple[float, int]] = deque()
        self.lock = threading.Lock()
        self.variants: dict[str, StoredVariants] = {}
        self.halted: set[str] = set()
        self.limiter: FleetLimiter | None = None

    def start(self) -> None:
        from .send import recover

        recover(self.cfg, self.store, _now())  # runs of this machine that died: their journals replayed first
        self.handle = self.store.register_worker(self.id, holder(), _now())
        threading.Thread(target=self._beat, name="worker-heartbeat", daemon=True).start()
        log.info("worker %s (%s) ready", self.id, holder())

    def close(self) -> None:
        self.stop.set()
        try:
            self.store.stop_worker(self.id, _now())
        finally:
            self.handle.release()

    def _count(self, status: str, n: int) -> None:
        if status == "sent":
            with self.lock:
                self.sent += n
                self.recent.append((time.monotonic(), n))

    def rate(self) -> float:
        with self.lock:
            cut = time.monotonic() - 60.0
            while self.recent and self.recent[0][0] < cut:
                self.recent.popleft()
            if not self.recent:
                return 0.0
            span = max(1.0, time.monotonic() - self.recent[0][0])
            return sum(n for _, n in self.recent) / span

    def _beat(self) -> None:
        """Every second, the runs of this machine that died (a sibling worker killed): their journals replayed,
        since only a process on this machine can read them; every five, the heartbeat `status` shows."""
        from .send import recover

        beats = 0
        while not self.stop.wait(LOOK_EVERY):
            try:
                recover(self.cfg, self.store, _now())
            except Exception:  # noqa: BLE001 - tried again in a second; the coordinator's grace runs out otherwise
                log.warning("recovering a dead send run failed", exc_info=True)
            beats += 1
            if beats % 5 == 0:
                try:
                    self.store.worker_beat(self.id, _now(), self.sent, self.rate())
                except Exception:  # noqa: BLE001 - a missed beat only makes `status` older
                    log.warning("worker heartbeat failed", exc_info=True)

    def run_hint(self, hint: Any) -> str:
        """One task: send what is still claimable in the hinted range. Returns a word for the log."""
        try:
            issue_id, lo, hi = str(hint["issue"]), int(hint["lo"]), int(hint["hi"])
            dispatch = str(hint["dispatch"])
            due = datetime.fromisoformat(hint["due"]) if hint.get("due") else None
        except (KeyError, TypeError, ValueError):
            log.error("dropping a malformed task: %.200r", hint)
            return "malformed"
        if int(hint.get("v", 0)) > HINT_VERSION:
            raise RuntimeError(f"a task of format {hint.get('v')}, newer than this worker: upgrade it")
        if dispatch in self.halted or self.store.setting(f"fleet.halted:{dispatch}"):
            self.halted.add(dispatch)
            return "halted"
        variants = self.variants.get(issue_id)
        if variants is None:
            self.variants = {issue_id: (variants := StoredVariants(self.cfg, self.store, issue_id))}  # one issue's at a time
        from .send import _engine, settings_of

        outcome = SendOutcome(issue_id)
        if self.limiter is None and (rate := settings_of(self.cfg).rate_limit) > 0:
            self.limiter = FleetLimiter(self.store, rate)  # one per worker: slots drawn and still fresh serve the next task too (late ones are dropped)
        factory, workers = transport_factory(self.cfg)
        engine = _engine(self.cfg, self.store, issue_id, variants, factory, workers, self.stop, outcome, self._count, due,
                         limiter=self.limiter)
        engine.run(self.store.range_recipients(issue_id, lo, hi, self.cfg.delivery.batch_size))
        self.store.worker_beat(self.id, _now(), self.sent, self.rate())
        if outcome.fault:
            self.halted.add(dispatch)
            self.store.set_setting(f"fleet.fault:{dispatch}", outcome.fault)
        return f"{outcome.sent} sent, {outcome.deferred} deferred, {outcome.failed} failed, {outcome.skipped} not mine"


def run_worker(cfg: Config, store: Any, *, name: str | None = None) -> None:
    """Run a Celery worker for the send tasks until it is stopped (SIGTERM or SIGINT: the task at hand stops within
    seconds; what it claimed and did not try is handed back for another worker)."""
    from celery import signals

    app = make_app(cfg.broker_url, cfg.delivery.task_queue)
    worker = Worker(cfg, store)

    @app.task(name=TASK, acks_late=True)
    def send_batch(hint: Any) -> str:
        return worker.run_hint(hint)

    @signals.worker_shutting_down.connect(weak=False)
    def _stopping(**_: Any) -> None:
        worker.stop.set()

    worker.start()
    try:
        argv = ["worker", "--pool=solo", "--loglevel=INFO", "-Q", cfg.delivery.task_queue, "-n", f"{name or 'publisher-' + worker.id}@%h",
                "--without-gossip", "--without-mingle", "--without-heartbeat"]
        app.worker_main(argv)
    finally:
        worker.close()


class FleetLimiter:
    """One rate for every worker, the one-machine engine's token bucket kept in the store: it hands out send slots
    1/rate apart, a fifth of a second's worth per trip to the database, and this worker's connections take them one
    per message, each waiting for its own. A slot this worker reaches later than the burst allows (it was busy, or
    the slot is left from an earlier task) is dropped, never used late: sent late, it would go out together with the
    slots after it."""

    def __init__(self, store: Any, rate: float) -> None:
        self.store, self.rate = store, rate
        self.interval = 1.0 / rate
        self.burst = burst_for(rate)
        self.chunk = max(1, int(rate * 0.2))  # slots per trip to the database: at most 5 trips a second per worker
        # How late a slot may still be used: the burst's worth less half a slot, kept for the jitter between the slot and
        # the wire (half a slot with no burst); a draw after a pause starts no earlier (its first slots go at once). The
        # relay then sees at most rate * w + burst of the fleet's messages in any w seconds, with that half slot to spare.
        self.late = max(0.5, self.burst - 1.5) * self.interval
        self.past = max(1, self.burst - 1)  # the store's burst: slots a draw may have in the past
        self.slots: deque[float] = deque()
        self.last = float("-inf")  # the last slot drawn
        self.lock = threading.Lock()

    def wait(self, stop: threading.Event) -> None:
        with self.lock:
            now = time.monotonic()
            while self.slots and self.slots[0] < now - self.late:
                self.slots.popleft()
            if not self.slots:
                asked = time.monotonic()
                wait, interval = self.store.take_slots("send", self.chunk, self.interval, burst=self.past)
                # The database's schedule in this clock, from when it was asked (its clock is read first; the commit,
                # an fsync on SQLite, can take a while), and never closer than 1/rate to this worker's previous slots.
                start = max(asked + wait, self.last + interval)
                self.slots.extend(start + i * interval for i in range(self.chunk))
                self.last = self.slots[-1]
            at = self.slots.popleft()
        left = at - time.monotonic()
        if left > 0:
            stop.wait(left)


def _now() -> datetime:
    return datetime.now(timezone.utc)


__all__ = ["Dispatch", "FleetLimiter", "StoredVariants", "Worker", "deliver", "dump_variant", "load_variant", "make_app", "run_worker"]
