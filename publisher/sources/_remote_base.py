"""What feed and page sources share: :class:`RemoteResult`, the :class:`_RemoteSource` base, text helpers and dates."""

from __future__ import annotations

import hashlib
import html
import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import urljoin, urlsplit
from zoneinfo import ZoneInfo

import nh3

from ..errors import SourceError
from ..feeds.content import clean_text, plain_text
from ..models import Image, Publication
from . import SourceResult
from .fetch import Fetcher, FetchError, Response, remember

SUMMARY_MAX = 600  # characters: a summary made from a long description or from the content is cut here
ID_MAX = 200  # publications.id is VARCHAR(200)
TYPE_MAX = 100  # publications.content_type is VARCHAR(100)
_SPACES = re.compile(r"\s+")
_TEXT_CLEANER = nh3.Cleaner(tags=set())
_BLOCK_END = re.compile(r"</(?:p|div|li|h[1-6]|blockquote|pre|tr|td|th|dd|dt|figcaption|section|article)\s*>|<br\s*/?>", re.I)


@dataclass
class RemoteResult(SourceResult):
    not_modified: bool = False  # a 304: nothing changed since the last poll, nothing to ingest


class _ItemError(Exception):
    pass


class _RemoteSource:
    kind = "remote"
    accept = "*/*"

    def __init__(
        self,
        name: str,
        url: str,
        *,
        base_url: str,
        timezone: str,
        state: dict[str, Any],
        fetcher: Fetcher,
        topics: Iterable[str] = (),
        content_type: str = "Commentary",
        content_types: Iterable[str] = (),
    ) -> None:
        self.name = name
        self.url = url
        self.base_url = base_url.rstrip("/")
        self.tz = ZoneInfo(timezone)
        self.state = state
        self.fetcher = fetcher
        self.topics = tuple(topics)
        self.content_type = content_type
        self.known_types = {t.casefold(): t for t in content_types}

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r}, {self.url!r})"

    def fetch(self) -> RemoteResult:
        result = RemoteResult()
        try:
            response = self.fetcher.get(self.url, state=self.state, accept=self.accept)
        except FetchError as exc:
            result.errors.append(SourceError(self.name, self.url, exc.reason))
            return result
        except Exception as exc:  # noqa: BLE001 - never raise: an odd URL or library corner is this source's error
            result.errors.append(SourceError(self.name, self.url, f"cannot fetch: {type(exc).__name__}: {exc}"))
            return result
        if response.moved_to:
            result.warnings.append(f"source {self.name!r}: {self.url} moved permanently to {response.moved_to}; "
                                   f"update [sources.{self.name}].url")
        if response.not_modified:
            result.not_modified = True
            return result
        try:
            ok = self._parse(response, result)
        except Exception as exc:  # noqa: BLE001 - a parser bug on odd input is this source's error, not the run's
            result.errors.append(SourceError(self.name, self.url, f"cannot read the {self.kind}: {type(exc).__name__}: {exc}"))
            result.publications.clear()
            return result
        if ok:
            remember(self.state, response)
        return result

    def _parse(self, response: Response, result: RemoteResult) -> bool:
        """Fill ``result``; True when the validators may be kept (the document was read cleanly)."""
        raise NotImplementedError

    def _item_location(self, n: int, hint: str) -> str:
        return f"{self.url} item {n}" + (f" ({hint})" if hint else "")

    def _type_named(self, text: str) -> str:
        """A type read off the page: a known name in its configured spelling, else as written; none: the configured type."""
        return self.known_types.get(text.casefold(), text) if text else self.content_type

    def _type_for(self, categories: Iterable[str]) -> str:
        for c in categories:
            known = self.known_types.get(plain_text(c).casefold())
            if known:
                return known
        return self.content_type

    def _publication(self, pub_id: str, link: str, title: str, summary_text: str, body_html: str, content_type: str,
                     published: datetime | None, updated: datetime | None, authors: Iterable[str], image: Image | None) -> Publication:
        if updated is not None and published is not None and updated < published:
            updated = published
        return Publication(
            id=_short_id(pub_id, self.name), url=link, title=title, summary=summary_text,
            content_type=(content_type or self.content_type)[:TYPE_MAX], published_at=published, updated_at=updated,
            topics=self.topics, authors=tuple(dict.fromkeys(a for a in authors if a)), image=image,
            body_html=body_html, source=self.name,
        )


