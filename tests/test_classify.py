"""Issue 12, point 4: failures classified (hard / soft / sender / transient), so that a relay or an API refusing
*us* never bounces the list.

The pure functions against a table of replies, then the real parts: SmtpTransport against real SMTP servers
(aiosmtpd, or a raw socket for a refused greeting, on free ports) answering each refusal, and each API adapter
against a local server answering 401 and a per-recipient invalid-address error.
"""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from contextlib import closing, contextmanager
from dataclasses import replace
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

from publisher.config import Config, Secret, SmtpConfig
from publisher.delivery.api import Result
from publisher.delivery.api.mailgun import MailgunAdapter
from publisher.delivery.api.postmark import PostmarkAdapter
from publisher.delivery.api.resend import ResendAdapter
from publisher.delivery.api.sendgrid import SendGridAdapter
from publisher.delivery.backends import SmtpTransport, Variant
from publisher.delivery.classify import classify_http, classify_smtp, enhanced_code, postmark_error, resend_email_error
from publisher.delivery.message import CompiledMessage

from .api_support import RECIPIENTS, make_prepared, make_recipient
from .servers import free_port, recording_server

# -- the pure functions ---------------------------------------------------------------------------------

SMTP_TABLE = [
    # code, text, stage, status, kind
    # hard: the address is bad
    (550, "5.1.1 <x@example.com>: Recipient address rejected: User unknown in local recipient table", "rcpt", "failed", "hard"),
    (550, "5.1.2 <x@nowhere.invalid>: Recipient address rejected: Domain not found", "rcpt", "failed", "hard"),
    (553, "5.1.3 <x@@example.com>: bad recipient address syntax", "rcpt", "failed", "hard"),
    (551, "5.1.6 User has moved; please try <y@example.org>", "rcpt", "failed", "hard"),
    (556, "5.1.10 Recipient address has null MX", "rcpt", "failed", "hard"),
    (550, "5.2.1 The email account that you tried to reach is disabled", "rcpt", "failed", "hard"),
    (550, "5.1.1 user unknown (refused after DATA)", "data", "failed", "hard"),
    (525, "5.7.13 User account disabled", "rcpt", "failed", "hard"),
    (550, "5.5.0 Requested action not taken: mailbox unavailable", "rcpt", "failed", "hard"),
    (550, "Requested action not taken: mailbox unavailable", "rcpt", "failed", "hard"),
    (551, "User not local", "rcpt", "failed", "hard"),
    (553, "Requested action not taken: mailbox name not allowed", "rcpt", "failed", "hard"),
    (554, "delivery error: dd This user doesn't have a example.com account", "rcpt", "failed", "hard"),
    # soft: this recipient, for now
    (452, "4.2.2 Mailbox full", "rcpt", "deferred", "soft"),
    (552, "5.2.2 Mailbox full", "rcpt", "failed", "soft"),
    (552, "5.2.2 <x@example.com>: over quota", "data", "failed", "soft"),
    (552, "Requested mail action aborted: exceeded storage allocation", "rcpt", "failed", "soft"),
    (450, "4.7.1 <x@example.com>: Recipient address rejected: Greylisted, try again later", "rcpt", "deferred", "soft"),
    (451, "4.7.1 Please try again later", "rcpt", "deferred", "soft"),
    (450, "4.2.1 The user you are trying to contact is receiving mail too quickly", "rcpt", "deferred", "soft"),
    (550, "5.2.1 The user is receiving mail at a rate that prevents additional messages", "rcpt", "failed", "soft"),
    (450, "Requested mail action not taken: mailbox busy", "rcpt", "deferred", "soft"),
    (451, "Requested action aborted: local error in processing", "data", "deferred", "soft"),
    (451, "4.1.1 Recipient address verification in progress", "rcpt", "deferred", "soft"),
    # sender: the relay refuses us
    (554, "5.7.1 <x@example.com>: Relay access denied", "rcpt", "deferred", "sender"),
    (454, "4.7.1 <x@example.com>: Relay access denied", "rcpt", "deferred", "sender"),
    (554, "Relay access denied", "rcpt", "deferred", "sender"),
    (550, "relaying denied", "rcpt", "deferred", "sender"),
    (553, "sorry, that domain isn't in my list of allowed rcpthosts (#5.7.1)", "rcpt", "deferred", "sender"),
    (550, "5.7.1 Unable to relay", "rcpt", "deferred", "sender"),
    (550, "5.7.0 Message rejected by policy", "data", "deferred", "sender"),
    (550, "5.7.26 Unauthenticated email from example.org is not accepted due to domain's DMARC policy", "data", "deferred", "sender"),
    (550, "5.7.27 Sender address has null MX", "mail", "deferred", "sender"),
    (554, "5.7.1 Service unavailable; client host [192.0.2.1] blocked using zen.spamhaus.org", "rcpt", "deferred", "sender"),
    (554, "Transaction failed", "data", "deferred", "sender"),
    (550, "Message rejected as spam", "data", "deferred", "sender"),
    (554, "5.6.0 Message content rejected", "data", "deferred", "sender"),
    (553, "5.1.8 <news@example.org>: Sender address rejected: Domain not found", "rcpt", "deferred", "sender"),
    (450, "4.1.8 <news@example.org>: Sender address rejected: Domain not found", "rcpt", "deferred", "sender"),
    (450, "4.7.1 Client host rejected: cannot find your reverse hostname, [192.0.2.1]", "rcpt", "deferred", "sender"),
    (535, "5.7.8 Authentication credentials invalid", "connect", "deferred", "sender"),
    (534, "5.7.9 Authentication mechanism is too weak", "connect", "deferred", "sender"),
    (530, "5.7.0 Authentication required", "mail", "deferred", "sender"),
    (530, "5.7.0 Must issue a STARTTLS command first", "rcpt", "deferred", "sender"),
    (550, "5.1.7 Invalid address", "mail", "deferred", "sender"),
    (553, "5.1.8 Sender domain does not exist", "mail", "deferred", "sender"),
    (550, "5.1.1 anything at MAIL is about our sender address", "mail", "deferred", "sender"),
    (554, "mail.example.org ESMTP not accepting messages", "connect", "deferred", "sender"),
    (501, "5.5.4 Syntax error in parameters", "rcpt", "deferred", "sender"),
    (500, "Command unrecognized", "data", "deferred", "sender"),
    # transient: nobody's verdict
    (421, "4.7.0 mail.example.org Service not available, closing transmission channel", "rcpt", "deferred", ""),
    (421, "Too many connections", "connect", "deferred", ""),
    (421, "closing", "data", "deferred", ""),
    (451, "4.3.0 temporary failure, try again later", "data", "deferred", ""),
    (452, "4.3.1 Insufficient system storage", "mail", "deferred", ""),
    (451, "4.4.1 No answer from host", "rcpt", "deferred", ""),
    (452, "4.5.3 Too many recipients", "rcpt", "deferred", ""),
    (454, "4.7.0 Temporary authentication failure", "connect", "deferred", ""),
    (451, "4.7.1 Greylisted, please try again later", "mail", "deferred", ""),
    (-1, "connection unexpectedly closed", "data", "deferred", ""),
    (250, "2.0.0 OK queued", "data", "sent", ""),
]


