"""Fetching for remote sources: :class:`Fetcher`, :class:`FetchError`, :class:`Response`.

One ``requests.Session`` with our User-Agent, connect and read timeouts plus a deadline for the whole download,
a size limit enforced while streaming, redirects followed by hand so that every hop passes the SSRF guard
(:mod:`publisher.sources.ssrf`), and conditional GET from the source's ``state`` (see :mod:`publisher.sources.remote`).
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urljoin

import requests
import urllib3.exceptions
from requests.adapters import HTTPAdapter

from .. import __version__
from .ssrf import UnsafeURLError, check_url, guarded_pool_classes

DEFAULT_MAX_BYTES = 10 * 1024 * 1024
DEFAULT_TIMEOUT = 10.0  # seconds, for the connection and for each read
DEFAULT_TOTAL_TIMEOUT = 60.0  # seconds, for the whole download (a server dripping bytes cannot hold a poll)
DEFAULT_MAX_REDIRECTS = 5
_REDIRECTS = {301, 302, 303, 307, 308}


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
