"""Issue 11, point 3: the sign-up form cannot be made into a mail bomb, a probe of who is subscribed, or a way to stall the site.

Every test attacks the real thing: uvicorn (in-process, or `publisher serve` as a subprocess, as a user runs it), an
aiosmtpd relay, SQLite files and the PostgreSQL server, clients on distinct loopback networks (127.x.y.z).
"""

from __future__ import annotations

import asyncio
import random
import socket
import statistics
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
import requests
import sqlalchemy as sa

from publisher.config import Config
from publisher.delivery.transactional import drain_signups
from publisher.models import SubscriberStatus
from publisher.pipeline import SIGNUP_BUDGET, run_feeds, run_ingest, run_signups
from publisher.store import Store, open_store, tables
from publisher.web import create_app
from subscribers import add_subscriber, forget

from .conftest import NOW
from .servers import run_app
from .signup_support import client_from, outbox, publisher_serve, settle, sign_up
from .smtp_faults import FaultyRelay, relay


@pytest.fixture
def db(cfg: Config) -> Iterator[Store]:
    store = open_store(cfg.store_url)
    run_ingest(cfg, store, NOW)
    yield store
    store.close()


def confirmations_to(cfg: Config, address: str) -> int:
    return sum(1 for m in outbox(cfg) if m["To"] == address and m["Subject"].startswith("Confirm"))


def smtp_to(cfg: Config, port: int) -> Config:
    """The shipped config, delivering through the relay on ``port`` (plain SMTP on loopback, as aiosmtpd speaks it)."""
    smtp = replace(cfg.delivery.smtp, host="127.0.0.1", port=port, security="none")
    return replace(cfg, delivery=replace(cfg.delivery, backend="smtp", smtp=smtp))


# -- at most a few confirmations per address per day, whoever asks -------------------------------------------


def test_the_daily_cap_per_address_holds_for_any_asker_across_workers_and_restarts(cfg: Config, project: Path) -> None:
    cap = cfg.subscribers.confirmations_per_day
    first, second = open_store(cfg.store_url), open_store(cfg.store_url)  # two web workers on one store
    run_ingest(cfg, first, NOW)
    try:
        with run_app(create_app(cfg, first)) as one, run_app(create_app(cfg, second)) as two:
            # The attack: the victim's address, signed up again and again, from a new network each time (no network limit helps).
            answers = [sign_up(client_from(f"127.0.{10 + i}.1"), (one, two)[i % 2], "victim@example.net") for i in range(cap + 3)]
            assert {(a.status_code, "Check your inbox" in a.text) for a in answers} == {(200, True)}
            settle(first)
            settle(second)
            assert confirmations_to(cfg, "victim@example.net") == cap
            assert first.signup_outcomes()["capped"] == 3
    finally:
        first.close()
        second.close()
    # A restart, as a user runs it: a new `publisher serve` process on the same store still counts the day's mails.
    with publisher_serve(project) as base:
        assert sign_up(client_from("127.0.40.1"), base, "victim@example.net").status_code == 200
        assert sign_up(client_from("127.0.41.1"), base, "bystander@example.net").status_code == 200
        store = open_store(cfg.store_url)
        try:
            settle(store)
        finally:
            store.close()
    assert confirmations_to(cfg, "victim@example.net") == cap  # refused: still 3 in the last 24 h
    assert confirmations_to(cfg, "bystander@example.net") == 1  # everyone else is unaffected


