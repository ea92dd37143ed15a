"""Shared fixtures: a throwaway project directory, a store on SQLite and on PostgreSQL."""

from __future__ import annotations

import importlib.util
import os
import shutil
import socket
import uuid
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest

from publisher.config import Config, load_config
from publisher.store import Store, open_store

REPO = Path(__file__).resolve().parent.parent
PG_URL = os.environ.get("PUBLISHER_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
NOW = datetime(2026, 11, 27, 9, 30, tzinfo=timezone.utc)
# A signing key of the length the publisher demands (32 bytes or more); never a real one.
TEST_SECRET_KEY = "test-secret-key-for-the-test-suite-only"


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No PUBLISHER_* variable from the developer's shell leaks into a test; a fixed secret key."""
    for name in list(os.environ):
        if name.startswith("PUBLISHER_") and name != "PUBLISHER_TEST_POSTGRES_URL":
            monkeypatch.delenv(name)
    monkeypatch.setenv("PUBLISHER_SECRET_KEY", TEST_SECRET_KEY)


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A copy of the repository's config.toml, content/ and templates/ in a temporary directory."""
    for name in ("content", "templates"):
        shutil.copytree(REPO / name, tmp_path / name)
    shutil.copy(REPO / "config.toml", tmp_path / "config.toml")
    return tmp_path


@pytest.fixture
def cfg(project: Path) -> Config:
    return load_config(project / "config.toml")


def _postgres_available() -> str | None:
    try:
        import psycopg
    except ImportError:
        return "psycopg is not installed"
    try:
        dsn = PG_URL.replace("postgresql+psycopg://", "postgresql://")
        with psycopg.connect(dsn, connect_timeout=3):
            return None
    except Exception as exc:  # noqa: BLE001 - any failure means "not reachable here"
        return f"PostgreSQL not reachable at {PG_URL} ({type(exc).__name__}: {str(exc).strip()[:120]})"


_PG_SKIP = _postgres_available()


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A fresh schema on the PostgreSQL server per test, dropped afterwards."""
    if _PG_SKIP:
        if os.environ.get("CI"):  # CI promises a PostgreSQL: there a skip would hide a broken store
            pytest.fail(f"CI is set but {_PG_SKIP}")
        pytest.skip(_PG_SKIP)
    import psycopg

    schema = f"t_{uuid.uuid4().hex[:12]}"
    dsn = PG_URL.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
    sep = "&" if "?" in PG_URL else "?"
    yield f"{PG_URL}{sep}options=-csearch_path%3D{schema}"
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA "{schema}" CASCADE')


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    """The store on a real SQLite file and on a real PostgreSQL server."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'store.db'}"
    else:
        url = request.getfixturevalue("postgres_url")
    s = open_store(url)
    yield s
    s.close()


# -- a real browser: Debian's chromium, driven by Playwright (never a Playwright download) -----------------

CHROMIUM = "/usr/bin/chromium"
# We run as root (no sandbox then), with no network but localhost.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]


def _browser_unavailable() -> str | None:
    if not os.access(CHROMIUM, os.X_OK):
        return f"{CHROMIUM} is missing (install the Debian package chromium)"
    if importlib.util.find_spec("playwright") is None:
        return "playwright is not installed (pip install -e '.[test]')"
    return None


@pytest.fixture(scope="session")
def browser() -> Iterator[Any]:
    """One Chromium for the whole run."""
    reason = _browser_unavailable()
    if reason:
        if os.environ.get("CI"):  # CI promises chromium: there a skip would hide a broken digest layout
            pytest.fail(f"CI is set but {reason}")
        pytest.skip(reason)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()


# -- the fleet (issue 13): a broker, and a coordinator's and workers' environment on PostgreSQL -------------------------


BROKER = os.environ.get("PUBLISHER_TEST_BROKER_URL", "amqp://guest:guest@127.0.0.1:5672//")


def _broker_missing() -> str | None:
    from urllib.parse import urlsplit

    parts = urlsplit(BROKER)
    try:
        socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 5672), timeout=2).close()
        return None
    except OSError as exc:
        return f"no message broker at {parts.hostname}:{parts.port} ({exc}); start RabbitMQ or set PUBLISHER_TEST_BROKER_URL"


@pytest.fixture
def broker() -> str:
    missing = _broker_missing()
    if missing:
        if os.environ.get("CI"):
            pytest.fail(missing + " (CI starts it: see .ci/run)")
        pytest.skip(missing)
    return BROKER


@pytest.fixture
def fleet_env(broker: str, postgres_url: str) -> dict[str, str]:
    from .test_delivery_faults import env_for

    return env_for(PUBLISHER_STORE__URL=postgres_url, PUBLISHER_DELIVERY__ENGINE="celery", PUBLISHER_BROKER_URL=broker,
                   PUBLISHER_DELIVERY__TASK_QUEUE=f"publisher-test-{uuid.uuid4().hex[:8]}")
