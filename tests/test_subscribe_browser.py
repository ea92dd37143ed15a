"""The subscribe page in a real browser (Debian's headless Chromium via Playwright), served by real uvicorn."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from publisher.config import Config
from publisher.models import SubscriberStatus
from publisher.pipeline import run_ingest
from publisher.store import open_store
from publisher.web import create_app

from .conftest import NOW
from .servers import run_app
from .signup_support import settle


@pytest.fixture
def site(cfg: Config) -> Iterator[tuple[str, object]]:
    store = open_store(cfg.store_url)
    run_ingest(cfg, store, NOW)
    with run_app(create_app(cfg, store)) as base:
        yield base, store
    store.close()


@pytest.mark.parametrize("width", [375, 1024])
def test_fill_in_submit_and_see_check_your_inbox(browser, site, width: int) -> None:
    base, store = site
    page = browser.new_page(viewport={"width": width, "height": 800}, java_script_enabled=False)  # it works without JS
    try:
        page.goto(f"{base}/subscribe")
        assert page.locator("html").get_attribute("lang") == "en"
        page.get_by_label("Email address").fill(f"reader{width}@example.com")
        page.get_by_label("Security Cooperation").check()
        page.get_by_role("button", name="Subscribe").click()
        page.wait_for_load_state()
        assert page.get_by_role("heading", name="Check your inbox").is_visible()
        assert page.evaluate("document.documentElement.scrollWidth") <= width
    finally:
        page.close()
    settle(store)  # the sign-up is applied off the request path
    sub = store.subscriber(f"reader{width}@example.com")
    assert sub is not None and sub.status is SubscriberStatus.PENDING and sub.topics == ("security-cooperation",)


def test_a_mistyped_address_is_shown_back_with_the_error(browser, site) -> None:
    base, store = site
    page = browser.new_page(java_script_enabled=False)
    try:
        page.goto(f"{base}/subscribe")
        page.get_by_label("Email address").fill("reader@example")  # the browser's own check lets it through; ours does not
        page.get_by_role("button", name="Subscribe").click()
        page.wait_for_load_state()
        assert page.get_by_role("alert").inner_text().startswith("That does not look like an email address")
        assert page.get_by_label("Email address").input_value() == "reader@example"
    finally:
        page.close()
    assert store.subscribers() == []
