"""The SendGrid adapter against a real local HTTP server: the exact wire format, and every kind of answer."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import pytest

from publisher import __version__
from publisher.delivery.api._http import MB, split_budget
from publisher.delivery.api.sendgrid import MAX_REQUEST_BYTES, SendGridAdapter, tags

from .api_support import (
    assert_a_deferral_while_isolating_defers_the_rest,
    assert_a_timeout_defers,
    assert_close_releases_the_pool,
    assert_connection_refused_defers,
    assert_each_sent_once,
    by_id,
    closing_all,
    prepared,
    recipient,
)
from .provider_emulators import SendGridEmulator, serve
from .servers import recording_server

KEY = "SG.test-key.Zm9vYmFyLXNlY3JldA"


def sent_body(req: dict[str, Any]) -> dict[str, Any]:
    return json.loads(req["body"])


def accepted() -> tuple[int, dict[str, str], bytes]:
    return 202, {"X-Message-Id": "abc123"}, b""


@pytest.fixture
def adapter_for() -> Iterator[Any]:
    yield from closing_all(lambda base_url, **kw: SendGridAdapter(KEY, base_url=base_url, **kw))


HTML_WITH_SLOTS = prepared().html


def apply_substitutions(value: str, subs: dict[str, str]) -> str:
    """What SendGrid does with a personalization's substitutions."""
    for tag, replacement in subs.items():
        value = value.replace(tag, replacement)
    return value


# -- the wire format --------------------------------------------------------------------------------------


def test_one_request_carries_the_body_once_and_each_recipient_its_own_values(adapter_for) -> None:
    p = prepared()
    rs = [recipient(1), recipient(2), recipient(3, "a&b@example.org")]
    with recording_server(lambda m, path, body: accepted()) as (url, reqs):
        results = adapter_for(url).send_batch(p, rs)
    assert {r.subscriber_id: r.status for r in results} == {1: "sent", 2: "sent", 3: "sent"}
    assert len(reqs) == 1
    req = reqs[0]
    assert (req["method"], req["path"]) == ("POST", "/v3/mail/send")
    assert req["headers"]["Authorization"] == f"Bearer {KEY}"
    assert req["headers"]["User-Agent"] == f"publisher/{__version__}"
    assert req["headers"]["Content-Type"] == "application/json"
    data = sent_body(req)
    assert set(data) == {"personalizations", "from", "reply_to", "subject", "content", "headers", "custom_args", "tracking_settings"}
    assert data["tracking_settings"] == {"subscription_tracking": {"enable": False}}
    assert data["from"] == {"email": "digest@example.org", "name": "Publisher Sample Institute"}
    assert data["reply_to"] == {"email": "editors@example.org"}
    assert data["subject"] == p.subject
    assert data["headers"] == {"List-Id": p.list_id, "List-Unsubscribe-Post": "List-Unsubscribe=One-Click"}
    assert data["custom_args"] == {"issue_id": "2026-W48"}
    # The body is there once, with tags instead of our placeholders, text/plain first.
    assert [c["type"] for c in data["content"]] == ["text/plain", "text/html"]
    text, html = (c["value"] for c in data["content"])
    TEXT_TAGS, HTML_TAGS = tags(p, "text"), tags(p, "html")
    assert not any(marker in text + html for marker in p.slots.markers.values())
    assert TEXT_TAGS["unsubscribe_url"] in text and HTML_TAGS["unsubscribe_url"] in html
    assert not any(tag in html for tag in TEXT_TAGS.values()) and not any(tag in text for tag in HTML_TAGS.values())

    assert len(data["personalizations"]) == 3
    for pers, r in zip(data["personalizations"], rs):
        assert pers["to"] == [{"email": r.email}]
        assert pers["custom_args"] == {"subscriber_id": str(r.subscriber_id)}
        own = p.headers(r)
        assert pers["headers"] == {"List-Unsubscribe": own["List-Unsubscribe"], "Message-ID": r.message_id}
        assert pers["headers"]["List-Unsubscribe"].startswith(f"<{r.links['unsubscribe_url']}>, <mailto:")
        assert pers["substitutions"][TEXT_TAGS["unsubscribe_url"]] == r.links["unsubscribe_url"]
        # What this recipient receives, once SendGrid substituted, is exactly their personalised issue.
        assert (apply_substitutions(html, pers["substitutions"]), apply_substitutions(text, pers["substitutions"])) == p.personalise(r)
    # HTML-escaped values for the HTML part only.
    third = data["personalizations"][2]["substitutions"]
    assert third[HTML_TAGS["email"]] == "a&amp;b@example.org" and third[TEXT_TAGS["email"]] == "a&b@example.org"
    assert third[HTML_TAGS["unsubscribe_url"]] == "http://127.0.0.1:8000/unsubscribe?s=3&amp;t=tok3"


