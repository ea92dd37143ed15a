"""Remote sources: a feed (RSS, Atom, JSON Feed) or an HTML listing page, fetched over HTTP.

Both sit behind the :class:`~publisher.sources.Source` protocol. A source that cannot be fetched or read
is ONE :class:`~publisher.errors.SourceError` (source name, URL, reason) in ``result.errors``; a bad item is
one error for that item; neither raises.

:class:`Fetcher` is shared by all remote sources: one ``requests.Session`` with our User-Agent, connect and
read timeouts plus a deadline for the whole download, a size limit enforced while streaming, redirects
followed by hand so that every hop passes the SSRF guard (:mod:`publisher.sources.ssrf`), and conditional
GET from the source's ``state`` (a plain JSON-able dict the caller persists between polls).

``state`` holds, per source:

* ``url``, ``etag``, ``last_modified``: the validators of the last good 200 (sent as If-None-Match /
  If-Modified-Since while ``url`` is still the configured URL);
* ``ids`` (feeds only): which publication id a link or a guid was last given, so that a feed which rewrites
  its guids (or moves its links) keeps the ids it had (see :meth:`FeedSource._assign_ids`).

The caller must persist ``state`` only after the publications of the same fetch are stored: otherwise a
crash in between leaves an ETag for content that was never stored, and the next poll is a 304.
"""

from __future__ import annotations

import hashlib
import html
import io
import json
import re
import time
import xml.sax
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any
from urllib.parse import urljoin, urlsplit
from zoneinfo import ZoneInfo

import feedparser
import lxml.etree
import lxml.html
import nh3
import requests
import urllib3.exceptions
from lxml.cssselect import CSSSelector
from requests.adapters import HTTPAdapter

from .. import __version__
from ..errors import SourceError
from ..feeds.content import CONTENT_ATTRS, CONTENT_TAGS, URL_SCHEMES, clean_text, plain_text
from ..models import Image, Publication
from . import SourceResult
from .ssrf import UnsafeURLError, check_url, guarded_pool_classes

DEFAULT_MAX_BYTES = 10 * 1024 * 1024
DEFAULT_TIMEOUT = 10.0  # seconds, for the connection and for each read
DEFAULT_TOTAL_TIMEOUT = 60.0  # seconds, for the whole download (a server dripping bytes cannot hold a poll)
DEFAULT_MAX_REDIRECTS = 5
SUMMARY_MAX = 600  # characters: a summary made from a long description or from the content is cut here
ID_MAX = 200  # publications.id is VARCHAR(200)
TYPE_MAX = 100  # publications.content_type is VARCHAR(100)
IDS_REMEMBERED = 4000  # link/guid → id entries kept in state["ids"]
FEED_ACCEPT = ("application/rss+xml, application/atom+xml, application/feed+json, application/json;q=0.9, "
               "application/xml;q=0.8, text/xml;q=0.8, */*;q=0.5")
PAGE_ACCEPT = "text/html, application/xhtml+xml;q=0.9, */*;q=0.5"
_REDIRECTS = {301, 302, 303, 307, 308}
_SPACES = re.compile(r"\s+")
_BODY_CLEANER = nh3.Cleaner(tags=CONTENT_TAGS, attributes=CONTENT_ATTRS, url_schemes=URL_SCHEMES)
_TEXT_CLEANER = nh3.Cleaner(tags=set())
_BLOCK_END = re.compile(r"</(?:p|div|li|h[1-6]|blockquote|pre|tr|td|th|dd|dt|figcaption|section|article)\s*>|<br\s*/?>", re.I)


# -- fetching ---------------------------------------------------------------------------------------------


class FetchError(Exception):
    def __init__(self, url: str, reason: str) -> None:
        self.url = url
        self.reason = reason
        super().__init__(f"{url}: {reason}")


@dataclass
class Response:
    url: str  # the URL asked for
    final_url: str  # after redirects
    status: int
    headers: Mapping[str, str]
    body: bytes = b""
    moved_to: str | None = None  # every hop was a permanent redirect: the configured URL should change

    @property
    def not_modified(self) -> bool:
        return self.status == 304

    @property
    def content_type(self) -> str:
        return self.headers.get("Content-Type", "").split(";", 1)[0].strip().lower()

    @property
    def charset(self) -> str | None:
        m = re.search(r"charset\s*=\s*[\"']?([\w.:-]+)", self.headers.get("Content-Type", ""), re.I)
        return m.group(1) if m else None


class _GuardedAdapter(HTTPAdapter):
    """requests' adapter with urllib3 pools whose connections check and pin the address (see ssrf.py)."""

    def __init__(self, allow_private: bool) -> None:
        self.allow_private = allow_private  # before super().__init__, which builds the pool manager
        super().__init__(max_retries=0)

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = guarded_pool_classes(self.allow_private)


