"""Feeds read by a real feed client (feedparser): what a reader sees."""

from __future__ import annotations

import json
from pathlib import Path

import feedparser
import pytest

from publisher.config import Config
from publisher.feeds import build_feeds, entry_id
from publisher.pipeline import run_feeds, run_ingest
from publisher.store import Store, open_store

from .conftest import NOW


@pytest.fixture
def built(cfg: Config) -> tuple[Config, Store, Path]:
    store = open_store(cfg.store_url)
    run_ingest(cfg, store, NOW)
    run_feeds(cfg, store)
    yield cfg, store, cfg.path(cfg.feeds.output_dir)
    store.close()


def test_atom_and_rss_entries_carry_what_a_reader_shows(built) -> None:
    _, _, feeds = built
    for name in ("all.atom", "all.rss"):
        parsed = feedparser.parse((feeds / name).read_bytes())
        assert not parsed.bozo, parsed.get("bozo_exception")
        first = parsed.entries[0]  # newest first
        assert first.title == "Persistent Gray Zone Aggression in the South China Sea Calls for Increased Coordination in Rule of Law"
        assert first.link == "https://www.example.org/commentary/2024/04/gray-zone-aggression-south-china-sea-rule-of-law.html"
        assert first.published_parsed[:3] == (2024, 4, 16)
        assert first.author == "Aiko Tanabrook"
        assert "Washington is ceding influence" in first.summary
        assert {t.term for t in first.tags} >= {"Commentary", "security-cooperation"}
        assert first.media_content[0]["url"] == "https://www.example.org/media/images/gray-zone-aggression-south-china-sea-rule-of-law.png"
        assert "<figure>" in first.content[0].value and "Kevin J. Steinberg/U.S. Navy" in first.content[0].value


def test_feed_updated_is_the_newest_entry_not_the_build_time(built) -> None:
    _, _, feeds = built
    atom = feedparser.parse((feeds / "all.atom").read_bytes())
    assert atom.feed.updated_parsed[:3] == (2024, 4, 16)
    assert atom.feed.links[0].rel == "self" or any(l.rel == "self" for l in atom.feed.links)


def test_per_topic_and_per_type_feeds(built) -> None:
    _, _, feeds = built
    topic = feedparser.parse((feeds / "topics" / "security-cooperation.atom").read_bytes())
    assert len(topic.entries) == 22 and topic.feed.subtitle.startswith("Analysis of how")
    brief = json.loads((feeds / "types" / "research-brief.json").read_text(encoding="utf-8"))
    assert [i["title"] for i in brief["items"]] == ["A Leader's Guide to Interoperability"]
    assert brief["feed_url"] == "https://www.example.org/feeds/types/research-brief.json"


def test_rebuild_is_byte_identical_and_writes_nothing(built) -> None:
    cfg, store, feeds = built
    before = {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in feeds.rglob("*") if p.is_file()}
    assert build_feeds(cfg, store) == []
    assert {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in feeds.rglob("*") if p.is_file()} == before
    assert not [p for p in feeds.rglob(".*.tmp")]


def test_entry_ids_do_not_change_with_the_title(built) -> None:
    cfg, store, _ = built
    pub = store.publications(limit=1)[0]
    from dataclasses import replace

    assert entry_id(cfg.site.base_url, pub) == entry_id(cfg.site.base_url, replace(pub, title="Another title"))
