"""The digest email in a real browser: Debian's headless Chromium, driven by Playwright.

No horizontal overflow at phone (375 px) and desktop-client (600 px) widths, every image loaded, scaled to
fit and with alt text, and the featured items above the rest. Playwright never downloads a browser here:
it drives /usr/bin/chromium (Debian package `chromium`; `.ci/run` installs it when it is missing).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import unquote, urlsplit

import pytest

from publisher.config import Config

from .conftest import NOW

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page, Route

MEDIA_URL = "http://127.0.0.1:8000/media/"
FIRST_FEATURED = "Yes to Striking Iranian-Backed Militants"
FIRST_OTHER = "Persistent Gray Zone Aggression in the South China Sea Calls for Increased Coordination in Rule of Law"


@pytest.fixture
def digest(cfg: Config) -> tuple[str, Path]:
    """The sample project's digest HTML as sent to one reader, and the local directory behind its /media/ URLs."""
    from publisher.digest import plan_issue, render_variants
    from publisher.feeds import copy_media
    from publisher.pipeline import run_ingest
    from publisher.store import open_store

    store = open_store(cfg.store_url)
    try:
        run_ingest(cfg, store, NOW)
        plan = plan_issue(cfg, store, NOW)
    finally:
        store.close()
    rendered = render_variants(cfg, plan, [()])[()]
    issue = rendered.issue
    # The sample content decides these two; say so plainly if it changes.
    assert issue.featured and issue.featured[0].title == FIRST_FEATURED
    assert issue.groups and issue.groups[0][1][0].title == FIRST_OTHER
    html, _text = rendered.personalise({"unsubscribe_url": "http://127.0.0.1:8000/u/1.x",
                                        "preferences_url": "http://127.0.0.1:8000/p/1.x",
                                        "email": "reader@example.com"})
    copy_media(cfg)
    return html, cfg.path(cfg.site.public_dir) / "media"


def _serve_media(media_dir: Path) -> Callable[[Route], None]:
    """Answer the HTML's http://127.0.0.1:8000/media/... from the local copy; abort every other request."""
    root = media_dir.resolve()

    def handle(route: Route) -> None:
        url = route.request.url
        if not url.startswith(MEDIA_URL):
            route.abort()
            return
        path = (root / unquote(urlsplit(url).path).removeprefix("/media/")).resolve()
        if path.is_file() and root in path.parents:
            route.fulfill(path=path)
        else:
            route.fulfill(status=404, body="not found")

    return handle


IMAGES_JS = """() => Array.from(document.images, img => {
    const r = img.getBoundingClientRect();
    return {src: img.getAttribute('src'), alt: img.getAttribute('alt'), visible: img.checkVisibility() && r.width > 0 && r.height > 0,
            complete: img.complete, naturalWidth: img.naturalWidth, left: r.left, right: r.right};
})"""


def _title_top(page: Page, title: str) -> float:
    link = page.locator("a").filter(has_text=re.compile(rf"^\s*{re.escape(title)}\s*$")).first
    assert link.is_visible(), f"{title!r} is not visible"
    box = link.bounding_box()
    assert box is not None
    return box["y"]


@pytest.mark.parametrize("width", [375, 600])
def test_digest_fits_the_viewport(browser: Browser, digest: tuple[str, Path], width: int, tmp_path: Path) -> None:
    html, media_dir = digest
    context = browser.new_context(viewport={"width": width, "height": 800})
    try:
        page = context.new_page()
        page.route("**/*", _serve_media(media_dir))
        page.set_content(html, wait_until="load")  # the HTML exactly as sent; "load" waits for the images

        assert page.evaluate("window.innerWidth") == width
        scroll_width = page.evaluate("document.documentElement.scrollWidth")
        page.screenshot(path=tmp_path / f"digest-{width}.png", full_page=True)
        assert scroll_width <= width, f"horizontal overflow at {width} px: scrollWidth {scroll_width}"

        images = page.evaluate(IMAGES_JS)
        assert any(img["visible"] for img in images), "the digest shows no images"
        for img in images:
            assert (img["alt"] or "").strip(), f"<img src={img['src']!r}> has no alt text"
            if img["visible"]:
                assert img["complete"] and img["naturalWidth"] > 0, f"{img['src']} did not load"
                assert img["left"] >= 0 and img["right"] <= width, f"{img['src']} sticks out: {img['left']}..{img['right']} at {width} px"

        assert _title_top(page, FIRST_FEATURED) < _title_top(page, FIRST_OTHER), "the featured item is not above the rest"
    finally:
        context.close()
