"""SendGrid's v3 Mail Send API: ``POST /v3/mail/send``, up to 1000 personalizations per request.

Wire format (https://www.twilio.com/docs/sendgrid/api-reference/mail-send/mail-send): a JSON object with
one ``personalizations`` entry per recipient (its own ``to``, ``headers``, ``substitutions`` and
``custom_args``), and the shared parts once: ``from``, ``reply_to``, ``subject``, ``content`` and
``headers``. SendGrid answers ``202 Accepted`` with an empty body; a refused request is ``400`` with
``{"errors": [{"message", "field", "help"}]}``, where ``field`` names the culprit, e.g.
``personalizations.3.to.0.email``; ``401``/``403`` for the key or the sender identity; ``429`` and ``5xx``.

Personalisation: the body is sent once per request. Our placeholders (``PLACEHOLDERS``) are replaced by
SendGrid *substitution tags* and each personalization carries its recipient's values in
``substitutions``. In v3, substitutions apply to the plain ``content`` of a request that uses no
template (and to legacy templates); they are not used with dynamic (``d-``) templates, which take
``dynamic_template_data`` instead; we send no template, so they apply. SendGrid substitutes the same tag
in every part (text, HTML, subject), so the HTML and the text part use *distinct* tags
(``-publisher_email_html-`` / ``-publisher_email-``): the HTML part gets HTML-escaped values (an address
such as ``a&b@example.org`` must become ``a&amp;b@example.org`` there), the text part the raw ones. The
tags are namespaced so that ordinary prose never contains one, and no tag is a substring of another.

Headers: those that differ per recipient (``List-Unsubscribe``, ``Message-ID``, and any other whose
value differs within the batch) go in each personalization's ``headers``; the rest (``List-Id``,
``List-Unsubscribe-Post``, extra headers) once, at the top level.

A ``400`` refuses the whole request: nobody in it was sent. One bad address must not cost the other 999
their issue, so the adapter isolates it (see :func:`isolate`): SendGrid's ``field`` points at the
personalization, so those recipients are failed and the others go again at once in one request; when a
``400`` cannot be attributed to recipients (``from``, ``content``...), the request itself is broken and
everybody in it is failed with SendGrid's message. Nobody is ever in two accepted requests: a recipient
is only sent again after a ``400``, which means SendGrid took nothing from that request.

SendGrid has no idempotency key: after a timeout SendGrid may have accepted the request, and the engine's
retry may then deliver twice. The alternative (reporting the batch sent) could silently drop it; the
stable per-subscriber ``Message-ID`` at least lets mail clients thread the duplicate.
"""

from __future__ import annotations

import html
import json
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from math import ceil, log2
from typing import Any, Literal, Self

import requests

from ... import __version__
from . import PLACEHOLDERS, Prepared, Recipient, Result, Status

# The headers that differ per recipient (Prepared.headers); any other header whose value differs within
# a batch is also sent per personalization.
PER_RECIPIENT_HEADERS = ("List-Unsubscribe", "Message-ID")

# Substitution tags: one for the text part (raw value), one for the HTML part (escaped value).
TEXT_TAGS = {key: f"-publisher_{key}-" for key in PLACEHOLDERS}
HTML_TAGS = {key: f"-publisher_{key}_html-" for key in PLACEHOLDERS}

_FIELD_INDEX = re.compile(r"^personalizations\.(\d+)(?:\.|$)")
_MAX_ERROR = 500


@dataclass
class Answer:
    """What one request came to.

    ``refused`` (a 400): ``bad`` maps positions in the request to SendGrid's message for them;
    ``whole`` says the request itself was refused (nothing to isolate). Neither: split it in halves.
    """

    kind: Literal["sent", "deferred", "refused"]
    error: str = ""
    retry_after: float | None = None
    bad: dict[int, str] = field(default_factory=dict)
    whole: bool = False


