"""The links every message carries for its subscriber: one-click unsubscribe and preferences, signed."""

from __future__ import annotations

from typing import Protocol

from .tokens import make_token


class HasId(Protocol):
    @property
    def id(self) -> int: ...


def links_for(base_url: str, key: str, subscriber: HasId) -> dict[str, str]:
    """``unsubscribe_url`` and ``preferences_url`` under ``base_url``, signed with ``key`` (no expiry)."""
    base = base_url.rstrip("/")
    return {
        "unsubscribe_url": f"{base}/unsubscribe/{make_token(key, 'unsubscribe', subscriber.id)}",
        "preferences_url": f"{base}/preferences/{make_token(key, 'preferences', subscriber.id)}",
    }
