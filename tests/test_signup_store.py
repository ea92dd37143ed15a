"""The store's part of the sign-up: shared rate slots, the queue's claims, pruning, migration 0009; and reading clients.

On a SQLite file and on the PostgreSQL server, with real concurrent connections (a Store per thread, as separate
worker processes would have).
"""

from __future__ import annotations

import threading
from collections import Counter
from datetime import timedelta

import pytest
from sqlalchemy import select

from publisher.store import Store, open_store
from publisher.store import tables as t
from publisher.web.clients import client_address, network_of, parse_networks

from .conftest import NOW


def url_of(store: Store) -> str:
    return store.engine.url.render_as_string(hide_password=False)


def in_parallel(n: int, work) -> list:  # noqa: ANN001 - a test helper
    """Run ``work(i)`` in ``n`` threads released at once; their results."""
    results: list = [None] * n
    barrier = threading.Barrier(n)

    def run(i: int) -> None:
        barrier.wait()
        results[i] = work(i)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(60)
    return results


def test_the_last_slot_is_never_given_out_twice_under_concurrent_takers(store: Store) -> None:
    limit, takers, tries = 5, 6, 8
    stores = [open_store(url_of(store)) for _ in range(takers)]  # separate pools: like separate web workers
    try:
        got = in_parallel(takers, lambda i: sum(stores[i].take_slot("net:192.0.2.0/24", limit, timedelta(minutes=10), NOW) for _ in range(tries)))
    finally:
        for s in stores:
            s.close()
    assert sum(got) == limit  # 48 attempts, 5 slots
    assert not store.take_slot("net:192.0.2.0/24", limit, timedelta(minutes=10), NOW + timedelta(minutes=9))
    assert store.take_slot("net:192.0.2.0/24", limit, timedelta(minutes=10), NOW + timedelta(minutes=10))  # a slot expired: a sliding window
    assert store.take_slot("net:198.51.100.0/24", limit, timedelta(minutes=10), NOW)  # other keys are not affected


def test_each_queued_request_is_claimed_by_one_sender(store: Store) -> None:
    ids = {store.enqueue_signup(f"q{i}@example.net", (), NOW) for i in range(12)}
    senders = [open_store(url_of(store)) for _ in range(4)]
    try:
        claims = in_parallel(4, lambda i: [r.id for _ in range(12) for r in senders[i].claim_signups(f"w{i}", NOW, timedelta(minutes=10), limit=1)])
    finally:
        for s in senders:
            s.close()
    claimed = [request_id for batch in claims for request_id in batch]
    assert sorted(claimed) == sorted(ids)  # every one, once
    assert store.claim_signups("late", NOW + timedelta(minutes=5), timedelta(minutes=10)) == []  # still held
    taken_over = store.claim_signups("late", NOW + timedelta(minutes=11), timedelta(minutes=10), limit=50)  # their senders died
    assert {r.id for r in taken_over} == ids


def test_done_requests_keep_no_address_and_old_rows_are_pruned(store: Store) -> None:
    old = store.enqueue_signup("old@example.net", (), NOW - timedelta(days=3))
    recent = store.enqueue_signup("recent@example.net", ("a",), NOW - timedelta(hours=1))
    store.enqueue_signup("stuck@example.net", (), NOW - timedelta(days=8))
    fresh = store.enqueue_signup("fresh@example.net", (), NOW)
    for request_id, at in ((old, NOW - timedelta(days=2)), (recent, NOW - timedelta(hours=1))):
        [claimed] = [r for r in store.claim_signups("w", at, timedelta(minutes=10), limit=10) if r.id == request_id]
        store.finish_signup(claimed.id, "w", "sent", at)
    store.take_slot("addr:x", 3, timedelta(hours=24), NOW - timedelta(days=2))
    store.take_slot("addr:y", 3, timedelta(hours=24), NOW)
    with store.engine.connect() as conn:
        assert conn.execute(select(t.signup_requests.c.email).where(t.signup_requests.c.id.in_([old, recent]))).scalars().all() == [None, None]
    store.prune_signups(NOW)
    with store.engine.connect() as conn:
        left = set(conn.execute(select(t.signup_requests.c.id)).scalars())
        keys = set(conn.execute(select(t.rate_slots.c.key)).scalars())
    assert left == {recent, fresh} and keys == {"addr:y"}  # a day for outcomes, a week for waiting ones, slots until they expire


