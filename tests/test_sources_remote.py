"""publisher/sources/remote.py (feeds and HTML pages over HTTP) and publisher/sources/ssrf.py, against real local servers."""

from __future__ import annotations

import gzip
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from publisher import __version__
from publisher.errors import SourceError
from publisher.ingest import ingest
from publisher.sources import ssrf
from publisher.sources.remote import FeedSource, Fetcher, FetchError, PageSource, RemoteResult, parse_date, selector_problems, split_credit
from publisher.sources.ssrf import UnsafeURLError, blocked_reason, check_url
from publisher.store import Store, open_store

from .conftest import NOW

BASE = "http://127.0.0.1:8000"
DATA = Path(__file__).parent / "data" / "remote"
NY = ZoneInfo("America/New_York")
SELECTORS = {
    "item": "ul.results > li", "title": "h3.title", "link": "h3.title a", "summary": "p.desc", "date": ".date",
    "content_type": "p.type", "image": "figure img", "caption": "figcaption",
}
RSS_TYPE = {"Content-Type": "application/rss+xml; charset=utf-8"}


# -- helpers --------------------------------------------------------------------------------------------------


def item(n: int, *, guid: str | None = None, link: str | None = None, title: str | None = None,
         date: str | None = "Mon, 26 Feb 2024 10:00:00 +0100", extra: str = "") -> str:
    guid = f"urn:example:{n}" if guid is None else guid
    link = f"https://www.example.net/pubs/{n}.html" if link is None else link
    title = f"Entry {n}" if title is None else title
    parts = [f"<title>{title}</title>", f"<link>{link}</link>"]
    if guid:
        parts.append(f'<guid isPermaLink="false">{guid}</guid>')
    if date:
        parts.append(f"<pubDate>{date}</pubDate>")
    parts.append(f"<description>Summary of entry {n}.</description>")
    return "<item>" + "".join(parts) + extra + "</item>"


def rss(*items: str) -> bytes:
    return (
        '<?xml version="1.0" encoding="utf-8"?>\n'
        '<rss version="2.0" xmlns:media="http://search.yahoo.com/mrss/" xmlns:content="http://purl.org/rss/1.0/modules/content/"'
        ' xmlns:dc="http://purl.org/dc/elements/1.1/"><channel><title>Example</title><link>https://www.example.net/</link>'
        "<description>An example feed</description>" + "".join(items) + "</channel></rss>"
    ).encode()


def serve_static(body: bytes, headers: dict[str, str] | None = None) -> Callable[[str, str, bytes], tuple[int, dict[str, str], bytes]]:
    return lambda method, path, _body: (200, headers or RSS_TYPE, body)


@contextmanager
def raw_server(handle: Callable[[BaseHTTPRequestHandler], None]) -> Iterator[str]:
    """A real server on 127.0.0.1 whose handler writes the response itself (to stream, to stall); a client hanging up is fine."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            try:
                handle(self)
            except (BrokenPipeError, ConnectionResetError):
                pass

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@contextmanager
def recording_server(respond: Callable[[str, str, bytes], tuple[int, dict[str, str], bytes]]) -> Iterator[tuple[str, list[dict[str, Any]]]]:
    """tests/servers.py's recording_server (same interface), stopping in 20 ms instead of 500."""
    requests: list[dict[str, Any]] = []

    def handle(h: BaseHTTPRequestHandler) -> None:
        requests.append({"method": h.command, "path": h.path, "headers": dict(h.headers), "body": b""})
        status, headers, payload = respond(h.command, h.path, b"")
        h.send_response(status)
        for k, v in headers.items():
            h.send_header(k, v)
        h.send_header("Content-Length", str(len(payload)))
        h.end_headers()
        h.wfile.write(payload)

    with raw_server(handle) as url:
        yield url, requests


@pytest.fixture
def fetchers() -> Iterator[Callable[..., Fetcher]]:
    made: list[Fetcher] = []

    def make(**kw: Any) -> Fetcher:
        kw.setdefault("allow_private", True)  # the test servers live on 127.0.0.1
        f = Fetcher(BASE, **kw)
        made.append(f)
        return f

    yield make
    for f in made:
        f.close()


@pytest.fixture
def db(tmp_path: Path) -> Iterator[Store]:
    s = open_store(f"sqlite:///{tmp_path / 's.db'}")
    yield s
    s.close()


def feed(name: str, url: str, fetcher: Fetcher, state: dict[str, Any] | None = None, **kw: Any) -> FeedSource:
    return FeedSource(name, url, base_url=BASE, timezone="UTC", state={} if state is None else state, fetcher=fetcher, **kw)


def only_error(result: RemoteResult) -> SourceError:
    assert len(result.errors) == 1, result.errors
    return result.errors[0]


