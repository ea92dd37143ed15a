"""PostmarkAdapter against a real local HTTP server: the exact wire format, and every kind of answer."""

from __future__ import annotations

import json
from contextlib import closing
from datetime import datetime, timedelta, timezone
from email.utils import format_datetime
from typing import Any

from publisher import __version__
from publisher.delivery.api import Recipient, Result
from publisher.delivery.api._http import MB
from publisher.delivery.api.postmark import MAX_REQUEST_BYTES, PostmarkAdapter, mailbox, retry_after

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
    make_prepared,
    make_recipient,
    send_through,
)
from .provider_emulators import PostmarkEmulator, serve
from .servers import recording_server

KEY = "pm-server-token-7d41c0ffee"


def ok_entries(recipients: list[Recipient]) -> list[dict[str, Any]]:
    return [
        {"ErrorCode": 0, "Message": "OK", "MessageID": f"0a129aee-e1cd-480d-b08d-4f48548ff48{r.subscriber_id}", "To": r.email}
        for r in recipients
    ]


def adapter_for(url: str, **kwargs: Any) -> closing[PostmarkAdapter]:
    return closing(PostmarkAdapter(KEY, base_url=url, **kwargs))


def send(respond: Respond, recipients: list[Recipient] = RECIPIENTS, **kwargs: Any) -> tuple[list[Result], list[dict[str, Any]]]:
    return send_through(adapter_for, respond, recipients, **kwargs)


# -- the wire format ----------------------------------------------------------------------------------


def test_wire_format_is_postmarks_batch_endpoint() -> None:
    results, requests = send(answer(200, ok_entries(RECIPIENTS)))

    assert len(requests) == 1
    req = requests[0]
    assert req["method"] == "POST"
    assert req["path"] == "/email/batch"
    headers = {k.lower(): v for k, v in req["headers"].items()}
    assert headers["x-postmark-server-token"] == KEY
    assert headers["accept"] == "application/json"
    assert headers["content-type"] == "application/json"
    assert headers["user-agent"] == f"publisher/{__version__}"
    assert "authorization" not in headers

    messages = json.loads(req["body"])
    assert isinstance(messages, list) and len(messages) == 3
    for msg, r in zip(messages, RECIPIENTS):
        assert set(msg) == {"From", "To", "Subject", "HtmlBody", "TextBody", "ReplyTo", "Headers", "MessageStream", "TrackOpens", "Metadata"}
        assert msg["From"] == "Example Research <news@example.org>"
        assert msg["To"] == r.email
        assert msg["Subject"] == "Research digest — 27 November 2026"
        assert msg["ReplyTo"] == "editor@example.org"
        assert msg["MessageStream"] == "broadcast"
        assert msg["TrackOpens"] is False
        assert msg["Metadata"] == {"publisher-key": r.idempotency_key}  # found again after a crash (test_reconcile)

        i = r.subscriber_id
        assert_personalised(msg["HtmlBody"], msg["TextBody"], r, RECIPIENTS)

        assert msg["Headers"] == [
            {"Name": "List-Id", "Value": "Research digest <digest.example.org>"},
            {
                "Name": "List-Unsubscribe",
                "Value": f"<https://example.org/unsubscribe?s={i}&t=tok{i}>, <mailto:news@example.org?subject=unsubscribe>",
            },
            {"Name": "List-Unsubscribe-Post", "Value": "List-Unsubscribe=One-Click"},
            {"Name": "Message-ID", "Value": f"<digest.2026-W48.{i:04x}@example.org>"},
        ]

    assert by_id(results) == {r.subscriber_id: Result(r.subscriber_id, "sent") for r in RECIPIENTS}


def test_optional_fields_stream_and_extra_headers() -> None:
    received: list[Any] = []

    def respond(method: str, path: str, body: bytes) -> tuple[int, dict[str, str], bytes]:
        received.append(json.loads(body))
        return 200, {}, json.dumps(ok_entries(RECIPIENTS[:1])).encode()

    with recording_server(respond) as (url, _), adapter_for(url, message_stream="digest-weekly") as adapter:
        prepared = make_prepared(reply_to="", from_name='Example "Research", Inc.', extra_headers={"X-Issue": "2026-W48"})
        results = adapter.send_batch(prepared, RECIPIENTS[:1])

    (msg,) = received[0]
    assert "ReplyTo" not in msg
    assert msg["From"] == '"Example \\"Research\\", Inc." <news@example.org>'
    assert msg["MessageStream"] == "digest-weekly"
    assert {"Name": "X-Issue", "Value": "2026-W48"} in msg["Headers"]
    assert results == [Result(1, "sent")]


