"""Render an issue: Jinja2 (autoescape on) → MJML → HTML via mjml-python; text from its own template.

An issue variant is rendered once. What differs per recipient (their address, their
unsubscribe and preferences links) is left as slots that delivery fills, so sending never
re-renders.

A slot's marker carries a random nonce drawn for that render (see :class:`Slots`). Everything a
source supplies (titles, summaries, links, image URLs, captions) was fixed before the nonce
existed, so nothing in it can be a marker: a partner feed whose title or link says
``%%UNSUBSCRIBE_URL%%`` (or any other guess) gets those characters back literally, never a
recipient's address or working link.
"""

from __future__ import annotations

import binascii
import secrets
from dataclasses import dataclass, field
from datetime import datetime
from html import escape
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import jinja2
from babel.dates import format_date
from mjml import mjml2html

from ..config import Config
from ..errors import TemplateError
from ..feeds.content import plain_text
from ..models import DigestIssue

# What differs per recipient in the bodies.
SLOT_NAMES = ("email", "unsubscribe_url", "preferences_url")
HTML_TEMPLATE = "email/digest.mjml.j2"
TEXT_TEMPLATE = "email/digest.txt.j2"


@dataclass(frozen=True)
class Slots:
    """The markers of one render: ``slot-<nonce>-<name>``, the nonce 128 random bits drawn for that render.

    Lower-case ASCII letters, digits and hyphens: they pass HTML escaping, MJML, URLs and
    quoted-printable unchanged, and hold no provider's substitution syntax (the API adapters build
    their own tags and variables from the same nonce). The nonce is new for every render and exists
    only after the issue's data was fixed, so source data cannot contain a marker.
    """

    nonce: str = field(default_factory=lambda: secrets.token_hex(16))

    def marker(self, name: str) -> str:
        return f"slot-{self.nonce}-{name.replace('_', '-')}"

    @property
    def markers(self) -> dict[str, str]:
        """name → marker, for the body slots (:data:`SLOT_NAMES`)."""
        return {name: self.marker(name) for name in SLOT_NAMES}


@dataclass(frozen=True)
class RenderedIssue:
    issue: DigestIssue
    subject: str
    html: str
    text: str
    slots: Slots = field(default_factory=Slots)

    def personalise(self, values: dict[str, str]) -> tuple[str, str]:
        return personalise(self.html, self.text, values, self.slots)


def quoted_printable(data: bytes) -> bytes:
    """Quoted-printable with CRLF line ends, lines at most 76 octets: how both bodies travel in the message."""
    return binascii.b2a_qp(data, istext=True).replace(b"\n", b"\r\n")


def size_as_sent(html: str) -> int:
    """The HTML's bytes as they are in the message (quoted-printable): what Gmail's clipping at about 102 KB counts.
    About 8 % more than the decoded HTML ("=" becomes "=3D", and a soft break ends every 76th octet)."""
    return len(quoted_printable(html.encode("utf-8")))


def personalise(html: str, text: str, values: dict[str, str], slots: Slots) -> tuple[str, str]:
    """Fill the slots: values escaped for the HTML, as they are for the text."""
    for key, marker in slots.markers.items():
        html = html.replace(marker, escape(values[key]))
        text = text.replace(marker, values[key])
    return html, text


class Renderer:
    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.templates_dir = cfg.path(cfg.site.templates_dir)
        loader = jinja2.FileSystemLoader(self.templates_dir)
        self.html_env = jinja2.Environment(loader=loader, autoescape=True, undefined=jinja2.StrictUndefined, auto_reload=True)
        self.text_env = jinja2.Environment(loader=loader, autoescape=False, undefined=jinja2.StrictUndefined, auto_reload=True, keep_trailing_newline=True)
        for env in (self.html_env, self.text_env):
            env.filters["date"] = self._format_date
            env.filters["plain"] = plain_text  # titles and summaries may carry markup from a source: text only
        self.renders = 0  # how many times a template was rendered (a test counts them: once per variant)

    def _format_date(self, value: datetime, fmt: str = "medium") -> str:
        local = value.astimezone(ZoneInfo(self.cfg.site.timezone))
        return format_date(local.date(), format=fmt, locale=self.cfg.site.language.replace("-", "_"))

    def context(self, issue: DigestIssue, slots: Slots) -> dict[str, Any]:
        site = self.cfg.site
        return {
            "issue": issue,
            "site": site,
            "base_url": site.base_url.rstrip("/"),
            "view_url": f"{site.base_url.rstrip('/')}/digests/{issue.id}.html",
            "preheader": _preheader(issue),
            "placeholders": slots.markers,
            "subject": self.subject(issue),
        }

    def subject(self, issue: DigestIssue) -> str:
        return self.cfg.digest.subject.format(site=self.cfg.site.name, date=self._format_date(issue.created_at, "long"), issue=issue.id)

    def render(self, issue: DigestIssue) -> RenderedIssue:
        self.renders += 1
        slots = Slots()  # a new nonce for every render
        ctx = self.context(issue, slots)
        mjml_source = self._render(self.html_env, HTML_TEMPLATE, ctx)
        try:
            html = mjml2html(mjml_source)
        except ValueError as exc:
            raise TemplateError(str(self.templates_dir / HTML_TEMPLATE), None, f"MJML could not compile the rendered template: {exc}") from None
        text = self._render(self.text_env, TEXT_TEMPLATE, ctx)
        return RenderedIssue(issue=issue, subject=ctx["subject"], html=html, text=text, slots=slots)

    def _render(self, env: jinja2.Environment, name: str, ctx: dict[str, Any]) -> str:
        try:
            return env.get_template(name).render(ctx)
        except jinja2.TemplateSyntaxError as exc:
            raise TemplateError(str(Path(exc.filename or self.templates_dir / name)), exc.lineno, exc.message or "syntax error") from None
        except jinja2.TemplateNotFound as exc:
            raise TemplateError(str(self.templates_dir / str(exc.name)), None, f"template not found in {self.templates_dir}; check [site].templates_dir") from None
        except jinja2.UndefinedError as exc:
            raise TemplateError(str(self.templates_dir / name), _error_line(exc, name), str(exc)) from None


def _error_line(exc: BaseException, name: str) -> int | None:
    """The template line of an error raised while rendering (Jinja keeps it in the traceback)."""
    tb = exc.__traceback__
    line = None
    while tb is not None:
        if tb.tb_frame.f_code.co_filename.endswith(name):
            line = tb.tb_lineno
        tb = tb.tb_next
    return line


def _preheader(issue: DigestIssue) -> str:
    pubs = issue.publications
    if not pubs:
        return ""
    first = plain_text(pubs[0].title)  # the inbox preview is text: no tags, not even escaped ones
    return first if len(pubs) == 1 else f"{first}, and {len(pubs) - 1} more"