def test_no_tag_is_part_of_another() -> None:
    p = prepared()
    every = [*tags(p, "text").values(), *tags(p, "html").values()]
    assert len(set(every)) == len(every)
    assert not any(a != b and a in b for a in every for b in every)
    assert all(p.slots.nonce in tag for tag in every)  # the render's nonce: no source can write one


def test_no_reply_to_no_name_and_extra_headers(adapter_for) -> None:
    p = prepared(reply_to="", from_name="", extra_headers={"X-Issue": "2026-W48"})
    with recording_server(lambda m, path, body: accepted()) as (url, reqs):
        adapter_for(url).send_batch(p, [recipient(1)])
    data = sent_body(reqs[0])
    assert "reply_to" not in data
    assert data["from"] == {"email": "digest@example.org"}
    assert data["headers"]["X-Issue"] == "2026-W48"
    assert set(data["personalizations"][0]["headers"]) == {"List-Unsubscribe", "Message-ID"}


def test_an_empty_batch_makes_no_request(adapter_for) -> None:
    with recording_server() as (url, reqs):
        assert adapter_for(url).send_batch(prepared(), []) == []
    assert reqs == []


def test_a_duplicate_address_is_deferred_to_another_request(adapter_for) -> None:
    with recording_server(lambda m, path, body: accepted()) as (url, reqs):
        results = by_id(adapter_for(url).send_batch(prepared(), [recipient(1), recipient(2, "READER1@example.com")]))
    assert results[1].status == "sent"
    assert results[2].status == "deferred" and "another request" in results[2].error
    assert [p["to"] for p in sent_body(reqs[0])["personalizations"]] == [[{"email": "reader1@example.com"}]]


def test_more_than_max_batch_goes_in_several_requests(adapter_for) -> None:
    with recording_server(lambda m, path, body: accepted()) as (url, reqs):
        a = adapter_for(url)
        a.max_batch = 3
        results = a.send_batch(prepared(), [recipient(i) for i in range(7)])
    assert all(r.status == "sent" for r in results) and len(results) == 7
    assert [len(sent_body(r)["personalizations"]) for r in reqs] == [3, 3, 1]


# -- answers ------------------------------------------------------------------------------------------


def test_429_defers_everybody_with_retry_after(adapter_for) -> None:
    body = json.dumps({"errors": [{"field": None, "message": "too many requests"}]}).encode()
    with recording_server(lambda m, path, b: (429, {"Retry-After": "7"}, body)) as (url, reqs):
        results = adapter_for(url).send_batch(prepared(), [recipient(1), recipient(2)])
    assert [(r.status, r.retry_after) for r in results] == [("deferred", 7.0), ("deferred", 7.0)]
    assert "429" in results[0].error and "too many requests" in results[0].error
    assert len(reqs) == 1


