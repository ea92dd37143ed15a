"""RSS 2.0 and Atom 1.0 through feedgen, with its open bugs worked around, and entries rendered once.

feedgen 1.0.0 bites here, and each bite has a test in tests/test_feeds_xml.py:
- Atom entry links lose rel and type (feedgen #135): the loop variable shadows the link's data,
  so we set rel/type on the produced <link> elements ourselves.
- An enclosure link breaks Atom links, so images go in Media RSS, never as enclosures.
- The RSS channel <link> is the last link added: the site (alternate) link is added last.
- ``add_entry`` prepends by default: we never use it (entries are spliced, see below).
- ``updated`` and ``lastBuildDate`` default to now: both are set to the newest entry's update.
- The media extension wraps everything in <media:group> unless group=None: we write Media RSS
  ourselves (feedgen's has no media:credit or media:description anyway).

Entries are rendered to bytes once per publication and format (feedgen's own FeedEntry.atom_entry /
rss_entry), cached, and spliced into the feed document that feedgen renders with no entries. A
publication appears in several feeds (everything, its topics, its type), and a rebuild after one new
publication re-renders one entry, not every entry of every feed it touches.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from datetime import datetime, timezone
from typing import Any

from feedgen.entry import FeedEntry
from feedgen.ext.base import BaseEntryExtension, BaseExtension
from feedgen.feed import FeedGenerator
from lxml import etree

from .. import __version__
from ..models import Publication
from .content import content_html, plain_text, summary_html

MEDIA_NS = "http://search.yahoo.com/mrss/"
DC_NS = "http://purl.org/dc/elements/1.1/"
ATOM_NS = "http://www.w3.org/2005/Atom"
CONTENT_NS = "http://purl.org/rss/1.0/modules/content/"
EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
IMAGE_TYPES = {"png": "image/png", "jpg": "image/jpeg", "jpeg": "image/jpeg", "gif": "image/gif", "webp": "image/webp", "svg": "image/svg+xml"}


class _MediaFeed(BaseExtension):
    def extend_ns(self) -> dict[str, str]:
        return {"media": MEDIA_NS, "dc": DC_NS}


class _MediaEntry(BaseEntryExtension):
    """Media RSS for one image: media:content (with description = caption, credit) and media:thumbnail."""

    def __init__(self) -> None:
        self.pub: Publication | None = None

    def _extend(self, entry: Any) -> Any:
        pub = self.pub
        if pub is None or pub.image is None:
            return entry
        img = pub.image
        attrs = {"url": img.url, "medium": "image"}
        ext = img.url.rsplit(".", 1)[-1].lower() if "." in img.url.rsplit("/", 1)[-1] else ""
        if ext in IMAGE_TYPES:
            attrs["type"] = IMAGE_TYPES[ext]
        content = etree.SubElement(entry, f"{{{MEDIA_NS}}}content", attrs)
        if img.caption:
            desc = etree.SubElement(content, f"{{{MEDIA_NS}}}description", type="plain")
            desc.text = plain_text(img.caption)
        if img.credit:
            credit = etree.SubElement(content, f"{{{MEDIA_NS}}}credit")
            credit.text = plain_text(img.credit)
        etree.SubElement(entry, f"{{{MEDIA_NS}}}thumbnail", url=img.url)
        return entry

    extend_atom = _extend

    def extend_rss(self, item: Any) -> Any:
        pub = self.pub
        if pub is not None and pub.authors:  # RSS <author> needs an email address; dc:creator does not
            for name in pub.authors:
                creator = etree.SubElement(item, f"{{{DC_NS}}}creator")
                creator.text = plain_text(name)
        return self._extend(item)


def _entry(pub: Publication, entry_id: str, schemes: dict[str, str], topic_names: dict[str, str]) -> FeedEntry:
    fe = FeedEntry()
    fe.register_extension("media", _MediaEntry)
    fe.media.pub = pub
    fe.id(entry_id)
    fe.guid(entry_id, permalink=False)
    fe.title(plain_text(pub.title) or "(untitled)")
    fe.link(href=pub.url, rel="alternate", type="text/html")
    fe.published(pub.published)
    fe.updated(pub.updated)
    if pub.summary:
        fe.summary(summary_html(pub), type="html")
    body = content_html(pub)
    if body:
        fe.content(body, type="html")
    for name in pub.authors:
        fe.author(name=plain_text(name))
    fe.category(term=plain_text(pub.content_type), scheme=schemes["type"], label=plain_text(pub.content_type))
    for slug in pub.topics:
        fe.category(term=slug, scheme=schemes["topic"], label=plain_text(topic_names.get(slug, slug)))
    return fe


class EntryCache:
    """Rendered entries by (publication, format, site); bounded, least recently used out first."""

    def __init__(self, maxsize: int = 50_000) -> None:
        self.maxsize = maxsize
        self._data: OrderedDict[tuple[Any, ...], bytes] = OrderedDict()
        self.hits = self.misses = 0

    def get(self, key: tuple[Any, ...]) -> bytes | None:
        value = self._data.get(key)
        if value is None:
            self.misses += 1
        else:
            self.hits += 1
            self._data.move_to_end(key)
        return value

    def peek(self, key: tuple[Any, ...]) -> bytes | None:
        return self._data.get(key)

    def put(self, key: tuple[Any, ...], value: bytes) -> None:
        self._data[key] = value
        if len(self._data) > self.maxsize:
            self._data.popitem(last=False)


_NS_DECL = re.compile(rb'^(<(?:entry|item))((?: xmlns:\w+="[^"]*")+)')


def _nsmap(fmt: str) -> dict[str, str]:
    base = {"media": MEDIA_NS, "dc": DC_NS}
    return {**base, "atom": ATOM_NS, "content": CONTENT_NS} if fmt == "rss" else base


def render_entry(fe: FeedEntry, fmt: str) -> bytes:
    if fmt == "atom":
        elem = fe.atom_entry()
        for link_elem, data in zip(elem.findall("link"), fe.link()):  # feedgen #135: rel/type are dropped
            for key in ("rel", "type"):
                if data.get(key):
                    link_elem.set(key, data[key])
        depth = 1
    else:
        elem = fe.rss_entry()
        if fe.author():  # feedgen writes <author> from names; RSS wants an email there, so only dc:creator stays
            for author in elem.findall("author"):
                elem.remove(author)
        depth = 2
    # Serialise inside a parent that declares the document's namespaces, so prefixes are the document's;
    # then drop the declarations the document root already makes.
    holder = etree.Element("holder", nsmap=_nsmap(fmt))
    holder.append(elem)
    etree.indent(elem, space="  ", level=depth)
    elem.tail = None
    raw = etree.tostring(elem, encoding="UTF-8", xml_declaration=False)
    return _NS_DECL.sub(rb"\1", raw, count=1)


def render_document(fmt: str, meta: dict[str, Any], entries: list[bytes]) -> bytes:
    """The feed document from feedgen (no entries), with the rendered entries spliced in."""
    fg = FeedGenerator()
    fg.register_extension("media", _MediaFeed, _MediaEntry)
    fg.id(meta["self_url"])
    fg.title(plain_text(meta["title"]))
    fg.subtitle(plain_text(meta["subtitle"]) or plain_text(meta["title"]))
    fg.language(meta["language"])
    fg.generator("publisher", version=__version__, uri="https://www.example.org/publisher")
    fg.author(name=plain_text(meta["author"]))
    if meta.get("icon"):
        fg.icon(meta["icon"])
        fg.logo(meta["icon"])
    if meta.get("hub"):
        fg.link(href=meta["hub"], rel="hub")
    # feedgen uses the last link added as the RSS channel <link>: self first, the site last.
    fg.link(href=meta["self_url"], rel="self", type=meta["media_type"])
    fg.link(href=meta["alternate_url"], rel="alternate", type="text/html")
    updated = meta["updated"]
    fg.updated(updated)
    fg.lastBuildDate(updated)
    if fmt == "rss":
        fg.pubDate(updated)
        doc = fg.rss_str(pretty=True)
        if meta.get("hub"):  # feedgen writes only the self link into RSS: the hub goes beside it (WebSub 4, as atom:link)
            doc = _with_rss_hub(doc, meta["hub"])
        closing, indent = b"  </channel>", b"    "
    else:
        doc = fg.atom_str(pretty=True)
        closing, indent = b"</feed>", b"  "
    at = doc.rindex(closing)
    body = b"".join(indent + e + b"\n" for e in entries)
    return doc[:at] + body + doc[at:]


def _with_rss_hub(doc: bytes, hub: str) -> bytes:
    atom = "http://www.w3.org/2005/Atom"
    root = etree.fromstring(doc)
    channel = root.find("channel")
    assert channel is not None
    self_link = channel.find(f"{{{atom}}}link")
    link = etree.Element(f"{{{atom}}}link", href=hub, rel="hub")
    if self_link is not None:
        self_link.addprevious(link)
    else:
        channel.insert(0, link)
    etree.indent(root, space="  ")
    return etree.tostring(root, encoding="UTF-8", xml_declaration=True, pretty_print=True)


__all__ = ["EPOCH", "EntryCache", "render_document", "render_entry"]
