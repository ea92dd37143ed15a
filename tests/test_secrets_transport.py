"""Issue 11, point 8: a guessable signing key is refused, and the SMTP password never crosses the wire unencrypted.

Through the real `publisher` command (a subprocess, as an operator runs it) and a real SMTP server (aiosmtpd) that
records every login attempt.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

from publisher.config import MAKE_KEY, WeakOldKeyWarning, load_config
from subscribers import add_subscriber, make_token, read_token

from .conftest import TEST_SECRET_KEY
from .servers import free_port
from .test_pipeline import publisher_exe

SMTP_USER, SMTP_PASSWORD = "relay-user", "relay-password-do-not-leak"


def publisher(project: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """The real command in the project directory, with only the PUBLISHER_* variables given here."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("PUBLISHER_")}
    return subprocess.run([*publisher_exe(), *args], cwd=project, env=base | env, capture_output=True, text=True, timeout=120)


def assert_clear_error(proc: subprocess.CompletedProcess[str], code: int, *needles: str) -> None:
    assert proc.returncode == code, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, proc.stderr
    for needle in needles:
        assert needle in errors[0], (needle, errors[0])


# -- the signing key ------------------------------------------------------------------------------


@pytest.mark.parametrize("key", ["test-secret-key", "x" * 31, "é" * 15 + "x"], ids=["the-old-test-key", "31-bytes", "31-bytes-utf8"])
def test_a_short_secret_key_is_refused_with_how_to_make_one(project: Path, key: str) -> None:
    proc = publisher(project, "status", PUBLISHER_SECRET_KEY=key)
    assert_clear_error(proc, 2, "PUBLISHER_SECRET_KEY", "at least 32 bytes", MAKE_KEY)
    assert key not in proc.stdout + proc.stderr  # the error names the variable, never its value
    assert not (project / "var" / "publisher.db").exists()  # refused before anything was opened


@pytest.mark.parametrize("key", ["a" * 40, " " * 40, "ab" * 20, "abcdefg" * 6], ids=["one-letter", "spaces", "two-letters", "seven-letters"])
def test_a_long_but_guessable_secret_key_is_refused(project: Path, key: str) -> None:
    proc = publisher(project, "status", PUBLISHER_SECRET_KEY=key)
    assert_clear_error(proc, 2, "PUBLISHER_SECRET_KEY", "guessable", MAKE_KEY)
    assert not (project / "var" / "publisher.db").exists()


@pytest.mark.parametrize("key", ["abcdefgh" * 4, "éàüöçñßø" * 2], ids=["32-ascii", "32-bytes-utf8"])
def test_a_32_byte_secret_key_is_accepted(project: Path, key: str) -> None:
    proc = publisher(project, "status", PUBLISHER_SECRET_KEY=key)
    assert proc.returncode == 0, proc.stderr
    assert "scheduler: not running" in proc.stdout and "warning" not in proc.stderr


def test_the_generated_development_key_is_long_enough_and_a_short_key_file_is_refused(project: Path) -> None:
    proc = publisher(project, "status")  # no key at all: a development key is made, with a warning
    assert proc.returncode == 0, proc.stderr
    assert "warning: PUBLISHER_SECRET_KEY is not set" in proc.stderr
    key_file = project / "var" / "secret_key"
    assert len(key_file.read_text(encoding="ascii").strip().encode()) >= 32
    assert publisher(project, "status").returncode == 0  # and it is read back as good

    key_file.write_text("only-twenty-chars-xx\n", encoding="ascii")  # e.g. written by hand
    assert_clear_error(publisher(project, "status"), 2, str(key_file), "32 bytes", "delete the file")
    key_file.write_bytes(b"\xff\xfe" * 30)  # not even text
    assert_clear_error(publisher(project, "status"), 2, str(key_file), "delete the file")


def test_a_short_old_key_still_opens_its_links_but_is_warned_about(project: Path) -> None:
    short_old, long_old = "old-short-key", "an-older-but-long-enough-signing-key-00"
    env = {"PUBLISHER_SECRET_KEY": TEST_SECRET_KEY, "PUBLISHER_SECRET_KEY_OLD": f"{short_old},{long_old}"}
    proc = publisher(project, "status", **env)
    assert proc.returncode == 0, proc.stderr
    assert "warning: PUBLISHER_SECRET_KEY_OLD entry 1 of 2 is 13 bytes long" in proc.stderr
    assert "entry 2" not in proc.stderr and short_old not in proc.stderr and long_old not in proc.stderr

    # Refusing it would break every unsubscribe link already mailed with it: those still work.
    with pytest.warns(WeakOldKeyWarning):
        cfg = load_config(project / "config.toml", env=env)
    from publisher.store import open_store

    store = open_store(cfg.store_url)
    try:
        sub, _ = add_subscriber(store, "reader@example.org", datetime.now(timezone.utc), confirmed=True)
        for key in (short_old, long_old, TEST_SECRET_KEY):
            assert read_token(cfg.verification_keys, "unsubscribe", make_token(key, "unsubscribe", sub.id)) == sub.id
        forged = make_token("never-configured-key-0123456789abc", "unsubscribe", sub.id)
        assert read_token(cfg.verification_keys, "unsubscribe", forged) is None
    finally:
        store.close()


