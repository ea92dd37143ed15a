"""The web copies of sent issues: public/digests/<issue>.html, an index of them, and a feed of them."""

from __future__ import annotations

import re
from datetime import datetime, timezone
from pathlib import Path

from feedgen.feed import FeedGenerator

from ..config import Config
from ..fsutil import PathRefused, safe_join, write_atomic
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
    """public/digests/index.html (the archive page, in the site's design), public/digests/feed.atom, and the
    previous/next links of every copy, from the store's sent issues."""
    from ..site import digest_index

    issues = store.sent_issues()
    index = digests_dir(cfg) / "index.html"
    feed = digests_dir(cfg) / "feed.atom"
    write_atomic(index, digest_index(cfg, store, issues))
    write_atomic(feed, _feed(cfg, issues))
    link_copies(cfg, issues)
    return [index, feed]


NAV = re.compile(r"<!--publisher:archive-nav-->.*?<!--/publisher:archive-nav-->", re.S)
BODY = re.compile(r"<body\b[^>]*>", re.I)


def link_copies(cfg: Config, issues: list[tuple[str, datetime, str, int]]) -> list[Path]:
    """Each sent issue's web copy gets links to the previous and the next issue (and all of them) at its top; only the
    copies whose neighbours changed are written. Returns those."""
    from ..site import archive_nav

    written = []
    for k, (issue_id, *_rest) in enumerate(issues):  # newest first
        try:
            path = safe_join(digests_dir(cfg), f"{issue_id}.html")
            page = path.read_text(encoding="utf-8")
        except (PathRefused, FileNotFoundError, UnicodeDecodeError):  # no copy (an older install, or deleted): nothing to link
            continue
        newer = issues[k - 1][0] if k > 0 else None
        older = issues[k + 1][0] if k + 1 < len(issues) else None
        nav = f"<!--publisher:archive-nav-->{archive_nav(cfg, issue_id, newer, older)}<!--/publisher:archive-nav-->"
        if NAV.search(page):
            linked = NAV.sub(lambda _m: nav, page, count=1)
        else:
            body = BODY.search(page)
            if body is None:
                continue
            linked = page[:body.end()] + nav + page[body.end():]
        if write_atomic(path, linked.encode("utf-8")):
            written.append(path)
    return written


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
