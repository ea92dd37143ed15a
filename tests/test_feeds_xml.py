"""Each feedgen 1.0.0 bug we work around, pinned by a test on what we write."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
from lxml import etree

from publisher.config import Config
from publisher.feeds import FeedBuilder, FeedSpec
from publisher.models import Image, Publication

from .conftest import NOW

A = "{http://www.w3.org/2005/Atom}"
SPEC = FeedSpec("all", "Site", "Everything", "/")


def pub(n: int, **kw: object) -> Publication:
    when = datetime(2024, 3, 1, 12, tzinfo=timezone.utc) + timedelta(days=n)
    fields: dict[str, object] = dict(id=f"p{n}", url=f"http://127.0.0.1:8000/p/{n}", title=f"Title {n}", summary="S",
                                     content_type="Report", published_at=when, updated_at=when, authors=("A. Author",),
                                     image=Image(f"http://127.0.0.1:8000/media/{n}.jpg", "alt", "cap", "credit"), first_seen_at=NOW)
    fields.update(kw)
    return Publication(**fields)  # type: ignore[arg-type]


@pytest.fixture
def render(cfg: Config):
    builder = FeedBuilder(cfg)
    return lambda fmt, pubs: etree.fromstring(builder.render(SPEC, fmt, pubs))


def test_atom_entry_links_keep_rel_and_type(render) -> None:  # feedgen #135
    [link] = render("atom", [pub(1)]).findall(f"{A}entry/{A}link")
    assert (link.get("rel"), link.get("type"), link.get("href")) == ("alternate", "text/html", "http://127.0.0.1:8000/p/1")


def test_images_are_media_rss_never_enclosures(render) -> None:  # an enclosure breaks feedgen's Atom links
    for fmt in ("atom", "rss"):
        doc = render(fmt, [pub(1)])
        assert not doc.xpath("//*[local-name()='link' and @rel='enclosure'] | //enclosure")
        content = doc.find(".//{http://search.yahoo.com/mrss/}content")
        assert content.get("url") == "http://127.0.0.1:8000/media/1.jpg" and content.get("type") == "image/jpeg"
        assert content.getparent().tag in (f"{A}entry", "item")  # not wrapped in media:group


def test_rss_channel_link_is_the_site_page_not_the_feed(render) -> None:  # feedgen takes the last link added
    assert render("rss", [pub(1)]).findtext("channel/link") == "http://127.0.0.1:8000/"


def test_entries_keep_the_given_order(render) -> None:  # add_entry prepends by default
    pubs = [pub(3), pub(2), pub(1)]
    assert [e.findtext(f"{A}title") for e in render("atom", pubs).findall(f"{A}entry")] == ["Title 3", "Title 2", "Title 1"]
    assert [i.findtext("title") for i in render("rss", pubs).findall("channel/item")] == ["Title 3", "Title 2", "Title 1"]


def test_updated_is_never_the_build_time(render) -> None:  # feedgen defaults updated and lastBuildDate to now
    newest = pub(2, updated_at=datetime(2024, 5, 1, 9, tzinfo=timezone.utc))
    atom = render("atom", [newest, pub(1)])
    assert atom.findtext(f"{A}updated") == "2024-05-01T09:00:00+00:00"
    assert render("rss", [newest, pub(1)]).findtext("channel/lastBuildDate") == "Wed, 01 May 2024 09:00:00 +0000"
    empty = render("atom", [])
    assert empty.findtext(f"{A}updated") == "1970-01-01T00:00:00+00:00"


def test_spliced_entries_use_the_documents_namespace_prefixes(cfg: Config) -> None:
    text = FeedBuilder(cfg).render(SPEC, "rss", [pub(1)]).decode()
    item = text[text.index("<item>"):text.index("</item>")]
    assert "xmlns" not in item  # declared once, on <rss>
    assert "<dc:creator>A. Author</dc:creator>" in item and "<media:credit>credit</media:credit>" in item


def test_entries_are_cached_per_publication_and_format(cfg: Config) -> None:
    builder = FeedBuilder(cfg)
    first = builder.render(SPEC, "atom", [pub(1), pub(2)])
    assert builder.cache.misses == 2
    assert builder.render(SPEC, "atom", [pub(1), pub(2)]) == first and builder.cache.misses == 2
    builder.render(SPEC, "atom", [pub(1, title="Changed")])
    assert builder.cache.misses == 3  # an edited publication is a new key


def test_a_new_process_reuses_the_entries_kept_in_the_store(cfg: Config, tmp_path) -> None:
    from publisher.models import Topic
    from publisher.store import open_store

    store = open_store(f"sqlite:///{tmp_path / 's.db'}")
    store.upsert_topic(Topic("t", "Topic"))
    for n in range(3):
        store.upsert_publication(pub(n, topics=("t",)), NOW)
    first = FeedBuilder(cfg)
    first.build(store)
    out = cfg.path(cfg.feeds.output_dir)
    written = {p: p.read_bytes() for p in out.rglob("*.*")}
    second = FeedBuilder(cfg)  # as a new process would
    second.build(store)
    assert second.cache.misses == 0 and {p: p.read_bytes() for p in out.rglob("*.*")} == written
    store.upsert_topic(Topic("t", "Renamed topic"))  # a renamed topic changes the entries' labels
    third = FeedBuilder(cfg)
    third.build(store)
    assert third.cache.misses == 3 * len(cfg.feeds.formats)
    assert b'label="Renamed topic"' in (out / "all.atom").read_bytes()
    store.close()
