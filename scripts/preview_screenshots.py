#!/usr/bin/env python3
"""Screenshots of the editor preview for the docs: preview-desktop.png and preview-mobile.png.

Copies the repository's config.toml, content/ and templates/ into a temporary directory (so nothing in the
repository is touched: no store, no var/, no public/), serves the preview app over that copy with uvicorn on
a free port on 127.0.0.1, and photographs it in Debian's Chromium (/usr/bin/chromium) driven by Playwright,
with the same launch arguments as the browser tests. Playwright never downloads a browser here.

The email's images point at [site].base_url/media/; they are answered from the copy's own images, and every
other request that does not go to the preview server is aborted (no network needed).

Usage: python scripts/preview_screenshots.py [--out docs]
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import shutil
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = "/usr/bin/chromium"
# As in tests/test_digest_browser.py: run as root (no sandbox then), with no network but localhost.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]
VIEWPORT = {"width": 1280, "height": 1000}
SHOTS = {"preview-desktop.png": "desktop", "preview-mobile.png": "mobile"}


def missing_requirement() -> str | None:
    """Why the screenshots cannot be taken here, or None."""
    if not os.access(CHROMIUM, os.X_OK):
        return f"{CHROMIUM} is missing (install the Debian package chromium: apt-get install chromium)"
    if importlib.util.find_spec("playwright") is None:
        return "playwright is not installed (pip install -e '.[test]' in the project's venv)"
    if importlib.util.find_spec("uvicorn") is None:
        return "uvicorn is not installed (pip install -e . in the project's venv)"
    return None


def copy_project(dest: Path) -> Path:
    """config.toml, content/ and templates/ from the repository into dest; the copied config file."""
    for name in ("content", "templates"):
        shutil.copytree(ROOT / name, dest / name)
    shutil.copy(ROOT / "config.toml", dest / "config.toml")
    return dest / "config.toml"


def serve(app: Any) -> Any:
    """Serve an ASGI app with uvicorn in a thread; yields its base URL."""
    from publisher.web.threaded import serve_in_thread

    return serve_in_thread(app, lifespan="on")


def route_requests(media_url: str, media_dir: Path) -> Callable[[Any], None]:
    """For every request not to the preview: media_url/... is answered from media_dir, anything else aborted."""
    root = media_dir.resolve()

    def handle(route: Any) -> None:
        url = route.request.url
        if url.startswith(media_url):
            path = (root / unquote(urlsplit(url).path).removeprefix(urlsplit(media_url).path)).resolve()
            if path.is_file() and root in path.parents:
                route.fulfill(path=path)
            else:
                route.fulfill(status=404, body="not found")
        else:
            route.abort()

    return handle


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs", help="directory for the PNG files (default: docs/ in the repository)")
    args = parser.parse_args(argv)

    reason = missing_requirement()
    if reason:
        print(f"preview_screenshots: {reason}", file=sys.stderr)
        return 1
    try:
        from publisher.config import load_config
        from publisher.feeds import copy_media
        from publisher.store import open_store
        from publisher.web.preview import create_preview_app
    except ImportError as exc:
        print(f"preview_screenshots: cannot import the publisher ({exc}); run it with the project's venv", file=sys.stderr)
        return 1
    from playwright.sync_api import Error as PlaywrightError
    from playwright.sync_api import sync_playwright

    # Only the copy's config counts: no PUBLISHER_* from this shell (a store URL, a mail backend) leaks in, here or
    # when the app reloads the config; and a throwaway signing key, so no development key is generated.
    for name in [n for n in os.environ if n.startswith("PUBLISHER_")]:
        del os.environ[name]
    os.environ["PUBLISHER_SECRET_KEY"] = "preview-screenshots-only-signing-key-0123"

    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="preview-screenshots-") as tmp:
        cfg = load_config(copy_project(Path(tmp)))
        copy_media(cfg)  # the copy's images under public/media/, to answer the email's image URLs with
        media_url = cfg.site.base_url.rstrip("/") + "/media/"
        store = open_store(cfg.store_url)
        try:
            with serve(create_preview_app(cfg, store, watch=False)) as base, sync_playwright() as p:
                try:
                    browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
                except PlaywrightError as exc:
                    print(f"preview_screenshots: {CHROMIUM} did not start: {exc}", file=sys.stderr)
                    return 1
                try:
                    for name, view in SHOTS.items():
                        context = browser.new_context(viewport=VIEWPORT)
                        try:
                            context.set_default_timeout(30_000)
                            # The preview's own requests are not intercepted at all (its /events stream stays a plain stream).
                            context.route(lambda url: not url.startswith(base + "/"),
                                          route_requests(media_url, cfg.path(cfg.site.public_dir) / "media"))
                            page = context.new_page()
                            # "load" waits for the iframe and its images; never "networkidle": /events stays open.
                            response = page.goto(f"{base}/?view={view}", wait_until="load")
                            if response is None or response.status != 200:
                                print(f"preview_screenshots: GET /?view={view} answered {response.status if response else 'nothing'}",
                                      file=sys.stderr)
                                return 1
                            page.locator("iframe#frame").wait_for(state="visible")
                            page.screenshot(path=out / name, full_page=False)
                            print(out / name)
                        finally:
                            context.close()
                finally:
                    browser.close()
        finally:
            store.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
