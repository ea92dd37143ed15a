"""The digest as MIME, built once per issue variant and personalised per recipient by substitution.

``compile_message`` renders the whole message (headers, multipart/alternative, UTF-8, quoted-printable
bodies) once, with slots where each recipient's values go: their address, Message-ID and unsubscribe
link in the headers; their address and links in both bodies. ``CompiledMessage.for_recipient`` fills the
slots and joins the pieces, which costs microseconds, not a render.

The bodies are encoded here rather than by the email package so the slots never land inside a
quoted-printable line: each slot sits on lines of its own between soft line breaks ("=" at the end of a
line, which decoders drop), and its value is encoded on its own. Every line stays within 76 octets.

The slots are found by the render's own markers (``digest.render.Slots``: a random nonce per render), in
the bodies and in the headers alike, so a source's data can never be taken for one.
"""

from __future__ import annotations

import hashlib
import hmac
import html
import re
import secrets
from collections.abc import Callable
from datetime import datetime
from email.message import EmailMessage
from email.policy import SMTP
from email.utils import format_datetime, formataddr
from urllib.parse import urlsplit

from ..config import Config
from ..digest.render import RenderedIssue, Slots, quoted_printable

# Headers stay on one line up to RFC 5322's hard limit: some receivers mis-parse a List-Unsubscribe
# folded right after its colon.
POLICY = SMTP.clone(max_line_length=998)
CRLF = b"\r\n"
SOFT_BREAK = b"=\r\n"
# What differs per recipient in the headers; their markers use the render's nonce (see digest.render.Slots).
HEADER_SLOTS = ("to", "message_id", "list_unsubscribe_url")


def list_id(cfg: Config) -> str:
    """The List-Id (RFC 2919): the sending domain's, so it stays the same when the site moves (mail clients and
    Gmail's filters key on it); base_url can be a local address."""
    domain = cfg.digest.from_address.rpartition("@")[2].lower() or urlsplit(cfg.site.base_url).hostname or "localhost"
    return f"{cfg.site.name} <digest.{domain}>"


class MessageIds:
    """The digest's Message-IDs: ``<digest.<issue>.<tag>@<From domain>>``, the tag an HMAC of (issue, subscriber) under
    the store's own random key (:meth:`Store.message_id_key`).

    The same for one (issue, subscriber) on every retry, in every process and on every worker of the fleet (they share
    the store), so a resend after a crash is recognisable; different between two stores, so two installs or two lists
    sending from one domain never give one id to two messages; and not guessable from outside (the key never leaves the
    store). Not the signing key: rotating PUBLISHER_SECRET_KEY mid-issue must not change the retries' ids.
    """

    __slots__ = ("domain", "_key")

    def __init__(self, domain: str, key: bytes) -> None:
        if len(key) < 16:
            raise ValueError("a Message-ID key of at least 16 bytes is needed")
        self.domain, self._key = domain, key

    def __call__(self, issue_id: str, subscriber_id: int) -> str:
        tag = hmac.new(self._key, f"{issue_id}:{subscriber_id}".encode(), hashlib.sha256).hexdigest()[:32]
        return f"<digest.{issue_id}.{tag}@{self.domain}>"

    def __repr__(self) -> str:
        return f"MessageIds(domain={self.domain!r})"


def sender_domain(cfg: Config) -> str:
    """The From address's domain: the right-hand side of every Message-ID."""
    return cfg.digest.from_address.rpartition("@")[2] or "localhost"


def preview_message_id(domain: str) -> str:
    """A message that is looked at, not sent (the preview, `digest show`): a random id, never one a real send uses."""
    return f"<preview.{secrets.token_hex(16)}@{domain}>"


_qp = quoted_printable  # the digest's size cap counts the HTML exactly as it is encoded here


_LEADING_DOT = re.compile(rb"(?m)^\.")


def _stuff(data: bytes) -> bytes:
    return _LEADING_DOT.sub(b"..", data) if data.startswith(b".") or b"\n." in data else data


def _body(value: str) -> bytes:
    """A value for a quoted-printable body, on lines of its own (the soft break ends its last line)."""
    return _qp(value.encode("utf-8")) + SOFT_BREAK


_HTML_SPECIAL = frozenset("&<>\"'")