@contextmanager
def fake_dns(monkeypatch: pytest.MonkeyPatch, answers: dict[str, Callable[[], str] | str]) -> Iterator[None]:
    """socket.getaddrinfo answering for made-up names; everything else goes to the real resolver."""
    real = socket.getaddrinfo

    def getaddrinfo(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        if host in answers:
            answer = answers[host]
            ip = answer() if callable(answer) else answer
            return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (ip, int(port)))]
        return real(host, port, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    yield


# -- feeds: what an entry becomes -------------------------------------------------------------------------------


def test_rss_entry_becomes_a_publication(fetchers: Callable[..., Fetcher]) -> None:
    body = rss(
        "<item><title>&lt;b&gt;Bold&lt;/b&gt; &amp;amp; &lt;script&gt;alert(1)&lt;/script&gt;plain</title>"
        "<link>/pubs/one.html</link><guid isPermaLink=\"false\">urn:one</guid>"
        "<description>&lt;p&gt;Short &lt;em&gt;summary&lt;/em&gt;&lt;script&gt;steal()&lt;/script&gt; here.&lt;/p&gt;</description>"
        '<content:encoded><![CDATA[<p onclick="x()">Body with <a href="/rel">a link</a><img src="https://img.example.net/a.png" onerror="y()"></p><script>z()</script>]]></content:encoded>'
        "<pubDate>Mon, 26 Feb 2024 10:00:00 +0100</pubDate><dc:creator>Jane Roe</dc:creator>"
        '<media:content url="https://img.example.net/one.jpg" medium="image"><media:credit>Kevin J. Steinberg/U.S. Navy</media:credit></media:content>'
        "<category>Research Brief</category></item>",
        item(2, extra='<enclosure url="https://img.example.net/two.png" type="image/png" length="10"/>'),
        item(3, extra='<media:thumbnail url="/thumbs/three.jpg"/>'),
    )
    with recording_server(serve_static(body)) as (url, _):
        result = feed("think", f"{url}/feed.xml", fetchers(), topics=("security-cooperation",),
                      content_types=("Commentary", "Research Brief")).fetch()
    assert result.errors == [] and result.warnings == [] and not result.not_modified
    one, two, three = result.publications
    assert one.id == "think:urn:one"
    assert one.url == f"{url}/pubs/one.html"  # made absolute against the feed's URL
    assert one.title == "Bold & plain"
    assert one.summary == "Short summary here."
    assert "<script" not in one.body_html and "onclick" not in one.body_html and "onerror" not in one.body_html
    assert f'href="{url}/rel"' in one.body_html and 'src="https://img.example.net/a.png"' in one.body_html
    assert one.published_at == datetime(2024, 2, 26, 9, 0, tzinfo=timezone.utc)
    assert one.updated_at == one.published_at and one.published_at.tzinfo is not None
    assert one.authors == ("Jane Roe",)
    assert one.image is not None and one.image.url == "https://img.example.net/one.jpg"
    assert one.image.credit == "Kevin J. Steinberg/U.S. Navy"
    assert one.topics == ("security-cooperation",) and one.source == "think"
    assert one.content_type == "Research Brief"  # an entry category naming a known type
    assert two.content_type == "Commentary"  # the configured one
    assert two.image is not None and two.image.url == "https://img.example.net/two.png"
    assert three.image is not None and three.image.url == "https://www.example.net/thumbs/three.jpg"  # against the entry link


def test_atom_feed_with_only_updated_dates_and_xhtml_content(fetchers: Callable[..., Fetcher]) -> None:
    body = b"""<?xml version="1.0" encoding="utf-8"?>
<feed xmlns="http://www.w3.org/2005/Atom" xml:base="https://atom.example.org/blog/">
  <title>Atom</title><id>urn:feed</id><updated>2024-04-16T12:00:00Z</updated>
  <entry>
    <title type="html">Gray &lt;i&gt;Zone&lt;/i&gt;</title>
    <id>tag:atom.example.org,2024:1</id>
    <link rel="alternate" href="posts/gray-zone"/>
    <updated>2024-04-16T12:00:00-04:00</updated>
    <author><name>A. Writer</name></author><author><name>B. Writer</name></author>
    <summary>Plain summary.</summary>
    <content type="xhtml"><div xmlns="http://www.w3.org/1999/xhtml"><p>XHTML <a href="more">body</a></p></div></content>
  </entry>
</feed>"""
    with recording_server(serve_static(body, {"Content-Type": "application/atom+xml"})) as (url, _):
        result = feed("atom", f"{url}/atom", fetchers()).fetch()
    assert result.errors == [] and result.warnings == []
    [pub] = result.publications
    assert pub.id == "atom:tag:atom.example.org,2024:1"
    assert pub.url == "https://atom.example.org/blog/posts/gray-zone"
    assert pub.title == "Gray Zone"
    assert pub.published_at == datetime(2024, 4, 16, 16, 0, tzinfo=timezone.utc)  # Atom's required date stands in
    assert pub.authors == ("A. Writer", "B. Writer")
    assert 'href="https://atom.example.org/blog/more"' in pub.body_html


def test_json_feed_is_read_with_json(fetchers: Callable[..., Fetcher]) -> None:
    doc = {
        "version": "https://jsonfeed.org/version/1.1", "title": "JSON", "home_page_url": "https://json.example.org/",
        "authors": [{"name": "Feed Author"}],
        "items": [
            {"id": "1", "url": "https://json.example.org/one", "title": "One <b>bold</b>",
             "content_html": "<p>Hello<script>x()</script></p>", "summary": "First.",
             "date_published": "2024-02-26T10:00:00+01:00", "image": "/img/one.jpg", "tags": ["Multimedia"]},
            {"id": 2, "url": "/two", "title": "Two", "content_text": "Para one.\n\nPara <two>.",
             "date_published": "2024-02-27T08:30:00", "authors": [{"name": "Item Author"}]},
            {"id": "3", "url": "https://json.example.org/three", "title": "Three"},
        ],
    }
    # served as text/plain on purpose: the body starting with "{" is enough
    with recording_server(serve_static(json.dumps(doc).encode(), {"Content-Type": "text/plain"})) as (url, _):
        result = FeedSource("js", f"{url}/feed.json", base_url=BASE, timezone="America/New_York", state={},
                            fetcher=fetchers(), content_types=("Multimedia",)).fetch()
    assert result.errors == []
    one, two, three = result.publications
    assert (one.id, one.title, one.summary, one.content_type) == ("js:1", "One bold", "First.", "Multimedia")
    assert one.body_html == "<p>Hello</p>"
    assert one.image is not None and one.image.url == "https://json.example.org/img/one.jpg"
    assert one.authors == ("Feed Author",)
    assert one.published_at == datetime(2024, 2, 26, 9, 0, tzinfo=timezone.utc)
    assert two.id == "js:2" and two.url == f"{url}/two" and two.authors == ("Item Author",)
    assert two.published_at == datetime(2024, 2, 27, 8, 30, tzinfo=NY)  # naive: the site's zone
    assert two.body_html == "<p>Para one.</p><p>Para &lt;two&gt;.</p>" and two.summary == "Para one. Para <two>."
    assert three.published_at is None
    assert [w for w in result.warnings if "item 3" in w and "no date" in w]


def test_missing_or_unreadable_dates_are_warnings_not_errors(fetchers: Callable[..., Fetcher]) -> None:
    body = rss(item(1, date=None), item(2, date="sometime next week"), item(3))
    with recording_server(serve_static(body)) as (url, _):
        result = feed("d", f"{url}/f", fetchers()).fetch()
    assert result.errors == []
    assert [p.published_at is None for p in result.publications] == [True, True, False]
    assert len(result.warnings) == 2
    assert "no date" in result.warnings[0] and "'sometime next week' not understood" in result.warnings[1]


def test_bad_entries_are_skipped_one_by_one(fetchers: Callable[..., Fetcher]) -> None:
    body = rss(item(1, title=""), item(2, link="javascript:alert(1)"), item(3), item(3))
    with recording_server(serve_static(body)) as (url, _):
        result = feed("b", f"{url}/f", fetchers()).fetch()
    assert [p.id for p in result.publications] == ["b:urn:example:3"]  # the repeat of entry 3 is left out
    assert [e.reason for e in result.errors] == ["no title; skipped", "no http(s) link (got 'javascript:alert(1)'); skipped"]
    assert all(e.source == "b" and e.location.startswith(f"{url}/f item ") for e in result.errors)


def test_long_ids_fit_the_store(fetchers: Callable[..., Fetcher], db: Store) -> None:
    body = rss(item(1, guid="urn:" + "x" * 400))
    with recording_server(serve_static(body)) as (url, _):
        result = feed("long", f"{url}/f", fetchers()).fetch()
    [pub] = result.publications
    assert len(pub.id) <= 200 and pub.id.startswith("long:sha256:")


# -- HTTP: user agent, conditional GET, new entries exactly once -------------------------------------------------------


def test_requests_carry_our_user_agent_and_accept(fetchers: Callable[..., Fetcher]) -> None:
    with recording_server(serve_static(rss(item(1)))) as (url, requests):
        feed("ua", f"{url}/f", fetchers()).fetch()
    headers = requests[0]["headers"]
    assert headers["User-Agent"] == f"publisher/{__version__} (+{BASE})"
    assert "application/rss+xml" in headers["Accept"]


def test_second_poll_is_conditional_and_a_new_entry_is_ingested_exactly_once(fetchers: Callable[..., Fetcher], db: Store) -> None:
    versions = {"v1": rss(item(1), item(2)), "v2": rss(item(3), item(1), item(2))}
    current = {"etag": '"v1"'}

    def respond(method: str, path: str, body: bytes) -> tuple[int, dict[str, str], bytes]:
        return 200, {**RSS_TYPE, "ETag": current["etag"], "Last-Modified": "Mon, 26 Feb 2024 10:00:00 GMT"}, versions[current["etag"].strip('"')]

    def conditional(method: str, path: str, body: bytes) -> tuple[int, dict[str, str], bytes]:
        sent = requests[-1]["headers"].get("If-None-Match")
        if sent == current["etag"]:
            return 304, {"ETag": current["etag"]}, b""
        return respond(method, path, body)

    state: dict[str, Any] = {}
    with recording_server(conditional) as (url, requests):
        source = feed("poll", f"{url}/feed", fetchers(), state=state)
        first = ingest([source], db, NOW)
        assert sorted(first.new) == ["poll:urn:example:1", "poll:urn:example:2"] and first.errors == []
        assert state["etag"] == '"v1"' and state["last_modified"] == "Mon, 26 Feb 2024 10:00:00 GMT" and state["url"] == f"{url}/feed"
        assert "If-None-Match" not in requests[0]["headers"]

        result = source.fetch()  # unchanged: a 304, nothing to add
        assert result.not_modified and result.publications == [] and result.errors == [] and result.warnings == []
        assert requests[1]["headers"]["If-None-Match"] == '"v1"'
        assert requests[1]["headers"]["If-Modified-Since"] == "Mon, 26 Feb 2024 10:00:00 GMT"
        second = ingest([source], db, NOW)
        assert (second.new, second.updated, second.unchanged, second.errors) == ([], [], 0, [])

        current["etag"] = '"v2"'  # one new entry on top
        third = ingest([source], db, NOW)
        assert (third.new, third.unchanged) == (["poll:urn:example:3"], 2)
        assert state["etag"] == '"v2"'
        fourth = ingest([source], db, NOW)
        assert (fourth.new, fourth.unchanged) == ([], 0)
    assert [r["headers"].get("If-None-Match") for r in requests] == [None, '"v1"', '"v1"', '"v1"', '"v2"']
    assert db.count_publications() == 3


def test_validators_are_not_sent_to_a_different_url(fetchers: Callable[..., Fetcher]) -> None:
    state = {"url": "https://old.example.org/feed", "etag": '"stale"'}
    with recording_server(serve_static(rss(item(1)))) as (url, requests):
        result = feed("moved", f"{url}/feed", fetchers(), state=state).fetch()
    assert len(result.publications) == 1 and "If-None-Match" not in requests[0]["headers"]


def test_a_feed_that_changes_its_guids_keeps_its_ids(fetchers: Callable[..., Fetcher], db: Store) -> None:
    """Same links, new guids on every build: deduplicated by link (state["ids"]), not ingested again."""
    builds = iter([
        rss(item(1, guid="urn:build-a:1"), item(2, guid="urn:build-a:2")),
        rss(item(1, guid="urn:build-b:1"), item(2, guid="urn:build-b:2")),
        rss(item(3, guid="urn:build-c:3"), item(1, guid="urn:build-c:1"), item(2, guid="urn:build-c:2")),
        # and a moved link under a known guid keeps its id too
        rss(item(3, guid="urn:build-c:3", link="https://www.example.net/pubs/3-renamed.html")),
    ])
    state: dict[str, Any] = {}
    with recording_server(lambda m, p, b: (200, RSS_TYPE, next(builds))) as (url, _):
        source = feed("churn", f"{url}/f", fetchers(), state=state)
        first = ingest([source], db, NOW)
        second = ingest([source], db, NOW)
        third = ingest([source], db, NOW)
        fourth = ingest([source], db, NOW)
    assert sorted(first.new) == ["churn:urn:build-a:1", "churn:urn:build-a:2"]
    assert (second.new, second.updated, second.unchanged) == ([], [], 2)
    assert (third.new, third.unchanged) == (["churn:urn:build-c:3"], 2)
    assert (fourth.new, fourth.updated) == ([], ["churn:urn:build-c:3"])
    assert db.count_publications() == 3
    assert state["ids"]["link:https://www.example.net/pubs/1.html"] == "churn:urn:build-a:1"


def test_a_guid_shared_by_every_entry_falls_back_to_links(fetchers: Callable[..., Fetcher]) -> None:
    body = rss(item(1, guid="https://www.example.net/"), item(2, guid="https://www.example.net/"))
    with recording_server(serve_static(body)) as (url, _):
        result = feed("same", f"{url}/f", fetchers()).fetch()
    assert [p.id for p in result.publications] == ["same:https://www.example.net/pubs/1.html", "same:https://www.example.net/pubs/2.html"]


def test_redirects_are_followed_and_a_permanent_move_is_reported(fetchers: Callable[..., Fetcher]) -> None:
    def respond(method: str, path: str, body: bytes) -> tuple[int, dict[str, str], bytes]:
        if path == "/old":
            return 301, {"Location": "/newer"}, b""
        if path == "/newer":
            return 308, {"Location": "/feed.xml"}, b""
        return 200, RSS_TYPE, rss(item(1))

    with recording_server(respond) as (url, requests):
        result = feed("r", f"{url}/old", fetchers()).fetch()
    assert [r["path"] for r in requests] == ["/old", "/newer", "/feed.xml"]
    assert len(result.publications) == 1 and result.errors == []
    assert result.warnings == [f"source 'r': {url}/old moved permanently to {url}/feed.xml; update [sources.r].url"]


# -- bad sources beside a good one ---------------------------------------------------------------------------------------


def _slow(handler: BaseHTTPRequestHandler) -> None:
    time.sleep(2)
    handler.send_response(200)
    handler.end_headers()
    handler.wfile.write(rss(item(1)))


FIFTY_MB = 50 * 1024 * 1024
sent_bytes: dict[str, int] = {}
done = threading.Event()


def _huge(handler: BaseHTTPRequestHandler, declare: bool) -> None:
    """50 MB streamed in 64 KB chunks, generated as it goes; counts what actually left."""
    sent_bytes["n"] = 0
    try:
        handler.send_response(200)
        handler.send_header("Content-Type", "application/rss+xml")
        if declare:
            handler.send_header("Content-Length", str(FIFTY_MB))
        handler.end_headers()
        chunk = b"<!-- padding -->" * 4096
        while sent_bytes["n"] < FIFTY_MB:
            handler.wfile.write(chunk)
            sent_bytes["n"] += len(chunk)
    finally:
        done.set()


BAD = {
    # kind: (how the bad server answers, fetcher options, what the reason says)
    "timeout": ("slow", {"timeout": 0.5}, "no answer within 0.5 s (read timeout)"),
    "server error": ((500, {}, b"oops"), {}, "HTTP 500 Internal Server Error"),
    "malformed xml": ((200, RSS_TYPE, b'<?xml version="1.0"?><rss version="2.0"><channel><item><title>Kept</title>'
                        b"<link>https://bad.example/kept</link></item><item><title>Cut &amp off</title><link>https://bad.example/cut</link>"
                        b"</item><item><title>Trunc"), {}, "malformed XML: not well-formed (invalid token) at line 1, column"),
    "not a feed": ((200, {"Content-Type": "text/html"}, b"<html><body>Hello</body></html>"), {}, "not an RSS, Atom or JSON feed (Content-Type text/html)"),
    "invalid json": ((200, {"Content-Type": "application/feed+json"}, b'{"items": ['), {}, "invalid JSON"),
    "50 MB streamed": ("huge", {"max_bytes": 1024 * 1024}, "response larger than 1048576 bytes; stopped reading"),
    "50 MB declared": ("huge-declared", {"max_bytes": 1024 * 1024}, f"response larger than 1048576 bytes (Content-Length: {FIFTY_MB}); not read"),
    "redirect loop": ((302, {"Location": "/bad"}, b""), {"max_redirects": 3}, "more than 3 redirects"),
    "loopback, by default": ((200, RSS_TYPE, rss(item(9))), {"allow_private": False}, "127.0.0.1 is a loopback address"),
}


@pytest.mark.parametrize("kind", list(BAD))
def test_a_bad_source_is_one_error_and_the_good_one_still_ingests(kind: str, fetchers: Callable[..., Fetcher], db: Store) -> None:
    answer, options, reason = BAD[kind]
    if isinstance(answer, tuple):
        server = recording_server(lambda m, p, b: answer)  # type: ignore[return-value]
    else:
        handler = {"slow": _slow, "huge": lambda h: _huge(h, False), "huge-declared": lambda h: _huge(h, True)}[answer]
        done.clear()
        server = raw_server(handler)  # type: ignore[assignment]
    with server as bad_server, recording_server(serve_static(rss(item(1), item(2)))) as (good_url, _):
        bad_url = (bad_server[0] if isinstance(bad_server, tuple) else bad_server) + "/bad"
        bad = feed("bad", bad_url, fetchers(**options))
        good = feed("good", f"{good_url}/feed", fetchers())
        started = time.monotonic()
        report = ingest([bad, good], db, NOW)
        elapsed = time.monotonic() - started
    [error] = report.errors
    assert (error.source, error.location) == ("bad", bad_url)
    assert reason in error.reason
    assert str(error).startswith(f"source 'bad': {bad_url}: ")
    assert {"good:urn:example:1", "good:urn:example:2"} <= set(report.new)
    assert elapsed < 1.9  # the timeout is the fetcher's, not the slow server's
    if kind == "malformed xml":  # what the lenient parser could read is kept, the broken rest is not
        assert "the lenient parser kept 2 entries and skipped 1" in error.reason
        assert "bad:https://bad.example/kept" in report.new
    if kind.startswith("50 MB"):
        assert done.wait(10), "the server kept sending"
        assert sent_bytes["n"] < FIFTY_MB // 2  # stopped at max_bytes, not read to the end


def test_the_size_limit_counts_decoded_bytes(fetchers: Callable[..., Fetcher]) -> None:
    """A 5 MB feed gzipped to a few KB (a small "zip bomb") is still more than max_bytes."""
    bomb = gzip.compress(rss(item(1)) + b"<!--" + b" " * (5 * 1024 * 1024) + b"-->")
    assert len(bomb) < 64 * 1024
    headers = {**RSS_TYPE, "Content-Encoding": "gzip"}
    with recording_server(serve_static(bomb, headers)) as (url, _):
        error = only_error(feed("bomb", f"{url}/f", fetchers(max_bytes=1024 * 1024)).fetch())
    assert error.reason == "response larger than 1048576 bytes; stopped reading"


def test_a_server_dripping_bytes_cannot_hold_the_poll(fetchers: Callable[..., Fetcher]) -> None:
    def drip(handler: BaseHTTPRequestHandler) -> None:
        handler.send_response(200)
        handler.end_headers()
        for _ in range(100):  # one byte every 50 ms: each read is quick, the whole is not
            handler.wfile.write(b" ")
            handler.wfile.flush()
            time.sleep(0.05)

    with raw_server(drip) as url:
        started = time.monotonic()
        error = only_error(feed("drip", f"{url}/f", fetchers(timeout=2, total_timeout=0.5)).fetch())
        elapsed = time.monotonic() - started
    assert error.reason == "download took longer than 0.5 s; stopped reading"
    assert elapsed < 1.5


def test_a_redirect_to_a_private_address_is_refused(fetchers: Callable[..., Fetcher], db: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    """public.test stands for a public host (it is our first server); it redirects to 127.0.0.1, which must not be reached."""
    real_resolve = ssrf.resolve

    def resolve(host: str, port: int, allow_private: bool) -> list[tuple[Any, ...]]:
        if host == "public.test":
            return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", port))]
        return real_resolve(host, port, allow_private)

    monkeypatch.setattr(ssrf, "resolve", resolve)
    with recording_server(serve_static(rss(item(1)))) as (internal_url, internal_requests), \
            recording_server(lambda m, p, b: (302, {"Location": f"{internal_url}/admin/feed"}, b"")) as (public_url, public_requests), \
            recording_server(serve_static(rss(item(1), item(2)))) as (good_url, _):
        port = public_url.rsplit(":", 1)[1]
        bad_url = f"http://public.test:{port}/feed"
        bad = feed("bad", bad_url, fetchers(allow_private=False))
        good = feed("good", f"{good_url}/feed", fetchers())
        report = ingest([bad, good], db, NOW)
    [error] = report.errors
    assert (error.source, error.location) == ("bad", bad_url)
    assert error.reason.startswith("127.0.0.1 is a loopback address; remote sources may only reach public addresses")
    assert error.reason.endswith(f"(after a redirect to {internal_url}/admin/feed)")
    assert len(public_requests) == 1 and public_requests[0]["headers"]["Host"] == f"public.test:{port}"
    assert internal_requests == []  # never contacted
    assert sorted(report.new) == ["good:urn:example:1", "good:urn:example:2"]


def test_a_page_source_is_guarded_too(fetchers: Callable[..., Fetcher]) -> None:
    with recording_server(serve_static(b"<html></html>", {"Content-Type": "text/html"})) as (url, requests):
        source = PageSource("page", f"{url}/topic", selectors=SELECTORS, base_url=BASE, timezone="UTC", state={},
                            fetcher=fetchers(allow_private=False))
        error = only_error(source.fetch())
    assert "loopback address" in error.reason and requests == []


def test_remote_bodies_are_never_opened_as_local_files(fetchers: Callable[..., Fetcher], tmp_path: Path) -> None:
    """feedparser.parse(bytes) tries open(bytes) first: a body naming a local file must not read it."""
    secret = tmp_path / "secret.xml"
    secret.write_bytes(rss(item(1, title="LOCAL SECRET")))
    with recording_server(serve_static(str(secret).encode())) as (url, _):
        result = feed("lfi", f"{url}/f", fetchers()).fetch()
    assert result.publications == []
    assert "not an RSS, Atom or JSON feed" in only_error(result).reason


# -- SSRF guard ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("address", "reason"), [
    ("127.0.0.1", "loopback"), ("127.8.9.10", "loopback"), ("::1", "loopback"),
    ("10.1.2.3", "private"), ("172.16.0.1", "private"), ("192.168.1.1", "private"), ("fc00::1", "private"),
    ("169.254.169.254", "link-local"), ("fe80::1", "link-local"),
    ("224.0.0.1", "multicast"), ("ff02::1", "multicast"),
    ("0.0.0.0", "unspecified"), ("::", "unspecified"),
    ("240.0.0.1", "reserved"), ("100.64.0.1", "non-public"),
    ("::ffff:127.0.0.1", "IPv4-mapped loopback"), ("::ffff:10.0.0.1", "IPv4-mapped private"),
    ("2002:7f00:1::", "6to4 loopback"), ("2002:a9fe:a9fe::1", "6to4 link-local"),
    ("64:ff9b::a00:1", "NAT64 private"),
    ("93.184.216.34", None), ("2606:2800:220:1:248:1893:25c8:1946", None), ("::ffff:93.184.216.34", None),
])
def test_blocked_addresses(address: str, reason: str | None) -> None:
    assert blocked_reason(address) == reason