class SendGridAdapter:
    name = "sendgrid"
    max_batch = 1000

    def __init__(self, api_key: str, *, base_url: str = "https://api.sendgrid.com", timeout: float = 30.0) -> None:
        if not api_key or any(c.isspace() or ord(c) < 32 for c in api_key):
            raise ValueError("the SendGrid API key is empty or contains whitespace or control characters (check PUBLISHER_API_KEY)")
        self._api_key = api_key
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self._session = requests.Session()
        self._session.headers.update(
            {
                "User-Agent": f"publisher/{__version__}",
                "Accept": "application/json",
                "Content-Type": "application/json",
            }
        )

    def __repr__(self) -> str:
        return f"SendGridAdapter(base_url={self.base_url!r}, timeout={self.timeout!r})"

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._session.close()

    # -- the request ---------------------------------------------------------------------------------

    def payload(self, prepared: Prepared, recipients: Sequence[Recipient]) -> dict[str, Any]:
        text, body = prepared.text, prepared.html
        for key, marker in PLACEHOLDERS.items():
            text = text.replace(marker, TEXT_TAGS[key])
            body = body.replace(marker, HTML_TAGS[key])
        shared, per_recipient = split_headers(prepared, recipients)
        personalizations = []
        for r in recipients:
            values = {"email": r.email, **r.links}
            subs = {TEXT_TAGS[k]: values[k] for k in PLACEHOLDERS}
            subs.update({HTML_TAGS[k]: html.escape(values[k]) for k in PLACEHOLDERS})
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
        return data

    def send_batch(self, prepared: Prepared, recipients: Sequence[Recipient]) -> list[Result]:
        return isolate(recipients, self.max_batch, lambda part: self._send(prepared, part))

    def _send(self, prepared: Prepared, part: Sequence[Recipient]) -> Answer:
        body = json.dumps(self.payload(prepared, part), ensure_ascii=False).encode("utf-8")
        try:
            resp = self._session.post(
                f"{self.base_url}/v3/mail/send",
                data=body,
                headers={"Authorization": f"Bearer {self._api_key}"},
                timeout=self.timeout,
                allow_redirects=False,
            )
        except requests.Timeout:
            return Answer("deferred", f"SendGrid did not answer within {self.timeout:g} s")
        except requests.RequestException as exc:
            return Answer("deferred", self._scrub(f"cannot reach SendGrid at {self.base_url}: {type(exc).__name__}: {exc}")[:_MAX_ERROR])
        try:
            return self._answer(resp, len(part))
        finally:
            resp.close()

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
            return Answer("deferred", error)
        if status == 429:
            return Answer("deferred", f"SendGrid rate limit (429){detail}", _retry_after(resp))
        if status >= 500:
            return Answer("deferred", f"SendGrid server error ({status}){detail}", _retry_after(resp))
        # 3xx/404 (wrong base URL), 413 and other surprises: nothing says these addresses are bad.
        return Answer("deferred", f"unexpected answer from SendGrid ({status}){detail}")

    def _refused(self, errors: list[dict[str, Any]], detail: str, n: int) -> Answer:
        """Attribute a 400 to personalizations, to the request as a whole, or to neither (then: split)."""
        bad: dict[int, list[str]] = {}
        whole = False
        for e in errors:
            where = e.get("field")
            what = self._scrub(str(e.get("message") or "Bad Request"))
            m = _FIELD_INDEX.match(where) if isinstance(where, str) else None
            if m and int(m.group(1)) < n:
                bad.setdefault(int(m.group(1)), []).append(f"{where}: {what}")
            elif not (isinstance(where, str) and where.startswith("personalizations")):
                whole = True  # from, subject, content, headers, or no field at all
            # else: about recipients, but which? Neither bad nor whole: split. So is an unreadable 400.
        error = f"SendGrid refused the request (400){detail}"
        if whole:
            return Answer("refused", error, whole=True)
        if bad:
            named = {i: f"SendGrid refused this address (400): {'; '.join(m)}"[:_MAX_ERROR] for i, m in bad.items()}
            return Answer("refused", error, bad=named)
        return Answer("refused", error)

    def _errors(self, resp: requests.Response) -> list[dict[str, Any]]:
        try:
            data = resp.json()
        except ValueError:
            return []
        errors = data.get("errors") if isinstance(data, dict) else None
        return [e for e in errors if isinstance(e, dict)] if isinstance(errors, list) else []

    def _detail(self, resp: requests.Response, errors: list[dict[str, Any]]) -> str:
        if errors:
            text = "; ".join(f"{e['field']}: {e.get('message')}" if e.get("field") else str(e.get("message")) for e in errors)
        else:
            text = resp.text.strip()[:200]
        return f": {self._scrub(text)}"[:_MAX_ERROR] if text else ""

    def _scrub(self, text: str) -> str:
        return text.replace(self._api_key, "[redacted]")


# -- shared with mailgun.py ------------------------------------------------------------------------------


