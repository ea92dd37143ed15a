"""The web app (Starlette): the static site under [site].public_dir, feeds with their proper media types.

Starlette's StaticFiles gives ETag and Last-Modified and answers a conditional request with 304. Every
answer, errors included, carries the security headers of ``security.site_policy``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.responses import Response
from starlette.routing import BaseRoute, Mount
from starlette.staticfiles import StaticFiles
from starlette.types import Scope

from ..config import Config
from ..feeds import MEDIA_TYPES
from ..store import Store
from .security import HardenedStarlette, SecurityHeaders, site_policy

SUFFIX_TYPES = {".rss": MEDIA_TYPES["rss"], ".atom": MEDIA_TYPES["atom"]}


class SiteFiles(StaticFiles):
    """Static files, with feed media types (application/feed+json for JSON under the feeds directory)."""

    def __init__(self, *, directory: Path, feeds_dir: Path) -> None:
        super().__init__(directory=directory, html=True, check_dir=False)
        self.feeds_dir = feeds_dir.resolve()

    def file_response(self, full_path: Any, stat_result: os.stat_result, scope: Scope, status_code: int = 200) -> Response:
        response = super().file_response(full_path, stat_result, scope, status_code)
        path = Path(full_path)
        media_type = SUFFIX_TYPES.get(path.suffix)
        if path.suffix == ".json" and path.resolve().is_relative_to(self.feeds_dir):
            media_type = MEDIA_TYPES["json"]
        if media_type and response.status_code != 304:
            response.headers["content-type"] = media_type
        if path.suffix in (".rss", ".atom", ".json"):
            response.headers.setdefault("cache-control", "public, max-age=300")
        return response


def create_app(cfg: Config, store: Store | None = None) -> Starlette:
    """The site's static files, plus (with a store) the subscription pages and the providers' webhooks."""
    public = cfg.path(cfg.site.public_dir)
    public.mkdir(parents=True, exist_ok=True)
    from ..site import write_stylesheet

    write_stylesheet(cfg)  # the subscription pages use it before any build has run
    site = SiteFiles(directory=public, feeds_dir=cfg.path(cfg.feeds.output_dir))
    routes: list[BaseRoute] = []
    if store is not None:
        from .pages import subscription_routes

        routes += subscription_routes(cfg, store)
        try:
            from .webhooks import webhook_routes
        except ImportError:  # pragma: no cover - the module ships with the package
            pass
        else:
            routes += webhook_routes(cfg, store)
    policy = site_policy(cfg.site.base_url)
    return HardenedStarlette(routes=[*routes, Mount("/", app=site, name="site")], outer=[lambda app: SecurityHeaders(app, policy)])
