"""SendGrid's v3 Mail Send API: ``POST /v3/mail/send``, up to 1000 personalizations per request.

Wire format (https://www.twilio.com/docs/sendgrid/api-reference/mail-send/mail-send): a JSON object with
one ``personalizations`` entry per recipient (its own ``to``, ``headers``, ``substitutions`` and
``custom_args``), and the shared parts once: ``from``, ``reply_to``, ``subject``, ``content`` and
``headers``. SendGrid answers ``202 Accepted`` with an empty body; a refused request is ``400`` with
``{"errors": [{"message", "field", "help"}]}``, where ``field`` names the culprit, e.g.
``personalizations.3.to.0.email``; ``401``/``403`` for the key or the sender identity; ``429`` and ``5xx``.

Personalisation: the body is sent once per request. Our slots are replaced by SendGrid *substitution
tags* and each personalization carries its recipient's values in ``substitutions``. In v3, substitutions
apply to the plain ``content`` of a request that uses no template (and to legacy templates); they are not
used with dynamic (``d-``) templates, which take ``dynamic_template_data`` instead; we send no template, so
they apply. SendGrid substitutes the same tag in every part (text, HTML, subject), so the HTML and the text
part use *distinct* tags (``-publisher-<nonce>-html-email-`` / ``-publisher-<nonce>-text-email-``): the HTML
part gets HTML-escaped values (an address such as ``a&b@example.org`` must become ``a&amp;b@example.org``
there), the text part the raw ones. No tag is a substring of another.

Forgery: SendGrid replaces the tags we list, wherever they occur, so a tag a source could write
(``-publisher_email-``, a guess) would be filled with the recipient's data. Every tag therefore carries the
render's random nonce (``Prepared.slots``), which no source data can contain. SendGrid's own tags are
off: subscription tracking (whose ``<% %>`` tag would turn source text into a per-recipient SendGrid
unsubscribe link) is disabled in every request (``tracking_settings``; our own RFC 8058 link is in every
message), and we send no ``asm`` group and no template, so no other SendGrid tag applies.

Headers: those that differ per recipient (``List-Unsubscribe``, ``Message-ID``, and any other whose
value differs within the batch) go in each personalization's ``headers``; the rest (``List-Id``,
``List-Unsubscribe-Post``, extra headers) once, at the top level.

A ``400`` refuses the whole request: nobody in it was sent. One bad address must not cost the other 999
their issue, so the adapter isolates it (see :func:`publisher.delivery.api._http.isolate`): SendGrid's
``field`` points at the personalization's ``to``, so those recipients are failed (a hard bounce) and the
others go again at once in one request; when a ``400`` cannot be attributed to an address (``from``,
``content``, a personalization's headers...), the request itself is broken: nobody's address is at fault,
so everybody in it is deferred with SendGrid's message and kind ``"sender"`` (see
:mod:`publisher.delivery.classify`): a configuration error must never bounce the list. Nobody is ever
in two accepted requests: a recipient is only sent again after a ``400``, which means SendGrid took
nothing from that request.

Limits (module constants, and attributes of the adapter a test may lower), from
https://docs.sendgrid.com/api-reference/mail-send/limitations ("Limitations" of v3 Mail Send):

- "The total number of recipients must be no more than 1000" (to + cc + bcc across all personalizations;
  ours have one ``to`` each), and "The personalization block is limited to 1000 personalizations per API
  request" (https://www.twilio.com/docs/sendgrid/api-reference/mail-send/errors): :data:`MAX_BATCH`.
- "The total size of your email, including attachments, must be less than 30MB." Whether "your email" is
  the request or each message it makes is not said; the request is the larger of the two (it holds the
  content once and every personalization), so we hold the request to it, the smaller reading:
  :data:`MAX_REQUEST_BYTES`, measured on the JSON body exactly as it is sent, less than 30 MB. The content
  is sent once per request, so the body grows by a personalization (about 1 KB) per recipient: only a very
  large issue comes near it. A request over it is split in halves (see :func:`~._http.isolate`); a recipient
  alone over it is not sent: deferred, kind ``"sender"``, with an error naming the limit, the size and the
  fix. (Transfer encoding of the message SendGrid builds is not counted: SendGrid does not say it counts it.)
- a request over the limit is answered ``413 PAYLOAD TOO LARGE``, "The JSON payload you have included in your
  request is too large" (https://sendgrid.com/docs/API_Reference/Web_API_v3/Mail/errors.html); we never send
  one, and a 413 all the same is reported as the limit having changed.

SendGrid has no idempotency key: after a timeout SendGrid may have accepted the request, and the engine's
retry may then deliver twice. The alternative (reporting the batch sent) could silently drop it; the
stable per-subscriber ``Message-ID`` at least lets mail clients thread the duplicate.
"""

