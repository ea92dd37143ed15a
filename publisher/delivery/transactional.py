"""One-off messages to one person (the double opt-in confirmation), through the configured transport."""

from __future__ import annotations

from datetime import datetime
from email.message import EmailMessage
from email.utils import format_datetime, formataddr, make_msgid
from urllib.parse import urlsplit

import jinja2

from ..config import Config
from ..errors import TemplateError
from ..models import Subscriber
from .api import Prepared, Recipient, Result
from .backends import Variant, transport_factory
from .message import POLICY, CompiledMessage


def send_confirmation(cfg: Config, sub: Subscriber, confirm_url: str, links: dict[str, str], now: datetime) -> Result:
    context = {"site": cfg.site, "confirm_url": confirm_url, "email": sub.email, "unsubscribe_url": links["unsubscribe_url"]}
    subject = f"Confirm your subscription to {cfg.site.name}"
    text, html = _render("email/confirm.txt.j2", cfg, context, False), _render("email/confirm.html.j2", cfg, context, True)
    domain = cfg.digest.from_address.rpartition("@")[2] or "localhost"
    msg = EmailMessage(policy=POLICY)
    msg["From"] = formataddr((cfg.digest.from_name, cfg.digest.from_address))
    msg["To"] = sub.email
    msg["Subject"] = subject
    msg["Date"] = format_datetime(now)
    message_id = make_msgid("confirm", domain)
    msg["Message-ID"] = message_id
    msg.set_content(text, charset="utf-8", cte="quoted-printable")
    msg.add_alternative(html, subtype="html", charset="utf-8", cte="quoted-printable")
    compiled = CompiledMessage("confirm", (msg.as_bytes(policy=POLICY),), (), domain)
    prepared = Prepared("confirm", subject, cfg.digest.from_name, cfg.digest.from_address, cfg.digest.reply_to, html, text,
                        f"{cfg.site.name} <digest.{urlsplit(cfg.site.base_url).hostname}>")
    transport = transport_factory(cfg)[0]()
    try:
        [result] = transport.send(Variant(compiled, prepared), [Recipient(sub.id, sub.email, message_id, links, f"confirm:{sub.id}:{now.isoformat()}")])
    finally:
        transport.close()
    return result


def _render(name: str, cfg: Config, context: dict[str, object], autoescape: bool) -> str:
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(cfg.path(cfg.site.templates_dir)), autoescape=autoescape, undefined=jinja2.StrictUndefined)
    try:
        return env.get_template(name).render(context)
    except jinja2.TemplateError as exc:
        raise TemplateError(str(cfg.path(cfg.site.templates_dir) / name), getattr(exc, "lineno", None), str(exc)) from None
