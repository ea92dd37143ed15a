"""The Mailgun adapter against a real local HTTP server: the exact wire format, and every kind of answer."""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qsl, urlencode

import pytest

from publisher import __version__
from publisher.delivery.api._http import MB
from publisher.delivery.api.mailgun import MAX_REQUEST_BYTES, MailgunAdapter, variable

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
from .provider_emulators import MailgunEmulator, serve
from .servers import recording_server

KEY = "key-3ax6xnjp29jd6fds4gc373sgvjxteol0"
DOMAIN = "mg.example.org"

QUEUED = (200, {"Content-Type": "application/json"}, b'{"id": "<20261127093000.1.ABC@mg.example.org>", "message": "Queued. Thank you."}')
NOT_AN_ADDRESS = b'{"message": "\'to\' parameter is not a valid address. please check documentation"}'


def form(req: dict[str, Any]) -> list[tuple[str, str]]:
    assert req["headers"]["Content-Type"] == "application/x-www-form-urlencoded"
    return parse_qsl(req["body"].decode("utf-8"), keep_blank_values=True, strict_parsing=True)


def one(fields: list[tuple[str, str]], name: str) -> str:
    values = [v for k, v in fields if k == name]
    assert len(values) == 1, f"{name}: {values}"
    return values[0]


def substitute(value: str, variables: dict[str, str]) -> str:
    """What Mailgun does with ``%recipient.name%`` for one recipient."""
    return re.sub(r"%recipient\.([\w-]+)%", lambda m: variables[m.group(1)], value)


@pytest.fixture
def adapter_for() -> Iterator[Any]:
    yield from closing_all(lambda base_url, **kw: MailgunAdapter(KEY, domain=DOMAIN, base_url=base_url, **kw))


# -- the wire format --------------------------------------------------------------------------------------


def test_one_request_with_recipient_variables_gives_each_recipient_their_own_issue(adapter_for) -> None:
    p = prepared()
    rs = [recipient(1), recipient(2), recipient(3, "a&b@example.org")]
    with recording_server(lambda m, path, body: QUEUED) as (url, reqs):
        results = adapter_for(url).send_batch(p, rs)
    assert {r.subscriber_id: r.status for r in results} == {1: "sent", 2: "sent", 3: "sent"}
    assert len(reqs) == 1
    req = reqs[0]
    assert (req["method"], req["path"]) == ("POST", f"/v3/{DOMAIN}/messages")
    assert req["headers"]["Authorization"] == "Basic " + base64.b64encode(f"api:{KEY}".encode()).decode()
    assert req["headers"]["User-Agent"] == f"publisher/{__version__}"
    fields = form(req)
    names = {k for k, _ in fields}
    assert names == {
        "from", "to", "subject", "text", "html", "recipient-variables", "h:Reply-To", "h:List-Id",
        "h:List-Unsubscribe-Post", "h:List-Unsubscribe", "h:Message-ID", "v:subscriber_id", "v:issue_id", "v:publisher-key",
    }  # fmt: skip
    assert one(fields, "from") == "Publisher Sample Institute <digest@example.org>"
    assert [v for k, v in fields if k == "to"] == [r.email for r in rs]
    assert one(fields, "subject") == p.subject
    assert one(fields, "h:Reply-To") == "editors@example.org"
    assert one(fields, "h:List-Id") == p.list_id
    assert one(fields, "h:List-Unsubscribe-Post") == "List-Unsubscribe=One-Click"
    def var(name: str) -> str:
        return variable(p, name)

    assert one(fields, "h:List-Unsubscribe") == f"%recipient.{var('list_unsubscribe')}%"
    assert one(fields, "h:Message-ID") == f"%recipient.{var('message_id')}%"
    assert one(fields, "v:subscriber_id") == f"%recipient.{var('subscriber_id')}%"
    assert one(fields, "v:issue_id") == "2026-W48"
    assert one(fields, "v:publisher-key") == f"%recipient.{var('publisher_key')}%"  # found again after a crash (test_reconcile)
    text, html = one(fields, "text"), one(fields, "html")
    assert not any(marker in text + html for marker in p.slots.markers.values())
    assert f"%recipient.{var('unsubscribe_url')}%" in text and f"%recipient.{var('unsubscribe_url_html')}%" in html
    assert p.slots.nonce in var("unsubscribe_url")  # the render's nonce: no source can write one

    variables = json.loads(one(fields, "recipient-variables"))
    assert list(variables) == [r.email for r in rs]
    for r in rs:
        own = variables[r.email]
        assert own[var("unsubscribe_url")] == r.links["unsubscribe_url"]
        assert own[var("subscriber_id")] == str(r.subscriber_id)
        assert own[var("publisher_key")] == r.idempotency_key
        # What this recipient receives, once Mailgun substituted: exactly their personalised issue and headers.
        assert (substitute(html, own), substitute(text, own)) == p.personalise(r)
        headers = {k[2:]: substitute(v, own) for k, v in fields if k.startswith("h:")}
        assert headers == {**p.headers(r), "Reply-To": "editors@example.org"}
        assert headers["List-Unsubscribe"].startswith(f"<{r.links['unsubscribe_url']}>, <mailto:")
    # HTML-escaped values for the HTML part only.
    third = variables["a&b@example.org"]
    assert third[var("email_html")] == "a&amp;b@example.org" and third[var("email")] == "a&b@example.org"
    assert third[var("unsubscribe_url_html")] == "http://127.0.0.1:8000/unsubscribe?s=3&amp;t=tok3"


