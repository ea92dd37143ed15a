"""What the HTTP adapters share: the session and the key, error text, Retry-After, the providers' size limits,
and isolating refused addresses.

Private to :mod:`publisher.delivery.api`: each provider's module (``postmark``, ``resend``, ``sendgrid``,
``mailgun``) keeps its wire format, its documented limits and its reading of the provider's answers; the
machinery around them lives here once.

Size limits (:func:`fit`, :func:`in_requests`, and ``Answer("too_large")`` in :func:`isolate`): a request is
built, its body encoded exactly as it goes on the wire and measured; one over the provider's limit is never
sent but split in halves, each built and measured again. A recipient whose message alone is over the limit
is not sent at all: deferred with kind ``"sender"`` (our issue is too large, not their address) and an error
that names the limit, the size and the fix (:func:`too_large`); nobody else waits for them.

Reconciliation (:func:`reconcile_each`) is the one place an adapter waits and asks again: after a crash,
the recovery asks the provider, recipient by recipient, whether it accepted a batch whose answer was
lost. It is bounded in time (:class:`Lookups`): what is not confirmed by then is sent again.
"""

from __future__ import annotations

import base64
import logging
import re
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from math import ceil, log2
from typing import Any, Literal, TypeVar

import requests

from ... import __version__
from . import Kind, Prepared, Recipient, Result, Status

MAX_ERROR = 500  # characters of an error kept in a Result

# The providers' "MB", as bytes. Their documents do not say whether they mean 10^6 or 2^20 bytes: 10^6 is the
# smaller reading (2^20 would allow 4.9% more), so every limit here is counted in 10^6 bytes.
MB = 1_000_000

# The headers that differ per recipient (Prepared.headers); any other header whose value differs within
# a batch is also sent per recipient (see split_headers).
PER_RECIPIENT_HEADERS = ("List-Unsubscribe", "Message-ID")

_SPECIALS = re.compile(r'[][\\()<>@,:;".]')

T = TypeVar("T")
B = TypeVar("B", bound=Sequence[Recipient])

log = logging.getLogger("publisher.delivery.api")


# -- the adapter: key, base URL, timeout, session --------------------------------------------------------


class HttpAdapter:
    """The state every adapter keeps: the API key (never shown), the base URL, the timeout and one session.

    ``provider`` names the service in error messages ("Postmark", "SendGrid"...).
    """

    provider = ""

    def __init__(self, api_key: str, *, base_url: str, timeout: float, headers: dict[str, str] | None = None) -> None:
        self._api_key = api_key
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self._session = session(headers)

    def close(self) -> None:
        self._session.close()

    def _scrub(self, text: str) -> str:
        """The text with the API key replaced by ``[redacted]``, as it is and as HTTP Basic carries it (Mailgun's
        ``api:<key>`` in base64), in case a server or a proxy echoes our request back."""
        if not self._api_key:
            return text
        for secret in (self._api_key, base64.b64encode(f"api:{self._api_key}".encode()).decode("ascii")):
            text = text.replace(secret, "[redacted]")
        return text

    def _post(self, url: str, *, read: Callable[[requests.Response], T], unanswered: Callable[[str], T], **kwargs: Any) -> T:
        """POST with the adapter's timeout and ``read`` the answer (then release the connection).

        No answer (a timeout, a refused or dropped connection) is ``unanswered(error)``, the error saying
        which, without the key: the adapter reports it deferred.
        """
        try:
            resp = self._session.post(url, timeout=self.timeout, **kwargs)
        except requests.Timeout:
            return unanswered(f"{self.provider} did not answer within {self.timeout:g} s")
        except requests.RequestException as exc:
            return unanswered(self._scrub(f"cannot reach {self.provider} at {self.base_url}: {type(exc).__name__}: {exc}"))
        try:
            return read(resp)
        finally:
            resp.close()

    def _get_json(self, url: str, *, params: Sequence[tuple[str, str]] | None, timeout: float) -> Any:
        """GET with ``timeout`` (connect, and between bytes): the decoded JSON of a 200 answer.

        Anything else (no answer, another status, a body that is not JSON) raises :class:`LookupFailed`
        with a message that says which, without the key. Redirects are not followed: the key goes to
        ``base_url`` only.
        """
        try:
            resp = self._session.get(url, params=params, timeout=timeout, allow_redirects=False)
        except requests.Timeout:
            raise LookupFailed(f"{self.provider} did not answer within {timeout:.3g} s") from None
        except requests.RequestException as exc:
            raise LookupFailed(self._scrub(f"cannot reach {self.provider} at {self.base_url}: {type(exc).__name__}: {exc}")) from None
        try:
            if resp.status_code != 200:
                raise LookupFailed(self._scrub(f"{self.provider} answered {resp.status_code}{as_detail(excerpt(resp))}")[:MAX_ERROR])
            data = json_body(resp)
            if data is None:
                raise LookupFailed(f"{self.provider} answered 200 with a body that is not JSON")
            return data
        finally:
            resp.close()

    def _post_batch(self, url: str, batch: B, read: Callable[[requests.Response, B], list[Result]], **kwargs: Any) -> list[Result]:
        """:meth:`_post` for a request that carries all of ``batch``: ``read(resp, batch)``, or everybody deferred."""
        return self._post(
            url, read=lambda resp: read(resp, batch), unanswered=lambda error: all_results(batch, "deferred", error), **kwargs
        )