class Fetcher:
    """GET with limits; one per process, shared by every remote source."""

    def __init__(
        self,
        base_url: str,
        *,
        timeout: float | tuple[float, float] = DEFAULT_TIMEOUT,
        total_timeout: float = DEFAULT_TOTAL_TIMEOUT,
        max_bytes: int = DEFAULT_MAX_BYTES,
        max_redirects: int = DEFAULT_MAX_REDIRECTS,
        allow_private: bool = False,
    ) -> None:
        self.timeout = timeout if isinstance(timeout, tuple) else (timeout, timeout)
        self.total_timeout = total_timeout
        self.max_bytes = max_bytes
        self.max_redirects = max_redirects
        self.allow_private = allow_private
        self.user_agent = f"publisher/{__version__} (+{base_url})"
        self.session = requests.Session()
        self.session.trust_env = False  # no proxy or .netrc from the environment: the guard must see the real peer
        self.session.headers["User-Agent"] = self.user_agent
        adapter = _GuardedAdapter(allow_private)
        self.session.mount("http://", adapter)
        self.session.mount("https://", adapter)

    def __repr__(self) -> str:
        return f"Fetcher(max_bytes={self.max_bytes}, max_redirects={self.max_redirects}, allow_private={self.allow_private})"

    def close(self) -> None:
        self.session.close()

    def __enter__(self) -> Fetcher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def get(self, url: str, *, state: Mapping[str, Any] | None = None, accept: str = "*/*") -> Response:
        """The body of ``url`` (status 200), or a 304 Response when ``state``'s validators still hold.

        Raises :class:`FetchError` with a reason fit for an operator; never anything else.
        """
        headers = {"Accept": accept}
        if state and state.get("url") == url:
            if state.get("etag"):
                headers["If-None-Match"] = str(state["etag"])
            if state.get("last_modified"):
                headers["If-Modified-Since"] = str(state["last_modified"])
        deadline = time.monotonic() + self.total_timeout
        current, permanent = url, True
        for _hop in range(self.max_redirects + 1):
            if time.monotonic() > deadline:
                raise FetchError(url, _after(f"no answer within {self.total_timeout:g} s", url, current))
            try:
                check_url(current, self.allow_private)
            except UnsafeURLError as exc:
                raise FetchError(url, _after(str(exc), url, current)) from None
            resp = self._request(url, current, headers)
            try:
                if resp.status_code in _REDIRECTS:
                    location = resp.headers.get("Location", "").strip()
                    if not location:
                        raise FetchError(url, _after(f"HTTP {resp.status_code} redirect without a Location header", url, current))
                    permanent = permanent and resp.status_code in (301, 308)
                    try:
                        current = urljoin(current, location)
                    except ValueError:
                        raise FetchError(url, _after(f"redirect to an invalid URL {location!r}", url, current)) from None
                    continue
                moved = current if permanent and current != url else None
                if resp.status_code == 304:
                    return Response(url, current, 304, resp.headers, moved_to=moved)
                if resp.status_code != 200:
                    raise FetchError(url, _after(_status_reason(resp), url, current))
                body = self._read(resp, url, current, deadline)
                return Response(url, current, 200, resp.headers, body, moved_to=moved)
            finally:
                resp.close()
        raise FetchError(url, f"more than {self.max_redirects} redirects (the last one to {current})")

    def _request(self, url: str, current: str, headers: dict[str, str]) -> requests.Response:
        try:
            return self.session.get(current, headers=headers, timeout=self.timeout, stream=True, allow_redirects=False)
        except UnsafeURLError as exc:  # the connection-level check (a DNS answer that changed since check_url)
            raise FetchError(url, _after(str(exc), url, current)) from None
        except requests.RequestException as exc:
            raise FetchError(url, _after(self._describe(exc), url, current)) from None

    def _read(self, resp: requests.Response, url: str, current: str, deadline: float) -> bytes:
        declared = resp.headers.get("Content-Length", "").strip()
        if declared.isdigit() and int(declared) > self.max_bytes:
            raise FetchError(url, _after(f"response larger than {self.max_bytes} bytes (Content-Length: {declared}); not read", url, current))
        chunks, size = [], 0
        try:
            while True:
                # read1: whatever one socket read brings (gzip decoded), so the deadline is checked between reads
                chunk = resp.raw.read1(64 * 1024, decode_content=True)
                if not chunk:
                    break
                size += len(chunk)
                if size > self.max_bytes:
                    raise FetchError(url, _after(f"response larger than {self.max_bytes} bytes; stopped reading", url, current))
                if time.monotonic() > deadline:
                    raise FetchError(url, _after(f"download took longer than {self.total_timeout:g} s; stopped reading", url, current))
                chunks.append(chunk)
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise FetchError(url, _after(self._describe(exc), url, current)) from None
        return b"".join(chunks)

    def _describe(self, exc: BaseException) -> str:
        connect, read = self.timeout
        chain = list(_causes(exc))
        if any(isinstance(e, (requests.exceptions.ConnectTimeout, urllib3.exceptions.ConnectTimeoutError))
               and not isinstance(e, urllib3.exceptions.NewConnectionError) for e in chain):  # urllib3: NewConnectionError is one
            return f"no connection within {connect:g} s (connect timeout)"
        if any(isinstance(e, (requests.exceptions.ReadTimeout, urllib3.exceptions.ReadTimeoutError, TimeoutError)) for e in chain):
            return f"no answer within {read:g} s (read timeout)"
        if any(isinstance(e, urllib3.exceptions.NameResolutionError) for e in chain):
            return f"cannot resolve the host name ({_root_message(chain)})"
        if any(isinstance(e, (requests.exceptions.SSLError, urllib3.exceptions.SSLError)) for e in chain):
            return f"TLS error: {_root_message(chain)}"
        if any(isinstance(e, (urllib3.exceptions.ProtocolError, urllib3.exceptions.DecodeError)) for e in chain):
            return f"broken response: {_root_message(chain)}"
        if isinstance(exc, (requests.exceptions.InvalidURL, requests.exceptions.MissingSchema, requests.exceptions.InvalidSchema)):
            return f"invalid URL: {exc}"
        return f"cannot connect: {_root_message(chain)}"


