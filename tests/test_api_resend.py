"""ResendAdapter against a real local HTTP server: the exact wire format, idempotency, and every kind of answer."""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from publisher import __version__
from publisher.delivery.api import Prepared, Recipient, Result
from publisher.delivery.api.resend import ResendAdapter
from publisher.digest.render import PLACEHOLDERS

from .servers import free_port, recording_server

KEY = "re_Secr3tKey_9f8e7d6c5b4a"

Respond = Callable[[str, str, bytes], tuple[int, dict[str, str], bytes]]


def make_prepared(**overrides: Any) -> Prepared:
    p = PLACEHOLDERS
    fields: dict[str, Any] = {
        "issue_id": "2026-W48",
        "subject": "Research digest — 27 November 2026",
        "from_name": "Example Research",
        "from_address": "news@example.org",
        "reply_to": "editor@example.org",
        "html": (
            f'<p>Sent to {p["email"]}.</p><p><a href="{p["unsubscribe_url"]}">Unsubscribe</a> · '
            f'<a href="{p["preferences_url"]}">Preferences</a></p>'
        ),
        "text": f"Sent to {p['email']}.\nUnsubscribe: {p['unsubscribe_url']}\nPreferences: {p['preferences_url']}\n",
        "list_id": "Research digest <digest.example.org>",
    }
    fields.update(overrides)
    return Prepared(**fields)


def make_recipient(i: int, email: str) -> Recipient:
    return Recipient(
        subscriber_id=i,
        email=email,
        message_id=f"<digest.2026-W48.{i:04x}@example.org>",
        links={
            "unsubscribe_url": f"https://example.org/unsubscribe?s={i}&t=tok{i}",
            "preferences_url": f"https://example.org/preferences?s={i}&t=tok{i}",
        },
        idempotency_key=f"2026-W48/{i}",
    )


RECIPIENTS = [make_recipient(1, "ada@example.com"), make_recipient(2, "bob+news@example.net"), make_recipient(3, "cy@example.edu")]
OK = {
    "data": [
        {"id": "ae2014de-c168-4c61-8267-70d2662a1ce1"},
        {"id": "faccb7a5-8a28-4e9a-ac64-8da1cc3bc1cb"},
        {"id": "2f7e0b1a-2b3c-4d5e-8f90-a1b2c3d4e5f6"},
    ]
}


def answer(status: int, obj: Any = None, headers: dict[str, str] | None = None) -> Respond:
    payload = b"" if obj is None else json.dumps(obj).encode()

    def respond(method: str, path: str, body: bytes) -> tuple[int, dict[str, str], bytes]:
        return status, {"Content-Type": "application/json", **(headers or {})}, payload

    return respond


def error(status: int, name: str, message: str, headers: dict[str, str] | None = None) -> Respond:
    return answer(status, {"statusCode": status, "name": name, "message": message}, headers)


@contextmanager
def adapter_for(url: str, **kwargs: Any) -> Iterator[ResendAdapter]:
    adapter = ResendAdapter(KEY, base_url=url, **kwargs)
    try:
        yield adapter
    finally:
        adapter.close()


def send(respond: Respond, recipients: list[Recipient] = RECIPIENTS, **kwargs: Any) -> tuple[list[Result], list[dict[str, Any]]]:
    with recording_server(respond) as (url, requests), adapter_for(url, **kwargs) as adapter:
        results = adapter.send_batch(make_prepared(), recipients)
    return results, requests


def by_id(results: list[Result]) -> dict[int, Result]:
    assert len(results) == len({r.subscriber_id for r in results})
    return {r.subscriber_id: r for r in results}


def lower(headers: dict[str, str]) -> dict[str, str]:
    return {k.lower(): v for k, v in headers.items()}


def assert_no_key(results: list[Result]) -> None:
    for r in results:
        assert KEY not in r.error


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
        html, text = email["html"], email["text"]
        assert f"Sent to {r.email}." in html
        assert f'href="https://example.org/unsubscribe?s={i}&amp;t=tok{i}"' in html
        assert f'href="https://example.org/preferences?s={i}&amp;t=tok{i}"' in html
        assert f"Sent to {r.email}." in text
        assert f"Unsubscribe: https://example.org/unsubscribe?s={i}&t=tok{i}\n" in text
        assert f"Preferences: https://example.org/preferences?s={i}&t=tok{i}\n" in text
        for other in RECIPIENTS:
            if other is not r:
                assert other.email not in html + text
                assert f"s={other.subscriber_id}&" not in html + text
        assert "%%" not in html + text

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
    with adapter_for("http://127.0.0.1:9") as adapter:
        with pytest.raises(ValueError, match="at most 100") as exc:
            adapter.send_batch(make_prepared(), [make_recipient(i, f"u{i}@example.com") for i in range(101)])
    assert KEY not in str(exc.value)


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
def test_validation_errors_fail_all_with_the_providers_message(status: int) -> None:
    results, _ = send(error(status, "validation_error", "The `subject` field must be a `string`."))
    assert len(results) == 3
    assert {r.status for r in results} == {"failed"}
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
    def slow(method: str, path: str, body: bytes) -> tuple[int, dict[str, str], bytes]:
        time.sleep(1.5)
        return 200, {}, json.dumps(OK).encode()

    started = time.monotonic()
    results, requests = send(slow, timeout=0.5)
    assert time.monotonic() - started < 1.4
    assert len(requests) == 1  # one attempt, no retry
    assert len(results) == 3
    assert {r.status for r in results} == {"deferred"}
    assert all("did not answer within 0.5 s" in r.error for r in results)


def test_connection_refused_defers_all() -> None:
    port = free_port()  # bound, then closed: nothing listens there
    with adapter_for(f"http://127.0.0.1:{port}", timeout=5) as adapter:
        results = adapter.send_batch(make_prepared(), RECIPIENTS)
    assert len(results) == 3
    assert {r.status for r in results} == {"deferred"}
    assert all("cannot reach Resend" in r.error for r in results)
    assert_no_key(results)


# -- the key and the session --------------------------------------------------------------------------


def test_key_never_in_repr_or_errors() -> None:
    with adapter_for("http://127.0.0.1:9") as adapter:
        assert KEY not in repr(adapter)
        assert "ResendAdapter(" in repr(adapter)

    for status in (400, 401, 403, 409, 422, 429, 500):
        results, _ = send(error(status, "some_error", f"key {KEY} says no"))
        assert results and all(r.error for r in results)
        assert_no_key(results)
    results, _ = send(answer(200, {"data": [], "errors": [{"index": 0, "message": f"bad, and the key was {KEY}"}]}))
    assert by_id(results)[1].status == "failed"
    assert_no_key(results)


def test_close_releases_the_connection_pool() -> None:
    with recording_server(answer(200, OK)) as (url, _):
        adapter = ResendAdapter(KEY, base_url=url)
        adapter.send_batch(make_prepared(), RECIPIENTS)
        pool = adapter._session.get_adapter(url).poolmanager
        assert len(pool.pools) == 1
        adapter.close()
        assert len(pool.pools) == 0
        adapter.close()  # twice is harmless