@pytest.mark.parametrize("code, text, stage, status, kind", SMTP_TABLE)
def test_smtp_replies_are_classified(code: int, text: str, stage: Any, status: str, kind: str) -> None:
    assert classify_smtp(code, text, stage) == (status, kind)
    assert classify_smtp(code, text.encode(), stage) == (status, kind)  # smtplib hands over bytes


@pytest.mark.parametrize("stage", ["connect", "mail", "rcpt", "data"])
@pytest.mark.parametrize("text", ["5.7.1 <a@b.example>: Relay access denied", "Relay access denied", "5.7.1 Relaying denied"])
def test_relay_access_denied_is_never_a_bounce_at_any_stage(stage: Any, text: str) -> None:
    for code in (550, 553, 554):
        assert classify_smtp(code, text, stage) == ("deferred", "sender")


def test_no_5xx_before_rcpt_is_ever_failed() -> None:
    """Whatever a relay says at the greeting, AUTH or MAIL FROM, it says about us."""
    for code in range(500, 600):
        for text in ("5.1.1 user unknown", "5.2.2 mailbox full", "mailbox unavailable", ""):
            for stage in ("connect", "mail"):
                assert classify_smtp(code, text, stage)[0] == "deferred", (code, text, stage)


@pytest.mark.parametrize(
    "text, code",
    [
        ("5.1.1 <a@b>: user unknown", (5, 1, 1)),
        (b"4.7.1 try later", (4, 7, 1)),
        ("5.1.10 null MX", (5, 1, 10)),
        ("  5.7.26 DMARC", (5, 7, 26)),
        ("sorry, no mailbox here by that name (#5.1.1)", (5, 1, 1)),
        ("Relay access denied", None),
        ("5.1 not a code", None),
        ("5.1.1.1 not a code either", None),
        ("version 5.1.1 of the software", None),  # not at the start
    ],
)
def test_the_enhanced_code_is_read_from_the_start_of_the_text(text: str | bytes, code: tuple[int, int, int] | None) -> None:
    assert enhanced_code(text) == code


