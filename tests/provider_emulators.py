"""Postmark, Mailgun, SendGrid and Resend as their documentation describes them, behind real HTTP servers on free ports.

Enough of each provider to send a batch, to refuse one over its documented limits as the provider does,
and (Postmark, Mailgun) to find it again after a crash:

- Postmark: ``POST /email/batch`` (https://postmarkapp.com/developer/user-guide/send-email-with-api/batch-emails),
  with the ``Metadata`` limits of https://postmarkapp.com/support/article/1125-custom-metadata-faq (at most 10
  fields, names up to 20 characters, values up to 80), and the outbound message search
  ``GET /messages/outbound`` (https://postmarkapp.com/developer/api/messages-api): ``count`` (at most 500) and
  ``offset`` required, ``count + offset`` at most 10,000, filters ``recipient``, ``messagestream`` (the
  default transactional stream, "outbound", when absent) and one ``metadata_<field>=<value>``; answers
  ``{"TotalCount", "Messages"}``, newest first.
- Mailgun: ``POST /v3/{domain}/messages`` in batch mode (one message per ``to``, ``%recipient.<name>%``
  filled from ``recipient-variables`` in ``v:`` variables too), each recipient's ``accepted`` event with
  its ``user-variables``, and ``GET /v3/{domain}/events``
  (https://documentation.mailgun.com/docs/mailgun/api-reference/send/mailgun/events/get-v3-domain_name-events):
  ``begin`` and either ``end`` or ``ascending`` required, ``limit`` at most 300, filters ``event`` and
  ``recipient``, pages ``{"items", "paging": {"next", ...}}``.

- SendGrid: ``POST /v3/mail/send`` (https://www.twilio.com/docs/sendgrid/api-reference/mail-send/mail-send),
  ``Authorization: Bearer <key>``, ``202`` with no body, ``400 {"errors": [...]}`` for more than 1,000
  personalizations or recipients and for an address twice
  (https://www.twilio.com/docs/sendgrid/api-reference/mail-send/errors).
- Resend: ``POST /emails/batch`` (https://resend.com/docs/api-reference/emails/send-batch-emails), at most 100
  emails, with ``Idempotency-Key`` as https://resend.com/docs/dashboard/emails/idempotency-keys describes it.

Size limits: every request's body size is recorded (``requests[i]["size"]``), and a send request over the
provider's documented limit (``max_request_bytes``, the provider's figure by default) is refused as the
provider does, before anything in it is sent: Postmark ``413`` (https://postmarkapp.com/developer/api/overview)
over 50 MB, and per message the ``TextBody``/``HtmlBody`` limits of 5 MB and the message limit of 10 MB, counted
base64-encoded (https://postmarkapp.com/support/article/1056-what-are-the-attachment-and-email-size-limits);
SendGrid ``413`` at 30 MB and over ("must be less than 30MB",
https://docs.sendgrid.com/api-reference/mail-send/limitations); Mailgun ``413`` (an nginx page) over 25 MB
(https://documentation.mailgun.com/docs/mailgun/user-manual/sending-messages); Resend, which documents no
request limit, ``413`` over its per-email 40 MB (https://resend.com/docs/api-reference/emails/send-email).
``too_large`` counts those refusals.

Faults, set on the emulator: ``hang`` (send requests, counted from 1, that are accepted, recorded, and then
never answered, as when the process waiting for them is killed), ``search_down`` ("503" or "hang": the
search or events endpoint), ``lag`` (seconds before an accepted message shows in the search).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from math import ceil
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from .servers import http_server

Answer = tuple[int, dict[str, str], bytes] | None  # None: never answered
JSON = {"Content-Type": "application/json"}
MB = 1_000_000  # the providers' MB (the smaller reading; see publisher.delivery.api._http.MB)
NGINX_413 = (413, {"Content-Type": "text/html"},
             b"<html>\r\n<head><title>413 Request Entity Too Large</title></head>\r\n<body>\r\n<center><h1>413 Request Entity Too "
             b"Large</h1></center>\r\n<hr><center>nginx</center>\r\n</body>\r\n</html>\r\n")


def as_json(status: int, obj: Any) -> Answer:
    return status, JSON, json.dumps(obj).encode()


class Emulator:
    """What the emulators share: the faults, the counts, the size limit, and the requests seen (method, path, query,
    headers, and the body's size in bytes)."""

    MAX_REQUEST_BYTES = 0  # the provider's documented limit on a send request's body

    def __init__(self, key: str, *, hang: set[int] | None = None, lag: float = 0.0, max_request_bytes: int | None = None) -> None:
        self.key = key
        self.hang = hang or set()
        self.lag = lag
        self.max_request_bytes = self.MAX_REQUEST_BYTES if max_request_bytes is None else max_request_bytes
        self.search_down = ""  # "", "503" or "hang"
        self.lock = threading.Lock()
        self.sends = 0  # send requests received
        self.answered = 0  # send requests answered
        self.searches = 0
        self.too_large = 0  # send requests refused for their size
        self.batch_sizes: list[int] = []  # recipients in each send request taken (not refused as a whole), in order
        self.delivered: Counter[str] = Counter()  # messages accepted, by recipient address
        self.requests: list[dict[str, Any]] = []

    def __call__(self, method: str, target: str, headers: dict[str, str], body: bytes, base: str) -> Answer:
        url = urlsplit(target)
        query = parse_qsl(url.query, keep_blank_values=True)
        with self.lock:
            self.requests.append({"method": method, "path": url.path, "query": query, "headers": headers, "size": len(body)})
        lowered = {k.lower(): v for k, v in headers.items()}
        if not self.authorised(lowered):
            return self.unauthorised()
        return self.route(method, url.path, query, body, base, lowered)

    def posts(self) -> list[dict[str, Any]]:
        """The send requests seen (every POST), in order."""
        with self.lock:
            return [r for r in self.requests if r["method"] == "POST"]

    def authorised(self, headers: dict[str, str]) -> bool:
        raise NotImplementedError

    def unauthorised(self) -> Answer:
        raise NotImplementedError

    def route(self, method: str, path: str, query: list[tuple[str, str]], body: bytes, base: str, headers: dict[str, str]) -> Answer:
        raise NotImplementedError

    def over_limit(self, body: bytes) -> bool:
        """Whether a send request's body is over the provider's limit (counted as refused)."""
        if len(body) <= self.max_request_bytes:
            return False
        with self.lock:
            self.too_large += 1
        return True

    def _send_number(self) -> int:
        with self.lock:
            self.sends += 1
            return self.sends

    def _answered(self, answer: Answer) -> Answer:
        with self.lock:
            self.answered += 1
        return answer

    def _search(self) -> Answer | bool:
        """False to go on with the search; else what a search endpoint that is down answers."""
        with self.lock:
            self.searches += 1
        if self.search_down == "hang":
            return None
        if self.search_down:
            return 503, {"Content-Type": "text/html"}, b"<html><body><h1>503 Service Unavailable</h1></body></html>"
        return False

    def _visible(self, accepted_at: float) -> bool:
        return time.monotonic() >= accepted_at + self.lag


# -- Postmark ---------------------------------------------------------------------------------------------


class PostmarkEmulator(Emulator):
    MAX_REQUEST_BYTES = 50 * MB
    MAX_MESSAGE_BYTES = 10 * MB  # counted base64-encoded, as Postmark says it counts a message
    MAX_BODY_BYTES = 5 * MB  # TextBody, HtmlBody: each

    def __init__(self, key: str, **kwargs: Any) -> None:
        super().__init__(key, **kwargs)
        self.messages: list[dict[str, Any]] = []  # newest last; "_at" is when it was accepted (monotonic)

    def authorised(self, headers: dict[str, str]) -> bool:
        return hmac.compare_digest(headers.get("x-postmark-server-token", ""), self.key)

    def unauthorised(self) -> Answer:
        return as_json(401, {"ErrorCode": 10, "Message": "The Server Token you provided in the X-Postmark-Server-Token request header was invalid."})

    def route(self, method: str, path: str, query: list[tuple[str, str]], body: bytes, base: str, headers: dict[str, str]) -> Answer:
        if method == "POST" and path == "/email/batch":
            return self.batch(body)
        if method == "GET" and path == "/messages/outbound":
            down = self._search()
            return down if down is not False else self.search(query)  # type: ignore[return-value]
        return as_json(404, {"ErrorCode": 404, "Message": "Not found"})

    def batch(self, body: bytes) -> Answer:
        number = self._send_number()
        if self.over_limit(body):
            return as_json(413, {"ErrorCode": 413, "Message": "Payload Too Large: a batch request is limited to 50 MB."})
        try:
            messages = json.loads(body)
        except ValueError:
            return as_json(422, {"ErrorCode": 402, "Message": "Received invalid JSON input."})
        if not isinstance(messages, list) or len(messages) > 500:
            return as_json(422, {"ErrorCode": 300, "Message": "Invalid email request: a batch holds 1 to 500 messages."})
        entries = []
        with self.lock:
            self.batch_sizes.append(len(messages))
            for m in messages:
                refusal = _metadata_refusal(m.get("Metadata")) or self._size_refusal(m)
                if refusal:
                    entries.append({"ErrorCode": 300, "Message": refusal})
                    continue
                mid = str(uuid.uuid4())
                self.messages.append({
                    "MessageID": mid, "To": [{"Email": m["To"], "Name": None}], "Cc": [], "Bcc": [], "Recipients": [m["To"]],
                    "ReceivedAt": datetime.now(timezone.utc).isoformat(), "From": m["From"], "Subject": m["Subject"],
                    "Attachments": [], "Status": "Sent", "TrackOpens": m.get("TrackOpens", False), "TrackLinks": "None",
                    "Metadata": dict(m.get("Metadata") or {}), "MessageStream": m.get("MessageStream") or "outbound",
                    "_at": time.monotonic(),
                })
                self.delivered[m["To"]] += 1
                entries.append({"ErrorCode": 0, "Message": "OK", "MessageID": mid, "SubmittedAt": datetime.now(timezone.utc).isoformat(),
                                "To": m["To"]})
        if number in self.hang:
            return None
        return self._answered(as_json(200, entries))

    def _size_refusal(self, m: dict[str, Any]) -> str:
        """Postmark's refusal of one message for its size, or ""."""
        b64 = lambda n: 4 * ceil(n / 3)  # noqa: E731
        for field in ("HtmlBody", "TextBody"):
            if b64(len(str(m.get(field) or "").encode())) > self.MAX_BODY_BYTES:
                return f"Invalid email request: the {field} is larger than 5 MB."
        if b64(len(json.dumps(m, ensure_ascii=False).encode())) > self.MAX_MESSAGE_BYTES:
            return "Invalid email request: the message is larger than 10 MB."
        return ""

    def search(self, query: list[tuple[str, str]]) -> Answer:
        params = dict(query)
        try:
            count, offset = int(params["count"]), int(params["offset"])
        except (KeyError, ValueError):
            return as_json(422, {"ErrorCode": 701, "Message": "The 'count' and 'offset' parameters are required."})
        if not 0 < count <= 500 or offset < 0 or count + offset > 10_000:
            return as_json(422, {"ErrorCode": 701, "Message": "Count must be 1 to 500, and count + offset at most 10,000."})
        metadata = [(k.removeprefix("metadata_"), v) for k, v in query if k.startswith("metadata_")]
        if len(metadata) > 1:
            return as_json(422, {"ErrorCode": 701, "Message": "Only one metadata field can be searched at a time."})
        recipient = params.get("recipient", "").casefold()
        stream = params.get("messagestream", "outbound")
        with self.lock:
            found = [m for m in reversed(self.messages) if self._visible(m["_at"]) and m["MessageStream"] == stream
                     and (not recipient or recipient in [a.casefold() for a in m["Recipients"]])
                     and all(m["Metadata"].get(k) == v for k, v in metadata)]
        page = [{k: v for k, v in m.items() if not k.startswith("_")} for m in found[offset : offset + count]]
        return as_json(200, {"TotalCount": len(found), "Messages": page})


def _metadata_refusal(metadata: Any) -> str:
    """Postmark's refusal of a message's Metadata, or "" when it is within the documented limits."""
    if metadata is None:
        return ""
    if not isinstance(metadata, dict) or len(metadata) > 10:
        return "Invalid metadata content. Metadata is an object of at most 10 fields."
    if len({k.lower() for k in metadata}) != len(metadata):
        return "Invalid metadata content. Duplicate field names are not allowed."
    for k, v in metadata.items():
        if not isinstance(v, str) or len(k) > 20 or len(v) > 80:
            return (f"Invalid metadata content. Field names are limited to 20 characters and field values are limited to 80 "
                    f"characters in length. The '{k}' field in your metadata content exceeds these limits.")
    return ""


# -- Mailgun ----------------------------------------------------------------------------------------------


class MailgunEmulator(Emulator):
    MAX_REQUEST_BYTES = 25 * MB
    MAX_RECIPIENTS = 1000

    def __init__(self, key: str, domain: str, **kwargs: Any) -> None:
        super().__init__(key, **kwargs)
        self.domain = domain
        self.events: list[dict[str, Any]] = []  # oldest first; "_at" is when it happened (monotonic)
        self.pages: dict[str, tuple[dict[str, str], int]] = {}  # paging token -> (query, offset)

    def authorised(self, headers: dict[str, str]) -> bool:
        expected = "Basic " + base64.b64encode(f"api:{self.key}".encode()).decode("ascii")
        return hmac.compare_digest(headers.get("authorization", ""), expected)

    def unauthorised(self) -> Answer:
        return 401, {"Content-Type": "text/plain"}, b"Forbidden"

    def route(self, method: str, path: str, query: list[tuple[str, str]], body: bytes, base: str, headers: dict[str, str]) -> Answer:
        prefix = f"/v3/{self.domain}"
        if method == "POST" and path == f"{prefix}/messages":
            return self.messages(body)
        if method == "GET" and (path == f"{prefix}/events" or path.startswith(f"{prefix}/events/")):
            down = self._search()
            if down is not False:
                return down  # type: ignore[return-value]
            token = path.removeprefix(f"{prefix}/events").strip("/")
            return self.events_page(dict(query), token, base)
        return as_json(404, {"message": "Domain not found"})

    def messages(self, body: bytes) -> Answer:
        number = self._send_number()
        if self.over_limit(body):
            return NGINX_413
        fields = parse_qsl(body.decode("utf-8"), keep_blank_values=True)
        to = [v for k, v in fields if k == "to"]
        if not to or len(to) > self.MAX_RECIPIENTS:
            return as_json(400, {"message": "'to' parameter is missing" if not to else "Too many recipients"})
        try:
            variables = json.loads(dict(fields).get("recipient-variables", "{}"))
        except ValueError:
            return as_json(400, {"message": "'recipient-variables' parameter is not a valid JSON"})
        mid = f"<{time.strftime('%Y%m%d%H%M%S')}.{uuid.uuid4().hex[:12]}@{self.domain}>"
        user = [(k[2:], v) for k, v in fields if k.startswith("v:")]
        with self.lock:
            self.batch_sizes.append(len(to))
            for address in to:
                own = variables.get(address, {})
                self.events.append({
                    "event": "accepted", "id": uuid.uuid4().hex, "timestamp": time.time(), "recipient": address,
                    "message": {"headers": {"message-id": mid.strip("<>"), "to": address, "from": dict(fields).get("from", ""),
                                            "subject": _fill(dict(fields).get("subject", ""), own)}},
                    "user-variables": {name: _fill(value, own) for name, value in user},
                    "_at": time.monotonic(),
                })
                self.delivered[address] += 1
        if number in self.hang:
            return None
        return self._answered(as_json(200, {"id": mid, "message": "Queued. Thank you."}))

    def events_page(self, query: dict[str, str], token: str, base: str) -> Answer:
        if token:
            if token not in self.pages:
                return as_json(400, {"message": "Invalid page token"})
            query, offset = self.pages[token]
        else:
            offset = 0
            if "begin" not in query or ("end" not in query and query.get("ascending") not in ("yes", "no")):
                return as_json(400, {"message": "A time range needs 'begin' and either 'end' or 'ascending'"})
            if not 0 < int(query.get("limit", "300")) <= 300:
                return as_json(400, {"message": "'limit' must be 1 to 300"})
        limit, begin = int(query.get("limit", "300")), float(query["begin"])
        with self.lock:
            matching = [e for e in self.events if self._visible(e["_at"]) and e["timestamp"] >= begin
                        and e["event"] == query.get("event", e["event"])
                        and e["recipient"].casefold() == query.get("recipient", e["recipient"]).casefold()]
        if query.get("ascending") == "no":
            matching.reverse()
        items = [{k: v for k, v in e.items() if not k.startswith("_")} for e in matching[offset : offset + limit]]
        nxt = uuid.uuid4().hex
        self.pages[nxt] = (query, offset + len(items))
        url = f"{base}/v3/{self.domain}/events/{nxt}"
        return as_json(200, {"items": items, "paging": {"next": url, "previous": url, "first": url, "last": url}})


def _fill(value: str, variables: dict[str, Any]) -> str:
    """What Mailgun does with ``%recipient.<name>%`` for one recipient (an unknown name is left as it is)."""
    return re.sub(r"%recipient\.([\w.-]+)%", lambda m: str(variables.get(m.group(1), m.group(0))), value)


# -- SendGrid ---------------------------------------------------------------------------------------------


class SendGridEmulator(Emulator):
    MAX_REQUEST_BYTES = 30 * MB - 1  # "must be less than 30MB"
    MAX_PERSONALIZATIONS = MAX_RECIPIENTS = 1000

    def authorised(self, headers: dict[str, str]) -> bool:
        return hmac.compare_digest(headers.get("authorization", ""), f"Bearer {self.key}")

    def unauthorised(self) -> Answer:
        return as_json(401, {"errors": [{"message": "The provided authorization grant is invalid, expired, or revoked", "field": None,
                                         "help": None}]})

    def route(self, method: str, path: str, query: list[tuple[str, str]], body: bytes, base: str, headers: dict[str, str]) -> Answer:
        if method == "POST" and path == "/v3/mail/send":
            return self.send(body)
        return as_json(404, {"errors": [{"message": "resource not found", "field": None}]})

    def send(self, body: bytes) -> Answer:
        number = self._send_number()
        if self.over_limit(body):
            return NGINX_413
        try:
            data = json.loads(body)
        except ValueError:
            return as_json(400, {"errors": [{"message": "Bad Request", "field": None, "help": None}]})
        personalizations = data.get("personalizations") or []
        if not personalizations:
            return self._refuse("You must have at least one personalization.", "personalizations")
        if len(personalizations) > self.MAX_PERSONALIZATIONS:
            return self._refuse(f"The personalization block is limited to 1000 personalizations per API request. You have provided "
                                f"{len(personalizations)} personalizations. Please consider splitting this into multiple requests and "
                                "resending your request.", "personalizations")
        to = [t["email"] for p in personalizations for kind in ("to", "cc", "bcc") for t in p.get(kind) or []]
        if len(to) > self.MAX_RECIPIENTS:
            return self._refuse("There is a limit of 1000 total recipients (to + cc + bcc) per request.", "personalizations")
        if len({a.casefold() for a in to}) != len(to):
            return self._refuse("Each unique email address in the personalizations array should only be included once. You have "
                                "included email address more than once.", "personalizations")
        with self.lock:
            self.batch_sizes.append(len(to))
            for address in to:
                self.delivered[address] += 1
        if number in self.hang:
            return None
        return self._answered((202, {"X-Message-Id": uuid.uuid4().hex[:22]}, b""))

    @staticmethod
    def _refuse(message: str, field: str) -> Answer:
        return as_json(400, {"errors": [{"message": message, "field": field, "help": None}]})


# -- Resend -----------------------------------------------------------------------------------------------


class ResendEmulator(Emulator):
    """Resend's ``POST /emails/batch``, with ``Idempotency-Key`` as https://resend.com/docs/dashboard/emails/idempotency-keys
    describes it.

    A key (1-256 characters) is remembered for 24 hours: the same key with the same body gets the first response
    again and sends nothing; with another body, ``409 invalid_idempotent_request``; while the first request is still
    being processed, ``409 concurrent_idempotent_requests``. ``delay`` holds each response back after the emails are
    queued, to lose it to a client timeout as a crash would. ``done`` is set once a response is ready.
    """

    MAX_REQUEST_BYTES = 40 * MB
    MAX_EMAILS = 100

    def __init__(self, key: str, *, delay: float = 0.0, **kwargs: Any) -> None:
        super().__init__(key, **kwargs)
        self.delay = delay
        self.sent: list[str] = []  # every email queued, by recipient, in order
        self.seen: dict[str, tuple[str, bytes] | None] = {}  # key -> (sha256 of the body, response); None while in progress
        self.done = threading.Event()

    def authorised(self, headers: dict[str, str]) -> bool:
        return hmac.compare_digest(headers.get("authorization", ""), f"Bearer {self.key}")

    def unauthorised(self) -> Answer:
        return self._error(401, "validation_error", "API key is invalid")

    def route(self, method: str, path: str, query: list[tuple[str, str]], body: bytes, base: str, headers: dict[str, str]) -> Answer:
        if method == "POST" and path == "/emails/batch":
            return self.batch(body, headers.get("idempotency-key"))
        return self._error(404, "not_found", "The requested endpoint does not exist.")

    def batch(self, body: bytes, key: str | None) -> Answer:
        self._send_number()
        if self.over_limit(body):
            return self._error(413, "request_too_large", "Request Entity Too Large")
        if key is not None and not 1 <= len(key) <= 256:
            return self._error(400, "invalid_idempotency_key", "The key must be between 1-256 chars.")
        digest = hashlib.sha256(body).hexdigest()
        with self.lock:
            if key is not None and key in self.seen:
                first = self.seen[key]
                if first is None:
                    return self._error(409, "concurrent_idempotent_requests",
                                       "Same idempotency key used while original request is still in progress.")
                if first[0] != digest:
                    return self._error(409, "invalid_idempotent_request", "Same idempotency key used with a different request payload.")
                return 200, JSON, first[1]
            emails = json.loads(body)
            if not isinstance(emails, list) or not 1 <= len(emails) <= self.MAX_EMAILS:
                return self._error(422, "validation_error", "A batch holds 1 to 100 emails.")
            if key is not None:
                self.seen[key] = None
            ids = [{"id": f"{len(self.sent) + i:08x}-0000-4000-8000-000000000000"} for i in range(len(emails))]
            self.batch_sizes.append(len(emails))
            for e in emails:
                self.sent.append(e["to"][0])
                self.delivered[e["to"][0]] += 1
        response = json.dumps({"data": ids}).encode()
        time.sleep(self.delay)
        with self.lock:
            if key is not None:
                self.seen[key] = (digest, response)
        self.done.set()
        return self._answered((200, JSON, response))

    @staticmethod
    def _error(status: int, name: str, message: str) -> Answer:
        return as_json(status, {"statusCode": status, "name": name, "message": message})


# -- the server -------------------------------------------------------------------------------------------


@contextmanager
def serve(emulator: Emulator) -> Iterator[str]:
    """The emulator behind a real HTTP server on a free port of 127.0.0.1; yields its base URL."""

    def answer(method: str, path: str, headers: dict[str, str], body: bytes) -> tuple[int, dict[str, str], bytes] | None:
        return emulator(method, path, headers, body, f"http://{headers.get('Host')}")

    with http_server(answer) as base:
        yield base
