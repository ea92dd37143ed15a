"""ResendAdapter against a real local HTTP server: the exact wire format, idempotency, and every kind of answer."""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections.abc import Iterator
from contextlib import closing, contextmanager
from typing import Any

import pytest

from publisher import __version__
from publisher.delivery.api import Recipient, Result
from publisher.delivery.api.resend import ResendAdapter

from .api_support import (
    RECIPIENTS,
    Respond,
    answer,
    assert_a_timeout_defers_all,
    assert_an_oversized_batch_is_refused,
    assert_close_releases_the_pool,
    assert_connection_refused_defers_all,
    assert_no_key,
    assert_personalised,
    by_id,
    lower,
    make_prepared,
    send_through,
)
from .servers import http_server, recording_server

KEY = "re_Secr3tKey_9f8e7d6c5b4a"

OK = {
    "data": [
        {"id": "ae2014de-c168-4c61-8267-70d2662a1ce1"},
        {"id": "faccb7a5-8a28-4e9a-ac64-8da1cc3bc1cb"},
        {"id": "2f7e0b1a-2b3c-4d5e-8f90-a1b2c3d4e5f6"},
    ]
}


def error(status: int, name: str, message: str, headers: dict[str, str] | None = None) -> Respond:
    return answer(status, {"statusCode": status, "name": name, "message": message}, headers)


def adapter_for(url: str, **kwargs: Any) -> closing[ResendAdapter]:
    return closing(ResendAdapter(KEY, base_url=url, **kwargs))


def send(respond: Respond, recipients: list[Recipient] = RECIPIENTS, **kwargs: Any) -> tuple[list[Result], list[dict[str, Any]]]:
    return send_through(adapter_for, respond, recipients, **kwargs)


# -- the wire format ----------------------------------------------------------------------------------


def test_wire_format_is_resends_batch_endpoint() -> None:
    results, requests = send(answer(200, OK))

    assert len(requests) == 1
    req = requests[0]
    assert req["method"] == "POST"
    assert req["path"] == "/emails/batch"
    headers = lower(req["headers"])
    assert headers["authorization"] == f"Bearer {KEY}"
    assert headers["content-type"] == "application/json"
    assert headers["user-agent"] == f"publisher/{__version__}"
    assert headers["x-batch-validation"] == "permissive"
    expected_key = hashlib.sha256(b"2026-W48\x002026-W48/1\x002026-W48/2\x002026-W48/3").hexdigest()
    assert headers["idempotency-key"] == f"publisher/{expected_key}"

    emails = json.loads(req["body"])
    assert isinstance(emails, list) and len(emails) == 3
    for email, r in zip(emails, RECIPIENTS):
        assert set(email) == {"from", "to", "subject", "html", "text", "reply_to", "headers"}
        assert email["from"] == "Example Research <news@example.org>"
        assert email["to"] == [r.email]
        assert email["subject"] == "Research digest — 27 November 2026"
        assert email["reply_to"] == "editor@example.org"

        i = r.subscriber_id
        assert_personalised(email["html"], email["text"], r, RECIPIENTS)

        assert email["headers"] == {
            "List-Id": "Research digest <digest.example.org>",
            "List-Unsubscribe": f"<https://example.org/unsubscribe?s={i}&t=tok{i}>, <mailto:news@example.org?subject=unsubscribe>",
            "List-Unsubscribe-Post": "List-Unsubscribe=One-Click",
            "Message-ID": f"<digest.2026-W48.{i:04x}@example.org>",
        }

    assert by_id(results) == {r.subscriber_id: Result(r.subscriber_id, "sent") for r in RECIPIENTS}


def test_optional_fields_and_extra_headers() -> None:
    with recording_server(answer(200, {"data": [{"id": "x"}]})) as (url, requests), adapter_for(url) as adapter:
        prepared = make_prepared(reply_to="", from_name="Example Research, Inc.", extra_headers={"X-Issue": "2026-W48"})
        results = adapter.send_batch(prepared, RECIPIENTS[:1])
    (email,) = json.loads(requests[0]["body"])
    assert "reply_to" not in email
    assert email["from"] == '"Example Research, Inc." <news@example.org>'
    assert email["headers"]["X-Issue"] == "2026-W48"
    assert results == [Result(1, "sent")]