@pytest.mark.parametrize(
    "status, expected",
    [
        (200, ("sent", "")), (202, ("sent", "")),
        (401, ("deferred", "sender")), (403, ("deferred", "sender")), (400, ("deferred", "sender")),
        (404, ("deferred", "sender")), (413, ("deferred", "sender")), (422, ("deferred", "sender")),
        (408, ("deferred", "")), (429, ("deferred", "")), (500, ("deferred", "")), (502, ("deferred", "")), (503, ("deferred", "")),
    ],
)
def test_http_statuses_are_classified(status: int, expected: tuple[str, str]) -> None:
    assert classify_http(status) == expected


@pytest.mark.parametrize(
    "code, message, expected",
    [
        (0, "OK", ("sent", "")),
        (406, "You tried to send to recipient(s) that have been marked as inactive.", ("failed", "hard")),
        (300, "Invalid 'To' address: 'bob@'.", ("failed", "hard")),
        (300, "Error parsing 'To': Illegal email address 'bob'. It must contain the '@' symbol.", ("failed", "hard")),
        (300, "Invalid 'From' address: 'news@example.org' is not a verified sender signature.", ("deferred", "sender")),
        (300, "Provide either email TextBody or HtmlBody or both.", ("deferred", "sender")),
        (10, "Bad or missing Server API token.", ("deferred", "sender")),
        (400, "Sender signature not found.", ("deferred", "sender")),
        (401, "Sender signature not confirmed.", ("deferred", "sender")),
        (405, "Not allowed to send: you have run out of credits.", ("deferred", "sender")),
        (412, "Your account is pending approval.", ("deferred", "sender")),
        (413, "Account may not send.", ("deferred", "sender")),
        (402, "Received invalid JSON input.", ("deferred", "sender")),
        (100, "Maintenance.", ("deferred", "")),
        (429, "Rate limit exceeded.", ("deferred", "")),
        (None, "", ("deferred", "sender")),
    ],
)
def test_postmark_error_codes_are_classified(code: int | None, message: str, expected: tuple[str, str]) -> None:
    assert postmark_error(code, message) == expected


@pytest.mark.parametrize(
    "message, expected",
    [
        ("Invalid `to` field. The email address needs to follow the `email@example.com` format.", ("failed", "hard")),
        ("Invalid `from` field. The email address needs to follow the `email@example.com` format.", ("deferred", "sender")),
        ("The example.org domain is not verified. Please, add and verify your domain.", ("deferred", "sender")),
    ],
)
def test_resend_per_email_errors_are_classified(message: str, expected: tuple[str, str]) -> None:
    assert resend_email_error(message) == expected


# -- SmtpTransport against real SMTP servers --------------------------------------------------------------

PASSWORD = "relay-pass-Do-Not-Log-42"
ADDR = "ada@example.com"


class Refusing:
    """An aiosmtpd handler that answers ``reply`` at ``stage`` ("mail", "rcpt" or "data"), and 250 elsewhere."""

    def __init__(self, stage: str, reply: str) -> None:
        self.stage, self.reply = stage, reply
        self.delivered: list[str] = []

    async def handle_MAIL(self, server: Any, session: Any, envelope: Any, address: str, options: list[str]) -> str:
        if self.stage == "mail":
            return self.reply
        envelope.mail_from = address
        return "250 OK"

    async def handle_RCPT(self, server: Any, session: Any, envelope: Any, address: str, options: list[str]) -> str:
        if self.stage == "rcpt":
            return self.reply
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        if self.stage == "data":
            return self.reply
        self.delivered += envelope.rcpt_tos
        return "250 OK: queued"


@contextmanager
def smtp_server(handler: Any, **kwargs: Any) -> Iterator[int]:
    port = free_port()
    controller = Controller(handler, hostname="127.0.0.1", port=port, **kwargs)
    controller.start()
    try:
        yield port
    finally:
        controller.stop()


