"""Feeds: everything, each topic and each content type, as RSS 2.0, Atom 1.0 and JSON Feed 1.1.

A feed's bytes are a pure function of its publications, so a rebuild from unchanged content
writes byte-identical files, and :func:`write_atomic` leaves unchanged files alone. The builder
keeps rendered entries between builds (a long-running `publisher run` rebuilds only what changed).
"""

from __future__ import annotations

import hashlib
import logging
import re
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config import Config
from ..fsutil import SLUG_MAX, PathRefused, is_slug, read_inside, safe_join, slug_problem, walk_inside, write_atomic
from ..models import Publication, Topic
from ..store import Store
from ..store.db import content_hash
from .jsonfeed import json_item, render_json, serialise_item
from .xml import EPOCH, EntryCache, _entry, render_document, render_entry

log = logging.getLogger(__name__)


def _renderer_version() -> str:
    """Changes whenever the code or the libraries that shape an entry change: stored fragments then go stale."""
    import feedgen
    import lxml.etree
    import nh3

    digest = hashlib.sha256()
    for module in ("xml.py", "content.py", "jsonfeed.py"):
        digest.update((Path(__file__).parent / module).read_bytes())
    digest.update(f"{feedgen.version.version_full_str}|{nh3.__version__ if hasattr(nh3, '__version__') else ''}|{lxml.etree.LXML_VERSION}".encode())
    return digest.hexdigest()


RENDERER_VERSION = _renderer_version()

MEDIA_TYPES = {"rss": "application/rss+xml", "atom": "application/atom+xml", "json": "application/feed+json"}
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".gif", ".webp", ".svg", ".ico"}


def slugify(text: str) -> str:
    """A content type's file name (public/feeds/types/<slug>.rss): always a slug, whatever the type's text.

    Only a-z, 0-9 and single inner hyphens can come out, at most SLUG_MAX characters. A type with no ASCII
    letter or digit ("Отчёт") gets a name from its hash, so two such types never share a feed.
    """
    slug = re.sub(r"[^a-z0-9]+", "-", text.lower())[:SLUG_MAX].strip("-")
    return slug or f"type-{hashlib.sha256(text.encode('utf-8', 'surrogatepass')).hexdigest()[:12]}"


def entry_id(base_url: str, pub: Publication) -> str:
    """Stable across title edits, URL edits and rebuilds: derived only from the site and the publication's id."""
    return uuid.uuid5(uuid.NAMESPACE_URL, f"{base_url.rstrip('/')}/{pub.id}").urn


@dataclass(frozen=True)
class FeedSpec:
    """One feed: where it goes (under the feeds dir, no extension), what it is called, what it selects."""

    path: str
    title: str
    description: str
    page: str  # the site page the feed belongs to, e.g. "/topics/security-cooperation/"
    topic: str | None = None
    content_type: str | None = None

    def holds(self, pub: Publication) -> bool:
        if self.topic is not None:
            return self.topic in pub.topics
        if self.content_type is not None:
            return self.content_type == pub.content_type
        return True


def specs_holding(specs: list[FeedSpec], pubs: Iterable[Publication]) -> list[FeedSpec]:
    pubs = list(pubs)
    return [s for s in specs if any(s.holds(p) for p in pubs)]