def test_empty_batch_sends_nothing() -> None:
    results, requests = send(answer(200, []), recipients=[])
    assert results == [] and requests == []


# -- Postmark's limits: 500 messages and 50 MB per request, 10 MB per message, 5 MB per body ------------------


def readers(n: int, start: int = 1) -> list[Recipient]:
    return [make_recipient(i, f"reader{i}@example.com") for i in range(start, start + n)]


def test_501_messages_go_in_two_requests_of_500_and_1() -> None:
    rs = readers(501)
    emulator = PostmarkEmulator(KEY)
    with serve(emulator) as url, adapter_for(url) as adapter:
        results = adapter.send_batch(make_prepared(), rs)
    assert {r.status for r in results} == {"sent"} and len(by_id(results)) == 501
    assert emulator.batch_sizes == [500, 1]
    assert_each_sent_once(emulator.delivered, rs)


def test_500_messages_of_a_110_kb_digest_go_in_requests_under_50_mb_at_the_real_limit() -> None:
    """The measured case: 500 messages of the sample digest in one batch were 52 MB, and Postmark refuses over 50 MB."""
    p = make_prepared(html=digest_html(110_000))
    rs = readers(500)
    emulator = PostmarkEmulator(KEY)  # refuses a request over 50 MB with a 413, as Postmark does
    with serve(emulator) as url, adapter_for(url) as adapter:
        assert adapter.max_request_bytes == MAX_REQUEST_BYTES == 50 * MB
        results = adapter.send_batch(p, rs)
    sizes = [r["size"] for r in emulator.posts()]
    assert sum(sizes) > 55 * MB  # one request would have been refused
    assert len(sizes) >= 2 and max(sizes) <= 50 * MB and emulator.too_large == 0
    assert sum(emulator.batch_sizes) == 500
    assert {r.status for r in results} == {"sent"} and len(by_id(results)) == 500
    assert_each_sent_once(emulator.delivered, rs)


def test_a_message_alone_over_the_request_limit_is_deferred_as_ours_and_never_sent() -> None:
    """A limit lowered to a few messages: batches split to fit, and the one message that cannot fit alone is not sent."""
    rs = readers(9)
    huge = make_recipient(5, "huge@example.com")
    huge.links["unsubscribe_url"] += "&x=" + "y" * 6000  # its message alone is over the limit
    rs[4] = huge
    with serve(PostmarkEmulator(KEY)) as url, adapter_for(url) as probe:
        one = len(json.dumps(probe.payload(make_prepared(), rs[:1]), ensure_ascii=False).encode())
    limit = 3 * one + 200  # three ordinary messages per request
    emulator = PostmarkEmulator(KEY, max_request_bytes=limit)
    with serve(emulator) as url, adapter_for(url) as adapter:
        adapter.max_request_bytes = limit
        results = by_id(adapter.send_batch(make_prepared(), rs))
    assert results[5].status == "deferred" and results[5].kind == "sender"
    assert "over Postmark's" in results[5].error and "request size limit" in results[5].error
    assert "[digest].max_items" in results[5].error and "bytes) for this recipient alone" in results[5].error
    assert all(r.status == "sent" for i, r in results.items() if i != 5)
    sizes = [r["size"] for r in emulator.posts()]
    assert len(sizes) >= 3 and max(sizes) <= limit and emulator.too_large == 0
    assert_each_sent_once(emulator.delivered, rs, but=frozenset({"huge@example.com"}))


def test_an_html_body_over_5_mb_base64_encoded_is_deferred_with_no_request_at_the_real_limit() -> None:
    p = make_prepared(html=digest_html(4 * MB))  # 4 MB: 5.3 MB once base64-encoded, as Postmark counts it
    emulator = PostmarkEmulator(KEY)
    with serve(emulator) as url, adapter_for(url) as adapter:
        results = adapter.send_batch(p, RECIPIENTS)
    assert {(r.status, r.kind) for r in results} == {("deferred", "sender")} and len(results) == 3
    error = results[0].error
    assert error.startswith("too large to send: the HTML part, base64-encoded as Postmark counts it, comes to 5.3 MB (")
    assert "over Postmark's 5 MB limit per body part; nothing was sent to them" in error and "[digest].max_items" in error
    assert emulator.posts() == [] and not emulator.delivered


