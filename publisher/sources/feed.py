"""Feed sources (RSS, Atom, JSON Feed): :class:`FeedSource` and its parsing helpers."""

from __future__ import annotations

import html
import io
import json
import re
import xml.sax
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo

import feedparser
import nh3

from ..errors import SourceError
from ..feeds.content import CONTENT_ATTRS, CONTENT_TAGS, URL_SCHEMES, clean_text, plain_text
from ..models import Image, Publication
from ._remote_base import SUMMARY_MAX, RemoteResult, _absolute_http, _aware, _ItemError, _RemoteSource, _shorten, _text, parse_date
from .fetch import Response

IDS_REMEMBERED = 4000  # link/guid → id entries kept in state["ids"]
FEED_ACCEPT = ("application/rss+xml, application/atom+xml, application/feed+json, application/json;q=0.9, "
               "application/xml;q=0.8, text/xml;q=0.8, */*;q=0.5")
_BODY_CLEANER = nh3.Cleaner(tags=CONTENT_TAGS, attributes=CONTENT_ATTRS, url_schemes=URL_SCHEMES)


@dataclass
class _Entry:
    key: str  # guid / id; "" when there is none
    link: str
    title: str  # HTML or text
    summary: str  # HTML or text
    content: str  # HTML
    published: datetime | None
    published_raw: str
    updated: datetime | None
    authors: list[str]
    image_url: str
    image_credit: str
    categories: list[str]


