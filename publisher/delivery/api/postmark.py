"""Postmark's batch API: ``POST /email/batch``, up to 500 messages, one result per message.

Wire format (https://postmarkapp.com/developer/user-guide/send-email-with-api/batch-emails): the body is a
JSON array of message objects; Postmark answers ``200`` with an array of results in the same order,
``{"ErrorCode": 0, "Message": "OK", "MessageID": "...", "To": "..."}``, a non-zero ``ErrorCode`` being a
per-message refusal. A refusal of the whole request comes as ``401`` (bad token), ``422`` with one
``{"ErrorCode", "Message"}`` object, ``429`` (rate limit) or ``5xx``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime
from typing import Any

import requests

from ... import __version__
from . import Prepared, Recipient, Result, Status

# Per-message ErrorCodes that say "this address, for good": 406 inactive recipient (bounced, complained,
# suppressed on Postmark's side), 300 invalid email request (the address does not parse). Any other
# per-message code (rate limit, account or sender-signature state, Postmark-side errors) is deferred:
# nothing in it is this subscriber's fault, and the send engine bounds the retries.
RECIPIENT_FAILED_CODES = frozenset({300, 406})

# ErrorCodes in a whole-request 422 that describe the account or the server token, not the payload:
# 10 bad or missing token, 100 maintenance, 400/401 sender signature missing/unconfirmed, 405 not allowed
# to send (e.g. out of credits), 412 account pending, 413 account may not send, 429 rate limit. An operator
# fixes these in Postmark and the very same request then succeeds, so they are deferred. Every other code
# in a whole-request 422 (invalid JSON, too many messages, a malformed message...) is a property of the
# request itself: sending it again cannot succeed, so those are failed with Postmark's message.
ACCOUNT_STATE_CODES = frozenset({10, 100, 400, 401, 405, 412, 413, 429})

_SPECIALS = re.compile(r'[][\\()<>@,:;".]')
_MAX_ERROR = 500


class PostmarkAdapter:
    name = "postmark"
    max_batch = 500

    def __init__(
        self,
        api_key: str,
        *,
        base_url: str = "https://api.postmarkapp.com",
        message_stream: str = "broadcast",
        timeout: float = 30.0,
    ) -> None:
        self._api_key = api_key
        self.base_url = base_url.rstrip("/")
        self.message_stream = message_stream
        self.timeout = timeout
        self._session = requests.Session()
        self._session.headers.update(
            {
                "User-Agent": f"publisher/{__version__}",
                "Accept": "application/json",
                "Content-Type": "application/json",
                "X-Postmark-Server-Token": api_key,
            }
        )

    def __repr__(self) -> str:
        return f"PostmarkAdapter(base_url={self.base_url!r}, message_stream={self.message_stream!r}, timeout={self.timeout!r})"

    def close(self) -> None:
        self._session.close()

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
            messages.append(msg)
        return messages

    def send_batch(self, prepared: Prepared, recipients: Sequence[Recipient]) -> list[Result]:
        if not recipients:
            return []
        if len(recipients) > self.max_batch:
            raise ValueError(f"Postmark takes at most {self.max_batch} messages per batch, got {len(recipients)}")
        body = json.dumps(self.payload(prepared, recipients), ensure_ascii=False).encode("utf-8")
        try:
            resp = self._session.post(f"{self.base_url}/email/batch", data=body, timeout=self.timeout)
        except requests.Timeout:
            return _all(recipients, "deferred", f"Postmark did not answer within {self.timeout:g} s")
        except requests.RequestException as exc:
            return _all(recipients, "deferred", self._scrub(f"cannot reach Postmark at {self.base_url}: {type(exc).__name__}: {exc}"))
        try:
            return self._results(resp, recipients)
        finally:
            resp.close()

    # -- the answer ----------------------------------------------------------------------------------

    def _results(self, resp: requests.Response, recipients: Sequence[Recipient]) -> list[Result]:
        status = resp.status_code
        if status == 200:
            return self._per_message(resp, recipients)
        detail = self._detail(resp)
        if status == 429:
            return _all(recipients, "deferred", f"Postmark rate limit (429){detail}", retry_after(resp.headers.get("Retry-After")))
        if status >= 500:
            return _all(recipients, "deferred", f"Postmark server error ({status}){detail}")
        if status == 401:
            # A wrong or revoked server token is a configuration error, not a verdict on any subscriber.
            # Reporting "failed" would permanently drop every recipient of the issue (and the next batches
            # would keep doing so) until someone noticed; "deferred" keeps them queued, the error below
            # tells the operator exactly what to fix, and once the token is corrected the same sends go
            # through. The send engine's retry limit bounds how long they stay deferred.
            return _all(recipients, "deferred", "Postmark rejected the server token (401): check PUBLISHER_API_KEY")
        if status == 422:
            code = self._error_code(resp)
            if len(recipients) == 1 and code in RECIPIENT_FAILED_CODES:
                return _all(recipients, "failed", f"Postmark refused the message (422){detail}")
            if code in ACCOUNT_STATE_CODES:
                return _all(recipients, "deferred", f"Postmark refused to send for this account (422){detail}")
            return _all(recipients, "failed", f"Postmark refused the request (422){detail}")
        # 404 (wrong base URL), 413 and other surprises: nothing says these addresses are bad.
        return _all(recipients, "deferred", f"unexpected answer from Postmark ({status}){detail}")

    def _per_message(self, resp: requests.Response, recipients: Sequence[Recipient]) -> list[Result]:
        try:
            entries = resp.json()
        except ValueError:
            entries = None
        if not isinstance(entries, list):
            # Postmark accepted the request, but we cannot tell which messages it took. Deferred, as for a
            # timeout: a possible duplicate is better than a subscriber silently missing the issue.
            return _all(recipients, "deferred", "Postmark answered 200 with an unreadable body")
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
            error = self._scrub(f"Postmark error {code}: {entry.get('Message', '')}")[:_MAX_ERROR]
            results.append(Result(r.subscriber_id, "failed" if code in RECIPIENT_FAILED_CODES else "deferred", error))
        return results

    def _error_code(self, resp: requests.Response) -> int | None:
        try:
            data = resp.json()
        except ValueError:
            return None
        return _int(data.get("ErrorCode")) if isinstance(data, dict) else None

    def _detail(self, resp: requests.Response) -> str:
        """``: ErrorCode n: Message`` from a Postmark error body, or a short excerpt of whatever came back."""
        try:
            data = resp.json()
        except ValueError:
            data = None
        if isinstance(data, dict) and ("Message" in data or "ErrorCode" in data):
            text = f"ErrorCode {data.get('ErrorCode')}: {data.get('Message', '')}"
        else:
            text = resp.text.strip()[:200]
        return f": {self._scrub(text)}"[:_MAX_ERROR] if text else ""

    def _scrub(self, text: str) -> str:
        return text.replace(self._api_key, "[redacted]") if self._api_key else text


def mailbox(name: str, address: str) -> str:
    """``Name <addr>``, the name quoted when it holds RFC 5322 specials (Postmark refuses ``Joe, Jr <a@b>``)."""
    if not name:
        return address
    if _SPECIALS.search(name):
        name = '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return f"{name} <{address}>"


def retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header: delta-seconds or an HTTP date (RFC 9110 §10.2.3)."""
    if not value:
        return None
    value = value.strip()
    if re.fullmatch(r"\d+(\.\d+)?", value):
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return max(0.0, (when - datetime.now(timezone.utc)).total_seconds())


def _int(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def _all(recipients: Sequence[Recipient], status: Status, error: str, retry: float | None = None) -> list[Result]:
    return [Result(r.subscriber_id, status, error, retry) for r in recipients]
