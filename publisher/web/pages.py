"""Subscription pages: subscribe (double opt-in), confirm, one-click unsubscribe (RFC 8058), preferences.

Every page works without JavaScript. The answer to a sign-up is the same whether or not the address was
known. Links carry signed tokens; a forged, expired or wrong-purpose token gets a 400 and changes nothing.
"""

from __future__ import annotations

import hmac
import logging
import secrets
import threading
import time
from collections import deque
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any
from urllib.parse import parse_qs

import jinja2
from itsdangerous import BadData, URLSafeTimedSerializer
from starlette.requests import Request
from starlette.responses import HTMLResponse, PlainTextResponse, RedirectResponse, Response
from starlette.routing import Route

from subscribers import InvalidAddress, confirm, set_preferences, subscribe, unsubscribe
from subscribers.tokens import make_confirm_token, read_confirm_token, read_token

from ..config import Config
from ..delivery.send import links_for
from ..delivery.transactional import send_confirmation
from ..store import Store

log = logging.getLogger(__name__)
MAX_FORM = 16 * 1024
CSRF_COOKIE = "publisher_csrf"


class RateLimit:
    """At most ``limit`` requests per ``window`` seconds per client address (in memory: one process)."""

    def __init__(self, limit: int = 5, window: float = 600.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.limit, self.window, self.clock = limit, window, clock
        self.hits: dict[str, deque[float]] = {}
        self.lock = threading.Lock()

    def allow(self, key: str) -> bool:
        now = self.clock()
        with self.lock:
            if len(self.hits) > 10_000:  # forget idle clients
                self.hits = {k: q for k, q in self.hits.items() if q and q[-1] > now - self.window}
            q = self.hits.setdefault(key, deque())
            while q and q[0] <= now - self.window:
                q.popleft()
            if len(q) >= self.limit:
                return False
            q.append(now)
            return True


def subscription_routes(cfg: Config, store: Store, *, rate_limit: RateLimit | None = None) -> list[Route]:
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(cfg.path(cfg.site.templates_dir)), autoescape=True,
                             undefined=jinja2.StrictUndefined, auto_reload=True)
    limiter = rate_limit or RateLimit()
    base = cfg.site.base_url.rstrip("/")
    csrf = URLSafeTimedSerializer(cfg.secret_key.get(), salt="publisher.csrf")

    def page(name: str, status: int = 200, **context: Any) -> HTMLResponse:
        return HTMLResponse(env.get_template(name).render(site=cfg.site, **context), status_code=status)

    def message(heading: str, text: str, status: int = 200) -> HTMLResponse:
        return page("web/message.html.j2", status, heading=heading, text=text)

    def bad_link() -> HTMLResponse:
        return message("This link does not work", "It may be mistyped, expired, or meant for something else. Nothing was changed.", 400)

    def now() -> datetime:
        return datetime.now(timezone.utc)

    def subscribe_form(request: Request, *, error: str = "", email: str = "", chosen: tuple[str, ...] = (), status: int = 200) -> HTMLResponse:
        cookie = request.cookies.get(CSRF_COOKIE) or secrets.token_urlsafe(24)
        response = page("web/subscribe.html.j2", status, action="/subscribe", csrf=csrf.dumps(cookie), error=error, email=email,
                        topics=store.topics(), chosen=chosen)
        response.set_cookie(CSRF_COOKIE, cookie, max_age=7200, httponly=True, samesite="lax", secure=request.url.scheme == "https")
        return response

    async def subscribe_page(request: Request) -> Response:
        if request.method == "GET":
            return subscribe_form(request)
        form = await _form(request)
        if form is None:
            return PlainTextResponse("form too large", status_code=413)
        email, chosen = form.get("email", [""])[0], tuple(form.get("topics", []))
        if not _csrf_ok(csrf, request.cookies.get(CSRF_COOKIE), form.get("csrf", [""])[0]):
            return subscribe_form(request, error="The form expired. Please submit it again.", email=_safe_echo(email), status=400)
        if form.get("website", [""])[0]:  # the honeypot: people leave it empty, form-filling bots do not
            return check_inbox()
        if not limiter.allow(request.client.host if request.client else "?"):
            return message("Too many attempts", "Please wait a few minutes and try again.", 429)
        try:
            result = subscribe(store, email, chosen, now(), double_opt_in=cfg.subscribers.double_opt_in,
                               check_deliverability=cfg.subscribers.check_deliverability)
        except InvalidAddress:
            return subscribe_form(request, error="That does not look like an email address. Please check it.", email=_safe_echo(email),
                                  chosen=chosen, status=400)
        if result.send_confirmation and result.subscriber is not None:
            sub = result.subscriber
            link = f"{base}/confirm/{make_confirm_token(cfg.secret_key.get(), sub.id, sub.email)}"
            outcome = send_confirmation(cfg, sub, link, links_for(cfg, sub), now())
            if outcome.status != "sent":
                log.warning("confirmation to subscriber %s not sent: %s", sub.id, outcome.error)
        return check_inbox()

    def check_inbox() -> HTMLResponse:
        return message("Check your inbox",
                       "If the address can receive our digest, a confirmation link is on its way. Click it to start your subscription.")

    def email_of(subscriber_id: int) -> str | None:
        sub = store.subscriber_by_id(subscriber_id)
        return sub.email if sub else None

    async def confirm_page(request: Request) -> Response:
        token = request.path_params["token"]
        subscriber_id = read_confirm_token(cfg.verification_keys, token, email_of)
        if subscriber_id is None:
            return bad_link()
        if request.method == "GET":  # a button, not an action: mail scanners follow links
            return page("web/action.html.j2", heading="Confirm your subscription", text="One click and the weekly digest is on its way.",
                        action=f"/confirm/{token}", button="Confirm my subscription")
        sub = confirm(store, subscriber_id, now())
        if sub is None:
            return bad_link()
        return message("You are subscribed", f"The {cfg.site.name} weekly digest will come to {sub.email}.")

    async def unsubscribe_page(request: Request) -> Response:
        token = request.path_params["token"]
        subscriber_id = read_token(cfg.verification_keys, "unsubscribe", token)
        if subscriber_id is None or store.subscriber_by_id(subscriber_id) is None:
            return bad_link()
        if request.method == "GET":
            return page("web/action.html.j2", heading="Unsubscribe", text=f"Stop the {cfg.site.name} weekly digest?",
                        action=f"/unsubscribe/{token}", button="Unsubscribe")
        form = await _form(request)
        unsubscribe(store, subscriber_id, now())
        if form is not None and form.get("List-Unsubscribe") == ["One-Click"]:
            return PlainTextResponse("unsubscribed\n")  # RFC 8058: a mail client's one-click POST, no page needed
        return message("You are unsubscribed", "No more digests will come. You can subscribe again at any time.")

    async def preferences_page(request: Request) -> Response:
        token = request.path_params["token"]
        subscriber_id = read_token(cfg.verification_keys, "preferences", token)
        sub = store.subscriber_by_id(subscriber_id) if subscriber_id is not None else None
        if sub is None:
            return bad_link()
        saved = False
        if request.method == "POST":
            form = await _form(request)
            if form is None:
                return PlainTextResponse("form too large", status_code=413)
            set_preferences(store, sub.id, form.get("topics", []), [t.slug for t in store.topics()], now())
            sub, saved = store.subscriber_by_id(sub.id), True
        assert sub is not None
        return page("web/preferences.html.j2", action=f"/preferences/{token}", topics=store.topics(), chosen=sub.topics,
                    email=sub.email, saved=saved, unsubscribe_url=links_for(cfg, sub)["unsubscribe_url"])

    async def subscribe_redirect(request: Request) -> Response:
        return RedirectResponse(f"{base}/subscribe", status_code=307)

    return [
        Route("/subscribe", subscribe_page, methods=["GET", "POST"]),
        Route("/subscribe/", subscribe_redirect, methods=["GET"]),
        Route("/confirm/{token}", confirm_page, methods=["GET", "POST"]),
        Route("/unsubscribe/{token}", unsubscribe_page, methods=["GET", "POST"]),
        Route("/preferences/{token}", preferences_page, methods=["GET", "POST"]),
    ]


async def _form(request: Request) -> dict[str, list[str]] | None:
    """An urlencoded form, at most MAX_FORM bytes (None when larger)."""
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_FORM:
            return None
    return parse_qs(body.decode("utf-8", "replace"), keep_blank_values=True)


def _csrf_ok(serializer: URLSafeTimedSerializer, cookie: str | None, token: str) -> bool:
    if not cookie or not token:
        return False
    try:
        value = serializer.loads(token, max_age=7200)
    except BadData:
        return False
    return isinstance(value, str) and hmac.compare_digest(value, cookie)


def _safe_echo(value: str) -> str:
    """What the visitor typed, shown back (escaped by the template), without line breaks and at a sane length."""
    return value.replace("\r", " ").replace("\n", " ")[:300]
