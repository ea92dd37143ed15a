"""Transports: where messages go. Each takes a batch of recipients of one issue variant and reports, per
recipient, sent / deferred (try again later) / failed (refused for good). None of them retries: the send
engine owns retries, backoff and the send log.

- ``outbox``: a local Maildir (tmp/ then new/, so a message appears whole or not at all);
- ``smtp``: one SMTP connection per transport (the engine runs one transport per connection);
- mail APIs: the adapters in ``publisher.delivery.api``.
"""

from __future__ import annotations

import base64
import mailbox
import smtplib
import socket
import ssl
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from ..config import Config
from .api import Prepared, Recipient, Result
from .classify import Stage, classify_smtp
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
            message = variant.message.for_recipient(r.message_id, r.email, r.links)
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
        try:
            if s.security == "starttls":
                conn.starttls(context=ssl.create_default_context())
            if s.username:
                conn.login(s.username, self.cfg.smtp_password.get())
            conn.ehlo_or_helo_if_needed()
        except BaseException:
            conn.close()  # a refused STARTTLS or login: the socket is not left open
            raise
        return conn

    def send(self, variant: Variant, recipients: Sequence[Recipient]) -> list[Result]:
        return [self._send_one(variant, r) for r in recipients]

    def _send_one(self, variant: Variant, r: Recipient) -> Result:
        """One message: MAIL, RCPT, DATA, classified by :func:`publisher.delivery.classify.classify_smtp`.

        A refusal before RCPT (the greeting, STARTTLS, AUTH, MAIL FROM) is the relay refusing *us*: it is
        never a failed recipient, whatever its code. Only a RCPT or DATA reply can speak about the address.
        """
        if self._conn is None:
            refused = self._open(r)
            if refused is not None:
                return refused
        assert self._conn is not None
        try:
            data = variant.message.for_recipient(r.message_id, r.email, r.links, dot_stuffed=True)
            if self.signer:  # sign what the recipient will read (not dot-stuffed); the header itself never starts with "."
                data = self.signer.sign(variant.message.for_recipient(r.message_id, r.email, r.links)) + data
            code, reply = self._transaction(self._conn, r.email, data)
            if code == 250:
                return Result(r.subscriber_id, "sent")
            if code == 421:
                self._drop()
            return self._by_code(r, code, reply, "refused the message", "data")
        except smtplib.SMTPRecipientsRefused as exc:
            code, text = next(iter(exc.recipients.values()))
            if code == 421:
                self._drop()
            return self._by_code(r, code, text, "refused the recipient", "rcpt")
        except smtplib.SMTPSenderRefused as exc:
            self._drop()  # the relay refuses us, not the subscriber: never a bounce
            return self._by_code(r, exc.smtp_code, exc.smtp_error, f"{self._where} refused the sender", "mail")
        except smtplib.SMTPResponseException as exc:
            if exc.smtp_code == 421:
                self._drop()
            return self._by_code(r, exc.smtp_code, exc.smtp_error, "refused the message", "data")
        except (smtplib.SMTPException, OSError, socket.timeout) as exc:
            self._drop()  # disconnected or timed out: a fresh connection next time
            return Result(r.subscriber_id, "deferred", self._scrub(f"SMTP server {self._where}: {type(exc).__name__}: {exc}"))

    def _open(self, r: Recipient) -> Result | None:
        """Connect (TLS, AUTH, EHLO); None when connected, else ``r``'s Result saying why not (never failed)."""
        try:
            self._conn = self._connect()
            self._pipelining = self._conn.has_extn("pipelining")
            return None
        except smtplib.SMTPAuthenticationError as exc:  # 535 5.7.8 credentials invalid, 534, 538; 454 4.7.0 is transient
            return self._by_code(r, exc.smtp_code, exc.smtp_error, f"{self._where} refused the login", "connect")
        except smtplib.SMTPServerDisconnected as exc:
            return Result(r.subscriber_id, "deferred", self._scrub(f"SMTP server {self._where}: {type(exc).__name__}: {exc}"))
        except smtplib.SMTPResponseException as exc:  # a 554 greeting, a refused EHLO or STARTTLS
            return self._by_code(r, exc.smtp_code, exc.smtp_error, f"{self._where} refused the connection", "connect")
        except (smtplib.SMTPException, ssl.SSLCertVerificationError) as exc:
            # PlaintextAuthRefused, AUTH or STARTTLS not offered, no common AUTH mechanism, a certificate that
            # does not match the host: configuration, the operator's to fix; the same every time.
            error = self._scrub(f"SMTP server {self._where}: {type(exc).__name__}: {exc}")
            return Result(r.subscriber_id, "deferred", error, kind="sender")
        except (OSError, socket.timeout) as exc:  # refused, unreachable, timed out, reset: retry
            return Result(r.subscriber_id, "deferred", self._scrub(f"SMTP server {self._where}: {type(exc).__name__}: {exc}"))

    @property
    def _where(self) -> str:
        s = self.cfg.delivery.smtp
        return f"{s.host}:{s.port}"

    def _by_code(self, r: Recipient, code: int, text: bytes | str, what: str, stage: Stage) -> Result:
        """``r``'s Result for a reply: status and kind from the code, the text and the stage; the relay's own words."""
        status, kind = classify_smtp(code, text, stage)
        return Result(r.subscriber_id, status, self._scrub(f"SMTP server {what}: {code} {_text(text)}"), kind=kind)

    def _scrub(self, text: str) -> str:
        """The text without the SMTP password, as it is and as AUTH PLAIN / LOGIN carry it, should a relay echo it."""
        password = self.cfg.smtp_password.get()
        if not password:
            return text
        user = self.cfg.delivery.smtp.username
        for secret in (f"\0{user}\0{password}", password):
            for form in (base64.b64encode(secret.encode()).decode("ascii"), secret):
                text = text.replace(form, "[redacted]")
        return text

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
    """A reply's text on one line (smtplib joins a multi-line reply with newlines)."""
    text = value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
    return " ".join(text.split())


class ApiTransport:
    batches = True  # the engine hands it a request's worth of recipients at once (SMTP and the outbox: one each)

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