def session(headers: dict[str, str] | None = None) -> requests.Session:
    """A session (one connection pool per host) sending our User-Agent, asking for JSON, plus ``headers``."""
    s = requests.Session()
    s.headers.update({"User-Agent": f"publisher/{__version__}", "Accept": "application/json", **(headers or {})})
    return s


def check_key(api_key: str, provider: str) -> None:
    """Refuse a key that is empty or would break the request's headers, without echoing it."""
    if not api_key or any(c.isspace() or ord(c) < 32 for c in api_key):
        raise ValueError(f"the {provider} API key is empty or contains whitespace or control characters (check PUBLISHER_API_KEY)")


# -- the answer ------------------------------------------------------------------------------------------


def json_body(resp: requests.Response) -> Any:
    """The decoded JSON body, or None when it is not JSON."""
    try:
        return resp.json()
    except ValueError:
        return None


def excerpt(resp: requests.Response) -> str:
    """A short excerpt of whatever came back, for a body that is not the provider's error format."""
    return resp.text.strip()[:200]


def as_detail(text: str) -> str:
    """``: text``, cut to :data:`MAX_ERROR`, to follow an error message; nothing for no text."""
    return f": {text}"[:MAX_ERROR] if text else ""


def retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header: delta-seconds or an HTTP date (RFC 9110 §10.2.3)."""
    if not value:
        return None
    value = value.strip()
    if re.fullmatch(r"\d+(\.\d+)?", value):
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


def all_results(
    recipients: Sequence[Recipient], status: Status, error: str = "", retry: float | None = None, kind: Kind = ""
) -> list[Result]:
    """The same result for everybody in ``recipients``."""
    return [Result(r.subscriber_id, status, error, retry, kind) for r in recipients]


# -- the request -----------------------------------------------------------------------------------------


def mailbox(name: str, address: str) -> str:
    """``Name <addr>``, the name quoted when it holds RFC 5322 specials (Postmark refuses ``Joe, Jr <a@b>``)."""
    if not name:
        return address
    if _SPECIALS.search(name):
        name = '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return f"{name} <{address}>"


def split_headers(prepared: Prepared, recipients: Sequence[Recipient]) -> tuple[dict[str, str], list[str]]:
    """The headers common to the whole batch (name -> value), and the names that must be set per recipient."""
    if not recipients:
        return {}, []
    first, *rest = [prepared.headers(r) for r in recipients]
    varying = [n for n in first if n in PER_RECIPIENT_HEADERS or any(h.get(n) != first[n] for h in rest)]
    return {n: v for n, v in first.items() if n not in varying}, varying


# -- the providers' size limits ------------------------------------------------------------------------


def megabytes(n: int) -> str:
    """``52.3 MB``: a measured size, in the providers' MB (10^6 bytes)."""
    return f"{n / MB:.1f} MB"


