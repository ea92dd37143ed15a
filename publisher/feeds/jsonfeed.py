"""JSON Feed 1.1 (https://www.jsonfeed.org/version/1.1/), written directly: feedgen does not speak it."""

from __future__ import annotations

import json
from typing import Any

from ..models import Publication
from .content import content_html, plain_text


def json_item(pub: Publication, entry_id: str, topic_names: dict[str, str]) -> dict[str, Any]:
    item: dict[str, Any] = {
        "id": entry_id,
        "url": pub.url,
        "title": plain_text(pub.title) or "(untitled)",
        "content_html": content_html(pub),
        "date_published": pub.published.isoformat(),
        "date_modified": pub.updated.isoformat(),
        "tags": [plain_text(pub.content_type), *(plain_text(topic_names.get(t, t)) for t in pub.topics)],
    }
    if pub.summary:
        item["summary"] = plain_text(pub.summary)  # JSON Feed's summary is plain text
    if pub.image:
        item["image"] = pub.image.url
    if pub.authors:
        item["authors"] = [{"name": plain_text(a)} for a in pub.authors]
    return item


def render_json(meta: dict[str, Any], items: list[str]) -> bytes:
    """``items`` are already-serialised item objects (cached per publication), joined here."""
    head: dict[str, Any] = {
        "version": "https://jsonfeed.org/version/1.1",
        "title": plain_text(meta["title"]),
        "home_page_url": meta["alternate_url"],
        "feed_url": meta["self_url"],
        "description": plain_text(meta["subtitle"]),
        "language": meta["language"],
        "authors": [{"name": plain_text(meta["author"])}],
    }
    if meta.get("icon"):
        head["icon"] = head["favicon"] = meta["icon"]
    if meta.get("hub"):
        head["hubs"] = [{"type": "WebSub", "url": meta["hub"]}]
    text = json.dumps(head, ensure_ascii=False, indent=2)
    body = ",\n".join(items)
    return (text[:-2] + ',\n  "items": [\n' + body + ("\n" if items else "") + "  ]\n}\n").encode("utf-8")


def serialise_item(item: dict[str, Any]) -> str:
    text = json.dumps(item, ensure_ascii=False, indent=2)
    # split("\n"), not splitlines(): json leaves U+2028 and U+2029 raw in strings, and splitlines() breaks on them
    return "\n".join("    " + line for line in text.split("\n"))
