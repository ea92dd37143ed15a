"""Transports: where messages go. Each takes a batch of recipients of one issue variant and reports, per
recipient, sent / deferred (try again later) / failed (refused for good). None of them retries: the send
engine owns retries, backoff and the send log.

- ``outbox``: a local Maildir (tmp/ then new/, so a message appears whole or not at all);
- ``smtp``: one SMTP connection per transport (the engine runs one transport per connection);
- mail APIs: the adapters in ``publisher.delivery.api``.
"""

from __future__ import annotations

import mailbox
import smtplib
import socket
import ssl
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from ..config import Config
from .api import Prepared, Recipient, Result
from .dkim import signer_for
from .message import CompiledMessage


@dataclass(frozen=True)
class Variant:
    """One issue variant in the two forms transports need: a compiled MIME message, and its parts for APIs."""

    message: CompiledMessage
    prepared: Prepared


class Transport(Protocol):
    max_batch: int

    def send(self, variant: Variant, recipients: Sequence[Recipient]) -> list[Result]: ...

    def close(self) -> None: ...


class OutboxTransport:
    max_batch = 1000

    def __init__(self, cfg: Config) -> None:
        folder = cfg.path(cfg.delivery.outbox_dir)
        folder.parent.mkdir(parents=True, exist_ok=True)  # Maildir makes only the last level; var/ need not exist (PostgreSQL store)
        self.maildir = mailbox.Maildir(folder, create=True)
        self.signer = signer_for(cfg)

    def send(self, variant: Variant, recipients: Sequence[Recipient]) -> list[Result]:
        results = []
        for r in recipients:
            message = variant.message.for_recipient(r.subscriber_id, r.email, r.links)
            self.maildir.add(self.signer.sign(message) + message if self.signer else message)
            results.append(Result(r.subscriber_id, "sent"))
        return results

    def close(self) -> None:
        pass


class PlaintextAuthRefused(smtplib.SMTPException):
    """SMTP AUTH was about to go over an unencrypted connection without [delivery.smtp].allow_plaintext_auth."""