def test_no_reply_to_and_a_name_with_specials(adapter_for) -> None:
    p = prepared(reply_to="", from_name="Institute, Inc.", extra_headers={"X-Issue": "2026-W48"})
    with recording_server(lambda m, path, body: QUEUED) as (url, reqs):
        adapter_for(url).send_batch(p, [recipient(1)])
    fields = form(reqs[0])
    assert "h:Reply-To" not in {k for k, _ in fields}
    assert one(fields, "from") == '"Institute, Inc." <digest@example.org>'
    assert one(fields, "h:X-Issue") == "2026-W48"


def test_an_empty_batch_makes_no_request(adapter_for) -> None:
    with recording_server() as (url, reqs):
        assert adapter_for(url).send_batch(prepared(), []) == []
    assert reqs == []


def test_a_duplicate_address_is_deferred_to_another_request(adapter_for) -> None:
    """recipient-variables is keyed by address: two subscribers with one address would share one set."""
    with recording_server(lambda m, path, body: QUEUED) as (url, reqs):
        results = by_id(adapter_for(url).send_batch(prepared(), [recipient(1), recipient(2, "Reader1@Example.com")]))
    assert results[1].status == "sent"
    assert results[2].status == "deferred" and "another request" in results[2].error
    assert [v for k, v in form(reqs[0]) if k == "to"] == ["reader1@example.com"]


# -- answers ------------------------------------------------------------------------------------------


def test_429_defers_everybody_with_retry_after(adapter_for) -> None:
    with recording_server(lambda m, path, b: (429, {"Retry-After": "7"}, b'{"message": "Too many requests"}')) as (url, reqs):
        results = adapter_for(url).send_batch(prepared(), [recipient(1), recipient(2)])
    assert [(r.status, r.retry_after) for r in results] == [("deferred", 7.0), ("deferred", 7.0)]
    assert "429" in results[0].error and "Too many requests" in results[0].error
    assert len(reqs) == 1


@pytest.mark.parametrize("status", [500, 502, 503])
def test_5xx_defers(adapter_for, status: int) -> None:
    with recording_server(lambda m, path, b: (status, {}, b"upstream trouble")) as (url, _):
        results = adapter_for(url).send_batch(prepared(), [recipient(1), recipient(2)])
    assert {r.status for r in results} == {"deferred"}
    assert str(status) in results[0].error and results[0].retry_after is None


def test_401_defers_with_a_configuration_error_and_never_shows_the_key(adapter_for) -> None:
    def respond(method: str, path: str, body: bytes) -> tuple[int, dict[str, str], bytes]:
        return 401, {}, f"Forbidden (you sent api:{KEY})".encode()  # an echoing proxy: still no key in errors

    with recording_server(respond) as (url, _):
        adapter = adapter_for(url)
        results = adapter.send_batch(prepared(), [recipient(1), recipient(2)])
    assert {r.status for r in results} == {"deferred"}
    assert "PUBLISHER_API_KEY" in results[0].error and "401" in results[0].error
    assert all(KEY not in r.error for r in results) and "[redacted]" in results[0].error
    assert KEY not in repr(adapter)