def _short_id(pub_id: str, name: str) -> str:
    if len(pub_id) <= ID_MAX:
        return pub_id
    return f"{name}:sha256:{hashlib.sha256(pub_id.encode()).hexdigest()}"[:ID_MAX]


def _text(fragment: str) -> str:
    """HTML or text → one line of plain text (plain_text's rules; long input bypasses its cache)."""
    fragment = _BLOCK_END.sub(r"\g<0> ", fragment)  # "<p>One.</p><p>Two.</p>" → "One. Two."
    if len(fragment) <= 2000:
        return plain_text(fragment)
    text = clean_text(fragment)
    text = clean_text(html.unescape(_TEXT_CLEANER.clean(text)))
    return _SPACES.sub(" ", text).strip()


def _shorten(text: str, limit: int = SUMMARY_MAX) -> str:
    if len(text) <= limit:
        return text
    cut = text[:limit].rsplit(" ", 1)[0].rstrip(" ,;:.-–—")
    return f"{cut}…"


def _absolute_http(url: str, base: str) -> str | None:
    url = (url or "").strip()
    if not url:
        return None
    try:
        full = urljoin(base, url)
        parts = urlsplit(full)
    except ValueError:  # "Invalid IPv6 URL" and the like
        return None
    return full if parts.scheme in ("http", "https") and parts.netloc else None


def _aware(value: datetime, tz: ZoneInfo) -> datetime:
    return value.replace(tzinfo=tz) if value.tzinfo is None else value


# -- dates --------------------------------------------------------------------------------------------------

_MONTHS = ("january", "february", "march", "april", "may", "june", "july", "august", "september", "october", "november", "december")
_MDY = re.compile(r"\b(?P<mon>[A-Za-z]{3,9})\.?\s+(?P<day>\d{1,2})(?:st|nd|rd|th)?,?\s+(?P<year>\d{4})\b")
_DMY = re.compile(r"\b(?P<day>\d{1,2})(?:st|nd|rd|th)?\.?\s+(?P<mon>[A-Za-z]{3,9})\.?,?\s+(?P<year>\d{4})\b")
_ISO_IN_TEXT = re.compile(r"\d{4}-\d{2}-\d{2}(?:[T ]\d{2}:\d{2}(?::\d{2}(?:\.\d+)?)?(?:Z|[+-]\d{2}:?\d{2})?)?")


def _month(name: str) -> int | None:
    name = name.lower()
    for i, full in enumerate(_MONTHS, start=1):
        if full.startswith(name) and len(name) >= 3:
            return i
    return None


def parse_date(text: str, tz: ZoneInfo) -> datetime | None:
    """"Feb 26, 2024", "26 February 2024", "2024-02-26" (midnight in ``tz``) or an ISO date-time (naive: in ``tz``)."""
    text = (text or "").strip()
    if not text:
        return None
    try:
        return _aware(datetime.fromisoformat(text), tz)
    except ValueError:
        pass
    for pattern in (_MDY, _DMY):
        for m in pattern.finditer(text):
            month = _month(m.group("mon"))
            if month is None:
                continue
            try:
                return datetime(int(m.group("year")), month, int(m.group("day")), tzinfo=tz)
            except ValueError:
                continue
    m = _ISO_IN_TEXT.search(text)
    if m:
        try:
            return _aware(datetime.fromisoformat(m.group(0).replace(" ", "T")), tz)
        except ValueError:
            return None
    return None
