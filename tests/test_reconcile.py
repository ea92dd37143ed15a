"""After a crash, Postmark and Mailgun are asked which messages of a batch in flight they accepted, before anything is resent.

Against emulations of the providers' documented endpoints (``provider_emulators``) on real local HTTP
servers: first the adapters (the key in every message, reconcile confirming only what was accepted, bounded
when the provider is slow, down or hanging), then the real `publisher digest send` killed -9 while a batch
it had sent waits for its answer, and run again.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Iterator
from contextlib import closing, contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from publisher.delivery.api import Recipient, Result
from publisher.delivery.api._http import Lookups
from publisher.delivery.api.mailgun import MailgunAdapter, variable
from publisher.delivery.api.postmark import PostmarkAdapter, metadata_value

from .api_support import make_prepared, make_recipient, prepared, recipient
from .provider_emulators import MailgunEmulator, PostmarkEmulator, serve
from .test_delivery_faults import configure, env_for, kill9, publisher, start, wait_for, with_subscribers

PM_KEY = "pm-server-token-5f0c1d2e"
MG_KEY = "key-9bq2ve7w0l8r4k1mz6ty3hgd5nxs0cpa"
DOMAIN = "mg.example.org"
FAST = Lookups(budget=5.0, timeout=2.0, lag_waits=(0.2, 0.4))


def postmark(url: str, **kwargs: Any) -> closing[PostmarkAdapter]:
    return closing(PostmarkAdapter(PM_KEY, base_url=url, **kwargs))


def mailgun(url: str, **kwargs: Any) -> closing[MailgunAdapter]:
    return closing(MailgunAdapter(MG_KEY, domain=DOMAIN, base_url=url, **kwargs))


def sent_ids(results: list[Result]) -> set[int]:
    assert all(r.status == "sent" for r in results)
    return {r.subscriber_id for r in results}


@contextmanager
def silent_server() -> Iterator[tuple[str, list[float]]]:
    """Takes every connection and request, and never answers; yields its URL and when each request came."""
    came: list[float] = []
    release = threading.Event()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            came.append(time.monotonic())
            release.wait()

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", came
    finally:
        release.set()
        server.shutdown()
        server.server_close()


# -- Postmark: the metadata, the search ---------------------------------------------------------------


def test_postmark_tags_every_message_with_its_key_within_postmarks_metadata_limits() -> None:
    long_issue = "x" * 90
    batch = [make_recipient(1, "ada@example.com"), Recipient(2, "bob@example.net", "<b@example.org>", make_recipient(2, "b@x").links,
                                                             f"{long_issue}:2")]
    emulator = PostmarkEmulator(PM_KEY)
    with serve(emulator) as url, postmark(url) as adapter:
        messages = adapter.payload(make_prepared(), batch)
        results = adapter.send_batch(make_prepared(), batch)
    assert messages[0]["Metadata"] == {"publisher-key": "2026-W48/1"}
    long = messages[1]["Metadata"]["publisher-key"]
    assert long.startswith("sha256:") and len(long) <= 80 and long == metadata_value(f"{long_issue}:2")
    assert sent_ids(results) == {1, 2}  # the emulator refuses metadata past Postmark's limits
    assert [m["Metadata"] for m in emulator.messages] == [{"publisher-key": "2026-W48/1"}, {"publisher-key": long}]


def test_postmark_reconcile_confirms_what_postmark_accepted_and_nothing_else() -> None:
    accepted = [make_recipient(i, f"reader{i}@example.com") for i in range(1, 4)]
    never_sent = make_recipient(4, "reader4@example.com")
    other_issue = Recipient(5, "reader5@example.com", "<5@example.org>", never_sent.links, "2026-W47/5")
    this_issue = make_recipient(5, "reader5@example.com")  # got last week's issue, not this one
    emulator = PostmarkEmulator(PM_KEY)
    with serve(emulator) as url, postmark(url, lookups=FAST) as adapter:
        assert sent_ids(adapter.send_batch(make_prepared(), [*accepted, other_issue])) == {1, 2, 3, 5}
        found = adapter.reconcile("2026-W48", [*accepted, never_sent, this_issue])
    assert sent_ids(found) == {1, 2, 3}
    searches = [r for r in emulator.requests if r["path"] == "/messages/outbound"]
    first = next(r for r in searches if dict(r["query"])["recipient"] == "reader1@example.com")  # asked in parallel: any order
    assert dict(first["query"]) == {"count": "50", "offset": "0", "recipient": "reader1@example.com", "messagestream": "broadcast",
                                    "metadata_publisher-key": "2026-W48/1"}
    headers = {k.lower(): v for k, v in first["headers"].items()}
    assert headers["accept"] == "application/json" and headers["x-postmark-server-token"] == PM_KEY
    # Those not found were asked again after each lag wait; the confirmed ones only once.
    asked = [dict(r["query"])["recipient"] for r in searches]
    assert asked.count("reader1@example.com") == 1 and asked.count("reader4@example.com") == 3


def test_postmark_reconcile_waits_out_a_search_that_lags_behind_sending() -> None:
    batch = [make_recipient(i, f"reader{i}@example.com") for i in range(1, 4)]
    emulator = PostmarkEmulator(PM_KEY, lag=1.2)
    with serve(emulator) as url, postmark(url) as adapter:  # the default waits: 1 s, then 2 s
        adapter.send_batch(make_prepared(), batch)
        began = time.monotonic()
        found = adapter.reconcile("2026-W48", batch)
    assert sent_ids(found) == {1, 2, 3}
    assert time.monotonic() - began < 5


def test_postmark_reconcile_is_bounded_on_a_server_that_never_answers() -> None:
    batch = [make_recipient(i, f"reader{i}@example.com") for i in range(1, 41)]
    with silent_server() as (url, came), postmark(url, lookups=Lookups(budget=1.5)) as adapter:
        began = time.monotonic()
        found = adapter.reconcile("2026-W48", batch)
        took = time.monotonic() - began
    assert found == []
    assert took < 3, took
    assert len(came) <= 8  # one request per worker, each given up at the budget's end


@pytest.mark.parametrize("fault", ["503", "hang"])
def test_postmark_reconcile_with_the_search_down_confirms_nobody_soon_and_never_logs_the_key(fault: str, caplog: pytest.LogCaptureFixture) -> None:
    batch = [make_recipient(i, f"reader{i}@example.com") for i in range(1, 41)]
    emulator = PostmarkEmulator(PM_KEY)
    lookups = Lookups(budget=20.0, timeout=0.5)
    with serve(emulator) as url, postmark(url, lookups=lookups) as adapter:
        adapter.send_batch(make_prepared(), batch)
        emulator.search_down = fault
        began = time.monotonic()
        with caplog.at_level(logging.WARNING):
            found = adapter.reconcile("2026-W48", batch)
        took = time.monotonic() - began
    assert found == []
    assert took < 3, took  # it stops asking after a few failed requests, long before the budget
    assert emulator.searches <= lookups.max_errors + lookups.workers
    assert "could not be asked" in caplog.text and ("503" in caplog.text or "did not answer" in caplog.text)
    assert PM_KEY not in caplog.text


def test_postmark_reconcile_scrubs_a_key_the_server_echoes_back(caplog: pytest.LogCaptureFixture) -> None:
    from .servers import recording_server

    def echo(method: str, path: str, body: bytes) -> tuple[int, dict[str, str], bytes]:
        return 500, {}, f"internal error while handling token {PM_KEY}".encode()

    with recording_server(echo) as (url, _), postmark(url, lookups=FAST) as adapter, caplog.at_level(logging.WARNING):
        assert adapter.reconcile("2026-W48", [make_recipient(1, "a@example.com")]) == []
    assert "[redacted]" in caplog.text and PM_KEY not in caplog.text


# -- Mailgun: the user variable, the events ----------------------------------------------------------------


def test_mailgun_sets_the_key_per_recipient_as_a_user_variable_through_recipient_variables() -> None:
    batch = [recipient(1), recipient(2)]
    p = prepared()
    emulator = MailgunEmulator(MG_KEY, DOMAIN)
    with serve(emulator) as url, mailgun(url) as adapter:
        fields = adapter.payload(p, batch)
        results = adapter.send_batch(p, batch)
    key_var = variable(p, "publisher-key")
    assert key_var.startswith(f"pub{p.slots.nonce}_")  # the render's nonce: no source text can name it
    assert ("v:publisher-key", f"%recipient.{key_var}%") in fields
    variables = json.loads(dict(fields)["recipient-variables"])
    assert {r.email: variables[r.email][key_var] for r in batch} == {r.email: r.idempotency_key for r in batch}
    assert sent_ids(results) == {1, 2}
    assert {e["recipient"]: e["user-variables"]["publisher-key"] for e in emulator.events} == {r.email: r.idempotency_key for r in batch}


def test_mailgun_reconcile_confirms_the_accepted_events_with_our_key_and_nothing_else() -> None:
    accepted = [recipient(i) for i in range(1, 4)]
    never_sent = recipient(4)
    last_week = Recipient(5, recipient(5).email, "<5@example.org>", recipient(5).links, "2026-W47:5")
    emulator = MailgunEmulator(MG_KEY, DOMAIN)
    with serve(emulator) as url, mailgun(url, lookups=FAST) as adapter:
        assert sent_ids(adapter.send_batch(prepared(), accepted)) == {1, 2, 3}
        assert sent_ids(adapter.send_batch(prepared(issue_id="2026-W47"), [last_week])) == {5}
        found = adapter.reconcile("2026-W48", [*accepted, never_sent, recipient(5)])
    assert sent_ids(found) == {1, 2, 3}
    first = next(r for r in emulator.requests if r["path"] == f"/v3/{DOMAIN}/events" and dict(r["query"])["recipient"] == "reader1@example.com")
    query = dict(first["query"])
    assert {k: v for k, v in query.items() if k != "begin"} == {"event": "accepted", "recipient": "reader1@example.com",
                                                               "ascending": "yes", "limit": "300"}
    assert time.time() - 3 * 24 * 3600 - 60 < float(query["begin"]) < time.time() - 3 * 24 * 3600 + 60


def test_mailgun_reconcile_reads_the_next_pages_and_recognises_messages_sent_before_the_key() -> None:
    """More than a page of the recipient's events (another issue each), ours last; and an event from before
    v:publisher-key existed, recognised by its v:issue_id and v:subscriber_id."""
    r, old = recipient(1), recipient(2)
    emulator = MailgunEmulator(MG_KEY, DOMAIN)
    now = time.time()
    emulator.events += [{"event": "accepted", "id": f"e{i}", "timestamp": now - 1000 + i, "recipient": r.email,
                         "user-variables": {"publisher-key": f"2025-W{i}:1"}, "_at": 0.0} for i in range(320)]
    emulator.events.append({"event": "accepted", "id": "ours", "timestamp": now, "recipient": r.email,
                            "user-variables": {"publisher-key": r.idempotency_key}, "_at": 0.0})
    emulator.events.append({"event": "accepted", "id": "old", "timestamp": now, "recipient": old.email,
                            "user-variables": {"issue_id": "2026-W48", "subscriber_id": "2"}, "_at": 0.0})
    with serve(emulator) as url, mailgun(url, lookups=FAST) as adapter:
        assert sent_ids(adapter.reconcile("2026-W48", [r, old])) == {1, 2}
    assert len([q for q in emulator.requests if q["path"].startswith(f"/v3/{DOMAIN}/events")]) == 3  # 2 pages, plus 1


def test_mailgun_reconcile_never_follows_a_page_off_our_base_url() -> None:
    """A ``paging.next`` on another host would get the key in its Authorization header: it is not followed."""
    from .servers import recording_server

    def events(method: str, path: str, body: bytes) -> tuple[int, dict[str, str], bytes]:
        page = {"items": [{"event": "accepted", "recipient": "x@example.com", "user-variables": {}}],
                "paging": {"next": "http://127.0.0.2:9/v3/mg.example.org/events/abc"}}
        return 200, {"Content-Type": "application/json"}, json.dumps(page).encode()

    with recording_server(events) as (url, requests), mailgun(url, lookups=Lookups(budget=2.0, lag_waits=())) as adapter:
        assert adapter.reconcile("2026-W48", [recipient(1)]) == []
    assert len(requests) == 1


def test_mailgun_reconcile_is_bounded_on_a_server_that_never_answers() -> None:
    with silent_server() as (url, came), mailgun(url, lookups=Lookups(budget=1.5)) as adapter:
        began = time.monotonic()
        assert adapter.reconcile("2026-W48", [recipient(i) for i in range(40)]) == []
        took = time.monotonic() - began
    assert took < 3, took
    assert len(came) <= 8


def test_mailgun_reconcile_with_the_events_down_confirms_nobody_and_never_logs_the_key(caplog: pytest.LogCaptureFixture) -> None:
    emulator = MailgunEmulator(MG_KEY, DOMAIN)
    batch = [recipient(i) for i in range(40)]
    with serve(emulator) as url, mailgun(url, lookups=Lookups(budget=20.0)) as adapter:
        adapter.send_batch(prepared(), batch)
        emulator.search_down = "503"
        with caplog.at_level(logging.WARNING):
            assert adapter.reconcile("2026-W48", batch) == []
    assert emulator.searches <= 3 + 8
    assert "Mailgun could not be asked" in caplog.text and "503" in caplog.text and MG_KEY not in caplog.text


# -- end to end: `publisher digest send` killed -9 while a batch it sent waits for its answer ------------------


SUBSCRIBERS = 300
BATCH = 50  # [delivery].batch_size: one API request per claimed batch


def outcomes_journaled(project: Path) -> int:
    lines = [line for p in (project / "var" / "journal").glob("*.journal") for line in p.read_text(encoding="utf-8").splitlines()]
    return sum(1 for line in lines if line and not line.startswith('["inflight"'))


def crash_then_send(project: Path, emulator: PostmarkEmulator | MailgunEmulator, backend: tuple[tuple[str, str], ...], key: str,
                    search_down: str = "") -> tuple[list[str], Any]:
    """``digest send`` until the 2nd request (accepted, never answered) is the only one left, kill -9, then send again."""
    with serve(emulator) as base:
        configure(project, ('backend = "outbox"', f'backend = "{backend[0][1]}"'), ('base_url = ""', f'base_url = "{base}"'), *backend[1:])
        env = env_for(PUBLISHER_API_KEY=key)
        emails = with_subscribers(project, SUBSCRIBERS, env=env)
        first = start(project, "digest", "send", "--no-progress", env=env)
        requests = SUBSCRIBERS // BATCH
        assert wait_for(lambda: emulator.sends == requests and emulator.answered == requests - 1, 60, first), (emulator.sends, emulator.answered)
        assert wait_for(lambda: outcomes_journaled(project) >= SUBSCRIBERS - BATCH, 10, first)
        assert first.poll() is None  # still waiting for the hung request's answer
        kill9(first)
        assert sum(emulator.delivered.values()) == SUBSCRIBERS  # Postmark / Mailgun has accepted everybody
        emulator.search_down = search_down
        again = publisher(project, "digest", "send", "--no-progress", env=env)
    return emails, again


POSTMARK = (("backend", "postmark"),)
MAILGUN = (("backend", "mailgun"), ('\ndomain = ""', f'\ndomain = "{DOMAIN}"'))


@pytest.mark.parametrize("backend", ["postmark", "mailgun"])
def test_a_batch_accepted_but_unanswered_when_the_send_was_killed_is_found_again_not_resent(project: Path, backend: str) -> None:
    emulator = PostmarkEmulator(PM_KEY, hang={2}) if backend == "postmark" else MailgunEmulator(MG_KEY, DOMAIN, hang={2})
    emails, again = crash_then_send(project, emulator, POSTMARK if backend == "postmark" else MAILGUN, PM_KEY if backend == "postmark" else MG_KEY)
    assert again.returncode == 0, again.stdout + again.stderr
    assert emulator.searches >= BATCH  # the hung batch was asked about
    assert {e: emulator.delivered[e] for e in emails} == {e: 1 for e in emails}  # everybody exactly once
    assert sum(emulator.delivered.values()) == SUBSCRIBERS
    assert "stays open" not in again.stdout


@pytest.mark.parametrize("backend", ["postmark", "mailgun"])
def test_with_the_search_down_the_unknown_batch_is_sent_again_and_the_send_still_succeeds(project: Path, backend: str) -> None:
    emulator = PostmarkEmulator(PM_KEY, hang={2}) if backend == "postmark" else MailgunEmulator(MG_KEY, DOMAIN, hang={2})
    emails, again = crash_then_send(project, emulator, POSTMARK if backend == "postmark" else MAILGUN,
                                    PM_KEY if backend == "postmark" else MG_KEY, search_down="503")
    assert again.returncode == 0, again.stdout + again.stderr
    assert all(emulator.delivered[e] >= 1 for e in emails)  # nobody lost
    twice = [e for e in emails if emulator.delivered[e] == 2]
    assert len(twice) == BATCH and all(emulator.delivered[e] <= 2 for e in emails)  # duplicates: that one batch
    assert "could not be asked" in again.stderr + again.stdout
    assert (PM_KEY if backend == "postmark" else MG_KEY) not in again.stderr + again.stdout