def test_an_echoed_authorization_header_is_scrubbed_too(adapter_for) -> None:
    """A wrong base URL pointing at something that echoes our request: HTTP Basic carries the key in base64."""

    def respond(method: str, path: str, body: bytes) -> tuple[int, dict[str, str], bytes]:
        return 400, {}, f"bad request; you sent Authorization: Basic {base64.b64encode(f'api:{KEY}'.encode()).decode()}".encode()

    with recording_server(respond) as (url, _):
        results = adapter_for(url).send_batch(prepared(), [recipient(1)])
    encoded = base64.b64encode(f"api:{KEY}".encode()).decode()
    assert all(encoded not in r.error and KEY not in r.error for r in results) and "[redacted]" in results[0].error


def test_an_unknown_domain_defers(adapter_for) -> None:
    with recording_server(lambda m, path, b: (404, {}, b'{"message": "Domain not found: mg.example.org"}')) as (url, _):
        [result] = adapter_for(url).send_batch(prepared(), [recipient(1)])
    assert result.status == "deferred" and "mg.example.org" in result.error and "region" in result.error


def test_a_200_that_is_not_a_queued_message_defers(adapter_for) -> None:
    with recording_server(lambda m, path, b: (200, {}, b"Mailgun Magnificent API")) as (url, _):
        [result] = adapter_for(url).send_batch(prepared(), [recipient(1)])
    assert result.status == "deferred" and "message id" in result.error


def test_a_timeout_defers(adapter_for) -> None:
    assert_a_timeout_defers(adapter_for, QUEUED)


def test_connection_refused_defers_and_the_error_has_no_key(adapter_for) -> None:
    assert_connection_refused_defers(adapter_for, "Mailgun", KEY)


def test_a_single_refused_recipient_fails_with_mailguns_message(adapter_for) -> None:
    with recording_server(lambda m, path, b: (400, {}, NOT_AN_ADDRESS)) as (url, reqs):
        [result] = adapter_for(url).send_batch(prepared(), [recipient(1, "reader@example")])
    assert result.status == "failed"
    assert result.error == "Mailgun refused the request (400): 'to' parameter is not a valid address. please check documentation"
    assert len(reqs) == 1


@pytest.mark.parametrize(
    "message",
    ["'from' parameter is not a valid address. please check documentation", "Need at least one of 'text' or 'html' parameters specified"],
)
def test_a_request_refused_as_a_whole_defers_everybody_in_it_at_once(adapter_for, message: str) -> None:
    """Our request, not their addresses: failing them would suppress the whole batch (issue 12, point 4)."""
    body = json.dumps({"message": message}).encode()
    with recording_server(lambda m, path, b: (400, {}, body)) as (url, reqs):
        results = adapter_for(url).send_batch(prepared(), [recipient(i) for i in range(8)])
    assert {(r.status, r.kind) for r in results} == {("deferred", "sender")} and len(results) == 8
    assert message in results[0].error
    assert len(reqs) == 1


# -- one bad address in a batch -------------------------------------------------------------------------


def refuse_invalid(method: str, path: str, body: bytes) -> tuple[int, dict[str, str], bytes]:
    """Like Mailgun: one invalid ``to`` and the whole request is refused, without saying which."""
    to = [v for k, v in parse_qsl(body.decode()) if k == "to"]
    return (400, {}, NOT_AN_ADDRESS) if any(not re.fullmatch(r"[^@\s]+@[^@\s]+\.\w+", t) for t in to) else QUEUED


def accepted_emails(reqs: list[dict[str, Any]]) -> list[str]:
    return [v for req in reqs if refuse_invalid("POST", req["path"], req["body"])[0] == 200 for k, v in form(req) if k == "to"]