# -- SMTP AUTH never in the clear -----------------------------------------------------------------


class LoginRecorder:
    """An SMTP relay that offers AUTH without TLS (as a careless or hostile relay would) and records every login."""

    def __init__(self) -> None:
        self.logins: list[tuple[str, str]] = []
        self.delivered: list[str] = []

    def authenticate(self, server: Any, session: Any, envelope: Any, mechanism: str, data: Any) -> AuthResult:
        if isinstance(data, LoginPassword):
            self.logins.append((data.login.decode(), data.password.decode()))
        return AuthResult(success=True)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.delivered += envelope.rcpt_tos
        return "250 OK"


@pytest.fixture
def plaintext_relay() -> Iterator[tuple[LoginRecorder, int]]:
    recorder = LoginRecorder()
    port = free_port()
    controller = Controller(recorder, hostname="127.0.0.1", port=port, authenticator=recorder.authenticate, auth_require_tls=False)
    controller.start()
    try:
        yield recorder, port
    finally:
        controller.stop()


def smtp_env(port: int, **extra: str) -> dict[str, str]:
    return {"PUBLISHER_SECRET_KEY": TEST_SECRET_KEY, "PUBLISHER_DELIVERY__BACKEND": "smtp", "PUBLISHER_DELIVERY__SMTP__HOST": "127.0.0.1",
            "PUBLISHER_DELIVERY__SMTP__PORT": str(port), "PUBLISHER_DELIVERY__SMTP__SECURITY": "none", **extra}


def test_smtp_login_without_tls_is_refused_at_load_time(project: Path, plaintext_relay: tuple[LoginRecorder, int]) -> None:
    recorder, port = plaintext_relay
    env = smtp_env(port, PUBLISHER_DELIVERY__SMTP__USERNAME=SMTP_USER, PUBLISHER_SMTP_PASSWORD=SMTP_PASSWORD)
    for argv in (["run", "--once", "--force-digest"], ["digest", "send", "--no-progress"], ["status"]):
        proc = publisher(project, *argv, **env)
        assert_clear_error(proc, 2, "[delivery.smtp.security]", 'security = "none"', "[delivery.smtp].allow_plaintext_auth = true")
        assert SMTP_PASSWORD not in proc.stdout + proc.stderr
    assert recorder.logins == [] and recorder.delivered == []  # the password never left; nothing was sent

    # Everything else still works: the same relay without a login, and with the login once it is asked for by name.
    proc = publisher(project, "run", "--once", **smtp_env(port))
    assert proc.returncode == 0, proc.stderr
    assert "3 sent" in proc.stdout and recorder.logins == []
    allowed = {**env, "PUBLISHER_DELIVERY__SMTP__ALLOW_PLAINTEXT_AUTH": "true"}
    proc = publisher(project, "digest", "send", "--test-to", "editor@example.com", **allowed)
    assert proc.returncode == 0, proc.stderr
    assert recorder.logins == [(SMTP_USER, SMTP_PASSWORD)]
    assert sorted(recorder.delivered) == ["analyst@example.com", "editor@example.com", "editor@example.com", "reader@example.com"]


def test_the_transport_refuses_a_plaintext_login_even_from_a_config_built_in_code(project: Path,
                                                                                  plaintext_relay: tuple[LoginRecorder, int]) -> None:
    """Defence in depth: dataclasses.replace skips load_config's check; SmtpTransport._connect checks again."""
    from publisher.delivery.send import send_test
    from publisher.pipeline import run_ingest
    from publisher.store import open_store

    recorder, port = plaintext_relay
    cfg = load_config(project / "config.toml", env={"PUBLISHER_SECRET_KEY": TEST_SECRET_KEY, "PUBLISHER_SMTP_PASSWORD": SMTP_PASSWORD})
    smtp = replace(cfg.delivery.smtp, host="127.0.0.1", port=port, security="none", username=SMTP_USER)
    unsafe = replace(cfg, delivery=replace(cfg.delivery, backend="smtp", smtp=smtp))
    store = open_store(cfg.store_url)
    try:
        run_ingest(cfg, store, datetime.now(timezone.utc))
        result = send_test(unsafe, store, datetime.now(timezone.utc), "editor@example.com")
        assert result.status == "deferred"  # not sent, not a bounce: the next run, with the config fixed, sends it
        assert "without TLS" in result.error and "allow_plaintext_auth" in result.error and SMTP_PASSWORD not in result.error
        assert recorder.logins == [] and recorder.delivered == []

        allowed = replace(unsafe, delivery=replace(unsafe.delivery, smtp=replace(smtp, allow_plaintext_auth=True)))
        assert send_test(allowed, store, datetime.now(timezone.utc), "editor@example.com").status == "sent"
        assert recorder.logins == [(SMTP_USER, SMTP_PASSWORD)] and recorder.delivered == ["editor@example.com"]
    finally:
        store.close()
