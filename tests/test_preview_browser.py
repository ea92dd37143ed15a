"""The editor preview in a real browser (Debian's headless Chromium via Playwright), served by real uvicorn.

The app ingests the project copy itself at start and watches content/, templates/ and config.toml, so these
tests only edit files and watch the open page follow (it reloads itself through /events; no test reloads it).
Every request that does not go to the preview server is aborted: the email's images live on [site].base_url,
and there is no network here.
"""

from __future__ import annotations

import mailbox
import re
import time
import urllib.request
from collections.abc import Iterator
from email import policy
from email.message import EmailMessage
from email.parser import BytesParser
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import parse_qs, urlsplit

import pytest

from publisher.config import Config

from .servers import run_app
from .test_digest_browser import FIRST_FEATURED, FIRST_OTHER

if TYPE_CHECKING:
    from playwright.sync_api import Browser, FrameLocator, Locator, Page

FEATURED_FILE = "content/publications/2024-02-26-yes-to-striking-iranian-backed-militants.md"
NEW_TITLE = "Strikes Wear Down Iranian-Backed Militias"
DIGEST_TEMPLATE = "templates/email/digest.mjml.j2"
BROKEN_LINE = 12  # the line `{% if %}` is put on
ALLOWED = "editor@example.com"  # [preview].test_recipients in the shipped config.toml
NOT_ALLOWED = "reader@example.com"  # a sample subscriber, but not a test recipient
LIVE = 10_000  # ms: a file change reaches the open page well within this (the app promises about a second)
VIEWPORT = {"width": 1280, "height": 1000}  # wide enough for the 600 px frame next to the panels


@pytest.fixture
def preview(cfg: Config) -> Iterator[str]:
    """The preview app over the project copy, watching it; an empty store (the app ingests at start)."""
    from publisher.store import open_store
    from publisher.web.preview import create_preview_app

    store = open_store(cfg.store_url)
    app = create_preview_app(cfg, store)
    try:
        with run_app(app) as base:
            yield base
    finally:
        app.state.preview.stop.set()  # the file watcher stops too
        store.close()


@pytest.fixture
def page(browser: Browser, preview: str) -> Iterator[Page]:
    """A page on the preview; closed before the server stops, so its /events stream ends first."""
    context = browser.new_context(viewport=VIEWPORT)
    context.set_default_timeout(15_000)
    context.route(lambda url: not url.startswith(preview + "/"), lambda route: route.abort())
    try:
        yield context.new_page()
    finally:
        context.close()


def _open(page: Page, url: str) -> None:
    """Load the preview page and wait until its live-reload stream is connected, so no edit can slip past it."""
    with page.expect_response(lambda r: urlsplit(r.url).path == "/events", timeout=LIVE):
        page.goto(url, wait_until="load")  # "load" waits for the iframe too (never "networkidle": /events stays open)


def _frame(page: Page) -> FrameLocator:
    return page.frame_locator("#frame")


def _title_link(frame: FrameLocator, title: str) -> Locator:
    return frame.locator("a").filter(has_text=re.compile(rf"^\s*{re.escape(title)}\s*$")).first


def _title_top(frame: FrameLocator, title: str) -> float:
    link = _title_link(frame, title)
    assert link.is_visible(), f"{title!r} is not visible in the frame"
    box = link.bounding_box()
    assert box is not None
    return box["y"]


def _frame_width(page: Page) -> float:
    box = page.locator("iframe#frame").bounding_box()
    assert box is not None, "iframe#frame is not rendered"
    return box["width"]


def _frame_query(page: Page) -> dict[str, list[str]]:
    src = page.locator("iframe#frame").get_attribute("src") or ""
    parts = urlsplit(src)
    assert parts.path == "/frame", f"iframe#frame src is {src!r}, not /frame?..."
    return parse_qs(parts.query)


def _outbox(cfg: Config) -> list[EmailMessage]:
    """Every message in the Maildir outbox (new/ and cur/), parsed with the modern email policy."""
    path = cfg.path(cfg.delivery.outbox_dir)
    if not path.is_dir():
        return []
    box = mailbox.Maildir(path, factory=None, create=False)
    return [BytesParser(policy=policy.default).parsebytes(box.get_bytes(key)) for key in box.keys()]  # type: ignore[misc]


def test_desktop_preview_shows_the_issue_in_send_order(page: Page, preview: str) -> None:
    from playwright.sync_api import expect

    _open(page, f"{preview}/")
    assert abs(_frame_width(page) - 600) <= 2, f"desktop frame is {_frame_width(page)} px wide, not 600"
    assert _frame_query(page).get("view", ["desktop"]) == ["desktop"]

    frame = _frame(page)
    expect(_title_link(frame, FIRST_FEATURED)).to_be_visible()
    assert _title_top(frame, FIRST_FEATURED) < _title_top(frame, FIRST_OTHER), "the featured item is not above the rest"

    items = page.locator("ol#items > li")
    expect(items.first).to_contain_text(FIRST_FEATURED)
    texts = items.all_inner_texts()
    other = next((i for i, t in enumerate(texts) if FIRST_OTHER in t), None)
    assert other is not None and other > 0, f"{FIRST_OTHER!r} is not listed after the featured item in ol#items"

    expect(page.locator("dl#headers")).to_contain_text("Subject")
    size = page.locator("p#size")
    expect(size).to_contain_text(re.compile(r"\d"))
    expect(size).not_to_have_class(re.compile(r"\bwarning\b"))  # the sample issue is well under 102,000 bytes
    # Both figures: the HTML as it is in the message (what Gmail counts) is the bigger one.
    as_sent, decoded = (int(page.locator(f"#size-{which}").inner_text().replace(",", "")) for which in ("sent", "html"))
    assert decoded < as_sent < decoded * 1.2, (as_sent, decoded)