def _after(reason: str, url: str, current: str) -> str:
    return reason if current == url else f"{reason} (after a redirect to {current})"


def _status_reason(resp: requests.Response) -> str:
    reason = f"HTTP {resp.status_code} {resp.reason or ''}".strip()
    retry = resp.headers.get("Retry-After")
    return f"{reason}; retry after {retry}" if retry else reason


def _causes(exc: BaseException) -> Iterable[BaseException]:
    seen: set[int] = set()
    stack: list[BaseException] = [exc]
    while stack:
        e = stack.pop(0)
        if id(e) in seen:
            continue
        seen.add(id(e))
        yield e
        for nxt in (getattr(e, "reason", None), e.__cause__, e.__context__, *(a for a in e.args if isinstance(a, BaseException))):
            if isinstance(nxt, BaseException):
                stack.append(nxt)


def _root_message(chain: list[BaseException]) -> str:
    for e in reversed(chain):
        if isinstance(e, OSError) and e.strerror:
            return e.strerror
    text = str(chain[-1]) if chain else ""
    return re.sub(r"<[\w.]+ object at 0x[0-9a-f]+>:?\s*", "", text).strip() or type(chain[-1]).__name__


def remember(state: dict[str, Any], response: Response) -> None:
    """Keep the validators of a good 200 for the next conditional GET."""
    state["url"] = response.url
    for key, header in (("etag", "ETag"), ("last_modified", "Last-Modified")):
        value = response.headers.get(header)
        if value:
            state[key] = value
        else:
            state.pop(key, None)


# -- shared by both kinds -----------------------------------------------------------------------------------


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


# -- feeds --------------------------------------------------------------------------------------------------


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


# -- HTML listing pages ---------------------------------------------------------------------------------------

SELECTOR_KEYS = ("item", "title", "link", "summary", "date", "content_type", "image", "caption")
REQUIRED_SELECTORS = ("item", "title", "link")
_CREDIT = re.compile(r"[\s,;.]*\b(?:photos?|images?|photograph)\s+(?:by|courtesy\s+of|credit:?)\s+(?P<credit>.+)$", re.I | re.S)


def selector_problems(selectors: Mapping[str, Any]) -> list[str]:
    """What is wrong with a page source's selectors (empty when nothing is): for config validation."""
    problems = [f"unknown selector {k!r}; known: {', '.join(SELECTOR_KEYS)}" for k in selectors if k not in SELECTOR_KEYS]
    problems += [f"selector {k!r} is required" for k in REQUIRED_SELECTORS if not selectors.get(k)]
    for key, sel in selectors.items():
        if key not in SELECTOR_KEYS or not sel:
            continue
        if not isinstance(sel, str):
            problems.append(f"selector {key!r} must be a string, got {sel!r}")
            continue
        try:
            CSSSelector(sel)
        except Exception as exc:  # cssselect.SelectorError, lxml.etree.XPathError
            problems.append(f"selector {key} = {sel!r} is not a valid CSS selector: {exc}")
    return problems


