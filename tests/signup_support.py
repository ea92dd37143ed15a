"""Helpers for tests of the web sign-up: wait for the sign-up queue, read a form's CSRF token, read the outbox."""

from __future__ import annotations

import email
import email.policy
import mailbox
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

import requests
from requests.adapters import HTTPAdapter

from publisher.config import Config
from publisher.store import Store

from .servers import free_port


def settle(store: Store, timeout: float = 20.0) -> None:
    """Wait until the sign-up queue has nothing waiting that is due (the web app's sender works off the request path)."""
    deadline = time.monotonic() + timeout
    while waiting := store.waiting_signups(due_at=datetime.now(timezone.utc)):
        if time.monotonic() > deadline:
            raise AssertionError(f"the sign-up queue still has {waiting} request(s) due after {timeout} s")
        time.sleep(0.02)


def csrf_of(html: str) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', html)
    assert found, "the page has no CSRF field"
    return found.group(1)


def outbox(cfg: Config) -> list[email.message.EmailMessage]:
    folder = cfg.path(cfg.delivery.outbox_dir)
    if not folder.exists():
        return []
    return [email.message_from_bytes(m.as_bytes(), policy=email.policy.default) for m in mailbox.Maildir(folder, create=False)]  # type: ignore[misc]


def confirm_link(message: email.message.EmailMessage) -> str:
    """The confirmation link's path (/confirm/<token>) from a confirmation email's text part."""
    found = re.search(r"http://127\.0\.0\.1:8000(/confirm/\S+)", message.get_body(("plain",)).get_content())
    assert found, "no confirmation link in the message"
    return found.group(1)


# -- clients from other networks, and `publisher serve` as a user runs it ------------------------------------

PUBLISHER = str(Path(sys.executable).parent / "publisher")
SUBPROCESS_KEY = "signup-tests-" + "k" * 40  # long enough for any key-length rule


class _SourceAddress(HTTPAdapter):
    def __init__(self, source: str) -> None:
        self.source = source
        super().__init__()

    def init_poolmanager(self, *args: object, **kwargs: object) -> None:
        kwargs["source_address"] = (self.source, 0)
        super().init_poolmanager(*args, **kwargs)  # type: ignore[arg-type]


def client_from(source: str) -> requests.Session:
    """A client whose connections come from ``source``: any 127.x.y.z is loopback on Linux, so each /24 is a network."""
    session = requests.Session()
    session.mount("http://", _SourceAddress(source))
    return session


def sign_up(http: requests.Session, base: str, address: str, *, topics: tuple[str, ...] = (), headers: dict[str, str] | None = None) -> requests.Response:
    """What a visitor does: load the form, then send it (the CSRF token comes with the page, the cookie with the session)."""
    form = http.get(f"{base}/subscribe", timeout=10)
    return http.post(f"{base}/subscribe", data={"email": address, "topics": list(topics), "csrf": csrf_of(form.text), "website": ""},
                     headers=headers or {}, timeout=10)


@contextmanager
def publisher_serve(project: Path, env: dict[str, str] | None = None) -> Iterator[str]:
    """`publisher serve` in a subprocess, in ``project``; yields its base URL once it answers."""
    port = free_port()
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("PUBLISHER_")} | {"PUBLISHER_SECRET_KEY": SUBPROCESS_KEY} | (env or {})
    proc = subprocess.Popen([PUBLISHER, "serve", "--port", str(port)], cwd=project, env=full_env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                requests.get(f"{base}/subscribe", timeout=2)
                break
            except requests.ConnectionError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError(f"publisher serve did not start: {proc.stderr.read().decode() if proc.stderr else ''}") from None
                time.sleep(0.1)
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stderr is not None:
            proc.stderr.close()
