"""HTML listing page sources: :class:`PageSource`, :func:`selector_problems` and :func:`split_credit`."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import lxml.etree
import lxml.html
from lxml.cssselect import CSSSelector

from ..errors import SourceError
from ..feeds.content import clean_text
from ..models import Image, Publication
from ._remote_base import _SPACES, RemoteResult, _absolute_http, _ItemError, _RemoteSource, _shorten, parse_date
from .fetch import Response

PAGE_ACCEPT = "text/html, application/xhtml+xml;q=0.9, */*;q=0.5"
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
