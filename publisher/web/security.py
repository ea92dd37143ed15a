"""Security headers on every answer, and the editor preview's guard against DNS rebinding and cross-site POSTs.

Both are pure ASGI middleware: they touch only the response's start message (headers) or answer before the
app runs, so streamed bodies (the preview's server-sent events) pass through untouched. Starlette's
BaseHTTPMiddleware would buffer them. ``HardenedStarlette`` puts them outside Starlette's own error handler,
so its 500 page carries the headers too.

The policies, and why each source is allowed:

    publisher serve (the site under public/, the subscription pages, the webhooks, errors and 404s)
      default-src 'none'                    nothing loads unless named below; no script at all, but on /search/:
                                            script-src 'self' 'wasm-unsafe-eval' and connect-src 'self' (Pagefind's
                                            search box: the site's own files, its WebAssembly and its index),
                                            and on /pagefind/ (its worker runs under its own script's policy)
    /media/ (images)                      sandbox; default-src 'none'; form-action 'none': an SVG opened as a
                                            document runs and submits nothing (as <img> its policy does not apply)
      img-src 'self' https: http: data:     the digest web copies show images from [site].base_url and from partner feeds
      style-src 'self' 'unsafe-inline'      MJML's output and the pages style inline (style attributes cannot be hashed)
      form-action 'self' <base_url>         the sign-up, confirm, unsubscribe and preferences forms post here
      frame-ancestors 'none'                no other site may frame a page (clickjacking the unsubscribe button)
      base-uri 'none'                       an injected <base> cannot redirect relative links
      Referrer-Policy strict-origin-when-cross-origin (never a path to another site); same-origin (nothing at all to
                                            another site) on the pages whose URL holds a token. Not no-referrer:
                                            with it, browsers send "Origin: null" on a form's POST to the same site
    publisher preview (127.0.0.1 only)
      as above, plus script-src 'nonce-…' (the live-reload script, a fresh nonce per answer), connect-src 'self'
      (its event stream), frame-src 'self' and frame-ancestors 'self' (the issue shows in its own iframe)

No Cross-Origin-Resource-Policy: the digest's images under public/media/ are loaded by mail clients from
other origins (webmail), and that header would break them.
"""

from __future__ import annotations

import posixpath
import secrets
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from starlette.applications import Starlette
from starlette.datastructures import Headers
from starlette.responses import PlainTextResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

NONCE_SLOT = "{nonce}"
TOKEN_PAGES = ("/confirm/", "/unsubscribe/", "/preferences/")  # their URL is a credential: never sent on
SEARCH_PATHS = ("/search/", "/pagefind/")  # the search page, and Pagefind's files (its worker)
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
LOCAL_HOSTS = ("127.0.0.1", "localhost", "[::1]")


@dataclass(frozen=True)
class HeaderPolicy:
    """The headers for every answer, with per-path-prefix replacements; ``{nonce}`` in a value is a fresh nonce."""

    headers: Mapping[str, str]
    by_prefix: Sequence[tuple[str, Mapping[str, str]]] = ()
    nonce: bool = field(init=False)

    def __post_init__(self) -> None:
        values = [*self.headers.values(), *(v for _, h in self.by_prefix for v in h.values())]
        object.__setattr__(self, "nonce", any(NONCE_SLOT in v for v in values))

    def for_path(self, path: str) -> dict[str, str]:
        """The headers for ``path`` as the file server will resolve it: "/search/../media/x.svg" is /media/x.svg
        (the server normalises the path after this; the ASGI path is already percent-decoded)."""
        chosen = dict(self.headers)
        norm = posixpath.normpath("/" + path.lstrip("/")) + ("/" if path.endswith("/") and path.strip("/") else "")
        for prefix, headers in self.by_prefix:
            if norm.startswith(prefix):
                chosen.update(headers)
        return chosen


def _csp(**directives: str) -> str:
    return "; ".join(f"{name.replace('_', '-')} {value}" for name, value in directives.items())


def site_policy(base_url: str) -> HeaderPolicy:
    origin = "{0.scheme}://{0.netloc}".format(urlsplit(base_url))
    directives = {"default_src": "'none'", "img_src": "'self' https: http: data:", "style_src": "'self' 'unsafe-inline'",
                  "form_action": f"'self' {origin}", "frame_ancestors": "'none'", "base_uri": "'none'"}
    common = {"Content-Security-Policy": _csp(**directives), "X-Content-Type-Options": "nosniff", "X-Frame-Options": "DENY",
              "Referrer-Policy": "strict-origin-when-cross-origin"}
    # One page runs scripts, and only the site's own files: Pagefind's search box, which compiles WebAssembly
    # ('wasm-unsafe-eval' allows that, not eval) and fetches its index from the site.
    search = {"Content-Security-Policy": _csp(**directives, script_src="'self' 'wasm-unsafe-eval'", connect_src="'self'")}
    # Pagefind's worker script gets it too: a worker runs under the policy its own script came with.
    # An image opened by itself (an SVG from content/ is a document) runs nothing and submits nothing: sandboxed, its
    # forms would post with Origin "null", which the sign-up refuses. Embedded as <img>, its own policy does not apply.
    media = {"Content-Security-Policy": _csp(sandbox="", default_src="'none'", img_src="'self' data:", style_src="'unsafe-inline'",
                                             form_action="'none'", frame_ancestors="'none'", base_uri="'none'").replace("sandbox ;", "sandbox;")}
    return HeaderPolicy(common, (*((prefix, {"Referrer-Policy": "same-origin"}) for prefix in TOKEN_PAGES),
                                 *((prefix, search) for prefix in SEARCH_PATHS), ("/media/", media)))