class PageSource(_RemoteSource):
    """An HTML listing page (a think tank's topic page): items found by CSS selectors."""

    kind = "page"
    accept = PAGE_ACCEPT

    def __init__(self, name: str, url: str, *, selectors: Mapping[str, str], **kwargs: Any) -> None:
        problems = selector_problems(selectors)
        if problems:
            raise ValueError(f"source {name!r}: " + "; ".join(problems))
        super().__init__(name, url, **kwargs)
        self.selectors = dict(selectors)
        self._compiled = {k: CSSSelector(v) for k, v in selectors.items() if v}

    def _parse(self, response: Response, result: RemoteResult) -> bool:
        if not response.body.strip():
            result.errors.append(SourceError(self.name, self.url, "the page is empty"))
            return False
        parser = lxml.html.HTMLParser(encoding=response.charset) if response.charset else None
        try:
            root = lxml.html.document_fromstring(response.body, parser=parser)
        except (lxml.etree.ParserError, LookupError, ValueError) as exc:
            result.errors.append(SourceError(self.name, self.url, f"cannot parse the page as HTML: {exc}"))
            return False
        root.make_links_absolute(response.final_url, resolve_base_href=True, handle_failures="discard")
        items = self._compiled["item"](root)
        if not items:
            result.errors.append(SourceError(self.name, self.url, f"selector item = {self.selectors['item']!r} matched nothing; "
                                             "has the page layout changed?"))
            return False
        seen: set[str] = set()
        for n, item in enumerate(items, start=1):
            try:
                pub, warnings = self._item(item, n)
            except _ItemError as exc:
                result.errors.append(SourceError(self.name, self._item_location(n, ""), str(exc)))
                continue
            if pub.url in seen:
                continue  # listed twice (a featured block repeats items): the first stands
            seen.add(pub.url)
            result.publications.append(pub)
            result.warnings.extend(warnings)
        return True

    def _first(self, key: str, item: Any) -> Any:
        sel = self._compiled.get(key)
        if sel is None:
            return None
        found = sel(item)
        return found[0] if found else None

    def _text_of(self, key: str, item: Any) -> str:
        el = self._first(key, item)
        return _SPACES.sub(" ", clean_text(el.text_content())).strip() if el is not None else ""

    def _item(self, item: Any, n: int) -> tuple[Publication, list[str]]:
        title = self._text_of("title", item)
        if not title:
            raise _ItemError(f"selector title = {self.selectors['title']!r} found no text; skipped")
        link_el = self._first("link", item)
        href = None
        if link_el is not None:
            href = link_el.get("href")
            if not href:
                inner = link_el.cssselect("a[href]")
                href = inner[0].get("href") if inner else None
        link = _absolute_http(href or "", self.url)
        where = self._item_location(n, link or title)
        if not link:
            raise _ItemError(f"no http(s) link for {title!r} (selector link = {self.selectors['link']!r}); skipped")
        warnings: list[str] = []
        published = None
        date_el = self._first("date", item)
        if date_el is not None:
            stamped = date_el if date_el.get("datetime") or date_el.get("content") else next(iter(date_el.xpath(".//*[@datetime]")), None)
            raw = (stamped.get("datetime") or stamped.get("content")) if stamped is not None else date_el.text_content()
            raw = (raw or "").strip()
            published = parse_date(raw, self.tz)
            if published is None:
                warnings.append(f"source {self.name!r}: {where}: date {raw!r} not understood; the time it was first seen stands in")
        else:
            warnings.append(f"source {self.name!r}: {where}: no date; the time it was first seen stands in")
        image = self._image(item, link)
        pub = self._publication(
            f"{self.name}:{link}", link, title, _shorten(self._text_of("summary", item)), "",
            self._type_named(self._text_of("content_type", item)), published, published, (), image,
        )
        return pub, warnings

    def _image(self, item: Any, link: str) -> Image | None:
        el = self._first("image", item)
        if el is None:
            return None
        img = el if el.tag == "img" else next(iter(el.iter("img")), None)
        if img is None:
            return None
        src = img.get("src") or img.get("data-src") or (img.get("srcset") or "").split(",")[0].strip().split(" ")[0]
        url = _absolute_http(src, self.url)
        if not url:
            return None
        caption, credit = split_credit(self._text_of("caption", item))
        return Image(url=url, alt=_SPACES.sub(" ", img.get("alt") or "").strip(), caption=caption, credit=credit)


def split_credit(caption: str) -> tuple[str, str]:
    """"Boats on patrol, May 1, 2018, photo by Jane Roe/U.S. Navy" → ("Boats on patrol, May 1, 2018", "Jane Roe/U.S. Navy")."""
    m = _CREDIT.search(caption)
    if not m:
        return caption.strip(), ""
    return caption[: m.start()].strip(" ,;.").strip(), m.group("credit").strip(" .")


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
