"""Delivery webhooks (Postmark, SendGrid, Mailgun): authentic events suppress subscribers, anything else changes nothing."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import secrets
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import requests
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from starlette.applications import Starlette
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.testclient import TestClient

import publisher.web.webhooks as webhooks
from publisher.config import Config
from publisher.errors import ConfigError
from publisher.models import SubscriberStatus
from publisher.store import Store, open_store
from publisher.web.webhooks import MAILGUN_KEY_ENV, POSTMARK_AUTH_ENV, SENDGRID_KEY_ENV, webhook_routes
from subscribers import add_subscriber

from .conftest import NOW
from .servers import run_app

ALICE, BOB, CAROL = "alice@example.org", "bob@example.org", "carol@example.org"
POSTMARK_USER, POSTMARK_PASSWORD = "postmark", "pm-" + "x" * 20
MAILGUN_KEY = "key-mailgun-signing-0123456789"
T = NOW.timestamp()  # the app's clock in these tests
TS = str(int(T) - 10)  # a SendGrid timestamp: signed ten seconds ago


def clock() -> float:
    return T


def sendgrid_keypair() -> tuple[ec.EllipticCurvePrivateKey, str]:
    private = ec.generate_private_key(ec.SECP256R1())
    der = private.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return private, base64.b64encode(der).decode("ascii")


SENDGRID_PRIVATE, SENDGRID_PUBLIC = sendgrid_keypair()
FULL_ENV = {POSTMARK_AUTH_ENV: f"{POSTMARK_USER}:{POSTMARK_PASSWORD}", SENDGRID_KEY_ENV: SENDGRID_PUBLIC, MAILGUN_KEY_ENV: MAILGUN_KEY}


@pytest.fixture
def db(cfg: Config) -> Iterator[Store]:
    store = open_store(cfg.store_url)
    for email in (ALICE, BOB, CAROL):
        add_subscriber(store, email, NOW, confirmed=True)
    yield store
    store.close()


def make_client(cfg: Config, db: Store, env: dict[str, str] | None = None, **kw: Any) -> TestClient:
    app = Starlette(routes=webhook_routes(cfg, db, FULL_ENV if env is None else env, clock=clock))
    return TestClient(app, **kw)


@pytest.fixture
def client(cfg: Config, db: Store) -> Iterator[TestClient]:
    with make_client(cfg, db) as c:
        yield c


def status(db: Store, email: str) -> SubscriberStatus:
    sub = db.subscriber(email)
    assert sub is not None
    return sub.status


def all_active(db: Store) -> bool:
    return all(status(db, e) is SubscriberStatus.ACTIVE for e in (ALICE, BOB, CAROL))


# -- Postmark -------------------------------------------------------------------------------------

AUTH = (POSTMARK_USER, POSTMARK_PASSWORD)


def postmark_bounce(email: str = ALICE, type_: str = "HardBounce") -> dict[str, Any]:
    return {"RecordType": "Bounce", "ID": 42, "Type": type_, "TypeCode": 1, "Email": email, "Inactive": True, "MessageStream": "broadcast"}


def test_postmark_hard_bounce_and_spam_complaint(client: TestClient, db: Store) -> None:
    r = client.post("/webhooks/postmark", json=postmark_bounce(ALICE), auth=AUTH)
    assert r.status_code == 200 and r.json() == {"updated": 1}
    assert status(db, ALICE) is SubscriberStatus.BOUNCED
    complaint = {"RecordType": "SpamComplaint", "Type": "SpamComplaint", "TypeCode": 100001, "Email": "Bob@Example.org"}
    r = client.post("/webhooks/postmark", json=complaint, auth=AUTH)
    assert r.status_code == 200 and r.json() == {"updated": 1}
    assert status(db, BOB) is SubscriberStatus.COMPLAINED
    assert status(db, CAROL) is SubscriberStatus.ACTIVE


@pytest.mark.parametrize(("type_", "expected"), [
    ("HardBounce", SubscriberStatus.BOUNCED),
    ("BadEmailAddress", SubscriberStatus.BOUNCED),
    ("SoftBounce", SubscriberStatus.ACTIVE),
    ("Transient", SubscriberStatus.ACTIVE),
    ("DnsError", SubscriberStatus.ACTIVE),
    ("Blocked", SubscriberStatus.ACTIVE),
    ("AutoResponder", SubscriberStatus.ACTIVE),
    ("ManuallyDeactivated", SubscriberStatus.ACTIVE),
])
def test_postmark_only_hard_bounces_suppress(client: TestClient, db: Store, type_: str, expected: SubscriberStatus) -> None:
    r = client.post("/webhooks/postmark", json=postmark_bounce(ALICE, type_), auth=AUTH)
    assert r.status_code == 200 and r.json() == {"updated": int(expected is not SubscriberStatus.ACTIVE)}
    assert status(db, ALICE) is expected


def test_postmark_other_records_and_unknown_addresses_are_fine(client: TestClient, db: Store) -> None:
    for payload in ({"RecordType": "Delivery", "Recipient": ALICE}, {"RecordType": "Open", "Recipient": ALICE},
                    postmark_bounce("nobody@example.org"), postmark_bounce("not an address")):
        r = client.post("/webhooks/postmark", json=payload, auth=AUTH)
        assert r.status_code == 200 and r.json() == {"updated": 0}
    assert all_active(db)


@pytest.mark.parametrize("headers", [
    {},
    {"Authorization": "Basic " + base64.b64encode(f"{POSTMARK_USER}:wrong".encode()).decode()},
    {"Authorization": "Basic " + base64.b64encode(f"other:{POSTMARK_PASSWORD}".encode()).decode()},
    {"Authorization": "Basic " + base64.b64encode(f"{POSTMARK_USER}:{POSTMARK_PASSWORD}x".encode()).decode()},
    {"Authorization": "Basic " + base64.b64encode(POSTMARK_PASSWORD.encode()).decode()},
    {"Authorization": "Basic !!!not-base64!!!"},
    {"Authorization": "Basic"},
    {"Authorization": f"Bearer {POSTMARK_PASSWORD}"},
])
def test_postmark_wrong_credentials_are_401_and_change_nothing(client: TestClient, db: Store, headers: dict[str, str],
                                                                caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.DEBUG):
        r = client.post("/webhooks/postmark", json=postmark_bounce(ALICE), headers=headers)
    assert r.status_code == 401
    assert r.headers["www-authenticate"].startswith("Basic ")
    assert all_active(db)
    assert POSTMARK_PASSWORD not in caplog.text and POSTMARK_PASSWORD not in r.text


def test_postmark_malformed_is_400(client: TestClient, db: Store) -> None:
    for body in (b"{not json", b"\xff\xfe", b"[]", b'"Bounce"', json.dumps({"RecordType": "Bounce", "Type": "HardBounce"}).encode(),
                 json.dumps({"RecordType": "Bounce", "Type": "HardBounce", "Email": 7}).encode()):
        r = client.post("/webhooks/postmark", content=body, auth=AUTH, headers={"content-type": "application/json"})
        assert r.status_code == 400, body
    assert all_active(db)


def test_postmark_credentials_are_checked_before_the_body(client: TestClient, db: Store) -> None:
    assert client.post("/webhooks/postmark", content=b"{not json").status_code == 401


def test_postmark_misconfigured_credentials_fail_at_startup(cfg: Config, db: Store) -> None:
    with pytest.raises(ConfigError, match=POSTMARK_AUTH_ENV) as info:
        webhook_routes(cfg, db, {POSTMARK_AUTH_ENV: "just-a-password-123"})
    assert "just-a-password-123" not in str(info.value)


# -- SendGrid -------------------------------------------------------------------------------------


def sendgrid_sign(body: bytes, timestamp: str, key: ec.EllipticCurvePrivateKey = SENDGRID_PRIVATE) -> dict[str, str]:
    signature = key.sign(timestamp.encode() + body, ec.ECDSA(hashes.SHA256()))
    return {"X-Twilio-Email-Event-Webhook-Signature": base64.b64encode(signature).decode(),
            "X-Twilio-Email-Event-Webhook-Timestamp": timestamp, "Content-Type": "application/json"}


SENDGRID_BATCH = json.dumps([
    {"email": ALICE, "event": "bounce", "type": "bounce", "reason": "550 5.1.1 unknown user", "timestamp": 1700000000, "sg_event_id": "a"},
    {"email": BOB, "event": "bounce", "type": "blocked", "reason": "554 blocked by policy", "timestamp": 1700000000, "sg_event_id": "b"},
    {"email": CAROL, "event": "spamreport", "timestamp": 1700000000, "sg_event_id": "c"},
    {"email": BOB, "event": "dropped", "reason": "Bounced Address", "timestamp": 1700000000, "sg_event_id": "d"},
    {"email": BOB, "event": "delivered", "timestamp": 1700000000, "sg_event_id": "e"},
    {"email": "nobody@example.org", "event": "bounce", "type": "bounce", "timestamp": 1700000000, "sg_event_id": "f"},
], separators=(",", ":")).encode()


def test_sendgrid_signed_batch_bounces_and_complains(client: TestClient, db: Store) -> None:
    r = client.post("/webhooks/sendgrid", content=SENDGRID_BATCH, headers=sendgrid_sign(SENDGRID_BATCH, TS))
    assert r.status_code == 200 and r.json() == {"updated": 2}
    assert status(db, ALICE) is SubscriberStatus.BOUNCED
    assert status(db, BOB) is SubscriberStatus.ACTIVE  # a block and a drop are not a bad address
    assert status(db, CAROL) is SubscriberStatus.COMPLAINED


def test_sendgrid_pem_key_is_accepted_too(cfg: Config, db: Store) -> None:
    pem = SENDGRID_PRIVATE.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()
    with make_client(cfg, db, {SENDGRID_KEY_ENV: pem}) as c:
        assert c.post("/webhooks/sendgrid", content=SENDGRID_BATCH, headers=sendgrid_sign(SENDGRID_BATCH, TS)).status_code == 200
    assert status(db, ALICE) is SubscriberStatus.BOUNCED


def _bad_sendgrid_requests() -> list[Any]:
    good = sendgrid_sign(SENDGRID_BATCH, TS)
    other_key, _ = sendgrid_keypair()
    tampered = SENDGRID_BATCH.replace(b"spamreport", b"spamreporT")
    cases = [
        ("no headers", SENDGRID_BATCH, {"Content-Type": "application/json"}),
        ("no timestamp", SENDGRID_BATCH, {k: v for k, v in good.items() if "Timestamp" not in k}),
        ("no signature", SENDGRID_BATCH, {k: v for k, v in good.items() if "Signature" not in k}),
        ("other key", SENDGRID_BATCH, sendgrid_sign(SENDGRID_BATCH, TS, other_key)),
        ("tampered body", tampered, good),
        ("other timestamp", SENDGRID_BATCH, {**good, "X-Twilio-Email-Event-Webhook-Timestamp": str(int(TS) + 1)}),
        ("signature not base64", SENDGRID_BATCH, {**good, "X-Twilio-Email-Event-Webhook-Signature": "!!!"}),
        ("signature not DER", SENDGRID_BATCH, {**good, "X-Twilio-Email-Event-Webhook-Signature": base64.b64encode(b"\x00" * 64).decode()}),
    ]
    return [pytest.param(body, headers, id=case) for case, body, headers in cases]


@pytest.mark.parametrize(("body", "headers"), _bad_sendgrid_requests())
def test_sendgrid_bad_signature_is_403_and_changes_nothing(client: TestClient, db: Store, body: bytes, headers: dict[str, str]) -> None:
    r = client.post("/webhooks/sendgrid", content=body, headers=headers)
    assert r.status_code == 403
    assert all_active(db)


def test_sendgrid_malformed_but_signed_is_400(client: TestClient, db: Store) -> None:
    for body in (b"[{not json", b'{"email": "alice@example.org", "event": "bounce", "type": "bounce"}', b'["bounce"]',
                 b'[{"event": "spamreport"}]',
                 b'[{"event": "spamreport", "email": "carol@example.org"}, {"event": "bounce", "type": "bounce"}]'):
        r = client.post("/webhooks/sendgrid", content=body, headers=sendgrid_sign(body, TS))
        assert r.status_code == 400, body
    assert all_active(db)  # a batch is validated whole before any of it is applied


@pytest.mark.parametrize("key", [
    "not base64 at all!",
    base64.b64encode(b"not DER").decode(),
    base64.b64encode(ec.generate_private_key(ec.SECP384R1()).public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)).decode(),
    base64.b64encode(rsa.generate_private_key(65537, 2048).public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)).decode(),
], ids=["garbage", "not-der", "p384", "rsa"])
def test_sendgrid_unusable_key_fails_at_startup(cfg: Config, db: Store, key: str) -> None:
    with pytest.raises(ConfigError, match=SENDGRID_KEY_ENV):
        webhook_routes(cfg, db, {SENDGRID_KEY_ENV: key})


# -- Mailgun --------------------------------------------------------------------------------------


def mailgun_payload(event_data: Any, *, timestamp: float = T, token: str | None = None, key: str = MAILGUN_KEY) -> dict[str, Any]:
    ts = str(int(timestamp))
    token = token or secrets.token_hex(25)
    signature = hmac.new(key.encode(), (ts + token).encode(), hashlib.sha256).hexdigest()
    return {"signature": {"timestamp": ts, "token": token, "signature": signature}, "event-data": event_data}


def failed(email: str, severity: str, reason: str = "bounce") -> dict[str, Any]:
    return {"event": "failed", "severity": severity, "reason": reason, "recipient": email,
            "delivery-status": {"code": 550 if severity == "permanent" else 452, "message": "..."}}


def test_mailgun_permanent_failure_and_complaint(client: TestClient, db: Store) -> None:
    r = client.post("/webhooks/mailgun", json=mailgun_payload(failed(ALICE, "permanent")))
    assert r.status_code == 200 and r.json() == {"updated": 1}
    assert status(db, ALICE) is SubscriberStatus.BOUNCED
    r = client.post("/webhooks/mailgun", json=mailgun_payload({"event": "complained", "recipient": BOB}))
    assert r.status_code == 200 and r.json() == {"updated": 1}
    assert status(db, BOB) is SubscriberStatus.COMPLAINED
    r = client.post("/webhooks/mailgun", json=mailgun_payload(failed(CAROL, "permanent", "suppress-complaint")))
    assert r.status_code == 200 and status(db, CAROL) is SubscriberStatus.COMPLAINED


def test_mailgun_temporary_failures_other_events_and_unknown_addresses_change_nothing(client: TestClient, db: Store) -> None:
    for data in (failed(ALICE, "temporary"), failed(ALICE, "temporary", "generic"), {"event": "delivered", "recipient": ALICE},
                 {"event": "opened", "recipient": ALICE}, failed("nobody@example.org", "permanent")):
        r = client.post("/webhooks/mailgun", json=mailgun_payload(data))
        assert r.status_code == 200 and r.json() == {"updated": 0}
    assert all_active(db)


def _bad_mailgun_payloads() -> list[Any]:
    data = failed(ALICE, "permanent")
    good = mailgun_payload(data)
    sig = good["signature"]
    cases = [
        ("no signature", {"event-data": data}),
        ("signature not an object", {"signature": "abc", "event-data": data}),
        ("no token", {"signature": {k: v for k, v in sig.items() if k != "token"}, "event-data": data}),
        ("other key", mailgun_payload(data, key="key-someone-else")),
        ("wrong signature", {"signature": {**sig, "signature": "0" * 64}, "event-data": data}),
        ("other token", {"signature": {**sig, "token": "f" * 50}, "event-data": data}),
        ("other timestamp", {"signature": {**sig, "timestamp": str(int(T) + 1)}, "event-data": data}),
        ("stale timestamp", mailgun_payload(data, timestamp=T - 301)),
        ("far-future timestamp", mailgun_payload(data, timestamp=T + 301)),
    ]
    return [pytest.param(payload, id=case) for case, payload in cases]


@pytest.mark.parametrize("payload", _bad_mailgun_payloads())
def test_mailgun_bad_signature_is_403_and_changes_nothing(client: TestClient, db: Store, payload: dict[str, Any],
                                                          caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.DEBUG):
        r = client.post("/webhooks/mailgun", json=payload)
    assert r.status_code == 403
    assert all_active(db)
    assert MAILGUN_KEY not in caplog.text and MAILGUN_KEY not in r.text


def test_mailgun_timestamp_within_five_minutes_is_accepted(client: TestClient, db: Store) -> None:
    assert client.post("/webhooks/mailgun", json=mailgun_payload(failed(ALICE, "permanent"), timestamp=T - 299)).status_code == 200
    assert status(db, ALICE) is SubscriberStatus.BOUNCED


def test_mailgun_replayed_token_is_refused(client: TestClient, db: Store) -> None:
    first = mailgun_payload({"event": "complained", "recipient": ALICE}, token="tok-1")
    assert client.post("/webhooks/mailgun", json=first).status_code == 200
    db.set_subscriber_status(ALICE, SubscriberStatus.ACTIVE, NOW)  # e.g. re-subscribed since
    assert client.post("/webhooks/mailgun", json=first).status_code == 403
    # The same token, correctly signed, with other event data: still a replay.
    again = mailgun_payload({"event": "complained", "recipient": BOB}, token="tok-1")
    assert client.post("/webhooks/mailgun", json=again).status_code == 403
    assert all_active(db)


def _fail_first_record(monkeypatch: pytest.MonkeyPatch) -> None:
    """The first event the webhook records fails as if the database went away; the next ones go through."""
    calls: list[str] = []
    real = webhooks.record_delivery_event

    def flaky(store: Store, email: str, kind: str, now: Any) -> bool:
        calls.append(email)
        if len(calls) == 1:
            raise RuntimeError("database went away")
        return real(store, email, kind, now)

    monkeypatch.setattr(webhooks, "record_delivery_event", flaky)


def test_mailgun_token_of_a_failed_request_can_be_retried(cfg: Config, db: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    _fail_first_record(monkeypatch)
    payload = mailgun_payload(failed(ALICE, "permanent"), token="tok-retry")
    with make_client(cfg, db, raise_server_exceptions=False) as c:
        assert c.post("/webhooks/mailgun", json=payload).status_code == 500
        assert status(db, ALICE) is SubscriberStatus.ACTIVE
        assert c.post("/webhooks/mailgun", json=payload).status_code == 200  # Mailgun's retry
        assert c.post("/webhooks/mailgun", json=payload).status_code == 403  # now it is a replay
    assert status(db, ALICE) is SubscriberStatus.BOUNCED


def test_mailgun_malformed_is_400(client: TestClient, db: Store) -> None:
    for body in (b"{not json", b"[]", json.dumps(mailgun_payload("failed")).encode(),
                 json.dumps({k: v for k, v in mailgun_payload({}).items() if k != "event-data"}).encode(),
                 json.dumps(mailgun_payload({"event": "complained"})).encode()):
        r = client.post("/webhooks/mailgun", content=body, headers={"content-type": "application/json"})
        assert r.status_code == 400, body
    assert all_active(db)


def test_a_replay_is_refused_by_another_process_and_after_a_restart(cfg: Config, db: Store) -> None:
    """The guard is in the store: a second app over its own connection (another worker, or the service restarted)
    refuses what the first accepted, over real HTTP; the slots it kept go when they expire."""
    from sqlalchemy import select

    from publisher.store import tables

    mailgun = mailgun_payload(failed(BOB, "permanent"), token="tok-restart")
    body = json.dumps([{"email": ALICE, "event": "spamreport"}]).encode()
    sendgrid = sendgrid_sign(body, TS)
    with run_app(Starlette(routes=webhook_routes(cfg, db, FULL_ENV, clock=clock))) as first:
        assert requests.post(f"{first}/webhooks/mailgun", json=mailgun, timeout=10).status_code == 200
        assert requests.post(f"{first}/webhooks/sendgrid", data=body, headers=sendgrid, timeout=10).status_code == 200
    db.set_subscriber_status(ALICE, SubscriberStatus.ACTIVE, NOW)
    db.set_subscriber_status(BOB, SubscriberStatus.ACTIVE, NOW)
    other = open_store(cfg.store_url)
    try:
        with run_app(Starlette(routes=webhook_routes(cfg, other, FULL_ENV, clock=clock))) as second:
            assert requests.post(f"{second}/webhooks/mailgun", json=mailgun, timeout=10).status_code == 403
            assert requests.post(f"{second}/webhooks/sendgrid", data=body, headers=sendgrid, timeout=10).status_code == 403
            fresh = mailgun_payload(failed(BOB, "permanent"), token="tok-new")
            assert requests.post(f"{second}/webhooks/mailgun", json=fresh, timeout=10).status_code == 200
    finally:
        other.close()
    assert status(db, ALICE) is SubscriberStatus.ACTIVE and status(db, BOB) is SubscriberStatus.BOUNCED
    with db.engine.connect() as conn:
        keys = list(conn.execute(select(tables.rate_slots.c.key)).scalars())
    assert len(keys) == 3 and all(k.startswith("wh:") and len(k) <= 100 and "tok" not in k for k in keys)
    db.prune_signups(NOW + timedelta(seconds=webhooks.MAILGUN_TOLERANCE + 1))
    with db.engine.connect() as conn:
        assert conn.execute(select(tables.rate_slots.c.key)).first() is None


# -- all providers --------------------------------------------------------------------------------

ENDPOINTS = ("/webhooks/postmark", "/webhooks/sendgrid", "/webhooks/mailgun")


@pytest.mark.parametrize("path", ENDPOINTS)
def test_unconfigured_endpoint_does_not_exist(cfg: Config, db: Store, path: str) -> None:
    unset = {"postmark": POSTMARK_AUTH_ENV, "sendgrid": SENDGRID_KEY_ENV, "mailgun": MAILGUN_KEY_ENV}[path.rsplit("/", 1)[1]]
    env = {k: v for k, v in FULL_ENV.items() if k != unset}
    with make_client(cfg, db, env) as c:
        for method in ("POST", "GET", "PUT"):
            assert c.request(method, path, json=[]).status_code == 404
        others = [p for p in ENDPOINTS if p != path]
        assert all(c.get(p).status_code == 405 for p in others)  # the configured ones exist (POST only)
    with make_client(cfg, db, {}) as c:
        assert c.post(path, content=b"{}").status_code == 404
    assert all_active(db)


def test_unconfigured_endpoint_is_404_even_in_front_of_the_static_site(cfg: Config, db: Store, tmp_path: Path) -> None:
    site = StaticFiles(directory=tmp_path, check_dir=False)
    app = Starlette(routes=[*webhook_routes(cfg, db, {}), Mount("/", app=site)])
    with TestClient(app) as c:
        assert c.post("/webhooks/postmark", json={}).status_code == 404


def test_empty_secret_counts_as_unconfigured(cfg: Config, db: Store) -> None:
    with make_client(cfg, db, {POSTMARK_AUTH_ENV: "", SENDGRID_KEY_ENV: "  ", MAILGUN_KEY_ENV: ""}) as c:
        assert all(c.post(p, json={}).status_code == 404 for p in ENDPOINTS)


def test_configured_routes_answer_post_only(cfg: Config, db: Store) -> None:
    routes = webhook_routes(cfg, db, FULL_ENV)
    assert [r.path for r in routes] == list(ENDPOINTS)
    assert all(isinstance(r, Route) and r.methods == {"POST"} for r in routes)


def test_environment_is_read_once_when_the_routes_are_built(cfg: Config, db: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(POSTMARK_AUTH_ENV, "hooks:first-password")
    app = Starlette(routes=webhook_routes(cfg, db))  # env defaults to os.environ
    monkeypatch.setenv(POSTMARK_AUTH_ENV, "hooks:second-password")
    monkeypatch.setenv(MAILGUN_KEY_ENV, MAILGUN_KEY)
    with TestClient(app) as c:
        assert c.post("/webhooks/postmark", json=postmark_bounce(BOB), auth=("hooks", "second-password")).status_code == 401
        assert c.post("/webhooks/postmark", json=postmark_bounce(BOB), auth=("hooks", "first-password")).status_code == 200
        assert c.post("/webhooks/mailgun", json=mailgun_payload(failed(ALICE, "permanent"))).status_code == 404
    assert status(db, BOB) is SubscriberStatus.BOUNCED


BIG = b'{"pad": "' + b"x" * (1024 * 1024) + b'"}'


def test_body_over_one_mib_is_413(client: TestClient, db: Store) -> None:
    big_batch = b"[" + b",".join([json.dumps({"email": ALICE, "event": "bounce", "type": "bounce"}).encode()] * 30000) + b"]"
    assert len(big_batch) > 1024 * 1024
    assert client.post("/webhooks/postmark", content=BIG, auth=AUTH).status_code == 413
    assert client.post("/webhooks/sendgrid", content=big_batch, headers=sendgrid_sign(big_batch, TS)).status_code == 413
    assert client.post("/webhooks/mailgun", content=BIG).status_code == 413

    def chunks() -> Iterator[bytes]:  # no Content-Length: the limit holds while streaming too
        for _ in range(20):
            yield b" " * 65536

    r = client.post("/webhooks/postmark", content=chunks(), auth=AUTH)
    assert r.status_code == 413
    # Just under the limit is read (and here refused only as JSON without an address).
    fits = json.dumps({"RecordType": "Bounce", "Type": "HardBounce", "Email": ALICE, "pad": "x" * (1024 * 1024 - 200)}).encode()
    assert len(fits) <= 1024 * 1024
    assert client.post("/webhooks/postmark", content=fits, auth=AUTH).status_code == 200
    assert status(db, ALICE) is SubscriberStatus.BOUNCED and status(db, BOB) is SubscriberStatus.ACTIVE


def test_all_three_over_real_http(cfg: Config, db: Store) -> None:
    app = Starlette(routes=webhook_routes(cfg, db, FULL_ENV, clock=clock))
    with run_app(app) as base:
        host = base.removeprefix("http://")
        # Postmark's way: the credentials are in the webhook URL.
        r = requests.post(f"http://{POSTMARK_USER}:{POSTMARK_PASSWORD}@{host}/webhooks/postmark", json=postmark_bounce(ALICE), timeout=10)
        assert r.status_code == 200 and r.json() == {"updated": 1}
        assert requests.post(f"{base}/webhooks/postmark", json=postmark_bounce(CAROL), timeout=10).status_code == 401
        body = json.dumps([{"email": BOB, "event": "spamreport", "timestamp": 1700000000}]).encode()
        forged = sendgrid_sign(body + b" ", TS)
        assert requests.post(f"{base}/webhooks/sendgrid", data=body, headers=forged, timeout=10).status_code == 403
        r = requests.post(f"{base}/webhooks/sendgrid", data=body, headers=sendgrid_sign(body, TS), timeout=10)
        assert r.status_code == 200 and r.json() == {"updated": 1}
        payload = mailgun_payload(failed(CAROL, "permanent"))
        assert requests.post(f"{base}/webhooks/mailgun", json=payload, timeout=10).status_code == 200
        assert requests.post(f"{base}/webhooks/mailgun", json=payload, timeout=10).status_code == 403
    assert status(db, ALICE) is SubscriberStatus.BOUNCED
    assert status(db, BOB) is SubscriberStatus.COMPLAINED
    assert status(db, CAROL) is SubscriberStatus.BOUNCED


# -- freshness and replay (issue 11, point 7) -------------------------------------------------------


def _malleated(headers: dict[str, str]) -> dict[str, str]:
    """The same ECDSA signature in its other valid form, (r, n - s): what a replayer can make without the key."""
    from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature, encode_dss_signature

    r, s = decode_dss_signature(base64.b64decode(headers["X-Twilio-Email-Event-Webhook-Signature"]))
    n = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551  # the order of P-256
    return {**headers, "X-Twilio-Email-Event-Webhook-Signature": base64.b64encode(encode_dss_signature(r, n - s)).decode()}


@pytest.mark.parametrize("age", [301, 3600, 86400 * 365, -301], ids=["5-min-1s-old", "an-hour-old", "a-year-old", "5-min-1s-ahead"])
def test_sendgrid_validly_signed_but_stale_body_is_403_and_changes_nothing(client: TestClient, db: Store, age: int,
                                                                          caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        r = client.post("/webhooks/sendgrid", content=SENDGRID_BATCH, headers=sendgrid_sign(SENDGRID_BATCH, str(int(T) - age)))
    assert r.status_code == 403 and "timestamp" in r.json()["error"]
    assert all_active(db)
    assert "refused with 403: timestamp more than 300 s" in caplog.text
    # The same events, signed now, are applied: only the stale copy was refused.
    fresh = client.post("/webhooks/sendgrid", content=SENDGRID_BATCH, headers=sendgrid_sign(SENDGRID_BATCH, str(int(T) - 299)))
    assert fresh.status_code == 200 and status(db, ALICE) is SubscriberStatus.BOUNCED


@pytest.mark.parametrize("timestamp", ["-5", "+%d" % int(T), "\u00b2\u00b3\u00b9", "%dx" % int(T), "%d.5" % int(T), "9" * 5000],
                         ids=["negative", "plus-sign", "superscript-digits", "trailing-letter", "fraction", "5000-digits"])
def test_sendgrid_signed_nonsense_timestamp_is_403_not_500(cfg: Config, db: Store, timestamp: str) -> None:
    """Validly signed (over the text the server reads: a header is Latin-1), yet no Unix time: refused, never a crash."""
    headers: dict[str, Any] = sendgrid_sign(SENDGRID_BATCH, timestamp)
    headers["X-Twilio-Email-Event-Webhook-Timestamp"] = timestamp.encode("latin-1")  # raw bytes on the wire
    with run_app(Starlette(routes=webhook_routes(cfg, db, FULL_ENV, clock=clock))) as base:
        r = requests.post(f"{base}/webhooks/sendgrid", data=SENDGRID_BATCH, headers=headers, timeout=10)
    assert r.status_code == 403 and "timestamp" in r.json()["error"], r.text  # past the signature, refused for its time
    assert all_active(db)


def test_sendgrid_replay_within_the_window_is_refused_even_with_a_malleated_signature(client: TestClient, db: Store) -> None:
    body = json.dumps([{"email": ALICE, "event": "spamreport", "timestamp": int(T)}]).encode()
    headers = sendgrid_sign(body, TS)
    assert client.post("/webhooks/sendgrid", content=body, headers=headers).status_code == 200
    db.set_subscriber_status(ALICE, SubscriberStatus.ACTIVE, NOW)  # e.g. she subscribed again since
    assert client.post("/webhooks/sendgrid", content=body, headers=headers).status_code == 403
    assert client.post("/webhooks/sendgrid", content=body, headers=_malleated(headers)).status_code == 403
    assert all_active(db)
    # SendGrid's next, separately signed delivery (a new timestamp) is a new message and goes through.
    again = client.post("/webhooks/sendgrid", content=body, headers=sendgrid_sign(body, str(int(TS) + 1)))
    assert again.status_code == 200 and status(db, ALICE) is SubscriberStatus.COMPLAINED


def test_a_failed_sendgrid_delivery_can_be_retried(cfg: Config, db: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    _fail_first_record(monkeypatch)
    body = json.dumps([{"email": ALICE, "event": "spamreport"}]).encode()
    headers = sendgrid_sign(body, TS)
    with make_client(cfg, db, raise_server_exceptions=False) as c:
        assert c.post("/webhooks/sendgrid", content=body, headers=headers).status_code == 500
        assert c.post("/webhooks/sendgrid", content=body, headers=headers).status_code == 200
        assert c.post("/webhooks/sendgrid", content=body, headers=headers).status_code == 403
    assert status(db, ALICE) is SubscriberStatus.COMPLAINED


def test_stale_signed_bodies_are_refused_over_real_http_on_the_real_clock(cfg: Config, db: Store) -> None:
    """The default app (time.time, no test clock), real uvicorn: what an attacker replaying a captured request meets."""
    import time

    app = Starlette(routes=webhook_routes(cfg, db, FULL_ENV))
    sendgrid_body = json.dumps([{"email": ALICE, "event": "bounce", "type": "bounce"}]).encode()
    with run_app(app) as base:
        now = int(time.time())
        stale_sendgrid = sendgrid_sign(sendgrid_body, str(now - 600))
        r = requests.post(f"{base}/webhooks/sendgrid", data=sendgrid_body, headers=stale_sendgrid, timeout=10)
        assert r.status_code == 403
        stale_mailgun = mailgun_payload(failed(BOB, "permanent"), timestamp=now - 600)
        assert requests.post(f"{base}/webhooks/mailgun", json=stale_mailgun, timeout=10).status_code == 403
        assert all_active(db)
        r = requests.post(f"{base}/webhooks/sendgrid", data=sendgrid_body, headers=sendgrid_sign(sendgrid_body, str(now)), timeout=10)
        assert r.status_code == 200 and r.json() == {"updated": 1}
        fresh_mailgun = mailgun_payload(failed(BOB, "permanent"), timestamp=now)
        assert requests.post(f"{base}/webhooks/mailgun", json=fresh_mailgun, timeout=10).status_code == 200
    assert status(db, ALICE) is SubscriberStatus.BOUNCED and status(db, BOB) is SubscriberStatus.BOUNCED
    assert status(db, CAROL) is SubscriberStatus.ACTIVE
