"""The readers' site as files: what each page holds, how pages split, what a rebuild writes, hostile data and config.

The browser's view (axe-core, overflow, sign-up, search) is tests/test_site_browser.py.
"""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from pathlib import Path

import lxml.html
import pytest

from publisher.config import Config, load_config
from publisher.errors import ConfigError
from publisher.models import Publication
from publisher.pipeline import run_feeds, run_ingest, run_site, send_digest
from publisher.site import own_page, paginate, script_json
from publisher.store import Store, open_store
from subscribers import seed_samples

from .conftest import NOW

TOPIC = "topics/security-cooperation/index.html"
NEW_POST = """+++
title = "A New Look at Arctic Security"
date = 2026-11-30T09:00:00Z
content_type = "Research Brief"
topics = ["security-cooperation"]
authors = ["Ada Quill"]
summary = "What melting sea ice means for the alliances of the north."
+++

The body of the new brief.
"""


@pytest.fixture
def built(cfg: Config) -> tuple[Config, Store]:
    store = open_store(cfg.store_url)
    run_feeds(cfg, store, run_ingest(cfg, store, NOW))
    run_site(cfg, store)
    yield cfg, store
    store.close()


def page(cfg: Config, rel: str) -> lxml.html.HtmlElement:
    return lxml.html.fromstring((cfg.path(cfg.site.public_dir) / rel).read_bytes())


def texts(root: lxml.html.HtmlElement, xpath: str) -> list[str]:
    return [" ".join(e.text_content().split()) for e in root.xpath(xpath)]


def pub(n: int) -> Publication:
    when = datetime(2024, 1, 1, tzinfo=timezone.utc) + timedelta(days=n)
    return Publication(id=f"p{n}", url=f"https://x.example/{n}", title=f"P{n}", summary="", content_type="Commentary", published_at=when, updated_at=when)


# -- what a page holds -------------------------------------------------------------------------------------------------


def test_a_topic_page_shows_the_seed_featured_first_then_every_publication_newest_first(built: tuple[Config, Store]) -> None:
    cfg, store = built
    root = page(cfg, TOPIC)
    assert texts(root, "//h1") == ["Security Cooperation"]
    assert "NATO" in texts(root, "//p[@class='intro']")[0]  # the topic's description, from content/topics/
    featured = texts(root, "//section[@class='featured']//h3")
    assert featured == ["Yes to Striking Iranian-Backed Militants", "From Forward Presence to Forward Defense: NATO's Defense of the Baltics"]
    listed = root.xpath("//section[@class='list']//article")
    held = store.publications(topic="security-cooperation")
    assert [" ".join(a.xpath(".//h3")[0].text_content().split()) for a in listed] == [p.title for p in held]  # all 22, newest first
    assert len(listed) == 22 and root.xpath("//section[@class='featured']")[0].getparent().index(root.xpath("//section[@class='featured']")[0]) < \
        root.xpath("//section[@class='list']")[0].getparent().index(root.xpath("//section[@class='list']")[0])
    first = listed[0]  # Apr 16, 2024: the gray-zone commentary, with its image
    assert texts(first, ".//p[@class='kind']") == ["Commentary"] and texts(first, ".//time") == ["Apr 16, 2024"]
    assert first.xpath(".//time/@datetime") == ["2024-04-16"] and texts(first, ".//p[@class='meta']")[0].endswith("Aiko Tanabrook")
    img = first.xpath(".//figure/img")[0]
    assert img.get("src") == "http://127.0.0.1:8000/media/images/gray-zone-aggression-south-china-sea-rule-of-law.png" and img.get("alt")
    caption = texts(first, ".//figcaption")[0]
    assert caption.startswith("Coast Guard patrol craft") and "Photo: Mass Communication Specialist 2nd Class Kevin J. Steinberg/U.S. Navy" in caption
    imageless = [a for a in listed if not a.xpath(".//figure")]
    assert imageless, "the seed has items without an image (the research brief, the multimedia item)"
    # The feeds of the page, for feed readers and autodiscovery
    assert root.xpath("//link[@rel='alternate']/@href") == [f"http://127.0.0.1:8000/feeds/topics/security-cooperation.{f}" for f in ("rss", "atom", "json")]