class FeedSource(_RemoteSource):
    """An RSS, Atom or JSON Feed: one publication per entry."""

    kind = "feed"
    accept = FEED_ACCEPT

    def _parse(self, response: Response, result: RemoteResult) -> bool:
        body = response.body
        if "json" in response.content_type or body.lstrip()[:1] == b"{":
            entries, malformed = self._json_entries(response, result)
        else:
            entries, malformed = self._xml_entries(response, result)
        if entries is None:
            return False
        ids = self._assign_ids(entries)
        item_errors: list[SourceError] = []
        for n, (entry, pub_id) in enumerate(zip(entries, ids, strict=True), start=1):
            where = self._item_location(n, entry.link or entry.key)
            if pub_id is None:
                continue  # the same entry twice in one document: the first stands
            try:
                pub, warnings = self._entry_publication(entry, pub_id, where)
            except _ItemError as exc:
                item_errors.append(SourceError(self.name, where, str(exc)))
                continue
            result.publications.append(pub)
            result.warnings.extend(warnings)
        if malformed:
            # One error for the document; the broken entries are a consequence of it, not news of their own.
            kept, skipped = len(result.publications), len(item_errors)
            result.errors.append(SourceError(self.name, self.url, f"malformed XML: {malformed}; the lenient parser kept {kept} "
                                             f"entr{'y' if kept == 1 else 'ies'}" + (f" and skipped {skipped}" if skipped else "")))
            return False  # keep no validators: the next poll reads it (and reports it) again until it is fixed
        result.errors.extend(item_errors)
        return True

    # parsing -------------------------------------------------------------------------------------------

    def _xml_entries(self, response: Response, result: RemoteResult) -> tuple[list[_Entry] | None, str]:
        """The entries, and what makes the document malformed XML ("" when nothing)."""
        headers = {"content-location": response.final_url, "content-type": response.headers.get("Content-Type", "application/xml")}
        # A stream, never bytes: feedparser.parse() opens bytes that look like a path as a local file.
        parsed = feedparser.parse(io.BytesIO(response.body), response_headers=headers)
        problem = parsed.get("bozo_exception") if parsed.get("bozo") else None
        if not parsed.get("version") and not parsed.entries:
            why = f": {_bozo_message(problem)}" if problem is not None else ""
            result.errors.append(SourceError(self.name, self.url, f"not an RSS, Atom or JSON feed (Content-Type {response.content_type or 'missing'}){why}"))
            return None, ""
        malformed = ""
        if problem is not None and isinstance(problem, xml.sax.SAXException):
            malformed = _bozo_message(problem)
        elif problem is not None:  # a wrong Content-Type or charset: read anyway, worth a note
            result.warnings.append(f"source {self.name!r}: {self.url}: {_bozo_message(problem)}")
        return [self._fp_entry(e, response.final_url) for e in parsed.entries], malformed

    def _fp_entry(self, e: Any, base: str) -> _Entry:
        link = e.get("link") or ""
        if not link:
            link = next((lk.get("href", "") for lk in e.get("links", ()) if lk.get("rel") in (None, "alternate")), "")
        content = ""
        for c in e.get("content", ()):
            value = c.get("value") or ""
            if c.get("type") in ("text/html", "application/xhtml+xml"):
                content = value
                break
            if not content and value:
                content = f"<p>{html.escape(value)}</p>"
        published, raw = _fp_date(e, "published")
        updated, raw_updated = _fp_date(e, "updated")
        if published is None and not raw:
            published, raw = updated, raw_updated  # Atom's only required date
        authors = [plain_text(a.get("name") or "") for a in e.get("authors", ()) if isinstance(a, Mapping)]
        if not any(authors) and e.get("author"):
            authors = [plain_text(e["author"])]
        image_url, credit = _fp_image(e)
        return _Entry(
            key=str(e.get("id") or "").strip(), link=_absolute_http(link, base) or link.strip(),
            title=e.get("title") or "", summary=e.get("summary") or "", content=content,
            published=published, published_raw=raw, updated=updated, authors=authors,
            image_url=image_url, image_credit=credit,
            categories=[t.get("term") or t.get("label") or "" for t in e.get("tags", ()) if isinstance(t, Mapping)],
        )

    def _json_entries(self, response: Response, result: RemoteResult) -> tuple[list[_Entry] | None, str]:
        try:
            doc = json.loads(response.body)
        except (UnicodeDecodeError, ValueError) as exc:
            result.errors.append(SourceError(self.name, self.url, f"invalid JSON: {exc}"))
            return None, ""
        if not isinstance(doc, dict) or not isinstance(doc.get("items"), list):
            result.errors.append(SourceError(self.name, self.url, "not a JSON Feed: expected an object with an \"items\" list (https://jsonfeed.org/version/1.1)"))
            return None, ""
        if not str(doc.get("version", "")).startswith("https://jsonfeed.org/version/"):
            result.warnings.append(f"source {self.name!r}: {self.url}: JSON Feed without a version; read as version 1.1")
        base = response.final_url
        feed_authors = _json_authors(doc)
        entries = []
        for item in doc["items"]:
            if not isinstance(item, dict):
                item = {}
            link = _str(item.get("url")) or _str(item.get("external_url"))
            absolute = _absolute_http(link, base)
            content = _str(item.get("content_html"))
            if not content and _str(item.get("content_text")):
                content = "".join(f"<p>{html.escape(p.strip())}</p>" for p in _str(item.get("content_text")).split("\n\n") if p.strip())
            published_raw = _str(item.get("date_published"))
            updated_raw = _str(item.get("date_modified"))
            published, updated = _iso(published_raw, self.tz), _iso(updated_raw, self.tz)
            if published is None and not published_raw:
                published, published_raw = updated, updated_raw
            entries.append(_Entry(
                key=_str(item.get("id")), link=absolute or link,
                title=_str(item.get("title")), summary=_str(item.get("summary")), content=content,
                published=published, published_raw=published_raw, updated=updated,
                authors=_json_authors(item) or feed_authors,
                image_url=_absolute_http(_str(item.get("image")) or _str(item.get("banner_image")), absolute or base) or "",
                image_credit="",
                categories=[t for t in item["tags"] if isinstance(t, str)] if isinstance(item.get("tags"), list) else [],
            ))
        return entries, ""

    # identity ------------------------------------------------------------------------------------------

    def _assign_ids(self, entries: list[_Entry]) -> list[str | None]:
        """One stable id per entry, ``name:guid`` (or ``name:link`` without a guid) when first seen.

        A feed that rewrites its guids (or moves an entry to a new link) would otherwise make every entry
        new again: the ingest layer knows publications by id only. So ``state["ids"]`` remembers which id each
        link and each guid was given; an entry whose link OR guid was seen before keeps that id. A guid that
        entries with different links share identifies nothing and is ignored. None: a repeat of an entry
        already in this document (same link or same id), left out.
        """
        memory: dict[str, str] = self.state.get("ids") if isinstance(self.state.get("ids"), dict) else {}
        links_of: dict[str, set[str]] = {}
        for e in entries:
            if e.key:
                links_of.setdefault(e.key, set()).add(e.link)
        taken: set[str] = set()
        links: set[str] = set()
        out: list[str | None] = []
        learned: dict[str, str] = {}
        for e in entries:
            guid = e.key if e.key and len(links_of[e.key]) == 1 else ""
            if e.link and e.link in links:
                out.append(None)
                continue
            pub_id = memory.get(f"link:{e.link}") if e.link else None
            pub_id = pub_id or (memory.get(f"guid:{guid}") if guid else None)
            pub_id = pub_id or f"{self.name}:{guid or e.link or e.key}"
            if pub_id in taken and e.link:
                pub_id = f"{self.name}:{e.link}"
            if pub_id in taken:
                out.append(None)
                continue
            taken.add(pub_id)
            if e.link:
                links.add(e.link)
                learned[f"link:{e.link}"] = pub_id
            if guid:
                learned[f"guid:{guid}"] = pub_id
            out.append(pub_id)
        merged = {k: v for k, v in memory.items() if k not in learned}
        merged.update(learned)  # most recently seen last; the oldest are forgotten first
        self._pending_ids = dict(list(merged.items())[-IDS_REMEMBERED:])
        return out

    def fetch(self) -> RemoteResult:
        self._pending_ids: dict[str, str] | None = None
        result = super().fetch()
        if self._pending_ids is not None and result.publications:
            self.state["ids"] = self._pending_ids
        return result

    # one entry -----------------------------------------------------------------------------------------

    def _entry_publication(self, e: _Entry, pub_id: str, where: str) -> tuple[Publication, list[str]]:
        warnings: list[str] = []
        if not e.link or urlsplit(e.link).scheme not in ("http", "https"):
            raise _ItemError(f"no http(s) link{f' (got {e.link!r})' if e.link else ''}; skipped")
        title = _text(e.title)
        if not title:
            raise _ItemError("no title; skipped")
        summary = _text(e.summary)
        body = _BODY_CLEANER.clean(clean_text(e.content)).strip() if e.content else ""
        if not summary and body:
            summary = _text(body)
        if len(summary) > SUMMARY_MAX:
            if not body and e.summary:
                body = _BODY_CLEANER.clean(clean_text(e.summary)).strip()  # the description was the whole text
            summary = _shorten(summary)
        if e.published is None:
            what = f"date {e.published_raw!r} not understood" if e.published_raw else "no date"
            warnings.append(f"source {self.name!r}: {where}: {what}; the time it was first seen stands in")
        image = None
        if e.image_url:
            image = Image(url=e.image_url, credit=_text(e.image_credit))
        return self._publication(pub_id, e.link, title, summary, body, self._type_for(e.categories),
                                 e.published, e.updated or e.published, e.authors, image), warnings


