"""Issue 11, point 2, the other side: every path we write from data stays under its root, even from a bad store.

The writers (feeds, site pages, media copies, digest web copies) check each path themselves, so a slug that
reached the store some other way (an old database, a source that skipped the check) is refused and reported,
and the other feeds and pages are still written. Config and remote sources are held to the same slugs.
"""

from __future__ import annotations

import dataclasses
import logging
import mailbox
import os
from pathlib import Path

import pytest
from click.testing import CliRunner
from hypothesis import given
from hypothesis import strategies as st

from publisher.cli import main
from publisher.config import Config, load_config
from publisher.errors import ConfigError
from publisher.feeds import FeedBuilder, FeedSpec, slugify
from publisher.fsutil import PathRefused, is_slug, safe_join
from publisher.ingest import build_sources, ingest
from publisher.models import Topic
from publisher.pipeline import run_feeds, run_ingest, run_site, send_digest
from publisher.site import build_site
from publisher.sources.remote import FeedSource, Fetcher
from publisher.store import Store, open_store
from subscribers import seed_samples

from .conftest import NOW, TEST_SECRET_KEY
from .servers import recording_server

FORMATS = ("atom", "json", "rss")


def pwned(root: Path) -> list[Path]:
    """Anything an escape made outside public/, in the test's folder or beside it."""
    found = [*root.rglob("*pwned*"), *root.parent.glob("*pwned*")]
    return [p for p in found if not (p.is_relative_to(root) and "public" in p.relative_to(root).parts)]


# -- the helper ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["../x.rss", "topics/../../x.rss", "/etc/passwd", "a/\x00/b", "x" * 256, ".."])
def test_safe_join_refuses_every_way_out(tmp_path: Path, name: str) -> None:
    with pytest.raises(PathRefused) as info:
        safe_join(tmp_path / "public", name)
    assert str(tmp_path / "public") in str(info.value)


def test_safe_join_refuses_a_symlink_on_disk_that_leads_out_and_keeps_the_rest(tmp_path: Path) -> None:
    public, outside = tmp_path / "public", tmp_path / "outside"
    (public / "feeds").mkdir(parents=True)
    outside.mkdir()
    (public / "feeds" / "topics").symlink_to(outside, target_is_directory=True)
    (public / "feeds" / "inner").symlink_to(public / "feeds", target_is_directory=True)
    with pytest.raises(PathRefused, match="outside"):
        safe_join(public, "feeds/topics/x.rss")
    assert safe_join(public, "feeds/inner/x.rss") == public / "feeds" / "inner" / "x.rss"  # a link that stays inside
    assert safe_join(public, "", "index.html") == public / "index.html"
    assert safe_join(public, "feeds/topics-2/a.rss").relative_to(public).as_posix() == "feeds/topics-2/a.rss"


@given(st.text())
def test_slugify_makes_a_slug_of_any_text(text: str) -> None:
    slug = slugify(text)
    assert is_slug(slug), (text, slug)
    assert slugify(text) == slug  # the same type always has the same feed


def test_types_without_ascii_letters_get_distinct_feeds() -> None:
    assert slugify("Research Brief") == "research-brief" and slugify("../../etc/passwd") == "etc-passwd"
    assert slugify("Отчёт") != slugify("Доклад") and slugify("!!!") != slugify("???")


# -- defence in depth: a store that holds what no source would give today ---------------------------------


def old_store(cfg: Config, store: Store, outside: Path) -> None:
    """The sample ingested, then rows an older version (or a hand edit) could have left."""
    run_ingest(cfg, store, NOW)
    for slug in ("../../../../pwned-topic", f"{outside}/pwned-abs", "a/b", "Bad Slug"):
        store.upsert_topic(Topic(slug=slug, name=f"Bad {slug}", description=""))
    [sample] = store.publications(ids=["publications/2024-02-26-yes-to-striking-iranian-backed-militants"])
    for n, ctype in enumerate(("../../../../pwned-type", "Отчёт", "Research brief")):
        store.upsert_publication(dataclasses.replace(sample, id=f"old/{n}", content_type=ctype), NOW)