def test_one_invalid_address_is_isolated_by_bisection_and_the_others_are_sent(adapter_for) -> None:
    rs = [recipient(i) for i in range(8)]
    rs[5] = recipient(5, "reader5@example")
    with recording_server(refuse_invalid) as (url, reqs):
        results = by_id(adapter_for(url).send_batch(prepared(), rs))
    assert {i for i, r in results.items() if r.status == "failed"} == {5}
    assert "'to' parameter is not a valid address" in results[5].error
    assert all(r.status == "sent" for i, r in results.items() if i != 5)
    assert len(reqs) <= 1 + 2 * 3  # log2(8) = 3 levels, at most two requests each
    # Every valid recipient is in exactly one accepted request: nothing is sent twice.
    assert sorted(accepted_emails(reqs)) == sorted(r.email for r in rs if r.subscriber_id != 5)


def test_two_invalid_addresses_in_a_large_batch(adapter_for) -> None:
    rs = [recipient(i) for i in range(100)]
    rs[3] = recipient(3, "three")
    rs[77] = recipient(77, "seventy seven@example.com")
    with recording_server(refuse_invalid) as (url, reqs):
        results = by_id(adapter_for(url).send_batch(prepared(), rs))
    assert {i for i, r in results.items() if r.status == "failed"} == {3, 77}
    assert sum(r.status == "sent" for r in results.values()) == 98
    assert len(reqs) <= 1 + 4 * 7
    assert sorted(accepted_emails(reqs)) == sorted(r.email for r in rs if r.subscriber_id not in (3, 77))


def test_when_the_request_budget_runs_out_the_rest_is_deferred_untried(adapter_for) -> None:
    """Every address bad: the adapter stops after its budget, and the engine's next attempt goes on."""
    rs = [recipient(i, f"bad{i}") for i in range(16)]
    with recording_server(refuse_invalid) as (url, reqs):
        results = by_id(adapter_for(url).send_batch(prepared(), rs))
    assert len(results) == 16
    failed = {i for i, r in results.items() if r.status == "failed"}
    deferred = {i for i, r in results.items() if r.status == "deferred"}
    assert failed and deferred and failed | deferred == set(range(16))
    assert all("not attempted" in results[i].error for i in deferred)
    assert len(reqs) == 1 + 4 * 4
    # Deferred ones were never in a request that could have been accepted, failed ones alone in theirs.
    assert accepted_emails(reqs) == []


def test_a_deferral_while_isolating_stops_and_defers_the_rest(adapter_for) -> None:
    assert_a_deferral_while_isolating_defers_the_rest(adapter_for, NOT_AN_ADDRESS, b'{"message": "slow down"}')


# -- Mailgun's limits: 1,000 recipients, and 25 MB of body per request -------------------------------------


def body_size(adapter: MailgunAdapter, p: Any, rs: list[Any]) -> int:
    return len(adapter.encode(adapter.payload(p, rs)))


def test_1001_recipients_go_in_two_requests_of_1000_and_1(adapter_for) -> None:
    rs = [recipient(i) for i in range(1001)]
    emulator = MailgunEmulator(KEY, DOMAIN)
    with serve(emulator) as url:
        results = adapter_for(url).send_batch(prepared(), rs)
    assert {r.status for r in results} == {"sent"} and len(by_id(results)) == 1001
    assert emulator.batch_sizes == [1000, 1]
    assert_each_sent_once(emulator.delivered, rs)


def test_the_body_measured_is_the_body_sent(adapter_for) -> None:
    rs = [recipient(1), recipient(2, "a&b+c@example.org")]
    with recording_server(lambda m, path, b: QUEUED) as (url, reqs):
        adapter = adapter_for(url)
        adapter.send_batch(prepared(), rs)
    assert reqs[0]["body"] == adapter.encode(adapter.payload(prepared(), rs)) == urlencode(adapter.payload(prepared(), rs)).encode()
    assert int(reqs[0]["headers"]["Content-Length"]) == body_size(adapter, prepared(), rs)
    form(reqs[0])  # application/x-www-form-urlencoded, and it parses