def preview_policy() -> HeaderPolicy:
    csp = _csp(default_src="'none'", script_src=f"'nonce-{NONCE_SLOT}'", style_src="'self' 'unsafe-inline'",
               img_src="'self' https: http: data:", connect_src="'self'", frame_src="'self'", form_action="'self'",
               frame_ancestors="'self'", base_uri="'none'")
    return HeaderPolicy({"Content-Security-Policy": csp, "X-Content-Type-Options": "nosniff", "X-Frame-Options": "SAMEORIGIN",
                         "Referrer-Policy": "same-origin"})


class SecurityHeaders:
    """Adds the policy's headers to every HTTP answer; a header the app set itself is left as it is.

    With a nonce in the policy, the request's ``scope["state"]["csp_nonce"]`` holds it (``request.state.csp_nonce``),
    for the template to put on its own inline script.
    """

    def __init__(self, app: ASGIApp, policy: HeaderPolicy) -> None:
        self.app, self.policy = app, policy

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = self.policy.for_path(scope.get("path", "/"))
        if self.policy.nonce:
            nonce = secrets.token_urlsafe(18)
            scope.setdefault("state", {})["csp_nonce"] = nonce
            headers = {k: v.replace(NONCE_SLOT, nonce) for k, v in headers.items()}
        extra = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()]

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                own = list(message.get("headers", []))
                present = {k.lower() for k, _ in own}
                message = {**message, "headers": own + [(k, v) for k, v in extra if k not in present]}
            await send(message)

        await self.app(scope, receive, send_with_headers)


class PreviewGuard:
    """The preview listens on 127.0.0.1, but a web page can still reach it: through DNS rebinding (a name of the
    attacker's that resolves to 127.0.0.1 here) or by posting a form to it. So:

    - only a Host of 127.0.0.1, localhost or [::1] with the port it listens on is served; anything else is 421;
    - a POST (any unsafe method) sent by another site is 403: its Sec-Fetch-Site says cross-site or same-site
      (another port on this machine is another origin) or, from a browser without Sec-Fetch-Site, its Origin is
      not the preview's own. Every current browser sends one or both on a POST; a request with neither is not
      from a browser (curl, a script on this machine, which the Host check already let in), so no cross-site
      request can be forged with it: it is served.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":  # lifespan; the preview has no websockets
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        host = headers.get("host", "").lower()
        port = (scope.get("server") or (None, None))[1]
        if not _is_local(host, port):
            await _refuse(421, f"This preview answers only at http://127.0.0.1:{port}/ (Host {host[:100]!r} refused: "
                               "it guards against DNS rebinding).")(scope, receive, send)
            return
        if scope["method"] not in SAFE_METHODS and _cross_site(headers, host):
            await _refuse(403, "Cross-site request refused: the preview only takes forms sent from its own pages.")(scope, receive, send)
            return
        await self.app(scope, receive, send)


def _is_local(host: str, port: int | None) -> bool:
    allowed = {f"{name}:{port}" for name in LOCAL_HOSTS}
    if port == 80:  # a browser leaves the default port out
        allowed |= set(LOCAL_HOSTS)
    return host in allowed


def _cross_site(headers: Headers, host: str) -> bool:
    """Sec-Fetch-Site, which a page cannot set, decides where a browser sends it; Origin for browsers without it."""
    fetch_site = headers.get("sec-fetch-site")
    if fetch_site is not None:
        return fetch_site not in ("same-origin", "none")  # "none": the user's own action (typed, bookmarked)
    origin = headers.get("origin")
    return origin is not None and origin.lower() != f"http://{host}"


def _refuse(status: int, text: str) -> Callable[[Scope, Receive, Send], Awaitable[None]]:
    return PlainTextResponse(text + "\n", status_code=status)


class HardenedStarlette(Starlette):
    """A Starlette app wrapped, outside its own error handling, in the given middleware (outermost first)."""

    def __init__(self, *args: Any, outer: Sequence[Callable[[ASGIApp], ASGIApp]], **kwargs: Any) -> None:
        self.outer = tuple(outer)
        super().__init__(*args, **kwargs)

    def build_middleware_stack(self) -> ASGIApp:
        app = super().build_middleware_stack()
        for wrap in reversed(self.outer):
            app = wrap(app)
        return app
