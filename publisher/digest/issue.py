"""The next issue: what it holds, and its variants rendered once each, within Gmail's size limit."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

from ..config import Config
from ..models import DigestIssue, Publication
from ..store import Store
from .render import RenderedIssue, Renderer, size_as_sent
from .select import issue_id_for, select_issue

NOTE_SETTING = "digest.next_note"
# Gmail clips a message whose HTML passes about 102 KB as it is in the message (quoted-printable, see size_as_sent);
# personalisation adds a few hundred bytes.
MAX_HTML_BYTES = 100_000
GMAIL_CLIPS_AT = 102_000


@dataclass(frozen=True)
class PlannedIssue:
    id: str
    cutoff: datetime
    created_at: datetime
    note: str
    publications: tuple[Publication, ...]  # everything first seen in the window, before any cap or topic filter

    def select(self, cfg: Config, topics: tuple[str, ...] = (), max_items: int | None = None) -> DigestIssue:
        d = cfg.digest
        return select_issue(self.id, self.publications, self.created_at, type_order=d.type_order,
                            max_items=max_items or d.max_items, topics=topics, note=self.note)

    def is_empty(self, cfg: Config) -> bool:
        return self.select(cfg).is_empty


def plan_issue(cfg: Config, store: Store, now: datetime) -> PlannedIssue:
    """An unfinished issue is resumed with its own cutoff and note; else a new one holds what was first seen
    since the last sent issue's cutoff, up to now (so a late-ingested older item goes out once, never twice)."""
    opened = store.open_issue()
    if opened:
        issue_id, cutoff, note = opened
    else:
        issue_id, cutoff = issue_id_for(now, cfg.site.timezone, store.issue_ids()), now
        note = store.setting(NOTE_SETTING) or cfg.digest.note
    last = store.last_sent_issue()
    pubs = store.publications(seen_after=last[1] if last else None, seen_until=cutoff)
    return PlannedIssue(issue_id, cutoff, now, note, tuple(pubs))


def replan_issue(cfg: Config, store: Store, issue_id: str, now: datetime) -> PlannedIssue:
    """An issue that has gone out, as it was planned: the same cutoff, note and publications, for its retries."""
    found = store.issue(issue_id)
    if found is None:
        raise LookupError(f"no digest issue {issue_id!r}")
    _, cutoff, note, _, _ = found
    pubs = store.publications(seen_after=store.previous_cutoff(issue_id), seen_until=cutoff)
    return PlannedIssue(issue_id, cutoff, now, note, tuple(pubs))


def render_variants(cfg: Config, plan: PlannedIssue, topic_sets: Iterable[tuple[str, ...]], renderer: Renderer | None = None) -> dict[tuple[str, ...], RenderedIssue]:
    """Each distinct topic selection rendered once (the everything variant always: it is the web copy).

    All before anything is sent, so a template error sends nothing.
    """
    renderer = renderer or Renderer(cfg)
    return {key: render_fitting(cfg, plan, key, renderer) for key in sorted(set(topic_sets) | {()})}


def render_fitting(cfg: Config, plan: PlannedIssue, topics: tuple[str, ...], renderer: Renderer) -> RenderedIssue:
    """Render; when the HTML as sent passes MAX_HTML_BYTES, hold fewer items (the rest are "N more on the site")."""
    cap = cfg.digest.max_items
    rendered = renderer.render(plan.select(cfg, topics, cap))
    while (size := size_as_sent(rendered.html)) > MAX_HTML_BYTES and cap > 1:
        shown = len(rendered.issue.publications)
        ratio = MAX_HTML_BYTES / size
        cap = max(1, min(shown - 1, int(shown * ratio)))
        rendered = renderer.render(plan.select(cfg, topics, cap))
    return rendered
