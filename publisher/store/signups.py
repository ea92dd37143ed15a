"""Store methods for web sign-ups: the request queue, the shared rate-limit slots, the confirmation nonce.

Every check-and-change here is one conditional statement (an UPDATE whose WHERE re-checks the condition, or an
INSERT that a primary key refuses twice), so several web workers and `publisher run` can share the store
without a lock and without two of them taking the same row or the last free slot.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, delete, func, insert, or_, select, update
from sqlalchemy.exc import IntegrityError

from ..models import SubscriberStatus
from . import tables as t

WAITING = ("queued", "retry")  # a request still to be done; anything else is an outcome
DONE_KEPT = timedelta(days=1)  # a done request (its outcome, no address) is kept this long, for `status` and debugging
WAITING_KEPT = timedelta(days=7)  # a request never done in a week is dropped: its confirmation link would have expired


@dataclass(frozen=True)
class SignupRequest:
    id: int
    email: str
    topics: tuple[str, ...]
    status: str
    subscriber_id: int | None
    attempts: int
    created_at: datetime | None = None  # when it was asked for: someone who left after that is not reopened by it


class SignupMixin:
    def _tx(self) -> Any: ...  # provided by Store

    # -- the queue ----------------------------------------------------------------------------

    def enqueue_signup(self, email: str, topics: Sequence[str], now: datetime) -> int:
        """One row, whatever the address: the web page's only write for a sign-up."""
        with self._tx() as conn:
            return conn.execute(insert(t.signup_requests).values(
                email=email, topics=list(topics), status="queued", attempts=0, created_at=now, next_attempt_at=now)).inserted_primary_key[0]

    def enqueue_signups(self, requests: Sequence[tuple[str, Sequence[str]]], now: datetime) -> None:
        """Many (email, topics) at once, in one transaction: an import's pending people."""
        if requests:
            with self._tx() as conn:
                conn.execute(insert(t.signup_requests), [{"email": email, "topics": list(topics), "status": "queued", "attempts": 0,
                                                          "created_at": now, "next_attempt_at": now} for email, topics in requests])

    def claim_signups(self, worker: str, now: datetime, lease: timedelta, limit: int = 20) -> list[SignupRequest]:
        """Requests that are due and held by nobody (or by a sender whose hold ran out), now held by ``worker``."""
        r = t.signup_requests
        free = or_(r.c.claimed_until.is_(None), r.c.claimed_until < now)
        due = and_(r.c.status.in_(WAITING), r.c.next_attempt_at <= now, free)
        with self._tx() as conn:
            ids = list(conn.execute(select(r.c.id).where(due).order_by(r.c.id).limit(limit)).scalars())
        got: list[int] = []
        for request_id in ids:  # each claim re-checks: another sender may have taken the row meanwhile
            with self._tx() as conn:
                if conn.execute(update(r).where(r.c.id == request_id, due).values(claimed_by=worker, claimed_until=now + lease)).rowcount:
                    got.append(request_id)
        if not got:
            return []
        with self._tx() as conn:
            rows = conn.execute(select(r).where(r.c.id.in_(got)).order_by(r.c.id)).all()
        return [SignupRequest(row.id, row.email or "", tuple(row.topics or ()), row.status, row.subscriber_id, row.attempts,
                              row.created_at) for row in rows]

    def signup_applied(self, request_id: int, subscriber_id: int) -> None:
        """The sign-up has changed the subscriber (and taken a slot of the address's cap): retries only resend."""
        r = t.signup_requests
        with self._tx() as conn:
            conn.execute(update(r).where(r.c.id == request_id).values(subscriber_id=subscriber_id))

    def retry_signup(self, request_id: int, worker: str, attempts: int, next_attempt_at: datetime, error: str) -> None:
        r = t.signup_requests
        with self._tx() as conn:
            conn.execute(update(r).where(r.c.id == request_id, r.c.claimed_by == worker).values(
                status="retry", attempts=attempts, next_attempt_at=next_attempt_at, error=error[:2000], claimed_by=None, claimed_until=None))

    def finish_signup(self, request_id: int, worker: str, status: str, now: datetime, *, attempts: int | None = None, error: str = "") -> None:
        """Record the outcome and forget the address: a done request keeps no personal data."""
        r = t.signup_requests
        values: dict[str, Any] = {"status": status, "email": None, "done_at": now, "error": error[:2000] or None, "claimed_by": None,
                                  "claimed_until": None}
        if attempts is not None:
            values["attempts"] = attempts
        with self._tx() as conn:
            conn.execute(update(r).where(r.c.id == request_id, r.c.claimed_by == worker).values(**values))

    def waiting_signups(self, *, due_at: datetime | None = None) -> int:
        """Requests not done yet; with ``due_at``, only those due by then or being done (not those waiting for a retry)."""
        r = t.signup_requests
        q = select(func.count()).select_from(r).where(r.c.status.in_(WAITING))
        if due_at is not None:
            q = q.where(or_(r.c.next_attempt_at <= due_at, r.c.claimed_until.is_not(None)))
        with self._tx() as conn:
            return conn.execute(q).scalar_one()

    def signup_outcomes(self) -> dict[str, int]:
        """How many requests (kept: the last day's done ones, and every waiting one) have each status."""
        r = t.signup_requests
        with self._tx() as conn:
            return {status: n for status, n in conn.execute(select(r.c.status, func.count()).group_by(r.c.status))}

    def prune_signups(self, now: datetime) -> int:
        """Drop done requests after a day and waiting ones after a week, and every expired rate slot."""
        r, slots = t.signup_requests, t.rate_slots
        with self._tx() as conn:
            n = conn.execute(delete(r).where(r.c.status.not_in(WAITING), r.c.done_at < now - DONE_KEPT)).rowcount
            n += conn.execute(delete(r).where(r.c.created_at < now - WAITING_KEPT)).rowcount
            n += conn.execute(delete(slots).where(slots.c.expires_at <= now)).rowcount
        return n

    # -- shared sliding-window limits -----------------------------------------------------------

    def take_slot(self, key: str, limit: int, window: timedelta, now: datetime) -> bool:
        """Take one of ``limit`` slots of ``key`` for ``window``; False when all are taken (the limit is reached).

        A slot is taken by an UPDATE that re-checks it has expired, or by INSERTing a slot number not used yet; the
        primary key (key, slot) and the re-check make two takers of the same slot impossible, in any process.
        """
        s = t.rate_slots
        with self._tx() as conn:
            rows = dict(conn.execute(select(s.c.slot, s.c.expires_at).where(s.c.key == key)).all())
        expired = [n for n, until in sorted(rows.items()) if until <= now and n < limit]
        missing = [n for n in range(limit) if n not in rows]
        for n in expired:
            with self._tx() as conn:
                if conn.execute(update(s).where(s.c.key == key, s.c.slot == n, s.c.expires_at <= now).values(expires_at=now + window)).rowcount:
                    return True
        for n in missing:
            try:
                with self._tx() as conn:
                    conn.execute(insert(s).values(key=key, slot=n, expires_at=now + window))
                return True
            except IntegrityError:
                continue  # another process took this number a moment ago: try the next one
        return False

    def release_slot(self, key: str) -> None:
        """Give back every slot of ``key`` (a webhook whose events could not be recorded, so its retry must pass)."""
        s = t.rate_slots
        with self._tx() as conn:
            conn.execute(delete(s).where(s.c.key == key))

    # -- the confirmation nonce -------------------------------------------------------------------

    def signup_state(self, subscriber_id: int) -> tuple[str, SubscriberStatus, str | None] | None:
        """(address, status, nonce) of a subscriber, for a confirmation link or a confirmation."""
        s = t.subscribers
        with self._tx() as conn:
            row = conn.execute(select(s.c.email, s.c.status, s.c.confirm_nonce).where(s.c.id == subscriber_id)).first()
        return (row.email, SubscriberStatus(row.status), row.confirm_nonce) if row else None

    def open_signup(self, email: str, topics: Sequence[str], nonce: str, now: datetime, *, status: SubscriberStatus) -> int | None:
        """A new subscriber with this nonce; None when the address is known already (then see :meth:`reopen_signup`)."""
        s = t.subscribers
        confirmed = now if status is SubscriberStatus.ACTIVE else None
        try:
            with self._tx() as conn:
                sid = conn.execute(insert(s).values(email=email, status=status.value, created_at=now, updated_at=now, confirmed_at=confirmed,
                                                    confirm_nonce=nonce if status is SubscriberStatus.PENDING else None)).inserted_primary_key[0]
                if topics:
                    conn.execute(insert(t.subscriber_topics), [{"subscriber_id": sid, "topic_slug": slug} for slug in dict.fromkeys(topics)])
            return sid
        except IntegrityError:
            return None

    def reopen_signup(self, subscriber_id: int, topics: Sequence[str], nonce: str, now: datetime) -> bool:
        """Pending or unsubscribed → pending with these topics and a new nonce (any older link stops working), at once.

        False when the subscriber is in another state by now (confirmed, bounced, erased): nothing changes.
        """
        s, st = t.subscribers, t.subscriber_topics
        reopenable = (SubscriberStatus.PENDING.value, SubscriberStatus.UNSUBSCRIBED.value)
        with self._tx() as conn:
            if not conn.execute(update(s).where(s.c.id == subscriber_id, s.c.status.in_(reopenable))
                                .values(status=SubscriberStatus.PENDING.value, confirm_nonce=nonce, updated_at=now)).rowcount:
                return False
            conn.execute(delete(st).where(st.c.subscriber_id == subscriber_id))
            if topics:
                conn.execute(insert(st), [{"subscriber_id": subscriber_id, "topic_slug": slug} for slug in dict.fromkeys(topics)])
            return True

    def confirm_signup(self, subscriber_id: int, nonce: str | None, now: datetime) -> bool:
        """Pending → active, only if the nonce is the current one (None: a link made before nonces, for a row that has none).

        One conditional UPDATE: a re-subscription that changes the nonce at the same moment cannot be confirmed by the old link.
        """
        s = t.subscribers
        current = s.c.confirm_nonce.is_(None) if nonce is None else s.c.confirm_nonce == nonce
        with self._tx() as conn:
            return conn.execute(update(s).where(s.c.id == subscriber_id, s.c.status == SubscriberStatus.PENDING.value, current)
                                .values(status=SubscriberStatus.ACTIVE.value, confirmed_at=now, updated_at=now)).rowcount > 0