def feed_specs(store: Store, cfg: Config, topics: list[Topic] | None = None) -> list[FeedSpec]:
    """Every feed. A topic whose slug is not a slug (an old store, a source that skipped the check) gets none, with an error."""
    site = cfg.site.name
    specs = [FeedSpec("all", site, f"Everything {site} publishes.", "/")]
    for topic in store.topics() if topics is None else topics:
        if not is_slug(topic.slug):
            log.error("feeds: no feed for topic %r, nor a page: %s (an older store or source let it in)",
                      topic.slug, slug_problem(topic.slug))
            continue
        description = topic.description or f"{topic.name} at {site}."
        specs.append(FeedSpec(f"topics/{topic.slug}", f"{site}: {topic.name}", description, f"/topics/{topic.slug}/", topic=topic.slug))
    taken: dict[str, str] = {}
    for ctype in sorted(store.content_types()):  # sorted here: which of two clashing types wins must not hang on collation
        slug = slugify(ctype)
        if not is_slug(slug):  # slugify cannot make one; checked so that a change to it cannot open a path
            log.error("feeds: no feed for content type %r: %r is not a safe file name", ctype, slug)
            continue
        if slug in taken:  # two types, one file: each build would overwrite the other's feed
            log.error("feeds: no feed for content type %r: its file name %r is taken by %r; use one spelling of the type",
                      ctype, slug, taken[slug])
            continue
        taken[slug] = ctype
        specs.append(FeedSpec(f"types/{slug}", f"{site}: {ctype}", f"{ctype} from {site}.", f"/types/{slug}/", content_type=ctype))
    return specs


def feeds_url(cfg: Config) -> str:
    """The public URL of the feeds directory: its path under [site].public_dir, on [site].base_url."""
    base = cfg.site.base_url.rstrip("/")
    try:
        rel = cfg.path(cfg.feeds.output_dir).resolve().relative_to(cfg.path(cfg.site.public_dir).resolve()).as_posix()
    except ValueError:
        rel = "feeds"
    return f"{base}/{rel}"


def absolute_url(cfg: Config, url: str) -> str:
    return url if re.match(r"^https?://", url) or not url else f"{cfg.site.base_url.rstrip('/')}/{url.lstrip('/')}"


