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

from ._remote_base import ID_MAX, SUMMARY_MAX, TYPE_MAX, RemoteResult, parse_date
from .feed import FEED_ACCEPT, IDS_REMEMBERED, FeedSource
from .fetch import DEFAULT_MAX_BYTES, DEFAULT_MAX_REDIRECTS, DEFAULT_TIMEOUT, DEFAULT_TOTAL_TIMEOUT, Fetcher, FetchError, Response, remember
from .page import PAGE_ACCEPT, REQUIRED_SELECTORS, SELECTOR_KEYS, PageSource, selector_problems, split_credit

__all__ = [
    "DEFAULT_MAX_BYTES", "DEFAULT_MAX_REDIRECTS", "DEFAULT_TIMEOUT", "DEFAULT_TOTAL_TIMEOUT", "FEED_ACCEPT", "ID_MAX",
    "IDS_REMEMBERED", "PAGE_ACCEPT", "REQUIRED_SELECTORS", "SELECTOR_KEYS", "SUMMARY_MAX", "TYPE_MAX",
    "FeedSource", "FetchError", "Fetcher", "PageSource", "RemoteResult", "Response",
    "parse_date", "remember", "selector_problems", "split_credit",
]