def test_a_message_over_the_message_limit_is_deferred_and_the_others_are_sent() -> None:
    rs = readers(3)
    rs[1].links["preferences_url"] += "&x=" + "y" * 3000
    emulator = PostmarkEmulator(KEY)
    with serve(emulator) as url, adapter_for(url) as adapter:
        adapter.max_message_bytes = 4000
        results = by_id(adapter.send_batch(make_prepared(), rs))
    assert (results[2].status, results[2].kind) == ("deferred", "sender")
    assert "the message, base64-encoded as Postmark counts it," in results[2].error and "message size limit" in results[2].error
    assert results[1].status == results[3].status == "sent"
    assert emulator.batch_sizes == [2]
    assert_each_sent_once(emulator.delivered, rs, but=frozenset({rs[1].email}))


def test_a_refusal_of_the_first_request_stops_the_others() -> None:
    """Split by size, and the first request answered 429: the rest is deferred untried, not sent into a rate limit."""
    with recording_server(answer(429, {"ErrorCode": 429, "Message": "Rate limit exceeded"}, {"Retry-After": "9"})) as (url, requests):
        with adapter_for(url) as adapter:
            adapter.max_request_bytes = 2500  # one message per request
            results = adapter.send_batch(make_prepared(), RECIPIENTS)
    assert len(requests) == 1
    assert {(r.status, r.retry_after) for r in results} == {("deferred", 9.0)}
    assert [r.error.startswith("not attempted: Postmark rate limit (429)") for r in results] == [False, True, True]


def test_a_413_says_the_limit_has_changed() -> None:
    results, _ = send(answer(413, {"ErrorCode": 413, "Message": "Payload Too Large"}))
    assert {(r.status, r.kind) for r in results} == {("deferred", "sender")}
    assert "too large (413)" in results[0].error and "MAX_REQUEST_BYTES" in results[0].error


# -- per-message results ------------------------------------------------------------------------------


def test_partial_batch_failure_is_per_recipient() -> None:
    entries = ok_entries(RECIPIENTS)
    entries[1] = {"ErrorCode": 300, "Message": "Invalid 'To' address: 'bob+news@example.net'.", "To": "bob+news@example.net"}
    results, _ = send(answer(200, entries))

    got = by_id(results)
    assert got[1] == Result(1, "sent")
    assert got[3] == Result(3, "sent")
    assert got[2].status == "failed"
    assert "300" in got[2].error and "Invalid 'To' address" in got[2].error


def test_inactive_recipient_fails_other_codes_defer() -> None:
    entries = ok_entries(RECIPIENTS)
    entries[0] = {"ErrorCode": 406, "Message": "You tried to send to recipient(s) that have been marked as inactive."}
    entries[2] = {"ErrorCode": 429, "Message": "Rate limit exceeded."}
    results, _ = send(answer(200, entries))

    got = by_id(results)
    assert got[1].status == "failed" and "406" in got[1].error
    assert got[2] == Result(2, "sent")
    assert got[3].status == "deferred" and "429" in got[3].error


def test_short_or_unreadable_200_is_deferred_not_lost() -> None:
    results, _ = send(answer(200, ok_entries(RECIPIENTS[:2])))
    got = by_id(results)
    assert got[1].status == got[2].status == "sent"
    assert got[3].status == "deferred"

    def garbage(method: str, path: str, body: bytes) -> tuple[int, dict[str, str], bytes]:
        return 200, {"Content-Type": "text/html"}, b"<html>proxy page</html>"

    results, _ = send(garbage)
    assert {r.status for r in results} == {"deferred"}
    assert len(results) == 3


# -- whole-request answers ----------------------------------------------------------------------------


def test_429_defers_all_with_retry_after() -> None:
    results, _ = send(answer(429, {"ErrorCode": 429, "Message": "Rate limit exceeded."}, {"Retry-After": "7"}))
    assert len(results) == 3
    for r in results:
        assert r.status == "deferred"
        assert r.retry_after == 7
        assert "429" in r.error


def test_429_without_retry_after() -> None:
    results, _ = send(answer(429, {"ErrorCode": 429, "Message": "Rate limit exceeded."}))
    assert {(r.status, r.retry_after) for r in results} == {("deferred", None)}


def test_500_defers_all() -> None:
    results, _ = send(answer(500, {"ErrorCode": 0, "Message": "Internal server error"}))
    assert len(results) == 3
    assert {r.status for r in results} == {"deferred"}
    assert all("500" in r.error for r in results)


