"""Delivery webhooks: Postmark, SendGrid and Mailgun tell us about hard bounces and spam complaints.

Each endpoint checks that the request really comes from the provider, then marks the subscriber
bounced or complained (``subscribers.record_delivery_event``), which suppresses the address for good.

    POST /webhooks/postmark   HTTP Basic auth, $PUBLISHER_WEBHOOK_POSTMARK_AUTH ("user:password").
                              Postmark does not sign webhooks; put the credentials in the webhook URL:
                              https://user:password@www.example.org/webhooks/postmark
    POST /webhooks/sendgrid   Signed Event Webhook: ECDSA P-256 / SHA-256 over timestamp + raw body,
                              verified with $PUBLISHER_WEBHOOK_SENDGRID_PUBLIC_KEY (the base64 DER key
                              SendGrid shows; a PEM block works too); timestamps more than 5 minutes
                              off and bodies already accepted under the same timestamp are refused.
    POST /webhooks/mailgun    HMAC-SHA256 of timestamp + token with $PUBLISHER_WEBHOOK_MAILGUN_SIGNING_KEY;
                              timestamps more than 5 minutes off and tokens already seen are refused.

Answers:

    200 {"updated": n}   n = known subscribers whose status was set; unknown addresses and events
                         we do not act on (soft bounces, deliveries, opens...) are fine and count 0
    401                  Postmark: missing or wrong Basic credentials (with a WWW-Authenticate challenge)
    403                  SendGrid / Mailgun: missing, wrong, stale or replayed signature
    400                  authenticated but not the JSON shape the provider sends
    413                  a body over 1 MiB
    404                  the endpoint's secret is not set: the endpoint does not exist (any method), so
                         a provider pointed at it by mistake gets the same answer as for any unknown URL

In every refusal nothing changes in the store. The environment is read once, when the routes are
built; a secret that is set but unusable (no ':' in the Postmark credentials, a SendGrid key that is
not an EC P-256 public key) is a ConfigError then, not a 500 on every request. Secrets and signatures
never appear in a log line or a response.

The replay guards (Mailgun's tokens, SendGrid's signed timestamp and body) are kept in the store for the
5-minute window, so a replay is refused by every process serving the app and after a restart.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import logging
import os
import time
from collections.abc import Awaitable, Callable, Mapping
from datetime import datetime, timedelta, timezone
from typing import Any

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from subscribers import record_delivery_event

from ..config import Config
from ..errors import ConfigError
from ..store import Store

log = logging.getLogger(__name__)

POSTMARK_AUTH_ENV = "PUBLISHER_WEBHOOK_POSTMARK_AUTH"
SENDGRID_KEY_ENV = "PUBLISHER_WEBHOOK_SENDGRID_PUBLIC_KEY"
MAILGUN_KEY_ENV = "PUBLISHER_WEBHOOK_MAILGUN_SIGNING_KEY"

MAX_BODY = 1024 * 1024  # 1 MiB; a provider's batch is far smaller
MAILGUN_TOLERANCE = 300  # seconds either side of our clock
# SendGrid signs its timestamp with the body but documents no window; a captured request could then be
# replayed for ever. The same 5 minutes as Mailgun (and Stripe, Svix), so a replay must come fast, and a
# replay inside the window is caught by the body it repeats.
SENDGRID_TOLERANCE = 300

SENDGRID_SIGNATURE = "X-Twilio-Email-Event-Webhook-Signature"
SENDGRID_TIMESTAMP = "X-Twilio-Email-Event-Webhook-Timestamp"

# Postmark bounce types that say the address itself is bad. Transient, SoftBounce, DnsError, Blocked
# (an ISP block of the message or the sender), AutoResponder... are not the address's fault.
# ManuallyDeactivated is left out on purpose: it is someone's action in Postmark's UI or API, not a
# delivery failure, and calling it "bounced" here would be a guess.
POSTMARK_HARD = frozenset({"HardBounce", "BadEmailAddress"})

Event = tuple[str, str]  # (kind: "bounced" | "complained", email)


class _Refused(Exception):
    """Answer ``status`` with a short reason; logged without any secret."""

    def __init__(self, status: int, reason: str, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason
        self.headers = dict(headers or {})


def webhook_routes(cfg: Config, store: Store, env: Mapping[str, str] | None = None, *,
                   clock: Callable[[], float] = time.time) -> list[Route]:
    """The three webhook endpoints; an endpoint whose secret is unset answers 404.

    ``clock`` (seconds since the epoch) is for tests: it dates the status change and judges
    SendGrid's and Mailgun's timestamps.
    """
    env = os.environ if env is None else env
    postmark = env.get(POSTMARK_AUTH_ENV, "")
    sendgrid = env.get(SENDGRID_KEY_ENV, "").strip()
    mailgun = env.get(MAILGUN_KEY_ENV, "")
    recorder = _Recorder(store, clock)
    return [
        _route("/webhooks/postmark", "webhook_postmark", _postmark_handler(postmark, recorder) if postmark else None),
        _route("/webhooks/sendgrid", "webhook_sendgrid", _sendgrid_handler(_sendgrid_key(sendgrid), recorder, clock) if sendgrid else None),
        _route("/webhooks/mailgun", "webhook_mailgun", _mailgun_handler(mailgun, recorder, clock) if mailgun else None),
    ]


def _route(path: str, name: str, handler: Callable[[Request], Awaitable[Response]] | None) -> Route:
    if handler is None:
        # Not configured: a route that is not there. Kept as a route (every method) so that a mount
        # behind it, e.g. the static site, cannot answer 405 and give the endpoint away.
        return Route(path, _not_found, methods=["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"], name=name)
    provider = name.removeprefix("webhook_")

    async def endpoint(request: Request) -> Response:
        try:
            return await handler(request)
        except _Refused as exc:
            log.warning("webhook %s: refused with %d: %s", provider, exc.status, exc.reason)
            return JSONResponse({"error": exc.reason}, status_code=exc.status, headers=exc.headers)

    return Route(path, endpoint, methods=["POST"], name=name)


async def _not_found(request: Request) -> Response:
    return PlainTextResponse("Not Found", status_code=404)


class _Recorder:
    """Apply events to the store off the event loop (the store is synchronous)."""

    def __init__(self, store: Store, clock: Callable[[], float]) -> None:
        self.store = store
        self.clock = clock

    async def apply(self, events: list[Event]) -> Response:
        updated = await run_in_threadpool(self._apply, events) if events else 0
        return JSONResponse({"updated": updated})

    def _apply(self, events: list[Event]) -> int:
        now = datetime.fromtimestamp(self.clock(), timezone.utc)
        return sum(record_delivery_event(self.store, email, kind, now) for kind, email in events)


# -- request helpers ------------------------------------------------------------------------------


async def _read_body(request: Request) -> bytes:
    """The raw body, refused with 413 as soon as it is known to exceed MAX_BODY."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.strip().isdigit() and int(declared) > MAX_BODY:
        raise _Refused(413, f"body over {MAX_BODY} bytes")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY:
            raise _Refused(413, f"body over {MAX_BODY} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _json(body: bytes) -> Any:
    try:
        return json.loads(body)
    except (ValueError, RecursionError):  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise _Refused(400, "body is not valid JSON") from None


def _email(value: Any, where: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise _Refused(400, f"{where} has no email address")
    return value


# -- Postmark ---------------------------------------------------------------------------------------


def _postmark_handler(credentials: str, recorder: _Recorder) -> Callable[[Request], Awaitable[Response]]:
    if ":" not in credentials:
        raise ConfigError(f"{POSTMARK_AUTH_ENV} must be 'user:password' (the credentials in Postmark's webhook URL).")
    expected = hashlib.sha256(credentials.encode("utf-8")).digest()
    challenge = {"WWW-Authenticate": 'Basic realm="webhooks", charset="UTF-8"'}

    async def handle(request: Request) -> Response:
        scheme, _, encoded = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "basic" or not encoded.strip():
            raise _Refused(401, "Basic credentials required", challenge)
        try:
            given = base64.b64decode(encoded.strip(), validate=True)
        except binascii.Error:
            raise _Refused(401, "Basic credentials required", challenge) from None
        # Hashing both sides first: equal-length digests, so the comparison leaks neither content nor length.
        if not hmac.compare_digest(hashlib.sha256(given).digest(), expected):
            raise _Refused(401, "wrong credentials", challenge)
        payload = _json(await _read_body(request))
        if not isinstance(payload, dict):
            raise _Refused(400, "expected one JSON object")
        return await recorder.apply(_postmark_events(payload))

    return handle


def _postmark_events(payload: dict[str, Any]) -> list[Event]:
    record = payload.get("RecordType")
    kind = payload.get("Type")
    # Older bounce webhooks carry no RecordType; their Type says what they are.
    if record == "SpamComplaint" or (record in ("Bounce", None) and kind == "SpamComplaint"):
        return [("complained", _email(payload.get("Email"), "the spam complaint"))]
    if record in ("Bounce", None) and kind in POSTMARK_HARD:
        return [("bounced", _email(payload.get("Email"), "the bounce"))]
    return []  # soft bounces, deliveries, opens, clicks, subscription changes: nothing to do


# -- SendGrid ---------------------------------------------------------------------------------------


def _sendgrid_key(value: str) -> ec.EllipticCurvePublicKey:
    try:
        if "-----BEGIN" in value:
            key = serialization.load_pem_public_key(value.encode("ascii"))
        else:
            key = serialization.load_der_public_key(base64.b64decode("".join(value.split()), validate=True))
    except (ValueError, binascii.Error, UnsupportedAlgorithm):
        key = None
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, ec.SECP256R1):
        raise ConfigError(f"{SENDGRID_KEY_ENV} is not an ECDSA P-256 public key; paste the verification key "
                          "SendGrid shows for the Signed Event Webhook (base64).")
    return key


def _sendgrid_handler(key: ec.EllipticCurvePublicKey, recorder: _Recorder,
                      clock: Callable[[], float]) -> Callable[[Request], Awaitable[Response]]:
    seen = _SeenInStore(recorder.store, "sendgrid", SENDGRID_TOLERANCE)

    async def handle(request: Request) -> Response:
        signature = request.headers.get(SENDGRID_SIGNATURE, "")
        timestamp = request.headers.get(SENDGRID_TIMESTAMP, "")
        if not signature or not timestamp:
            raise _Refused(403, "signature headers missing")
        body = await _read_body(request)
        try:
            key.verify(base64.b64decode(signature, validate=True), timestamp.encode("utf-8") + body, ec.ECDSA(hashes.SHA256()))
        except (InvalidSignature, binascii.Error, ValueError):
            raise _Refused(403, "bad signature") from None
        now = clock()
        if not _fresh(timestamp, now, SENDGRID_TOLERANCE):
            raise _Refused(403, f"timestamp more than {SENDGRID_TOLERANCE} s from our clock")
        payload = _json(body)
        if not isinstance(payload, list) or not all(isinstance(e, dict) for e in payload):
            raise _Refused(400, "expected a JSON array of event objects")
        events = _sendgrid_events(payload)
        # Keyed by what was signed, not by the signature: ECDSA signatures are malleable, so a replay can carry
        # another valid signature over the same timestamp and body.
        message = f"{timestamp}:{hashlib.sha256(body).hexdigest()}"
        if not await seen.claim(message, now):
            raise _Refused(403, "this signed body was already accepted (replay)")
        try:
            return await recorder.apply(events)
        except BaseException:
            await seen.release(message)  # not recorded: SendGrid's retry must still pass
            raise

    return handle


def _fresh(timestamp: str, now: float, tolerance: int) -> bool:
    """A Unix time in ASCII digits (no sign, no Unicode digits, no 5,000-digit number), within ``tolerance`` of now."""
    return timestamp.isascii() and timestamp.isdigit() and len(timestamp) <= 12 and abs(now - int(timestamp)) <= tolerance


def _sendgrid_events(payload: list[dict[str, Any]]) -> list[Event]:
    events: list[Event] = []
    for item in payload:
        event = item.get("event")
        if event == "bounce" and item.get("type") == "bounce":  # "blocked" is a block of the message, not a bad address
            events.append(("bounced", _email(item.get("email"), "a bounce event")))
        elif event == "spamreport":
            events.append(("complained", _email(item.get("email"), "a spamreport event")))
        # "dropped" is ignored: SendGrid refused to send because the address is already on one of its
        # suppression lists, and the bounce or spam report that put it there came as its own event.
        # The reason is free text ("Bounced Address", "Unsubscribed Address", "Invalid"...), not a code.
    return events


# -- Mailgun ----------------------------------------------------------------------------------------


class _SeenInStore:
    """Signed requests already accepted, kept in the store so every process and a restart see them.

    A key holds one slot of the shared ``rate_slots`` table (the sign-up limits' table) for the freshness
    window: a second claim of it inside the window fails in any process, and the store's pruning drops it
    afterwards. Keys are SHA-256 digests, so an attacker's token never reaches SQL as text and never grows a key.
    """

    def __init__(self, store: Store, kind: str, window: int) -> None:
        self.store, self.kind, self.window = store, kind, timedelta(seconds=window)

    def _key(self, token: str) -> str:
        return f"wh:{self.kind}:{hashlib.sha256(token.encode('utf-8')).hexdigest()}"

    async def claim(self, token: str, now: float) -> bool:
        """True the first time a token is seen (it is then remembered); False for a replay."""
        at = datetime.fromtimestamp(now, timezone.utc)
        return await run_in_threadpool(self.store.take_slot, self._key(token), 1, self.window, at)

    async def release(self, token: str) -> None:
        await run_in_threadpool(self.store.release_slot, self._key(token))


def _mailgun_handler(signing_key: str, recorder: _Recorder, clock: Callable[[], float]) -> Callable[[Request], Awaitable[Response]]:
    key = signing_key.encode("utf-8")
    tokens = _SeenInStore(recorder.store, "mailgun", MAILGUN_TOLERANCE)

    async def handle(request: Request) -> Response:
        payload = _json(await _read_body(request))
        if not isinstance(payload, dict):
            raise _Refused(400, "expected one JSON object")
        sig = payload.get("signature")
        if not isinstance(sig, dict):
            raise _Refused(403, "signature missing")
        timestamp, token, signature = sig.get("timestamp"), sig.get("token"), sig.get("signature")
        if isinstance(timestamp, int) and not isinstance(timestamp, bool):
            timestamp = str(timestamp)
        if not all(isinstance(v, str) and v for v in (timestamp, token, signature)):
            raise _Refused(403, "signature missing")
        digest = hmac.new(key, (timestamp + token).encode("utf-8"), hashlib.sha256).hexdigest()
        if not hmac.compare_digest(digest.encode("ascii"), signature.lower().encode("utf-8")):
            raise _Refused(403, "bad signature")
        now = clock()
        if not _fresh(timestamp, now, MAILGUN_TOLERANCE):
            raise _Refused(403, f"timestamp more than {MAILGUN_TOLERANCE} s from our clock")
        events = _mailgun_events(payload.get("event-data"))
        if not await tokens.claim(token, now):
            raise _Refused(403, "token already used (replay)")
        try:
            return await recorder.apply(events)
        except BaseException:
            await tokens.release(token)  # not recorded: Mailgun's retry of this very request must still pass
            raise

    return handle


def _mailgun_events(data: Any) -> list[Event]:
    if not isinstance(data, dict):
        raise _Refused(400, "event-data missing")
    event = data.get("event")
    if event == "complained":
        return [("complained", _email(data.get("recipient"), "the complained event"))]
    if event == "failed" and data.get("severity") == "permanent":
        # Mailgun refusing to send because the address is on its complaint list is a complaint;
        # every other permanent failure (bounce, suppress-bounce, suppress-unsubscribe, ...) suppresses as bounced.
        kind = "complained" if data.get("reason") == "suppress-complaint" else "bounced"
        return [(kind, _email(data.get("recipient"), "the failed event"))]
    return []  # temporary failures, deliveries, opens...: nothing to do