def test_a_retried_batch_is_byte_identical_with_the_same_idempotency_key() -> None:
    """Resend answers a repeated key with the first answer instead of sending again; that needs the same key and payload."""
    with recording_server(answer(200, OK)) as (url, requests), adapter_for(url) as adapter:
        adapter.send_batch(make_prepared(), RECIPIENTS)
        adapter.send_batch(make_prepared(), list(reversed(RECIPIENTS)))  # the engine may rebuild the batch in another order
        adapter.send_batch(make_prepared(), RECIPIENTS[:2])
        adapter.send_batch(make_prepared(issue_id="2026-W49"), RECIPIENTS)

    keys = [lower(r["headers"])["idempotency-key"] for r in requests]
    assert keys[0] == keys[1]
    assert requests[0]["body"] == requests[1]["body"]
    assert len(set(keys)) == 3  # other recipients or another issue: another key
    assert all(len(k) <= 256 for k in keys)


def test_empty_batch_sends_nothing() -> None:
    results, requests = send(answer(200, {"data": []}), recipients=[])
    assert results == [] and requests == []


def test_oversized_batch_is_a_caller_error() -> None:
    assert_an_oversized_batch_is_refused(adapter_for, 100, KEY)


# -- per-email results (permissive batch validation) --------------------------------------------------


def test_permissive_errors_fail_those_emails_and_send_the_rest() -> None:
    message = "Invalid `to` field. The email address needs to follow the `email@example.com` format."
    body = {"data": [{"id": "a"}, {"id": "c"}], "errors": [{"index": 1, "message": message}]}
    results, requests = send(answer(200, body))

    got = by_id(results)
    assert got[1] == Result(1, "sent")
    assert got[3] == Result(3, "sent")
    assert got[2].status == "failed"
    assert "Invalid `to` field" in got[2].error
    # index 1 is the second email of the request we sent
    assert json.loads(requests[0]["body"])[1]["to"] == ["bob+news@example.net"]


def test_unreadable_200_is_deferred() -> None:
    def garbage(method: str, path: str, body: bytes) -> tuple[int, dict[str, str], bytes]:
        return 200, {"Content-Type": "text/html"}, b"<html>proxy page</html>"

    results, _ = send(garbage)
    assert len(results) == 3
    assert {r.status for r in results} == {"deferred"}


# -- whole-request answers ----------------------------------------------------------------------------


def test_429_defers_all_with_retry_after() -> None:
    results, _ = send(error(429, "rate_limit_exceeded", "Too many requests.", {"retry-after": "7", "ratelimit-reset": "1"}))
    assert len(results) == 3
    for r in results:
        assert r.status == "deferred"
        assert r.retry_after == 7
        assert "429" in r.error and "rate_limit_exceeded" in r.error


def test_429_falls_back_to_ratelimit_reset() -> None:
    results, _ = send(error(429, "rate_limit_exceeded", "Too many requests.", {"ratelimit-reset": "3"}))
    assert {(r.status, r.retry_after) for r in results} == {("deferred", 3)}


def test_500_defers_all() -> None:
    results, _ = send(error(500, "internal_server_error", "An unexpected error occurred."))
    assert len(results) == 3
    assert {r.status for r in results} == {"deferred"}
    assert all("500" in r.error for r in results)


@pytest.mark.parametrize(
    "name, message",
    [
        ("invalid_idempotent_request", "Same idempotency key used with a different request payload."),
        ("concurrent_idempotent_requests", "Same idempotency key used while original request is still in progress."),
    ],
)
def test_409_idempotency_conflicts_defer(name: str, message: str) -> None:
    results, _ = send(error(409, name, message))
    assert {r.status for r in results} == {"deferred"}
    assert all(message in r.error for r in results)