@pytest.mark.parametrize(("url", "message"), [
    ("file:///etc/passwd", "only http and https URLs can be fetched, not 'file'"),
    ("ftp://ftp.example.org/feed", "not 'ftp'"),
    ("gopher://127.0.0.1:6379/_INFO", "not 'gopher'"),
    ("/relative/feed.xml", "not 'a relative URL'"),
    ("http:///no-host", "has no host"),
    ("http://example.org:99999/", "invalid URL"),
    ("http://127.0.0.1:8080/", "127.0.0.1 is a loopback address"),
    ("http://[::1]/", "::1 is a loopback address"),
    ("http://2130706433/", "resolves to 127.0.0.1, which is a loopback address"),  # 127.0.0.1 as one number
    ("http://127.1/", "resolves to 127.0.0.1"),
    ("http://[::ffff:169.254.169.254]/latest/meta-data/", "IPv4-mapped link-local"),
    ("http://169.254.169.254/latest/meta-data/", "link-local"),
])
def test_check_url_refuses(url: str, message: str) -> None:
    with pytest.raises(UnsafeURLError) as exc:
        check_url(url, allow_private=False)
    assert message in str(exc.value)


def test_check_url_judges_every_address_a_name_resolves_to(monkeypatch: pytest.MonkeyPatch) -> None:
    def getaddrinfo(host: Any, port: Any, *a: Any, **kw: Any) -> Any:
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("93.184.216.34", port)),
                (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("10.0.0.5", port))]

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    with pytest.raises(UnsafeURLError, match=r"'mixed\.test' resolves to 10\.0\.0\.5, which is a private address"):
        check_url("https://mixed.test/feed", allow_private=False)
    check_url("https://mixed.test/feed", allow_private=True)
    check_url("http://127.0.0.1/", allow_private=True)
    with pytest.raises(UnsafeURLError, match="not 'file'"):
        check_url("file:///etc/passwd", allow_private=True)  # the scheme check stays