def test_the_daily_cap_counts_an_inbox_not_its_spellings(cfg: Config) -> None:
    """victim+1@, victim+2@... and Gmail's dotted spellings reach one inbox: the cap counts them as one."""
    cap = cfg.subscribers.confirmations_per_day
    store = open_store(cfg.store_url)
    run_ingest(cfg, store, NOW)
    spellings = [f"victim+{i}@example.net" for i in range(cap + 2)] + ["v.i.c.t.i.m@gmail.com", "vic.tim+x@googlemail.com",
                                                                      "victim@gmail.com", "victi.m@gmail.com", "VICTIM+y@gmail.com"]
    try:
        with run_app(create_app(cfg, store)) as base:
            for i, address in enumerate(spellings):
                assert sign_up(client_from(f"127.0.{60 + i}.1"), base, address).status_code == 200
            assert sign_up(client_from("127.0.99.1"), base, "someone.else@gmail.com").status_code == 200
            settle(store)
    finally:
        store.close()
    mailed = [m["To"] for m in outbox(cfg) if m["Subject"].startswith("Confirm")]
    assert sum(1 for a in mailed if a.endswith("@example.net")) == cap  # one inbox: example.net's victim
    assert sum(1 for a in mailed if a.endswith(("@gmail.com", "@googlemail.com")) and a != "someone.else@gmail.com") == cap
    assert "someone.else@gmail.com" in mailed  # another person at the same provider is unaffected


# -- a limit per client network, shared by every worker ----------------------------------------------------------


def test_the_network_limit_counts_a_24_or_64_and_is_shared_by_workers(cfg: Config) -> None:
    limit = cfg.web.signups_per_network
    first, second = open_store(cfg.store_url), open_store(cfg.store_url)
    run_ingest(cfg, first, NOW)
    try:
        with run_app(create_app(cfg, first)) as one, run_app(create_app(cfg, second)) as two:
            codes = [sign_up(client_from(f"127.0.0.{1 + i}"), (one, two)[i % 2], f"n{i}@example.net").status_code for i in range(limit)]
            assert codes == [200] * limit  # spread over two workers and ten addresses of one /24
            blocked = sign_up(client_from("127.0.0.200"), one, "late@example.net")
            assert blocked.status_code == 429 and "Too many attempts" in blocked.text and int(blocked.headers["Retry-After"]) > 0
            assert sign_up(client_from("127.0.0.201"), two, "late@example.net").status_code == 429  # the other worker knows too
            assert client_from("127.0.0.200").get(f"{one}/subscribe", timeout=10).status_code == 200  # reading pages still works
            assert sign_up(client_from("127.0.1.1"), one, "neighbour@example.net").status_code == 200  # the next /24 is not blocked
            settle(first)
            assert first.subscriber("late@example.net") is None and first.subscriber("neighbour@example.net") is not None
    finally:
        first.close()
        second.close()


# -- X-Forwarded-For only from [web].trusted_proxies ----------------------------------------------------------------


def test_a_forged_x_forwarded_for_is_ignored_by_default(project: Path) -> None:
    """`publisher serve` with the shipped config: a client on 127.0.0.1 rotating X-Forwarded-For is still 127.0.0.1."""
    with publisher_serve(project) as base:
        http = client_from("127.0.0.1")
        limit = 10  # the shipped [web].signups_per_network
        codes = [sign_up(http, base, f"f{i}@example.net", headers={"X-Forwarded-For": f"198.51.{i}.7"}).status_code for i in range(limit + 1)]
        assert codes == [200] * limit + [429]
        assert sign_up(client_from("127.0.5.1"), base, "other@example.net").status_code == 200  # a real other network still can


def test_a_trusted_proxy_is_believed_right_to_left_and_nobody_else_is(project: Path) -> None:
    limit = 10
    with publisher_serve(project, {"PUBLISHER_WEB__TRUSTED_PROXIES": "127.0.0.1"}) as base:
        proxy = client_from("127.0.0.1")

        def via_proxy(chain: str, n: int = 1) -> list[int]:
            return [sign_up(proxy, base, f"p{random.random()}@example.net", headers={"X-Forwarded-For": chain}).status_code for _ in range(n)]

        assert via_proxy("203.0.113.5", limit) == [200] * limit
        assert via_proxy("203.0.113.99") == [429]  # the same /24
        # A client that writes its own X-Forwarded-For gets the real address appended by the proxy: that one counts.
        assert via_proxy("192.0.2.1, 203.0.113.50") == [429]
        assert via_proxy("203.0.114.5") == [200]  # another /24
        assert via_proxy("2001:db8::1", limit) == [200] * limit
        assert via_proxy("2001:db8::ffff:1") == [429]  # the same /64
        assert via_proxy("2001:db8:0:1::1") == [200]  # the next /64
        # A peer that is not a trusted proxy (127.0.0.2) is the client itself, whatever the header says.
        direct = client_from("127.0.0.2")
        codes = [sign_up(direct, base, f"d{i}@example.net", headers={"X-Forwarded-For": f"198.18.{i}.1"}).status_code for i in range(limit + 1)]
        assert codes == [200] * limit + [429]