def split_headers(prepared: Prepared, recipients: Sequence[Recipient]) -> tuple[dict[str, str], list[str]]:
    """The headers common to the whole batch (name -> value), and the names that must be set per recipient."""
    if not recipients:
        return {}, []
    first, *rest = [prepared.headers(r) for r in recipients]
    varying = [n for n in first if n in PER_RECIPIENT_HEADERS or any(h.get(n) != first[n] for h in rest)]
    return {n: v for n, v in first.items() if n not in varying}, varying


def split_budget(n: int, max_batch: int) -> int:
    """Requests one ``send_batch`` may make: one per chunk, plus enough to isolate two bad addresses by bisection."""
    chunks = ceil(n / max_batch)
    return chunks + 4 * max(1, ceil(log2(max(2, min(n, max_batch)))))


def isolate(recipients: Sequence[Recipient], max_batch: int, send: Callable[[Sequence[Recipient]], Answer]) -> list[Result]:
    """Send ``recipients`` in requests of at most ``max_batch``, isolating addresses a 400 refuses.

    A provider that takes a batch as a whole refuses it as a whole: one invalid address and the request is
    a ``400``, nobody sent. Reporting everybody failed would punish the valid ones; reporting them deferred
    would not help either, since the engine would retry the same batch and get the same ``400`` until its
    attempts ran out. So a refused request is narrowed down here, without ever sending anything twice (a
    recipient is only in a new request after a ``400``, i.e. after the provider took nothing):

    - the provider named the culprits (SendGrid's ``personalizations.N``): they fail, the rest goes again;
    - the request itself is broken (a bad ``from``...): everybody in it fails with the provider's message;
    - otherwise (Mailgun: "'to' parameter is not a valid address", without saying which): split in halves,
      depth first, so the first bad address is isolated within 1 + 2·log2(n) requests; a lone recipient
      refused is failed.

    The number of requests is bounded (:func:`split_budget`): what is left when it runs out is reported
    deferred, untried, and the engine's next attempt goes on with it (without the ones already failed).
    A deferral (429, 5xx, timeout...) stops the whole call: the rest is deferred without hammering the API.
    Duplicate addresses (case-insensitive) in one batch are deferred, to go in another request: providers
    refuse (SendGrid) or merge (Mailgun) them.
    """
    results: list[Result] = []
    seen: set[str] = set()
    todo: list[Recipient] = []
    for r in recipients:
        if r.email.casefold() in seen:
            results.append(Result(r.subscriber_id, "deferred", "the same address is earlier in this batch: it must go in another request"))
        else:
            seen.add(r.email.casefold())
            todo.append(r)
    stack = [todo[i : i + max_batch] for i in range(0, len(todo), max_batch)][::-1]
    budget = split_budget(len(todo), max_batch)
    while stack:
        part = stack.pop()
        if budget == 0:
            results += _all(part, "deferred", "not attempted: the requests allowed for isolating refused addresses ran out; retry")
            continue
        budget -= 1
        answer = send(part)
        if answer.kind == "sent":
            results += _all(part, "sent")
        elif answer.kind == "deferred":
            results += _all(part, "deferred", answer.error, answer.retry_after)
            for rest in stack:
                results += _all(rest, "deferred", f"not attempted: {answer.error}"[:_MAX_ERROR], answer.retry_after)
            stack.clear()
        elif answer.bad:
            results += [Result(r.subscriber_id, "failed", answer.bad[i]) for i, r in enumerate(part) if i in answer.bad]
            if others := [r for i, r in enumerate(part) if i not in answer.bad]:
                stack.append(others)
        elif answer.whole or len(part) == 1:
            results += _all(part, "failed", answer.error)
        else:
            mid = len(part) // 2
            stack += [part[mid:], part[:mid]]  # the first half is tried first
    return results


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
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


def _retry_after(resp: requests.Response) -> float | None:
    """Retry-After, else SendGrid's ``X-RateLimit-Reset`` (a Unix time, when the window reopens)."""
    seconds = retry_after(resp.headers.get("Retry-After"))
    if seconds is not None:
        return seconds
    reset = resp.headers.get("X-RateLimit-Reset", "").strip()
    if re.fullmatch(r"\d+(\.\d+)?", reset):
        return max(0.0, float(reset) - time.time())
    return None


def _all(recipients: Sequence[Recipient], status: Status, error: str = "", retry: float | None = None) -> list[Result]:
    return [Result(r.subscriber_id, status, error, retry) for r in recipients]
