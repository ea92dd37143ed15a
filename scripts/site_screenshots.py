#!/usr/bin/env python3
"""Screenshots of the readers' site for the docs: site-topic-desktop.png and site-topic-mobile.png.

As scripts/preview_screenshots.py: a copy of the repository's config.toml, content/ and templates/ in a temporary
directory (nothing in the repository is touched), the site built there by the pipeline's own stages (ingest, feeds,
site), served by the real app (`publisher serve`'s) with uvicorn on a free port on 127.0.0.1, photographed in
Debian's Chromium through Playwright. [site].base_url is set to that address, so the pages' images and links load
from it; any other request is aborted (no network needed).

Usage: python scripts/site_screenshots.py [--out docs]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from preview_screenshots import CHROMIUM, CHROMIUM_ARGS, ROOT, copy_project, missing_requirement  # noqa: E402

SHOTS = {"site-topic-desktop.png": {"width": 1280, "height": 1100}, "site-topic-mobile.png": {"width": 375, "height": 1100}}
PAGE = "/topics/security-cooperation/"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs", help="directory for the PNG files (default: docs/ in the repository)")
    args = parser.parse_args(argv)
    reason = missing_requirement()
    if reason:
        print(f"site_screenshots: {reason}", file=sys.stderr)
        return 1
    for name in [n for n in os.environ if n.startswith("PUBLISHER_")]:
        del os.environ[name]
    os.environ["PUBLISHER_SECRET_KEY"] = "site-screenshots-only-signing-key-0123456"
    from playwright.sync_api import sync_playwright

    from publisher.config import load_config
    from publisher.pipeline import run_feeds, run_ingest, run_site
    from publisher.store import open_store
    from publisher.web import create_app
    from publisher.web.threaded import free_port, serve_in_thread

    port = free_port()
    os.environ["PUBLISHER_SITE__BASE_URL"] = f"http://127.0.0.1:{port}"  # the pages' images and links: this server
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="site-screenshots-") as tmp:
        cfg = load_config(copy_project(Path(tmp)))
        store = open_store(cfg.store_url)
        try:
            run_feeds(cfg, store, run_ingest(cfg, store, datetime.now(timezone.utc)))
            run_site(cfg, store)
            with serve_in_thread(create_app(cfg), port=port, lifespan="on") as base, sync_playwright() as p:
                browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
                try:
                    for name, viewport in SHOTS.items():
                        context = browser.new_context(viewport=viewport)
                        context.route(lambda url: not url.startswith(base + "/"), lambda route: route.abort())
                        page = context.new_page()
                        page.goto(base + PAGE, wait_until="load")
                        for img in page.locator("img").all()[:6]:  # the lazy ones in view: loaded before the picture
                            img.evaluate("img => { img.loading = 'eager'; return img.decode().catch(() => null); }")
                        page.screenshot(path=out / name, full_page=False)
                        print(out / name)
                        context.close()
                finally:
                    browser.close()
        finally:
            store.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
