"""Warm-up: a new sending domain's daily volume ramps up by itself ([delivery].warmup, off by default).

Mailbox providers judge a domain they have not seen by how it starts: a new domain that sends 50,000 messages on
its first day looks like a spammer's. With the warm-up on, the first day that a digest goes out from the From
address's domain is day 0 of its ramp; each day allows ``warmup_start * (warmup_full / warmup_start) ** (day /
warmup_days)`` messages (Ghost's default ramp: 200 on the first day, 1.18 times more each day, 200,000 by day 42),
and from day ``warmup_days`` on there is no limit. Days are calendar days in [site].timezone.

What passes the day's allowance is not sent and not claimed: the issue stays open, `publisher status` says how far
the ramp has come, and the service resumes the issue as soon as the next day begins. Retries of deferred
recipients count against the allowance too: every message the domain sends is one the providers count.

The count is kept in the store (one row per domain and day, taken under a row lock), so the processes that send
(the scheduler, `publisher run --once` from cron, `digest send`) share one allowance.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Protocol
from zoneinfo import ZoneInfo


class AllowanceStore(Protocol):
    """What the warm-up needs of the store."""

    def warmup_started(self, domain: str, today: date, *, begin: bool = False) -> date | None: ...

    def take_allowance(self, name: str, n: int, limit: int) -> int: ...

    def allowance_used(self, name: str) -> int: ...


@dataclass(frozen=True)
class Ramp:
    start: int = 200  # messages on day 0
    full: int = 200_000  # messages on day ``days``: the ramp ends there
    days: int = 42

    def allowance(self, day: int) -> int | None:
        """Messages allowed on ``day`` (0 = the domain's first warm-up day); None once the ramp is over."""
        if day >= self.days:
            return None
        return max(self.start, min(self.full, round(self.start * (self.full / self.start) ** (max(0, day) / self.days))))


@dataclass(frozen=True)
class Day:
    """One day of one domain's ramp, as `publisher status` shows it."""

    domain: str
    day: int  # since the first warm-up day
    allowance: int | None  # None: warmed up, no limit
    used: int
    resumes_at: datetime  # the start of the next day, when the allowance renews

    @property
    def left(self) -> int | None:
        return None if self.allowance is None else max(0, self.allowance - self.used)


class Allowance:
    """Today's allowance of one domain, taken by the engine before it claims recipients. ``now`` is the send's clock
    (injected in tests); a send that runs past midnight moves on to the next day's allowance as it goes."""

    def __init__(self, store: AllowanceStore, ramp: Ramp, domain: str, now: datetime, timezone: str) -> None:
        self.store, self.ramp, self.domain, self.zone = store, ramp, domain, ZoneInfo(timezone)
        self._now, self._since = now, time.monotonic()
        self._set_day(now.astimezone(self.zone).date())
        self._taken_key = self.key

    def _set_day(self, today: date) -> None:
        self.today = today
        self.first = self.store.warmup_started(self.domain, today)  # None: nothing sent from it yet, today would be day 0
        self.day_number = (today - self.first).days if self.first else 0
        self.limit = self.ramp.allowance(self.day_number)
        self.key = f"warmup:{self.domain}:{today.isoformat()}"
        self.resumes_at = datetime.combine(today + timedelta(days=1), datetime.min.time(), self.zone)

    def _roll(self) -> None:
        """A new day since the send started: its own allowance from now on."""
        today = (self._now + timedelta(seconds=time.monotonic() - self._since)).astimezone(self.zone).date()
        if today != self.today:
            self._set_day(today)

    def take(self, n: int) -> int:
        """Up to ``n`` of today's messages: how many may go (0 when the day's allowance is used)."""
        self._roll()
        if self.limit is None or n <= 0:
            return n
        if self.first is None:
            self.first = self.store.warmup_started(self.domain, self.today, begin=True)
        self._taken_key = self.key
        return self.store.take_allowance(self.key, n, self.limit)

    def give_back(self, n: int) -> None:
        """Taken and not sent after all (not claimable: sent already, unsubscribed): to the day it was taken from."""
        if self.limit is not None and n > 0:
            self.store.take_allowance(self._taken_key, -n, self.limit)

    def state(self) -> Day:
        return Day(self.domain, self.day_number, self.limit, self.store.allowance_used(self.key) if self.limit is not None else 0,
                   self.resumes_at)
