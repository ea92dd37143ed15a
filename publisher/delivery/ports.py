"""The send engine's ports: the only things it knows of the world around it.

- :class:`SendLog`: where a run is registered, holds its liveness lock, claims rows and records outcomes
  (``publisher.store.Store`` on SQLite or PostgreSQL);
- :class:`Mailer`: where messages go, one per worker (SMTP, the local outbox, a mail API: ``backends``);
- :class:`WorkQueue`: how claimed batches reach the workers (threads in one process today: ``ThreadQueue``;
  the next step puts workers on other machines behind the same seam);
- :class:`Variants`: the issue's compiled variants by topic set;
- :class:`RateLimiter`: when the next message may go (this process's own, or one rate for the fleet).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime
from typing import Any, Protocol

from ..models import Subscriber
from .api import Recipient, Result


class RunLock(Protocol):
    def held(self) -> bool: ...

    def release(self) -> None: ...


class SendLog(Protocol):
    def hold_run(self, run_id: str) -> RunLock: ...

    def run_alive(self, run_id: str) -> bool: ...

    def register_run(self, run_id: str, issue_id: str, now: datetime, holder: str | None = None) -> None: ...

    def heartbeat(self, run_id: str, now: datetime) -> None: ...

    def finish_run(self, run_id: str, now: datetime) -> None: ...

    def claim_batch(self, issue_id: str, run_id: str, candidates: Sequence[tuple[int, str]], now: datetime,
                    stale_before: datetime, *, due: datetime | None = None) -> set[int]: ...

    def record_sends(self, issue_id: str, results: Iterable[tuple[Any, ...]], now: datetime, *, run_id: str | None = None,
                     retry_in: Callable[[int], float] | None = None, soft_bounce_limit: int = 0) -> None: ...

    def have_rows(self, issue_id: str, ids: Sequence[int], statuses: Sequence[str] = ()) -> set[int]: ...


class Mailer(Protocol):
    max_batch: int  # recipients per call it can take (an API request); SMTP and the outbox take one at a time

    def send(self, variant: Any, recipients: Sequence[Recipient]) -> list[Result]: ...

    def close(self) -> None: ...


class WorkQueue(Protocol):
    def put(self, batch: list[Subscriber] | None, timeout: float) -> bool:
        """False when the queue stayed full for ``timeout`` seconds (the caller checks whether to go on)."""
        ...

    def get(self, timeout: float) -> list[Subscriber] | None:
        """The next batch; None: no more work; []: nothing for ``timeout`` seconds (the worker checks whether to go on)."""
        ...

    def drain(self) -> None:
        """Drop what is queued (claimed rows stay claimed by the run, free for the next one once it finishes)."""
        ...


class Variants(Protocol):
    def get(self, topics: tuple[str, ...]) -> tuple[Any, bool]:
        """(the variant for this topic selection, whether it is empty)."""
        ...


class RateLimiter(Protocol):
    def wait(self, stop: threading.Event) -> None:
        """Return when the next message may go (or at once when ``stop`` is set)."""
        ...


class Allowance(Protocol):
    """A daily allowance of messages (the warm-up, see ``delivery.warmup``): taken before recipients are claimed."""

    def take(self, n: int) -> int:
        """How many of ``n`` may go now (fewer, or 0, once the day's allowance is used)."""
        ...

    def give_back(self, n: int) -> None:
        """Taken but not sent after all."""
        ...
