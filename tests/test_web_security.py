"""Issue 11, point 6: every answer of `publisher serve` carries the security headers, and real Chromium keeps to them.

Real uvicorn on a free port and requests for the headers; Debian's Chromium (Playwright) for what the policy does:
a page of another site cannot frame ours, a script planted under public/ does not run, and the site's own pages
(the MJML digest copies, the forms) show without a single Content-Security-Policy violation.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import datetime, timezone
from typing import Any

import pytest
import requests

from publisher.config import Config
from publisher.models import SubscriberStatus
from publisher.pipeline import open_project_store, run_cycle
from publisher.store import Store
from publisher.web import create_app
from publisher.web.webhooks import MAILGUN_KEY_ENV
from subscribers import make_confirm_token, make_token, new_nonce

from .conftest import NOW
from .servers import recording_server, run_app

SITE_HEADERS = {"x-content-type-options": "nosniff", "x-frame-options": "DENY"}


@pytest.fixture
def site(cfg: Config, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[str, Store, dict[str, str]]]:
    """The sample site built and a digest sent (so public/ holds feeds, pages, media and a digest web copy), served."""
    monkeypatch.setenv(MAILGUN_KEY_ENV, "key-mailgun-signing-0123456789")  # one webhook configured, the others not
    store = open_project_store(cfg)  # with the three sample subscribers, added now
    report = run_cycle(cfg, store, datetime.now(timezone.utc), force_digest=True)
    assert report.digest is not None and report.digest.sent == 3
    sub = store.subscriber("reader@example.com")
    assert sub is not None
    key = cfg.secret_key.get()
    nonce = new_nonce()  # a sign-up's own link, as the sign-up queue makes it
    pending_id = store.open_signup("pending@example.com", (), nonce, NOW, status=SubscriberStatus.PENDING)
    assert pending_id is not None
    tokens = {"unsubscribe": make_token(key, "unsubscribe", sub.id), "preferences": make_token(key, "preferences", sub.id),
              "confirm": make_confirm_token(key, pending_id, "pending@example.com", nonce), "issue": report.digest.issue_id}
    try:
        with run_app(create_app(cfg, store)) as base:
            yield base, store, tokens
    finally:
        store.close()


def pages(tokens: dict[str, str]) -> list[tuple[str, str, int]]:
    """(method, path, status) for every kind of answer the app gives."""
    return [("GET", "/", 200), ("GET", "/topics/security-cooperation/", 200), ("GET", "/types/commentary/", 200),
            ("GET", "/digests/", 200), ("GET", f"/digests/{tokens['issue']}.html", 200), ("GET", "/feeds/all.atom", 200),
            ("GET", "/feeds/all.json", 200), ("GET", "/media/icon.png", 200), ("HEAD", "/", 200),
            ("GET", "/subscribe", 200), ("POST", "/subscribe", 400), ("GET", "/subscribe/", 307), ("PUT", "/subscribe", 405),
            ("GET", f"/confirm/{tokens['confirm']}", 200), ("GET", "/confirm/forged.token", 400),
            ("GET", f"/unsubscribe/{tokens['unsubscribe']}", 200), ("GET", f"/preferences/{tokens['preferences']}", 200),
            ("GET", "/no/such/page", 404), ("POST", "/webhooks/postmark", 404), ("POST", "/webhooks/mailgun", 400),
            ("GET", "/webhooks/mailgun", 404)]


def assert_site_headers(response: requests.Response, what: str) -> None:
    for name, value in SITE_HEADERS.items():
        assert response.headers.get(name) == value, (what, name, response.headers)
    csp = response.headers.get("content-security-policy", "")
    assert "frame-ancestors 'none'" in csp and "default-src 'none'" in csp and "script-src" not in csp, (what, csp)
    assert response.headers.get("referrer-policy") in ("strict-origin-when-cross-origin", "same-origin"), what


def test_every_answer_carries_the_security_headers(site: tuple[str, Store, dict[str, str]], cfg: Config) -> None:
    base, _, tokens = site
    for method, path, status in pages(tokens):
        r = requests.request(method, base + path, timeout=10, allow_redirects=False)
        assert r.status_code == status, (method, path, r.status_code)
        assert_site_headers(r, f"{method} {path}")
    # A conditional GET's 304 too.
    first = requests.get(base + "/feeds/all.atom", timeout=10)
    again = requests.get(base + "/feeds/all.atom", headers={"If-None-Match": first.headers["etag"]}, timeout=10)
    assert again.status_code == 304
    assert_site_headers(again, "304")
    # The pages whose URL is a credential send no referrer at all to another site; the rest only their origin.
    for path in (f"/unsubscribe/{tokens['unsubscribe']}", f"/preferences/{tokens['preferences']}", f"/confirm/{tokens['confirm']}"):
        assert requests.get(base + path, timeout=10).headers["referrer-policy"] == "same-origin"
    assert requests.get(base + "/", timeout=10).headers["referrer-policy"] == "strict-origin-when-cross-origin"
    # The form may post to the site's own address ([site].base_url) as well as to wherever it is served from.
    assert "form-action 'self' http://127.0.0.1:8000;" in requests.get(base + "/subscribe", timeout=10).headers["content-security-policy"]


def test_a_server_error_carries_the_headers_too(site: tuple[str, Store, dict[str, str]], cfg: Config) -> None:
    base, _, _ = site
    template = cfg.path(cfg.site.templates_dir) / "web" / "subscribe.html.j2"
    template.write_text("{% if %}broken", encoding="utf-8")  # an editor's typo: the page cannot render
    r = requests.get(base + "/subscribe", timeout=10)
    assert r.status_code == 500
    assert_site_headers(r, "500")
    assert requests.get(base + "/", timeout=10).status_code == 200  # the rest of the site goes on


# -- in a real browser ------------------------------------------------------------------------------


def csp_messages(messages: list[Any]) -> list[str]:
    return [m.text for m in messages if "Content Security Policy" in m.text]


def open_page(browser: Any, allowed: list[str]) -> tuple[Any, Any, list[Any]]:
    """A page whose requests go only to the given servers (no network here: the digest's images are aborted)."""
    context = browser.new_context()
    context.set_default_timeout(15_000)
    context.route(lambda url: not any(url.startswith(a + "/") for a in allowed), lambda route: route.abort())
    page = context.new_page()
    messages: list[Any] = []
    page.on("console", lambda message: messages.append(message))
    return context, page, messages


def test_the_sites_own_pages_show_without_a_single_csp_violation(browser: Any, site: tuple[str, Store, dict[str, str]]) -> None:
    base, _, tokens = site
    context, page, messages = open_page(browser, [base])
    try:
        for method, path, status in pages(tokens):
            if method == "GET" and not path.startswith(("/feeds/", "/media/", "/webhooks/", "/subscribe/")):
                response = page.goto(base + path, wait_until="load")
                assert response is not None and response.status == status, path
        # The forms work under the policy: the unsubscribe button posts and its answer shows.
        page.goto(base + f"/unsubscribe/{tokens['unsubscribe']}", wait_until="load")
        page.get_by_role("button", name="Unsubscribe").click()
        page.wait_for_load_state("load")
        assert page.get_by_role("heading", name="You are unsubscribed").is_visible()
        assert csp_messages(messages) == [], csp_messages(messages)
        # The digest copy is the MJML output, styled inline: its layout survives (600 px wide card, styled text).
        page.goto(base + f"/digests/{tokens['issue']}.html", wait_until="load")
        assert page.evaluate("getComputedStyle(document.querySelector('.card')).maxWidth") == "600px"
        assert csp_messages(messages) == []
    finally:
        context.close()


def test_a_script_planted_under_public_does_not_run(browser: Any, site: tuple[str, Store, dict[str, str]], cfg: Config) -> None:
    """Say a partner's HTML got past the sanitiser into a page: the policy still runs none of it."""
    base, _, _ = site
    planted = cfg.path(cfg.site.public_dir) / "planted.html"
    planted.write_text('<!doctype html><title>before</title><script>document.title = "ran"</script>'
                       '<img src="data:," onerror="document.title = \'ran too\'">', encoding="utf-8")
    context, page, messages = open_page(browser, [base])
    try:
        page.goto(base + "/planted.html", wait_until="load")
        assert page.title() == "before"
        assert len(csp_messages(messages)) >= 1 and any("script-src" in m or "default-src" in m for m in csp_messages(messages))
    finally:
        context.close()


def test_another_site_cannot_frame_the_unsubscribe_page(browser: Any, site: tuple[str, Store, dict[str, str]]) -> None:
    """Clickjacking: a page elsewhere puts our one-click unsubscribe in a see-through frame under its own button."""
    base, store, tokens = site
    target = f"{base}/unsubscribe/{tokens['unsubscribe']}"
    attack = f'<!doctype html><title>win a prize</title><iframe id="f" src="{target}" style="opacity:0.01"></iframe>'.encode()
    with recording_server(lambda m, p, b: (200, {"Content-Type": "text/html"}, attack)) as (evil, _):
        evil = evil.replace("127.0.0.1", "localhost")  # another site, not only another port
        context, page, messages = open_page(browser, [base, evil])
        try:
            page.goto(evil + "/", wait_until="load")
            frame = page.frame_locator("#f")
            assert frame.get_by_role("button", name="Unsubscribe").count() == 0
            assert any("frame-ancestors 'none'" in m for m in csp_messages(messages)), [m.text for m in messages]
            page.goto(target, wait_until="load")  # the page itself, visited directly, works as before
            assert page.get_by_role("button", name="Unsubscribe").is_visible()
        finally:
            context.close()
    sub = store.subscriber("reader@example.com")
    assert sub is not None and sub.status is SubscriberStatus.ACTIVE


def test_the_digest_web_copy_names_no_source_the_policy_refuses(site: tuple[str, Store, dict[str, str]], cfg: Config) -> None:
    """What MJML writes (and the archive page) loads only images, inline styles and nothing else."""
    _, _, tokens = site
    html = (cfg.path(cfg.site.public_dir) / "digests" / f"{tokens['issue']}.html").read_text(encoding="utf-8")
    assert not re.search(r"<(script|iframe|object|embed|link[^>]+stylesheet)\b", html, re.I)
    assert not re.search(r"@import|@font-face", html)
