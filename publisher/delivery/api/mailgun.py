"""Mailgun's messages API in batch mode: ``POST /v3/{domain}/messages``, up to 1000 recipients per request.

Wire format (https://documentation.mailgun.com/docs/mailgun/user-manual/sending-messages/batch-sending):
form fields (``application/x-www-form-urlencoded``) ``from``, one ``to`` per recipient, ``subject``,
``text``, ``html``, ``h:<Header>`` for headers, ``v:<name>`` for user variables, and
``recipient-variables``, a JSON object ``{address: {name: value}}``. With recipient variables Mailgun
sends one message per ``to`` (each recipient sees only their own address) and replaces
``%recipient.<name>%`` with that recipient's value, in the body, in ``h:`` headers and in ``v:``
variables. Mailgun answers ``200 {"id": "<...>", "message": "Queued. Thank you."}``; a refused request is
``400 {"message": "..."}``, e.g. ``'to' parameter is not a valid address. please check documentation``
(which does not say which address); ``401`` for the key; ``404`` for an unknown domain (or the wrong
region's base URL); ``429`` and ``5xx``.

Personalisation: the render's slots become ``%recipient.pub<nonce>_unsubscribe_url%`` etc. in the
text part and ``%recipient.pub<nonce>_unsubscribe_url_html%`` etc. in the HTML part. Mailgun substitutes
values raw, in both parts alike; our URLs are HTML-safe, but an address such as ``a&b@example.org`` is
not, so the HTML part uses its own variables holding HTML-escaped values. The per-recipient headers
(``List-Unsubscribe``, ``Message-ID``, and any other header whose value differs within the batch) are
``h:<Header>: %recipient.pub<nonce>_<header_name>%`` with the exact value ``Prepared.headers`` gives for
that recipient (so ``List-Unsubscribe`` is ``<https://.../unsubscribe/...>, <mailto:...?subject=unsubscribe>``);
the others (``List-Id``, ``List-Unsubscribe-Post``...) are plain ``h:`` fields. ``v:subscriber_id``
(from a recipient variable) and ``v:issue_id`` come back in Mailgun's webhooks.

Forgery: Mailgun fills ``%recipient.<name>%`` wherever it occurs, and its own variables
(``%unsubscribe_url%``, ``%tag_unsubscribe_url%``...) too, so source text that says
``%recipient.unsubscribe_url%`` must not become anyone's link. Three things see to it:

- our variables carry the render's random nonce (``Prepared.slots``), which no source data can contain;
- in the HTML part, the ``%`` that opens any other ``%name%`` is written ``&#37;`` (outside ``<style>``):
  a browser shows ``%``, Mailgun sees no variable;
- in the text part, which has no escape, a ``%recipient.<name>%`` that is not ours gets a recipient
  variable of that name whose value is that very text, so Mailgun puts it back as it was; one of
  Mailgun's own variables (:data:`MAILGUN_VARIABLES`) gets an invisible WORD JOINER (U+2060) after its
  first ``%``, so it no longer matches. The subject and the shared headers are treated like the text part.

A ``400`` refuses the whole request, and Mailgun does not name the bad address: the adapter bisects the
batch to isolate it (see :func:`publisher.delivery.api._http.isolate`), unless the message names
another parameter than ``to`` (``'from' parameter is not a valid address``, ``'html' parameters``...):
then the request itself is broken and everybody in it is deferred with Mailgun's message and kind
``"sender"`` (our request, nobody's bounce). A lone recipient refused about ``to`` is failed (hard); one
refused with a message we do not recognise is deferred (``"sender"``), never failed.

Limits (module constants, and attributes of the adapter a test may lower):

- "The maximum number of recipients allowed for batch is 1,000"
  (https://documentation.mailgun.com/docs/mailgun/user-manual/sending-messages/batch-sending):
  :data:`MAX_BATCH`.
- "The maximum message size Mailgun supports is 25MB", and of a compressed body "This limit is enforced on
  the uncompressed body" (https://documentation.mailgun.com/docs/mailgun/user-manual/sending-messages): so
  the limit is on the request's body, :data:`MAX_REQUEST_BYTES`, measured on the form body exactly as it is
  sent (``application/x-www-form-urlencoded``, built here rather than by ``requests``, so the bytes measured
  are the bytes posted). Read as a limit on each message Mailgun builds instead, it would allow more: one
  message holds the same text and HTML, with one recipient's variables instead of all of them. A request
  over it is split in halves (see :func:`~._http.isolate`); a recipient alone over it is not sent: deferred,
  kind ``"sender"``, with an error naming the limit, the size and the fix.
- a body over the limit is answered ``413 Request Entity Too Large`` (not in Mailgun's error list; reported
  in https://github.com/mailgun/documentation/issues/325): we never send one, and a 413 all the same is
  reported as the limit having changed.

Mailgun has no idempotency key: after a timeout it may have queued the batch, and a retry may deliver
twice. Reporting it sent instead could silently drop the issue for up to 1000 subscribers.

Reconciliation after a crash: every message carries the user variable ``v:publisher-key``, the
recipient's idempotency key (``<issue>:<subscriber>``), set per recipient as
``%recipient.pub<nonce>_publisher_key%`` (a recipient variable is filled "virtually anywhere in the
message, including header fields and other parameters", as ``v:subscriber_id`` already relies on; if
Mailgun ever left it unfilled, nobody would be confirmed and the batch would be sent again: a duplicate,
never a loss). Mailgun keeps it with the message's events as ``user-variables``.
:meth:`MailgunAdapter.reconcile` asks the Events API
(https://documentation.mailgun.com/docs/mailgun/api-reference/send/mailgun/events/get-v3-domain_name-events):
``GET /v3/{domain}/events?event=accepted&recipient=<address>&begin=<epoch>&ascending=yes&limit=300``
(a time range needs ``begin`` and either ``end`` or a direction; ``limit`` is at most 300), and follows
``paging.next`` (only on our base URL: the key goes nowhere else) until an empty page. The events API
has no filter on user variables (the documented filter fields are event, list, attachment, from,
message-id, subject, to, size, recipient, tags, severity; ``message-id`` is Mailgun's id, which the dead
run never got), so the recipient's ``accepted`` events are read and one whose ``user-variables`` holds our
key (or, for a message sent before the key existed, our ``issue_id`` and ``subscriber_id``) confirms it.
The range starts 3 days back, the shortest retention the events API documents. Events can lag behind
sending: recipients not found are asked again after 1 s and 2 s, within 30 s in all
(:class:`~._http.Lookups`); whoever is not confirmed is sent again.
"""

