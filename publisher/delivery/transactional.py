"""One-off messages to one person, the double opt-in confirmation, sent off the web request's path.

POST /subscribe only writes a row to the sign-up queue (the store's ``signup_requests``) and answers at once, the
same for every address. A sender takes the queued requests one at a time: it applies the sign-up
(``subscribers.subscribe``: new, known, suppressed), the per-address cap ([subscribers].confirmations_per_day,
counted in the store across processes and restarts), renders the confirmation, sends it through the configured
transport, and retries a failed send with a doubling wait ([subscribers].confirmation_attempts and
confirmation_retry). A slow or dead relay only delays the queue: no page waits for it.

Two kinds of sender share the queue through the store (a request is claimed by one of them, for CLAIM_LEASE): the
web app's thread (:class:`SignupSender`), woken by each sign-up, and `publisher run` (:func:`drain_signups`, from
the scheduler and from ``--once``), so nothing waits forever when the web app is not running.
"""

from __future__ import annotations

import logging
import os
import random
import re
import socket
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from email.message import EmailMessage
from email.utils import format_datetime, formataddr, make_msgid
from functools import lru_cache

import jinja2

from subscribers import InvalidAddress, email_hash, mailbox_of, subscribe
from subscribers.tokens import make_confirm_token, new_nonce

from ..config import Config, parse_duration
from ..errors import PublisherError, TemplateError
from ..models import Subscriber, SubscriberStatus
from ..store import Store
from ..store.signups import SignupRequest
from .api import Prepared, Recipient, Result
from .backends import Variant, transport_factory
from .message import POLICY, CompiledMessage, list_id

log = logging.getLogger(__name__)
CLAIM_LEASE = timedelta(minutes=10)  # longer than one send can take (an SMTP timeout per command, a few commands)
CAP_WINDOW = timedelta(hours=24)
POLL_SECONDS = 2.0  # how often the web app's sender looks for requests other processes queued
# After a wake-up the sender waits a random moment up to this: the work a sign-up causes (a send for a new address,
# next to nothing for a known one) then does not land right after its answer, where a prober's next request would feel it.
WAKE_JITTER = 1.0
PRUNE_SECONDS = 600.0
STOP_WAIT = 10.0  # how long closing the store waits for a send in flight


def send_confirmation(cfg: Config, sub: Subscriber, confirm_url: str, links: dict[str, str], now: datetime, *,
                      idempotency_key: str = "") -> Result:
    variant, recipient = build_confirmation(cfg, sub, confirm_url, links, now, idempotency_key=idempotency_key)
    transport = transport_factory(cfg)[0]()
    try:
        [result] = transport.send(variant, [recipient])
    finally:
        transport.close()
    return result


def build_confirmation(cfg: Config, sub: Subscriber, confirm_url: str, links: dict[str, str], now: datetime, *,
                       idempotency_key: str = "") -> tuple[Variant, Recipient]:
    """The confirmation email for ``sub``, ready for any transport: rendered, and built as MIME."""
    context = {"site": cfg.site, "confirm_url": confirm_url, "email": sub.email, "unsubscribe_url": links["unsubscribe_url"]}
    subject = f"Confirm your subscription to {cfg.site.name}"
    text, html = _render("email/confirm.txt.j2", cfg, context, False), _render("email/confirm.html.j2", cfg, context, True)
    domain = cfg.digest.from_address.rpartition("@")[2] or "localhost"
    msg = EmailMessage(policy=POLICY)
    msg["From"] = formataddr((cfg.digest.from_name, cfg.digest.from_address))
    msg["To"] = sub.email
    msg["Subject"] = subject
    msg["Date"] = format_datetime(now)
    message_id = make_msgid("confirm", domain)
    msg["Message-ID"] = message_id
    msg.set_content(text, charset="utf-8", cte="quoted-printable")
    msg.add_alternative(html, subtype="html", charset="utf-8", cte="quoted-printable")
    compiled = CompiledMessage("confirm", (msg.as_bytes(policy=POLICY),), (), domain)
    prepared = Prepared("confirm", subject, cfg.digest.from_name, cfg.digest.from_address, cfg.digest.reply_to, html, text,
                        list_id(cfg))
    key = idempotency_key or f"confirm:{sub.id}:{now.isoformat()}"
    return Variant(compiled, prepared), Recipient(sub.id, sub.email, message_id, links, key)


