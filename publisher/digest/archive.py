"""The web copies of sent issues: public/digests/<issue>.html, an index of them, and a feed of them."""

from __future__ import annotations

import html
from datetime import datetime, timezone
from pathlib import Path

from feedgen.feed import FeedGenerator

from ..config import Config
from ..fsutil import safe_join, write_atomic
from ..store import Store
from .render import RenderedIssue


def digests_dir(cfg: Config) -> Path:
    return cfg.path(cfg.site.public_dir) / "digests"


def write_copy(cfg: Config, rendered: RenderedIssue) -> Path:
    """The view-in-browser copy: the everything variant, its personal links pointing at the site instead."""
    base = cfg.site.base_url.rstrip("/")
    page, _ = rendered.personalise({"unsubscribe_url": f"{base}/unsubscribe", "preferences_url": f"{base}/preferences", "email": "you"})
    path = safe_join(digests_dir(cfg), f"{rendered.issue.id}.html")  # the id comes from the store: checked, never trusted
    write_atomic(path, page.encode("utf-8"))
    return path


def write_index(cfg: Config, store: Store) -> list[Path]:
    """public/digests/index.html and public/digests/feed.atom, from the store's sent issues."""
    base = cfg.site.base_url.rstrip("/")
    issues = store.sent_issues()
    rows = "\n".join(
        f'    <li><a href="{html.escape(i)}.html">{html.escape(_date(sent))}</a> · {count} publication{"s" if count != 1 else ""}'
        f'{" · " + html.escape(note) if note else ""}</li>'
        for i, sent, note, count in issues
    ) or "    <li>No issue has been sent yet.</li>"
    page = f"""<!doctype html>
<html lang="{html.escape(cfg.site.language)}">
<head>
  <meta charset="utf-8">
  <meta name="viewport" content="width=device-width, initial-scale=1">
  <title>{html.escape(cfg.site.name)}: past digests</title>
  <link rel="alternate" type="application/atom+xml" title="{html.escape(cfg.site.name)}: digests" href="{base}/digests/feed.atom">
  <style>body {{ font: 17px/1.5 Georgia, serif; max-width: 42rem; margin: 2rem auto; padding: 0 1rem; }}</style>
</head>
<body>
  <h1>{html.escape(cfg.site.name)}: past digests</h1>
  <ul>
{rows}
  </ul>
</body>
</html>
"""
    index = digests_dir(cfg) / "index.html"
    feed = digests_dir(cfg) / "feed.atom"
    write_atomic(index, page.encode("utf-8"))
    write_atomic(feed, _feed(cfg, issues))
    return [index, feed]


def _date(when: datetime) -> str:
    return when.strftime("%Y-%m-%d")


def _feed(cfg: Config, issues: list[tuple[str, datetime, str, int]]) -> bytes:
    base = cfg.site.base_url.rstrip("/")
    fg = FeedGenerator()
    fg.id(f"{base}/digests/feed.atom")
    fg.title(f"{cfg.site.name}: digests")
    fg.subtitle(f"Every weekly digest {cfg.site.name} has sent.")
    fg.author(name=cfg.site.name)
    fg.language(cfg.site.language)
    fg.link(href=f"{base}/digests/feed.atom", rel="self", type="application/atom+xml")
    fg.link(href=f"{base}/digests/", rel="alternate", type="text/html")
    newest = issues[0][1] if issues else datetime(1970, 1, 1, tzinfo=timezone.utc)
    fg.updated(newest)
    for issue_id, sent, note, count in issues:  # newest first, as sent_issues returns them
        fe = fg.add_entry(order="append")
        fe.id(f"{base}/digests/{issue_id}.html")
        fe.title(f"{cfg.site.name} digest {issue_id}")
        fe.link(href=f"{base}/digests/{issue_id}.html", rel="alternate", type="text/html")
        fe.published(sent)
        fe.updated(sent)
        fe.summary(f"{count} publication{'s' if count != 1 else ''}." + (f" {note}" if note else ""))
    return fg.atom_str(pretty=True)