from __future__ import annotations

import html
import json
import re
import time
from collections.abc import Sequence
from email.utils import formataddr
from typing import Self
from urllib.parse import quote, quote_plus

import requests

from ..classify import classify_http
from . import SLOT_NAMES, Prepared, Recipient, Result
from ._http import (
    MAX_ERROR,
    MB,
    Answer,
    HttpAdapter,
    LookupFailed,
    Lookups,
    as_detail,
    check_key,
    excerpt,
    isolate,
    json_body,
    limit_text,
    reconcile_each,
    retry_after,
    split_headers,
    too_large,
)

MAX_BATCH = 1000  # recipients ('to') per request
MAX_REQUEST_BYTES = 25 * MB  # the request's (form) body
FORM = {"Content-Type": "application/x-www-form-urlencoded"}

_TO_PARAMETER = re.compile(r"(?<![\w:-])'?to'?\s+parameter", re.IGNORECASE)
# Parameters of ours other than 'to': a 400 naming one of them is about the request, not an address.
_OTHER_PARAMETER = re.compile(r"(?<![\w:-])'?(from|subject|text|html|recipient-variables|[hvo]:[\w-]+)'?\s+parameters?\b", re.IGNORECASE)


# A Mailgun variable, ours or Mailgun's own: %recipient.name%, %unsubscribe_url%...
# Where a Mailgun variable could start, ours or Mailgun's own (%recipient.name%, %unsubscribe_url%...): every "%"
# followed by a name and another "%". Only the opening "%" is matched (the rest is a lookahead), so the matches
# overlap: in "%x%unsubscribe_url%" both the "%x%" and the "%unsubscribe_url%" that shares its "%" are found.
_OPENING = re.compile(r"%(?=([A-Za-z_][\w.\-]*)%)")
# Mailgun's own: the unsubscribe links (documented under "Tracking Unsubscribes") and the mailing-list
# variables. Filled by Mailgun for each recipient, so never left in text from a source.
MAILGUN_VARIABLES = frozenset({"unsubscribe_url", "tag_unsubscribe_url", "mailing_list_unsubscribe_url", "recipient",
                               "recipient_email", "recipient_name", "recipient_fname", "recipient_lname"})