def test_every_publication_of_content_has_its_page_with_body_image_topics_and_structured_data(built: tuple[Config, Store]) -> None:
    cfg, store = built
    pubs = store.publications()
    assert all(own_page(cfg, p) for p in pubs)  # the sample content has no url: of its own, so each is published here
    gray = next(p for p in pubs if p.title.startswith("Persistent Gray Zone"))
    rel = own_page(cfg, gray).strip("/") + "/index.html"
    root = page(cfg, rel)
    assert texts(root, "//h1") == [gray.title] and texts(root, "//p[@class='topics']") == ["Topics: Security Cooperation"]
    assert root.xpath("//p[@class='topics']/a/@href") == ["http://127.0.0.1:8000/topics/security-cooperation/"]
    assert "Photo: Mass Communication Specialist" in texts(root, "//article//figcaption")[0]
    assert root.xpath("//article//div[@class='body']/p")  # the Markdown body
    canonical = f"http://127.0.0.1:8000{own_page(cfg, gray)}"
    assert root.xpath("//link[@rel='canonical']/@href") == [canonical] == root.xpath("//meta[@property='og:url']/@content")
    assert root.xpath("//meta[@property='og:type']/@content") == ["article"] and root.xpath("//meta[@property='og:image']/@content") == [gray.image.url]
    assert root.xpath("//meta[@name='twitter:card']/@content") == ["summary_large_image"]
    ld = json.loads(root.xpath("//script[@type='application/ld+json']")[0].text)
    assert ld["@type"] == "Article" and ld["headline"] == gray.title and ld["url"] == canonical and ld["image"] == [gray.image.url]
    assert ld["author"] == [{"@type": "Person", "name": a} for a in gray.authors] and ld["datePublished"] == gray.published.isoformat()
    # the listing links to the page; the feeds' links are the same address
    assert canonical in page(cfg, TOPIC).xpath("//section[@class='list']//h3/a/@href")


def test_a_remote_publication_is_linked_where_it_was_published_and_gets_no_page(cfg: Config) -> None:
    ours = replace(pub(1), source=next(n for n, sc in cfg.sources.items() if sc.kind == "files"))
    assert own_page(cfg, replace(ours, url="https://partner.example/report")) is None
    for url in ("http://127.0.0.1:8000/publications/../../etc/", "http://127.0.0.1:8000/publications/a/b/", "http://127.0.0.1:8000/publications/x?y/",
                "http://127.0.0.1:8000/publications//", "http://127.0.0.1:8000/publications/%2e%2e/"):
        assert own_page(cfg, replace(ours, url=url)) is None, url
    assert own_page(cfg, replace(ours, url="http://127.0.0.1:8000/publications/a%20b/")) == "/publications/a b/"
    # A partner's feed item that links to a page of ours is still the partner's: no page on our domain for it
    assert own_page(cfg, replace(ours, source="partner-feed", url="http://127.0.0.1:8000/publications/about/")) is None


def test_a_remote_item_naming_one_of_our_pages_neither_gets_a_page_nor_overwrites_ours(built: tuple[Config, Store]) -> None:
    cfg, store = built
    target = "publications/2024-04-16-gray-zone-aggression-south-china-sea-rule-of-law/index.html"
    before = (cfg.path(cfg.site.public_dir) / target).read_bytes()
    squatter = replace(pub(0), id="partner:1", source="partner-feed", title="Squatter", url="http://127.0.0.1:8000/" + target[:-len("index.html")],
                       first_seen_at=NOW)
    store.upsert_publication(squatter, NOW)
    report = run_site(cfg, store)
    assert (cfg.path(cfg.site.public_dir) / target).read_bytes() == before
    assert not any("publications/" in p.as_posix() for p in report.written)


def test_a_stored_link_or_image_that_is_not_http_never_reaches_a_page(built: tuple[Config, Store]) -> None:
    cfg, store = built
    from publisher.models import Image

    hostile = replace(pub(1), id="hostile", url="javascript:alert(1)", title="<script>alert(2)</script>Hostile", summary="<img src=x onerror=alert(3)>ok",
                      image=Image(url="javascript:alert(4)", alt='" onload="alert(5)'), first_seen_at=NOW)
    store.upsert_publication(hostile, NOW)
    run_site(cfg, store)
    html = (cfg.path(cfg.site.public_dir) / "index.html").read_text(encoding="utf-8")
    assert "javascript:" not in html and "<script>alert" not in html and "onerror" not in html and 'onload="' not in html
    assert "Hostile" in html