def _bozo_message(exc: BaseException | None) -> str:
    if exc is None:
        return "unknown problem"
    msg = str(getattr(exc, "getMessage", lambda: str(exc))())
    line = getattr(exc, "getLineNumber", lambda: None)()
    col = getattr(exc, "getColumnNumber", lambda: None)()
    return f"{msg} at line {line}, column {col}" if line else msg


def _fp_date(e: Any, key: str) -> tuple[datetime | None, str]:
    # dict.get: feedparser's own get() maps a missing `updated` to `published`, with a DeprecationWarning
    raw = str(dict.get(e, key) or "")
    st = dict.get(e, f"{key}_parsed")
    if not st:
        return None, raw
    try:
        return datetime(*st[:6], tzinfo=timezone.utc), raw  # feedparser normalises to UTC
    except (TypeError, ValueError):
        return None, raw


def _fp_image(e: Any) -> tuple[str, str]:
    credit = ""
    for c in e.get("media_credit", ()) or ():
        if isinstance(c, Mapping) and c.get("content"):
            credit = c["content"]
            break
    candidates: list[str] = []
    for m in e.get("media_content", ()) or ():
        kind = (m.get("medium") or m.get("type") or "").lower()
        if m.get("url") and (kind.startswith("image") or (not kind and _looks_like_image(m["url"]))):
            candidates.append(m["url"])
    candidates += [m.get("url", "") for m in e.get("media_thumbnail", ()) or () if m.get("url")]
    candidates += [lk.get("href", "") for lk in e.get("links", ()) if lk.get("rel") == "enclosure" and (lk.get("type") or "").startswith("image/")]
    for url in candidates:
        full = _absolute_http(url, e.get("link") or "")
        if full:
            return full, credit
    return "", ""


def _looks_like_image(url: str) -> bool:
    return bool(re.search(r"\.(?:jpe?g|png|gif|webp|avif)(?:$|[?#])", url, re.I))


def _str(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return ""
    return str(value).strip() if isinstance(value, (str, int, float)) else ""


def _json_authors(obj: Mapping[str, Any]) -> list[str]:
    raw = obj.get("authors")
    if not isinstance(raw, list):
        raw = [obj.get("author")] if isinstance(obj.get("author"), dict) else []
    return [plain_text(_str(a.get("name"))) for a in raw if isinstance(a, dict) and _str(a.get("name"))]


def _iso(raw: str, tz: ZoneInfo) -> datetime | None:
    if not raw:
        return None
    try:
        return _aware(datetime.fromisoformat(raw.strip()), tz)
    except ValueError:
        return parse_date(raw, tz)
