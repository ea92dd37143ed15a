"""Whose problem a refusal is: the pure classification of SMTP replies and mail-API answers.

Every transport reports a :class:`~publisher.delivery.api.Result` with a ``status`` and a ``kind``; this
module decides both, from the reply alone, without I/O, so that the send engine can act on them:

=========  ==========================================================================================
kind       meaning, and what the engine does
=========  ==========================================================================================
``hard``   the address is bad (no such mailbox or domain, inactive at the provider). ``failed``; the
           subscriber is suppressed as bounced.
``soft``   this recipient, for now (mailbox full, greylisting). ``failed`` for a permanent reply
           (5.2.2), ``deferred`` for a temporary one; counted across issues, suppressed only after
           ``[subscribers].soft_bounce_limit``.
``sender`` our side: the relay or the API refuses *us* (relay access denied, authentication, an
           unverified sender, our own DMARC/SPF, a request the provider cannot take). Always
           ``deferred``: nobody is suppressed, and a circuit breaker stops the send when the same
           refusal hits most recipients.
``""``     sent, or a transient fault that is nobody's verdict (421, a dropped connection, a
           timeout, an API 429 or 5xx): ``deferred``, retried.
=========  ==========================================================================================

The one rule above all others: **a refusal that does not speak about the recipient never makes a
``failed``**. A relay answering ``554 5.7.1 Relay access denied`` to everyone used to mark the whole
list bounced; here it is ``deferred``/``sender`` at every stage, as is any 5xx at MAIL FROM or before.

SMTP
----
The enhanced status code (RFC 3463, registry RFC 5248) is read from the start of the reply text
(``550 5.1.1 <a@b>: ...``), or, failing that, qmail's trailing ``(#5.7.1)``. Its class is checked
against the basic reply code, whose first digit decides permanence when the two disagree (the basic
code is what the server's state machine acts on, RFC 3463 §2). ``stage`` is where the reply came:
``connect`` (greeting, EHLO, STARTTLS, AUTH), ``mail`` (MAIL FROM), ``rcpt`` (RCPT TO), ``data``
(DATA and the end of the message).

Any stage, first:

- ``421`` (service closing, RFC 5321 §3.8): deferred, ``""``;
- ``connect``: 5xx (554 greeting, 535/534/538 AUTH, 530) is ``sender``; 4xx (454 4.7.0 temporary
  authentication failure...) is transient ``""``;
- ``mail``: 5xx (530 authentication required, 553 5.1.8 bad sender domain, 550 5.7.1) is ``sender``;
  4xx is transient ``""``, except 4.1.7/4.1.8 (our address) and a 4.7.x that speaks of relay, auth,
  TLS, SPF/DKIM/DMARC or our client host, which are ``sender``;
- at ``mail``, ``rcpt`` and ``data``: 530, 534, 535, 538 (authentication) and 571 are ``sender``.

At ``rcpt`` and ``data``, by enhanced code (``X`` is 4 or 5):

===================================  =================================  ==============================
enhanced code                        5xx                                4xx
===================================  =================================  ==============================
X.1.7, X.1.8 (bad *sender* address)  sender                             sender
X.1.x other (1 bad mailbox, 2 bad    hard                               soft
domain, 3 syntax, 6 moved, 10 null
MX...)
X.2.1 (mailbox disabled)             hard (soft if the text says rate   soft
                                     / "too quickly" / try again)
X.2.4 (mailing list expansion)       hard                               soft
X.2.x other (2.2 mailbox full, 2.3   soft (``failed``)                  soft
message too big for it, 2.0)
X.3.x (mail system: full, not        soft (``failed``)                  ``""`` (the server's trouble)
accepting)
X.4.x (network, routing)             soft (``failed``)                  ``""``
X.5.x (protocol)                     hard if the text says unknown      ``""``
                                     user (Outlook's ``550 5.5.0
                                     mailbox unavailable``), else
                                     sender
X.6.x (content)                      sender (our message)               ``""``
X.7.13 account disabled, X.7.17      hard                               soft
mailbox owner changed, X.7.18
domain owner changed
X.7.x other (7.1 relay denied /      sender                             soft (greylisting "451 4.7.1
policy, 7.0, 7.8 auth, 7.26/7.27                                        try again later"); sender if
DMARC/SPF of our domain...)                                             the text speaks of relay,
                                                                        auth, TLS, SPF/DKIM/DMARC or
                                                                        our client host
X.0.x, unknown subjects, no code     the table below                    the table below
===================================  =================================  ==============================

Without an (informative) enhanced code, by reply code and stage:

=======================  ===============================================  ============================
reply code               rcpt                                             data
=======================  ===============================================  ============================
4xx                      soft, ``deferred`` (sender if the text speaks    the same
                         of relay, auth, TLS...)
550, 551, 553            hard; sender if the text speaks of relay,        hard only if the text says
                         policy, spam, blocking, auth, SPF/DKIM/DMARC     unknown user; else sender
                         (qmail's ``553 sorry, that domain isn't in my    (a content or policy refusal
                         list of allowed rcpthosts``)                     of our message)
552                      soft (``failed``: storage exceeded)              soft (``failed``)
554                      sender if the text speaks of relay or policy;    the same
                         hard if it says unknown user; else sender
556 (RFC 7504, null MX)  hard                                             hard
530, 535, 534, 538, 571  sender                                           sender
500-504, other 5xx       hard if the text says unknown user / bad         the same
                         address; else sender
=======================  ===============================================  ============================

The tables follow what well-kept classifiers do. KumoMTA's ``assets/bounce_classifier/iana.toml``
(KumoCorp/kumomta) maps 5.1.1-5.1.4 to InvalidRecipient, 5.1.10 and 5.7.18 to BadDomain, 5.1.6, 5.2.1
and 5.7.13 to InactiveMailbox, 5.1.7/5.1.8 and 5.7.27 to InvalidSender, 5.2.2/5.2.3/5.3.1 to
QuotaIssues, 5.5.x/5.6.x to protocol errors and the other 5.7.x to AuthenticationFailed (policy): the
same split as here between the recipient's problems and ours. Sisimai (``Sisimai::SMTP::Error``)
reads the same codes for soft/hard and treats 4xx and 4.x.x as soft. Haraka's DSN module
(``docs/CustomReturnCodes.md``) is where ``550 5.1.1 No such user`` style replies come from on the
receiving side. Postfix, the relay most of our users run, refuses an unauthorised destination with
``554 5.7.1 <addr>: Relay access denied`` (``relay_domains_reject_code = 554``; ``454 4.7.1`` with
``soft_bounce``) and an unknown user with ``550 5.1.1`` (``unknown_local_recipient_reject_code``), and
says ``450 4.7.1 Client host rejected`` about us. We part from classifiers that read every 5xx as a
hard bounce (and from the progress.com-style tables that call 5.4.x/5.3.x hard): with a relay between
us and the world, a 5xx that is not about the address is far more often our configuration than the
subscriber's, and suppressing on it is the one thing that cannot be undone.

HTTP APIs
---------
``classify_http`` reads the whole-request status: 2xx sent; 401/403 (key, sender identity, domain)
``sender``; 408, 429 and 5xx transient ``""``; any other 4xx (400/422 request validation, 404 wrong
base URL, 413) ``sender``: a request the provider refuses as a whole is our request, never a verdict
on the addresses in it. Per-recipient refusals each provider documents:

- Postmark (https://postmarkapp.com/developer/api/overview#error-codes): ErrorCode 406 inactive
  recipient, hard; 300 invalid email request, hard when the message names the ``To`` address
  (``Invalid 'To' address``, ``Error parsing 'To'``), sender otherwise (300 also covers a bad From or
  an empty body); 10 bad token, 400/401 sender signature missing / not confirmed, 405 not allowed to
  send, 412 account pending, 413 account may not send: sender; 100 maintenance and 429: transient.
- SendGrid (https://www.twilio.com/docs/sendgrid/api-reference/mail-send/errors): a 400 whose
  ``field`` is ``personalizations.N.to...`` is that recipient's invalid address, hard; 401/403 sender.
- Mailgun (https://documentation.mailgun.com/docs/mailgun/api-reference/): a 400 "'to' parameter is not
  a valid address", once isolated to one recipient, hard; 401/403 (key, domain not allowed) sender.
- Resend (https://resend.com/docs/api-reference/errors): an ``errors[]`` entry of a permissive batch
  about the ``to`` field, hard; 401/403 (``missing_api_key``, ``invalid_api_key``,
  ``validation_error`` "domain is not verified") and 400/422 (``invalid_from_address``,
  ``validation_error``...) sender.

SendGrid, Mailgun and Resend report addresses suppressed on their side later, by webhook, not in the
send response; those are handled by :mod:`publisher.web.webhooks`.
"""