def test_dns_rebinding_between_check_and_connect_is_refused(fetchers: Callable[..., Fetcher], monkeypatch: pytest.MonkeyPatch) -> None:
    """The first answer (checked by check_url) is public, the next one (at connect) is 127.0.0.1: the connection re-checks."""
    answers = iter(["93.184.216.34", "127.0.0.1", "127.0.0.1"])
    with recording_server(serve_static(rss(item(1)))) as (url, requests), fake_dns(monkeypatch, {"rebind.test": lambda: next(answers)}):
        port = url.rsplit(":", 1)[1]
        with pytest.raises(FetchError) as exc:
            fetchers(allow_private=False).get(f"http://rebind.test:{port}/feed")
    assert "'rebind.test' resolves to 127.0.0.1, which is a loopback address" in exc.value.reason
    assert requests == []


def test_the_connection_goes_to_the_checked_address_and_keeps_the_host_name(fetchers: Callable[..., Fetcher], monkeypatch: pytest.MonkeyPatch) -> None:
    with recording_server(serve_static(rss(item(1)))) as (url, requests), fake_dns(monkeypatch, {"pinned.test": "127.0.0.1"}):
        port = url.rsplit(":", 1)[1]
        response = fetchers().get(f"http://pinned.test:{port}/feed")
    assert response.status == 200 and b"Entry 1" in response.body
    assert requests[0]["headers"]["Host"] == f"pinned.test:{port}"