def test_a_request_over_25_mb_is_split_in_two_under_it_at_the_real_limit(adapter_for) -> None:
    """Text and HTML go once per request, each recipient adds its variables: an issue just under the limit with
    1,000 recipients is over it, and goes in two requests of 500, each within 25 MB."""
    rs = [recipient(i) for i in range(1000)]
    emulator = MailgunEmulator(KEY, DOMAIN)  # a 413 over 25 MB, as Mailgun does
    with serve(emulator) as url:
        adapter = adapter_for(url)
        assert adapter.max_request_bytes == MAX_REQUEST_BYTES == 25 * MB
        # "x" is sent as it is: the body of all 1,000 in one request would be the limit + 200 KB.
        filler = "x" * (25 * MB - body_size(adapter, prepared(), rs) + 200_000)
        results = adapter.send_batch(prepared(html=prepared().html + filler), rs)
    sizes = [r["size"] for r in emulator.posts()]
    assert emulator.batch_sizes == [500, 500] and max(sizes) <= 25 * MB and emulator.too_large == 0
    assert {r.status for r in results} == {"sent"} and len(by_id(results)) == 1000
    assert_each_sent_once(emulator.delivered, rs)


def test_an_issue_over_25_mb_for_one_recipient_is_deferred_with_no_request_at_the_real_limit(adapter_for) -> None:
    emulator = MailgunEmulator(KEY, DOMAIN)
    with serve(emulator) as url:
        results = adapter_for(url).send_batch(prepared(html=prepared().html + "x" * (25 * MB)), [recipient(1), recipient(2)])
    assert {(r.status, r.kind) for r in results} == {("deferred", "sender")} and len(results) == 2
    assert results[0].error.startswith("too large to send: the request comes to 25.0 MB (25,00")
    assert "over Mailgun's 25 MB request size limit; nothing was sent to them" in results[0].error
    assert "[digest].max_items" in results[0].error
    assert emulator.posts() == [] and not emulator.delivered


def test_a_recipient_alone_over_a_lowered_limit_is_deferred_and_the_others_are_sent(adapter_for) -> None:
    rs = [recipient(i) for i in range(10)]
    rs[3].links["unsubscribe_url"] += "&x=" + "y" * 5000
    with serve(MailgunEmulator(KEY, DOMAIN)) as url:
        limit = body_size(adapter_for(url), prepared(), rs[:3])  # three ordinary recipients per request
    emulator = MailgunEmulator(KEY, DOMAIN, max_request_bytes=limit)
    with serve(emulator) as url:
        adapter = adapter_for(url)
        adapter.max_request_bytes = limit
        results = by_id(adapter.send_batch(prepared(), rs))
    assert (results[3].status, results[3].kind) == ("deferred", "sender")
    assert "over Mailgun's" in results[3].error and "for this recipient alone" in results[3].error
    assert all(r.status == "sent" for i, r in results.items() if i != 3)
    sizes = [r["size"] for r in emulator.posts()]
    assert len(sizes) >= 4 and max(sizes) <= limit and emulator.too_large == 0
    assert_each_sent_once(emulator.delivered, rs, but=frozenset({rs[3].email}))


def test_a_413_says_the_limit_has_changed(adapter_for) -> None:
    with recording_server(lambda m, path, b: (413, {"Content-Type": "text/html"}, b"<h1>413 Request Entity Too Large</h1>")) as (url, _):
        results = adapter_for(url).send_batch(prepared(), [recipient(1), recipient(2)])
    assert {(r.status, r.kind) for r in results} == {("deferred", "sender")}
    assert "too large (413)" in results[0].error and "MAX_REQUEST_BYTES" in results[0].error


# -- the key and the session ----------------------------------------------------------------------------


def test_the_key_is_not_in_repr_and_close_closes_the_session() -> None:
    adapter = MailgunAdapter(KEY, domain=DOMAIN, base_url="http://127.0.0.1:9")
    assert repr(adapter) == "MailgunAdapter(domain='mg.example.org', base_url='http://127.0.0.1:9', timeout=30.0)"
    with recording_server(lambda m, path, b: QUEUED) as (url, _):
        adapter.base_url = url
        assert_close_releases_the_pool(adapter, url, lambda: adapter.send_batch(prepared(), [recipient(1)]))


def test_bad_settings_are_refused_without_echoing_the_key() -> None:
    with pytest.raises(ValueError) as info:
        MailgunAdapter("key-secret\nX: 1", domain=DOMAIN)
    assert "secret" not in str(info.value)
    with pytest.raises(ValueError):
        MailgunAdapter(KEY, domain="mg.example.org/../other")
