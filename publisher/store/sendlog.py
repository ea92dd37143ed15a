"""The send log: one row per (issue, subscriber), claimed before a message leaves and marked after.

Rows are claimed and recorded in batches (one transaction each), so the log costs a few
milliseconds per batch, not per message. A run keeps a heartbeat; a queued row whose run has
stopped beating (killed, crashed) is taken over by the next run, so a crash loses nothing and
duplicates at most what was in flight. Two runs at once never hold the same row.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import and_, bindparam, func, insert, or_, select, update

from ..models import Subscriber, SubscriberStatus
from . import tables as t


class SendLogMixin:
    def _tx(self) -> Any: ...  # provided by Store

    def register_run(self, run_id: str, issue_id: str, now: datetime) -> None:
        with self._tx() as conn:
            conn.execute(insert(t.send_runs).values(id=run_id, issue_id=issue_id, started_at=now, heartbeat_at=now))

    def heartbeat(self, run_id: str, now: datetime) -> None:
        with self._tx() as conn:
            conn.execute(update(t.send_runs).where(t.send_runs.c.id == run_id).values(heartbeat_at=now))

    def finish_run(self, run_id: str, now: datetime) -> None:
        with self._tx() as conn:
            conn.execute(update(t.send_runs).where(t.send_runs.c.id == run_id).values(finished_at=now, heartbeat_at=now))

    def recipients(self, issue_created_at: datetime, batch: int = 1000) -> Iterator[list[Subscriber]]:
        """Active subscribers who had joined when the issue started, in batches by id (constant memory)."""
        s = t.subscribers
        last = 0
        while True:
            q = (select(s).where(s.c.id > last, s.c.status == SubscriberStatus.ACTIVE.value,
                                 func.coalesce(s.c.confirmed_at, s.c.created_at) <= issue_created_at)
                 .order_by(s.c.id).limit(batch))
            with self._tx() as conn:
                rows = conn.execute(q).all()
                ids = [r.id for r in rows]
                topic_rows = conn.execute(select(t.subscriber_topics).where(t.subscriber_topics.c.subscriber_id.in_(ids))).all() if ids else []
            if not rows:
                return
            topics: dict[int, list[str]] = {}
            for tr in topic_rows:
                topics.setdefault(tr.subscriber_id, []).append(tr.topic_slug)
            yield [Subscriber(r.id, r.email, SubscriberStatus(r.status), r.created_at, r.updated_at,
                              tuple(sorted(topics.get(r.id, ()))), r.confirmed_at) for r in rows]
            last = ids[-1]

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

    def claim_batch(self, issue_id: str, run_id: str, candidates: Sequence[tuple[int, str]], now: datetime,
                    stale_before: datetime) -> set[int]:
        """Claim these (subscriber id, message id) for this run; returns the ids it got.

        New rows are inserted; deferred rows, and queued rows of a run that stopped, are taken over;
        sent and failed rows, and rows another live run holds, are left alone. Subscribers who are no
        longer active (unsubscribed mid-send) are not claimed.
        """
        if not candidates:
            return set()
        sl, runs, subs = t.send_log, t.send_runs, t.subscribers
        ids = [sid for sid, _ in candidates]
        with self._tx() as conn:
            active = set(conn.execute(select(subs.c.id).where(subs.c.id.in_(ids), subs.c.status == SubscriberStatus.ACTIVE.value)).scalars())
            rows = [{"issue_id": issue_id, "subscriber_id": sid, "status": "queued", "message_id": mid, "updated_at": now,
                     "attempts": 0, "claimed_by": run_id} for sid, mid in candidates if sid in active]
            if rows:
                conn.execute(_insert_ignore(conn, sl), rows)
            dead = select(runs.c.id).where(or_(runs.c.heartbeat_at < stale_before, runs.c.finished_at.is_not(None)))
            conn.execute(
                update(sl)
                .where(sl.c.issue_id == issue_id, sl.c.subscriber_id.in_(list(active)), sl.c.claimed_by != run_id,
                       or_(sl.c.status == "deferred", and_(sl.c.status == "queued", or_(sl.c.claimed_by.is_(None), sl.c.claimed_by.in_(dead)))))
                .values(status="queued", claimed_by=run_id, updated_at=now)
            )
            got = conn.execute(select(sl.c.subscriber_id).where(sl.c.issue_id == issue_id, sl.c.subscriber_id.in_(ids),
                                                                 sl.c.status == "queued", sl.c.claimed_by == run_id)).scalars()
            return set(got)

    def record_sends(self, issue_id: str, results: Iterable[tuple[int, str, str, int]], now: datetime) -> None:
        """(subscriber id, status, error, attempts) in one transaction; a failed address is marked bounced."""
        sl, subs = t.send_log, t.subscribers
        results = list(results)
        stmt = (update(sl).where(sl.c.issue_id == bindparam("b_issue"), sl.c.subscriber_id == bindparam("b_sid"))
                .values(status=bindparam("b_status"), error=bindparam("b_error"), updated_at=now, attempts=sl.c.attempts + bindparam("b_attempts")))
        with self._tx() as conn:
            if results:  # one executemany for the batch, not a statement per row
                conn.execute(stmt, [{"b_issue": issue_id, "b_sid": sid, "b_status": status, "b_error": error or None, "b_attempts": attempts}
                                    for sid, status, error, attempts in results])
            bounced = [sid for sid, status, _, _ in results if status == "failed"]
            if bounced:
                conn.execute(update(subs).where(subs.c.id.in_(bounced), subs.c.status == SubscriberStatus.ACTIVE.value)
                             .values(status=SubscriberStatus.BOUNCED.value, updated_at=now))

    def unfinished_sends(self, issue_id: str) -> int:
        """Rows still queued or deferred: while there are any, the issue stays open and the next run resumes it."""
        sl = t.send_log
        with self._tx() as conn:
            return conn.execute(select(func.count()).select_from(sl).where(sl.c.issue_id == issue_id, sl.c.status.in_(("queued", "deferred")))).scalar_one()


def _insert_ignore(conn: Any, table: Any) -> Any:
    """INSERT that skips rows whose key exists (another run, or an earlier one, has them)."""
    if conn.dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as pg_insert

        return pg_insert(table).on_conflict_do_nothing()
    from sqlalchemy.dialects.sqlite import insert as sqlite_insert

    return sqlite_insert(table).on_conflict_do_nothing()