@lru_cache(maxsize=16)
def _environment(templates: str, autoescape: bool) -> jinja2.Environment:
    # One per folder (auto_reload picks up an edited template): compiling the templates for every email cost
    # more than the rest of the work for a sign-up.
    return jinja2.Environment(loader=jinja2.FileSystemLoader(templates), autoescape=autoescape, undefined=jinja2.StrictUndefined,
                              auto_reload=True)


def _render(name: str, cfg: Config, context: dict[str, object], autoescape: bool) -> str:
    try:
        return _environment(str(cfg.path(cfg.site.templates_dir)), autoescape).get_template(name).render(context)
    except jinja2.TemplateError as exc:
        raise TemplateError(str(cfg.path(cfg.site.templates_dir) / name), getattr(exc, "lineno", None), str(exc)) from None


def _decoy(cfg: Config, address: str, now: datetime) -> None:
    """Build, and throw away, the confirmation this address would get.

    A sign-up that sends nothing (the address is known, suppressed or capped) then costs the sender about the CPU one
    that sends does; without it, the burst of work after a new address's sign-up slowed the site's other answers
    measurably, and a prober timing them could tell who is subscribed.
    """
    from .send import links_for

    dummy = Subscriber(0, address, SubscriberStatus.PENDING, now, now)
    link = f"{cfg.site.base_url.rstrip('/')}/confirm/{make_confirm_token(cfg.secret_key.get(), 0, address, new_nonce())}"
    build_confirmation(cfg, dummy, link, links_for(cfg, dummy), now)


def _without(address: str, text: str) -> str:
    """``text`` (a relay's reply, kept and logged) without the address it may quote."""
    return re.sub(re.escape(address), "<the address>", text, flags=re.IGNORECASE) if address else text


# -- the sign-up queue ---------------------------------------------------------------------------


def _utcnow() -> datetime:
    return datetime.now(timezone.utc)


def worker_name(kind: str) -> str:
    return f"{kind}:{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"[:64]


def drain_signups(cfg: Config, store: Store, *, worker: str, limit: int = 200, stop: threading.Event | None = None,
                  budget: float | None = None, clock: Callable[[], datetime] = _utcnow) -> Counter[str]:
    """Do the sign-up requests that are due, one at a time, until none is (or ``limit``, or ``stop``). Outcomes by name.

    With ``budget`` (seconds), no new request is taken once it is spent: a queue an attacker filled, in front of a
    relay that never answers, then delays its caller by the budget and one send at most; the rest waits its turn.
    """
    done: Counter[str] = Counter()
    deadline = time.monotonic() + budget if budget is not None else None
    while sum(done.values()) < limit and not (stop is not None and stop.is_set()) and not store.closed:
        if deadline is not None and time.monotonic() >= deadline:
            break
        claimed = store.claim_signups(worker, clock(), CLAIM_LEASE, limit=1)  # one at a time: a slow send holds only its own row
        if not claimed:
            break
        done[process_signup(cfg, store, claimed[0], worker, clock())] += 1
    return done


def process_signup(cfg: Config, store: Store, request: SignupRequest, worker: str, now: datetime) -> str:
    """Apply one claimed sign-up and send its confirmation; record the outcome (or the retry). Returns the outcome."""
    attempts = request.attempts + 1
    try:
        subscriber_id = request.subscriber_id
        if subscriber_id is None:
            result = subscribe(store, request.email, request.topics, now, double_opt_in=cfg.subscribers.double_opt_in,
                               may_send=lambda address: _may_send(cfg, store, address, now), asked_at=request.created_at)
            if not result.send_confirmation or result.subscriber is None:
                _decoy(cfg, request.email, now)
                store.finish_signup(request.id, worker, result.outcome, now)
                return result.outcome
            subscriber_id = result.subscriber.id
            store.signup_applied(request.id, subscriber_id)  # the cap's slot is taken: a retry only resends
        sent = _send_link(cfg, store, subscriber_id, request.id, now)
    except InvalidAddress:  # the page checked it; an address queued by an older version may not pass
        store.finish_signup(request.id, worker, "invalid", now)
        return "invalid"
    except Exception as exc:  # noqa: BLE001 - a broken template, a store hiccup: this request waits, the sender goes on
        sent = Result(request.subscriber_id or 0, "deferred", _describe(exc))
    sent = replace(sent, error=_without(request.email, sent.error)) if sent is not None and sent.error else sent
    if sent is None:  # confirmed, unsubscribed or erased while it waited: nothing to send
        store.finish_signup(request.id, worker, "unchanged", now, attempts=attempts)
        return "unchanged"
    if sent.status == "sent":
        store.finish_signup(request.id, worker, "sent", now, attempts=attempts)
        return "sent"
    if sent.status == "failed" or attempts >= cfg.subscribers.confirmation_attempts:
        log.warning("confirmation (sign-up request %s) given up after %d attempt(s): %s", request.id, attempts, sent.error)
        store.finish_signup(request.id, worker, "failed", now, attempts=attempts, error=sent.error)
        return "failed"
    wait = timedelta(seconds=parse_duration(cfg.subscribers.confirmation_retry) * 2 ** (attempts - 1))
    log.info("confirmation (sign-up request %s) not sent, retrying in %s: %s", request.id, wait, sent.error)
    store.retry_signup(request.id, worker, attempts, now + wait, sent.error)
    return "retry"


