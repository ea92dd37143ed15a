"""Small static pages for the site: the home page, one per topic and one per content type.

Each lists its newest publications and carries <link rel="alternate"> autodiscovery for its feeds,
so a reader given the page's URL finds the feed. They are the feeds' `alternate` links.
"""

from __future__ import annotations

import logging
from functools import lru_cache
from pathlib import Path

import jinja2

from ..config import Config
from ..errors import TemplateError
from ..fsutil import PathRefused, safe_join, write_atomic
from ..models import Publication
from . import MEDIA_TYPES, FeedSpec, feeds_url

log = logging.getLogger(__name__)
FORMAT_NAMES = {"rss": "RSS", "atom": "Atom", "json": "JSON Feed"}


TEMPLATE = "web/listing.html.j2"


def build_pages(cfg: Config, listings: list[tuple[FeedSpec, list[Publication]]], all_specs: list[FeedSpec]) -> list[Path]:
    """Write the page of each listed feed; returns the pages whose bytes changed."""
    template = _template(str(cfg.path(cfg.site.templates_dir)))
    public = cfg.path(cfg.site.public_dir)
    changed = []
    for spec, pubs in listings:
        others = [s for s in all_specs if s != spec]
        html = template.render(site=cfg.site, spec=spec, publications=pubs, feeds=_feeds(cfg, spec), others=others)
        try:
            page = safe_join(public, spec.page.strip("/"), "index.html")
        except PathRefused as exc:  # a name from data leads out of public/: that page only is skipped
            log.error("pages: not written: %s", exc)
            continue
        if write_atomic(page, html.encode("utf-8"), durable=False):  # rebuilt from the store
            changed.append(page)
    return changed


@lru_cache(maxsize=8)
def _environment(templates: str) -> jinja2.Environment:
    # auto_reload: an edited template is picked up by a long-running `publisher run`
    return jinja2.Environment(loader=jinja2.FileSystemLoader(templates), autoescape=True, undefined=jinja2.StrictUndefined, auto_reload=True)


def _template(templates: str) -> jinja2.Template:
    try:
        return _environment(templates).get_template(TEMPLATE)
    except jinja2.TemplateNotFound:
        raise TemplateError(str(Path(templates) / TEMPLATE), None, "template not found; check [site].templates_dir") from None
    except jinja2.TemplateSyntaxError as exc:
        raise TemplateError(str(exc.filename or Path(templates) / TEMPLATE), exc.lineno, exc.message or "syntax error") from None


def _feeds(cfg: Config, spec: FeedSpec) -> list[dict[str, str]]:
    base = feeds_url(cfg)
    return [{"href": f"{base}/{spec.path}.{fmt}", "type": MEDIA_TYPES[fmt], "title": f"{spec.title} ({FORMAT_NAMES[fmt]})"} for fmt in cfg.feeds.formats]
