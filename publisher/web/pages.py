"""Subscription pages: subscribe (double opt-in), confirm, one-click unsubscribe (RFC 8058), preferences.

Every page works without JavaScript. Links carry signed tokens; a forged, expired, malformed or wrong-purpose
token gets a 400 and changes nothing.

- **Sign-up.** POST /subscribe checks the form (CSRF, honeypot, size, address syntax, topics against the known
  ones), takes a slot of the client network's limit ([web].signups_per_network per signup_window, in the store, so
  every worker shares it), writes one row to the sign-up queue and answers "check your inbox". It never looks the
  address up: the answer and its timing are the same for a new, a known and a suppressed address. The queue's
  sender (publisher.delivery.transactional) does the rest off the request path, so a slow relay stalls no page.
- **CSRF.** Every form that changes state carries a token signed for a random cookie (SameSite=Lax), and a
  browser's cross-site POST (Sec-Fetch-Site: cross-site) is refused. One exception, by the standard: RFC 8058's
  one-click POST (body ``List-Unsubscribe=One-Click``) comes from a mail client with no cookie and no page, so it
  needs neither. That is safe because the unsubscribe URL is itself the credential (a 128-bit signature per
  subscriber): whoever could forge that POST could send it from anywhere, no browser needed. The other: the
  sign-up form of the site's static pages (a file cannot hold a per-visitor token), taken when the browser says
  the post came from this site (Sec-Fetch-Site: same-origin, or an Origin of ours), headers no page can set;
  any other post without a token gets the server's form back, with one, to press again.
"""

from __future__ import annotations

import hmac
import re
import secrets
from datetime import datetime, timedelta, timezone
from typing import Any
from urllib.parse import parse_qs, urlsplit

import jinja2
from itsdangerous import BadData, URLSafeTimedSerializer
from starlette.background import BackgroundTask
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, PlainTextResponse, RedirectResponse, Response
from starlette.routing import Route

from subscribers import InvalidAddress, confirm, confirmation_holds, normalise_email, set_preferences, unsubscribe
from subscribers.tokens import read_confirm_token, read_token

from ..config import Config, parse_duration
from ..delivery.send import links_for
from ..delivery.transactional import SignupSender
from ..site import css_address
from ..store import Store
from .clients import client_address, network_of, parse_networks, peer_is_trusted

MAX_FORM = 16 * 1024
CSRF_COOKIE = "publisher_csrf"
CSRF_MAX_AGE = 7200
_COOKIE = re.compile(r"[A-Za-z0-9_-]{32}")  # what secrets.token_urlsafe(24) makes
EXPIRED = "The form expired. Please submit it again (this form needs cookies)."
ONE_MORE = "One more step: please check your address and press Subscribe (this keeps other sites from signing you up)."


