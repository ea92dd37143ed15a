"""Run liveness that dies with the process: no heartbeat to time out, no clock to trust.

A send run holds a lock for as long as its process lives; the kernel (SQLite: an ``flock`` on a file beside
the database) or the database server (PostgreSQL: a session advisory lock on a connection of its own) lets
go of it the instant the process dies, by kill -9 or a reboot. Anyone can then test a run: if its lock can
be taken, nobody holds it, so the run is dead and its claimed rows are free. The test takes the lock for a
moment and lets go, so two testers never disagree and a live run is never thought dead.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import threading
from pathlib import Path
from typing import Protocol

from sqlalchemy import Engine, text

from ..errors import StoreError


class RunLock(Protocol):
    def held(self) -> bool: ...

    def release(self) -> None: ...


def _key(run_id: str) -> int:
    """A signed 64-bit advisory lock key, in a namespace of our own (a prefix), from the run id."""
    return int.from_bytes(hashlib.sha256(b"publisher-send-run:" + run_id.encode()).digest()[:8], "big", signed=True)


class _PgLock:
    def __init__(self, engine: Engine, run_id: str) -> None:
        self.conn = engine.connect()
        self.key = _key(run_id)
        self.conn.execute(text("SELECT pg_advisory_lock(:k)"), {"k": self.key})
        self.conn.commit()  # a session lock outlives the transaction; the connection is kept out of the pool

    def held(self) -> bool:
        """Whether this session still holds the lock: False once the server dropped the connection (restart, idle
        timeout, a proxy), after which anyone may take the run for dead."""
        try:
            got = self.conn.execute(text("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted "
                                         "AND pid = pg_backend_pid()")).scalar_one()
            self.conn.commit()
            return got > 0
        except Exception:  # noqa: BLE001 - a dead connection: the lock is gone with it
            return False

    def release(self) -> None:
        try:
            self.conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": self.key})
            self.conn.commit()
        except Exception:  # noqa: BLE001 - the connection is gone, and the lock with it
            self.conn.invalidate()  # never back into the pool, in whatever state it is
        finally:
            self.conn.close()


class _FileLock:
    def held(self) -> bool:
        return True  # the kernel keeps it for as long as this process keeps the descriptor

    def __init__(self, path: Path) -> None:
        self.path = path
        self.fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        fcntl.flock(self.fd, fcntl.LOCK_EX)  # a file of our own: taken at once

    def release(self) -> None:
        try:
            self.path.unlink(missing_ok=True)
        finally:
            os.close(self.fd)  # the lock goes with the descriptor


class _MemoryLock:
    locks: set[str] = set()
    guard = threading.Lock()

    def __init__(self, run_id: str) -> None:
        self.run_id = run_id
        with self.guard:
            self.locks.add(run_id)

    def held(self) -> bool:
        return True

    def release(self) -> None:
        with self.guard:
            self.locks.discard(self.run_id)


class Liveness:
    """Hold a run's lock, and tell whether another run's lock is still held."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.dialect = engine.dialect.name
        database = engine.url.database
        self.folder: Path | None = None
        if self.dialect == "sqlite" and database and database != ":memory:" and not database.startswith("file::memory:"):
            self.folder = Path(database).absolute().with_name(Path(database).name + ".runs")

    def hold(self, run_id: str) -> RunLock:
        if self.dialect == "postgresql":
            return _PgLock(self.engine, run_id)
        if self.folder is None:
            return _MemoryLock(run_id)
        try:
            self.folder.mkdir(mode=0o700, exist_ok=True)
            return _FileLock(self.folder / f"{run_id}.lock")
        except OSError as exc:
            raise StoreError(f"cannot make the send run's lock file in {self.folder}: {exc.strerror}. The folder beside the "
                             "store must be writable (a full disk, or a read-only mount?).") from None

    def alive(self, run_id: str) -> bool:
        if self.dialect == "postgresql":
            with self.engine.connect() as conn:
                got = conn.execute(text("SELECT pg_try_advisory_lock(:k)"), {"k": _key(run_id)}).scalar_one()
                if got:
                    conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": _key(run_id)})
                conn.commit()
            return not got
        if self.folder is None:
            with _MemoryLock.guard:
                return run_id in _MemoryLock.locks
        path = self.folder / f"{run_id}.lock"
        try:
            fd = os.open(path, os.O_RDWR)
        except FileNotFoundError:
            return False  # released, or never made on this machine
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        finally:
            os.close(fd)  # (closing also lets go of the lock if this test took it)
        path.unlink(missing_ok=True)  # a dead run's leftover
        return False