@contextmanager
def greeting_server(greeting: bytes) -> Iterator[int]:
    """A raw TCP server that answers every connection with ``greeting`` (e.g. a 554 refusal) and closes it."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    listener.settimeout(0.2)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                continue
            with conn:
                conn.sendall(greeting)
                try:
                    conn.settimeout(2)
                    conn.recv(1024)  # the client's QUIT, if any
                except OSError:
                    pass

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1]
    finally:
        stop.set()
        thread.join(5)
        listener.close()


def transport(cfg: Config, port: int, **smtp: Any) -> SmtpTransport:
    settings = SmtpConfig(host="127.0.0.1", port=port, security="none", timeout=5, **smtp)
    return SmtpTransport(replace(cfg, delivery=replace(cfg.delivery, backend="smtp", smtp=settings), smtp_password=Secret(PASSWORD)))


def variant() -> Variant:
    message = CompiledMessage("2026-W48", (b"Subject: digest\r\nTo: ", b"\r\n\r\nHello.\r\n"), (("header", "to"),), "example.org")
    return Variant(message, make_prepared())


def send_one(cfg: Config, port: int, **smtp: Any) -> Result:
    t = transport(cfg, port, **smtp)
    try:
        [result] = t.send(variant(), [make_recipient(1, ADDR)])
    finally:
        t.close()
    return result


@pytest.mark.parametrize(
    "stage, reply, status, kind",
    [
        ("rcpt", f"554 5.7.1 <{ADDR}>: Relay access denied", "deferred", "sender"),
        ("rcpt", f"550 5.1.1 <{ADDR}>: Recipient address rejected: User unknown in local recipient table", "failed", "hard"),
        ("rcpt", "452 4.2.2 Mailbox full", "deferred", "soft"),
        ("rcpt", "552 5.2.2 Mailbox full", "failed", "soft"),
        ("rcpt", "450 4.7.1 Greylisted, please try again later", "deferred", "soft"),
        ("data", "552 5.2.2 Over quota", "failed", "soft"),
        ("data", "554 5.7.1 Message rejected by policy", "deferred", "sender"),
        ("data", "451 4.3.0 temporary failure, try again later", "deferred", ""),
        ("mail", "530 5.7.0 Authentication required", "deferred", "sender"),
        ("mail", "553 5.1.8 Sender address rejected: Domain not found", "deferred", "sender"),
    ],
)
def test_smtp_transport_classifies_a_real_relays_refusal(cfg: Config, stage: str, reply: str, status: str, kind: str) -> None:
    handler = Refusing(stage, reply)
    with smtp_server(handler) as port:
        result = send_one(cfg, port)
    assert (result.status, result.kind) == (status, kind), result
    assert reply in result.error  # the relay's own words
    assert handler.delivered == []


def test_the_relay_denied_case_from_the_issue(cfg: Config) -> None:
    """A relay refusing everyone with 554 5.7.1: every recipient deferred as the sender's problem, none failed."""
    handler = Refusing("rcpt", "554 5.7.1 Relay access denied")
    recipients = [make_recipient(i, f"reader{i}@example.com") for i in range(30)]
    with smtp_server(handler) as port:
        t = transport(cfg, port)
        try:
            results = t.send(variant(), recipients)
        finally:
            t.close()
    assert {(r.status, r.kind) for r in results} == {("deferred", "sender")}
    assert results[0].error == "SMTP server refused the recipient: 554 5.7.1 Relay access denied"


def test_a_good_relay_sends(cfg: Config) -> None:
    handler = Refusing("none", "")
    with smtp_server(handler) as port:
        result = send_one(cfg, port)
    assert result == Result(1, "sent")
    assert handler.delivered == [ADDR]


class Logins:
    def __init__(self, accept: bool) -> None:
        self.accept = accept
        self.tried: list[str] = []

    def __call__(self, server: Any, session: Any, envelope: Any, mechanism: str, data: Any) -> AuthResult:
        if isinstance(data, LoginPassword):
            self.tried.append(data.login.decode())
        return AuthResult(success=self.accept, handled=False)  # handled=False: aiosmtpd answers 535 5.7.8 itself

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        return "250 OK"


