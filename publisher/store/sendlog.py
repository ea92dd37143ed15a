"""The send log: one row per (issue, subscriber), claimed before a message leaves and marked after.

Rows are claimed and recorded in batches (one transaction each), so the log costs a few
milliseconds per batch, not per message. A run holds a lock that dies with its process (see
``liveness``); a queued row whose run's lock is free (killed, crashed, rebooted) is taken over by the
next run at once, and the dead run's journal tells what it had sent, so a crash loses nothing and
duplicates at most what was in flight. Two runs at once never hold the same row.

A deferred row carries when it is due again (``next_attempt_at``): the service retries it then, backing
off, until ``give_up`` marks it undeliverable.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, bindparam, case, func, insert, or_, select, update

from ..models import Subscriber, SubscriberStatus
from . import tables as t


class SendLogMixin:
    def _tx(self) -> Any: ...  # provided by Store

    def register_run(self, run_id: str, issue_id: str, now: datetime, holder: str | None = None) -> None:
        """Record a run; with ``holder`` (host:pid) its liveness is its lock (hold it first: see :meth:`hold_run`)."""
        with self._tx() as conn:
            conn.execute(insert(t.send_runs).values(id=run_id, issue_id=issue_id, started_at=now, heartbeat_at=now, holder=holder))

    def hold_run(self, run_id: str) -> Any:
        """The run's lock, held until ``release()`` or the process dies."""
        return self._liveness().hold(run_id)

    def run_alive(self, run_id: str) -> bool:
        return self._liveness().alive(run_id)

    def _liveness(self) -> Any:
        from .liveness import Liveness

        live = getattr(self, "_live", None)
        if live is None:
            live = self._live = Liveness(self.engine)  # type: ignore[attr-defined]
        return live

    def dead_runs(self) -> list[str]:
        """Unfinished runs whose lock is free: their process is gone. Nothing is changed (see :meth:`retire_runs`)."""
        runs = t.send_runs
        with self._tx() as conn:
            open_runs = list(conn.execute(select(runs.c.id).where(runs.c.finished_at.is_(None), runs.c.holder.is_not(None))).scalars())
        return [run_id for run_id in open_runs if not self.run_alive(run_id)]

    def send_history(self, subscriber_id: int) -> list[dict[str, Any]]:
        """Every digest sent (or tried) to one subscriber, oldest first: for `subscribers show` (a data-access request)."""
        sl = t.send_log
        with self._tx() as conn:
            rows = conn.execute(select(sl.c.issue_id, sl.c.status, sl.c.message_id, sl.c.updated_at, sl.c.attempts, sl.c.error)
                                .where(sl.c.subscriber_id == subscriber_id).order_by(sl.c.updated_at, sl.c.issue_id)).all()
        return [{"issue": r.issue_id, "status": r.status, "message_id": r.message_id, "at": r.updated_at.isoformat(),
                 "attempts": r.attempts, **({"error": r.error} if r.error else {})} for r in rows]

    def run_holders(self, run_ids: Sequence[str]) -> dict[str, str]:
        """run id -> "host:pid" of the process that ran it."""
        if not run_ids:
            return {}
        runs = t.send_runs
        with self._tx() as conn:
            return {r.id: r.holder or "" for r in conn.execute(select(runs.c.id, runs.c.holder).where(runs.c.id.in_(list(run_ids))))}

    def retire_runs(self, run_ids: Sequence[str], now: datetime) -> None:
        """Mark these runs finished and hand what they still held back: their queued rows become deferred and due
        at once (retried by whoever sends next, on an issue being walked or on one that has gone out alike)."""
        if not run_ids:
            return
        runs, sl = t.send_runs, t.send_log
        with self._tx() as conn:
            conn.execute(update(sl).where(sl.c.claimed_by.in_(list(run_ids)), sl.c.status == "queued")
                         .values(status="deferred", next_attempt_at=now, updated_at=now))
            conn.execute(update(runs).where(runs.c.id.in_(list(run_ids)), runs.c.finished_at.is_(None)).values(finished_at=now))

    def live_runs(self) -> list[tuple[str, str, str, datetime]]:
        """(run id, issue id, holder, started) of the runs whose process is alive, for `publisher status`."""
        runs = t.send_runs
        with self._tx() as conn:
            rows = conn.execute(select(runs).where(runs.c.finished_at.is_(None), runs.c.holder.is_not(None))).all()
        return [(r.id, r.issue_id, r.holder, r.started_at) for r in rows if self.run_alive(r.id)]

    def heartbeat(self, run_id: str, now: datetime) -> None:
        with self._tx() as conn:
            conn.execute(update(t.send_runs).where(t.send_runs.c.id == run_id).values(heartbeat_at=now))

    def finish_run(self, run_id: str, now: datetime) -> None:
        """The run is done: rows it claimed and never tried (it was stopped, or a fault ended it) become deferred and
        due at once, so the next send or the service's next look takes them, on any issue."""
        self.retire_runs([run_id], now)
        with self._tx() as conn:
            conn.execute(update(t.send_runs).where(t.send_runs.c.id == run_id).values(heartbeat_at=now))

    def recipients(self, issue_created_at: datetime, batch: int = 1000) -> Iterator[list[Subscriber]]:
        """Active subscribers who had joined when the issue started, in batches by id (constant memory)."""
        s = t.subscribers
        last = 0
        while True:
            q = (select(s).where(s.c.id > last, s.c.status == SubscriberStatus.ACTIVE.value,
                                 func.coalesce(s.c.confirmed_at, s.c.created_at) <= issue_created_at)
                 .order_by(s.c.id).limit(batch))
            batch_of = self._subscribers(q)
            if not batch_of:
                return
            yield batch_of
            last = batch_of[-1].id

    def _subscribers(self, q: Any) -> list[Subscriber]:
        """The subscribers a query selects, with their topics (two statements, one transaction)."""
        with self._tx() as conn:
            rows = conn.execute(q).all()
            ids = [r.id for r in rows]
            topic_rows = conn.execute(select(t.subscriber_topics).where(t.subscriber_topics.c.subscriber_id.in_(ids))).all() if ids else []
        topics: dict[int, list[str]] = {}
        for tr in topic_rows:
            topics.setdefault(tr.subscriber_id, []).append(tr.topic_slug)
        return [Subscriber(r.id, r.email, SubscriberStatus(r.status), r.created_at, r.updated_at,
                           tuple(sorted(topics.get(r.id, ()))), r.confirmed_at) for r in rows]

    def subscriber_topic_sets(self) -> set[tuple[str, ...]]:
        """The distinct topic selections of active subscribers: the variants an issue needs."""
        s, st = t.subscribers, t.subscriber_topics
        with self._tx() as conn:
            rows = conn.execute(select(st.c.subscriber_id, st.c.topic_slug).join(s, s.c.id == st.c.subscriber_id)
                                .where(s.c.status == SubscriberStatus.ACTIVE.value)).all()
            everyone = conn.execute(select(func.count()).select_from(s).where(s.c.status == SubscriberStatus.ACTIVE.value)).scalar_one()
        by_sub: dict[int, list[str]] = {}
        for sid, slug in rows:
            by_sub.setdefault(sid, []).append(slug)
        sets = {tuple(sorted(v)) for v in by_sub.values()}
        if everyone > len(by_sub):
            sets.add(())
        return sets

    def count_recipients(self, issue_created_at: datetime) -> int:
        s = t.subscribers
        with self._tx() as conn:
            return conn.execute(select(func.count()).select_from(s).where(
                s.c.status == SubscriberStatus.ACTIVE.value, func.coalesce(s.c.confirmed_at, s.c.created_at) <= issue_created_at)).scalar_one()

    def issue_started(self, issue_id: str) -> datetime:
        """When the issue started: who had joined by then gets it; who joins later waits for the next one."""
        d = t.digest_issues
        with self._tx() as conn:
            return conn.execute(select(d.c.created_at).where(d.c.id == issue_id)).scalar_one()

    def issue_rates(self, issue_id: str) -> tuple[int, int, int]:
        """(messages delivered or refused for good, bounces, spam complaints) of one issue. A bounce is an address
        the relay refused for good (hard) or one a provider's webhook reported bounced after the issue started; a
        complaint, one a webhook reported as spam after the issue started, among those it was delivered to."""
        sl, subs, issues = t.send_log, t.subscribers, t.digest_issues
        with self._tx() as conn:
            started = conn.execute(select(issues.c.created_at).where(issues.c.id == issue_id)).scalar()
            if started is None:
                return 0, 0, 0
            since = (subs.c.updated_at >= started).label("since")
            rows = conn.execute(
                select(sl.c.status, sl.c.kind, subs.c.status.label("now"), since, func.count())
                .join(subs, subs.c.id == sl.c.subscriber_id)
                .where(sl.c.issue_id == issue_id, sl.c.status.in_(("sent", "failed")))
                .group_by(sl.c.status, sl.c.kind, subs.c.status, since)).all()
        attempted = bounced = complained = 0
        for status, kind, now, after, n in rows:
            attempted += n
            if status == "failed":
                bounced += n if kind == "hard" else 0
            elif after and now == SubscriberStatus.BOUNCED.value:
                bounced += n
            elif after and now == SubscriberStatus.COMPLAINED.value:
                complained += n
        return attempted, bounced, complained

    def claim_batch(self, issue_id: str, run_id: str, candidates: Sequence[tuple[int, str]], now: datetime,
                    stale_before: datetime, *, due: datetime | None = None) -> set[int]:
        """Claim these (subscriber id, message id) for this run; returns the ids it got.

        New rows are inserted; deferred rows (with ``due``, only those due by then), and queued rows of a
        run that finished or died (see :meth:`retire_runs`), are taken over; sent, failed and undeliverable rows,
        and rows another live run holds, are left alone. Subscribers who are no longer active (unsubscribed
        mid-send) are not claimed. ``stale_before`` only judges runs of versions without a lock (no holder).
        """
        if not candidates:
            return set()
        sl, runs, subs = t.send_log, t.send_runs, t.subscribers
        ids = [sid for sid, _ in candidates]
        with self._tx() as conn:
            active = set(conn.execute(select(subs.c.id).where(subs.c.id.in_(ids), subs.c.status == SubscriberStatus.ACTIVE.value)).scalars())
            rows = [{"issue_id": issue_id, "subscriber_id": sid, "status": "queued", "message_id": mid, "updated_at": now,
                     "attempts": 0, "claimed_by": run_id, "first_tried_at": now} for sid, mid in candidates if sid in active]
            if rows:
                conn.execute(_insert_ignore(conn, sl), rows)
            dead = select(runs.c.id).where(or_(runs.c.finished_at.is_not(None), and_(runs.c.holder.is_(None), runs.c.heartbeat_at < stale_before)))
            retry = _row_status() == "deferred"
            if due is not None:
                retry = and_(retry, or_(sl.c.next_attempt_at.is_(None), sl.c.next_attempt_at <= due))
            claimable = [sl.c.issue_id == issue_id, sl.c.subscriber_id.in_(list(active)),
                         or_(sl.c.claimed_by.is_(None), sl.c.claimed_by != run_id),
                         or_(retry, and_(_row_status() == "queued", or_(sl.c.claimed_by.is_(None), sl.c.claimed_by.in_(dead))))]
            if conn.dialect.name == "postgresql":
                # Rows another claimer has locked right now are skipped, not waited for: two workers given the same
                # hint split it instead of queueing behind each other (and neither gets a row twice).
                locked = select(sl.c.subscriber_id).where(*claimable).with_for_update(skip_locked=True)
                claimable = [sl.c.issue_id == issue_id, sl.c.subscriber_id.in_(locked)]
            # A row taken over keeps the Message-ID it is sent with now (the same on every retry; only a row made by a
            # version before per-store ids, 0.9, gets its new one here, so the log says what the message carries).
            ids_now = case(dict(candidates), value=sl.c.subscriber_id, else_=sl.c.message_id)
            conn.execute(update(sl).where(*claimable).values(status="queued", claimed_by=run_id, updated_at=now, message_id=ids_now))
            got = conn.execute(select(sl.c.subscriber_id).where(sl.c.issue_id == issue_id, sl.c.subscriber_id.in_(ids),
                                                                 _row_status() == "queued", sl.c.claimed_by == run_id)).scalars()
            return set(got)

    def record_sends(self, issue_id: str, results: Iterable[tuple[Any, ...]], now: datetime, *, run_id: str | None = None,
                     retry_in: Callable[[int], float] | None = None, soft_bounce_limit: int = 0, only_queued: bool = False) -> None:
        """(subscriber id, status, error, attempts[, kind]) in one transaction.

        ``run_id``: only rows this run holds are written (a dead run's journal never overwrites a later run's
        outcome); ``only_queued``: only rows not recorded yet (a journal replayed holds outcomes already recorded). A deferred row is due again ``retry_in(deferrals)`` seconds from now. A hard failure marks
        the address bounced; a soft one (mailbox full) counts towards ``soft_bounce_limit`` (0: never
        suppressed); a delivery resets that count. The sender's own faults (kind "sender") never touch
        the subscriber.
        """
        sl, subs = t.send_log, t.subscribers
        rows = [(r[0], r[1], r[2], r[3], r[4] if len(r) > 4 else ("hard" if r[1] == "failed" else "")) for r in results]
        if not rows:
            return
        where = [sl.c.issue_id == bindparam("b_issue"), sl.c.subscriber_id == bindparam("b_sid")]
        if run_id is not None:
            where.append(sl.c.claimed_by == run_id)
        if only_queued:
            where.append(_row_status() == "queued")
        stmt = (update(sl).where(*where)
                .values(status=bindparam("b_status"), error=bindparam("b_error"), updated_at=now, kind=bindparam("b_kind"),
                        next_attempt_at=bindparam("b_next"), deferrals=sl.c.deferrals + bindparam("b_deferred"),
                        attempts=sl.c.attempts + bindparam("b_attempts")))
        with self._tx() as conn:
            deferred = [sid for sid, status, *_ in rows if status == "deferred"]
            seen: dict[int, int] = {}
            if deferred:
                seen = dict(conn.execute(select(sl.c.subscriber_id, sl.c.deferrals).where(sl.c.issue_id == issue_id,
                                                                                          sl.c.subscriber_id.in_(deferred))).all())
            delay = retry_in or (lambda n: 60.0 * 2 ** min(n - 1, 8))

            def next_at(sid: int, status: str) -> datetime | None:
                return now + timedelta(seconds=delay(seen.get(sid, 0) + 1)) if status == "deferred" else None

            if run_id is not None:  # only what this run still holds
                held = select(sl.c.subscriber_id).where(sl.c.issue_id == issue_id, sl.c.subscriber_id.in_([r[0] for r in rows]), sl.c.claimed_by == run_id,
                                                        *([_row_status() == "queued"] if only_queued else []))
                mine = set(conn.execute(held).scalars())
                rows = [r for r in rows if r[0] in mine]
                if not rows:
                    return
            conn.execute(stmt, [{"b_issue": issue_id, "b_sid": sid, "b_status": status, "b_error": error or None, "b_attempts": attempts,
                                 "b_kind": kind or None, "b_next": next_at(sid, status), "b_deferred": int(status == "deferred")}
                                for sid, status, error, attempts, kind in rows])
            bounced = [sid for sid, status, _, _, kind in rows if status == "failed" and kind == "hard"]
            if bounced:
                conn.execute(update(subs).where(subs.c.id.in_(bounced), subs.c.status == SubscriberStatus.ACTIVE.value)
                             .values(status=SubscriberStatus.BOUNCED.value, updated_at=now))
            self._soft_bounced(conn, [sid for sid, status, _, _, kind in rows if status == "failed" and kind == "soft"], soft_bounce_limit, now)
            delivered = [sid for sid, status, *_ in rows if status == "sent"]
            if delivered:
                conn.execute(update(subs).where(subs.c.id.in_(delivered), subs.c.soft_bounces > 0).values(soft_bounces=0))

    def _soft_bounced(self, conn: Any, ids: list[int], limit: int, now: datetime) -> None:
        if not ids:
            return
        subs = t.subscribers
        conn.execute(update(subs).where(subs.c.id.in_(ids)).values(soft_bounces=subs.c.soft_bounces + 1))
        if limit > 0:
            conn.execute(update(subs).where(subs.c.id.in_(ids), subs.c.soft_bounces >= limit, subs.c.status == SubscriberStatus.ACTIVE.value)
                         .values(status=SubscriberStatus.BOUNCED.value, updated_at=now))

    def give_up(self, started_before: datetime, now: datetime, *, soft_bounce_limit: int = 0) -> int:
        """Rows still deferred that were first tried before ``started_before`` (rows of versions before 0014: whose
        issue started before it): undeliverable (not bounced), each a soft bounce of its subscriber. Returns how many.
        Counted per row, not per issue: a warm-up sends one issue over days, and its last recipients get the same
        time to be delivered as its first."""
        sl, d = t.send_log, t.digest_issues
        old = or_(sl.c.first_tried_at < started_before,
                  and_(sl.c.first_tried_at.is_(None), sl.c.issue_id.in_(select(d.c.id).where(d.c.created_at < started_before))))
        with self._tx() as conn:
            ids = list(conn.execute(select(sl.c.subscriber_id).where(sl.c.status == "deferred", old)).scalars())
            if not ids:
                return 0
            conn.execute(update(sl).where(sl.c.status == "deferred", old)
                         .values(status="undeliverable", next_attempt_at=None, updated_at=now))
            self._soft_bounced(conn, sorted(set(ids)), soft_bounce_limit, now)
        return len(ids)

    def due_retries(self, now: datetime) -> list[str]:
        """Issues with deferred rows due by ``now``, oldest first."""
        sl, d = t.send_log, t.digest_issues
        with self._tx() as conn:
            return list(conn.execute(select(sl.c.issue_id).join(d, d.c.id == sl.c.issue_id)
                                     .where(sl.c.status == "deferred", or_(sl.c.next_attempt_at.is_(None), sl.c.next_attempt_at <= now))
                                     .group_by(sl.c.issue_id).order_by(func.min(d.c.created_at))).scalars())

    def next_retry(self, issue_id: str | None = None) -> datetime | None:
        sl = t.send_log
        q = select(func.min(sl.c.next_attempt_at)).where(sl.c.status == "deferred")
        if issue_id is not None:
            q = q.where(sl.c.issue_id == issue_id)
        with self._tx() as conn:
            return conn.execute(q).scalar_one()

    def deferred_recipients(self, issue_id: str, due: datetime | None, batch: int = 1000) -> Iterator[list[Subscriber]]:
        """Active subscribers whose row of this issue is deferred (and due by ``due``), in batches by id."""
        s, sl = t.subscribers, t.send_log
        last = 0
        while True:
            q = (select(s).join(sl, and_(sl.c.subscriber_id == s.c.id, sl.c.issue_id == issue_id))
                 .where(s.c.id > last, s.c.status == SubscriberStatus.ACTIVE.value, _row_status().in_(("deferred", "queued"))))
            if due is not None:
                q = q.where(or_(sl.c.status == "queued", sl.c.next_attempt_at.is_(None), sl.c.next_attempt_at <= due))
            batch_of = self._subscribers(q.order_by(s.c.id).limit(batch))
            if not batch_of:
                return
            yield batch_of
            last = batch_of[-1].id

    def unfinished_sends(self, issue_id: str, *, queued_only: bool = False) -> int:
        """Rows still queued (claimed and not tried, or held by a run) or deferred; ``queued_only``: only the former,
        while there are any the issue has not gone out to everyone, and the next run resumes it."""
        sl = t.send_log
        states = ("queued",) if queued_only else ("queued", "deferred")
        with self._tx() as conn:
            return conn.execute(select(func.count()).select_from(sl).where(sl.c.issue_id == issue_id, sl.c.status.in_(states))).scalar_one()


def _row_status() -> Any:
    """send_log.status as an expression no index covers (``status || ''``), for statements that pick rows by subscriber
    id. Given a status test, PostgreSQL's generic plans chose the (issue_id, status) index and read every queued row of
    the issue for a batch of 50 (a second per claim at a million); this leaves it the primary key."""
    return t.send_log.c.status.concat("")


def _insert_ignore(conn: Any, table: Any) -> Any:
    """INSERT that skips rows whose key exists (another run, or an earlier one, has them)."""
    if conn.dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as pg_insert

        return pg_insert(table).on_conflict_do_nothing()
    from sqlalchemy.dialects.sqlite import insert as sqlite_insert

    return sqlite_insert(table).on_conflict_do_nothing()
