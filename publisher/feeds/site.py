"""Small static pages for the site: the home page, one per topic and one per content type.

Each lists its newest publications and carries <link rel="alternate"> autodiscovery for its feeds,
so a reader given the page's URL finds the feed. They are the feeds' `alternate` links.
"""

from __future__ import annotations

from pathlib import Path

import jinja2

from ..config import Config
from ..fsutil import write_atomic
from ..store import Store
from . import MEDIA_TYPES, FeedSpec, feed_specs, feeds_url

FORMAT_NAMES = {"rss": "RSS", "atom": "Atom", "json": "JSON Feed"}


def build_pages(cfg: Config, store: Store) -> list[Path]:
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(cfg.path(cfg.site.templates_dir)), autoescape=True, undefined=jinja2.StrictUndefined)
    template = env.get_template("web/listing.html.j2")
    public = cfg.path(cfg.site.public_dir)
    specs = feed_specs(store, cfg)
    changed = []
    for spec in specs:
        pubs = store.publications(topic=spec.topic, content_type=spec.content_type, limit=cfg.feeds.item_limit)
        html = template.render(site=cfg.site, spec=spec, publications=pubs, feeds=_feeds(cfg, spec), others=[s for s in specs if s != spec])
        if write_atomic(public / spec.page.strip("/") / "index.html", html.encode("utf-8")):
            changed.append(public / spec.page.strip("/") / "index.html")
    return changed


def _feeds(cfg: Config, spec: FeedSpec) -> list[dict[str, str]]:
    base = feeds_url(cfg)
    return [{"href": f"{base}/{spec.path}.{fmt}", "type": MEDIA_TYPES[fmt], "title": f"{spec.title} ({FORMAT_NAMES[fmt]})"} for fmt in cfg.feeds.formats]