def test_structured_data_cannot_end_its_script_element() -> None:
    text = script_json({"headline": "</script><script>alert(1)</script><!--", "x": "\u2028"})
    assert "<" not in text and ">" not in text and "\u2028" not in text
    assert json.loads(text)["headline"] == "</script><script>alert(1)</script><!--"


# -- pagination ----------------------------------------------------------------------------------------------------------


def test_pages_are_counted_from_the_oldest_so_a_new_publication_moves_nothing_between_archived_pages() -> None:
    size = 5
    pubs = [pub(n) for n in range(23, -1, -1)]  # 24, newest first
    front, archived = paginate(pubs, size)
    assert [len(p) for p in archived] == [5, 5, 5] and len(front) == 9  # the front page: page_size to twice that less one
    assert archived[0][-1].id == "p0" and front[0].id == "p23"
    for n in range(24, 40):
        pubs.insert(0, pub(n))
        grown_front, grown = paginate(pubs, size)
        assert grown[:len(archived)] == archived  # what was archived stays exactly as it was
        assert size <= len(grown_front) < 2 * size and sum(map(len, grown)) + len(grown_front) == len(pubs)
        archived = grown
    assert paginate([pub(1), pub(0)], size) == ([pub(1), pub(0)], [])


def test_a_long_listing_splits_into_pages_linked_both_ways(project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PUBLISHER_SITE__PAGE_SIZE", "5")  # the sample's 22 publications: a front page and three archived ones
    cfg = load_config(project / "config.toml")
    store = open_store(cfg.store_url)
    run_ingest(cfg, store, NOW)
    run_site(cfg, store)
    base = "http://127.0.0.1:8000/topics/security-cooperation/"
    front = page(cfg, TOPIC)
    assert len(front.xpath("//section[@class='list']//article")) == 7 and front.xpath("//nav[@class='pages']//a/@href") == [base + "page/3/"]
    seen = texts(front, "//section[@class='list']//h3")
    for number in (3, 2, 1):
        archived = page(cfg, f"topics/security-cooperation/page/{number}/index.html")
        assert not archived.xpath("//section[@class='featured']") and archived.xpath("//link[@rel='canonical']/@href") == [f"{base}page/{number}/"]
        links = dict(zip(texts(archived, "//nav[@class='pages']//a"), archived.xpath("//nav[@class='pages']//a/@href")))
        assert links["Latest"] == base and links["Newer"] == f"{base}page/{number + 1}/" and links.get("Older") == (f"{base}page/{number - 1}/" if number > 1 else None)
        seen += texts(archived, "//section[@class='list']//h3")
    assert seen == [p.title for p in store.publications()]  # each once, newest to oldest
    forward = (cfg.path(cfg.site.public_dir) / "topics/security-cooperation/page/4/index.html").read_text(encoding="utf-8")
    assert f'content="0; url={base}"' in forward  # the newest archived page's "Newer": on to the front page
    store.close()


# -- a rebuild writes only what changed ----------------------------------------------------------------------------------


def test_a_rebuild_of_unchanged_content_writes_no_file(built: tuple[Config, Store]) -> None:
    cfg, store = built
    public = cfg.path(cfg.site.public_dir)
    before = {p: p.stat().st_mtime_ns for p in public.rglob("*") if p.is_file()}
    report = run_site(cfg, store)
    assert report.written == [] and report.removed == [] and report.files > 30
    assert {p: p.stat().st_mtime_ns for p in public.rglob("*") if p.is_file()} == before


def test_a_page_edited_by_hand_or_a_template_changed_is_made_again(built: tuple[Config, Store]) -> None:
    """An unchanged page is not even rendered again (its mark holds what it was made from and a hash of its bytes):
    but a page someone edited is repaired, and a changed template reaches every page."""
    cfg, store = built
    public = cfg.path(cfg.site.public_dir)
    topic = public / TOPIC
    good = topic.read_bytes()
    topic.write_bytes(good.replace(b"Security Cooperation</h1>", b"Hacked</h1>"))
    assert run_site(cfg, store).written == [topic] and topic.read_bytes() == good
    template = cfg.path(cfg.site.templates_dir) / "web" / "site" / "macros.html.j2"
    template.write_text(template.read_text(encoding="utf-8").replace("Get the weekly digest", "Get our weekly digest"), encoding="utf-8")
    report = run_site(cfg, store)
    pages = [p for p in report.written if p.name == "index.html" and "pagefind" not in p.parts]
    assert len(pages) >= 30 and all(b"Get our weekly digest" in p.read_bytes() for p in pages)


def test_one_new_publication_rewrites_only_the_pages_that_show_it(built: tuple[Config, Store]) -> None:
    cfg, store = built
    public = cfg.path(cfg.site.public_dir)
    (cfg.path("content") / "publications" / "2026-11-30-arctic.md").write_text(NEW_POST, encoding="utf-8")
    run_feeds(cfg, store, run_ingest(cfg, store, NOW + timedelta(days=3)))
    report = run_site(cfg, store)
    pages = {p.relative_to(public).as_posix() for p in report.written if not p.relative_to(public).as_posix().startswith("pagefind/")}
    assert pages == {"index.html", TOPIC, "types/research-brief/index.html", "publications/2026-11-30-arctic/index.html"}, pages
    assert "A New Look at Arctic Security" in texts(page(cfg, TOPIC), "//section[@class='list']//h3")[0]


# -- the digest archive -------------------------------------------------------------------------------------------------


def test_the_archive_lists_every_issue_and_each_links_the_previous_and_the_next(built: tuple[Config, Store]) -> None:
    cfg, store = built
    seed_samples(store, cfg.subscribers.sample_subscribers, NOW)  # the config's three, to the local outbox
    first = send_digest(cfg, store, NOW)
    (cfg.path("content") / "publications" / "2026-11-30-arctic.md").write_text(NEW_POST, encoding="utf-8")
    run_ingest(cfg, store, NOW + timedelta(days=7))
    second = send_digest(cfg, store, NOW + timedelta(days=7))
    assert first.issue_id != second.issue_id and first.sent and second.sent
    run_site(cfg, store)
    digests = page(cfg, "digests/index.html")
    assert digests.xpath("//ol[@class='issues']/li/a/@href") == [f"http://127.0.0.1:8000/digests/{i}.html" for i in (second.issue_id, first.issue_id)]
    older, newer = page(cfg, f"digests/{first.issue_id}.html"), page(cfg, f"digests/{second.issue_id}.html")
    assert older.xpath("//nav[@aria-label='Digest archive']//a[@rel='next']/@href") == [f"http://127.0.0.1:8000/digests/{second.issue_id}.html"]
    assert older.xpath("//nav[@aria-label='Digest archive']//a[@rel='prev']") == []
    assert newer.xpath("//nav[@aria-label='Digest archive']//a[@rel='prev']/@href") == [f"http://127.0.0.1:8000/digests/{first.issue_id}.html"]
    assert len(newer.xpath("//nav[@aria-label='Digest archive']")) == 1  # linked again: replaced, not added twice
    assert run_site(cfg, store).written == []


# -- the theme, from config: strict --------------------------------------------------------------------------------------


@pytest.mark.parametrize(("key", "value", "says"), [
    ("ACCENT_COLOR", "red; } body { display: none", "expected a colour like '#0b5cad'"),
    ("TEXT_COLOR", "#bbbbbb", "contrast of 1.9:1"),
    ("ACCENT_COLOR", "#7fb2e5", "4.5:1 (WCAG 2.1 AA)"),
    ("FONT_FAMILY", "x; } * { background: url(https://evil.example/) }", "expected a CSS font list"),
    ("LOGO", "javascript:alert(1)", "expected a path on the site like '/media/logo.svg'"),
    ("PAGE_SIZE", "0", "expected 1 to 500 publications a page"),
], ids=["colour-injection", "low-contrast-text", "low-contrast-links", "font-injection", "logo-scheme", "page-size"])
def test_a_theme_that_would_break_the_page_or_its_contrast_is_refused_by_name(project: Path, monkeypatch: pytest.MonkeyPatch,
                                                                               key: str, value: str, says: str) -> None:
    monkeypatch.setenv(f"PUBLISHER_SITE__{key}", value)
    with pytest.raises(ConfigError) as caught:
        load_config(project / "config.toml")
    assert says in str(caught.value) and f"site.{key.lower()}" in str(caught.value)


def test_the_theme_reaches_the_one_stylesheet_and_every_page_links_its_version(project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PUBLISHER_SITE__ACCENT_COLOR", "#8a1538")
    monkeypatch.setenv("PUBLISHER_SITE__LOGO", "/media/icon.png")
    cfg = load_config(project / "config.toml")
    store = open_store(cfg.store_url)
    run_ingest(cfg, store, NOW)
    run_site(cfg, store)
    css = (cfg.path(cfg.site.public_dir) / "assets" / "site.css").read_text(encoding="utf-8")
    assert "--accent: #8a1538" in css and len(css.encode()) < 8_000
    assert 'font: 17px/1.55 Georgia, "Times New Roman", serif;' in css  # CSS, not HTML: the quotes stay quotes
    home = page(cfg, "index.html")
    href = home.xpath("//link[@rel='stylesheet']/@href")[0]
    assert re.fullmatch(r"/assets/site\.css\?v=[0-9a-f]{10}", href) and not home.xpath("//style")  # by path: from where it was served
    assert home.xpath("//a[@class='brand']/img/@src") == ["http://127.0.0.1:8000/media/icon.png"]
    store.close()


# -- what the site writes and removes stays inside public/ ----------------------------------------------------------------


def test_stale_pages_go_but_a_symlink_planted_in_the_sites_folders_is_neither_followed_nor_removed(built: tuple[Config, Store], tmp_path: Path) -> None:
    cfg, store = built
    public = cfg.path(cfg.site.public_dir)
    outside = tmp_path / "outside"
    (outside / "x").mkdir(parents=True)
    (outside / "x" / "index.html").write_text("keep me", encoding="utf-8")
    (public / "topics" / "planted").symlink_to(outside, target_is_directory=True)
    (public / "topics" / "gone").mkdir()
    (public / "topics" / "gone" / "index.html").write_text("a topic that is no more", encoding="utf-8")
    report = run_site(cfg, store)
    assert report.removed == [public / "topics" / "gone" / "index.html"] and not (public / "topics" / "gone").exists()
    assert (outside / "x" / "index.html").read_text(encoding="utf-8") == "keep me" and (public / "topics" / "planted").is_symlink()


def test_a_symlinked_search_folder_is_refused_and_what_it_points_at_is_left_alone(built: tuple[Config, Store], tmp_path: Path) -> None:
    from publisher.site import search_engine

    cfg, store = built
    if search_engine() is None:
        pytest.skip("Pagefind is not installed (pip install -e '.[test]')")
    public = cfg.path(cfg.site.public_dir)
    shutil.rmtree(public / "pagefind")
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (outside / "precious.txt").write_text("mine", encoding="utf-8")
    (public / "pagefind").symlink_to(outside, target_is_directory=True)
    (cfg.path("content") / "publications" / "2026-11-30-arctic.md").write_text(NEW_POST, encoding="utf-8")
    run_ingest(cfg, store, NOW + timedelta(days=3))
    report = run_site(cfg, store)
    assert report.search.startswith("error:") and "symlink" in report.search
    assert [p.name for p in outside.iterdir()] == ["precious.txt"]


def test_the_search_policy_cannot_be_pulled_onto_another_file_and_media_is_sandboxed() -> None:
    from publisher.web.security import site_policy

    policy = site_policy("http://127.0.0.1:8000")
    assert "script-src 'self' 'wasm-unsafe-eval'" in policy.for_path("/search/")["Content-Security-Policy"]
    for path in ("/search/../media/evil.svg", "/pagefind/../media/evil.svg", "/search/../../topics/"):
        assert "script-src" not in policy.for_path(path)["Content-Security-Policy"], path
    media = policy.for_path("/media/images/x.svg")["Content-Security-Policy"]
    assert media.startswith("sandbox;") and "form-action 'none'" in media and "script-src" not in media


def test_without_pagefind_the_site_still_builds_and_says_search_is_off(project: Path) -> None:
    """`publisher run --once` where Pagefind is not installed: a Python whose import of pagefind_bin fails (as without
    the package) and a PATH with no pagefind on it."""
    import subprocess
    import sys

    from .test_delivery_faults import env_for

    runner = ("import sys; sys.modules['pagefind_bin'] = None; from publisher.cli import main; "
              "sys.exit(main(['run', '--once'], prog_name='publisher'))")
    env = env_for(PATH="/usr/bin:/bin")
    done = subprocess.run([sys.executable, "-c", runner], cwd=project, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert 'search off: Pagefind is not installed (pip install "publisher[search]")' in done.stdout, done.stdout
    search = (project / "public" / "search" / "index.html").read_text(encoding="utf-8")
    assert "Search is off on this site" in search and "pagefind" not in search and not (project / "public" / "pagefind").exists()
    assert (project / "public" / "topics" / "security-cooperation" / "index.html").is_file()