def test_429_with_only_x_ratelimit_reset(adapter_for) -> None:
    reset = str(int(time.time()) + 30)
    with recording_server(lambda m, path, b: (429, {"X-RateLimit-Reset": reset}, b"")) as (url, _):
        [result] = adapter_for(url).send_batch(prepared(), [recipient(1)])
    assert result.status == "deferred" and result.retry_after is not None and 25 <= result.retry_after <= 31


@pytest.mark.parametrize("status", [500, 502, 503])
def test_5xx_defers(adapter_for, status: int) -> None:
    with recording_server(lambda m, path, b: (status, {}, b"upstream trouble")) as (url, _):
        results = adapter_for(url).send_batch(prepared(), [recipient(1), recipient(2)])
    assert {r.status for r in results} == {"deferred"}
    assert str(status) in results[0].error


@pytest.mark.parametrize("status", [401, 403])
def test_401_and_403_defer_with_a_configuration_error_and_never_show_the_key(adapter_for, status: int) -> None:
    def respond(method: str, path: str, body: bytes) -> tuple[int, dict[str, str], bytes]:
        # A server (or a proxy) that echoes what it got: the key must still not come back to us.
        return status, {}, json.dumps({"errors": [{"field": None, "message": f"bad credentials: Bearer {KEY}"}]}).encode()

    with recording_server(respond) as (url, _):
        adapter = adapter_for(url)
        results = adapter.send_batch(prepared(), [recipient(1), recipient(2)])
    assert {r.status for r in results} == {"deferred"}
    assert "PUBLISHER_API_KEY" in results[0].error and str(status) in results[0].error
    assert all(KEY not in r.error for r in results)
    assert "[redacted]" in results[0].error
    assert KEY not in repr(adapter) and KEY not in str(adapter)


def test_a_timeout_defers(adapter_for) -> None:
    assert_a_timeout_defers(adapter_for, accepted())


def test_connection_refused_defers_and_the_error_has_no_key(adapter_for) -> None:
    assert_connection_refused_defers(adapter_for, "SendGrid", KEY)


def test_a_request_refused_as_a_whole_defers_everybody_in_it(adapter_for) -> None:
    """A 400 on a field of the request (not of a personalization): no recipient would ever fix it, and failing
    them would suppress the whole batch for our mistake (issue 12, point 4)."""
    error = {"errors": [{"field": "from.email", "message": "The from email does not contain a valid address.", "help": "..."}]}
    with recording_server(lambda m, path, b: (400, {}, json.dumps(error).encode())) as (url, reqs):
        results = adapter_for(url).send_batch(prepared(), [recipient(1), recipient(2)])
    assert {(r.status, r.kind) for r in results} == {("deferred", "sender")}
    assert "from.email: The from email does not contain a valid address." in results[0].error
    assert len(reqs) == 1


def test_a_single_refused_recipient_fails(adapter_for) -> None:
    error = {"errors": [{"field": "personalizations.0.to.0.email", "message": "Does not contain a valid address."}]}
    with recording_server(lambda m, path, b: (400, {}, json.dumps(error).encode())) as (url, reqs):
        [result] = adapter_for(url).send_batch(prepared(), [recipient(1, "not an address")])
    assert result.status == "failed"
    assert "personalizations.0.to.0.email: Does not contain a valid address." in result.error
    assert len(reqs) == 1


# -- one bad address in a batch -------------------------------------------------------------------------


def refuse_invalid(field_of: Any) -> Any:
    """A server that, like SendGrid, refuses a whole request when any ``to`` address is invalid."""

    def respond(method: str, path: str, body: bytes) -> tuple[int, dict[str, str], bytes]:
        pers = json.loads(body)["personalizations"]
        errors = [
            {"field": field_of(i), "message": "Does not contain a valid address.", "help": "https://..."}
            for i, p in enumerate(pers)
            if "@" not in p["to"][0]["email"]
        ]
        return (400, {}, json.dumps({"errors": errors}).encode()) if errors else accepted()

    return respond