# -- the same answer, in the same time, for any address ---------------------------------------------------------------


def test_the_answer_and_its_timing_do_not_tell_known_from_unknown_or_suppressed(cfg: Config, db: Store) -> None:
    """Medians of 80 sign-ups per kind, interleaved at random, against real uvicorn. Before: 4 ms vs 28 ms.

    The request path no longer looks the address up, so any difference is noise. The bound (2 ms, or a quarter of the
    smaller median if that is more) is far below the 24 ms the lookup and the send used to add, and wide enough for a
    noisy 2-core machine; the median ignores the stragglers a background send or a GC pause makes. A machine loaded
    by other tests can still drift between the kinds in one round (seen: 7.6 ms at medians of 21 to 29 ms), so up to
    three rounds are measured and one within the bound is enough: a real lookup would put every round out of it.
    """
    rounds, unknown, others = [], [], []
    with run_app(create_app(cfg, db)) as base:
        for attempt in range(3):
            medians, bodies, new, old = _timing_round(db, base, attempt)
            unknown, others = unknown + new, others + old
            assert len(bodies) == 1 and next(iter(bodies))[0] == 200  # one answer, byte for byte
            rounds.append({k: f"{v * 1000:.2f} ms" for k, v in medians.items()})
            if all(abs(medians[a] - medians[b]) <= max(0.002, 0.25 * min(medians[a], medians[b]))
                   for a, b in (("known", "unknown"), ("suppressed", "unknown"), ("known", "suppressed"))):
                break
        else:
            pytest.fail(f"the kinds' medians differ in every round: {rounds}")
        settle(db)
    # ...and behind the answer, each kind got what it should: only the new addresses were mailed.
    mailed = {m["To"] for m in outbox(cfg)}
    assert set(unknown) <= mailed and not mailed & set(others)


