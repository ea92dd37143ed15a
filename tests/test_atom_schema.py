"""The RFC 4287 RELAX NG validator used by the feed tests accepts valid Atom and rejects invalid Atom."""

from __future__ import annotations

import pytest

from .atom_schema import validate_atom

FEED_HEAD = """<?xml version="1.0" encoding="utf-8"?>
<feed xmlns="http://www.w3.org/2005/Atom" xml:lang="en">
  {feed_id}
  <title>Research notes</title>
  <updated>2026-11-27T09:30:00Z</updated>
  <author><name>Ada Example</name><email>ada@example.org</email></author>
  <link rel="self" type="application/atom+xml" href="https://example.org/feed.atom"/>
"""

ENTRY = """  <entry>
    <id>https://example.org/notes/first</id>
    {entry_title}
    <updated>{entry_updated}</updated>
    <link rel="alternate" type="text/html" href="https://example.org/notes/first"/>
    <summary>A first note.</summary>
    <content type="html">&lt;p&gt;Hello &lt;em&gt;world&lt;/em&gt;&lt;/p&gt;</content>
    {entry_extra}
  </entry>
"""


def make_feed(
    *,
    feed_id: str = "<id>https://example.org/feed.atom</id>",
    entry_title: str = "<title>First note</title>",
    entry_updated: str = "2026-11-27T09:00:00+01:00",
    entry_extra: str = "",
    feed_extra: str = "",
) -> bytes:
    head = FEED_HEAD.format(feed_id=feed_id)
    entry = ENTRY.format(entry_title=entry_title, entry_updated=entry_updated, entry_extra=entry_extra)
    return (head + feed_extra + entry + "</feed>\n").encode("utf-8")


def test_minimal_valid_feed_has_no_errors() -> None:
    assert validate_atom(make_feed()) == []


def test_standalone_entry_document_is_valid() -> None:
    entry = b"""<entry xmlns="http://www.w3.org/2005/Atom">
      <id>tag:example.org,2026:1</id>
      <title type="xhtml"><div xmlns="http://www.w3.org/1999/xhtml">A <b>bold</b> title</div></title>
      <updated>2026-11-27T09:30:00.250Z</updated>
      <author><name>Ada</name></author>
      <content type="text">Plain text.</content>
    </entry>"""
    assert validate_atom(entry) == []


def test_foreign_extension_element_in_entry_is_valid() -> None:
    media = '<media:content xmlns:media="http://search.yahoo.com/mrss/" url="https://example.org/a.png" medium="image"/>'
    assert validate_atom(make_feed(entry_extra=media)) == []


def test_simple_extension_element_in_feed_is_valid() -> None:
    extra = '<sy:updatePeriod xmlns:sy="http://purl.org/rss/1.0/modules/syndication/">daily</sy:updatePeriod>\n'
    assert validate_atom(make_feed(feed_extra=extra)) == []


@pytest.mark.parametrize(
    "overrides",
    [
        pytest.param({"feed_id": ""}, id="feed-without-id"),
        pytest.param({"entry_title": ""}, id="entry-without-title"),
        pytest.param({"entry_updated": "27 November 2026"}, id="updated-not-a-date"),
        pytest.param({"entry_updated": "2026-11-27"}, id="updated-date-without-time"),
        pytest.param({"entry_extra": "<flavour>vanilla</flavour>"}, id="unknown-atom-element-in-entry"),
        pytest.param({"feed_extra": "<flavour>vanilla</flavour>\n"}, id="unknown-atom-element-in-feed"),
        pytest.param({"entry_title": "<title>One</title><title>Two</title>"}, id="entry-with-two-titles"),
        pytest.param({"entry_extra": '<content type="xhtml">not a div</content>'}, id="second-content"),
    ],
)
def test_invalid_documents_report_errors(overrides: dict[str, str]) -> None:
    errors = validate_atom(make_feed(**overrides))
    assert errors, f"expected schema errors for {overrides}"
    assert all(isinstance(e, str) and e for e in errors)


def test_xhtml_content_must_be_wrapped_in_a_div() -> None:
    entry = b"""<entry xmlns="http://www.w3.org/2005/Atom">
      <id>tag:example.org,2026:1</id><title>t</title><updated>2026-11-27T09:30:00Z</updated>
      <content type="xhtml"><p xmlns="http://www.w3.org/1999/xhtml">no div</p></content>
    </entry>"""
    assert validate_atom(entry)


def test_root_that_is_not_atom_is_rejected() -> None:
    assert validate_atom(b'<rss version="2.0"><channel/></rss>')


def test_malformed_xml_is_an_error_not_an_exception() -> None:
    errors = validate_atom(b"<feed xmlns='http://www.w3.org/2005/Atom'><id>x</feed>")
    assert len(errors) == 1
    assert errors[0].startswith("not well-formed XML")