def test_migration_0009_builds_the_schema_the_code_declares(store: Store) -> None:
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    with store.engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}), t.metadata)
    ours = [d for d in diff if any(name in str(d) for name in ("signup_requests", "rate_slots", "confirm_nonce"))]
    assert ours == []


# -- whose address counts: X-Forwarded-For only from trusted proxies -------------------------------------------------


@pytest.mark.parametrize("peer, header, trusted, expected", [
    ("127.0.0.1", ["6.6.6.6"], [], "127.0.0.1"),  # nobody trusted: the header is ignored
    ("10.0.0.5", ["6.6.6.6"], ["10.0.0.0/8"], "6.6.6.6"),
    ("10.0.0.5", ["6.6.6.6, 203.0.113.9"], ["10.0.0.0/8"], "203.0.113.9"),  # right to left: the hop the proxy saw
    ("10.0.0.5", ["203.0.113.9, 10.0.0.7"], ["10.0.0.0/8"], "203.0.113.9"),  # trusted hops are skipped
    ("10.0.0.5", ["6.6.6.6", "203.0.113.9"], ["10.0.0.0/8"], "203.0.113.9"),  # several header lines are one list
    ("10.0.0.5", ["garbage, 203.0.113.9"], ["10.0.0.0/8"], "203.0.113.9"),
    ("10.0.0.5", ["203.0.113.9, garbage"], ["10.0.0.0/8"], "10.0.0.5"),  # an unreadable hop: stop at the last trusted one
    ("10.0.0.5", ["10.0.0.6, 10.0.0.7"], ["10.0.0.0/8"], "10.0.0.6"),
    ("10.0.0.5", [], ["10.0.0.0/8"], "10.0.0.5"),
    ("::ffff:10.0.0.5", ["[2001:db8::1]:4711"], ["10.0.0.5"], "2001:db8::1"),  # mapped peer, bracketed hop with a port
    ("10.0.0.5", ["203.0.113.9:8080"], ["10.0.0.5/32"], "203.0.113.9"),
    ("testclient", ["6.6.6.6"], ["10.0.0.0/8"], "testclient"),
])
def test_the_client_address_believes_only_trusted_proxies(peer: str, header: list[str], trusted: list[str], expected: str) -> None:
    assert client_address(peer, header, parse_networks(trusted)) == expected


def test_networks_are_a_24_for_ipv4_and_a_64_for_ipv6() -> None:
    keys = Counter(network_of(a) for a in ("203.0.113.1", "203.0.113.254", "::ffff:203.0.113.7", "203.0.114.1",
                                           "2001:db8::1", "2001:db8::ffff:1", "2001:db8:0:1::1", "fe80::1%eth0"))
    assert keys == {"203.0.113.0/24": 3, "203.0.114.0/24": 1, "2001:db8::/64": 2, "2001:db8:0:1::/64": 1, "fe80::/64": 1}
    assert network_of("not an address") == "host:not an address"


def test_forget_deletes_the_persons_waiting_sign_up_requests_and_only_theirs(store: Store) -> None:
    from subscribers.service import forget

    queued = store.enqueue_signup("asked@example.net", ("a",), NOW)  # asked on the form; the sender has not run yet
    other = store.enqueue_signup("someone@example.net", (), NOW)
    erasure = forget(store, "Asked@Example.NET", NOW)
    assert erasure.found  # a waiting request is data about them, though no subscriber row exists yet
    with store.engine.connect() as conn:
        left = set(conn.execute(select(t.signup_requests.c.id)).scalars())
    assert queued not in left and other in left
    assert [r.email for r in store.claim_signups("w", NOW, timedelta(minutes=10))] == ["someone@example.net"]  # nothing is sent to them
