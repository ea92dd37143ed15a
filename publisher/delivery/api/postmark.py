"""Postmark's batch API: ``POST /email/batch``, up to 500 messages, one result per message.

Wire format (https://postmarkapp.com/developer/user-guide/send-email-with-api/batch-emails): the body is a
JSON array of message objects; Postmark answers ``200`` with an array of results in the same order,
``{"ErrorCode": 0, "Message": "OK", "MessageID": "...", "To": "..."}``, a non-zero ``ErrorCode`` being a
per-message refusal. A refusal of the whole request comes as ``401`` (bad token), ``422`` with one
``{"ErrorCode", "Message"}`` object, ``429`` (rate limit) or ``5xx``.

Limits (the numbers below are module constants, and attributes of the adapter a test may lower):

- 500 messages per request, "and up to 50 MB payload size, including attachments"
  (https://postmarkapp.com/developer/user-guide/send-email-with-api/batch-emails): :data:`MAX_BATCH`,
  :data:`MAX_REQUEST_BYTES`, measured on the JSON body exactly as it is sent. A batch over it is split in
  halves until every request fits (:func:`~._http.in_requests`); 500 messages of a 104 KB digest are 52 MB,
  so they go in two requests.
- per message, "TextBody and HtmlBody can each be up to 5 MB each" and "Total message size, including
  attachments, can be 10 MB", and "We calculate the size of the email after it has been base64 encoded"
  (https://postmarkapp.com/support/article/1056-what-are-the-attachment-and-email-size-limits):
  :data:`MAX_BODY_BYTES`, :data:`MAX_MESSAGE_BYTES`. Whether the base64 sentence applies to the text and HTML
  bodies or to attachments only is not said: we take the smaller reading, the base64 size (4/3) of each body
  and of the message's JSON object (which holds its text, HTML and headers), so a body may be 3.75 MB and a
  message 7.5 MB. A message over either is not sent: deferred, kind ``"sender"``, with an error naming the
  limit, the size and the fix.
- a request over the limit is answered ``413 Payload Too Large``
  (https://postmarkapp.com/developer/api/overview, "HTTP response codes"); we never send one, and a 413 all
  the same is reported as the limit having changed.

Reconciliation after a crash: every message carries ``"Metadata": {"publisher-key": <key>}``, the
recipient's idempotency key (``<issue>:<subscriber>``), or ``sha256:<hex>`` of it past Postmark's limits
(field names up to 20 characters, values up to 80, at most 10 fields: Postmark answers 422 "Invalid
metadata content" otherwise; https://postmarkapp.com/support/article/1125-custom-metadata-faq).
:meth:`PostmarkAdapter.reconcile` asks the outbound message search
(https://postmarkapp.com/developer/api/messages-api, ``GET /messages/outbound`` with the required
``count`` and ``offset``, ``recipient``, and ``metadata_publisher-key=<value>``, the FAQ's "search for
messages using metadata": one metadata field per search; plus ``messagestream``, the stream we send on,
which Postmark's own clients pass as the outbound filter ``messageStream``), with ``Accept:
application/json`` and ``X-Postmark-Server-Token``. It answers ``{"TotalCount": n, "Messages": [...]}``,
each message with its ``Recipients``, ``MessageStream``, ``Status`` and ``Metadata``. A message is taken
as accepted only when a returned message has our metadata value and the recipient's address (a search
that ignored the filter would otherwise confirm an older issue). The search lags a little behind sending:
recipients not found are asked again after 1 s and 2 s (:class:`~._http.Lookups`), within 30 s in all;
whoever is not confirmed is sent again.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from math import ceil
from typing import Any

import requests

from ..classify import classify_http, postmark_error
from . import Prepared, Recipient, Result
from ._http import (
    MAX_ERROR,
    MB,
    HttpAdapter,
    LookupFailed,
    Lookups,
    all_results,
    as_detail,
    excerpt,
    in_requests,
    json_body,
    limit_text,
    mailbox,
    reconcile_each,
    retry_after,
    too_large,
)

# What an ErrorCode means (per message, or in a whole-request 422) is decided by
# publisher.delivery.classify.postmark_error: 406 inactive recipient (bounced, complained, suppressed on
# Postmark's side) is a hard bounce; 300 invalid email request is one only when its message names the 'To'
# address (300 also covers a bad From, an empty body...); 100 maintenance and 429 rate limit are
# transient; everything else (10 bad token, 400/401 sender signature missing/unconfirmed, 405 not allowed
# to send, 412 account pending, 413 account may not send, 402 invalid JSON, a malformed request...) is
# ours to fix: deferred with kind "sender", never a verdict on the subscriber, whom failing would
# suppress for good.


# The account and sender-signature codes (10 token, 400/401 sender signature, 405 not allowed to send, 412
# account pending, 413 account may not send), named as such in the error.
ACCOUNT_CODES = frozenset({10, 400, 401, 405, 412, 413})

MAX_BATCH = 500  # messages per request
MAX_REQUEST_BYTES = 50 * MB  # the request's body
MAX_MESSAGE_BYTES = 10 * MB  # one message, base64-encoded (the smaller reading: see the module's docstring)
MAX_BODY_BYTES = 5 * MB  # its HtmlBody, and its TextBody, each base64-encoded (the same)

METADATA_KEY = "publisher-key"  # Postmark: a field name of at most 20 characters
METADATA_VALUE_MAX = 80  # Postmark: a field value of at most 80 characters


def base64_size(n: int) -> int:
    """Bytes of ``n`` bytes once base64-encoded, as Postmark counts a message's size."""
    return 4 * ceil(n / 3)