def limit_text(limit: int) -> str:
    """``50 MB``: a limit as the provider states it (``30 MB`` for "less than 30MB", i.e. 29,999,999 bytes)."""
    return f"{limit / MB:.4g} MB"


def too_large(provider: str, what: str, size: int, limit: int, which: str = "request size limit") -> str:
    """The error of a recipient whose message alone is over one of ``provider``'s size limits: it says which limit,
    how large it came to, and what to change. Never the key (nothing here comes from the request's headers)."""
    return (f"too large to send: {what} comes to {megabytes(size)} ({size:,} bytes) for this recipient alone, over {provider}'s "
            f"{limit_text(limit)} {which}; nothing was sent to them. Lower [digest].max_items in config.toml (fewer items make a "
            "shorter issue), then send again")[:MAX_ERROR]


@dataclass(frozen=True)
class Fitted:
    """One request's worth of recipients and its encoded body (at most the limit), or ``body=None``: ``part`` is one
    recipient whose body alone is ``size`` bytes, over the limit, and must not be sent."""

    part: Sequence[Recipient]
    body: bytes | None
    size: int


def fit(recipients: Sequence[Recipient], encode: Callable[[Sequence[Recipient]], bytes], limit: int) -> Iterator[Fitted]:
    """``recipients`` (in order) in requests whose body, ``encode(part)``, is at most ``limit`` bytes.

    The whole is encoded and measured first (most batches fit); a body over the limit is split in halves, each
    encoded and measured again, depth first, until every part fits or is one recipient alone over the limit
    (yielded with ``body=None``, never sent). Lazy: one body at a time is held, the one about to be sent.
    """
    stack = [recipients] if recipients else []
    while stack:
        part = stack.pop()
        body = encode(part)
        if len(body) <= limit:
            yield Fitted(part, body, len(body))
        elif len(part) == 1:
            yield Fitted(part, None, len(body))
        else:
            mid = len(part) // 2
            stack += [part[mid:], part[:mid]]  # the first half first


def in_requests(recipients: Sequence[Recipient], *, max_batch: int, limit: int, encode: Callable[[Sequence[Recipient]], bytes],
                post: Callable[[Sequence[Recipient], bytes], list[Result]], oversize: Callable[[int], str]) -> list[Result]:
    """Send ``recipients`` in requests of at most ``max_batch`` of them and ``limit`` bytes of body (see :func:`fit`).

    For the providers that answer per message (Postmark, Resend): ``post(part, body)`` sends one request and reads
    its answer. A recipient alone over the limit is deferred, kind ``"sender"``, with ``oversize(size)`` as the
    error, and no request is made for them. A request that came to nothing (everybody in it deferred: a 429, a
    5xx, a timeout, the key...) stops the call: the requests not made yet are deferred with its error, as
    :func:`isolate` does, so a provider that is down or refusing us is not sent the same thing again at once.
    """
    results: list[Result] = []
    stop: Result | None = None
    for start in range(0, len(recipients), max_batch):
        for f in fit(recipients[start : start + max_batch], encode, limit):
            if f.body is None:
                results += all_results(f.part, "deferred", oversize(f.size), kind="sender")
            elif stop is not None:
                results += all_results(f.part, "deferred", f"not attempted: {stop.error}"[:MAX_ERROR], stop.retry_after, stop.kind)
            else:
                got = post(f.part, f.body)
                results += got
                if got and all(r.status == "deferred" for r in got):
                    stop = got[0]
    return results


# -- isolating refused addresses (SendGrid, Mailgun) -----------------------------------------------------