from __future__ import annotations

import re
from typing import Literal

from .api import Kind, Status

__all__ = [
    "Stage",
    "classify_http",
    "classify_smtp",
    "enhanced_code",
    "outcome",
    "postmark_error",
    "resend_email_error",
]

Stage = Literal["connect", "mail", "rcpt", "data"]

# "550 5.1.1 ..." -> the text after the basic code starts with the enhanced code (RFC 3463 §2, RFC 2034).
_ENHANCED = re.compile(r"^\s*([245])\.(\d{1,3})\.(\d{1,3})(?!\.?\d)")
# qmail writes it at the end: "553 sorry, that domain isn't in my list of allowed rcpthosts (#5.7.1)".
_QMAIL = re.compile(r"\(#([245])\.(\d{1,3})\.(\d{1,3})\)")

# The reply says the recipient does not exist / is invalid.
_UNKNOWN_USER = re.compile(
    r"user(?:name)? unknown|unknown (?:user|recipient|mailbox|address)|no such (?:user|mailbox|recipient|account|address)"
    r"|mailbox (?:unavailable|not found|does not exist|doesn't exist|is disabled|disabled)"
    r"|(?:recipient|user|account|address|mailbox)(?: address)? (?:does not exist|doesn't exist|not found|unknown|invalid)"
    r"|invalid (?:recipient|mailbox|address)|bad (?:recipient|destination)(?: mailbox)? address"
    r"|(?:recipient|destination) address (?:syntax|rejected: (?:user unknown|undeliverable))"
    r"|doesn't have a \S+ account|not a valid (?:recipient|mailbox|address)|undeliverable address|mailbox name not allowed",
    re.IGNORECASE,
)
# The reply speaks of us: relaying, authentication, our domain's or host's standing, policy, spam.
_ABOUT_US = re.compile(
    r"relay|rcpthosts|auth|credential|password|log ?in\b|tls|starttls|encrypt|spf|dkim|dmarc|\bptr\b|rdns|reverse"
    r"|client host|\bhelo\b|sender|from address|envelope|not permitted|access denied|policy|spam|block|blacklist"
    r"|blocklist|denylist|listed|reputation|rbl|dnsbl|abuse|not allowed",
    re.IGNORECASE,
)
# At rcpt, a 4.7.x greylisting reply is soft; these words make it ours.
_TEMP_ABOUT_US = re.compile(
    r"relay|rcpthosts|auth|credential|tls|starttls|encrypt|spf|dkim|dmarc|\bptr\b|rdns|reverse|client host|\bhelo\b",
    re.IGNORECASE,
)
# 5.2.1 is "mailbox disabled", but Gmail also uses 4.2.1/5.2.1 for "receiving mail too quickly".
_RATE = re.compile(r"too (?:quickly|fast|many)|rate|try (?:again )?later|temporar", re.IGNORECASE)

