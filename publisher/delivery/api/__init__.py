"""Mail providers' HTTP APIs (Postmark, SendGrid, Mailgun, Resend), one module each, behind one small interface.

An adapter gets a :class:`Prepared` issue variant (subject, sender, HTML and text with the renderer's
per-recipient slots, the list headers) and a batch of :class:`Recipient`, sends them in as few
requests as the provider allows (never more recipients or more bytes per request than its documentation
allows: each module cites its limits, and a batch over one is split), and reports one :class:`Result` per
recipient:

- ``sent``: the provider accepted it;
- ``deferred``: try again later (429, 5xx, a timeout, a dropped connection); ``retry_after`` in seconds
  when the provider said how long to wait;
- ``failed``: the provider refused this address for good (invalid, suppressed on its side...).

and ``kind`` says whose problem a refusal is (:mod:`publisher.delivery.classify` decides it):

- ``"hard"``: the address itself (no such mailbox or domain, inactive on the provider's side): failed,
  the subscriber is suppressed as bounced;
- ``"soft"``: this recipient, for now (mailbox full, greylisted): counted across issues, not suppressed
  at once; ``failed`` for a permanent reply (5.2.2), ``deferred`` for a temporary one;
- ``"sender"``: our side (relay or API refusing us, credentials, an unverified sender, a request the
  provider cannot take, a message too large for the provider's size limits even alone, which is then
  not sent at all): always ``deferred``, never anybody's bounce; the engine's circuit breaker stops the
  send when it hits most recipients;
- ``""``: sent, or a transient fault (timeout, dropped connection, 421, 429, 5xx): retry.

Adapters never retry and never sleep: the send engine owns retries, backoff and the send log. They use
one ``requests.Session`` (one connection pool per host), a timeout on every request, and the API key
from the environment (``PUBLISHER_API_KEY``), which never appears in a repr, a log line or an error.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol

from ...digest.render import SLOT_NAMES, Slots, personalise

__all__ = ["SLOT_NAMES", "ApiAdapter", "Kind", "Prepared", "Recipient", "Result", "Slots", "Status"]

Status = Literal["sent", "deferred", "failed"]
Kind = Literal["", "hard", "soft", "sender"]


@dataclass(frozen=True)
class Recipient:
    subscriber_id: int
    email: str
    message_id: str  # e.g. "<digest.2026-W48.1a2b...@example.org>", stable per (issue, subscriber)
    links: dict[str, str]  # "unsubscribe_url", "preferences_url"
    idempotency_key: str  # derived from issue and subscriber: the same on every retry


@dataclass(frozen=True)
class Prepared:
    """One issue variant, ready for any provider."""

    issue_id: str
    subject: str
    from_name: str
    from_address: str
    reply_to: str
    html: str  # contains slots.markers["email"], ["unsubscribe_url"], ["preferences_url"]
    text: str  # the same slots
    list_id: str  # the List-Id header value
    extra_headers: dict[str, str] = field(default_factory=dict)
    slots: Slots = field(default_factory=Slots)  # the render's markers (a random nonce: data cannot contain one)

    def personalise(self, r: Recipient) -> tuple[str, str]:
        """HTML and text for one recipient, for providers without their own substitution."""
        return personalise(self.html, self.text, {"email": r.email, **r.links}, self.slots)

    def headers(self, r: Recipient) -> dict[str, str]:
        """Headers every provider must set for this recipient (RFC 2369, RFC 8058)."""
        return {
            "List-Id": self.list_id,
            "List-Unsubscribe": f"<{r.links['unsubscribe_url']}>, <mailto:{self.from_address}?subject=unsubscribe>",
            "List-Unsubscribe-Post": "List-Unsubscribe=One-Click",
            "Message-ID": r.message_id,
            **self.extra_headers,
        }


@dataclass(frozen=True)
class Result:
    subscriber_id: int
    status: Status
    error: str = ""  # never contains the API key
    retry_after: float | None = None
    kind: Kind = ""  # whose problem a refusal is: "hard" / "soft" (the recipient), "sender" (ours), "" (none, or transient)


class ApiAdapter(Protocol):
    name: str
    max_batch: int  # recipients per request the provider allows (the adapter also splits a batch by size)

    def send_batch(self, prepared: Prepared, recipients: Sequence[Recipient]) -> list[Result]:
        """One Result per recipient, in any order. Must not raise for a provider or network error: report deferred."""
        ...

    def close(self) -> None: ...
