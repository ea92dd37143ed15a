"""ResendAdapter against a real local HTTP server: the exact wire format, idempotency, and every kind of answer."""

from __future__ import annotations

import hashlib
import json
from contextlib import closing
from typing import Any

import pytest

from publisher import __version__
from publisher.delivery.api import Recipient, Result
from publisher.delivery.api._http import MB
from publisher.delivery.api.resend import MAX_REQUEST_BYTES, ResendAdapter

from .api_support import (
    RECIPIENTS,
    Respond,
    answer,
    assert_a_timeout_defers_all,
    assert_close_releases_the_pool,
    assert_connection_refused_defers_all,
    assert_each_sent_once,
    assert_no_key,
    assert_personalised,
    by_id,
    digest_html,
    lower,
    make_prepared,
    make_recipient,
    send_through,
)
from .provider_emulators import ResendEmulator, serve
from .servers import recording_server

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


# -- Resend's limits: 100 emails per request; 40 MB, its per-email limit, held to the whole request ----------


def readers(n: int) -> list[Recipient]:
    return [make_recipient(i, f"reader{i}@example.com") for i in range(1, n + 1)]


def test_101_emails_go_in_two_requests_of_100_and_1_each_with_its_own_key() -> None:
    rs = readers(101)
    emulator = ResendEmulator(KEY)
    with serve(emulator) as url, adapter_for(url) as adapter:
        results = adapter.send_batch(make_prepared(), rs)
    assert {r.status for r in results} == {"sent"} and len(by_id(results)) == 101
    assert emulator.batch_sizes == [100, 1]
    assert len(emulator.seen) == 2  # two idempotency keys
    assert_each_sent_once(emulator.delivered, rs)


def test_100_emails_of_a_450_kb_digest_go_in_requests_under_40_mb_at_the_real_limit() -> None:
    p = make_prepared(html=digest_html(450_000))
    rs = readers(100)
    emulator = ResendEmulator(KEY)  # a 413 over 40 MB
    with serve(emulator) as url, adapter_for(url) as adapter:
        assert adapter.max_request_bytes == MAX_REQUEST_BYTES == 40 * MB
        results = adapter.send_batch(p, rs)
        again = adapter.send_batch(p, list(reversed(rs)))  # a retry: split the same way, the same keys, nothing sent twice
    sizes = [r["size"] for r in emulator.posts()]
    assert sum(sizes[:2]) > 45 * MB and len(sizes) == 4 and max(sizes) <= 40 * MB and emulator.too_large == 0
    assert emulator.batch_sizes == [50, 50] and len(emulator.seen) == 2
    assert {r.status for r in results + again} == {"sent"} and len(by_id(results)) == 100
    assert_each_sent_once(emulator.delivered, rs)


def test_an_email_over_40_mb_is_deferred_with_no_request_at_the_real_limit() -> None:
    emulator = ResendEmulator(KEY)
    with serve(emulator) as url, adapter_for(url) as adapter:
        results = adapter.send_batch(make_prepared(html=make_prepared().html + "x" * (40 * MB)), RECIPIENTS[:2])
    assert {(r.status, r.kind) for r in results} == {("deferred", "sender")} and len(results) == 2
    assert results[0].error.startswith("too large to send: the request comes to 40.0 MB (40,00")
    assert "over Resend's 40 MB request size limit; nothing was sent to them" in results[0].error
    assert "[digest].max_items" in results[0].error
    assert emulator.posts() == [] and not emulator.delivered


def test_an_email_alone_over_a_lowered_limit_is_deferred_and_the_others_are_sent() -> None:
    rs = readers(9)
    rs[2].links["unsubscribe_url"] += "&x=" + "y" * 6000
    with serve(ResendEmulator(KEY)) as url, adapter_for(url) as probe:
        one = len(json.dumps(probe.payload(make_prepared(), rs[:1]), ensure_ascii=False).encode())
    limit = 3 * one + 200  # three ordinary emails per request
    emulator = ResendEmulator(KEY, max_request_bytes=limit)
    with serve(emulator) as url, adapter_for(url) as adapter:
        adapter.max_request_bytes = limit
        results = by_id(adapter.send_batch(make_prepared(), rs))
    assert (results[3].status, results[3].kind) == ("deferred", "sender")
    assert "over Resend's" in results[3].error and "for this recipient alone" in results[3].error
    assert all(r.status == "sent" for i, r in results.items() if i != 3)
    sizes = [r["size"] for r in emulator.posts()]
    assert len(sizes) >= 3 and max(sizes) <= limit and emulator.too_large == 0
    assert_each_sent_once(emulator.delivered, rs, but=frozenset({rs[2].email}))


def test_a_413_says_the_limit_has_changed() -> None:
    results, _ = send(error(413, "request_too_large", "Request Entity Too Large"))
    assert {(r.status, r.kind) for r in results} == {("deferred", "sender")}
    assert "too large (413)" in results[0].error and "MAX_REQUEST_BYTES" in results[0].error


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


def test_a_batch_resent_after_a_crash_is_deduplicated_by_its_idempotency_key() -> None:
    """The first attempt is queued but its answer lost (the process died waiting); the restarted process
    rebuilds the batch, in another order, and sends it again: Resend replays the first answer, sends nothing."""
    emulator = ResendEmulator(KEY, delay=1.0)
    with serve(emulator) as url:
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
    emulator = ResendEmulator(KEY)
    with serve(emulator) as url, adapter_for(url) as adapter:
        first = adapter.send_batch(make_prepared(), RECIPIENTS)
        second = adapter.send_batch(make_prepared(subject="Research digest, corrected"), RECIPIENTS)
    assert {r.status for r in first} == {"sent"}
    assert {(r.status, r.kind) for r in second} == {("deferred", "")}
    assert all("invalid_idempotent_request" in r.error for r in second)
    assert sorted(emulator.sent) == sorted(r.email for r in RECIPIENTS)


def test_a_retry_while_the_first_request_is_in_flight_is_deferred_not_sent_twice() -> None:
    emulator = ResendEmulator(KEY, delay=1.0)
    with serve(emulator) as url:
        with adapter_for(url, timeout=0.3) as adapter:
            adapter.send_batch(make_prepared(), RECIPIENTS)  # times out; the server is still at it
            racing = adapter.send_batch(make_prepared(), RECIPIENTS)
        assert emulator.done.wait(5)
    assert {r.status for r in racing} == {"deferred"}
    assert all("concurrent_idempotent_requests" in r.error for r in racing)
    assert len(emulator.sent) == 3
