"""Store methods for running the service: the scheduler's lease and the sources' state."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import insert, or_, select, update
from sqlalchemy.exc import IntegrityError

from . import tables as t


class OperationsMixin:
    def _tx(self) -> Any: ...  # provided by Store

    def acquire_lease(self, name: str, holder: str, now: datetime, until: datetime) -> bool:
        """Take or renew the lease: True while this holder has it. Another holder gets it once it has expired, or at
        once when the holder's process is gone (it held :func:`lease_liveness_id`'s lock: see ``hold_run``)."""
        lease = t.scheduler_lease
        with self._tx() as conn:
            got = conn.execute(update(lease).where(lease.c.name == name, or_(lease.c.holder == holder, lease.c.expires_at < now))
                               .values(holder=holder, expires_at=until)).rowcount
        if got:
            return True
        current = self.lease_holder(name)
        if current is not None and not self.run_alive(lease_liveness_id(current[0])):  # type: ignore[attr-defined]
            with self._tx() as conn:
                if conn.execute(update(lease).where(lease.c.name == name, lease.c.holder == current[0])
                                .values(holder=holder, expires_at=until)).rowcount:
                    return True
        try:
            with self._tx() as conn:
                conn.execute(insert(lease).values(name=name, holder=holder, expires_at=until))
            return True
        except IntegrityError:
            return False

    def release_lease(self, name: str, holder: str, now: datetime) -> None:
        lease = t.scheduler_lease
        with self._tx() as conn:
            conn.execute(update(lease).where(lease.c.name == name, lease.c.holder == holder).values(expires_at=now))

    def lease_holder(self, name: str) -> tuple[str, datetime] | None:
        lease = t.scheduler_lease
        with self._tx() as conn:
            row = conn.execute(select(lease).where(lease.c.name == name)).first()
        return (row.holder, row.expires_at) if row else None

    def source_state(self, name: str) -> dict[str, Any]:
        s = t.source_state
        with self._tx() as conn:
            row = conn.execute(select(s).where(s.c.name == name)).first()
        return dict(row._mapping) if row else {"name": name}

    def all_source_states(self) -> list[dict[str, Any]]:
        s = t.source_state
        with self._tx() as conn:
            return [dict(r._mapping) for r in conn.execute(select(s).order_by(s.c.name))]

    def save_source_state(self, name: str, **values: Any) -> None:
        s = t.source_state
        with self._tx() as conn:
            if conn.execute(update(s).where(s.c.name == name).values(**values)).rowcount:
                return
        try:
            with self._tx() as conn:
                conn.execute(insert(s).values(name=name, **values))
        except IntegrityError:
            with self._tx() as conn:
                conn.execute(update(s).where(s.c.name == name).values(**values))


def lease_liveness_id(holder: str) -> str:
    """The liveness lock a lease holder keeps while it lives (a file name or an advisory lock key: no odd characters)."""
    import hashlib

    return "lease-" + hashlib.sha256(holder.encode("utf-8")).hexdigest()[:32]