class FeedBuilder:
    def __init__(self, cfg: Config, cache: EntryCache | None = None) -> None:
        self.cfg = cfg
        self.cache = cache or EntryCache()
        base = cfg.site.base_url.rstrip("/")
        self.schemes = {"type": f"{base}/types/", "topic": f"{base}/topics/"}
        self.topic_names: dict[str, str] = {}
        self.feeds_url = feeds_url(cfg)
        self._ids: dict[str, str] = {}
        self._pubs: dict[str, tuple[str, Publication]] = {}  # id → (content hash, publication), loaded before
        self._fresh: list[tuple[str, str, str, bytes]] = []  # rendered in this build, to keep in the store
        self._feed_entries: dict[tuple[Any, ...], Any] = {}  # FeedEntry objects of the build under way
        self._fingerprints: dict[str, tuple[Publication, dict[str, str], str]] = {}  # id → (publication, names, fingerprint)

    def build(self, store: Store, specs: list[FeedSpec] | None = None, topics: list[Topic] | None = None) -> list[Path]:
        """Write these feeds (default: all of them); returns the files whose bytes changed."""
        topics = store.topics() if topics is None else topics
        self.topic_names = {t.slug: t.name for t in topics}
        return self.write(self.listings(store, feed_specs(store, self.cfg, topics) if specs is None else specs), store)

    def write(self, listings: list[tuple[FeedSpec, list[Publication]]], store: Store | None = None) -> list[Path]:
        """Render and write the listed feeds. With ``store``, rendered entries are kept there for the next process."""
        held = {p.id: p for _, pubs in listings for p in pubs}
        # Every entry of the build fits in the cache: one evicted halfway is rendered again (a third format at 500 topics
        # is 60,000 entries). What it holds is what the feeds hold, feeds × item_limit, however big the archive.
        self.cache.maxsize = max(self.cache.maxsize, len(held) * len(self.cfg.feeds.formats))
        if store is not None:
            self._load_fragments(store, held)
        out = self.cfg.path(self.cfg.feeds.output_dir)
        changed = []
        try:
            for spec, pubs in listings:
                for fmt in self.cfg.feeds.formats:
                    try:
                        path = safe_join(out, f"{spec.path}.{fmt}")
                    except PathRefused as exc:  # a name from data leads out of the feeds dir: that feed only is skipped
                        log.error("feeds: not written: %s", exc)
                        continue
                    if write_atomic(path, self.render(spec, fmt, pubs), durable=False):  # rebuilt from the store
                        changed.append(path)
            if store is not None:
                store.save_feed_fragments(self._fresh)
        finally:
            self._feed_entries.clear()
            self._fresh.clear()
            self._fingerprints.clear()
        return changed

    def _load_fragments(self, store: Store, pubs: dict[str, Publication]) -> None:
        """Fill the in-memory cache from the store, for entries whose fingerprint still matches."""
        formats = self.cfg.feeds.formats
        wanted = [(pid, fmt) for pid, pub in pubs.items() for fmt in formats if self.cache.peek(self._key(pub, fmt)) is None]
        for (pid, fmt), (fingerprint, data) in store.feed_fragments(wanted).items():
            pub = pubs[pid]
            if fingerprint == self._fingerprint(pub):
                self.cache.put((pid, fmt, fingerprint), data)

    def _key(self, pub: Publication, fmt: str) -> tuple[str, str, str]:
        """Strings only: a key is hashed at every lookup, and hashing a Publication hashes all of its fields."""
        return (pub.id, fmt, self._fingerprint(pub))  # a renamed topic is a different entry

    def _fingerprint(self, pub: Publication) -> str:
        """Everything an entry is made from: the publication's content, its topics' names, the site, this code.

        Once per publication and build. A publication the listings loaded is known by its row's stored content
        hash (no need to hash it again); any other by the hash of its fields.
        """
        known = self._fingerprints.get(pub.id)
        if known is not None and known[0] is pub and known[1] is self.topic_names:  # topic_names is replaced, never edited
            return known[2]
        held = self._pubs.get(pub.id)
        digest = held[0] if held is not None and held[1] is pub else content_hash(pub)
        names = tuple((slug, self.topic_names.get(slug, slug)) for slug in pub.topics)
        first_seen = pub.first_seen_at.isoformat() if pub.first_seen_at else None  # the date of an undated one
        text = repr((digest, pub.source, first_seen, names, self.cfg.site.base_url, RENDERER_VERSION))  # repr: unambiguous
        fingerprint = hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()
        if len(self._fingerprints) > 4 * self.cache.maxsize:  # render() called outside a build, again and again
            self._fingerprints.clear()
        self._fingerprints[pub.id] = (pub, self.topic_names, fingerprint)
        return fingerprint

    def remember(self, pubs: Iterable[Publication]) -> list[Publication]:
        """Publications the caller has just loaded: the next listing need not load them again."""
        pubs = list(pubs)
        for pub in pubs:
            self._pubs[pub.id] = (content_hash(pub), pub)
        return pubs

    def listings(self, store: Store, specs: list[FeedSpec]) -> list[tuple[FeedSpec, list[Publication]]]:
        """Each feed's publications; a publication in several feeds is loaded once."""
        limit = self.cfg.feeds.item_limit
        groups = store.newest_of([(s.topic, s.content_type) for s in specs], limit=limit)
        wanted = {pid: digest for group in groups for pid, digest in group}
        missing = [pid for pid, digest in wanted.items() if self._pubs.get(pid, (None,))[0] != digest]
        if missing:  # each with its row's own hash: the row may have changed since the listing was read
            self._pubs.update(store.publications_by_id(missing))
        if len(self._pubs) > 4 * len(wanted) + 1000:  # keep what the feeds hold now, drop the rest
            self._pubs = {pid: self._pubs[pid] for pid in wanted if pid in self._pubs}
        return [(spec, [self._pubs[pid][1] for pid, _ in group if pid in self._pubs]) for spec, group in zip(specs, groups)]

    def meta(self, spec: FeedSpec, fmt: str, pubs: list[Publication]) -> dict[str, Any]:
        cfg = self.cfg
        return {
            "self_url": f"{self.feeds_url}/{spec.path}.{fmt}",
            "alternate_url": f"{cfg.site.base_url.rstrip('/')}{spec.page}",
            "media_type": MEDIA_TYPES[fmt],
            "title": spec.title,
            "subtitle": spec.description,
            "language": cfg.site.language,
            "author": cfg.site.name,
            "icon": absolute_url(cfg, cfg.feeds.icon),
            "hub": cfg.feeds.websub_hub,
            "updated": max((p.updated for p in pubs), default=EPOCH),  # never the build time: no churn
        }

    def render(self, spec: FeedSpec, fmt: str, pubs: list[Publication]) -> bytes:
        meta = self.meta(spec, fmt, pubs)
        entries = [self._entry(pub, fmt) for pub in pubs]
        if fmt == "json":
            return render_json(meta, [e.decode("utf-8") for e in entries])
        return render_document(fmt, meta, entries)

    def _entry(self, pub: Publication, fmt: str) -> bytes:
        key = self._key(pub, fmt)
        cached = self.cache.get(key)
        if cached is None:
            names = {slug: self.topic_names.get(slug, slug) for slug in pub.topics}
            eid = self._ids.get(pub.id) or self._ids.setdefault(pub.id, entry_id(self.cfg.site.base_url, pub))
            if fmt == "json":
                cached = serialise_item(json_item(pub, eid, names)).encode("utf-8")
            else:
                # One FeedEntry serves RSS and Atom within a build: sanitising and feedgen's checks run once.
                fe = self._feed_entries.get(key[::2])  # (id, fingerprint): the same entry in either format
                if fe is None:
                    fe = self._feed_entries[key[::2]] = _entry(pub, eid, self.schemes, names)
                cached = render_entry(fe, fmt)
            self.cache.put(key, cached)
            self._fresh.append((pub.id, fmt, key[2], cached))
        return cached