def test_503_with_non_json_body_defers_all() -> None:
    def respond(method: str, path: str, body: bytes) -> tuple[int, dict[str, str], bytes]:
        return 503, {"Content-Type": "text/plain"}, b"Service Unavailable"

    results, _ = send(respond)
    assert {r.status for r in results} == {"deferred"}
    assert all("503" in r.error and "Service Unavailable" in r.error for r in results)


def test_401_is_a_configuration_error_reported_as_deferred() -> None:
    results, _ = send(answer(401, {"ErrorCode": 10, "Message": f"Bad or missing Server API token: {KEY}"}))
    assert len(results) == 3
    for r in results:
        assert r.status == "deferred"
        assert "Postmark rejected the server token (401)" in r.error
    assert_no_key(results, KEY)


def test_422_on_the_request_defers_all_as_the_senders_problem_with_postmarks_message() -> None:
    """Our request, not their addresses: failing them would suppress the whole batch (issue 12, point 4)."""
    results, _ = send(answer(422, {"ErrorCode": 402, "Message": "Received invalid JSON input."}))
    assert {(r.status, r.kind) for r in results} == {("deferred", "sender")}
    assert all("402" in r.error and "Received invalid JSON input." in r.error for r in results)


def test_422_for_the_account_state_defers_all() -> None:
    results, _ = send(answer(422, {"ErrorCode": 405, "Message": "Not allowed to send: you have run out of credits."}))
    assert {r.status for r in results} == {"deferred"}
    assert all("run out of credits" in r.error for r in results)


def test_404_wrong_base_url_defers() -> None:
    results, _ = send(answer(404, None))
    assert {r.status for r in results} == {"deferred"}
    assert all("404" in r.error for r in results)


# -- network trouble ----------------------------------------------------------------------------------


def test_timeout_defers_all() -> None:
    assert_a_timeout_defers_all(send, json.dumps(ok_entries(RECIPIENTS)).encode())


def test_connection_refused_defers_all() -> None:
    assert_connection_refused_defers_all(adapter_for, "Postmark", KEY)


# -- the key and the session --------------------------------------------------------------------------


def test_key_never_in_repr_or_errors() -> None:
    with adapter_for("http://127.0.0.1:9") as adapter:
        assert KEY not in repr(adapter)
        assert "PostmarkAdapter(" in repr(adapter)

    echo = {"ErrorCode": 300, "Message": f"token {KEY} says no"}
    for status in (401, 422, 429, 500, 502):
        results, _ = send(answer(status, echo))
        assert results and all(r.error for r in results)
        assert_no_key(results, KEY)
    entries = ok_entries(RECIPIENTS)
    entries[0] = {"ErrorCode": 406, "Message": f"inactive, by the way the token is {KEY}"}
    results, _ = send(answer(200, entries))
    assert by_id(results)[1].status == "failed"
    assert_no_key(results, KEY)


def test_close_releases_the_connection_pool() -> None:
    with recording_server(answer(200, ok_entries(RECIPIENTS))) as (url, _):
        adapter = PostmarkAdapter(KEY, base_url=url)
        assert_close_releases_the_pool(adapter, url, lambda: adapter.send_batch(make_prepared(), RECIPIENTS))
        adapter.close()  # twice is harmless


# -- helpers ------------------------------------------------------------------------------------------


def test_retry_after_parses_seconds_and_http_dates() -> None:
    assert retry_after("7") == 7
    assert retry_after(" 2.5 ") == 2.5
    assert retry_after(None) is None and retry_after("") is None and retry_after("soon") is None
    assert retry_after("-3") is None
    later = format_datetime(datetime.now(timezone.utc) + timedelta(seconds=120), usegmt=True)
    assert 100 < (retry_after(later) or 0) <= 120
    earlier = format_datetime(datetime.now(timezone.utc) - timedelta(seconds=120), usegmt=True)
    assert retry_after(earlier) == 0


def test_mailbox_quotes_specials_only() -> None:
    assert mailbox("Example Research", "a@b.org") == "Example Research <a@b.org>"
    assert mailbox("Joe Sender, jr", "a@b.org") == '"Joe Sender, jr" <a@b.org>'
    assert mailbox("Zoë", "a@b.org") == "Zoë <a@b.org>"
    assert mailbox("", "a@b.org") == "a@b.org"