from __future__ import annotations

import html
import json
import re
import time
from collections.abc import Sequence
from typing import Any, Self

import requests

from ..classify import classify_http
from . import SLOT_NAMES, Prepared, Recipient, Result
from ._http import (
    MAX_ERROR,
    MB,
    Answer,
    HttpAdapter,
    as_detail,
    check_key,
    excerpt,
    isolate,
    json_body,
    limit_text,
    retry_after,
    split_headers,
    too_large,
)

MAX_BATCH = 1000  # personalizations (and recipients) per request
MAX_REQUEST_BYTES = 30 * MB - 1  # the request's body: "must be less than 30MB"


def tags(prepared: Prepared, part: str) -> dict[str, str]:
    """The substitution tags of one part ("text": raw values, "html": escaped ones), with the render's nonce."""
    return {key: f"-publisher-{prepared.slots.nonce}-{part}-{key}-" for key in SLOT_NAMES}


_FIELD_INDEX = re.compile(r"^personalizations\.(\d+)(?:\.(\w+)|$)")


class SendGridAdapter(HttpAdapter):
    name = "sendgrid"
    provider = "SendGrid"
    max_batch = MAX_BATCH
    max_request_bytes = MAX_REQUEST_BYTES

    def __init__(self, api_key: str, *, base_url: str = "https://api.sendgrid.com", timeout: float = 30.0) -> None:
        check_key(api_key, "SendGrid")
        super().__init__(api_key, base_url=base_url, timeout=timeout, headers={"Content-Type": "application/json"})

    def __repr__(self) -> str:
        return f"SendGridAdapter(base_url={self.base_url!r}, timeout={self.timeout!r})"

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the request ---------------------------------------------------------------------------------

    def payload(self, prepared: Prepared, recipients: Sequence[Recipient]) -> dict[str, Any]:
        text_tags, html_tags = tags(prepared, "text"), tags(prepared, "html")
        text, body = prepared.text, prepared.html
        for key, marker in prepared.slots.markers.items():
            text = text.replace(marker, text_tags[key])
            body = body.replace(marker, html_tags[key])
        shared, per_recipient = split_headers(prepared, recipients)
        personalizations = []
        for r in recipients:
            values = {"email": r.email, **r.links}
            subs = {text_tags[k]: values[k] for k in SLOT_NAMES}
            subs.update({html_tags[k]: html.escape(values[k]) for k in SLOT_NAMES})
            own = prepared.headers(r)
            personalizations.append(
                {
                    "to": [{"email": r.email}],
                    "substitutions": subs,
                    "headers": {name: own[name] for name in per_recipient},
                    "custom_args": {"subscriber_id": str(r.subscriber_id)},
                }
            )
        sender = {"email": prepared.from_address}
        if prepared.from_name:
            sender["name"] = prepared.from_name
        data: dict[str, Any] = {"personalizations": personalizations, "from": sender}
        if prepared.reply_to:
            data["reply_to"] = {"email": prepared.reply_to}
        data["subject"] = prepared.subject
        # text/plain must come before text/html; SendGrid refuses an empty value.
        data["content"] = [{"type": t, "value": v} for t, v in (("text/plain", text), ("text/html", body)) if v]
        if shared:
            data["headers"] = shared
        data["custom_args"] = {"issue_id": prepared.issue_id}
        # Its <% %> tag would make source text a per-recipient unsubscribe link; ours is in every message.
        data["tracking_settings"] = {"subscription_tracking": {"enable": False}}
        return data

    def send_batch(self, prepared: Prepared, recipients: Sequence[Recipient]) -> list[Result]:
        return isolate(recipients, self.max_batch, lambda part: self._send(prepared, part))

    def _send(self, prepared: Prepared, part: Sequence[Recipient]) -> Answer:
        body = json.dumps(self.payload(prepared, part), ensure_ascii=False).encode("utf-8")
        if len(body) > self.max_request_bytes:  # not sent: isolate() splits it, or defers a lone recipient with this error
            return Answer("too_large", too_large(self.provider, "the request", len(body), self.max_request_bytes))
        return self._post(
            f"{self.base_url}/v3/mail/send",
            data=body,
            headers={"Authorization": f"Bearer {self._api_key}"},
            allow_redirects=False,
            read=lambda resp: self._answer(resp, len(part)),
            unanswered=lambda error: Answer("deferred", error[:MAX_ERROR]),
        )

    # -- the answer ----------------------------------------------------------------------------------

    def _answer(self, resp: requests.Response, n: int) -> Answer:
        status = resp.status_code
        if 200 <= status < 300:
            return Answer("sent")
        errors = self._errors(resp)
        detail = self._detail(resp, errors)
        if status == 400:
            return self._refused(errors, detail, n)
        if status in (401, 403):
            # The key (missing, revoked, lacking the Mail Send scope) or the sender identity (403: "The from
            # address does not match a verified Sender Identity"): the operator's to fix, after which the
            # very same request succeeds. Failing would drop every subscriber for a configuration error.
            error = f"SendGrid refused the API key or the sender ({status}): check PUBLISHER_API_KEY and the sender identity{detail}"
            return Answer("deferred", error, fault="sender")
        if status == 429:
            return Answer("deferred", f"SendGrid rate limit (429){detail}", _retry_after(resp))
        if status >= 500:
            return Answer("deferred", f"SendGrid server error ({status}){detail}", _retry_after(resp))
        if status == 413:
            # Never sent knowingly (_send keeps every request under MAX_REQUEST_BYTES): the limit has changed.
            error = (f"SendGrid refused the request as too large (413){detail}, although it was under the documented "
                     f"{limit_text(self.max_request_bytes)} (MAX_REQUEST_BYTES in publisher/delivery/api/sendgrid.py)")
            return Answer("deferred", error[:MAX_ERROR], fault="sender")
        # 3xx/404 (wrong base URL) and other surprises: nothing says these addresses are bad.
        return Answer("deferred", f"unexpected answer from SendGrid ({status}){detail}", fault=classify_http(status)[1])

    def _refused(self, errors: list[dict[str, Any]], detail: str, n: int) -> Answer:
        """Attribute a 400 to personalizations, to the request as a whole, or to neither (then: split)."""
        bad: dict[int, list[str]] = {}
        whole = recipients = False
        for e in errors:
            where = e.get("field")
            what = self._scrub(str(e.get("message") or "Bad Request"))
            m = _FIELD_INDEX.match(where) if isinstance(where, str) else None
            if m and int(m.group(1)) < n and m.group(2) in ("to", "cc", "bcc"):
                bad.setdefault(int(m.group(1)), []).append(f"{where}: {what}")
            elif m and int(m.group(1)) < n:
                whole = True  # a personalization's headers, substitutions...: ours, not an address (nobody fails)
            elif not (isinstance(where, str) and where.startswith("personalizations")):
                whole = True  # from, subject, content, headers, or no field at all
            else:
                recipients = True  # about recipients, but which? Neither bad nor whole: split.
            # An unreadable 400 is split too, and a lone recipient so refused is not failed (recipient=False).
        error = f"SendGrid refused the request (400){detail}"
        if whole:
            return Answer("refused", error, whole=True)
        if bad:
            named = {i: f"SendGrid refused this address (400): {'; '.join(m)}"[:MAX_ERROR] for i, m in bad.items()}
            return Answer("refused", error, bad=named)
        return Answer("refused", error, recipient=recipients)

    def _errors(self, resp: requests.Response) -> list[dict[str, Any]]:
        data = json_body(resp)
        errors = data.get("errors") if isinstance(data, dict) else None
        return [e for e in errors if isinstance(e, dict)] if isinstance(errors, list) else []

    def _detail(self, resp: requests.Response, errors: list[dict[str, Any]]) -> str:
        if errors:
            text = "; ".join(f"{e['field']}: {e.get('message')}" if e.get("field") else str(e.get("message")) for e in errors)
        else:
            text = excerpt(resp)
        return as_detail(self._scrub(text))


def _retry_after(resp: requests.Response) -> float | None:
    """Retry-After, else SendGrid's ``X-RateLimit-Reset`` (a Unix time, when the window reopens)."""
    seconds = retry_after(resp.headers.get("Retry-After"))
    if seconds is not None:
        return seconds
    reset = resp.headers.get("X-RateLimit-Reset", "").strip()
    if re.fullmatch(r"\d+(\.\d+)?", reset):
        return max(0.0, float(reset) - time.time())
    return None
