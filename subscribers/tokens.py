"""Signed tokens for links in mail: one salt per purpose, so an unsubscribe token never confirms."""

from __future__ import annotations

from itsdangerous import BadSignature, URLSafeSerializer

PURPOSES = ("unsubscribe", "preferences", "confirm")


def make_token(secret_key: str, purpose: str, subscriber_id: int) -> str:
    if purpose not in PURPOSES:
        raise ValueError(f"unknown token purpose {purpose!r}")
    return URLSafeSerializer(secret_key, salt=f"publisher.{purpose}").dumps(subscriber_id)


def read_token(secret_key: str, purpose: str, token: str) -> int | None:
    """The subscriber id, or None for a forged or wrong-purpose token."""
    try:
        value = URLSafeSerializer(secret_key, salt=f"publisher.{purpose}").loads(token)
    except BadSignature:
        return None
    return value if isinstance(value, int) else None