_STYLE = re.compile(r"(<style\b.*?</style\s*>)", re.IGNORECASE | re.DOTALL)
WORD_JOINER = "\u2060"
KEY_VARIABLE = "publisher-key"  # the user variable (v:publisher-key) that finds a message again after a crash
EVENTS_SINCE = 3 * 24 * 3600.0  # seconds back the events are read: the events API keeps them "at least 3 days"
EVENTS_PAGES = 5  # pages of 300 events read per recipient at most


def variable(prepared: Prepared, name: str) -> str:
    """Our recipient variable for ``name`` (a slot, or a header: ``Message-ID`` -> ``pub<nonce>_message_id``)."""
    return f"pub{prepared.slots.nonce}_{name.lower().replace('-', '_')}"


def literal_html(html_text: str) -> str:
    """Every ``%`` that could open a variable written ``&#37;``: a browser shows ``%``, Mailgun sees no variable.

    CSS inside ``<style>`` is left alone (entities mean nothing there, and no source data goes there).
    """
    parts = _STYLE.split(html_text)
    return "".join(p if i % 2 else _OPENING.sub("&#37;", p) for i, p in enumerate(parts))


def literal_text(text: str, kept: dict[str, str]) -> str:
    """Every ``%name%`` Mailgun would fill, kept as it is (see the module's docstring); ``kept`` gets the
    recipient variables that put a foreign ``%recipient.<name>%`` back as it was."""

    def keep(m: re.Match[str]) -> str:
        name = m.group(1)
        if name.startswith("recipient."):
            kept[name.removeprefix("recipient.")] = f"%{name}%"
        elif name.lower() in MAILGUN_VARIABLES:
            return "%" + WORD_JOINER
        return "%"

    return _OPENING.sub(keep, text)