def build_feeds(cfg: Config, store: Store, builder: FeedBuilder | None = None) -> list[Path]:
    """Write every feed; returns the files whose bytes changed."""
    return (builder or FeedBuilder(cfg)).build(store)


DEFAULT_ICON = Path(__file__).with_name("icon.png")


def copy_media(cfg: Config) -> int:
    """Copy the images of `files` sources to public/media/ so their absolute URLs resolve.

    The feed icon, when it is the default /media/icon.png and no source ships one, is the publisher's own.
    An image that is a symlink out of its folder, or bigger than [ingest].max_file_size, is not copied
    (an error is logged; ingest reports the publications that use it); the other images still are.
    """
    copied = 0
    media = cfg.path(cfg.site.public_dir) / "media"
    if cfg.feeds.icon == "/media/icon.png" and not any((cfg.path(sc.path) / "icon.png").is_file() for sc in cfg.sources.values()):
        copied += write_atomic(media / "icon.png", DEFAULT_ICON.read_bytes())
    for sc in cfg.sources.values():
        if sc.kind != "files" or not sc.enabled or not cfg.path(sc.path).is_dir():
            continue
        copied += _copy_images(cfg.path(sc.path), media, cfg.ingest.max_file_size)
    return copied


def _is_image(name: str) -> bool:
    return Path(name).suffix.lower() in IMAGE_SUFFIXES


def _copy_images(root: Path, media: Path, limit: int) -> int:
    copied = 0
    walk = walk_inside(root, _is_image)
    for refused in walk.refused:
        if _is_image(Path(refused.path).name):  # a refused folder is reported by ingest, once per cycle is enough
            log.error("media: not copied: %s", refused)
    for src in walk.files:
        try:
            data = read_inside(root, src, limit)
            target = safe_join(media, src.relative_to(root).as_posix())
        except PathRefused as exc:
            log.error("media: not copied: %s", exc)
            continue
        copied += write_atomic(target, data)
    return copied


__all__ = ["FeedBuilder", "FeedSpec", "MEDIA_TYPES", "build_feeds", "copy_media", "entry_id", "feed_specs", "feeds_url", "slugify", "specs_holding"]
