"""`publisher preview`: the next issue as subscribers will get it, re-rendered live as editors work.

A change to content/, templates/ or config.toml re-reads them (over the store, which the preview never writes:
see Overlay) and bumps a version; the open page hears it
over server-sent events and reloads itself. A broken template shows on the page (file and line) and the
server keeps running. Sends only test copies, and only to [preview].test_recipients. It answers only
when addressed as 127.0.0.1, localhost or [::1] on its own port (DNS rebinding), takes POSTs only from
its own pages, and sends a Content-Security-Policy (see security.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import email.parser
import email.policy
import html
import logging
import re
import threading
from datetime import datetime, timezone
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlsplit

import jinja2
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response, StreamingResponse
from starlette.routing import Route

from subscribers import InvalidAddress, normalise_email

from ..config import Config, load_config
from ..delivery.message import compile_message, preview_message_id
from ..delivery.send import links_for, send_test
from ..digest.issue import GMAIL_CLIPS_AT, MAX_HTML_BYTES
from ..digest.render import RenderedIssue
from ..errors import PublisherError, TemplateError
from ..feeds import FeedBuilder, FeedSpec
from ..models import Publication, Subscriber, SubscriberStatus, Topic
from ..pipeline import next_issue
from ..store import Store
from .security import HardenedStarlette, PreviewGuard, SecurityHeaders, preview_policy

log = logging.getLogger(__name__)
SAMPLE = Subscriber(0, "subscriber@example.com", SubscriberStatus.ACTIVE, datetime(2026, 1, 1, tzinfo=timezone.utc),
                    datetime(2026, 1, 1, tzinfo=timezone.utc))
LONG_TITLE = 150


class Overlay:
    """The store as the next ingest of the content folders would leave it, without writing to it.

    The preview reads content/ as it is now, but the store is the main job's: had the preview ingested, the next
    `run --once` would report nothing new for the files an editor just added (and poll the partner feeds). What
    the files say wins over the stored row; a publication the store has not seen yet counts as first seen now.
    Everything else (issues, the note, subscribers, settings) is the store's own.
    """

    def __init__(self, store: Store, pubs: list[Publication], topics: list[Topic], now: datetime) -> None:
        self._store, self._now = store, now
        self._topics = {t.slug: t for t in topics}
        stored = store.publications_by_id(p.id for p in pubs)
        self._pubs = {p.id: dataclasses.replace(p, first_seen_at=stored[p.id][1].first_seen_at if p.id in stored else now) for p in pubs}

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)

    def topics(self) -> list[Topic]:
        merged = {t.slug: t for t in self._store.topics()} | self._topics
        return sorted(merged.values(), key=lambda t: t.slug)

    def publications(self, *, seen_after: datetime | None = None, seen_until: datetime | None = None, **kw: Any) -> list[Publication]:
        if kw or not self._pubs:
            return self._store.publications(seen_after=seen_after, seen_until=seen_until, **kw)
        rows = {p.id: p for p in self._store.publications(seen_after=seen_after, seen_until=seen_until)}
        for pub in self._pubs.values():
            seen = pub.first_seen_at or self._now
            if (seen_after is None or seen > seen_after) and (seen_until is None or seen <= seen_until):
                rows[pub.id] = pub
            else:
                rows.pop(pub.id, None)
        return sorted(rows.values(), key=lambda p: (p.published, p.id), reverse=True)


def read_content(cfg: Config, store: Store, now: datetime) -> tuple[Overlay, list[str]]:
    """The content folders as they are now (only files changed since the main job's last ingest are parsed),
    over the store; and what is wrong in them."""
    from ..ingest import build_sources
    from ..sources.files import FilesSource

    pubs: list[Publication] = []
    topics: list[Topic] = []
    problems: list[str] = []
    for source in build_sources(cfg):
        if not isinstance(source, FilesSource):
            continue  # remote sources: as the main job last polled them
        source.known = store.content_files(source.name)
        source.known_topics = {t.slug for t in store.topics()}
        result = source.fetch()
        pubs += result.publications
        topics += result.topics
        problems += [str(e) for e in result.errors]
    return Overlay(store, pubs, topics, now), problems


class PreviewState:
    """The config, the content as of the last change (over the store, never written to it), and a version the
    page watches."""

    def __init__(self, cfg: Config, store: Store) -> None:
        self.cfg, self.store = cfg, store
        self.view: Any = store
        self.version = 0
        self.problem = ""  # a config or ingest problem to show on the page
        self.lock = threading.Lock()
        self.stop = threading.Event()

    def refresh(self) -> None:
        with self.lock:
            try:
                if self.cfg.file is not None:
                    self.cfg = load_config(self.cfg.file)
                self.view, problems = read_content(self.cfg, self.store, datetime.now(timezone.utc))
                self.problem = "; ".join(problems)
            except PublisherError as exc:
                self.problem = str(exc)
            self.version += 1

    def watch_paths(self) -> list[Path]:
        cfg = self.cfg
        paths = [cfg.path(cfg.site.templates_dir), *(cfg.path(s.path) for s in cfg.sources.values() if s.kind == "files")]
        if cfg.file is not None:
            paths.append(cfg.file)
        return [p for p in paths if p.exists()]

    def watch(self) -> None:
        from watchfiles import watch

        for _changes in watch(*self.watch_paths(), stop_event=self.stop, debounce=200, step=50, rust_timeout=500, yield_on_timeout=False):
            self.refresh()


def create_preview_app(cfg: Config, store: Store, *, watch: bool = True) -> Starlette:
    state = PreviewState(cfg, store)
    state.refresh()
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(cfg.path(cfg.site.templates_dir)), autoescape=True, auto_reload=True,
                             undefined=jinja2.StrictUndefined)

    def render(topics: tuple[str, ...]) -> RenderedIssue:
        _, variants = next_issue(state.cfg, state.view, datetime.now(timezone.utc), [topics])  # the pipeline's plan → render
        return variants[topics]

    async def index(request: Request) -> Response:
        q = request.query_params
        view = q.get("view", "desktop") if q.get("view") in ("desktop", "mobile", "text") else "desktop"
        dark, topics = q.get("dark") == "1", tuple(sorted(q.getlist("topics")))
        cfg = state.cfg
        context: dict[str, Any] = {"site": cfg.site, "view": view, "dark": dark, "topics": topics, "version": state.version,
                                   "csp_nonce": request.state.csp_nonce,
                                   "problem": state.problem, "all_topics": state.view.topics(), "notice": q.get("notice", ""),
                                   "url": lambda **changes: _url((view, dark, topics), **changes), "max_bytes": MAX_HTML_BYTES}
        try:
            rendered = await asyncio.to_thread(render, topics)
        except TemplateError as exc:
            context["error"] = str(exc)
        else:
            sub = SAMPLE
            compiled = compile_message(cfg, rendered, datetime.now(timezone.utc))
            message = compiled.for_recipient(preview_message_id(compiled.domain), sub.email, links_for(cfg, sub))
            headers = email.parser.BytesHeaderParser(policy=email.policy.default).parsebytes(message)
            html_text, text = rendered.personalise({**links_for(cfg, sub), "email": sub.email})
            context.update(error="", rendered=rendered, text=text, size=len(html_text.encode("utf-8")), sent_size=_html_as_sent(message),
                           clips_at=GMAIL_CLIPS_AT,
                           headers=[(k, str(v)) for k, v in headers.items() if k.lower() not in ("content-type", "mime-version")],
                           links=_links(cfg, html_text), items=[(p, _warnings(cfg, p)) for p in rendered.issue.publications])
        return HTMLResponse(env.get_template("web/preview.html.j2").render(**context))

    def _html_as_sent(message: bytes) -> int:
        """The HTML part's bytes as they are in the message (quoted-printable): what Gmail's clipping counts."""
        parsed = email.message_from_bytes(message, policy=email.policy.compat32)
        part = next(p for p in parsed.walk() if p.get_content_type() == "text/html")
        return len(str(part.get_payload(decode=False)).encode("ascii"))

    async def frame(request: Request) -> Response:
        q = request.query_params
        try:
            rendered = await asyncio.to_thread(render, tuple(sorted(q.getlist("topics"))))
        except TemplateError as exc:
            return HTMLResponse(f"<pre>{html.escape(str(exc))}</pre>", status_code=500)
        page, _ = rendered.personalise({**links_for(state.cfg, SAMPLE), "email": SAMPLE.email})
        if q.get("dark") == "1":  # roughly what a client that inverts colours (Gmail's apps) does
            page = page.replace("</head>", "<style>html{filter:invert(1) hue-rotate(180deg)} img{filter:invert(1) hue-rotate(180deg)}</style></head>", 1)
        return HTMLResponse(page)

    async def events(request: Request) -> Response:
        async def stream() -> Any:
            seen = -1
            while not await request.is_disconnected():
                if state.version != seen:
                    seen = state.version
                    yield f"data: {seen}\n\n"
                else:
                    yield ": still here\n\n"
                await asyncio.sleep(0.3)
        return StreamingResponse(stream(), media_type="text/event-stream", headers={"Cache-Control": "no-store"})

    async def send_test_copy(request: Request) -> Response:
        from urllib.parse import parse_qs

        form = parse_qs((await request.body())[:4096].decode("utf-8", "replace"))
        raw = form.get("email", [""])[0]
        allowed = {normalise_email(a) for a in state.cfg.preview.test_recipients}
        try:
            address = normalise_email(raw)
        except InvalidAddress:
            address = ""
        if address not in allowed:
            notice = f"Test copies go only to the addresses in [preview].test_recipients ({', '.join(sorted(allowed)) or 'none set'})."
        else:
            result = await asyncio.to_thread(send_test, state.cfg, state.view, datetime.now(timezone.utc), address)
            notice = f"Test copy to {address}: {result.status}" + (f" ({result.error})" if result.error else "")
        return RedirectResponse("/?" + urlencode({"notice": notice}), status_code=303)

    async def confirmation(request: Request) -> Response:
        cfg = state.cfg
        context = {"site": cfg.site, "confirm_url": f"{cfg.site.base_url.rstrip('/')}/confirm/SAMPLE-TOKEN", "email": SAMPLE.email,
                   "unsubscribe_url": links_for(cfg, SAMPLE)["unsubscribe_url"]}
        try:
            return HTMLResponse(env.get_template("email/confirm.html.j2").render(**context))
        except jinja2.TemplateError as exc:
            return HTMLResponse(f"<pre>{html.escape(str(exc))}</pre>", status_code=500)

    async def feeds(request: Request) -> Response:
        builder = FeedBuilder(state.cfg)
        builder.topic_names = {t.slug: t.name for t in state.store.topics()}
        spec = FeedSpec("all", state.cfg.site.name, f"Everything {state.cfg.site.name} publishes.", "/")
        [(spec, pubs)] = builder.listings(state.store, [spec])
        atom = builder.render(spec, "atom", pubs).decode("utf-8")
        return HTMLResponse(f"<!doctype html><html lang=\"en\"><title>Feed preview</title><h1>The everything feed (Atom), as it will be written</h1>"
                            f"<p><a href=\"/\">Back to the digest</a></p><pre>{html.escape(atom)}</pre></html>")

    routes = [Route("/", index), Route("/frame", frame), Route("/events", events), Route("/send-test", send_test_copy, methods=["POST"]),
              Route("/confirmation", confirmation), Route("/feeds", feeds)]
    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> Any:
        yield
        state.stop.set()  # the watcher ends within its timeout

    policy = preview_policy()
    app = HardenedStarlette(routes=routes, lifespan=lifespan, outer=[lambda app: SecurityHeaders(app, policy), PreviewGuard])
    if watch:  # started here, not at startup: it must run however the app is served
        threading.Thread(target=state.watch, name="preview-watch", daemon=True).start()
    app.state.preview = state
    return app


def _url(current: tuple[str, bool, tuple[str, ...]], **changes: Any) -> str:
    """This page's query string with some parameters changed."""
    view, dark, topics = current
    params: dict[str, Any] = {"view": view, "dark": "1" if dark else "", "topics": list(topics)}
    params.update(changes)
    return "?" + urlencode({k: v for k, v in params.items() if v not in ("", None, [])}, doseq=True)


_HREF = re.compile(r'href="([^"]+)"')


def _links(cfg: Config, page: str) -> list[tuple[str, str]]:
    """Every link once: internal ones checked against the built site, external ones listed (not fetched)."""
    base = cfg.site.base_url.rstrip("/")
    public = cfg.path(cfg.site.public_dir)
    out = []
    for url in dict.fromkeys(html.unescape(u) for u in _HREF.findall(page)):
        if url.startswith(base):
            path = urlsplit(url).path.lstrip("/")
            target = public / path
            exists = target.is_file() or (target / "index.html").is_file()
            dynamic = path.startswith(("unsubscribe/", "preferences/", "confirm/"))
            out.append((url, "served by publisher serve" if dynamic else "ok" if exists else "missing from public/"))
        else:
            out.append((url, "external"))
    return out


def _warnings(cfg: Config, pub: Publication) -> list[str]:
    found = []
    if pub.image and not pub.image.alt.strip():
        found.append("image without alt text (the caption or title stands in)")
    if not pub.summary.strip():
        found.append("no summary")
    if len(pub.title) > LONG_TITLE:
        found.append(f"very long title ({len(pub.title)} characters)")
    media = f"{cfg.site.base_url.rstrip('/')}/media/"
    if pub.image and pub.image.url.startswith(media):
        rel = pub.image.url[len(media):]
        if not any((cfg.path(s.path) / rel).is_file() for s in cfg.sources.values() if s.kind == "files"):
            found.append(f"image {rel} missing on disk")
    return found