def test_smtp_auth_refused_with_535_is_the_senders_problem_and_keeps_the_password_out(cfg: Config) -> None:
    logins = Logins(accept=False)
    with smtp_server(logins, authenticator=logins, auth_require_tls=False) as port:
        result = send_one(cfg, port, username="relay-user", allow_plaintext_auth=True)
    assert logins.tried and set(logins.tried) == {"relay-user"}, result  # it really tried (PLAIN, then LOGIN), and the relay said no
    assert (result.status, result.kind) == ("deferred", "sender"), result
    assert "refused the login: 535 5.7.8 Authentication credentials invalid" in result.error
    assert PASSWORD not in result.error


def test_a_relay_without_auth_for_a_configured_login_is_the_senders_problem(cfg: Config) -> None:
    with smtp_server(Refusing("none", "")) as port:  # offers no AUTH at all
        result = send_one(cfg, port, username="relay-user", allow_plaintext_auth=True)
    assert (result.status, result.kind) == ("deferred", "sender"), result
    assert "SMTPNotSupportedError" in result.error and PASSWORD not in result.error


def test_a_plaintext_login_refused_by_us_is_the_senders_problem(cfg: Config) -> None:
    with smtp_server(Refusing("none", "")) as port:
        result = send_one(cfg, port, username="relay-user")  # security "none" without allow_plaintext_auth
    assert (result.status, result.kind) == ("deferred", "sender"), result
    assert "allow_plaintext_auth" in result.error


def test_a_relay_refusing_the_connection_with_554_is_the_senders_problem(cfg: Config) -> None:
    with greeting_server(b"554 5.7.1 mail.example.org: no SMTP service for you\r\n") as port:
        result = send_one(cfg, port)
    assert (result.status, result.kind) == ("deferred", "sender"), result
    assert "refused the connection: 554 5.7.1 mail.example.org: no SMTP service for you" in result.error


def test_a_421_greeting_and_an_unreachable_relay_are_transient(cfg: Config) -> None:
    with greeting_server(b"421 4.3.2 Service not available, try later\r\n") as port:
        busy = send_one(cfg, port)
    assert (busy.status, busy.kind) == ("deferred", "")
    gone = send_one(cfg, free_port())
    assert (gone.status, gone.kind) == ("deferred", "") and "ConnectionRefusedError" in gone.error


# -- each API adapter: 401, and an invalid address ----------------------------------------------------------

KEY = "test-Key_5ecret-0123456789"


def _json(status: int, obj: Any) -> Any:
    return lambda method, path, body: (status, {"Content-Type": "application/json"}, json.dumps(obj).encode())


def _sendgrid_invalid(method: str, path: str, body: bytes) -> tuple[int, dict[str, str], bytes]:
    pers = json.loads(body)["personalizations"]
    errors = [{"field": f"personalizations.{i}.to.0.email", "message": "Does not contain a valid address."}
              for i, p in enumerate(pers) if "@" not in p["to"][0]["email"]]
    return (400, {}, json.dumps({"errors": errors}).encode()) if errors else (202, {}, b"")


def _mailgun_invalid(method: str, path: str, body: bytes) -> tuple[int, dict[str, str], bytes]:
    from urllib.parse import parse_qsl

    to = [v for k, v in parse_qsl(body.decode()) if k == "to"]
    if any("@" not in t for t in to):
        return 400, {}, json.dumps({"message": "'to' parameter is not a valid address. please check documentation"}).encode()
    return 200, {}, json.dumps({"id": "<x@mg.example.org>", "message": "Queued. Thank you."}).encode()


ADAPTERS: dict[str, Any] = {
    "postmark": lambda url: PostmarkAdapter(KEY, base_url=url),
    "sendgrid": lambda url: SendGridAdapter(KEY, base_url=url),
    "mailgun": lambda url: MailgunAdapter(KEY, domain="mg.example.org", base_url=url),
    "resend": lambda url: ResendAdapter(KEY, base_url=url),
}

UNAUTHORISED = {
    "postmark": _json(401, {"ErrorCode": 10, "Message": "Bad or missing Server API token."}),
    "sendgrid": _json(401, {"errors": [{"field": None, "message": "The provided authorization grant is invalid, expired, or revoked"}]}),
    "mailgun": lambda m, p, b: (401, {}, b"Forbidden"),
    "resend": _json(401, {"statusCode": 401, "name": "missing_api_key", "message": "Missing API key in the authorization header."}),
}

BAD = make_recipient(2, "bob-at-example.net")
BATCH = [RECIPIENTS[0], BAD, RECIPIENTS[2]]