def test_mobile_and_text_views(page: Page, preview: str) -> None:
    from playwright.sync_api import expect

    _open(page, f"{preview}/")
    page.locator("a#view-mobile").click()
    page.wait_for_url(re.compile(r"[?&]view=mobile\b"))
    page.wait_for_load_state("load")
    assert _frame_query(page).get("view") == ["mobile"]
    width = _frame_width(page)
    assert abs(width - 375) <= 2, f"mobile frame is {width} px wide, not 375"
    expect(_title_link(_frame(page), FIRST_FEATURED)).to_be_visible()
    content = page.locator("iframe#frame").element_handle().content_frame()
    assert content is not None
    scroll_width, client_width = content.evaluate("[document.documentElement.scrollWidth, document.documentElement.clientWidth]")
    assert scroll_width <= client_width, f"horizontal overflow in the mobile frame: scrollWidth {scroll_width} > {client_width}"

    page.locator("a#view-text").click()
    page.wait_for_url(re.compile(r"[?&]view=text\b"))
    expect(page.locator("pre#text")).to_contain_text(f"FEATURED: {FIRST_FEATURED}")
    expect(page.locator("iframe#frame")).to_have_count(0)


def test_an_edited_publication_shows_up_without_reloading(page: Page, preview: str, project: Path) -> None:
    from playwright.sync_api import expect

    _open(page, f"{preview}/")
    expect(_title_link(_frame(page), FIRST_FEATURED)).to_be_visible()

    path = project / FEATURED_FILE
    text = path.read_text(encoding="utf-8")
    assert f'title = "{FIRST_FEATURED}"' in text
    path.write_text(text.replace(f'title = "{FIRST_FEATURED}"', f'title = "{NEW_TITLE}"', 1), encoding="utf-8")

    expect(_title_link(_frame(page), NEW_TITLE)).to_be_visible(timeout=LIVE)
    expect(page.locator("ol#items > li").first).to_contain_text(NEW_TITLE)
    expect(_title_link(_frame(page), FIRST_FEATURED)).to_have_count(0)


def test_a_broken_template_is_reported_and_the_server_keeps_answering(page: Page, preview: str, project: Path) -> None:
    from playwright.sync_api import expect

    _open(page, f"{preview}/")
    expect(page.locator("div#error")).to_have_count(0)

    template = project / DIGEST_TEMPLATE
    good = template.read_text(encoding="utf-8")
    lines = good.splitlines(keepends=True)
    lines.insert(BROKEN_LINE - 1, "{% if %}\n")
    template.write_text("".join(lines), encoding="utf-8")

    error = page.locator("div#error")
    expect(error).to_be_visible(timeout=LIVE)
    expect(error).to_contain_text(re.compile(rf"digest\.mjml\.j2:{BROKEN_LINE}\b"))

    with urllib.request.urlopen(f"{preview}/", timeout=10) as response:  # plain HTTP, outside the browser
        assert response.status == 200
        assert "digest.mjml.j2" in response.read().decode("utf-8", "replace")

    template.write_text(good, encoding="utf-8")
    expect(error).to_have_count(0, timeout=LIVE)
    expect(_title_link(_frame(page), FIRST_FEATURED)).to_be_visible()


def _send_test(page: Page, email: str) -> int:
    """Fill in and submit form#send-test; the status of the POST /send-test response itself (a redirect counts)."""
    form = page.locator("form#send-test")
    form.locator("input[name=email]").fill(email)
    with page.expect_response(lambda r: r.request.method == "POST" and urlsplit(r.url).path == "/send-test") as info:
        form.locator("input[name=email]").press("Enter")
    page.wait_for_load_state("load")
    return info.value.status


def test_send_test_only_mails_the_configured_test_recipients(page: Page, preview: str, cfg: Config) -> None:
    assert cfg.preview.test_recipients == (ALLOWED,), "the shipped config.toml changed: adjust ALLOWED"

    _open(page, f"{preview}/")
    status = _send_test(page, NOT_ALLOWED)  # refused: an error answer, or a redirect back with a notice; not a crash
    assert status < 500, f"POST /send-test to {NOT_ALLOWED} (not a test recipient) answered {status}"
    assert _outbox(cfg) == [], f"a test copy went to {NOT_ALLOWED}, who is not in [preview].test_recipients"

    _open(page, f"{preview}/")
    status = _send_test(page, ALLOWED)
    assert status < 400, f"POST /send-test to {ALLOWED} answered {status}"
    deadline = time.monotonic() + 10
    while not (messages := _outbox(cfg)) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert len(messages) == 1, f"the outbox holds {len(messages)} messages, expected one test copy"
    [message] = messages
    assert str(message["Subject"]).startswith("[TEST]"), f"Subject is {message['Subject']!r}"
    assert ALLOWED in str(message["To"])