# Postmark's 300 "Invalid email request" is about the recipient when it names the To address.
_POSTMARK_TO = re.compile(r"'to'|\bto\b (?:address|field)|error parsing 'to'|recipient", re.IGNORECASE)
# Resend's permissive errors[]: "Invalid `to` field. The email address needs to follow ..."
_RESEND_TO = re.compile(r"`to`|'to'|\bto\b field|recipient", re.IGNORECASE)

POSTMARK_HARD = frozenset({406})  # inactive recipient (hard bounced, complained, suppressed at Postmark)
POSTMARK_TRANSIENT = frozenset({100, 429})  # maintenance, rate limit


def _text(value: bytes | str) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def enhanced_code(text: bytes | str) -> tuple[int, int, int] | None:
    """The RFC 3463 ``class.subject.detail`` at the start of a reply's text (or qmail's ``(#x.y.z)``), or None."""
    s = _text(text)
    m = _ENHANCED.match(s) or _QMAIL.search(s)
    return (int(m.group(1)), int(m.group(2)), int(m.group(3))) if m else None


def outcome(code: int, kind: Kind) -> tuple[Status, Kind]:
    """The status for a kind: hard, and soft on a permanent reply, are ``failed``; everything else ``deferred``."""
    if kind == "hard" or (kind == "soft" and 500 <= code < 600):
        return "failed", kind
    return "deferred", kind


def classify_smtp(code: int, text: bytes | str, stage: Stage) -> tuple[Status, Kind]:
    """Status and kind of an SMTP reply ``code`` with ``text`` at ``stage`` (see the module's tables)."""
    if 200 <= code < 400:
        return "sent", ""
    if code == 421 or not 400 <= code < 600:  # closing, or not SMTP at all (a proxy's garbage): retry
        return "deferred", ""
    s = _text(text)
    permanent = code >= 500
    if stage == "connect":
        return ("deferred", "sender") if permanent else ("deferred", "")
    if code in (530, 534, 535, 538, 571):  # authentication required / invalid / too weak, "delivery not authorised"
        return "deferred", "sender"
    enhanced = enhanced_code(s)
    subject, detail = (enhanced[1], enhanced[2]) if enhanced else (0, 0)
    if stage == "mail":
        if permanent or (subject == 1 and detail in (7, 8)) or (subject == 7 and _TEMP_ABOUT_US.search(s)):
            return "deferred", "sender"
        return "deferred", ""  # 451 4.3.0, 452 4.3.1, a greylisting 451 4.7.1 at MAIL: the relay's trouble, for now
    return outcome(code, _recipient_kind(code, s, subject, detail, stage))


