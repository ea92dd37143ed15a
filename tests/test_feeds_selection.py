"""The feeds' selection at scale: the batched store reads return what the one-at-a-time ones did, on SQLite and PostgreSQL.

A full build reads each feed's newest ids (newest_of), the publications behind them (publications_by_id, one bound
parameter for any number of ids), their stored entries (feed_fragments) and the content types (an index skip-scan).
"""

from __future__ import annotations

import random
from dataclasses import replace
from datetime import datetime, timedelta, timezone

from publisher.config import Config
from publisher.feeds import FeedBuilder, feed_specs
from publisher.models import Image, Publication, Topic
from publisher.store import Store
from publisher.store.db import content_hash

from .conftest import NOW

TYPES = ["Commentary", "Report", "Research Brief", "Отчёт", "report"]  # two differ by case only: collation matters
TOPICS = ["alpha", "beta", "gamma", "delta", "empty"]


def mixed(n: int = 240) -> list[Publication]:
    """Dated and undated, shared timestamps (the id breaks the tie), several topics or none, every type."""
    rng = random.Random(13)
    pubs = []
    for i in range(n):
        when = None if i % 7 == 0 else datetime(2024, 1, 1, tzinfo=timezone.utc) + timedelta(hours=rng.randrange(40))
        topics = tuple(sorted({rng.choice(TOPICS[:4]) for _ in range(rng.randrange(3))}))
        image = Image(f"http://127.0.0.1:8000/m/{i}.png", "alt", "cap", "") if i % 3 else None
        pubs.append(Publication(
            id=f"p-{i:03d}" if i % 5 else f"P-{i}", url=f"http://127.0.0.1:8000/p/{i}", title=f"Title {i}",
            summary="Summary", content_type=TYPES[i % len(TYPES)], published_at=when, updated_at=when, topics=topics,
            authors=(f"Author {i % 4}",) if i % 2 else (), image=image, featured=i % 11 == 0, featured_rank=i if i % 11 == 0 else None,
            body_html=f"<p>Body {i}</p>", source="test"))
    return pubs


def fill(store: Store) -> list[Publication]:
    for slug in TOPICS:
        store.upsert_topic(Topic(slug, slug.title()))
    pubs = mixed()
    for k, p in enumerate(pubs):
        store.upsert_publication(p, NOW + timedelta(seconds=k % 3))  # undated ones tie on first seen too
    return pubs


def test_newest_of_returns_what_each_listing_returns(store: Store) -> None:
    pubs = fill(store)
    ingested = {p.id: content_hash(p) for p in pubs}
    selections = [(None, None)] + [(t, None) for t in TOPICS] + [(None, c) for c in TYPES] + [("alpha", "Report"), ("nothing", None)]
    for limit in (1, 7, 50, 1000):
        got = store.newest_of(selections, limit=limit)
        for (topic, ctype), group in zip(selections, got):
            listing = store.publications(topic=topic, content_type=ctype, limit=limit)
            assert [pid for pid, _ in group] == [p.id for p in listing], (topic, ctype, limit)
            assert all(digest == ingested[pid] for pid, digest in group)
            assert group == store.newest(topic=topic, content_type=ctype, limit=limit)
    assert store.newest_of([], limit=5) == []


def test_publications_by_id_are_the_listed_publications_with_their_row_hash(store: Store) -> None:
    pubs = fill(store)
    ids = [p.id for p in pubs]
    asked = ids + [f"missing-{n}" for n in range(3000)] + ids[:10]  # thousands of ids, unknown ones, repeats
    found = store.publications_by_id(asked)
    assert set(found) == set(ids)
    assert {pid: p for pid, (_, p) in found.items()} == {p.id: p for p in store.publications(ids=ids)}
    assert {pid: digest for pid, (digest, _) in found.items()} == {p.id: content_hash(p) for p in pubs}
    assert store.publications_by_id([]) == {} and store.publications_by_id(["missing"]) == {}


def test_content_types_by_skip_scan_match_distinct(store: Store) -> None:
    assert store.content_types() == []
    fill(store)
    from sqlalchemy import select

    from publisher.store import tables as t

    with store.engine.connect() as conn:
        distinct = list(conn.execute(select(t.publications.c.content_type).distinct().order_by(t.publications.c.content_type)).scalars())
    assert store.content_types() == distinct and sorted(distinct) == sorted(TYPES)


def test_feed_fragments_return_only_the_keys_asked(store: Store) -> None:
    pubs = fill(store)
    store.save_feed_fragments([(p.id, fmt, f"fp-{fmt}", f"<{p.id}/{fmt}>".encode()) for p in pubs[:50] for fmt in ("rss", "atom", "json")])
    keys = [(pubs[0].id, "rss"), (pubs[1].id, "atom"), (pubs[60].id, "rss"), ("missing", "rss")]
    assert store.feed_fragments(keys) == {(pubs[0].id, "rss"): ("fp-rss", f"<{pubs[0].id}/rss>".encode()),
                                          (pubs[1].id, "atom"): ("fp-atom", f"<{pubs[1].id}/atom>".encode())}
    assert store.feed_fragments([]) == {}


def test_feeds_are_the_same_bytes_from_a_small_cache_a_new_builder_and_a_warm_one(store: Store, cfg: Config) -> None:
    """More entries than the cache holds: nothing is rendered twice in a build, and the bytes do not change."""
    fill(store)
    from publisher.feeds.xml import EntryCache

    out = cfg.path(cfg.feeds.output_dir)
    small = FeedBuilder(cfg, EntryCache(maxsize=5))
    small.build(store)
    written = {p: p.read_bytes() for p in out.rglob("*.*")}
    held = {p.id for spec in feed_specs(store, cfg) for p in store.publications(topic=spec.topic, content_type=spec.content_type,
                                                                                   limit=cfg.feeds.item_limit)}
    assert small.cache.misses == len(held) * len(cfg.feeds.formats)  # each entry rendered once, however small the cache
    for builder in (FeedBuilder(cfg), small):  # a new process (entries from the store), and the same one again
        for p in out.rglob("*.*"):
            p.unlink()
        builder.build(store)
        assert {p: p.read_bytes() for p in out.rglob("*.*")} == written
    fresh = FeedBuilder(cfg)
    fresh.build(store)
    assert fresh.cache.misses == 0
    store.upsert_publication(replace(mixed()[1], title="Retitled"), NOW)  # a changed row: its entries only are rendered again
    again = FeedBuilder(cfg)
    again.build(store)
    assert again.cache.misses == len(cfg.feeds.formats)