@pytest.mark.parametrize("status", [400, 422])
def test_validation_errors_defer_all_as_the_senders_problem_with_the_providers_message(status: int) -> None:
    """Our request, not their addresses: failing them would suppress the whole batch (issue 12, point 4)."""
    results, _ = send(error(status, "validation_error", "The `subject` field must be a `string`."))
    assert len(results) == 3
    assert {(r.status, r.kind) for r in results} == {("deferred", "sender")}
    assert all("The `subject` field must be a `string`." in r.error for r in results)


@pytest.mark.parametrize(
    "status, name, message",
    [
        (401, "missing_api_key", "Missing API key in the authorization header."),
        (403, "invalid_api_key", "API key is invalid."),
        (403, "validation_error", "The example.org domain is not verified. Please, add and verify your domain."),
    ],
)
def test_key_and_domain_refusals_are_configuration_errors_reported_as_deferred(status: int, name: str, message: str) -> None:
    results, _ = send(error(status, name, message))
    assert {r.status for r in results} == {"deferred"}
    assert all(message in r.error and "PUBLISHER_API_KEY" in r.error for r in results)


# -- network trouble ----------------------------------------------------------------------------------


def test_timeout_defers_all() -> None:
    assert_a_timeout_defers_all(send, json.dumps(OK).encode())


def test_connection_refused_defers_all() -> None:
    assert_connection_refused_defers_all(adapter_for, "Resend", KEY)


# -- the key and the session --------------------------------------------------------------------------


def test_key_never_in_repr_or_errors() -> None:
    with adapter_for("http://127.0.0.1:9") as adapter:
        assert KEY not in repr(adapter)
        assert "ResendAdapter(" in repr(adapter)

    for status in (400, 401, 403, 409, 422, 429, 500):
        results, _ = send(error(status, "some_error", f"key {KEY} says no"))
        assert results and all(r.error for r in results)
        assert_no_key(results, KEY)
    results, _ = send(answer(200, {"data": [], "errors": [{"index": 0, "message": f"Invalid `to` field, and the key was {KEY}"}]}))
    assert by_id(results)[1].status == "failed"
    assert_no_key(results, KEY)


def test_close_releases_the_connection_pool() -> None:
    with recording_server(answer(200, OK)) as (url, _):
        adapter = ResendAdapter(KEY, base_url=url)
        assert_close_releases_the_pool(adapter, url, lambda: adapter.send_batch(make_prepared(), RECIPIENTS))
        adapter.close()  # twice is harmless


# -- Idempotency-Key against a server that honours it as Resend documents ------------------------------


class ResendEmulator:
    """Resend's ``POST /emails/batch`` as https://resend.com/docs/dashboard/emails/idempotency-keys describes it.

    A key (1-256 characters) is remembered for 24 hours: the same key with the same body gets the first
    response again and sends nothing; with another body, ``409 invalid_idempotent_request``; while the first
    request is still being processed, ``409 concurrent_idempotent_requests``. ``delay`` holds each response
    back after the emails are queued, to lose it to a client timeout as a crash would.
    """

    def __init__(self, delay: float = 0.0) -> None:
        self.delay = delay
        self.sent: list[str] = []  # every email queued, by recipient
        self.seen: dict[str, tuple[bytes, bytes] | None] = {}  # key -> (body, response); None while in progress
        self.done = threading.Event()
        self.lock = threading.Lock()

    def __call__(self, method: str, path: str, body: bytes, headers: dict[str, str]) -> tuple[int, dict[str, str], bytes]:
        key = lower(headers).get("idempotency-key")
        if key is not None and not 1 <= len(key) <= 256:
            return self._error(400, "invalid_idempotency_key", "The key must be between 1-256 chars.")
        with self.lock:
            if key is not None and key in self.seen:
                first = self.seen[key]
                if first is None:
                    return self._error(409, "concurrent_idempotent_requests", "Same idempotency key used while original request is still in progress.")
                if first[0] != body:
                    return self._error(409, "invalid_idempotent_request", "Same idempotency key used with a different request payload.")
                return 200, {"Content-Type": "application/json"}, first[1]
            if key is not None:
                self.seen[key] = None
            emails = json.loads(body)
            ids = [{"id": f"{len(self.sent) + i:08x}-0000-4000-8000-000000000000"} for i in range(len(emails))]
            self.sent += [e["to"][0] for e in emails]
        response = json.dumps({"data": ids}).encode()
        time.sleep(self.delay)
        with self.lock:
            if key is not None:
                self.seen[key] = (body, response)
        self.done.set()
        return 200, {"Content-Type": "application/json"}, response

    @staticmethod
    def _error(status: int, name: str, message: str) -> tuple[int, dict[str, str], bytes]:
        return status, {"Content-Type": "application/json"}, json.dumps({"statusCode": status, "name": name, "message": message}).encode()


