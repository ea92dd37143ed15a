"""`publisher serve`: the site and its feeds over real HTTP (uvicorn on a free port)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from urllib.parse import parse_qs

import requests

from publisher.config import Config
from publisher.pipeline import run_feeds, run_ingest, run_site
from publisher.store import open_store
from publisher.web import create_app

from .conftest import NOW
from .servers import recording_server, run_app


def build(cfg: Config) -> None:
    store = open_store(cfg.store_url)
    run_feeds(cfg, store, run_ingest(cfg, store, NOW))
    run_site(cfg, store)
    store.close()


def test_feeds_are_served_with_media_types_etag_and_304(cfg: Config) -> None:
    build(cfg)
    with run_app(create_app(cfg)) as base:
        for path, media_type in (("/feeds/all.rss", "application/rss+xml"), ("/feeds/all.atom", "application/atom+xml"),
                                 ("/feeds/topics/security-cooperation.json", "application/feed+json")):
            first = requests.get(base + path, timeout=10)
            assert first.status_code == 200 and first.headers["content-type"] == media_type
            assert first.headers["etag"] and first.headers["last-modified"]
            again = requests.get(base + path, headers={"If-None-Match": first.headers["etag"]}, timeout=10)
            assert again.status_code == 304 and again.content == b""
            since = requests.get(base + path, headers={"If-Modified-Since": first.headers["last-modified"]}, timeout=10)
            assert since.status_code == 304
        page = requests.get(base + "/topics/security-cooperation/", timeout=10)
        assert page.status_code == 200 and "application/atom+xml" in page.text
        image = requests.get(base + "/media/icon.png", timeout=10)
        assert image.status_code == 200 and image.headers["content-type"] == "image/png"
        assert requests.get(base + "/feeds/nope.atom", timeout=10).status_code == 404


def test_serve_command_help_and_binding(cfg: Config) -> None:
    from click.testing import CliRunner

    from publisher.cli import main

    result = CliRunner().invoke(main, ["serve", "--help"])
    assert "publisher serve --port 8000" in result.output


def test_websub_hub_is_linked_and_pinged_only_for_changed_feeds(cfg: Config, project: Path) -> None:
    with recording_server() as (hub, pings):
        cfg = replace(cfg, feeds=replace(cfg.feeds, websub_hub=hub + "/hub"))
        store = open_store(cfg.store_url)
        run_feeds(cfg, store, run_ingest(cfg, store, NOW))
        atom = (cfg.path(cfg.feeds.output_dir) / "all.atom").read_text(encoding="utf-8")
        assert f'<link href="{hub}/hub" rel="hub"/>' in atom
        import feedparser

        for name in ("all.rss", "topics/security-cooperation.rss"):  # RSS carries it too (WebSub 4: an atom:link)
            rss = feedparser.parse((cfg.path(cfg.feeds.output_dir) / name).read_bytes())
            assert not rss.bozo and [link.href for link in rss.feed.links if link.rel == "hub"] == [hub + "/hub"], name
            assert len(rss.entries) > 0
        urls = sorted(parse_qs(p["body"].decode())["hub.url"][0] for p in pings)
        assert len(urls) == 15 and "http://127.0.0.1:8000/feeds/all.atom" in urls
        assert all(parse_qs(p["body"].decode())["hub.mode"] == ["publish"] for p in pings)
        pings.clear()
        run_feeds(cfg, store)  # nothing changed: no ping
        assert pings == []
        store.close()


def test_a_failing_hub_never_fails_the_build(cfg: Config) -> None:
    with recording_server(lambda m, p, b: (500, {}, b"down")) as (hub, pings):
        cfg = replace(cfg, feeds=replace(cfg.feeds, websub_hub=hub))
        store = open_store(cfg.store_url)
        changed = run_feeds(cfg, store, run_ingest(cfg, store, NOW))
        assert changed and pings
        store.close()