def accepted_emails(reqs: list[dict[str, Any]], respond: Any) -> list[str]:
    out = []
    for req in reqs:
        if respond("POST", req["path"], req["body"])[0] == 202:
            out += [p["to"][0]["email"] for p in sent_body(req)["personalizations"]]
    return out


def test_an_invalid_address_fails_alone_and_the_others_are_sent(adapter_for) -> None:
    """SendGrid names the personalization: the culprits fail, the others go again at once, in one request."""
    respond = refuse_invalid(lambda i: f"personalizations.{i}.to.0.email")
    rs = [recipient(i) for i in range(6)]
    rs[2] = recipient(2, "reader2-at-example.com")
    rs[4] = recipient(4, "reader4 example.com")
    with recording_server(respond) as (url, reqs):
        results = by_id(adapter_for(url).send_batch(prepared(), rs))
    assert {i: r.status for i, r in results.items()} == {0: "sent", 1: "sent", 2: "failed", 3: "sent", 4: "failed", 5: "sent"}
    assert "personalizations.2.to.0.email: Does not contain a valid address." in results[2].error
    assert "personalizations.4.to.0.email" in results[4].error and "personalizations.2" not in results[4].error
    assert len(reqs) == 2
    # Every valid recipient is in exactly one accepted request: nothing is sent twice.
    assert sorted(accepted_emails(reqs, respond)) == sorted(r.email for r in rs if "@" in r.email)


def test_a_refusal_about_recipients_without_an_index_is_bisected(adapter_for) -> None:
    respond = refuse_invalid(lambda i: "personalizations")
    rs = [recipient(i) for i in range(8)]
    rs[5] = recipient(5, "nobody")
    with recording_server(respond) as (url, reqs):
        results = by_id(adapter_for(url).send_batch(prepared(), rs))
    assert [i for i, r in results.items() if r.status == "failed"] == [5]
    assert all(r.status == "sent" for i, r in results.items() if i != 5)
    assert len(reqs) <= 1 + 2 * 3
    assert sorted(accepted_emails(reqs, respond)) == sorted(r.email for r in rs if r.subscriber_id != 5)


def test_the_number_of_requests_is_bounded() -> None:
    assert split_budget(1, 1000) == 5
    assert split_budget(1000, 1000) == 1 + 4 * 10
    assert split_budget(2500, 1000) == 3 + 4 * 10


def test_a_deferral_while_isolating_stops_and_defers_the_rest(adapter_for) -> None:
    refusal = json.dumps({"errors": [{"field": "personalizations", "message": "invalid"}]}).encode()
    assert_a_deferral_while_isolating_defers_the_rest(adapter_for, refusal, b"")


# -- SendGrid's limits: 1,000 personalizations, and a request of less than 30 MB --------------------------


def body_size(adapter: SendGridAdapter, p: Any, rs: list[Any]) -> int:
    return len(json.dumps(adapter.payload(p, rs), ensure_ascii=False).encode("utf-8"))


def test_1001_recipients_go_in_two_requests_of_1000_and_1(adapter_for) -> None:
    rs = [recipient(i) for i in range(1001)]
    emulator = SendGridEmulator(KEY)
    with serve(emulator) as url:
        results = adapter_for(url).send_batch(prepared(), rs)
    assert {r.status for r in results} == {"sent"} and len(by_id(results)) == 1001
    assert emulator.batch_sizes == [1000, 1]
    assert_each_sent_once(emulator.delivered, rs)


