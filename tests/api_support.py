"""What the mail-API adapter tests share: issues and recipients to send, server answers, and the checks on the key.

Two sets of test data: ``make_prepared`` / ``make_recipient`` / ``RECIPIENTS`` (the Postmark and Resend
tests) and ``prepared`` / ``recipient`` (the SendGrid and Mailgun tests).
"""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from typing import Any, Protocol, TypeVar

from publisher.delivery.api import Prepared, Recipient, Result, Slots

from .servers import free_port, recording_server

Respond = Callable[[str, str, bytes], tuple[int, dict[str, str], bytes]]


class Adapter(Protocol):
    def send_batch(self, prepared: Prepared, recipients: list[Recipient]) -> list[Result]: ...

    def close(self) -> None: ...


A = TypeVar("A", bound=Adapter)


# -- issues and recipients --------------------------------------------------------------------------------


def _recipient(i: int, email: str, *, site: str, idempotency_key: str) -> Recipient:
    return Recipient(
        subscriber_id=i,
        email=email,
        message_id=f"<digest.2026-W48.{i:04x}@example.org>",
        links={
            "unsubscribe_url": f"{site}/unsubscribe?s={i}&t=tok{i}",
            "preferences_url": f"{site}/preferences?s={i}&t=tok{i}",
        },
        idempotency_key=idempotency_key,
    )


SLOTS = Slots()  # one render's markers, as the renderer would draw them
PLACEHOLDERS = SLOTS.markers


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
        "slots": SLOTS,
    }
    fields.update(overrides)
    return Prepared(**fields)


def make_recipient(i: int, email: str) -> Recipient:
    return _recipient(i, email, site="https://example.org", idempotency_key=f"2026-W48/{i}")


RECIPIENTS = [make_recipient(1, "ada@example.com"), make_recipient(2, "bob+news@example.net"), make_recipient(3, "cy@example.edu")]

_p = PLACEHOLDERS
HTML = f'<p>Hello {_p["email"]}</p><p><a href="{_p["unsubscribe_url"]}">Unsubscribe</a> <a href="{_p["preferences_url"]}">Preferences</a></p>'
TEXT = f"Hello {_p['email']}\nUnsubscribe: {_p['unsubscribe_url']}\nPreferences: {_p['preferences_url']}\n"


def prepared(**changes: Any) -> Prepared:
    fields: dict[str, Any] = {
        "issue_id": "2026-W48",
        "subject": "Weekly digest — 27 November 2026",
        "from_name": "Publisher Sample Institute",
        "from_address": "digest@example.org",
        "reply_to": "editors@example.org",
        "html": HTML,
        "text": TEXT,
        "list_id": "Publisher Sample Institute <digest.example.org>",
        "slots": SLOTS,
    }
    fields.update(changes)
    return Prepared(**fields)


def recipient(i: int, email: str | None = None) -> Recipient:
    return _recipient(i, email or f"reader{i}@example.com", site="http://127.0.0.1:8000", idempotency_key=f"2026-W48:{i}")


def digest_html(size: int, slots: Slots = SLOTS) -> str:
    """A digest's HTML of ``size`` bytes or a little more: item after item as the renderer lays them out (inline
    styles, linked, not embedded, images), the recipient's address at the top and their links at the bottom."""
    p = slots.markers
    head = f'<!doctype html><html><body><table role="presentation" width="100%"><tr><td><p>Sent to {p["email"]}.</p></td></tr>'
    tail = (f'<tr><td><p><a href="{p["unsubscribe_url"]}">Unsubscribe</a> · <a href="{p["preferences_url"]}">Preferences</a></p>'
            "</td></tr></table></body></html>")
    items, n, i = [], len(head) + len(tail), 0
    while n < size:
        item = (f'<tr><td style="padding:16px 0;border-bottom:1px solid #e2e2e2;font-family:Georgia,serif">'
                f'<img src="https://example.org/media/items/{i:05d}.jpg" width="560" alt="" style="display:block;max-width:100%">'
                f'<h2 style="font-size:20px;margin:8px 0"><a href="https://example.org/research/{i:05d}-what-the-study-found" '
                f'style="color:#0b3d91;text-decoration:none">Item {i}: what the study found, and why it matters</a></h2>'
                '<p style="color:#333;line-height:1.5">A summary of two or three sentences, as the source gives it: the question, '
                "the method, the finding, and who wrote it, with the date and the topic it was filed under.</p></td></tr>")
        items.append(item)
        n += len(item)
        i += 1
    return head + "".join(items) + tail


def assert_each_sent_once(delivered: Counter[str], recipients: list[Recipient], *, but: frozenset[str] = frozenset()) -> None:
    """The provider accepted a message for every recipient exactly once, except ``but`` (never)."""
    assert dict(delivered) == {r.email: 1 for r in recipients if r.email not in but}


# -- the server's answers and the results ---------------------------------------------------------------


def answer(status: int, obj: Any = None, headers: dict[str, str] | None = None) -> Respond:
    """A server that always answers ``status`` with ``obj`` as JSON (no body for None)."""
    payload = b"" if obj is None else json.dumps(obj).encode()

    def respond(method: str, path: str, body: bytes) -> tuple[int, dict[str, str], bytes]:
        return status, {"Content-Type": "application/json", **(headers or {})}, payload

    return respond


def send_through(
    adapter_for: Callable[..., AbstractContextManager[A]], respond: Respond, recipients: list[Recipient], **kwargs: Any
) -> tuple[list[Result], list[dict[str, Any]]]:
    """``make_prepared()`` sent to ``recipients`` by an adapter against a server answering ``respond``: results and requests."""
    with recording_server(respond) as (url, requests), adapter_for(url, **kwargs) as adapter:
        results = adapter.send_batch(make_prepared(), recipients)
    return results, requests