def test_connection_errors_are_reasons(fetchers: Callable[..., Fetcher]) -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    error = only_error(feed("down", f"http://127.0.0.1:{port}/feed", fetchers()).fetch())
    assert error.reason == "cannot connect: Connection refused"


# -- HTML pages --------------------------------------------------------------------------------------------------------


def test_a_topic_page_read_with_selectors(fetchers: Callable[..., Fetcher]) -> None:
    page = (DATA / "topic-page.html").read_bytes()
    with recording_server(serve_static(page, {"Content-Type": "text/html; charset=utf-8"})) as (url, requests):
        source = PageSource("institute", f"{url}/topics/security-cooperation.html", selectors=SELECTORS, base_url=BASE,
                            timezone="America/New_York", state={}, fetcher=fetchers(), topics=("security-cooperation",),
                            content_type="Commentary")
        result = source.fetch()
    assert result.errors == [] and result.warnings == []
    assert "text/html" in requests[0]["headers"]["Accept"]
    pubs = result.publications
    assert [p.title for p in pubs] == [
        "Persistent Gray Zone Aggression in the South China Sea Calls for Increased Coordination in Rule of Law",
        "Japan's Alliance with the U.S. Has Just Gone Global",
        "America\u2019s Best Friend in Asia",
        "A Leader's Guide to Interoperability",
        "Harnessing Quantum Technology for the Benefit of Society: How the U.S. and Japan are Moving Quantum Science Research from the Lab to Everyday Life",
    ]
    assert [p.content_type for p in pubs] == ["Commentary", "Commentary", "Commentary", "Research Brief", "Multimedia"]
    assert [p.published_at for p in pubs] == [datetime(2024, 4, 16, tzinfo=NY), datetime(2024, 4, 16, tzinfo=NY), datetime(2024, 4, 10, tzinfo=NY),
                                              datetime(2024, 4, 4, tzinfo=NY), datetime(2024, 3, 29, tzinfo=NY)]
    first, second, third, brief, media = pubs
    assert first.url == f"{url}/pubs/commentary/2024/04/persistent-gray-zone-aggression.html"
    assert first.id == f"institute:{first.url}"
    assert second.url == f"{url}/pubs/commentary/2024/04/japan-alliance-gone-global.html"  # ../ against the page URL
    assert media.url == "https://media.example.net/events/2024/quantum-conference"
    assert first.summary.startswith("A sample summary: coordinated maritime")
    assert third.summary == "A sample summary: why one ally has become the first call in Asia."
    assert first.image is not None and first.image.url == f"{url}/images/2024/04/coast-guard-patrol.jpg"
    assert first.image.alt == "Two patrol boats at sea"
    assert first.image.caption == "Patrol boats underway on open water, February 1, 2018"
    assert first.image.credit == "Mass Communication Specialist 2nd Class Kevin J. Steinberg/U.S. Navy"
    assert second.image is not None and second.image.url == f"{url}/images/2024/04/summit-handshake.jpg"
    assert third.image is not None and third.image.caption == "A state visit begins at the White House, April 10, 2024"
    assert third.image.credit == "Annabelle Gordon/Sipa USA/Reuters"
    assert brief.image is None and media.image is None
    assert all(p.topics == ("security-cooperation",) and p.source == "institute" and p.published_at.tzinfo for p in pubs)  # type: ignore[union-attr]


