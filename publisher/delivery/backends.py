"""Where messages go: a local Maildir outbox (the default) or an SMTP relay."""

from __future__ import annotations

import mailbox
import smtplib
import ssl
from pathlib import Path
from typing import Protocol

from ..config import Config
from ..errors import DeliveryError


class Backend(Protocol):
    def send(self, msg: bytes, envelope_from: str, recipient: str) -> None: ...

    def close(self) -> None: ...


class OutboxBackend:
    """Each message becomes a file in a Maildir (tmp/ then new/, so it appears whole or not at all)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.maildir = mailbox.Maildir(directory, create=True)

    def send(self, msg: bytes, envelope_from: str, recipient: str) -> None:
        self.maildir.add(msg)

    def close(self) -> None:
        pass


class SmtpBackend:
    """One connection, reused for the whole run."""

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self._conn: smtplib.SMTP | None = None

    def __repr__(self) -> str:
        s = self.cfg.delivery.smtp
        return f"SmtpBackend({s.host}:{s.port}, {s.security})"

    def _connect(self) -> smtplib.SMTP:
        s = self.cfg.delivery.smtp
        try:
            if s.security == "tls":
                conn: smtplib.SMTP = smtplib.SMTP_SSL(s.host, s.port, timeout=s.timeout, context=ssl.create_default_context())
            else:
                conn = smtplib.SMTP(s.host, s.port, timeout=s.timeout)
                if s.security == "starttls":
                    conn.starttls(context=ssl.create_default_context())
            if s.username:
                conn.login(s.username, self.cfg.smtp_password.get())
        except (OSError, smtplib.SMTPException) as exc:
            raise DeliveryError(f"cannot connect to SMTP server {s.host}:{s.port} ({s.security}): {exc}. Check [delivery.smtp].") from None
        return conn

    def send(self, msg: bytes, envelope_from: str, recipient: str) -> None:
        if self._conn is None:
            self._conn = self._connect()
        try:
            self._conn.sendmail(envelope_from, [recipient], msg)
        except smtplib.SMTPException as exc:
            raise DeliveryError(f"SMTP server refused the message to {recipient}: {exc}") from None

    def close(self) -> None:
        if self._conn is not None:
            try:
                self._conn.quit()
            except (OSError, smtplib.SMTPException):
                pass
            self._conn = None


def make_backend(cfg: Config) -> Backend:
    if cfg.delivery.backend == "smtp":
        return SmtpBackend(cfg)
    return OutboxBackend(cfg.path(cfg.delivery.outbox_dir))
