"""Resend's batch API: ``POST /emails/batch``, up to 100 emails per request.

Wire format (https://resend.com/docs/api-reference/emails/send-batch-emails): a JSON array of email objects,
``Authorization: Bearer <key>``; success is ``200 {"data": [{"id": ...}, ...]}``. Errors are
``{"statusCode", "name", "message"}`` with the HTTP status (https://resend.com/docs/api-reference/errors).

Two documented features make a batch safe to hand back to the send engine:

- ``Idempotency-Key`` (https://resend.com/docs/dashboard/emails/idempotency-keys): Resend remembers a key for
  24 hours and answers a repeat with the first answer instead of sending again. Ours is derived from the
  issue and the batch's recipients, so the engine's retry of a timed-out batch cannot send it twice.
- ``x-batch-validation: permissive`` (https://resend.com/docs/dashboard/emails/batch-validation-modes): by
  default a batch is all-or-nothing, one invalid email rejecting the other 99; in permissive mode Resend
  queues the valid ones and lists the rest as ``"errors": [{"index": i, "message": ...}]``, ``index`` being
  the position in our request. Those about the ``to`` address are failed (a hard bounce); any other
  (a bad ``from``...) is ours, deferred with kind ``"sender"``; every other email of the batch is sent.

Limits (module constants, and attributes of the adapter a test may lower):

- 100 emails per request (https://resend.com/docs/api-reference/emails/send-batch-emails, "Trigger up to 100
  batch emails at once"): :data:`MAX_BATCH`.
- size: the batch endpoint's documentation gives no limit per request (and takes no attachments). The only
  size Resend documents is per email, "max 40MB per email, after Base64 encoding of the attachments"
  (https://resend.com/docs/api-reference/emails/send-email, ``attachments``). Rather than guess that a batch
  may be up to 100 times that, we hold the whole request to it: :data:`MAX_REQUEST_BYTES`, 40 MB of JSON body
  as it is sent, which also keeps every email in it under 40 MB. A batch over it is split in halves until
  every request fits (:func:`~._http.in_requests`), each with its own idempotency key (derived from its own
  recipients, so a retry of the same batch splits the same way and gets the same keys). An email alone over
  it is not sent: deferred, kind ``"sender"``, with an error naming the limit, the size and the fix.
- what Resend answers to a request over a size limit is not documented (its error list,
  https://resend.com/docs/api-reference/errors, names none): a 413 is reported as the limit having changed.

Whole-request refusals are never a verdict on the addresses: 401/403 (key, unverified domain) and
400/422 (``validation_error``, ``invalid_from_address``, ``missing_required_field``) are deferred with
kind ``"sender"``; 429, 5xx and 409 (an idempotency conflict) are deferred, transient.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from typing import Any

import requests

from ..classify import classify_http, resend_email_error
from . import Prepared, Recipient, Result
from ._http import (
    MAX_ERROR,
    MB,
    HttpAdapter,
    all_results,
    as_detail,
    excerpt,
    in_requests,
    json_body,
    limit_text,
    mailbox,
    retry_after,
    too_large,
)

MAX_BATCH = 100  # emails per request
MAX_REQUEST_BYTES = 40 * MB  # the request's body: Resend's per-email limit, held to the whole batch (see above)


class ResendAdapter(HttpAdapter):
    name = "resend"
    provider = "Resend"
    max_batch = MAX_BATCH
    max_request_bytes = MAX_REQUEST_BYTES

    def __init__(self, api_key: str, *, base_url: str = "https://api.resend.com", timeout: float = 30.0) -> None:
        headers = {"Content-Type": "application/json", "Authorization": f"Bearer {api_key}", "x-batch-validation": "permissive"}
        super().__init__(api_key, base_url=base_url, timeout=timeout, headers=headers)

    def __repr__(self) -> str:
        return f"ResendAdapter(base_url={self.base_url!r}, timeout={self.timeout!r})"

    # -- the request ---------------------------------------------------------------------------------

    @staticmethod
    def ordered(recipients: Sequence[Recipient]) -> list[Recipient]:
        """The batch in a canonical order, so the same set of recipients gives the same payload and key."""
        return sorted(recipients, key=lambda r: (r.idempotency_key, r.subscriber_id))

    @staticmethod
    def idempotency_key(prepared: Prepared, recipients: Sequence[Recipient]) -> str:
        """``publisher/<sha256>`` of the issue and the recipients' own keys (Resend allows 1-256 characters)."""
        h = hashlib.sha256(prepared.issue_id.encode("utf-8"))
        for r in ResendAdapter.ordered(recipients):
            h.update(b"\0" + r.idempotency_key.encode("utf-8"))
        return f"publisher/{h.hexdigest()}"

    def payload(self, prepared: Prepared, recipients: Sequence[Recipient]) -> list[dict[str, Any]]:
        sender = mailbox(prepared.from_name, prepared.from_address)
        emails = []
        for r in recipients:
            html, text = prepared.personalise(r)
            email: dict[str, Any] = {"from": sender, "to": [r.email], "subject": prepared.subject, "html": html, "text": text}
            if prepared.reply_to:
                email["reply_to"] = prepared.reply_to
            email["headers"] = prepared.headers(r)
            emails.append(email)
        return emails

    def send_batch(self, prepared: Prepared, recipients: Sequence[Recipient]) -> list[Result]:
        """Every recipient's email, in as few requests as Resend's limits allow (100 emails, 40 MB each).

        Each email is encoded once; a request's body is the JSON array of its emails, byte for byte what
        ``json.dumps`` of the whole list gives, so what is measured is what goes on the wire.
        """
        batch = self.ordered(recipients)  # errors[].index refers to the order within each request
        encoded = {id(r): json.dumps(email, ensure_ascii=False).encode("utf-8")
                   for r, email in zip(batch, self.payload(prepared, batch), strict=True)}
        url = f"{self.base_url}/emails/batch"

        def post(part: Sequence[Recipient], body: bytes) -> list[Result]:
            headers = {"Idempotency-Key": self.idempotency_key(prepared, part)}
            return self._post_batch(url, list(part), self._results, data=body, headers=headers)

        return in_requests(
            batch,
            max_batch=self.max_batch,
            limit=self.max_request_bytes,
            encode=lambda part: b"[" + b", ".join(encoded[id(r)] for r in part) + b"]",
            post=post,
            oversize=lambda size: too_large(self.provider, "the request", size, self.max_request_bytes),
        )

    # -- the answer ----------------------------------------------------------------------------------

    def _results(self, resp: requests.Response, batch: list[Recipient]) -> list[Result]:
        status = resp.status_code
        if status == 200:
            return self._per_email(resp, batch)
        detail = self._detail(resp)
        if status == 429:  # rate_limit_exceeded, daily_quota_exceeded
            wait = retry_after(resp.headers.get("retry-after"))
            if wait is None:  # documented next to retry-after: seconds until the window resets
                wait = retry_after(resp.headers.get("ratelimit-reset"))
            return all_results(batch, "deferred", f"Resend rate limit (429){detail}", wait)
        if status >= 500:
            return all_results(batch, "deferred", f"Resend server error ({status}){detail}")
        if status == 409:
            # concurrent_idempotent_requests: the first attempt is still in progress, its outcome unknown.
            # invalid_idempotent_request: the same key came with a different payload, i.e. the issue was
            # re-rendered between attempts; Resend forgets keys after 24 hours. Neither is the address's fault.
            return all_results(batch, "deferred", f"Resend idempotency conflict (409){detail}")
        if status in (401, 403):
            # A missing/invalid key or an unverified sending domain: configuration, not a verdict on any
            # subscriber. "failed" would drop every recipient for good; "deferred" keeps them queued, this
            # error tells the operator what to fix, and the engine's retry limit bounds the wait.
            error = f"Resend refused the API key or the sender ({status}){detail}: check PUBLISHER_API_KEY and the sending domain"
            return all_results(batch, "deferred", error, kind="sender")
        if status == 413:
            # Never sent knowingly (send_batch keeps every request within MAX_REQUEST_BYTES): the limit is lower than we hold.
            error = (f"Resend refused the request as too large (413){detail}, although it was within "
                     f"{limit_text(self.max_request_bytes)} (MAX_REQUEST_BYTES in publisher/delivery/api/resend.py)")
            return all_results(batch, "deferred", error[:MAX_ERROR], kind="sender")
        if status in (400, 422):
            # validation_error, invalid_from_address, missing_required_field, a domain not verified...: a
            # property of our request (per-email problems come back in errors[] in permissive mode), which
            # no subscriber would fix. Failing them would suppress the whole batch for our mistake.
            return all_results(batch, "deferred", f"Resend refused the request ({status}){detail}", kind="sender")
        return all_results(batch, "deferred", f"unexpected answer from Resend ({status}){detail}", kind=classify_http(status)[1])

    def _per_email(self, resp: requests.Response, batch: list[Recipient]) -> list[Result]:
        data = json_body(resp)
        if not isinstance(data, dict) or not isinstance(data.get("data"), list):
            # Resend accepted something; the idempotency key makes a retry of this exact batch safe.
            return all_results(batch, "deferred", "Resend answered 200 with an unreadable body")
        errors: dict[int, str] = {}
        for item in data.get("errors") or []:
            if isinstance(item, dict) and isinstance(item.get("index"), int) and 0 <= item["index"] < len(batch):
                errors[item["index"]] = str(item.get("message", "invalid email"))
        results = []
        for i, r in enumerate(batch):
            if i in errors:
                status, kind = resend_email_error(errors[i])
                error = self._scrub(f"Resend refused this email: {errors[i]}")[:MAX_ERROR]
                results.append(Result(r.subscriber_id, status, error, kind=kind))
            else:
                results.append(Result(r.subscriber_id, "sent"))
        return results

    def _detail(self, resp: requests.Response) -> str:
        """``: name: message`` from a Resend error body, or a short excerpt of whatever came back."""
        data = json_body(resp)
        if isinstance(data, dict) and "message" in data:
            text = f"{data['name']}: {data['message']}" if data.get("name") else str(data["message"])
        else:
            text = excerpt(resp)
        return as_detail(self._scrub(text))
