"""Issue 11, point 6: the editor preview answers only its own host (DNS rebinding) and only its own forms (CSRF).

The preview app on real uvicorn, attacked with requests (forged Host, Origin and Sec-Fetch-Site headers) and from
real Chromium: a page of another site posting a form to it, and a name of the attacker's resolving to 127.0.0.1.
"""

from __future__ import annotations

import mailbox
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import pytest
import requests

from publisher.config import Config
from publisher.store import open_store
from publisher.web.preview import create_preview_app

from .conftest import CHROMIUM, CHROMIUM_ARGS
from .servers import recording_server, run_app

TEST_RECIPIENT = "editor@example.com"  # [preview].test_recipients in the shipped config.toml


@pytest.fixture
def preview(cfg: Config) -> Iterator[str]:
    store = open_store(cfg.store_url)
    app = create_preview_app(cfg, store, watch=False)
    try:
        with run_app(app) as base:
            yield base
    finally:
        store.close()


def outbox_count(cfg: Config) -> int:
    path = cfg.path(cfg.delivery.outbox_dir)
    return len(mailbox.Maildir(path, create=False)) if path.is_dir() else 0


def assert_preview_headers(r: requests.Response) -> None:
    csp = r.headers.get("content-security-policy", "")
    assert "frame-ancestors 'self'" in csp and "script-src 'nonce-" in csp and "default-src 'none'" in csp, csp
    assert r.headers.get("x-content-type-options") == "nosniff" and r.headers.get("referrer-policy") == "same-origin"


def test_only_the_preview_s_own_host_is_served(preview: str) -> None:
    port = urlsplit(preview).port
    for host in (f"127.0.0.1:{port}", f"localhost:{port}", f"[::1]:{port}", f"LocalHost:{port}"):
        r = requests.get(preview + "/", headers={"Host": host}, timeout=10)
        assert r.status_code == 200 and "next issue" in r.text, host
        assert_preview_headers(r)
    for host in (f"rebind.attacker.example:{port}", "rebind.attacker.example", f"127.0.0.1:{port + 1}",
                 f"localhost.attacker.example:{port}", f"127.0.0.1.nip.io:{port}", "127.0.0.1", f"127.0.0.1:{port}@attacker.example", ""):
        for path in ("/", "/frame", "/feeds", "/confirmation"):
            r = requests.get(preview + path, headers={"Host": host}, timeout=10)
            assert r.status_code == 421, (host, path, r.status_code)
            assert "DNS rebinding" in r.text and "Subject" not in r.text
            assert_preview_headers(r)


def test_a_cross_site_post_is_refused_and_the_preview_s_own_goes_through(preview: str, cfg: Config) -> None:
    port = urlsplit(preview).port
    form = {"email": TEST_RECIPIENT}
    forged = [{"Origin": "http://attacker.example"}, {"Origin": "null"}, {"Origin": f"http://127.0.0.1:{port + 1}"},
              {"Origin": f"http://localhost:{port}"},  # a page at localhost posting to 127.0.0.1: another origin
              {"Sec-Fetch-Site": "cross-site"}, {"Sec-Fetch-Site": "same-site"},
              {"Sec-Fetch-Site": "cross-site", "Origin": preview}]
    for headers in forged:
        r = requests.post(preview + "/send-test", data=form, headers=headers, timeout=10, allow_redirects=False)
        assert r.status_code == 403 and "Cross-site request refused" in r.text, headers
        assert_preview_headers(r)
    assert outbox_count(cfg) == 0

    own = [{"Origin": preview, "Sec-Fetch-Site": "same-origin"}, {"Sec-Fetch-Site": "same-origin"}, {"Origin": preview},
           {}]  # the last: neither header, as curl sends it; no browser does, so no site can forge it
    for n, headers in enumerate(own, start=1):
        r = requests.post(preview + "/send-test", data=form, headers=headers, timeout=10, allow_redirects=False)
        assert r.status_code == 303 and "sent" in requests.utils.unquote(r.headers["location"]), headers
        assert outbox_count(cfg) == n
    # Reading is never refused for its Origin: GETs change nothing.
    assert requests.get(preview + "/", headers={"Sec-Fetch-Site": "cross-site"}, timeout=10).status_code == 200


def test_the_event_stream_still_streams_through_the_middleware(preview: str) -> None:
    with requests.get(preview + "/events", stream=True, timeout=10) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        assert_preview_headers(r)
        first = next(r.iter_lines())
        assert first.startswith(b"data: ")


# -- in a real browser ------------------------------------------------------------------------------


def csp_messages(messages: list[Any]) -> list[str]:
    return [m.text for m in messages if "Content Security Policy" in m.text]


