"""Which publications go into an issue, and in what order."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from zoneinfo import ZoneInfo

from ..models import DigestIssue, Publication


def issue_id_for(now: datetime, timezone: str, taken: Sequence[str] = ()) -> str:
    """The ISO week in the site's zone, e.g. '2026-W48'; '-2', '-3' ... when a second issue goes out that week."""
    year, week, _ = now.astimezone(ZoneInfo(timezone)).isocalendar()
    base = f"{year}-W{week:02d}"
    candidate, n = base, 1
    while candidate in taken:
        n += 1
        candidate = f"{base}-{n}"
    return candidate


def select_issue(
    issue_id: str,
    publications: Sequence[Publication],
    now: datetime,
    *,
    type_order: Sequence[str],
    max_items: int,
    topics: Sequence[str] = (),
    note: str = "",
) -> DigestIssue:
    """Featured first (editor's rank, then newest), then the rest grouped by type in ``type_order``.

    ``publications`` are those first seen in this issue's window. With ``topics`` (a
    subscriber's preferences) only publications in one of those topics are kept.
    Beyond ``max_items`` the rest is counted in ``more_count`` ("and N more on the site").
    """
    wanted = set(topics)
    pubs = [p for p in publications if not wanted or wanted.intersection(p.topics)]
    featured = sorted((p for p in pubs if p.featured), key=lambda p: (p.featured_rank is None, p.featured_rank or 0, -p.published.timestamp(), p.id))
    rest = [p for p in pubs if not p.featured]
    order = {name.casefold(): i for i, name in enumerate(type_order)}
    rest.sort(key=lambda p: (order.get(p.content_type.casefold(), len(order)), p.content_type.casefold(), -p.published.timestamp(), p.id))

    featured = featured[:max_items]
    room = max_items - len(featured)
    kept, more = rest[:room], len(rest) - min(room, len(rest))
    groups: list[tuple[str, list[Publication]]] = []
    for pub in kept:
        if groups and groups[-1][0] == pub.content_type:
            groups[-1][1].append(pub)
        else:
            groups.append((pub.content_type, [pub]))
    return DigestIssue(
        id=issue_id,
        created_at=now,
        featured=tuple(featured),
        groups=tuple((name, tuple(items)) for name, items in groups),
        more_count=more + (len([p for p in pubs if p.featured]) - len(featured)),
        topics=tuple(sorted(wanted)),
        note=note,
    )