def assert_personalised(html: str, text: str, r: Recipient, everybody: list[Recipient]) -> None:
    """``make_prepared()``'s HTML and text parts as ``r`` gets them: their own address and links, nobody else's."""
    i = r.subscriber_id
    assert f"Sent to {r.email}." in html
    assert f'href="https://example.org/unsubscribe?s={i}&amp;t=tok{i}"' in html
    assert f'href="https://example.org/preferences?s={i}&amp;t=tok{i}"' in html
    assert f"Sent to {r.email}." in text
    assert f"Unsubscribe: https://example.org/unsubscribe?s={i}&t=tok{i}\n" in text
    assert f"Preferences: https://example.org/preferences?s={i}&t=tok{i}\n" in text
    for other in everybody:
        if other is not r:
            assert other.email not in html + text
            assert f"s={other.subscriber_id}&" not in html + text
    assert SLOTS.nonce not in html + text


def by_id(results: list[Result]) -> dict[int, Result]:
    assert len({r.subscriber_id for r in results}) == len(results), "one result per recipient"
    return {r.subscriber_id: r for r in results}


def lower(headers: dict[str, str]) -> dict[str, str]:
    return {k.lower(): v for k, v in headers.items()}


# -- adapters, the key and the session ------------------------------------------------------------------


def closing_all(make: Callable[..., A]) -> Iterator[Callable[..., A]]:
    """For a fixture: ``make``, and every adapter it made closed afterwards."""
    made: list[A] = []

    def tracked(*args: Any, **kwargs: Any) -> A:
        made.append(make(*args, **kwargs))
        return made[-1]

    yield tracked
    for a in made:
        a.close()


def assert_no_key(results: list[Result], key: str) -> None:
    for r in results:
        assert key not in r.error


def assert_close_releases_the_pool(adapter: Any, url: str, send: Callable[[], object]) -> None:
    """After ``send()`` the adapter's session holds one connection pool for ``url``; ``close()`` empties it."""
    send()
    pool = adapter._session.get_adapter(url).poolmanager
    assert len(pool.pools) == 1
    adapter.close()
    assert len(pool.pools) == 0


# -- no answer: a timeout, a refused connection, a deferral --------------------------------------------


def assert_a_timeout_defers_all(send: Callable[..., tuple[list[Result], list[dict[str, Any]]]], body: bytes) -> None:
    """With ``send(respond, timeout=...)`` (``RECIPIENTS``): a server slower than the timeout, one attempt, all deferred."""

    def slow(method: str, path: str, b: bytes) -> tuple[int, dict[str, str], bytes]:
        time.sleep(1.5)
        return 200, {}, body

    started = time.monotonic()
    results, requests = send(slow, timeout=0.5)
    assert time.monotonic() - started < 1.4
    assert len(requests) == 1  # one attempt, no retry
    assert len(results) == 3
    assert {r.status for r in results} == {"deferred"}
    assert all("did not answer within 0.5 s" in r.error for r in results)


def assert_connection_refused_defers_all(adapter_for: Callable[..., AbstractContextManager[A]], provider: str, key: str) -> None:
    port = free_port()  # bound, then closed: nothing listens there
    with adapter_for(f"http://127.0.0.1:{port}", timeout=5) as adapter:
        results = adapter.send_batch(make_prepared(), RECIPIENTS)
    assert len(results) == 3
    assert {r.status for r in results} == {"deferred"}
    assert all(f"cannot reach {provider}" in r.error for r in results)
    assert_no_key(results, key)


def assert_a_timeout_defers(adapter_for: Callable[..., Adapter], late: tuple[int, dict[str, str], bytes]) -> None:
    """A server that answers ``late`` only after the adapter's timeout: one attempt, both recipients deferred."""
    release = threading.Event()

    def slow(method: str, path: str, body: bytes) -> tuple[int, dict[str, str], bytes]:
        release.wait(5)
        return late

    with recording_server(slow) as (url, reqs):
        started = time.monotonic()
        results = adapter_for(url, timeout=0.5).send_batch(prepared(), [recipient(1), recipient(2)])
        elapsed = time.monotonic() - started
        release.set()
    assert {r.status for r in results} == {"deferred"}
    assert "0.5 s" in results[0].error
    assert elapsed < 3
    assert len(reqs) == 1


def assert_connection_refused_defers(adapter_for: Callable[..., Adapter], provider: str, key: str) -> None:
    results = adapter_for(f"http://127.0.0.1:{free_port()}", timeout=2).send_batch(prepared(), [recipient(1), recipient(2)])
    assert {r.status for r in results} == {"deferred"}
    assert f"cannot reach {provider}" in results[0].error
    assert all(key not in r.error for r in results)


def assert_a_deferral_while_isolating_defers_the_rest(adapter_for: Callable[..., Adapter], refusal: bytes, slow_down: bytes) -> None:
    """A 400 (``refusal``), then a 429 with Retry-After (``slow_down``): the bisection stops, all four are deferred."""
    answers = iter([(400, {}, refusal)])

    def respond(method: str, path: str, body: bytes) -> tuple[int, dict[str, str], bytes]:
        return next(answers, (429, {"Retry-After": "3"}, slow_down))

    with recording_server(respond) as (url, reqs):
        results = adapter_for(url).send_batch(prepared(), [recipient(i) for i in range(4)])
    assert {(r.status, r.retry_after) for r in results} == {("deferred", 3.0)}
    assert len(results) == 4 and len(reqs) == 2