def _may_send(cfg: Config, store: Store, address: str, now: datetime) -> bool:
    """The per-address cap: at most [subscribers].confirmations_per_day confirmations in any 24 h, whoever asks.

    Counted per inbox (:func:`subscribers.mailbox_of`), so ``victim+1@``, ``victim+2@``... share one count."""
    return store.take_slot(f"addr:{email_hash(mailbox_of(address))}", cfg.subscribers.confirmations_per_day, CAP_WINDOW, now)


def _send_link(cfg: Config, store: Store, subscriber_id: int, request_id: int, now: datetime) -> Result | None:
    from .send import links_for

    state = store.signup_state(subscriber_id)
    if state is None or state[1] is not SubscriberStatus.PENDING or not state[2]:
        return None
    email, _, nonce = state
    sub = store.subscriber_by_id(subscriber_id)
    assert sub is not None
    link = f"{cfg.site.base_url.rstrip('/')}/confirm/{make_confirm_token(cfg.secret_key.get(), subscriber_id, email, nonce)}"
    return send_confirmation(cfg, sub, link, links_for(cfg, sub), now, idempotency_key=f"confirm:{request_id}")


def _describe(exc: Exception) -> str:
    """Our own errors say what is wrong; anything else by its type only (a driver's message may quote the address)."""
    return str(exc) if isinstance(exc, PublisherError) else f"{type(exc).__name__} (see the log)"


class SignupSender:
    """The web app's sender thread: woken by each sign-up, and every POLL_SECONDS for requests other processes queued.

    It stops when asked, or once its store is closed. A request it holds when the process dies is taken over by the
    next sender after CLAIM_LEASE, so a confirmation may then go out twice (still within the daily cap), never zero times.
    """

    def __init__(self, cfg: Config, store: Store) -> None:
        self.cfg, self.store = cfg, store
        self.worker = worker_name("web")
        self._wake, self._stop = threading.Event(), threading.Event()
        self._thread = threading.Thread(target=self._run, name="signup-sender", daemon=True)

    def start(self) -> SignupSender:
        self.store.on_close(lambda: self.stop(timeout=STOP_WAIT))
        self._thread.start()
        return self

    def wake(self) -> None:
        self._wake.set()

    def stop(self, timeout: float | None = None) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(timeout)

    def _run(self) -> None:
        last_prune = 0.0
        jitter = random.SystemRandom()
        while not self._stop.is_set() and not self.store.closed:
            if self._wake.is_set():
                self._stop.wait(jitter.uniform(0, WAKE_JITTER))
            self._wake.clear()
            try:
                drain_signups(self.cfg, self.store, worker=self.worker, stop=self._stop)
                if time.monotonic() - last_prune > PRUNE_SECONDS:
                    self.store.prune_signups(_utcnow())
                    last_prune = time.monotonic()
            except Exception as exc:  # noqa: BLE001 - the store is down for a moment: try again on the next round
                if not self.store.closed:
                    log.warning("sign-up sender: %s; trying again in %.0f s", _describe(exc), POLL_SECONDS)
            if not self._stop.is_set():  # stop() sets the wake-up after the stop flag: this wait then ends at once
                self._wake.wait(POLL_SECONDS)
        if self.store.closed:  # a send outlasted close()'s wait: let go of what it opened since
            self.store.engine.dispose()