# A refusal at RCPT or DATA that is about our envelope sender, not the recipient: Postfix's reject_unlisted_sender
# (and reject_unknown_sender_domain) answer at RCPT, where smtpd_delay_reject puts every restriction, with
# "550 5.1.0 <news@...>: Sender address rejected: User unknown in local recipient table". Checked before the
# 5.1.x rule, or a relay that does not know our From would mark the whole list bounced.
_ABOUT_OUR_SENDER = re.compile(r"sender address rejected|sender address .{0,40}(?:unknown|not|invalid|denied)|"
                               r"(?:unknown|invalid|unverified|bad) sender|sender (?:domain )?(?:not|unknown|rejected|denied)|"
                               r"from address .{0,30}(?:not|rejected)", re.IGNORECASE)


def _recipient_kind(code: int, s: str, subject: int, detail: int, stage: Stage) -> Kind:
    """The kind of a refusal at RCPT or DATA (``subject``.``detail`` 0.0 when there is no enhanced code)."""
    permanent = code >= 500
    if _ABOUT_OUR_SENDER.search(s):
        return "sender"
    if subject == 1:
        if detail in (7, 8):
            return "sender"
        return "hard" if permanent else "soft"
    if subject == 2:
        if detail == 1 and permanent:
            return "soft" if _RATE.search(s) else "hard"
        if detail == 4 and permanent:
            return "hard"
        return "soft"
    if subject in (3, 4):
        return "soft" if permanent else ""
    if subject == 5:
        if not permanent:
            return ""
        return "hard" if _UNKNOWN_USER.search(s) else "sender"
    if subject == 6:
        return "sender" if permanent else ""
    if subject == 7:
        if detail in (13, 17, 18):
            return "hard" if permanent else "soft"
        if permanent:
            return "sender"
        return "sender" if _TEMP_ABOUT_US.search(s) else "soft"
    return _basic_kind(code, s, stage)


def _basic_kind(code: int, s: str, stage: Stage) -> Kind:
    """The kind from the basic reply code alone (no enhanced code, X.0.x, or a subject RFC 3463 does not define)."""
    if code < 500:
        return "sender" if _TEMP_ABOUT_US.search(s) else "soft"
    if code == 552:
        return "soft"
    if code == 556:
        return "hard"
    if code in (550, 551, 553):
        if stage == "rcpt":
            return "sender" if _ABOUT_US.search(s) and not _UNKNOWN_USER.search(s) else "hard"
        return "hard" if _UNKNOWN_USER.search(s) else "sender"
    if code == 554:
        if _ABOUT_US.search(s):
            return "sender"
        return "hard" if _UNKNOWN_USER.search(s) else "sender"
    return "hard" if _UNKNOWN_USER.search(s) else "sender"


def classify_http(status: int) -> tuple[Status, Kind]:
    """Status and kind of a mail API's answer to a whole request, from its HTTP status alone."""
    if 200 <= status < 300:
        return "sent", ""
    if status in (408, 429) or status >= 500:
        return "deferred", ""
    return "deferred", "sender"  # 401/403 key or sender, 400/422 our request, 404 our base URL, 3xx...


def postmark_error(code: int | None, message: str) -> tuple[Status, Kind]:
    """Status and kind of a Postmark ``ErrorCode`` (per message, or of a 422) with its ``Message``."""
    if code == 0:
        return "sent", ""
    if code in POSTMARK_HARD:
        return "failed", "hard"
    if code == 300:
        return ("failed", "hard") if _POSTMARK_TO.search(message) else ("deferred", "sender")
    if code in POSTMARK_TRANSIENT:
        return "deferred", ""
    return "deferred", "sender"  # 10 token, 400/401 sender signature, 405, 412, 413, invalid JSON...


def resend_email_error(message: str) -> tuple[Status, Kind]:
    """Status and kind of one ``errors[]`` entry of a permissive Resend batch."""
    return ("failed", "hard") if _RESEND_TO.search(message) else ("deferred", "sender")