def test_a_topic_page_ingests_once(fetchers: Callable[..., Fetcher], db: Store) -> None:
    page = (DATA / "topic-page.html").read_bytes()
    with recording_server(serve_static(page, {"Content-Type": "text/html", "ETag": '"p1"'})) as (url, requests):
        state: dict[str, Any] = {}
        source = PageSource("institute", f"{url}/topics/security-cooperation.html", selectors=SELECTORS, base_url=BASE,
                            timezone="UTC", state=state, fetcher=fetchers())
        first = ingest([source], db, NOW)
        second = ingest([source], db, NOW)
    assert len(first.new) == 5 and first.errors == []
    assert (second.new, second.unchanged) == ([], 5)  # the server ignores If-None-Match: same ids, nothing new
    assert requests[1]["headers"]["If-None-Match"] == '"p1"'


def test_page_items_with_problems(fetchers: Callable[..., Fetcher]) -> None:
    page = b"""<html><body><ul class="results">
      <li><h3 class="title"><a href="/a">A</a></h3><p class="date">Published 26 February 2024 &middot; 5 min read</p></li>
      <li><h3 class="title">No link here</h3><p class="date">Feb 26, 2024</p></li>
      <li><h3 class="title"><a href="/c">C</a></h3><p class="date">next spring</p></li>
      <li><h3 class="title"><a href="/d">D</a></h3></li>
      <li><h3 class="title"><a href="/a#again">A again</a></h3><p class="date"><time datetime="2024-02-26T09:30:00Z">today</time></p></li>
      <li><h3 class="title"><a href="/a">A repeated</a></h3></li>
      <li><h3 class="title"></h3></li>
    </ul></body></html>"""
    with recording_server(serve_static(page, {"Content-Type": "text/html"})) as (url, _):
        result = PageSource("p", f"{url}/list", selectors={"item": "ul.results li", "title": ".title", "link": ".title", "date": ".date"},
                            base_url=BASE, timezone="UTC", state={}, fetcher=fetchers()).fetch()
    assert [p.title for p in result.publications] == ["A", "C", "D", "A again"]
    assert result.publications[0].published_at == datetime(2024, 2, 26, tzinfo=timezone.utc)
    assert result.publications[3].published_at == datetime(2024, 2, 26, 9, 30, tzinfo=timezone.utc)
    assert [e.reason for e in result.errors] == [
        "no http(s) link for 'No link here' (selector link = '.title'); skipped",
        "selector title = '.title' found no text; skipped",
    ]
    assert [e.location for e in result.errors] == [f"{url}/list item 2", f"{url}/list item 7"]
    assert len(result.warnings) == 2 and "date 'next spring' not understood" in result.warnings[0] and "no date" in result.warnings[1]