class SmtpTransport:
    """One connection, opened on first use and again after it drops."""

    max_batch = 1000

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.envelope_from = cfg.delivery.envelope_from or cfg.digest.from_address
        self._conn: smtplib.SMTP | None = None
        self._pipelining = False
        self.signer = signer_for(cfg)

    def __repr__(self) -> str:
        s = self.cfg.delivery.smtp
        return f"SmtpTransport({s.host}:{s.port}, {s.security})"

    def _connect(self) -> smtplib.SMTP:
        s = self.cfg.delivery.smtp
        if s.username and s.security == "none" and not s.allow_plaintext_auth:
            # load_config refuses this; a Config built another way must not leak the password either.
            raise PlaintextAuthRefused(f'not logging in as {s.username!r} over a connection without TLS (security = "none"); '
                                       'use starttls or tls, or set [delivery.smtp].allow_plaintext_auth = true')
        if s.security == "tls":
            conn: smtplib.SMTP = smtplib.SMTP_SSL(s.host, s.port, timeout=s.timeout, context=ssl.create_default_context())
        else:
            conn = smtplib.SMTP(s.host, s.port, timeout=s.timeout)
            if s.security == "starttls":
                conn.starttls(context=ssl.create_default_context())
        if s.username:
            conn.login(s.username, self.cfg.smtp_password.get())
        return conn

    def send(self, variant: Variant, recipients: Sequence[Recipient]) -> list[Result]:
        return [self._send_one(variant, r) for r in recipients]

    def _send_one(self, variant: Variant, r: Recipient) -> Result:
        s = self.cfg.delivery.smtp
        try:
            if self._conn is None:
                self._conn = self._connect()
                self._conn.ehlo_or_helo_if_needed()
                self._pipelining = self._conn.has_extn("pipelining")
            data = variant.message.for_recipient(r.subscriber_id, r.email, r.links, dot_stuffed=True)
            if self.signer:  # sign what the recipient will read (not dot-stuffed); the header itself never starts with "."
                data = self.signer.sign(variant.message.for_recipient(r.subscriber_id, r.email, r.links)) + data
            code, reply = self._transaction(self._conn, r.email, data)
            if code == 250:
                return Result(r.subscriber_id, "sent")
            if code == 421:
                self._drop()
            return _by_code(r, code, reply, "refused the message")
        except smtplib.SMTPRecipientsRefused as exc:
            code, text = next(iter(exc.recipients.values()))
            return _by_code(r, code, text, "refused the recipient")
        except smtplib.SMTPRecipientsRefused as exc:
            code, text = next(iter(exc.recipients.values()))
            return _by_code(r, code, text, "refused the recipient")
        except (smtplib.SMTPSenderRefused, smtplib.SMTPAuthenticationError) as exc:
            self._drop()  # the relay refuses us, not the subscriber: never a bounce
            return Result(r.subscriber_id, "deferred", f"SMTP server {s.host}:{s.port} refused the sender: {exc.smtp_code} {_text(exc.smtp_error)}")
        except smtplib.SMTPResponseException as exc:
            if exc.smtp_code == 421:
                self._drop()
            return _by_code(r, exc.smtp_code, exc.smtp_error, "refused the message")
        except (smtplib.SMTPException, OSError, socket.timeout) as exc:
            self._drop()  # disconnected, timed out, or never connected: a fresh connection next time
            return Result(r.subscriber_id, "deferred", f"SMTP server {s.host}:{s.port}: {type(exc).__name__}: {exc}")

    def _transaction(self, conn: smtplib.SMTP, rcpt: str, data: bytes) -> tuple[int, bytes]:
        """MAIL, RCPT, DATA, the message (already dot-stuffed, so smtplib's per-message regex pass is skipped).

        With PIPELINING (RFC 2920) the three commands go in one write and the replies are read after:
        one round trip instead of three.
        """
        if self._pipelining:
            conn.send(f"MAIL FROM:<{self.envelope_from}>\r\nRCPT TO:<{rcpt}>\r\nDATA\r\n".encode("ascii"))
            replies = [conn.getreply() for _ in range(3)]
        else:
            replies = [conn.mail(self.envelope_from)]
            replies.append(conn.rcpt(rcpt) if replies[0][0] == 250 else (503, b"no sender"))
            replies.append(conn.docmd("DATA") if replies[1][0] in (250, 251) else (503, b"no recipient"))
        (mail, mail_text), (rcpt_code, rcpt_text), (data_code, data_text) = replies
        if data_code == 354 and (mail != 250 or rcpt_code not in (250, 251)):
            conn.send(b".\r\n")  # a server that opened DATA anyway: send an empty message's end, then reset
            conn.getreply()
            data_code = 503
        if mail != 250 or rcpt_code not in (250, 251) or data_code != 354:
            conn.rset()
            if mail != 250:
                raise smtplib.SMTPSenderRefused(mail, mail_text, self.envelope_from)
            if rcpt_code not in (250, 251):
                raise smtplib.SMTPRecipientsRefused({rcpt: (rcpt_code, rcpt_text)})
            return data_code, data_text
        conn.send(data + b".\r\n")
        return conn.getreply()

    def _drop(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            except OSError:
                pass
            self._conn = None

    def close(self) -> None:
        if self._conn is not None:
            try:
                self._conn.quit()
            except (OSError, smtplib.SMTPException):
                pass
            self._conn = None


def _text(value: bytes | str) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _by_code(r: Recipient, code: int, text: bytes | str, what: str) -> Result:
    status = "failed" if 500 <= code < 600 else "deferred"
    return Result(r.subscriber_id, status, f"SMTP server {what}: {code} {_text(text)}")  # type: ignore[arg-type]


class ApiTransport:
    def __init__(self, adapter: object) -> None:
        self.adapter = adapter
        self.max_batch = getattr(adapter, "max_batch", 100)

    def send(self, variant: Variant, recipients: Sequence[Recipient]) -> list[Result]:
        return self.adapter.send_batch(variant.prepared, recipients)  # type: ignore[attr-defined]

    def close(self) -> None:
        self.adapter.close()  # type: ignore[attr-defined]


def transport_factory(cfg: Config) -> tuple[Callable[[], Transport], int]:
    """A maker of transports for the configured backend, and how many to run at once."""
    backend = cfg.delivery.backend
    if backend == "outbox":
        return (lambda: OutboxTransport(cfg)), 1
    if backend == "smtp":
        return (lambda: SmtpTransport(cfg)), cfg.delivery.smtp.connections
    return (lambda: ApiTransport(make_adapter(cfg))), 2


def make_adapter(cfg: Config) -> object:
    api, key, backend = cfg.delivery.api, cfg.api_key.get(), cfg.delivery.backend
    extra = {"base_url": api.base_url} if api.base_url else {}
    if backend == "postmark":
        from .api.postmark import PostmarkAdapter

        return PostmarkAdapter(key, message_stream=api.message_stream, timeout=api.timeout, **extra)
    if backend == "sendgrid":
        from .api.sendgrid import SendGridAdapter

        return SendGridAdapter(key, timeout=api.timeout, **extra)
    if backend == "mailgun":
        from .api.mailgun import MailgunAdapter

        return MailgunAdapter(key, domain=api.domain, timeout=api.timeout, **extra)
    from .api.resend import ResendAdapter

    return ResendAdapter(key, timeout=api.timeout, **extra)