def metadata_value(idempotency_key: str) -> str:
    """The ``publisher-key`` metadata value for a recipient: the key itself, or its SHA-256 when too long."""
    if len(idempotency_key) <= METADATA_VALUE_MAX:
        return idempotency_key
    return "sha256:" + hashlib.sha256(idempotency_key.encode("utf-8")).hexdigest()


class PostmarkAdapter(HttpAdapter):
    name = "postmark"
    provider = "Postmark"
    max_batch = MAX_BATCH
    max_request_bytes = MAX_REQUEST_BYTES
    max_message_bytes = MAX_MESSAGE_BYTES
    max_body_bytes = MAX_BODY_BYTES

    def __init__(
        self,
        api_key: str,
        *,
        base_url: str = "https://api.postmarkapp.com",
        message_stream: str = "broadcast",
        timeout: float = 30.0,
        lookups: Lookups = Lookups(),
    ) -> None:
        super().__init__(
            api_key, base_url=base_url, timeout=timeout, headers={"Content-Type": "application/json", "X-Postmark-Server-Token": api_key}
        )
        self.message_stream = message_stream
        self.lookups = lookups

    def __repr__(self) -> str:
        return f"PostmarkAdapter(base_url={self.base_url!r}, message_stream={self.message_stream!r}, timeout={self.timeout!r})"

    # -- the request ---------------------------------------------------------------------------------

    def payload(self, prepared: Prepared, recipients: Sequence[Recipient]) -> list[dict[str, Any]]:
        sender = mailbox(prepared.from_name, prepared.from_address)
        messages = []
        for r in recipients:
            html, text = prepared.personalise(r)
            msg: dict[str, Any] = {
                "From": sender,
                "To": r.email,
                "Subject": prepared.subject,
                "HtmlBody": html,
                "TextBody": text,
            }
            if prepared.reply_to:
                msg["ReplyTo"] = prepared.reply_to
            msg["Headers"] = [{"Name": k, "Value": v} for k, v in prepared.headers(r).items()]
            msg["MessageStream"] = self.message_stream
            msg["TrackOpens"] = False
            msg["Metadata"] = {METADATA_KEY: metadata_value(r.idempotency_key)}
            messages.append(msg)
        return messages

    def send_batch(self, prepared: Prepared, recipients: Sequence[Recipient]) -> list[Result]:
        """Every recipient's message, in as few requests as Postmark's limits allow (500 messages, 50 MB each).

        Each message is encoded once; a request's body is the JSON array of its messages, byte for byte what
        ``json.dumps`` of the whole list gives, so what is measured is what goes on the wire. A message over
        Postmark's per-message limits is not sent (deferred, kind ``"sender"``); nor is one that alone would
        make a request over the limit.
        """
        results: list[Result] = []
        encoded: dict[int, bytes] = {}  # id(recipient) -> their message as JSON
        for r, message in zip(recipients, self.payload(prepared, recipients), strict=True):
            body = json.dumps(message, ensure_ascii=False).encode("utf-8")
            if error := self._oversize(message, body):
                results.append(Result(r.subscriber_id, "deferred", error, kind="sender"))
            else:
                encoded[id(r)] = body
        url = f"{self.base_url}/email/batch"
        results += in_requests(
            [r for r in recipients if id(r) in encoded],
            max_batch=self.max_batch,
            limit=self.max_request_bytes,
            encode=lambda part: b"[" + b", ".join(encoded[id(r)] for r in part) + b"]",
            post=lambda part, body: self._post_batch(url, part, self._results, data=body),
            oversize=lambda size: too_large(self.provider, "the request", size, self.max_request_bytes),
        )
        return results

    def _oversize(self, message: dict[str, Any], encoded: bytes) -> str:
        """Why Postmark would reject this one message for its size, or ""."""
        for field, part in (("HtmlBody", "the HTML part"), ("TextBody", "the text part")):
            size = base64_size(len(str(message.get(field, "")).encode("utf-8")))
            if size > self.max_body_bytes:
                return too_large(self.provider, f"{part}, base64-encoded as Postmark counts it,", size, self.max_body_bytes,
                                 "limit per body part")
        size = base64_size(len(encoded))
        if size > self.max_message_bytes:
            return too_large(self.provider, "the message, base64-encoded as Postmark counts it,", size, self.max_message_bytes,
                             "message size limit")
        return ""

    # -- after a crash -------------------------------------------------------------------------------

    def reconcile(self, issue_id: str, recipients: Sequence[Recipient]) -> list[Result]:
        """``sent`` for each recipient Postmark's outbound search shows it accepted (see the module's docstring)."""
        return reconcile_each(recipients, self._accepted, provider=self.provider, lookups=self.lookups)

    def _accepted(self, r: Recipient, timeout: float) -> bool:
        value = metadata_value(r.idempotency_key)
        params = [("count", "50"), ("offset", "0"), ("recipient", r.email), ("messagestream", self.message_stream),
                  (f"metadata_{METADATA_KEY}", value)]
        data = self._get_json(f"{self.base_url}/messages/outbound", params=params, timeout=timeout)
        messages = data.get("Messages") if isinstance(data, dict) else None
        if not isinstance(messages, list):
            raise LookupFailed("Postmark's outbound search answered without a Messages list")
        email = r.email.casefold()
        for m in messages:
            if not isinstance(m, dict) or not isinstance(m.get("Metadata"), dict):
                continue
            addresses = [str(a).casefold() for a in m.get("Recipients") or [] if isinstance(a, str)]
            if m["Metadata"].get(METADATA_KEY) == value and email in addresses:
                return True
        return False

    # -- the answer ----------------------------------------------------------------------------------

    def _results(self, resp: requests.Response, recipients: Sequence[Recipient]) -> list[Result]:
        status = resp.status_code
        if status == 200:
            return self._per_message(resp, recipients)
        detail = self._detail(resp)
        if status == 429:
            return all_results(recipients, "deferred", f"Postmark rate limit (429){detail}", retry_after(resp.headers.get("Retry-After")))
        if status >= 500:
            return all_results(recipients, "deferred", f"Postmark server error ({status}){detail}")
        if status == 401:
            # A wrong or revoked server token is a configuration error, not a verdict on any subscriber.
            # Reporting "failed" would permanently drop every recipient of the issue (and the next batches
            # would keep doing so) until someone noticed; "deferred" keeps them queued, the error below
            # tells the operator exactly what to fix, and once the token is corrected the same sends go
            # through. The send engine's retry limit bounds how long they stay deferred.
            return all_results(recipients, "deferred", "Postmark rejected the server token (401): check PUBLISHER_API_KEY", kind="sender")
        if status == 422:
            code = self._error_code(resp)
            verdict, kind = postmark_error(code, self._message(resp))
            if len(recipients) == 1 and verdict == "failed":  # about the one address in the request
                return all_results(recipients, "failed", f"Postmark refused the message (422){detail}", kind=kind)
            if verdict == "failed":  # an address refused, but which of several? Nobody is failed on a guess
                return all_results(recipients, "deferred", f"Postmark refused an address of the request (422){detail}")
            if kind == "sender" and code in ACCOUNT_CODES:
                return all_results(recipients, "deferred", f"Postmark refused to send for this account (422){detail}", kind="sender")
            if kind == "":  # 100 maintenance, 429
                return all_results(recipients, "deferred", f"Postmark cannot take the request now (422){detail}")
            # Invalid JSON, too many messages, a malformed message, a 300 about the From...: our request,
            # which no subscriber would fix. Failing everybody in it would suppress them all.
            return all_results(recipients, "deferred", f"Postmark refused the request (422){detail}", kind="sender")
        if status == 413:
            # Never sent knowingly (send_batch keeps every request within MAX_REQUEST_BYTES): the limit has changed.
            error = (f"Postmark refused the request as too large (413){detail}, although it was within the documented "
                     f"{limit_text(self.max_request_bytes)} (MAX_REQUEST_BYTES in publisher/delivery/api/postmark.py)")
            return all_results(recipients, "deferred", error[:MAX_ERROR], kind="sender")
        # 404 (wrong base URL) and other surprises: nothing says these addresses are bad.
        return all_results(recipients, "deferred", f"unexpected answer from Postmark ({status}){detail}", kind=classify_http(status)[1])

    def _per_message(self, resp: requests.Response, recipients: Sequence[Recipient]) -> list[Result]:
        entries = json_body(resp)
        if not isinstance(entries, list):
            # Postmark accepted the request, but we cannot tell which messages it took. Deferred, as for a
            # timeout: a possible duplicate is better than a subscriber silently missing the issue.
            return all_results(recipients, "deferred", "Postmark answered 200 with an unreadable body")
        results = []
        for i, r in enumerate(recipients):
            entry = entries[i] if i < len(entries) else None
            if not isinstance(entry, dict):
                results.append(Result(r.subscriber_id, "deferred", "no result for this message in Postmark's answer"))
                continue
            code = _int(entry.get("ErrorCode", 0))
            if code == 0:
                results.append(Result(r.subscriber_id, "sent"))
                continue
            message = str(entry.get("Message", ""))
            error = self._scrub(f"Postmark error {code}: {message}")[:MAX_ERROR]
            status, kind = postmark_error(code, message)
            results.append(Result(r.subscriber_id, "deferred" if status == "sent" else status, error, kind=kind))
        return results

    def _error_code(self, resp: requests.Response) -> int | None:
        data = json_body(resp)
        return _int(data.get("ErrorCode")) if isinstance(data, dict) else None

    def _message(self, resp: requests.Response) -> str:
        data = json_body(resp)
        return str(data.get("Message", "")) if isinstance(data, dict) else ""

    def _detail(self, resp: requests.Response) -> str:
        """``: ErrorCode n: Message`` from a Postmark error body, or a short excerpt of whatever came back."""
        data = json_body(resp)
        if isinstance(data, dict) and ("Message" in data or "ErrorCode" in data):
            text = f"ErrorCode {data.get('ErrorCode')}: {data.get('Message', '')}"
        else:
            text = excerpt(resp)
        return as_detail(self._scrub(text))


def _int(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None
