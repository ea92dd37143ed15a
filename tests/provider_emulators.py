"""Postmark and Mailgun as their documentation describes them, behind real HTTP servers on free ports.

Enough of each provider to send a batch and to find it again after a crash:

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

Faults, set on the emulator: ``hang`` (send requests, counted from 1, that are accepted, recorded, and then
never answered, as when the process waiting for them is killed), ``search_down`` ("503" or "hang": the
search or events endpoint), ``lag`` (seconds before an accepted message shows in the search).
"""

from __future__ import annotations

import base64
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
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from .servers import http_server

Answer = tuple[int, dict[str, str], bytes] | None  # None: never answered
JSON = {"Content-Type": "application/json"}


def as_json(status: int, obj: Any) -> Answer:
    return status, JSON, json.dumps(obj).encode()


class Emulator:
    """What both emulators share: the faults, the counts, and the requests seen (method, path, query, headers)."""

    def __init__(self, key: str, *, hang: set[int] | None = None, lag: float = 0.0) -> None:
        self.key = key
        self.hang = hang or set()
        self.lag = lag
        self.search_down = ""  # "", "503" or "hang"
        self.lock = threading.Lock()
        self.sends = 0  # send requests received
        self.answered = 0  # send requests answered
        self.searches = 0
        self.delivered: Counter[str] = Counter()  # messages accepted, by recipient address
        self.requests: list[dict[str, Any]] = []

    def __call__(self, method: str, target: str, headers: dict[str, str], body: bytes, base: str) -> Answer:
        url = urlsplit(target)
        query = parse_qsl(url.query, keep_blank_values=True)
        with self.lock:
            self.requests.append({"method": method, "path": url.path, "query": query, "headers": headers})
        if not self.authorised({k.lower(): v for k, v in headers.items()}):
            return self.unauthorised()
        return self.route(method, url.path, query, body, base)

    def authorised(self, headers: dict[str, str]) -> bool:
        raise NotImplementedError

    def unauthorised(self) -> Answer:
        raise NotImplementedError

    def route(self, method: str, path: str, query: list[tuple[str, str]], body: bytes, base: str) -> Answer:
        raise NotImplementedError

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
    def __init__(self, key: str, **kwargs: Any) -> None:
        super().__init__(key, **kwargs)
        self.messages: list[dict[str, Any]] = []  # newest last; "_at" is when it was accepted (monotonic)

    def authorised(self, headers: dict[str, str]) -> bool:
        return hmac.compare_digest(headers.get("x-postmark-server-token", ""), self.key)

    def unauthorised(self) -> Answer:
        return as_json(401, {"ErrorCode": 10, "Message": "The Server Token you provided in the X-Postmark-Server-Token request header was invalid."})

    def route(self, method: str, path: str, query: list[tuple[str, str]], body: bytes, base: str) -> Answer:
        if method == "POST" and path == "/email/batch":
            return self.batch(body)
        if method == "GET" and path == "/messages/outbound":
            down = self._search()
            return down if down is not False else self.search(query)  # type: ignore[return-value]
        return as_json(404, {"ErrorCode": 404, "Message": "Not found"})

    def batch(self, body: bytes) -> Answer:
        number = self._send_number()
        try:
            messages = json.loads(body)
        except ValueError:
            return as_json(422, {"ErrorCode": 402, "Message": "Received invalid JSON input."})
        if not isinstance(messages, list) or len(messages) > 500:
            return as_json(422, {"ErrorCode": 300, "Message": "Invalid email request: a batch holds 1 to 500 messages."})
        entries = []
        with self.lock:
            for m in messages:
                refusal = _metadata_refusal(m.get("Metadata"))
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

    def route(self, method: str, path: str, query: list[tuple[str, str]], body: bytes, base: str) -> Answer:
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
        fields = parse_qsl(body.decode("utf-8"), keep_blank_values=True)
        to = [v for k, v in fields if k == "to"]
        if not to or len(to) > 1000:
            return as_json(400, {"message": "'to' parameter is missing" if not to else "Too many recipients"})
        try:
            variables = json.loads(dict(fields).get("recipient-variables", "{}"))
        except ValueError:
            return as_json(400, {"message": "'recipient-variables' parameter is not a valid JSON"})
        mid = f"<{time.strftime('%Y%m%d%H%M%S')}.{uuid.uuid4().hex[:12]}@{self.domain}>"
        user = [(k[2:], v) for k, v in fields if k.startswith("v:")]
        with self.lock:
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


# -- the server -------------------------------------------------------------------------------------------


@contextmanager
def serve(emulator: Emulator) -> Iterator[str]:
    """The emulator behind a real HTTP server on a free port of 127.0.0.1; yields its base URL."""

    def answer(method: str, path: str, headers: dict[str, str], body: bytes) -> tuple[int, dict[str, str], bytes] | None:
        return emulator(method, path, headers, body, f"http://{headers.get('Host')}")

    with http_server(answer) as base:
        yield base