def test_feeds_and_pages_from_a_hostile_store_stay_inside_and_the_rest_is_written(
        cfg: Config, store: Store, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    old_store(cfg, store, outside)
    before = sorted(os.listdir(tmp_path))
    with caplog.at_level(logging.ERROR):
        run_feeds(cfg, store)
        run_site(cfg, store)
    assert pwned(tmp_path) == [] and list(outside.iterdir()) == [] and sorted(os.listdir(tmp_path)) == sorted({*before, "public"})
    for slug in ("../../../../pwned-topic", "a/b", "Bad Slug"):
        assert any(f"no feed for topic {slug!r}, nor a page: {slug!r} is not a slug" in r.getMessage() for r in caplog.records), slug
    assert any("'Research brief'" in r.getMessage() and "taken by 'Research Brief'" in r.getMessage() for r in caplog.records)
    feeds, public = cfg.path(cfg.feeds.output_dir), cfg.path(cfg.site.public_dir)
    assert sorted(p.name for p in (feeds / "topics").iterdir()) == [f"security-cooperation.{f}" for f in FORMATS]
    types = sorted(p.stem for p in (feeds / "types").glob("*.atom"))
    assert types == sorted(["commentary", "multimedia", "pwned-type", "research-brief", slugify("Отчёт")])
    assert (public / "types" / "pwned-type" / "index.html").is_file() and (public / "index.html").is_file()
    assert (public / "topics" / "security-cooperation" / "index.html").is_file()


def test_the_writers_themselves_refuse_a_path_that_leaves(cfg: Config, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Past feed_specs' check: a spec built by hand (or by a future bug) still cannot write outside."""
    escape = FeedSpec("topics/../../../pwned", "x", "x", "/topics/../../../pwned/", topic="x")
    absolute = FeedSpec(f"{tmp_path}/pwned-abs", "x", "x", f"{tmp_path}/pwned-abs/", topic="y")
    good = FeedSpec("all", "All", "Everything", "/")
    listings = [(escape, []), (absolute, []), (good, [])]
    with caplog.at_level(logging.ERROR):
        written = FeedBuilder(cfg).write(listings)
        store = open_store(cfg.store_url)
        pages = build_site(cfg, store, specs=[s for s, _ in listings], topics=[]).written
        store.close()
    feeds, public = cfg.path(cfg.feeds.output_dir), cfg.path(cfg.site.public_dir)
    assert written == [feeds / f"all.{f}" for f in cfg.feeds.formats] and public / "index.html" in pages
    assert pwned(tmp_path) == [] and all(p.resolve().is_relative_to(public.resolve()) for p in pages)
    messages = [r.getMessage() for r in caplog.records]
    assert sum("feeds: not written" in m for m in messages) == 2 * len(cfg.feeds.formats)
    assert sum("site: not written" in m for m in messages) >= 1  # the absolute page is taken relative to public/


def test_a_symlink_planted_under_public_is_not_written_through(cfg: Config, store: Store, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    run_ingest(cfg, store, NOW)
    feeds = cfg.path(cfg.feeds.output_dir)
    feeds.mkdir(parents=True)
    (feeds / "topics").symlink_to(outside, target_is_directory=True)
    run_feeds(cfg, store)
    assert list(outside.iterdir()) == []
    assert {p.name for p in feeds.glob("all.*")} == {f"all.{f}" for f in FORMATS}


def test_a_digest_web_copy_with_a_hostile_issue_id_is_refused_before_anything_is_sent(cfg: Config, store: Store, tmp_path: Path) -> None:
    run_ingest(cfg, store, NOW)
    seed_samples(store, cfg.subscribers.sample_subscribers, NOW)
    store.start_issue("../../../pwned-issue", NOW, NOW)  # an open issue from an old store: it is resumed, by id
    with pytest.raises(PathRefused, match="pwned-issue"):
        send_digest(cfg, store, NOW)
    assert pwned(tmp_path) == []
    outbox = cfg.path(cfg.delivery.outbox_dir)
    assert not outbox.exists() or len(mailbox.Maildir(outbox, create=False)) == 0


# -- what sources are given: config topics, remote content types ------------------------------------------


PARTNER = '\n[sources.partner]\nkind = "feed"\nurl = "https://partner.example.net/feed.atom"\ntopics = {topics}\n'


@pytest.mark.parametrize("topic", ["../../../tmp/x", "/etc", "Security Cooperation", "", "a/b"])
def test_a_remote_source_s_topics_must_be_slugs(project: Path, topic: str) -> None:
    path = project / "config.toml"
    path.write_text(path.read_text(encoding="utf-8") + PARTNER.format(topics=f'["security-cooperation", "{topic}"]'), encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.key == "sources.partner.topics" and "is not a slug" in str(info.value) and "for example" in str(info.value)


def test_topics_from_the_environment_are_checked_too_and_good_ones_pass(project: Path) -> None:
    path = project / "config.toml"
    path.write_text(path.read_text(encoding="utf-8") + PARTNER.format(topics='["security-cooperation", "arctic"]'), encoding="utf-8")
    assert load_config(path).sources["partner"].topics == ("security-cooperation", "arctic")
    with pytest.raises(ConfigError, match=r"\[sources.partner.topics\]"):
        load_config(path, env={"PUBLISHER_SOURCES__PARTNER__TOPICS": "ok,../../x", "PUBLISHER_SECRET_KEY": TEST_SECRET_KEY})


def test_the_cli_names_the_key_and_exits_2(project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = project / "config.toml"
    path.write_text(path.read_text(encoding="utf-8") + PARTNER.format(topics='["../../x"]'), encoding="utf-8")
    monkeypatch.chdir(project)
    result = CliRunner().invoke(main, ["ingest"])
    assert result.exit_code == 2 and "[sources.partner.topics]" in result.output and "'../../x' is not a slug" in result.output


def test_max_file_size_is_a_positive_key_that_reaches_the_files_source(project: Path) -> None:
    path = project / "config.toml"
    with pytest.raises(ConfigError, match=r"\[ingest.max_file_size\] expected a positive number of bytes"):
        load_config(path, env={"PUBLISHER_INGEST__MAX_FILE_SIZE": "0", "PUBLISHER_SECRET_KEY": TEST_SECRET_KEY})
    assert load_config(path).ingest.max_file_size == 5_242_880
    raised = load_config(path, env={"PUBLISHER_INGEST__MAX_FILE_SIZE": "20000000", "PUBLISHER_SECRET_KEY": TEST_SECRET_KEY})
    [source] = build_sources(raised)
    assert source.max_file_size == 20_000_000


LISTING = """<html><body><ul>
<li class="r"><h3><a href="https://partner.example.net/1">Escaping type</a></h3><p class="type">../../../../pwned-remote</p>
<time>2024-05-01</time></li>
<li class="r"><h3><a href="https://partner.example.net/2">Cyrillic type</a></h3><p class="type">Отчёт</p><time>2024-05-02</time></li>
<li class="r"><h3><a href="https://partner.example.net/3">Symbols type</a></h3><p class="type">/../</p><time>2024-05-03</time></li>
</ul></body></html>""".encode()


def test_content_types_from_a_remote_page_become_safe_feed_names(project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A partner's listing page names its own content types: they are data, and become file names only through slugify."""
    def serve(method: str, path: str, body: bytes) -> tuple[int, dict[str, str], bytes]:
        return 200, {"Content-Type": "text/html; charset=utf-8"}, LISTING

    with recording_server(serve) as (base, _):
        path = project / "config.toml"
        text = path.read_text(encoding="utf-8").replace("allow_private_addresses = false", "allow_private_addresses = true")
        text += (f'\n[sources.partner]\nkind = "page"\nurl = "{base}/list"\ntopics = ["security-cooperation"]\n'
                 'selectors = { item = "li.r", title = "h3 a", link = "h3 a", date = "time", content_type = "p.type" }\n')
        path.write_text(text, encoding="utf-8")
        monkeypatch.chdir(project)
        result = CliRunner().invoke(main, ["ingest"], catch_exceptions=False)
        built = CliRunner().invoke(main, ["feeds", "build"], catch_exceptions=False)
    assert "25 new" in result.output and built.exit_code == 0, result.output + built.output
    assert pwned(project) == []
    types = {p.stem for p in (project / "public" / "feeds" / "types").glob("*.json")}
    assert types == {"commentary", "multimedia", "research-brief", "pwned-remote", slugify("Отчёт"), slugify("/../")}
    assert len(types) == 6 and all(is_slug(t) for t in types)  # two types without ASCII letters do not share a feed
    topic = (project / "public" / "feeds" / "topics" / "security-cooperation.json").read_text(encoding="utf-8")
    assert "Escaping type" in topic and "Cyrillic type" in topic


ATOM = b"""<?xml version="1.0" encoding="utf-8"?>
<feed xmlns="http://www.w3.org/2005/Atom"><title>P</title><id>urn:p</id><updated>2024-05-02T10:00:00Z</updated>
<entry><id>urn:p:1</id><title>Partner brief</title><link href="https://partner.example.net/1"/><updated>2024-05-02T10:00:00Z</updated>
</entry></feed>"""


def test_ingest_itself_refuses_bad_slugs_from_any_source(store: Store) -> None:
    """A source built past the config's check (a library caller, a future kind) still cannot store a bad slug."""
    def serve(method: str, path: str, body: bytes) -> tuple[int, dict[str, str], bytes]:
        return 200, {"Content-Type": "application/atom+xml"}, ATOM

    with recording_server(serve) as (base, _):
        fetcher = Fetcher("http://127.0.0.1:8000", allow_private=True)  # the test server lives on 127.0.0.1
        try:
            common = dict(base_url="http://127.0.0.1:8000", timezone="UTC", fetcher=fetcher)
            bad = FeedSource("bad", f"{base}/a.atom", state={}, topics=["../../../pwned"], **common)
            good = FeedSource("good", f"{base}/b.atom", state={}, topics=["security-cooperation"], **common)
            report = ingest([bad, good], store, NOW)
        finally:
            fetcher.close()
    [err] = report.errors
    assert err.source == "bad" and "'../../../pwned' is not a slug" in err.reason
    assert report.new == ["good:urn:p:1"] and store.count_publications() == 1