@contextmanager
def resend_server(emulator: ResendEmulator) -> Iterator[str]:
    """The emulator behind a real HTTP server on a free port (the recording server does not pass headers on)."""
    with http_server(lambda method, path, headers, body: emulator(method, path, body, headers)) as base:
        yield base


def test_a_batch_resent_after_a_crash_is_deduplicated_by_its_idempotency_key() -> None:
    """The first attempt is queued but its answer lost (the process died waiting); the restarted process
    rebuilds the batch, in another order, and sends it again: Resend replays the first answer, sends nothing."""
    emulator = ResendEmulator(delay=1.0)
    with resend_server(emulator) as url:
        with adapter_for(url, timeout=0.3) as before_the_crash:
            lost = before_the_crash.send_batch(make_prepared(), RECIPIENTS)
        assert {r.status for r in lost} == {"deferred"}  # outcome unknown
        assert emulator.done.wait(5)
        emulator.delay = 0.0
        with adapter_for(url) as after_the_restart:  # a new process: nothing carried over but the store
            again = after_the_restart.send_batch(make_prepared(), list(reversed(RECIPIENTS)))
    assert by_id(again) == {r.subscriber_id: Result(r.subscriber_id, "sent") for r in RECIPIENTS}
    assert sorted(emulator.sent) == sorted(r.email for r in RECIPIENTS)  # each exactly once
    assert len(emulator.seen) == 1


def test_the_key_is_the_same_across_processes_and_differs_per_batch_and_issue() -> None:
    key = ResendAdapter.idempotency_key
    assert key(make_prepared(), RECIPIENTS) == key(make_prepared(), list(reversed(RECIPIENTS)))
    assert key(make_prepared(), RECIPIENTS) != key(make_prepared(), RECIPIENTS[:2])
    assert key(make_prepared(), RECIPIENTS) != key(make_prepared(issue_id="2026-W49"), RECIPIENTS)
    assert 1 <= len(key(make_prepared(), RECIPIENTS)) <= 256  # Resend's limit


def test_the_same_key_with_a_re_rendered_batch_is_deferred_not_sent_twice() -> None:
    """A 409 invalid_idempotent_request (the issue was re-rendered between attempts) sends nothing again."""
    emulator = ResendEmulator()
    with resend_server(emulator) as url, adapter_for(url) as adapter:
        first = adapter.send_batch(make_prepared(), RECIPIENTS)
        second = adapter.send_batch(make_prepared(subject="Research digest, corrected"), RECIPIENTS)
    assert {r.status for r in first} == {"sent"}
    assert {(r.status, r.kind) for r in second} == {("deferred", "")}
    assert all("invalid_idempotent_request" in r.error for r in second)
    assert sorted(emulator.sent) == sorted(r.email for r in RECIPIENTS)


def test_a_retry_while_the_first_request_is_in_flight_is_deferred_not_sent_twice() -> None:
    emulator = ResendEmulator(delay=1.0)
    with resend_server(emulator) as url:
        with adapter_for(url, timeout=0.3) as adapter:
            adapter.send_batch(make_prepared(), RECIPIENTS)  # times out; the server is still at it
            racing = adapter.send_batch(make_prepared(), RECIPIENTS)
        assert emulator.done.wait(5)
    assert {r.status for r in racing} == {"deferred"}
    assert all("concurrent_idempotent_requests" in r.error for r in racing)
    assert len(emulator.sent) == 3