def _timing_round(db: Store, base: str, attempt: int) -> tuple[dict[str, float], set[tuple[int, str]], list[str], list[str]]:
    n = 80
    known = [f"known{attempt}-{i}@example.net" for i in range(n)]
    suppressed = [f"gone{attempt}-{i}@example.net" for i in range(n)]
    for address in known + suppressed:
        add_subscriber(db, address, NOW, confirmed=True)
    for address in suppressed:
        forget(db, address, NOW)
    unknown = [f"new{attempt}-{i}@example.net" for i in range(n)]
    plan = [("known", a) for a in known] + [("suppressed", a) for a in suppressed] + [("unknown", a) for a in unknown]
    random.Random(11 + attempt).shuffle(plan)
    clients = [client_from(f"127.{attempt + 1}.{k}.1") for k in range(len(plan) // 6 + 2)]  # six sign-ups per network: under the limit
    tokens = [_form_token(http, base) for http in clients]
    for k in range(6):  # warm up: the first requests of a process are slower
        _timed_post(clients[-1], base, tokens[-1], f"warm{attempt}-{k}@example.net")
    times: dict[str, list[float]] = {"known": [], "unknown": [], "suppressed": []}
    bodies: set[tuple[int, str]] = set()
    for i, (kind, address) in enumerate(plan):
        seconds, resp = _timed_post(clients[i // 6], base, tokens[i // 6], address)
        times[kind].append(seconds)
        bodies.add((resp.status_code, resp.text))
    return {kind: statistics.median(v) for kind, v in times.items()}, bodies, unknown, known + suppressed


def _form_token(http: requests.Session, base: str) -> str:
    from .signup_support import csrf_of

    return csrf_of(http.get(f"{base}/subscribe", timeout=10).text)


def _timed_post(http: requests.Session, base: str, token: str, address: str) -> tuple[float, requests.Response]:
    start = time.perf_counter()
    resp = http.post(f"{base}/subscribe", data={"email": address, "csrf": token, "website": ""}, timeout=10)
    return time.perf_counter() - start, resp


# -- a stalled relay stalls no page ---------------------------------------------------------------------------------------


class StallsFor(FaultyRelay):
    """A relay that sits on one recipient's message for ``stall`` seconds before accepting it (and serves the rest at once)."""

    def __init__(self, slow: str, stall: float) -> None:
        super().__init__()
        self.slow, self.stall = slow, stall
        self.stalling = False

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        if self.slow in envelope.rcpt_tos:
            self.stalling = True
            await asyncio.sleep(self.stall)
            self.stalling = False
        return await super().handle_DATA(server, session, envelope)


def test_a_relay_that_stalls_22_seconds_never_stalls_a_page(cfg: Config, db: Store) -> None:
    handler = StallsFor("slow@example.net", stall=22.0)
    run_feeds(cfg, db)
    with relay(handler) as port:
        smtp_cfg = smtp_to(cfg, port)
        with run_app(create_app(smtp_cfg, db)) as base:
            start = time.monotonic()
            assert sign_up(client_from("127.2.0.1"), base, "slow@example.net").status_code == 200
            assert time.monotonic() - start < 2.0
            deadline = time.monotonic() + 10
            while not handler.stalling:  # the sender is now inside the relay's DATA
                assert time.monotonic() < deadline, "the confirmation never reached the relay"
                time.sleep(0.05)
            slowest = 0.0
            for k in range(10):  # while the relay sits on it: every kind of page answers at once
                for call in (lambda: requests.get(f"{base}/subscribe", timeout=5),
                             lambda: requests.get(f"{base}/feeds/all.atom", timeout=5),
                             lambda: sign_up(client_from(f"127.2.{1 + k}.1"), base, f"fast{k}@example.net")):
                    t0 = time.monotonic()
                    assert call().status_code == 200
                    slowest = max(slowest, time.monotonic() - t0)
            assert handler.stalling and slowest < 1.0, slowest
            deadline = time.monotonic() + 60
            while len(handler.delivered) < 11:  # the slow one went through in the end, then the queue behind it
                assert time.monotonic() < deadline, dict(handler.delivered)
                time.sleep(0.1)
    assert handler.delivered["slow@example.net"] == 1 and all(handler.delivered[f"fast{k}@example.net"] == 1 for k in range(10))


@contextmanager
def silent_relay() -> Iterator[int]:
    """A port that accepts connections and never says a word (no SMTP greeting): a relay that hangs."""
    server = socket.create_server(("127.0.0.1", 0))
    held: list[socket.socket] = []
    done = threading.Event()

    def accept() -> None:
        server.settimeout(0.2)
        while not done.is_set():
            try:
                held.append(server.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield server.getsockname()[1]
    finally:
        done.set()
        thread.join()
        for conn in held:
            conn.close()
        server.close()


def test_a_queue_in_front_of_a_hanging_relay_delays_a_cycle_by_its_budget_at_most(cfg: Config, db: Store) -> None:
    """`run --once` and the scheduler drain the queue first; an attacker's queue and a relay that hangs must not hold
    the ingest, the feeds and the digest for an SMTP timeout per request. The shipped timeouts, untouched."""
    run_ingest(cfg, db, NOW)
    for i in range(8):  # on the real clock, as the web form queues them: run_signups prunes by it
        db.enqueue_signup(f"queued{i}@example.net", (), datetime.now(timezone.utc))
    with silent_relay() as port:
        hanging = smtp_to(cfg, port)
        started = time.monotonic()
        done = run_signups(hanging, db)
        took = time.monotonic() - started
    timeout = cfg.delivery.smtp.timeout
    assert SIGNUP_BUDGET <= took <= SIGNUP_BUDGET + timeout + 10, took  # the budget, plus the one send it was in
    assert 1 <= done["retry"] < 8 and sum(done.values()) == done["retry"]
    assert db.waiting_signups() == 8  # nothing lost: the rest waits for the next run, the tried ones for their retry


# -- retries with backoff, then giving up; `publisher run` drains what the web app left ---------------------------------


def test_a_failing_relay_is_retried_with_a_doubling_wait_then_given_up(cfg: Config, store: Store) -> None:
    run_ingest(cfg, store, NOW)
    handler = FaultyRelay(tempfail=1.0)  # 451 for every message
    with relay(handler) as port:
        smtp_cfg = smtp_to(cfg, port)
        store.enqueue_signup("retry@example.net", (), NOW)  # what POST /subscribe writes
        waits = []
        at = NOW
        for attempt in range(1, cfg.subscribers.confirmation_attempts + 1):
            assert drain_signups(smtp_cfg, store, worker="t", clock=lambda: at) == {"retry" if attempt < 5 else "failed": 1}
            assert drain_signups(smtp_cfg, store, worker="t", clock=lambda: at + timedelta(seconds=59 * 2 ** (attempt - 1))) == {}  # not yet
            waits.append(60 * 2 ** (attempt - 1))
            at += timedelta(seconds=waits[-1])
        assert handler.tempfailed == cfg.subscribers.confirmation_attempts and store.signup_outcomes() == {"failed": 1}
        assert drain_signups(smtp_cfg, store, worker="t", clock=lambda: at + timedelta(days=1)) == {}  # given up for good
        handler.tempfail = 0.0  # the relay is back: the next sign-up goes out at once, and the retries used no extra slot of the cap
        store.enqueue_signup("retry@example.net", (), at)
        assert drain_signups(smtp_cfg, store, worker="t", clock=lambda: at) == {"sent": 1}
    assert handler.delivered["retry@example.net"] == 1
    assert store.subscriber("retry@example.net").status is SubscriberStatus.PENDING


def test_a_relay_reply_quoting_the_address_is_kept_and_logged_without_it(cfg: Config, store: Store,
                                                                          caplog: pytest.LogCaptureFixture) -> None:
    run_ingest(cfg, store, NOW)
    handler = FaultyRelay(refuse={"Gone.Person@example.net".lower()})  # 550 5.1.1 <address>: recipient address rejected
    with relay(handler) as port:
        store.enqueue_signup("gone.person@example.net", (), NOW)
        assert drain_signups(smtp_to(cfg, port), store, worker="t", clock=lambda: NOW) == {"failed": 1}
    with store.engine.connect() as conn:
        kept = [row.error for row in conn.execute(sa.select(tables.signup_requests.c.error))]
    assert kept and "550" in kept[0] and "<the address>" in kept[0]
    assert not any("gone.person" in (e or "").lower() for e in kept)
    assert "550" in caplog.text and "gone.person" not in caplog.text.lower()


def test_publisher_run_once_sends_what_no_web_app_is_left_to_send(project: Path, cfg: Config) -> None:
    import os
    import subprocess

    from .signup_support import PUBLISHER, SUBPROCESS_KEY

    store = open_store(cfg.store_url)
    try:
        add_subscriber(store, "already@example.net", NOW, confirmed=True)
        for address in ("queued@example.net", "already@example.net"):  # queued by a web app that died, or runs elsewhere
            store.enqueue_signup(address, (), datetime.now(timezone.utc))  # the real clock: the command prunes by it
    finally:
        store.close()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PUBLISHER_")} | {"PUBLISHER_SECRET_KEY": SUBPROCESS_KEY}
    done = subprocess.run([PUBLISHER, "run", "--once"], cwd=project, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert confirmations_to(cfg, "queued@example.net") == 1 and confirmations_to(cfg, "already@example.net") == 0
    store = open_store(cfg.store_url)
    try:
        assert store.waiting_signups() == 0 and store.signup_outcomes() == {"sent": 1, "unchanged": 1}
    finally:
        store.close()
