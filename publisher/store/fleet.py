"""What the coordinator and the `publisher worker` processes share through the store (engine = "celery").

The send log stays the only truth: the coordinator queues rows (unclaimed) and sends hints ("ids lo..hi of
issue X"); a worker claims what is still claimable in its range (``claim_batch``, with ``FOR UPDATE SKIP
LOCKED`` on PostgreSQL), so a hint delivered twice, late or never harms nothing. Alongside: each issue's
compiled variants (made once, read by every worker), the workers alive, and one rate for all of them.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from datetime import date, datetime, timedelta
from typing import Any

from sqlalchemy import and_, delete, exists, func, insert, or_, select, text, update

from ..models import Subscriber, SubscriberStatus
from . import tables as t
from .sendlog import _insert_ignore, _row_status


def _still_active() -> Any:
    s, sl = t.subscribers, t.send_log
    return ~exists().where(s.c.id == sl.c.subscriber_id, s.c.status != SubscriberStatus.ACTIVE.value)


def topics_key(topics: tuple[str, ...]) -> str:
    return ",".join(topics)


class FleetMixin:
    def _tx(self) -> Any: ...  # provided by Store

    # -- variants --------------------------------------------------------------------------------

    def save_variants(self, issue_id: str, entries: Sequence[tuple[tuple[str, ...], bool, bytes]], now: datetime) -> None:
        """(topics, is_empty, payload) of the issue; a variant already stored is kept (every worker reads that one)."""
        if not entries:
            return
        with self._tx() as conn:
            conn.execute(_insert_ignore(conn, t.issue_variants), [{"issue_id": issue_id, "topics": topics_key(k), "is_empty": empty,
                                                                  "payload": payload, "created_at": now} for k, empty, payload in entries])

    def stored_variant(self, issue_id: str, topics: tuple[str, ...]) -> tuple[bool, bytes] | None:
        v = t.issue_variants
        with self._tx() as conn:
            row = conn.execute(select(v.c.is_empty, v.c.payload).where(v.c.issue_id == issue_id, v.c.topics == topics_key(topics))).first()
        return (bool(row.is_empty), bytes(row.payload)) if row else None

    def prune_variants(self, older_than: datetime) -> None:
        with self._tx() as conn:
            conn.execute(delete(t.issue_variants).where(t.issue_variants.c.created_at < older_than))

    # -- the coordinator's side of the send log ------------------------------------------------------

    def queue_rows(self, issue_id: str, rows: Sequence[tuple[int, str]], now: datetime) -> None:
        """(subscriber id, message id) queued and unclaimed: the first worker whose hint covers them claims them."""
        if rows:
            with self._tx() as conn:
                conn.execute(_insert_ignore(conn, t.send_log), [
                    {"issue_id": issue_id, "subscriber_id": sid, "status": "queued", "message_id": mid, "updated_at": now,
                     "attempts": 0, "claimed_by": None, "first_tried_at": now} for sid, mid in rows])

    def have_rows(self, issue_id: str, ids: Sequence[int], statuses: Sequence[str] = ()) -> set[int]:
        """Which of these subscribers already have a row of the issue (of one of ``statuses``; none given: any)."""
        sl = t.send_log
        where = [sl.c.issue_id == issue_id, sl.c.subscriber_id.in_(list(ids))] + ([sl.c.status.in_(list(statuses))] if statuses else [])
        with self._tx() as conn:
            return set(conn.execute(select(sl.c.subscriber_id).where(*where)).scalars())

    def _pending(self, issue_id: str, retry: tuple[datetime, datetime] | None) -> Any:
        """Rows of active subscribers a dispatch waits for: queued (claimed or not), or deferred and never answered
        (handed back by a dead or stopped run). ``retry`` (due by, dispatch start): also deferred rows due by then
        and not tried since the dispatch started."""
        sl = t.send_log
        deferred = and_(sl.c.status == "deferred", sl.c.deferrals == 0)
        if retry is not None:
            due_by, since = retry
            deferred = and_(sl.c.status == "deferred", or_(sl.c.deferrals == 0, and_(
                sl.c.updated_at < since, or_(sl.c.next_attempt_at.is_(None), sl.c.next_attempt_at <= due_by))))
        # NOT EXISTS over the few who are no longer active (a partial index holds just them), not IN over every
        # active subscriber: at a million subscribers that was a full read of the table on each of the coordinator's looks.
        return and_(sl.c.issue_id == issue_id, or_(sl.c.status == "queued", deferred), _still_active())

    def pending_count(self, issue_id: str, retry: tuple[datetime, datetime] | None = None) -> int:
        sl = t.send_log
        with self._tx() as conn:
            return conn.execute(select(func.count()).select_from(sl).where(self._pending(issue_id, retry))).scalar_one()

    def pending_ranges(self, issue_id: str, retry: tuple[datetime, datetime] | None, size: int, *,
                       handed_back_only: bool = False) -> list[tuple[int, int]]:
        """Subscriber id ranges of at most ``size`` pending rows, for hints. ``handed_back_only``: only rows a dead or
        stopped run handed back (deferred, never answered), not those waiting behind their hints at the broker."""
        sl = t.send_log
        where = self._pending(issue_id, retry)
        if handed_back_only:
            where = and_(where, sl.c.status == "deferred", sl.c.deferrals == 0)
        # Grouped in the database (row number // size): at a million pending rows the ids never come over the wire.
        ranked = select(sl.c.subscriber_id.label("sid"), ((func.row_number().over(order_by=sl.c.subscriber_id) - 1) // size).label("g")
                        ).where(where).subquery()
        with self._tx() as conn:
            rows = conn.execute(select(func.min(ranked.c.sid), func.max(ranked.c.sid)).group_by(ranked.c.g).order_by(ranked.c.g)).all()
        return [(int(lo), int(hi)) for lo, hi in rows]

    def drop_unclaimable(self, issue_id: str) -> int:
        """Queued rows nobody claimed whose subscriber is no longer active (left mid-send): nothing will send them."""
        sl = t.send_log
        with self._tx() as conn:
            return conn.execute(delete(sl).where(sl.c.issue_id == issue_id, sl.c.status == "queued", sl.c.claimed_by.is_(None),
                                                 ~_still_active())).rowcount or 0

    # -- the worker's side ------------------------------------------------------------------------

    def range_recipients(self, issue_id: str, lo: int, hi: int, batch: int) -> Iterator[list[Subscriber]]:
        """Active subscribers with a queued or deferred row of the issue in ids lo..hi, in batches (claim_batch decides)."""
        s, sl = t.subscribers, t.send_log
        last = lo - 1
        while True:
            q = (select(s).join(sl, and_(sl.c.subscriber_id == s.c.id, sl.c.issue_id == issue_id))
                 .where(s.c.id > last, s.c.id <= hi, s.c.status == SubscriberStatus.ACTIVE.value, _row_status().in_(("queued", "deferred")))
                 .order_by(s.c.id).limit(batch))
            got = self._subscribers(q)  # type: ignore[attr-defined]
            if not got:
                return
            yield got
            last = got[-1].id

    # -- workers -------------------------------------------------------------------------------------

    def register_worker(self, worker_id: str, holder: str, now: datetime) -> Any:
        """The worker's row and its lock (held until it stops or dies): returns the lock."""
        lock = self._liveness().hold(f"worker:{worker_id}")  # type: ignore[attr-defined]
        with self._tx() as conn:
            conn.execute(insert(t.workers).values(id=worker_id, holder=holder, started_at=now, heartbeat_at=now, sent=0, rate=0.0))
        return lock

    def worker_beat(self, worker_id: str, now: datetime, sent: int, rate: float) -> None:
        with self._tx() as conn:
            conn.execute(update(t.workers).where(t.workers.c.id == worker_id).values(heartbeat_at=now, sent=sent, rate=rate))

    def stop_worker(self, worker_id: str, now: datetime) -> None:
        with self._tx() as conn:
            conn.execute(update(t.workers).where(t.workers.c.id == worker_id).values(stopped_at=now))

    def live_workers(self, now: datetime) -> list[tuple[str, str, datetime, int, float]]:
        """(id, holder, started, sent, rate) of workers whose process holds its lock; the dead are marked stopped."""
        w = t.workers
        with self._tx() as conn:
            rows = conn.execute(select(w).where(w.c.stopped_at.is_(None)).order_by(w.c.started_at)).all()
        alive, dead = [], []
        for r in rows:
            (alive if self._liveness().alive(f"worker:{r.id}") else dead).append(r)  # type: ignore[attr-defined]
        if dead:
            with self._tx() as conn:
                conn.execute(update(w).where(w.c.id.in_([r.id for r in dead])).values(stopped_at=now))
                conn.execute(delete(w).where(w.c.stopped_at < now - timedelta(days=7)))
        return [(r.id, r.holder, r.started_at, r.sent, r.rate) for r in alive]

    # -- one rate for the fleet -------------------------------------------------------------------

    def take_allowance(self, name: str, n: int, limit: int) -> int:
        """Up to ``n`` more of the counter ``name``, keeping it at most ``limit``: how many were granted. A negative
        ``n`` gives that many back. The row is locked while it is counted, so processes sending at once share it."""
        b = t.rate_buckets
        with self._tx() as conn:
            conn.execute(_insert_ignore(conn, b), [{"name": name, "tat": 0.0}])
            q = select(b.c.tat).where(b.c.name == name)
            used = int(conn.execute(q.with_for_update() if conn.dialect.name == "postgresql" else q).scalar_one())
            granted = max(-used, min(n, limit - used))
            if granted:
                conn.execute(update(b).where(b.c.name == name).values(tat=float(used + granted)))
        return granted

    def allowance_used(self, name: str) -> int:
        with self._tx() as conn:
            return int(conn.execute(select(t.rate_buckets.c.tat).where(t.rate_buckets.c.name == name)).scalar() or 0)

    def warmup_started(self, domain: str, today: date, *, begin: bool = False) -> date | None:
        """The first day of ``domain``'s warm-up (kept in the settings); None before its first message. ``begin``: it
        starts today unless it already has."""
        key = f"warmup.{domain}.first_day"
        with self._tx() as conn:
            if begin:
                conn.execute(_insert_ignore(conn, t.settings), [{"key": key, "value": today.isoformat()}])
            value = conn.execute(select(t.settings.c.value).where(t.settings.c.key == key)).scalar()
        return date.fromisoformat(value) if value else None

    def take_slots(self, name: str, n: int, interval: float, burst: int = 1) -> tuple[float, float]:
        """``n`` send slots of the shared bucket ``name`` (one message each, ``interval`` seconds apart). Returns
        (seconds from now until the first slot, by the database's clock, so the workers' clocks do not matter;
        the interval). At most ``burst`` slots may be in the past (a short burst after a pause)."""
        b = t.rate_buckets
        with self._tx() as conn:
            pg = conn.dialect.name == "postgresql"
            clock = "extract(epoch from clock_timestamp())" if pg else "(julianday('now') - 2440587.5) * 86400.0"
            now = float(conn.execute(text(f"SELECT {clock}")).scalar_one())
            conn.execute(_insert_ignore(conn, b), [{"name": name, "tat": 0.0}])
            q = select(b.c.tat).where(b.c.name == name)
            tat = float(conn.execute(q.with_for_update() if pg else q).scalar_one())
            start = max(tat, now - (burst - 1) * interval)
            conn.execute(update(b).where(b.c.name == name).values(tat=start + n * interval))
        return start - now, interval
