"""Store methods the subscribers package needs beyond adding and listing: by id, topics, erasure, suppression."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import delete, insert, or_, select, update
from sqlalchemy.exc import IntegrityError

from ..models import Subscriber, SubscriberStatus
from . import tables as t


class AudienceMixin:
    def _tx(self) -> Any: ...  # provided by Store

    def subscribers(self, **kw: Any) -> list[Subscriber]: ...  # provided by Store

    def subscriber_by_id(self, subscriber_id: int) -> Subscriber | None:
        with self._tx() as conn:
            email = conn.execute(select(t.subscribers.c.email).where(t.subscribers.c.id == subscriber_id)).scalar()
        return self.subscribers(emails=[email])[0] if email else None

    def set_topics(self, subscriber_id: int, topics: Sequence[str], now: datetime) -> None:
        st = t.subscriber_topics
        with self._tx() as conn:
            conn.execute(delete(st).where(st.c.subscriber_id == subscriber_id))
            if topics:
                conn.execute(insert(st), [{"subscriber_id": subscriber_id, "topic_slug": slug} for slug in dict.fromkeys(topics)])
            conn.execute(update(t.subscribers).where(t.subscribers.c.id == subscriber_id).values(updated_at=now))

    def set_status_by_id(self, subscriber_id: int, status: SubscriberStatus, now: datetime) -> bool:
        values: dict[str, Any] = {"status": status.value, "updated_at": now}
        if status is SubscriberStatus.ACTIVE:
            values["confirmed_at"] = now
        with self._tx() as conn:
            return conn.execute(update(t.subscribers).where(t.subscribers.c.id == subscriber_id).values(**values)).rowcount > 0

    def is_suppressed_hash(self, email_hash: str) -> bool:
        with self._tx() as conn:
            return conn.execute(select(t.suppressions.c.email_hash).where(t.suppressions.c.email_hash == email_hash)).first() is not None

    def erase(self, subscriber_id: int, email_hash: str, reason: str, now: datetime, *, email: str | None = None) -> int:
        """Delete the person's row (topics and send log go with it) and keep only a hash, so they stay suppressed.

        Their sign-up requests go too (``email``: the normalised address; a waiting request holds it for up to a
        week), so a queued confirmation is never sent after the erasure. Returns how many requests were deleted.
        """
        r = t.signup_requests
        with self._tx() as conn:
            mine = r.c.subscriber_id == subscriber_id if email is None else or_(r.c.subscriber_id == subscriber_id, r.c.email == email)
            requests = conn.execute(delete(r).where(mine)).rowcount
            conn.execute(delete(t.send_log).where(t.send_log.c.subscriber_id == subscriber_id))
            conn.execute(delete(t.subscriber_topics).where(t.subscriber_topics.c.subscriber_id == subscriber_id))
            conn.execute(delete(t.subscribers).where(t.subscribers.c.id == subscriber_id))
            try:
                with conn.begin_nested():
                    conn.execute(insert(t.suppressions).values(email_hash=email_hash, reason=reason, created_at=now))
            except IntegrityError:
                pass
        return requests

    def suppressed_hashes(self, hashes: Any) -> set[str]:
        hashes = list(hashes)
        if not hashes:
            return set()
        with self._tx() as conn:
            return set(conn.execute(select(t.suppressions.c.email_hash).where(t.suppressions.c.email_hash.in_(hashes))).scalars())

    def suppress_subscribers(self, emails: Sequence[str], status: SubscriberStatus, now: datetime) -> int:
        """The active or pending ones among these addresses become ``status`` (an import says they left: unsubscribed,
        bounced or complained); others are left as they are. Returns how many changed."""
        s = t.subscribers
        if not emails:
            return 0
        with self._tx() as conn:
            return conn.execute(update(s).where(s.c.email.in_(list(emails)),
                                                s.c.status.in_([SubscriberStatus.ACTIVE.value, SubscriberStatus.PENDING.value]))
                                .values(status=status.value, updated_at=now)).rowcount

    def add_subscribers(self, rows: Sequence[tuple[str, Sequence[str]]], status: SubscriberStatus, now: datetime, *,
                        confirmed_at: Mapping[str, datetime] | None = None) -> int:
        """Many at once (an import): addresses already present are left alone. Returns how many were added.

        Active ones are confirmed ``now``, or at ``confirmed_at[address]`` (the opt-in time an export from another
        platform gives)."""
        if not rows:
            return 0
        s, st = t.subscribers, t.subscriber_topics
        with self._tx() as conn:
            known = set(conn.execute(select(s.c.email).where(s.c.email.in_([e for e, _ in rows]))).scalars())
            new = [(e, topics) for e, topics in dict(rows).items() if e not in known]
            if not new:
                return 0
            confirmed = now if status is SubscriberStatus.ACTIVE else None
            when = confirmed_at if confirmed is not None and confirmed_at else {}
            conn.execute(insert(s), [{"email": e, "status": status.value, "created_at": now, "updated_at": now,
                                      "confirmed_at": when.get(e, confirmed)} for e, _ in new])
            ids = dict(conn.execute(select(s.c.email, s.c.id).where(s.c.email.in_([e for e, _ in new]))).all())
            topic_rows = [{"subscriber_id": ids[e], "topic_slug": slug} for e, topics in new for slug in dict.fromkeys(topics)]
            if topic_rows:
                conn.execute(insert(st), topic_rows)
            return len(new)