@dataclass
class Answer:
    """What one request came to.

    ``refused`` (a 400): ``bad`` maps positions in the request to the provider's message for them (their
    addresses are invalid: a hard bounce); ``whole`` says the request itself was refused (nothing to
    isolate, nobody's address at fault); ``recipient`` says the refusal is about an address without naming
    it (a lone recipient so refused is a hard bounce). None of them: split it in halves.

    ``fault`` is the kind of a ``deferred`` answer: ``"sender"`` for the key, the domain or the sender
    identity, ``""`` for a transient fault (429, 5xx, no answer).

    ``too_large``: the request was built but not sent, its body being over the provider's size limit; ``error``
    is what a lone recipient so refused is told (see :func:`too_large`).
    """

    kind: Literal["sent", "deferred", "refused", "too_large"]
    error: str = ""
    retry_after: float | None = None
    bad: dict[int, str] = field(default_factory=dict)
    whole: bool = False
    recipient: bool = False
    fault: Kind = ""


def split_budget(n: int, max_batch: int) -> int:
    """Requests one ``send_batch`` may make: one per chunk, plus enough to isolate two bad addresses by bisection."""
    chunks = ceil(n / max_batch)
    return chunks + 4 * max(1, ceil(log2(max(2, min(n, max_batch)))))


def isolate(recipients: Sequence[Recipient], max_batch: int, send: Callable[[Sequence[Recipient]], Answer]) -> list[Result]:
    """Send ``recipients`` in requests of at most ``max_batch``, isolating addresses a 400 refuses.

    A provider that takes a batch as a whole refuses it as a whole: one invalid address and the request is
    a ``400``, nobody sent. Reporting everybody failed would punish the valid ones; reporting them deferred
    would not help either, since the engine would retry the same batch and get the same ``400`` until its
    attempts ran out. So a refused request is narrowed down here, without ever sending anything twice (a
    recipient is only in a new request after a ``400``, i.e. after the provider took nothing):

    - the provider named the culprits (SendGrid's ``personalizations.N.to``): they fail (hard), the rest
      goes again;
    - the request itself is broken (a bad ``from``, an unverified sender...): nobody's address is at fault,
      so nobody fails: everybody is deferred with the provider's message and kind ``"sender"``, and the
      rest of the call stops there, as for any deferral (the same request would be refused the same way);
    - otherwise (Mailgun: "'to' parameter is not a valid address", without saying which): split in halves,
      depth first, so the first bad address is isolated within 1 + 2·log2(n) requests; a lone recipient
      refused fails (hard) when the refusal was about an address, and is deferred (``"sender"``) when the
      provider's message says nothing we recognise: an unknown refusal never suppresses anyone.

    A part whose body is over the provider's size limit (``send`` answers ``too_large`` without sending it) is
    split in halves the same way; a lone recipient over the limit is deferred with kind ``"sender"`` and
    ``send``'s error. Such a split costs no request and adds one part, so it adds to the budget below.

    The number of requests is bounded (:func:`split_budget`): what is left when it runs out is reported
    deferred, untried, and the engine's next attempt goes on with it (without the ones already failed).
    A deferral (429, 5xx, timeout...) stops the whole call: the rest is deferred without hammering the API.
    Duplicate addresses (case-insensitive) in one batch are deferred, to go in another request: providers
    refuse (SendGrid) or merge (Mailgun) them.
    """
    results: list[Result] = []
    seen: set[str] = set()
    todo: list[Recipient] = []
    for r in recipients:
        if r.email.casefold() in seen:
            results.append(Result(r.subscriber_id, "deferred", "the same address is earlier in this batch: it must go in another request"))
        else:
            seen.add(r.email.casefold())
            todo.append(r)
    stack = [todo[i : i + max_batch] for i in range(0, len(todo), max_batch)][::-1]
    budget = split_budget(len(todo), max_batch)
    while stack:
        part = stack.pop()
        if budget == 0:
            results += all_results(part, "deferred", "not attempted: the requests allowed for isolating refused addresses ran out; retry")
            continue
        budget -= 1
        answer = send(part)
        if answer.kind == "too_large":
            budget += 1  # nothing was sent
            if len(part) == 1:
                results += all_results(part, "deferred", answer.error, kind="sender")
            else:
                budget += 1  # one more part to send
                mid = len(part) // 2
                stack += [part[mid:], part[:mid]]
        elif answer.kind == "sent":
            results += all_results(part, "sent")
        elif answer.kind == "deferred" or answer.whole:
            fault: Kind = "sender" if answer.whole else answer.fault
            results += all_results(part, "deferred", answer.error, answer.retry_after, fault)
            for rest in stack:
                results += all_results(rest, "deferred", f"not attempted: {answer.error}"[:MAX_ERROR], answer.retry_after, fault)
            stack.clear()
        elif answer.bad:
            results += [Result(r.subscriber_id, "failed", answer.bad[i], kind="hard") for i, r in enumerate(part) if i in answer.bad]
            if others := [r for i, r in enumerate(part) if i not in answer.bad]:
                stack.append(others)
        elif len(part) == 1:
            results += all_results(part, "failed", answer.error, kind="hard") if answer.recipient else \
                all_results(part, "deferred", answer.error, kind="sender")
        else:
            mid = len(part) // 2
            stack += [part[mid:], part[:mid]]  # the first half is tried first
    return results


