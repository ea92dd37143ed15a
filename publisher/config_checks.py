"""The checks a loaded config must pass beyond its types: URLs, choices, ranges, schedules, slugs, limits.

Each failure is a ConfigError naming the file, the key, what was expected and, where there is one, the fix.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from .config import Config, SmtpConfig, SourceConfig, parse_duration
from .errors import ConfigError

_CHOICES = {
    "delivery.backend": ("outbox", "smtp", "postmark", "sendgrid", "mailgun", "resend"),
    "delivery.smtp.security": ("starttls", "tls", "none"),
    "delivery.engine": ("threads", "celery"),
}


def is_local_host(host: str) -> bool:
    """This machine: localhost, a loopback or unspecified address, in any spelling (127.1, 0x7f000001, [::ffff:127.0.0.1])."""
    import ipaddress
    import socket

    host = host.strip().strip("[]").rstrip(".").lower()
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        ip: Any = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        try:
            ip = ipaddress.IPv4Address(socket.inet_aton(host))  # the short and numeric forms the resolver also takes
        except OSError:
            return False
    ip = getattr(ip, "ipv4_mapped", None) or ip
    return bool(ip.is_loopback or ip.is_unspecified)


def is_local(url: str) -> bool:
    from urllib.parse import urlsplit

    try:
        return is_local_host(urlsplit(url).hostname or "")
    except ValueError:
        return False


_RESERVED = (".example.com", ".example.org", ".example.net", ".example", ".test", ".invalid")  # RFC 2606: never a mailbox


def mail_leaves(cfg: Config) -> str | None:
    """Where mail goes when it leaves this machine ("the SMTP relay smtp.example.net", "postmark"), or None when it
    stays here: the local outbox, a relay on this machine (Mailpit, a test server), an API emulator on loopback."""
    d = cfg.delivery
    if d.backend == "outbox":
        return None
    if d.backend == "smtp":
        return None if is_local_host(d.smtp.host) else f"the SMTP relay {d.smtp.host}"
    return None if d.api.base_url and is_local(d.api.base_url) else d.backend


def _check_samples(cfg: Config) -> None:
    """The sample subscribers (@example.com) are for the local outbox: a real relay would be asked to mail them."""
    fake = [e for e in cfg.subscribers.sample_subscribers if ("." + e.rpartition("@")[2].lower()).endswith(_RESERVED)]
    if fake and mail_leaves(cfg):
        raise ConfigError(f"the sample subscribers ({', '.join(fake)}) would be mailed through {cfg.delivery.backend}: remove the "
                          "sample_subscribers line (the ones it seeded are then unsubscribed by themselves).",
                          file=cfg.file, key="subscribers.sample_subscribers")


def _check_local_links(cfg: Config) -> None:
    """The default base_url is the local `publisher serve` (so images and links work on a laptop). Mail that leaves
    the machine with it would send every reader to their own computer: refused, with the fix."""
    where = mail_leaves(cfg) if is_local(cfg.site.base_url) else None
    if where:
        raise ConfigError(f"{cfg.site.base_url!r} is this machine's own address (the embedded default, for `publisher serve`), "
                          f"but mail now goes out through {where}: every image, feed and unsubscribe link in it would point at "
                          "each reader's own computer. Set base_url to your site's public address, e.g. 'https://www.example.org'.",
                          file=cfg.file, key="site.base_url")


def validate(cfg: Config) -> None:
    """Raise ConfigError for the first thing wrong in ``cfg``."""
    f = cfg.file
    if not re.match(r"^https?://[^/\s]+", cfg.site.base_url):
        raise ConfigError(f"expected an absolute http(s) URL like 'https://www.example.org', got {cfg.site.base_url!r}.", file=f, key="site.base_url")
    try:
        from zoneinfo import ZoneInfo

        ZoneInfo(cfg.site.timezone)
    except Exception:
        raise ConfigError(f"unknown time zone {cfg.site.timezone!r}; use an IANA name like 'Europe/Berlin' or 'UTC'.", file=f, key="site.timezone") from None
    _check_theme(cfg)
    for key, allowed in _CHOICES.items():
        value = _get(cfg, key)
        if value not in allowed:
            raise ConfigError(f"expected one of {', '.join(allowed)}, got {value!r}.", file=f, key=key)
    _check_local_links(cfg)
    _check_samples(cfg)
    for name, src in cfg.sources.items():
        if src.kind not in ("files", "feed", "page"):
            raise ConfigError(f"unknown source kind {src.kind!r}; choose files (a folder of Markdown), feed (RSS, Atom, JSON Feed) "
                              "or page (an HTML listing page).", file=f, key=f"sources.{name}.kind")
        if src.kind in ("feed", "page") and not re.match(r"^https?://[^/\s]+", src.url):
            raise ConfigError(f"a {src.kind} source needs the absolute http(s) URL to poll, got {src.url!r}.", file=f, key=f"sources.{name}.url")
        _validate_topics(name, src, f)
        if src.kind == "page":
            from .sources.remote import selector_problems

            problems = selector_problems(src.selectors)
            if problems:
                raise ConfigError("; ".join(problems) + ".", file=f, key=f"sources.{name}.selectors")
    if cfg.ingest.max_file_size < 1:
        raise ConfigError(f"expected a positive number of bytes, got {cfg.ingest.max_file_size}.", file=f, key="ingest.max_file_size")
    bad_formats = set(cfg.feeds.formats) - {"rss", "atom", "json"}
    if bad_formats:
        raise ConfigError(f"unknown feed format(s) {sorted(bad_formats)}; choose from rss, atom, json.", file=f, key="feeds.formats")
    if cfg.feeds.websub_hub and not re.match(r"^https?://[^/\s]+", cfg.feeds.websub_hub):
        raise ConfigError(f"expected the hub's absolute URL, got {cfg.feeds.websub_hub!r}.", file=f, key="feeds.websub_hub")
    if cfg.feeds.item_limit < 1:
        raise ConfigError("expected a positive number of items.", file=f, key="feeds.item_limit")
    if cfg.digest.max_items < 1:
        raise ConfigError("expected a positive number of items.", file=f, key="digest.max_items")
    parse_duration(cfg.scheduler.ingest_every, "scheduler.ingest_every")
    parse_duration(cfg.delivery.stale_after, "delivery.stale_after")
    for key in ("retry_first", "retry_max", "give_up_after"):
        parse_duration(getattr(cfg.delivery, key), f"delivery.{key}")
    parse_duration(cfg.scheduler.misfire_grace, "scheduler.misfire_grace")
    parse_duration(cfg.scheduler.lease, "scheduler.lease")
    _validate_signup_limits(cfg)
    for key, value, low in (("delivery.attempts", cfg.delivery.attempts, 1), ("delivery.batch_size", cfg.delivery.batch_size, 1),
                            ("delivery.smtp.connections", cfg.delivery.smtp.connections, 1)):
        if value < low:
            raise ConfigError(f"expected at least {low}, got {value}.", file=f, key=key)
    _validate_smtp_auth(cfg.delivery.smtp, f)
    for key, value in (("delivery.warmup_start", cfg.delivery.warmup_start), ("delivery.warmup_days", cfg.delivery.warmup_days)):
        if value < 1:
            raise ConfigError(f"expected at least 1, got {value}.", file=f, key=key)
    if cfg.delivery.warmup_full <= cfg.delivery.warmup_start:
        raise ConfigError(f"expected more than warmup_start ({cfg.delivery.warmup_start}), got {cfg.delivery.warmup_full}: the ramp "
                          "grows from warmup_start on the first day to warmup_full on day warmup_days.", file=f, key="delivery.warmup_full")
    for key, value in (("delivery.smtp.rate_limit", cfg.delivery.smtp.rate_limit), ("delivery.api.rate_limit", cfg.delivery.api.rate_limit),
                       ("delivery.retry_base", cfg.delivery.retry_base)):
        if value < 0:
            raise ConfigError("expected zero or more.", file=f, key=key)
    if cfg.delivery.backend in ("postmark", "sendgrid", "mailgun", "resend") and not cfg.api_key:
        raise ConfigError(f"backend {cfg.delivery.backend!r} needs an API key: set PUBLISHER_API_KEY in the environment.", file=f, key="delivery.backend")
    _validate_engine(cfg, f)
    if cfg.delivery.backend == "mailgun" and not cfg.delivery.api.domain:
        raise ConfigError("Mailgun needs the sending domain, e.g. 'mg.example.org'.", file=f, key="delivery.api.domain")
    from apscheduler.triggers.cron import CronTrigger

    try:
        if cfg.digest.schedule.strip().startswith("every "):
            parse_duration(cfg.digest.schedule.strip()[6:], "digest.schedule")
        else:
            CronTrigger.from_crontab(cfg.digest.schedule, timezone=cfg.site.timezone)
    except ValueError as exc:
        raise ConfigError(f"expected a crontab line like '0 8 * * mon', got {cfg.digest.schedule!r} ({exc}).", file=f, key="digest.schedule") from None


def _validate_topics(name: str, src: SourceConfig, file: Path | None) -> None:
    """Topic slugs become file names (public/feeds/topics/<slug>.rss): each must be a slug."""
    from .fsutil import is_slug, slug_problem

    bad = next((t for t in src.topics if not is_slug(t)), None)
    if bad is not None:
        raise ConfigError(f"topic {slug_problem(bad)}.", file=file, key=f"sources.{name}.topics")


def _validate_engine(cfg: Config, f: Path | None) -> None:
    """Celery workers on many machines share one send log: that needs PostgreSQL, and a broker URL without a password
    in the file (a password goes in PUBLISHER_BROKER_URL)."""
    from urllib.parse import urlsplit

    if cfg.delivery.task_size < 1:
        raise ConfigError(f"expected at least 1, got {cfg.delivery.task_size}.", file=f, key="delivery.task_size")
    try:
        parts = urlsplit(cfg.delivery.broker_url)
        password = parts.password
    except ValueError:
        raise ConfigError("is not a URL; expected e.g. 'amqp://guest@rabbitmq:5672//' or 'redis://redis:6379/0'.", file=f,
                          key="delivery.broker_url") from None
    if password:
        raise ConfigError("holds a password, and secrets are never read from the file: put the whole URL in the environment "
                          "as PUBLISHER_BROKER_URL and leave this key without the password.", file=f, key="delivery.broker_url")
    if cfg.delivery.engine != "celery":
        return
    scheme = urlsplit(cfg.broker_url).scheme
    if scheme not in ("amqp", "amqps", "pyamqp", "redis", "rediss"):
        raise ConfigError(f"expected a RabbitMQ (amqp://) or Redis (redis://) URL, got the scheme {scheme!r}.", file=f, key="delivery.broker_url")
    if not cfg.store_url.startswith("postgresql"):
        raise ConfigError("engine 'celery' sends from workers on several machines, which share one send log: that needs PostgreSQL "
                          "([store].url = 'postgresql+psycopg://user@host/db'). SQLite is one machine's file: keep engine = 'threads' "
                          "with it.", file=f, key="delivery.engine")


def _validate_smtp_auth(smtp: SmtpConfig, f: Path | None) -> None:
    """A login over a connection without TLS hands the password to anyone on the path: only when asked for by name."""
    if smtp.username and smtp.security == "none" and not smtp.allow_plaintext_auth:
        raise ConfigError('security = "none" with a username would send the SMTP password unencrypted. Use security = '
                          '"starttls" or "tls"; or, for a relay on a network you trust (e.g. localhost), set '
                          "[delivery.smtp].allow_plaintext_auth = true.", file=f, key="delivery.smtp.security")


def _validate_signup_limits(cfg: Config) -> None:
    """[web] and [subscribers]: the sign-up limits and the proxies whose X-Forwarded-For is believed."""
    import ipaddress

    f = cfg.file
    for key, value in (("web.signups_per_network", cfg.web.signups_per_network), ("subscribers.confirmations_per_day", cfg.subscribers.confirmations_per_day),
                       ("subscribers.confirmation_attempts", cfg.subscribers.confirmation_attempts)):
        if not 1 <= value <= 10_000:
            raise ConfigError(f"expected a number from 1 to 10000, got {value}.", file=f, key=key)
    parse_duration(cfg.web.signup_window, "web.signup_window")
    parse_duration(cfg.subscribers.confirmation_retry, "subscribers.confirmation_retry")
    for entry in cfg.web.trusted_proxies:
        try:
            ipaddress.ip_network(entry.strip(), strict=False)
        except ValueError:
            raise ConfigError(f"{entry!r} is not an IP address or a network like '10.0.0.0/8' or '2001:db8::/32'; list your reverse "
                              "proxies' addresses.", file=f, key="web.trusted_proxies") from None


_COLOUR = re.compile(r"#(?:[0-9a-fA-F]{3}|[0-9a-fA-F]{6})")
_FONTS = re.compile(r"[A-Za-z0-9 ,\"'-]{1,200}")  # what goes into the stylesheet: nothing that could end the rule


def _luminance(colour: str) -> float:
    """WCAG 2.1 relative luminance of #rgb or #rrggbb."""
    digits = colour[1:] if len(colour) == 7 else "".join(c * 2 for c in colour[1:])
    channels = [int(digits[i:i + 2], 16) / 255 for i in (0, 2, 4)]
    r, g, b = [c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4 for c in channels]
    return 0.2126 * r + 0.7152 * g + 0.0722 * b


