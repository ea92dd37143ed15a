"""WebSub: tell the hub which feeds changed, so subscribers' readers fetch them now."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import requests

from .. import __version__

log = logging.getLogger(__name__)


def ping_hub(hub: str, feed_urls: Sequence[str], *, timeout: float = 10.0, session: requests.Session | None = None) -> list[str]:
    """POST hub.mode=publish for each changed feed; returns the errors (a failed ping never fails a build)."""
    errors = []
    http = session or requests.Session()
    for url in feed_urls:
        try:
            resp = http.post(hub, data={"hub.mode": "publish", "hub.url": url}, timeout=timeout,
                             headers={"User-Agent": f"publisher/{__version__} (WebSub publisher)"})
            if resp.status_code >= 300:
                errors.append(f"WebSub hub {hub} answered {resp.status_code} for {url}")
        except requests.RequestException as exc:
            errors.append(f"WebSub hub {hub} unreachable for {url}: {type(exc).__name__}")
    for err in errors:
        log.warning("%s", err)
    return errors
