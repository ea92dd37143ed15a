"""MIME messages for the digest: multipart/alternative, UTF-8, RFC 8058 one-click unsubscribe headers."""

from __future__ import annotations

import hashlib
from datetime import datetime
from email.message import EmailMessage
from email.policy import SMTP
from email.utils import format_datetime, formataddr
from urllib.parse import urlsplit

from ..config import Config
from ..digest.render import RenderedIssue
from ..models import Subscriber

# Headers stay on one line up to RFC 5322's hard limit: some receivers mis-parse a List-Unsubscribe
# folded right after its colon. Bodies are quoted-printable, so no body line exceeds 76 octets.
POLICY = SMTP.clone(max_line_length=998)


def message_id(issue_id: str, subscriber_id: int, domain: str) -> str:
    """Unique per recipient and stable across retries, so a resend after a crash is recognisable."""
    digest = hashlib.sha256(f"{issue_id}:{subscriber_id}".encode()).hexdigest()[:24]
    return f"<digest.{issue_id}.{digest}@{domain}>"


def build_message(cfg: Config, rendered: RenderedIssue, subscriber: Subscriber, links: dict[str, str], now: datetime, *, test: bool = False) -> EmailMessage:
    domain = cfg.digest.from_address.rpartition("@")[2] or "localhost"
    html, text = rendered.personalise({**links, "email": subscriber.email})
    msg = EmailMessage(policy=POLICY)
    msg["From"] = formataddr((cfg.digest.from_name, cfg.digest.from_address))
    msg["To"] = subscriber.email
    msg["Subject"] = ("[TEST] " if test else "") + rendered.subject
    msg["Date"] = format_datetime(now)
    msg["Message-ID"] = message_id(rendered.issue.id, subscriber.id, domain)
    if cfg.digest.reply_to:
        msg["Reply-To"] = cfg.digest.reply_to
    msg["List-Id"] = f"{cfg.site.name} <digest.{urlsplit(cfg.site.base_url).hostname}>"
    msg["List-Unsubscribe"] = f"<{links['unsubscribe_url']}>, <mailto:{cfg.digest.from_address}?subject=unsubscribe>"
    msg["List-Unsubscribe-Post"] = "List-Unsubscribe=One-Click"
    msg.set_content(text, subtype="plain", charset="utf-8", cte="quoted-printable")
    msg.add_alternative(html, subtype="html", charset="utf-8", cte="quoted-printable")
    return msg
