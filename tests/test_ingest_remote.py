"""Remote sources through the pipeline and the CLI: state kept in the store, health in `publisher status`."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from publisher.cli import main

from .servers import recording_server

ATOM = b"""<?xml version="1.0" encoding="utf-8"?>
<feed xmlns="http://www.w3.org/2005/Atom"><title>Partner</title><id>urn:partner</id><updated>2024-05-02T10:00:00Z</updated>
<entry><id>urn:partner:1</id><title>Partner brief on <b>alliances</b></title><link href="https://partner.example.net/1"/>
<updated>2024-05-02T10:00:00Z</updated><summary type="html">A &lt;script&gt;x()&lt;/script&gt;summary.</summary>
<author><name>P. Author</name></author></entry></feed>"""


def feed_server(method: str, path: str, body: bytes) -> tuple[int, dict[str, str], bytes]:
    return 200, {"Content-Type": "application/atom+xml", "ETag": '"v1"'}, ATOM


@pytest.fixture
def with_partner(project: Path, monkeypatch: pytest.MonkeyPatch):
    def configure(url: str, allow_private: bool) -> CliRunner:
        text = (project / "config.toml").read_text(encoding="utf-8")
        text = text.replace("allow_private_addresses = false", f"allow_private_addresses = {str(allow_private).lower()}")
        text += f'\n[sources.partner]\nkind = "feed"\nurl = "{url}"\ntopics = ["security-cooperation"]\n'
        (project / "config.toml").write_text(text, encoding="utf-8")
        monkeypatch.chdir(project)
        return CliRunner()

    return configure


def test_a_remote_feed_is_ingested_then_polled_conditionally_and_reported_healthy(with_partner) -> None:
    with recording_server(feed_server) as (base, requests):
        runner = with_partner(f"{base}/feed.atom", allow_private=True)
        first = runner.invoke(main, ["ingest"], catch_exceptions=False)
        assert "23 new" in first.output and 'new: "Partner brief on alliances" (source \'partner\')' in first.output
        second = runner.invoke(main, ["ingest"], catch_exceptions=False)
        assert "0 new" in second.output
        assert requests[1]["headers"].get("If-None-Match") == '"v1"'  # the stored ETag went back
        status = runner.invoke(main, ["status"], catch_exceptions=False).output
    assert "partner (feed" in status and "partner (feed, " + base in status and ": ok; last success" in status
    assert "scheduler: not running" in status and "pending issue: 23 new publications" in status


def test_a_source_on_loopback_is_refused_by_default_and_shows_unhealthy(with_partner) -> None:
    with recording_server(feed_server) as (base, requests):
        runner = with_partner(f"{base}/feed.atom", allow_private=False)
        result = runner.invoke(main, ["ingest"], catch_exceptions=False)
        assert "22 new" in result.output and "1 skipped" in result.output  # the content folder still ingests
        assert "partner" in result.output and "127.0.0.1" in result.output
        assert requests == []  # refused before any connection
        status = runner.invoke(main, ["status"], catch_exceptions=False).output
    assert "partner (feed" in status and "UNHEALTHY" in status