def test_a_page_of_another_site_cannot_make_the_preview_send(browser: Any, preview: str, cfg: Config) -> None:
    """The attack: a page the editor opens posts the preview's test-send form, hoping to mail through it."""
    attack = (f'<!doctype html><title>hello</title><form id="f" method="post" action="{preview}/send-test">'
              f'<input name="email" value="{TEST_RECIPIENT}"></form><script>document.getElementById("f").submit()</script>').encode()
    with recording_server(lambda m, p, b: (200, {"Content-Type": "text/html"}, attack)) as (evil, _):
        evil = evil.replace("127.0.0.1", "localhost")
        context = browser.new_context()
        context.route(lambda url: not url.startswith((preview + "/", evil + "/")), lambda route: route.abort())
        page = context.new_page()
        try:
            with page.expect_response(lambda r: r.url.startswith(preview + "/send-test")) as answer:
                page.goto(evil + "/")
            assert answer.value.status == 403
            assert outbox_count(cfg) == 0
            # The preview's own form, in the same browser, still sends.
            page.goto(preview + "/", wait_until="load")
            page.locator("form#send-test input[name=email]").fill(TEST_RECIPIENT)
            with page.expect_response(lambda r: r.url.startswith(preview + "/send-test")) as own:
                page.locator("form#send-test button").click()
            assert own.value.status == 303
            deadline = time.monotonic() + 10
            while outbox_count(cfg) == 0 and time.monotonic() < deadline:
                time.sleep(0.1)
            assert outbox_count(cfg) == 1
        finally:
            context.close()


def test_dns_rebinding_from_a_real_browser_gets_nothing(browser: Any, preview: str) -> None:
    """A second Chromium whose resolver sends rebind.attacker.example to 127.0.0.1, as a rebinding attacker's DNS would."""
    port = urlsplit(preview).port
    rebinding = browser.browser_type.launch(executable_path=CHROMIUM,
                                            args=[*CHROMIUM_ARGS, "--host-resolver-rules=MAP rebind.attacker.example 127.0.0.1"])
    try:
        page = rebinding.new_page()
        response = page.goto(f"http://rebind.attacker.example:{port}/")
        assert response is not None and response.status == 421
        assert "DNS rebinding" in page.content() and "Send a test" not in page.content()
        assert page.goto(f"{preview}/").status == 200  # the same browser at the real address: the preview
    finally:
        rebinding.close()


def test_the_preview_works_in_chromium_without_a_csp_violation(browser: Any, preview: str) -> None:
    context = browser.new_context(viewport={"width": 1280, "height": 1000})
    context.set_default_timeout(15_000)
    context.route(lambda url: not url.startswith(preview + "/"), lambda route: route.abort())  # the email's images: no network
    page = context.new_page()
    messages: list[Any] = []
    page.on("console", lambda message: messages.append(message))
    try:
        for path in ("/", "/?view=mobile", "/?view=desktop&dark=1"):
            # The live-reload script runs (it is what opens /events): its nonce matches the policy.
            with page.expect_request(lambda r: urlsplit(r.url).path == "/events", timeout=10_000):
                page.goto(preview + path, wait_until="load")
            frame = page.frame_locator("#frame")
            assert frame.locator("a").first.is_visible()  # the issue shows in its frame (frame-ancestors 'self')
        for path in ("/?view=text", "/confirmation", "/feeds"):
            page.goto(preview + path, wait_until="load")
        assert csp_messages(messages) == [], csp_messages(messages)
    finally:
        context.close()


def test_a_script_without_the_nonce_does_not_run_in_the_preview(browser: Any, cfg: Config) -> None:
    """Were a source's text ever to reach the page unescaped, its script would carry no nonce: blocked."""
    template = cfg.path(cfg.site.templates_dir) / "web" / "preview.html.j2"
    text = template.read_text(encoding="utf-8")
    template.write_text(text.replace("</body>", '<script>document.title = "injected"</script></body>'), encoding="utf-8")
    store = open_store(cfg.store_url)
    try:
        with run_app(create_preview_app(cfg, store, watch=False)) as base:
            context = browser.new_context()
            context.route(lambda url: not url.startswith(base + "/"), lambda route: route.abort())
            page = context.new_page()
            messages: list[Any] = []
            page.on("console", lambda message: messages.append(message))
            try:
                with page.expect_request(lambda r: urlsplit(r.url).path == "/events", timeout=10_000):
                    page.goto(base + "/", wait_until="load")  # the nonce'd live-reload script still runs
                assert page.title() != "injected"
                assert any("script-src" in m for m in csp_messages(messages)), [m.text for m in messages]
            finally:
                context.close()
    finally:
        store.close()

