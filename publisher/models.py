"""The domain: plain, frozen data that every stage passes along.

Datetimes are always timezone-aware (UTC in the store); a stage that gets a naive one
is a bug, so constructors check.
"""

from __future__ import annotations

import difflib
import enum
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime


def _require_aware(name: str, value: datetime | None) -> None:
    if value is not None and value.tzinfo is None:
        raise ValueError(f"{name} must be timezone-aware, got naive {value.isoformat()}")


@dataclass(frozen=True, slots=True)
class Image:
    url: str
    alt: str = ""
    caption: str = ""
    credit: str = ""


@dataclass(frozen=True, slots=True)
class Topic:
    slug: str
    name: str
    description: str = ""


def suggest_topic(slug: str, known: Iterable[str], *, topics_dir: str = "content/topics/") -> str:
    """The fix to write after "unknown topic 'x';": `` did you mean 'y'?`` with the closest known slug; else the known
    slugs (the first 10) and how to add one; else how to add the first. ``topics_dir`` is where topic files go, as the
    reader knows it."""
    slugs = sorted(set(known))
    close = difflib.get_close_matches(slug, slugs, n=1)
    if close:
        return f" did you mean {close[0]!r}?"
    add = f"create {topics_dir}{slug}.md (with a name) to add it"
    if not slugs:
        return f" there are no topics yet; {add}"
    shown = ", ".join(slugs[:10]) + (f" and {len(slugs) - 10} more" if len(slugs) > 10 else "")
    return f" known topics: {shown}; or {add}"


@dataclass(frozen=True, slots=True)
class Publication:
    id: str
    url: str
    title: str
    summary: str
    content_type: str
    published_at: datetime | None  # None: the source gave no date; `published` falls back to first_seen_at
    updated_at: datetime | None
    topics: tuple[str, ...] = ()
    authors: tuple[str, ...] = ()
    image: Image | None = None
    featured: bool = False
    featured_rank: int | None = None
    body_html: str = ""
    source: str = ""
    first_seen_at: datetime | None = None

    def __post_init__(self) -> None:
        _require_aware("published_at", self.published_at)
        _require_aware("updated_at", self.updated_at)
        _require_aware("first_seen_at", self.first_seen_at)

    @property
    def published(self) -> datetime:
        """When it was published, or, when the source gave no date, when we first saw it."""
        when = self.published_at or self.first_seen_at or self.updated_at
        if when is None:
            raise ValueError(f"publication {self.id!r} has no date and has not been stored yet")
        return when

    @property
    def updated(self) -> datetime:
        """Last revision; never before publication."""
        return max(self.updated_at or self.published, self.published)


class SubscriberStatus(str, enum.Enum):
    PENDING = "pending"
    ACTIVE = "active"
    UNSUBSCRIBED = "unsubscribed"
    BOUNCED = "bounced"
    COMPLAINED = "complained"

    @property
    def suppressed(self) -> bool:
        """Never mail this address again (an import does not revive it)."""
        return self in (SubscriberStatus.UNSUBSCRIBED, SubscriberStatus.BOUNCED, SubscriberStatus.COMPLAINED)


@dataclass(frozen=True, slots=True)
class Subscriber:
    id: int
    email: str
    status: SubscriberStatus
    created_at: datetime
    updated_at: datetime
    topics: tuple[str, ...] = ()
    confirmed_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class DigestIssue:
    """One weekly issue: which publications, in send order, for which variant."""

    id: str
    created_at: datetime
    featured: tuple[Publication, ...]
    groups: tuple[tuple[str, tuple[Publication, ...]], ...]
    more_count: int = 0
    topics: tuple[str, ...] = ()
    note: str = ""

    @property
    def publications(self) -> tuple[Publication, ...]:
        return self.featured + tuple(p for _, items in self.groups for p in items)

    @property
    def is_empty(self) -> bool:
        return not self.publications