def test_a_request_over_30_mb_is_split_in_two_under_it_at_the_real_limit(adapter_for) -> None:
    """The content goes once per request, each recipient adds a personalization: an issue just under the limit
    with 1,000 recipients is over it, and goes in two requests of 500, each under 30 MB."""
    rs = [recipient(i) for i in range(1000)]
    emulator = SendGridEmulator(KEY)  # a 413 at 30 MB or more, as SendGrid does
    with serve(emulator) as url:
        adapter = adapter_for(url)
        assert adapter.max_request_bytes == MAX_REQUEST_BYTES == 30 * MB - 1
        filler = "x" * (30 * MB - body_size(adapter, prepared(), rs) + 200_000)
        p = prepared(html=HTML_WITH_SLOTS + filler)
        assert body_size(adapter, p, rs) > 30 * MB
        results = adapter.send_batch(p, rs)
    sizes = [r["size"] for r in emulator.posts()]
    assert emulator.batch_sizes == [500, 500] and max(sizes) < 30 * MB and emulator.too_large == 0
    assert {r.status for r in results} == {"sent"} and len(by_id(results)) == 1000
    assert_each_sent_once(emulator.delivered, rs)


def test_an_issue_over_30_mb_for_one_recipient_is_deferred_with_no_request_at_the_real_limit(adapter_for) -> None:
    emulator = SendGridEmulator(KEY)
    with serve(emulator) as url:
        results = adapter_for(url).send_batch(prepared(html=HTML_WITH_SLOTS + "x" * (30 * MB)), [recipient(1), recipient(2)])
    assert {(r.status, r.kind) for r in results} == {("deferred", "sender")} and len(results) == 2
    assert results[0].error.startswith("too large to send: the request comes to 30.0 MB (30,00")
    assert "over SendGrid's 30 MB request size limit; nothing was sent to them" in results[0].error
    assert "[digest].max_items" in results[0].error
    assert emulator.posts() == [] and not emulator.delivered


def test_a_recipient_alone_over_a_lowered_limit_is_deferred_and_the_others_are_sent(adapter_for) -> None:
    rs = [recipient(i) for i in range(10)]
    rs[6].links["unsubscribe_url"] += "&x=" + "y" * 5000
    with serve(SendGridEmulator(KEY)) as url:
        limit = body_size(adapter_for(url), prepared(), rs[:3])  # three ordinary recipients per request
    emulator = SendGridEmulator(KEY, max_request_bytes=limit)
    with serve(emulator) as url:
        adapter = adapter_for(url)
        adapter.max_request_bytes = limit
        results = by_id(adapter.send_batch(prepared(), rs))
    assert (results[6].status, results[6].kind) == ("deferred", "sender")
    assert "over SendGrid's" in results[6].error and "for this recipient alone" in results[6].error
    assert all(r.status == "sent" for i, r in results.items() if i != 6)
    sizes = [r["size"] for r in emulator.posts()]
    assert len(sizes) >= 4 and max(sizes) <= limit and emulator.too_large == 0
    assert_each_sent_once(emulator.delivered, rs, but=frozenset({rs[6].email}))


def test_a_413_says_the_limit_has_changed(adapter_for) -> None:
    with recording_server(lambda m, path, b: (413, {"Content-Type": "text/html"}, b"<h1>413 Request Entity Too Large</h1>")) as (url, _):
        results = adapter_for(url).send_batch(prepared(), [recipient(1), recipient(2)])
    assert {(r.status, r.kind) for r in results} == {("deferred", "sender")}
    assert "too large (413)" in results[0].error and "MAX_REQUEST_BYTES" in results[0].error


# -- the key --------------------------------------------------------------------------------------------


def test_the_key_is_not_in_repr_and_close_closes_the_session() -> None:
    adapter = SendGridAdapter(KEY, base_url="http://127.0.0.1:9")
    assert KEY not in repr(adapter)
    assert repr(adapter) == "SendGridAdapter(base_url='http://127.0.0.1:9', timeout=30.0)"
    with recording_server(lambda m, path, b: accepted()) as (url, _):
        adapter.base_url = url
        assert_close_releases_the_pool(adapter, url, lambda: adapter.send_batch(prepared(), [recipient(1)]))


def test_a_malformed_key_is_refused_without_echoing_it() -> None:
    bad = "SG.secret\r\nX-Injected: 1"
    with pytest.raises(ValueError) as info:
        SendGridAdapter(bad)
    assert "secret" not in str(info.value)