class CompiledMessage:
    """Static byte chunks with slots between them: chunks[0] slot[0] chunks[1] slot[1] ... chunks[-1]."""

    __slots__ = ("issue_id", "chunks", "slots", "domain", "_parts", "_stuffed", "_plan")

    def __init__(self, issue_id: str, chunks: tuple[bytes, ...], slots: tuple[tuple[str, str], ...], domain: str) -> None:
        self.issue_id = issue_id
        self.chunks = chunks
        self.slots = slots  # (where, name): where is "header", "html" or "text"
        self.domain = domain
        self._parts = [p for c in chunks for p in (c, b"")][:-1]  # chunk, slot, chunk, slot, ..., chunk
        # For SMTP's DATA: lines starting with "." doubled (RFC 5321 4.5.2), once here rather than per recipient.
        # Every chunk starts at the start of a line or inside a header line that never starts with ".".
        self._stuffed = [_stuff(p) for p in self._parts]
        self._plan = [(2 * i + 1, where, name) for i, (where, name) in enumerate(slots)]

    def for_recipient(self, message_id: str, email: str, links: dict[str, str], *, dot_stuffed: bool = False) -> bytes:
        """The recipient's message: each distinct value encoded once, then one join of chunks and values.

        ``message_id`` is the recipient's (:class:`MessageIds`, as recorded in the send log). ``dot_stuffed`` gives the
        form SMTP's DATA command carries (lines starting with "." doubled).
        """
        if any(c in value for value in (email, message_id) for c in "\r\n"):
            raise ValueError("refusing a line break in an address or a Message-ID")
        unsubscribe, preferences = links["unsubscribe_url"], links["preferences_url"]
        header = {"to": email.encode("ascii"), "list_unsubscribe_url": unsubscribe.encode("ascii"),
                  "message_id": message_id.encode("ascii")}
        text = {"email": _body(email), "unsubscribe_url": _body(unsubscribe), "preferences_url": _body(preferences)}
        markup = text
        if not (_HTML_SPECIAL.isdisjoint(email) and _HTML_SPECIAL.isdisjoint(unsubscribe) and _HTML_SPECIAL.isdisjoint(preferences)):
            markup = {"email": _body(html.escape(email)), "unsubscribe_url": _body(html.escape(unsubscribe)),
                      "preferences_url": _body(html.escape(preferences))}
        by_where = {"header": header, "text": text, "html": markup}
        parts = (self._stuffed if dot_stuffed else self._parts).copy()
        for position, where, name in self._plan:
            value = by_where[where][name]
            parts[position] = _stuff(value) if dot_stuffed and where != "header" else value
        return b"".join(parts)


def compile_message(cfg: Config, rendered: RenderedIssue, now: datetime, *, test: bool = False) -> CompiledMessage:
    domain = sender_domain(cfg)
    slot = rendered.slots.marker
    head = EmailMessage(policy=POLICY)
    head["From"] = formataddr((cfg.digest.from_name, cfg.digest.from_address))
    head["To"] = slot("to")
    head["Subject"] = ("[TEST] " if test else "") + rendered.subject
    head["Date"] = format_datetime(now)
    head["Message-ID"] = slot("message_id")
    if cfg.digest.reply_to:
        head["Reply-To"] = cfg.digest.reply_to
    head["List-Id"] = list_id(cfg)
    head["List-Unsubscribe"] = f"<{slot('list_unsubscribe_url')}>, <mailto:{cfg.digest.from_address}?subject=unsubscribe>"
    head["List-Unsubscribe-Post"] = "List-Unsubscribe=One-Click"
    if cfg.delivery.feedback_id:
        head["Feedback-ID"] = cfg.delivery.feedback_id
    head["MIME-Version"] = "1.0"
    boundary = f"=_digest_{secrets.token_hex(12)}"
    head["Content-Type"] = f'multipart/alternative; boundary="{boundary}"'
    header_bytes = b"".join(POLICY.fold_binary(name, value) for name, value in head.items()) + CRLF

    builder = _Chunks()
    builder.split_on(header_bytes, {slot(name): ("header", name) for name in HEADER_SLOTS})
    for subtype, body, where in (("plain", rendered.text, "text"), ("html", rendered.html, "html")):
        builder.add(f"--{boundary}\r\nContent-Type: text/{subtype}; charset=\"utf-8\"\r\n"
                    "Content-Transfer-Encoding: quoted-printable\r\n\r\n".encode("ascii"))
        builder.add_body(body, where, rendered.slots)
        builder.add(CRLF)
    builder.add(f"--{boundary}--\r\n".encode("ascii"))
    return CompiledMessage(rendered.issue.id, tuple(builder.chunks), tuple(builder.slots), domain)


class _Chunks:
    def __init__(self) -> None:
        self.chunks: list[bytes] = [b""]
        self.slots: list[tuple[str, str]] = []

    def add(self, data: bytes) -> None:
        self.chunks[-1] += data

    def slot(self, where: str, name: str) -> None:
        self.slots.append((where, name))
        self.chunks.append(b"")

    def split_on(self, data: bytes, markers: dict[str, tuple[str, str]]) -> None:
        """Static bytes with markers: each marker becomes a slot."""
        _scan(data.decode("ascii"), markers, lambda s: self.add(s.encode("ascii")), lambda w, n: self.slot(w, n))

    def add_body(self, text: str, where: str, slots: Slots) -> None:
        """A body with the renderer's slots: static parts quoted-printable, each slot on lines of its own."""
        markers = {marker: (where, name) for name, marker in slots.markers.items()}

        def static(part: str) -> None:
            if part:
                encoded = _qp(part.encode("utf-8"))
                self.add(encoded)

        def slot(w: str, n: str) -> None:
            self.add(SOFT_BREAK if not self.chunks[-1].endswith(CRLF) else b"")
            self.slot(w, n)

        _scan(text, markers, static, slot)


def _scan(text: str, markers: dict[str, tuple[str, str]], static: Callable[[str], None], slot: Callable[[str, str], None]) -> None:
    pos = 0
    while True:
        found = [(text.find(m, pos), m) for m in markers]
        found = [(i, m) for i, m in found if i >= 0]
        if not found:
            static(text[pos:])
            return
        i, marker = min(found)
        static(text[pos:i])
        slot(*markers[marker])
        pos = i + len(marker)
