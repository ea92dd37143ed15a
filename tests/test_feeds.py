"""Feeds from the sample content, read by a real feed client (feedparser) and checked the way the W3C
Feed Validation Service checks them. The Atom is validated against RFC 4287's RELAX NG schema."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from email.utils import parsedate_to_datetime
from pathlib import Path

import feedparser
import pytest
from lxml import etree

from publisher.config import Config
from publisher.feeds import FeedBuilder, entry_id
from publisher.pipeline import run_feeds, run_ingest, run_site
from publisher.store import Store, open_store

from .atom_schema import validate_atom
from .conftest import NOW

A = "{http://www.w3.org/2005/Atom}"
MEDIA = "{http://search.yahoo.com/mrss/}"


@pytest.fixture
def built(cfg: Config) -> Iterator[tuple[Config, Store, Path]]:
    store = open_store(cfg.store_url)
    run_ingest(cfg, store, NOW)
    run_feeds(cfg, store)
    run_site(cfg, store)
    yield cfg, store, cfg.path(cfg.feeds.output_dir)
    store.close()


def feeds(root: Path, suffix: str) -> list[Path]:
    found = sorted(root.rglob(f"*.{suffix}"))
    assert found
    return found


def test_every_feed_kind_is_written(built) -> None:
    _, _, root = built
    names = {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}
    for stem in ("all", "topics/security-cooperation", "types/commentary", "types/research-brief", "types/multimedia"):
        assert {f"{stem}.rss", f"{stem}.atom", f"{stem}.json"} <= names


def test_feedparser_reads_every_entry_with_everything_a_reader_shows(built) -> None:
    _, store, root = built
    by_url = {p.url: p for p in store.publications()}
    names = {t.slug: t.name for t in store.topics()}
    for path in feeds(root, "rss") + feeds(root, "atom"):
        parsed = feedparser.parse(path.read_bytes())
        assert not parsed.bozo, (path, parsed.get("bozo_exception"))
        assert parsed.entries, path
        for entry in parsed.entries:
            pub = by_url[entry.link]
            assert entry.id == entry_id("http://127.0.0.1:8000", pub)
            assert entry.title == pub.title
            assert entry.published_parsed is not None
            assert [a.name for a in entry.authors] == list(pub.authors)
            # Atom: the topic's slug as term, its name as label; RSS has only the text, and gets the name.
            topics = pub.topics if path.suffix == ".atom" else [names[t] for t in pub.topics]
            assert {t.term for t in entry.tags} == {pub.content_type, *topics}
            if pub.image:
                assert entry.media_content[0]["url"] == pub.image.url
                assert entry.media_credit[0]["content"] == pub.image.credit
                assert pub.image.credit in entry.content[0].value and "<figure>" in entry.content[0].value
            else:
                assert "media_content" not in entry


def test_first_entry_reads_as_expected(built) -> None:
    _, _, root = built
    first = feedparser.parse((root / "all.atom").read_bytes()).entries[0]  # newest first
    assert first.title == "Persistent Gray Zone Aggression in the South China Sea Calls for Increased Coordination in Rule of Law"
    assert first.author == "Aiko Tanabrook"
    assert first.summary.startswith("Washington is ceding influence")
    assert first.link == "http://127.0.0.1:8000/publications/2024-04-16-gray-zone-aggression-south-china-sea-rule-of-law/"  # its page on the site
    assert [t.label for t in first.tags] == ["Commentary", "Security Cooperation"]


@pytest.mark.parametrize("kind", ["atom", "rss"])
def test_what_the_w3c_validator_checks(built, kind: str) -> None:
    cfg, _, root = built
    for path in feeds(root, kind):
        doc = etree.fromstring(path.read_bytes())
        self_url = f"http://127.0.0.1:8000/feeds/{path.relative_to(root).with_suffix('').as_posix()}.{kind}"
        text = path.read_text(encoding="utf-8")
        assert "media:group" not in text and 'rel="enclosure"' not in text
        if kind == "atom":
            assert validate_atom(path.read_bytes()) == [], path
            links = doc.findall(f"{A}link")
            assert [(l.get("rel"), l.get("href")) for l in links if l.get("rel") == "self"] == [("self", self_url)]
            assert len([l for l in links if l.get("rel") == "alternate"]) == 1
            assert doc.find(f"{A}author/{A}name") is not None  # covers entries without an author
            entries = doc.findall(f"{A}entry")
            ids = [e.findtext(f"{A}id") for e in entries]
            updated = [e.findtext(f"{A}updated") for e in entries]
            for e in entries:
                alternates = [l for l in e.findall(f"{A}link") if l.get("rel") == "alternate"]
                assert len(alternates) == 1 and alternates[0].get("type") == "text/html"  # feedgen #135
                _check_html(e.findtext(f"{A}content") or "")
            assert doc.findtext(f"{A}updated") == max(updated)  # the newest entry, not the build time
        else:
            channel = doc.find("channel")
            assert channel.findtext("link") != self_url and channel.findtext("link").startswith("http://127.0.0.1:8000/")
            atom_self = channel.find(f"{A}link")
            assert atom_self.get("rel") == "self" and atom_self.get("href") == self_url
            items = channel.findall("item")
            ids = [i.findtext("guid") for i in items]
            updated = [i.findtext("pubDate") for i in items]
            for item in items:
                assert item.find("guid").get("isPermaLink") == "false"  # a urn:uuid is not a URL
                parsedate_to_datetime(item.findtext("pubDate"))  # RFC 822
                assert item.find("author") is None  # RSS author must be an email; names go to dc:creator
                _check_html(item.findtext("{http://purl.org/rss/1.0/modules/content/}encoded") or "")
            parsedate_to_datetime(channel.findtext("lastBuildDate"))
        assert len(ids) == len(set(ids)), path
        assert len(updated) == len(set(updated)), path  # no two entries with the same update time


def _check_html(html: str) -> None:
    assert "<script" not in html.lower()
    for url in re.findall(r'(?:href|src)="([^"]*)"', html):
        assert url.startswith(("https://", "http://", "mailto:")), url


def test_json_feed_is_json_feed_1_1(built) -> None:
    _, store, root = built
    for path in feeds(root, "json"):
        data = json.loads(path.read_bytes())
        assert data["version"] == "https://jsonfeed.org/version/1.1"
        assert data["feed_url"].endswith(path.relative_to(root).as_posix())
        for item in data["items"]:
            assert {"id", "url", "title", "content_html", "date_published", "date_modified", "tags"} <= set(item)
    brief = json.loads((root / "types" / "research-brief.json").read_bytes())
    assert [i["title"] for i in brief["items"]] == ["A Leader's Guide to Interoperability"]
    assert "image" not in brief["items"][0]


def test_feed_metadata(built) -> None:
    _, _, root = built
    topic = feedparser.parse((root / "topics" / "security-cooperation.atom").read_bytes())
    assert topic.feed.title == "Publisher Sample Institute: Security Cooperation"
    assert topic.feed.subtitle.startswith("Analysis of how")
    assert topic.feed.language == "en" and topic.feed.icon == "http://127.0.0.1:8000/media/icon.png"
    assert topic.feed.generator == "publisher"
    assert topic.feed.link == "http://127.0.0.1:8000/topics/security-cooperation/"
    assert topic.feed.updated_parsed[:3] == (2024, 4, 16)
    assert len(topic.entries) == 22


def test_item_limit(built, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg, store, root = built
    from dataclasses import replace

    small = replace(cfg, feeds=replace(cfg.feeds, item_limit=5))
    FeedBuilder(small).build(store)
    assert len(feedparser.parse((root / "all.rss").read_bytes()).entries) == 5


def test_rebuild_is_byte_identical_and_writes_nothing(built) -> None:
    cfg, store, root = built
    before = {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in root.rglob("*") if p.is_file()}
    assert run_feeds(cfg, store) == []
    assert FeedBuilder(cfg).build(store) == []  # a fresh builder (no cache) agrees byte for byte
    assert {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in root.rglob("*") if p.is_file()} == before
    assert not list(root.rglob(".*.tmp"))


def test_one_new_publication_rewrites_only_the_feeds_that_hold_it(cfg: Config, project: Path) -> None:
    store = open_store(cfg.store_url)
    builder = FeedBuilder(cfg)
    run_feeds(cfg, store, run_ingest(cfg, store, NOW), builder)
    root = cfg.path(cfg.feeds.output_dir)
    before = {p: p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()}
    misses = builder.cache.misses
    (project / "content" / "publications" / "2024-05-01-new.md").write_text(
        '+++\ntitle = "A New Report"\ndate = 2024-05-01T12:00:00Z\ncontent_type = "Multimedia"\ntopics = ["security-cooperation"]\n+++\nBody.\n',
        encoding="utf-8")
    report = run_ingest(cfg, store, NOW)
    assert report.new == ["publications/2024-05-01-new"]
    changed = {p.relative_to(root).as_posix() for p in run_feeds(cfg, store, report, builder)}
    stems = ("all", "topics/security-cooperation", "types/multimedia")
    assert changed == {f"{s}.{f}" for s in stems for f in ("rss", "atom", "json")}
    untouched = [p for p in before if p.relative_to(root).as_posix() not in changed]
    assert untouched and all(p.stat().st_mtime_ns == before[p] for p in untouched)
    assert builder.cache.misses - misses == 3  # one new entry per format; the rest came from the cache
    store.close()


def test_entry_ids_do_not_change_with_title_or_url(built) -> None:
    cfg, store, _ = built
    from dataclasses import replace

    pub = store.publications(limit=1)[0]
    same = replace(pub, title="Another title", url="http://127.0.0.1:8000/elsewhere")
    assert entry_id(cfg.site.base_url, pub) == entry_id(cfg.site.base_url, same)


def test_site_pages_carry_feed_autodiscovery(built) -> None:
    cfg, _, _ = built
    page = (cfg.path(cfg.site.public_dir) / "topics" / "security-cooperation" / "index.html").read_text(encoding="utf-8")
    for kind, media_type in (("rss", "application/rss+xml"), ("atom", "application/atom+xml"), ("json", "application/feed+json")):
        assert f'<link rel="alternate" type="{media_type}" title="Publisher Sample Institute: Security Cooperation' in page
        assert f'href="http://127.0.0.1:8000/feeds/topics/security-cooperation.{kind}"' in page
    home = (cfg.path(cfg.site.public_dir) / "index.html").read_text(encoding="utf-8")
    assert 'href="http://127.0.0.1:8000/feeds/all.atom"' in home and '<html lang="en">' in home