def subscription_routes(cfg: Config, store: Store, *, sender: SignupSender | None = None) -> list[Route]:
    """The pages, and (unless one is given) the sign-up sender thread, started here: Starlette 1.x has no startup hook."""
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(cfg.path(cfg.site.templates_dir)), autoescape=True,
                             undefined=jinja2.StrictUndefined, auto_reload=True)
    base = cfg.site.base_url.rstrip("/")
    origin = "{0.scheme}://{0.netloc}".format(urlsplit(base))
    css_url = css_address(cfg)
    csrf = URLSafeTimedSerializer(cfg.secret_key.get(), salt="publisher.csrf")
    trusted = parse_networks(cfg.web.trusted_proxies)
    window = timedelta(seconds=parse_duration(cfg.web.signup_window))
    queue = sender or SignupSender(cfg, store).start()

    def now() -> datetime:
        return datetime.now(timezone.utc)

    def page(request: Request, name: str, status: int = 200, **context: Any) -> HTMLResponse:
        """A page; a form on it gets a CSRF token for this visitor's cookie (made here when they have none)."""
        cookie = request.cookies.get(CSRF_COOKIE) or ""
        if not _COOKIE.fullmatch(cookie):  # ours, or a new one: never echo a value someone else chose
            cookie = secrets.token_urlsafe(24)
        response = HTMLResponse(env.get_template(name).render(site=cfg.site, css_url=css_url, csrf=csrf.dumps(cookie), **context), status_code=status)
        secure = request.url.scheme == "https" or (peer_is_trusted(_peer(request), trusted) and request.headers.get("x-forwarded-proto") == "https")
        response.set_cookie(CSRF_COOKIE, cookie, max_age=CSRF_MAX_AGE, httponly=True, samesite="lax", secure=secure)
        return response

    def message(request: Request, heading: str, text: str, status: int = 200) -> HTMLResponse:
        return page(request, "web/message.html.j2", status, heading=heading, text=text)

    def bad_link(request: Request) -> HTMLResponse:
        return message(request, "This link does not work", "It may be mistyped, expired, or meant for something else. Nothing was changed.", 400)

    def csrf_ok(request: Request, form: dict[str, list[str]]) -> bool:
        if request.headers.get("sec-fetch-site") == "cross-site":  # another site's page posting here: never a form of ours
            return False
        return _csrf_ok(csrf, request.cookies.get(CSRF_COOKIE), form.get("csrf", [""])[0])

    def from_our_page(request: Request, form: dict[str, list[str]]) -> bool:
        """The sign-up form of a static page (no cookie, no token), posted by a browser from this site: it says so in
        Sec-Fetch-Site, or else in Origin, headers a web page cannot set. Anything else gets the form with a token."""
        if "csrf" in form or "from_page" not in form:
            return False
        fetch_site = request.headers.get("sec-fetch-site")
        if fetch_site is not None:
            return fetch_site == "same-origin"
        return request.headers.get("origin", "").rstrip("/") in own_origins(request)

    def own_origins(request: Request) -> set[str]:
        return {origin, f"{request.url.scheme}://{request.url.netloc}"}

    def subscribe_form(request: Request, *, error: str = "", email: str = "", chosen: tuple[str, ...] = (), status: int = 200) -> HTMLResponse:
        return page(request, "web/subscribe.html.j2", status, action="/subscribe", error=error, email=email, topics=store.topics(), chosen=chosen)

    def check_inbox(request: Request) -> HTMLResponse:
        return message(request, "Check your inbox",
                       "If the address can receive our digest, a confirmation link is on its way. Click it to start your subscription.")

    async def subscribe_page(request: Request) -> Response:
        if request.method == "GET":
            return subscribe_form(request)
        form = await _form(request)
        if form is None:
            return PlainTextResponse("form too large", status_code=413)
        email, chosen = _safe_echo(form.get("email", [""])[0]), tuple(dict.fromkeys(form.get("topics", [])))
        if not (csrf_ok(request, form) or from_our_page(request, form)):
            if "csrf" not in form and "from_page" in form:  # a page's form from an older browser: one more press
                return subscribe_form(request, error=ONE_MORE, email=email, chosen=chosen, status=400)
            return subscribe_form(request, error=EXPIRED, email=email, status=400)
        if form.get("website", [""])[0]:  # the honeypot: people leave it empty, form-filling bots do not
            return check_inbox(request)
        network = network_of(client_address(_peer(request), request.headers.getlist("x-forwarded-for"), trusted))
        if not await run_in_threadpool(store.take_slot, f"net:{network}", cfg.web.signups_per_network, window, now()):
            response = message(request, "Too many attempts", "Please wait a few minutes and try again.", 429)
            response.headers["Retry-After"] = str(int(window.total_seconds()))
            return response
        try:
            address = await run_in_threadpool(normalise_email, form.get("email", [""])[0], check_deliverability=cfg.subscribers.check_deliverability)
        except InvalidAddress:
            return subscribe_form(request, error="That does not look like an email address. Please check it.", email=email, chosen=chosen, status=400)
        known = {t.slug for t in store.topics()}
        if not set(chosen) <= known:  # a stale form, or a forged one: nothing unknown is ever stored
            return subscribe_form(request, error="One of the chosen topics is not offered (any more). Please choose again.", email=email,
                                  chosen=tuple(c for c in chosen if c in known), status=400)
        await run_in_threadpool(store.enqueue_signup, address, chosen, now())
        response = check_inbox(request)
        # Woken once the answer is out: the sender's work (a send for a new address, next to nothing for a known
        # one) must not overlap this answer, or its timing would tell the two apart.
        response.background = BackgroundTask(queue.wake)
        return response

    async def confirm_page(request: Request) -> Response:
        token = request.path_params["token"]
        claim = read_confirm_token(cfg.verification_keys, token)
        if claim is None or not confirmation_holds(store, claim):  # say so now, not after the button is pressed
            return bad_link(request)
        button = {"heading": "Confirm your subscription", "text": "One click and the weekly digest is on its way.",
                  "action": f"/confirm/{token}", "button": "Confirm my subscription"}
        if request.method == "GET":  # a button, not an action: mail scanners follow links
            return page(request, "web/action.html.j2", **button, notice="")
        form = await _form(request)
        if form is None:
            return PlainTextResponse("form too large", status_code=413)
        if not csrf_ok(request, form):
            return page(request, "web/action.html.j2", 400, **button, notice=EXPIRED)
        sub = await run_in_threadpool(confirm, store, claim, now())
        if sub is None:
            return bad_link(request)
        return message(request, "You are subscribed", f"The {cfg.site.name} weekly digest will come to {sub.email}.")

    async def unsubscribe_page(request: Request) -> Response:
        token = request.path_params["token"]
        subscriber_id = read_token(cfg.verification_keys, "unsubscribe", token)
        if subscriber_id is None or store.subscriber_by_id(subscriber_id) is None:
            return bad_link(request)
        button = {"heading": "Unsubscribe", "text": f"Stop the {cfg.site.name} weekly digest?", "action": f"/unsubscribe/{token}",
                  "button": "Unsubscribe"}
        if request.method == "GET":
            return page(request, "web/action.html.j2", **button, notice="")
        form = await _form(request)
        if form is None:
            return PlainTextResponse("form too large", status_code=413)
        one_click = form.get("List-Unsubscribe") == ["One-Click"]  # RFC 8058: no cookie, no token, by design (see above)
        if not one_click and not csrf_ok(request, form):
            return page(request, "web/action.html.j2", 400, **button, notice=EXPIRED)
        unsubscribe(store, subscriber_id, now())
        if one_click:
            return PlainTextResponse("unsubscribed\n")  # a mail client's POST: no page needed
        return message(request, "You are unsubscribed", "No more digests will come. You can subscribe again at any time.")

    async def preferences_page(request: Request) -> Response:
        token = request.path_params["token"]
        subscriber_id = read_token(cfg.verification_keys, "preferences", token)
        sub = store.subscriber_by_id(subscriber_id) if subscriber_id is not None else None
        if sub is None:
            return bad_link(request)
        saved, error, status = False, "", 200
        if request.method == "POST":
            form = await _form(request)
            if form is None:
                return PlainTextResponse("form too large", status_code=413)
            if csrf_ok(request, form):
                set_preferences(store, sub.id, form.get("topics", []), [t.slug for t in store.topics()], now())
                sub, saved = store.subscriber_by_id(sub.id), True
            else:
                error, status = EXPIRED, 400
        assert sub is not None
        return page(request, "web/preferences.html.j2", status, action=f"/preferences/{token}", topics=store.topics(), chosen=sub.topics,
                    email=sub.email, saved=saved, error=error, unsubscribe_url=links_for(cfg, sub)["unsubscribe_url"])

    async def tokenless_page(request: Request) -> Response:
        """/unsubscribe and /preferences with no token: the links of the public web copy (it carries no one's
        address). Say where the personal link is, and offer the mailto: way; never a form that acts on an address."""
        what = "unsubscribe" if request.url.path.rstrip("/").endswith("unsubscribe") else "change your topics"
        return message(request, "Use the link in your email" if what == "unsubscribe" else "Your preferences",
                       f"This is the public web copy of the digest, so its links are nobody's. To {what}, use the link at "
                       f"the bottom of any {cfg.site.name} digest email: it is yours alone. Or write to "
                       f"{cfg.digest.from_address} with the subject \"unsubscribe\". Subscribe at {base}/subscribe.")

    async def subscribe_redirect(request: Request) -> Response:
        return RedirectResponse(f"{base}/subscribe", status_code=307)

    return [
        Route("/subscribe", subscribe_page, methods=["GET", "POST"]),
        Route("/subscribe/", subscribe_redirect, methods=["GET"]),
        Route("/confirm/{token}", confirm_page, methods=["GET", "POST"]),
        Route("/unsubscribe/{token}", unsubscribe_page, methods=["GET", "POST"]),
        Route("/preferences/{token}", preferences_page, methods=["GET", "POST"]),
        *(Route(path, tokenless_page, methods=["GET"]) for path in ("/unsubscribe", "/unsubscribe/", "/preferences", "/preferences/")),
    ]


def _peer(request: Request) -> str | None:
    return request.client.host if request.client else None


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
        value = serializer.loads(token, max_age=CSRF_MAX_AGE)
    except (BadData, UnicodeError, ValueError):
        return False
    # as bytes: compare_digest refuses str with non-ASCII characters, and a cookie can carry any
    return isinstance(value, str) and hmac.compare_digest(value.encode("utf-8", "replace"), cookie.encode("utf-8", "replace"))


def _safe_echo(value: str) -> str:
    """What the visitor typed, shown back (escaped by the template), without line breaks and at a sane length."""
    return value.replace("\r", " ").replace("\n", " ")[:300]