def test_a_page_whose_layout_changed_is_one_error(fetchers: Callable[..., Fetcher]) -> None:
    with recording_server(serve_static(b"<html><body><div>redesigned</div></body></html>", {"Content-Type": "text/html"})) as (url, _):
        state: dict[str, Any] = {}
        result = PageSource("p", f"{url}/list", selectors=SELECTORS, base_url=BASE, timezone="UTC", state=state, fetcher=fetchers()).fetch()
    assert only_error(result).reason == "selector item = 'ul.results > li' matched nothing; has the page layout changed?"
    assert state == {}  # no validators kept for a page that could not be read


def test_selectors_are_checked_up_front() -> None:
    assert selector_problems(SELECTORS) == []
    problems = selector_problems({"item": "li", "title": "h3[", "colour": "x"})
    assert problems[0].startswith("unknown selector 'colour'")
    assert "selector 'link' is required" in problems
    assert any(p.startswith("selector title = 'h3[' is not a valid CSS selector") for p in problems)
    with pytest.raises(ValueError, match="source 'p': selector 'link' is required"):
        PageSource("p", "https://x.example/", selectors={"item": "li", "title": "h3"}, base_url=BASE, timezone="UTC", state={},
                   fetcher=None)  # type: ignore[arg-type]


@pytest.mark.parametrize(("text", "expected"), [
    ("Feb 26, 2024", datetime(2024, 2, 26, tzinfo=NY)),
    ("February 26, 2024", datetime(2024, 2, 26, tzinfo=NY)),
    ("Sept. 5, 2024", datetime(2024, 9, 5, tzinfo=NY)),
    ("26 Feb 2024", datetime(2024, 2, 26, tzinfo=NY)),
    ("1st March 2024", datetime(2024, 3, 1, tzinfo=NY)),
    ("2024-02-26", datetime(2024, 2, 26, tzinfo=NY)),
    ("2024-02-26T09:30:00+01:00", datetime(2024, 2, 26, 8, 30, tzinfo=timezone.utc)),
    ("2024-02-26T09:30:00Z", datetime(2024, 2, 26, 9, 30, tzinfo=timezone.utc)),
    ("2024-02-26T09:30", datetime(2024, 2, 26, 9, 30, tzinfo=NY)),
    ("Updated: 2024-02-26 09:30", datetime(2024, 2, 26, 9, 30, tzinfo=NY)),
    ("Feb 30, 2024", None), ("Mayday 3, 2024", None), ("soon", None), ("", None),
])
def test_parse_date(text: str, expected: datetime | None) -> None:
    assert parse_date(text, NY) == expected


@pytest.mark.parametrize(("caption", "expected"), [
    ("Boats at sea, February 1, 2018, photo by Jane Roe/U.S. Navy", ("Boats at sea, February 1, 2018", "Jane Roe/U.S. Navy")),
    ("A visit, April 10, 2024. photo by Ann Gordon/Sipa USA/Reuters", ("A visit, April 10, 2024", "Ann Gordon/Sipa USA/Reuters")),
    ("A harbour at dusk, photo courtesy of the Port Authority", ("A harbour at dusk", "the Port Authority")),
    ("No credit in this one", ("No credit in this one", "")),
])
def test_split_credit(caption: str, expected: tuple[str, str]) -> None:
    assert split_credit(caption) == expected