INVALID = {
    "postmark": _json(200, [
        {"ErrorCode": 0, "Message": "OK", "MessageID": "a", "To": RECIPIENTS[0].email},
        {"ErrorCode": 300, "Message": f"Error parsing 'To': Illegal email address '{BAD.email}'. It must contain the '@' symbol."},
        {"ErrorCode": 0, "Message": "OK", "MessageID": "c", "To": RECIPIENTS[2].email},
    ]),
    "sendgrid": _sendgrid_invalid,
    "mailgun": _mailgun_invalid,
    "resend": None,  # set per request: the index depends on the adapter's order
}


def _resend_invalid(method: str, path: str, body: bytes) -> tuple[int, dict[str, str], bytes]:
    emails = json.loads(body)
    errors = [{"index": i, "message": "Invalid `to` field. The email address needs to follow the `email@example.com` format."}
              for i, e in enumerate(emails) if "@" not in e["to"][0]]
    data = [{"id": f"id-{i}"} for i, e in enumerate(emails) if "@" in e["to"][0]]
    return 200, {"Content-Type": "application/json"}, json.dumps({"data": data, "errors": errors}).encode()


INVALID["resend"] = _resend_invalid


@pytest.mark.parametrize("name", sorted(ADAPTERS))
def test_an_api_refusing_the_key_is_the_senders_problem(name: str) -> None:
    with recording_server(UNAUTHORISED[name]) as (url, _), closing(ADAPTERS[name](url)) as adapter:
        results = adapter.send_batch(make_prepared(), BATCH)
    assert len(results) == 3
    assert {(r.status, r.kind) for r in results} == {("deferred", "sender")}
    assert all(KEY not in r.error for r in results)


@pytest.mark.parametrize("name", sorted(ADAPTERS))
def test_an_api_refusing_one_invalid_address_is_a_hard_bounce_for_it_alone(name: str) -> None:
    with recording_server(INVALID[name]) as (url, _), closing(ADAPTERS[name](url)) as adapter:
        results = {r.subscriber_id: r for r in adapter.send_batch(make_prepared(), BATCH)}
    assert (results[2].status, results[2].kind) == ("failed", "hard"), results[2]
    assert results[1] == Result(1, "sent") and results[3] == Result(3, "sent")


@pytest.mark.parametrize("name", sorted(ADAPTERS))
def test_api_server_errors_are_transient(name: str) -> None:
    with recording_server(lambda m, p, b: (503, {}, b"upstream unavailable")) as (url, _), closing(ADAPTERS[name](url)) as adapter:
        results = adapter.send_batch(make_prepared(), BATCH)
    assert {(r.status, r.kind) for r in results} == {("deferred", "")}


def test_a_sendgrid_refusal_of_a_personalizations_header_is_ours_not_the_address() -> None:
    error = {"errors": [{"field": "personalizations.1.headers", "message": "Invalid type. Expected: object, given: string."}]}
    with recording_server(_json(400, error)) as (url, reqs), closing(ADAPTERS["sendgrid"](url)) as adapter:
        results = adapter.send_batch(make_prepared(), RECIPIENTS)
    assert {(r.status, r.kind) for r in results} == {("deferred", "sender")}
    assert len(reqs) == 1  # the same request would be refused the same way: no bisection


def test_a_mailgun_400_we_do_not_recognise_never_fails_anyone() -> None:
    """Bisected down to lone recipients, an unknown refusal is deferred (sender), not a bounce."""
    with recording_server(_json(400, {"message": "Something unexpected"})) as (url, _), closing(ADAPTERS["mailgun"](url)) as adapter:
        results = adapter.send_batch(make_prepared(), RECIPIENTS)
    assert {r.status for r in results} == {"deferred"} and len(results) == 3


def test_a_postmark_422_naming_an_address_of_several_fails_nobody_on_a_guess() -> None:
    body = {"ErrorCode": 406, "Message": "You tried to send to recipient(s) that have been marked as inactive."}
    with recording_server(_json(422, body)) as (url, _), closing(ADAPTERS["postmark"](url)) as adapter:
        several = adapter.send_batch(make_prepared(), RECIPIENTS)
        [alone] = adapter.send_batch(make_prepared(), RECIPIENTS[:1])
    assert {r.status for r in several} == {"deferred"}
    assert (alone.status, alone.kind) == ("failed", "hard")
