"""Publications → RSS 2.0 and Atom 1.0 (feedgen) and JSON Feed 1.1 (written directly).

Feeds: everything, one per topic, one per content type. Output is a pure function of the
publications, so a rebuild from unchanged content writes byte-identical files (and
:func:`write_atomic` then leaves them alone).
"""

from __future__ import annotations

import html
import json
import re
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import nh3
from feedgen.feed import FeedGenerator

from . import __version__
from .config import Config
from .fsutil import write_atomic
from .models import Publication
from .store import Store

MEDIA_TYPES = {"rss": "application/rss+xml", "atom": "application/atom+xml", "json": "application/feed+json"}
_XML_FORBIDDEN = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")
EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


@dataclass(frozen=True)
class FeedSpec:
    """One feed: where it goes (relative to the feeds dir, no extension) and what it holds."""

    path: str
    title: str
    description: str
    publications: tuple[Publication, ...]


def slugify(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "untitled"


def feed_specs(store: Store, site_name: str, limit: int) -> list[FeedSpec]:
    topics = {t.slug: t for t in store.topics()}
    specs = [FeedSpec("all", site_name, f"Everything {site_name} publishes.", tuple(store.publications(limit=limit)))]
    for slug, topic in sorted(topics.items()):
        pubs = tuple(store.publications(topic=slug, limit=limit))
        specs.append(FeedSpec(f"topics/{slug}", f"{site_name}: {topic.name}", topic.description or f"{topic.name} at {site_name}.", pubs))
    for ctype in store.content_types():
        pubs = tuple(store.publications(content_type=ctype, limit=limit))
        specs.append(FeedSpec(f"types/{slugify(ctype)}", f"{site_name}: {ctype}", f"{ctype} from {site_name}.", pubs))
    return specs


def build_feeds(cfg: Config, store: Store) -> list[Path]:
    """Write every feed; returns the files whose bytes changed."""
    out = cfg.path(cfg.feeds.output_dir)
    changed = []
    for spec in feed_specs(store, cfg.site.name, cfg.feeds.item_limit):
        for fmt in cfg.feeds.formats:
            path = out / f"{spec.path}.{fmt}"
            if write_atomic(path, render_feed(spec, fmt, cfg)):
                changed.append(path)
    return changed


def copy_media(cfg: Config) -> int:
    """Copy local images of `files` sources to public/media/ so the absolute image URLs resolve."""
    copied = 0
    media = cfg.path(cfg.site.public_dir) / "media"
    for sc in cfg.sources.values():
        if sc.kind != "files" or not sc.enabled:
            continue
        root = cfg.path(sc.path)
        for src in sorted(root.rglob("*")):
            if src.suffix.lower() in {".png", ".jpg", ".jpeg", ".gif", ".webp", ".svg"} and src.is_file():
                if write_atomic(media / src.relative_to(root), src.read_bytes()):
                    copied += 1
    return copied


def render_feed(spec: FeedSpec, fmt: str, cfg: Config) -> bytes:
    if fmt == "json":
        return _json_feed(spec, cfg)
    fg = _feed_generator(spec, fmt, cfg)
    return fg.rss_str(pretty=True) if fmt == "rss" else fg.atom_str(pretty=True)


def entry_id(base_url: str, pub: Publication) -> str:
    """Stable across title edits and rebuilds: derived only from the site and the publication's id."""
    return uuid.uuid5(uuid.NAMESPACE_URL, f"{base_url.rstrip('/')}/{pub.id}").urn


def _clean(text: str) -> str:
    return _XML_FORBIDDEN.sub("", text)


def _feed_url(cfg: Config, spec: FeedSpec, fmt: str) -> str:
    base = cfg.site.base_url.rstrip("/")
    rel = Path(cfg.feeds.output_dir).relative_to(cfg.site.public_dir).as_posix() if cfg.feeds.output_dir.startswith(cfg.site.public_dir) else "feeds"
    return f"{base}/{rel}/{spec.path}.{fmt}"


def _updated(spec: FeedSpec) -> datetime:
    """The newest entry's update, never the build time (so rebuilds do not churn)."""
    return max((p.updated_at for p in spec.publications), default=EPOCH)


def _content_html(pub: Publication) -> str:
    parts = []
    if pub.image:
        credit = f" <small>Photo: {html.escape(pub.image.credit)}</small>" if pub.image.credit else ""
        caption = html.escape(pub.image.caption)
        alt = html.escape(pub.image.alt or pub.image.caption or pub.title, quote=True)
        parts.append(f'<figure><img src="{html.escape(pub.image.url, quote=True)}" alt="{alt}"><figcaption>{caption}{credit}</figcaption></figure>')
    parts.append(nh3.clean(pub.body_html) if pub.body_html else f"<p>{html.escape(pub.summary)}</p>")
    return _clean("\n".join(parts))


def _feed_generator(spec: FeedSpec, fmt: str, cfg: Config) -> FeedGenerator:
    fg = FeedGenerator()
    fg.load_extension("dc")
    fg.load_extension("media")
    self_url = _feed_url(cfg, spec, fmt)
    fg.id(self_url)
    fg.title(_clean(spec.title))
    fg.subtitle(_clean(spec.description))
    fg.language(cfg.site.language)
    fg.generator("publisher", version=__version__)
    # feedgen uses the last link added as the RSS channel <link>: self first, site last.
    fg.link(href=self_url, rel="self", type=MEDIA_TYPES[fmt])
    fg.link(href=cfg.site.base_url, rel="alternate", type="text/html")
    updated = _updated(spec)
    fg.updated(updated)
    fg.lastBuildDate(updated)
    for pub in spec.publications:
        fe = fg.add_entry(order="append")  # feedgen prepends by default
        fe.id(entry_id(cfg.site.base_url, pub))
        fe.guid(entry_id(cfg.site.base_url, pub), permalink=False)
        fe.title(_clean(pub.title))
        fe.link(href=pub.url, rel="alternate", type="text/html")
        fe.published(pub.published_at)
        fe.updated(pub.updated_at)
        if pub.summary:
            fe.summary(_clean(pub.summary))
        fe.content(_content_html(pub), type="CDATA" if fmt == "rss" else "html")
        for author in pub.authors:
            fe.author(name=_clean(author))
        if pub.authors and fmt == "rss":  # RSS <author> needs an email address; dc:creator does not
            fe.dc.dc_creator(list(pub.authors))
        for term in (pub.content_type, *pub.topics):
            fe.category(term=_clean(term), label=_clean(term))
        if pub.image:
            fe.media.content(url=pub.image.url, medium="image", group=None)
            fe.media.thumbnail(url=pub.image.url, group=None)
    return fg


def _json_feed(spec: FeedSpec, cfg: Config) -> bytes:
    items = []
    for pub in spec.publications:
        item: dict[str, object] = {
            "id": entry_id(cfg.site.base_url, pub),
            "url": pub.url,
            "title": _clean(pub.title),
            "content_html": _content_html(pub),
            "date_published": pub.published_at.isoformat(),
            "date_modified": pub.updated_at.isoformat(),
            "tags": [pub.content_type, *pub.topics],
        }
        if pub.summary:
            item["summary"] = _clean(pub.summary)
        if pub.image:
            item["image"] = pub.image.url
        if pub.authors:
            item["authors"] = [{"name": a} for a in pub.authors]
        items.append(item)
    feed = {
        "version": "https://jsonfeed.org/version/1.1",
        "title": _clean(spec.title),
        "home_page_url": cfg.site.base_url,
        "feed_url": _feed_url(cfg, spec, "json"),
        "description": _clean(spec.description),
        "language": cfg.site.language,
        "items": items,
    }
    return (json.dumps(feed, ensure_ascii=False, indent=2) + "\n").encode("utf-8")


__all__ = ["build_feeds", "copy_media", "feed_specs", "render_feed", "entry_id", "MEDIA_TYPES"]