class MailgunAdapter(HttpAdapter):
    name = "mailgun"
    provider = "Mailgun"
    max_batch = MAX_BATCH
    max_request_bytes = MAX_REQUEST_BYTES

    def __init__(self, api_key: str, *, domain: str, base_url: str = "https://api.mailgun.net", timeout: float = 30.0,
                 lookups: Lookups = Lookups()) -> None:
        check_key(api_key, "Mailgun")
        if not domain or "/" in domain or "%" in domain:
            raise ValueError(f"not a Mailgun sending domain: {domain!r}")
        super().__init__(api_key, base_url=base_url, timeout=timeout)
        self.domain = domain
        self.lookups = lookups
        self._session.auth = ("api", api_key)

    def __repr__(self) -> str:
        return f"MailgunAdapter(domain={self.domain!r}, base_url={self.base_url!r}, timeout={self.timeout!r})"

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def url(self) -> str:
        return f"{self.base_url}/v3/{quote(self.domain, safe='')}/messages"

    # -- the request ---------------------------------------------------------------------------------

    def payload(self, prepared: Prepared, recipients: Sequence[Recipient]) -> list[tuple[str, str]]:
        kept: dict[str, str] = {}  # foreign %recipient.x% in the text: each put back as it was
        text, body = literal_text(prepared.text, kept), literal_html(prepared.html)
        subject = literal_text(prepared.subject, kept)
        var = lambda name: variable(prepared, name)  # noqa: E731
        for key, marker in prepared.slots.markers.items():
            text = text.replace(marker, f"%recipient.{var(key)}%")
            body = body.replace(marker, f"%recipient.{var(key + '_html')}%")
        shared, per_recipient = split_headers(prepared, recipients)
        shared = {name: literal_text(value, kept) for name, value in shared.items()}
        variables: dict[str, dict[str, str]] = {}
        for r in recipients:
            values = {"email": r.email, **r.links}
            own = prepared.headers(r)
            variables[r.email] = {
                **kept,
                **{var(k): values[k] for k in SLOT_NAMES},
                **{var(k + "_html"): html.escape(values[k]) for k in SLOT_NAMES},
                **{var(name): own[name] for name in per_recipient},
                var("subscriber_id"): str(r.subscriber_id),
                var(KEY_VARIABLE): r.idempotency_key,
            }
        fields = [("from", formataddr((prepared.from_name, prepared.from_address)))]
        fields += [("to", r.email) for r in recipients]
        fields.append(("subject", subject))
        fields += [(name, value) for name, value in (("text", text), ("html", body)) if value]
        fields.append(("recipient-variables", json.dumps(variables, ensure_ascii=False)))
        if prepared.reply_to:
            fields.append(("h:Reply-To", prepared.reply_to))
        fields += [(f"h:{name}", value) for name, value in shared.items()]
        fields += [(f"h:{name}", f"%recipient.{var(name)}%") for name in per_recipient]
        fields += [("v:subscriber_id", f"%recipient.{var('subscriber_id')}%"), ("v:issue_id", prepared.issue_id)]
        fields.append((f"v:{KEY_VARIABLE}", f"%recipient.{var(KEY_VARIABLE)}%"))
        return fields

    def send_batch(self, prepared: Prepared, recipients: Sequence[Recipient]) -> list[Result]:
        memo: dict[str, str] = {}  # the text and HTML parts, encoded once for all the requests of this batch
        return isolate(recipients, self.max_batch, lambda part: self._send(prepared, part, memo))

    @staticmethod
    def encode(fields: list[tuple[str, str]], memo: dict[str, str] | None = None) -> bytes:
        """The form body as it goes on the wire: byte for byte ``urllib.parse.urlencode(fields)``, which is what
        ``requests`` makes of the same fields (UTF-8, then ``+`` and ``%XX``). ``memo`` keeps the encoding of long
        values (the text and HTML parts: 1 s for 25 MB) for the other requests of a batch split to fit."""
        memo = {} if memo is None else memo
        out = []
        for name, value in fields:
            if len(value) < 4096:
                quoted = quote_plus(value)
            elif (quoted := memo.get(value)) is None:
                quoted = memo[value] = quote_plus(value)
            out.append(f"{quote_plus(name)}={quoted}")
        return "&".join(out).encode("ascii")

    def _send(self, prepared: Prepared, part: Sequence[Recipient], memo: dict[str, str]) -> Answer:
        body = self.encode(self.payload(prepared, part), memo)
        if len(body) > self.max_request_bytes:  # not sent: isolate() splits it, or defers a lone recipient with this error
            return Answer("too_large", too_large(self.provider, "the request", len(body), self.max_request_bytes))
        return self._post(
            self.url,
            data=body,
            headers=FORM,
            allow_redirects=False,
            read=self._answer,
            unanswered=lambda error: Answer("deferred", error[:MAX_ERROR]),
        )

    # -- after a crash -------------------------------------------------------------------------------

    def reconcile(self, issue_id: str, recipients: Sequence[Recipient]) -> list[Result]:
        """``sent`` for each recipient whose ``accepted`` event carries our key (see the module's docstring)."""
        begin = f"{time.time() - EVENTS_SINCE:.0f}"
        return reconcile_each(recipients, lambda r, timeout: self._accepted(issue_id, r, begin, timeout),
                              provider=self.provider, lookups=self.lookups)

    def _accepted(self, issue_id: str, r: Recipient, begin: str, timeout: float) -> bool:
        url: str | None = f"{self.base_url}/v3/{quote(self.domain, safe='')}/events"
        params: list[tuple[str, str]] | None = [("event", "accepted"), ("recipient", r.email), ("begin", begin),
                                                ("ascending", "yes"), ("limit", "300")]
        for _ in range(EVENTS_PAGES):
            assert url is not None
            data = self._get_json(url, params=params, timeout=timeout)
            items = data.get("items") if isinstance(data, dict) else None
            if not isinstance(items, list):
                raise LookupFailed("Mailgun's events answered without an items list")
            if any(_confirms(item, issue_id, r) for item in items):
                return True
            url, params = _next_page(data, self.base_url + "/"), None
            if not items or url is None:
                return False
        return False

    # -- the answer ----------------------------------------------------------------------------------

    def _answer(self, resp: requests.Response) -> Answer:
        status = resp.status_code
        message = self._message(resp)
        detail = as_detail(message)
        if 200 <= status < 300:
            data = json_body(resp)
            if isinstance(data, dict) and data.get("id"):
                return Answer("sent")
            # Mailgun answers 200 "Mailgun Magnificent API" for a URL that is not an endpoint (a domain
            # with a slash, a wrong base URL): nothing was queued.
            error = f"Mailgun answered {status} without a message id (check the domain and base URL){detail}"
            return Answer("deferred", error, fault="sender")
        if status == 400:
            error = f"Mailgun refused the request (400){detail}"
            # Only a message about another parameter than 'to' condemns the request itself; one about
            # 'to' (or one we do not recognise) is narrowed down by bisection.
            about_to = bool(_TO_PARAMETER.search(message))
            whole = not about_to and bool(_OTHER_PARAMETER.search(message))
            return Answer("refused", error, whole=whole, recipient=about_to)
        if status in (401, 403):
            # A wrong key, or a domain not allowed to send: the operator's to fix, after which the same
            # request succeeds. Failing would drop every subscriber for a configuration error.
            error = f"Mailgun refused the API key or the domain ({status}): check PUBLISHER_API_KEY and [delivery.api] domain{detail}"
            return Answer("deferred", error, fault="sender")
        if status == 404:
            error = f"Mailgun does not know the domain {self.domain!r} at {self.base_url} (404)"
            return Answer("deferred", f"{error}: check the domain and the region (api.eu.mailgun.net){detail}", fault="sender")
        if status == 413:
            # Never sent knowingly (_send keeps every request within MAX_REQUEST_BYTES): the limit has changed.
            error = (f"Mailgun refused the request as too large (413), although it was within the documented "
                     f"{limit_text(self.max_request_bytes)} (MAX_REQUEST_BYTES in publisher/delivery/api/mailgun.py){detail}")
            return Answer("deferred", error[:MAX_ERROR], fault="sender")
        if status == 429:
            return Answer("deferred", f"Mailgun rate limit (429){detail}", retry_after(resp.headers.get("Retry-After")))
        if status >= 500:
            return Answer("deferred", f"Mailgun server error ({status}){detail}", retry_after(resp.headers.get("Retry-After")))
        return Answer("deferred", f"unexpected answer from Mailgun ({status}){detail}", fault=classify_http(status)[1])

    def _message(self, resp: requests.Response) -> str:
        data = json_body(resp)
        if isinstance(data, dict) and isinstance(data.get("message"), str):
            text = data["message"]
        else:
            text = excerpt(resp)
        return self._scrub(text)


def _confirms(event: object, issue_id: str, r: Recipient) -> bool:
    """Whether an event is Mailgun accepting our message for ``r``: to their address, with their key."""
    if not isinstance(event, dict) or event.get("event") != "accepted":
        return False
    if str(event.get("recipient", "")).casefold() != r.email.casefold():
        return False
    values = event.get("user-variables")
    if not isinstance(values, dict):
        return False
    if KEY_VARIABLE in values:
        return values[KEY_VARIABLE] == r.idempotency_key
    return values.get("issue_id") == issue_id and str(values.get("subscriber_id")) == str(r.subscriber_id)


def _next_page(data: dict[str, object], base: str) -> str | None:
    """``paging.next``, when it is on our base URL (the key is sent with it)."""
    paging = data.get("paging")
    url = paging.get("next") if isinstance(paging, dict) else None
    return url if isinstance(url, str) and url.startswith(base) else None