# -- reconciliation after a crash (Postmark, Mailgun) ---------------------------------------------------


class LookupFailed(Exception):
    """The provider could not be asked (no answer, an error status, an unreadable body); the text has no key."""


@dataclass(frozen=True)
class Lookups:
    """How hard :func:`reconcile_each` tries before the rest is sent again.

    ``budget``: seconds for the whole reconciliation; ``timeout``: seconds per request (capped by what is
    left of the budget); ``lag_waits``: the providers' search lags a little behind sending, so recipients
    not found are asked again after each of these waits (while the budget lasts); ``workers``: requests
    at once (the session's pool holds 10 connections); ``max_errors``: failed requests after which the
    provider is not asked any more (it is down, or the key cannot search).
    """

    budget: float = 30.0
    timeout: float = 10.0
    lag_waits: tuple[float, ...] = (1.0, 2.0)
    workers: int = 8
    max_errors: int = 3


def reconcile_each(recipients: Sequence[Recipient], accepted: Callable[[Recipient, float], bool], *, provider: str,
                   lookups: Lookups) -> list[Result]:
    """``Result(sent)`` for each recipient ``accepted(recipient, timeout)`` confirms; nothing for the others.

    A recipient is confirmed only by a positive answer: not found, an error, or the budget running out all
    leave them unconfirmed, and the engine sends them again (a duplicate at worst, never a loss). Never
    raises for the provider's errors: they are logged (without the key) and count as not found.
    """
    deadline = time.monotonic() + lookups.budget
    todo = list({r.subscriber_id: r for r in recipients}.values())
    confirmed: list[Recipient] = []
    errors: list[str] = []
    lock = threading.Lock()
    gave_up = threading.Event()

    def ask(r: Recipient) -> bool | None:
        left = deadline - time.monotonic()
        if gave_up.is_set() or left < 0.05:
            return None
        try:
            return accepted(r, min(lookups.timeout, left))
        except LookupFailed as exc:
            with lock:
                errors.append(str(exc))
                if len(errors) >= lookups.max_errors:
                    gave_up.set()
            return None

    for wait in (0.0, *lookups.lag_waits):
        if not todo or gave_up.is_set():
            break
        if wait:
            if deadline - time.monotonic() <= wait:
                break
            time.sleep(wait)
        with ThreadPoolExecutor(max_workers=max(1, min(lookups.workers, len(todo))), thread_name_prefix="reconcile") as pool:
            answers = list(pool.map(ask, todo))
        confirmed += [r for r, yes in zip(todo, answers) if yes]
        todo = [r for r, yes in zip(todo, answers) if not yes]
    if errors:
        log.warning("%s could not be asked about %d message(s) in flight when a run died (%d failed request(s), e.g. %s); "
                    "those not confirmed are sent again", provider, len(todo), len(errors), errors[0])
    elif todo and deadline - time.monotonic() < 0.05:
        log.warning("%s: %d message(s) in flight when a run died were not confirmed within %g s; they are sent again",
                    provider, len(todo), lookups.budget)
    return [Result(r.subscriber_id, "sent") for r in confirmed]