def contrast(a: str, b: str) -> float:
    """The WCAG contrast ratio of two colours, 1 to 21."""
    high, low = sorted((_luminance(a), _luminance(b)), reverse=True)
    return (high + 0.05) / (low + 0.05)


def _check_theme(cfg: Config) -> None:
    """The site's colours, font and logo go into its stylesheet and pages: checked strictly, and for WCAG AA contrast."""
    s, f = cfg.site, cfg.file
    for key in ("accent_color", "text_color", "background_color"):
        if not _COLOUR.fullmatch(getattr(s, key)):
            raise ConfigError(f"expected a colour like '#0b5cad' (# and 3 or 6 hex digits), got {getattr(s, key)!r}.", file=f, key=f"site.{key}")
    for key in ("text_color", "accent_color"):  # body text and links on the background; the buttons' text is the background
        ratio = contrast(getattr(s, key), s.background_color)
        if ratio < 4.5:
            raise ConfigError(f"{getattr(s, key)} on the background {s.background_color} has a contrast of {ratio:.1f}:1; readers need "
                              "4.5:1 (WCAG 2.1 AA): choose a darker or lighter colour.", file=f, key=f"site.{key}")
    if not _FONTS.fullmatch(s.font_family):
        raise ConfigError(f"expected a CSS font list like 'Georgia, \"Times New Roman\", serif' (letters, digits, spaces, commas, quotes, "
                          f"hyphens), got {s.font_family!r}.", file=f, key="site.font_family")
    if s.logo and not (re.fullmatch(r"https://[^\s\"'<>]+", s.logo) or re.fullmatch(r"/[A-Za-z0-9._/-]+", s.logo)):
        raise ConfigError(f"expected a path on the site like '/media/logo.svg' or an https:// URL, got {s.logo!r}.", file=f, key="site.logo")
    if not 1 <= s.page_size <= 500:
        raise ConfigError(f"expected 1 to 500 publications a page, got {s.page_size}.", file=f, key="site.page_size")


def _get(obj: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        obj = getattr(obj, part)
    return obj
