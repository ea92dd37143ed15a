"""Issue 11, points 5 and 6 (the subscription pages' part): topics from the public form, CSRF on every form that
changes state (RFC 8058's one-click POST excepted, by the standard), and malformed tokens and fields answered 400,
never 500, on SQLite and PostgreSQL. Real uvicorn, real requests, the store on both databases.
"""

from __future__ import annotations

from collections.abc import Iterator
from urllib.parse import quote

import pytest
import requests
from itsdangerous import URLSafeTimedSerializer

from publisher.config import Config
from publisher.delivery.send import links_for
from publisher.models import SubscriberStatus
from publisher.pipeline import run_ingest
from publisher.store import Store
from publisher.web import create_app
from subscribers import add_subscriber, make_token
from subscribers.tokens import _address_tag, make_confirm_token

from .conftest import NOW
from .servers import run_app
from .signup_support import client_from, csrf_of, settle, sign_up

ONE_CLICK = {"data": "List-Unsubscribe=One-Click", "headers": {"Content-Type": "application/x-www-form-urlencoded"}}


@pytest.fixture
def site(cfg: Config, store: Store) -> Iterator[str]:
    run_ingest(cfg, store, NOW)
    with run_app(create_app(cfg, store)) as base:
        yield base


def local(url: str, base: str) -> str:
    return url.replace("http://127.0.0.1:8000", base)


# -- topics from the public form -------------------------------------------------------------------------------------


@pytest.mark.parametrize("hostile", ["made-up", "../../etc/passwd", "x" * 5000, "security-cooperation\x00", "ｓecurity-cooperation", ""],
                         ids=["unknown", "path", "long", "nul", "fullwidth", "empty"])
def test_topics_not_offered_are_refused_and_never_stored(cfg: Config, store: Store, site: str, hostile: str) -> None:
    http = client_from("127.4.0.1")
    refused = sign_up(http, site, "reader@example.net", topics=("security-cooperation", hostile))
    assert refused.status_code == 400 and "not offered" in refused.text
    assert 'value="security-cooperation" checked' in refused.text and 'value="reader@example.net"' in refused.text  # nothing lost
    assert hostile not in refused.text or hostile == ""
    assert store.waiting_signups() == 0 and store.signup_outcomes() == {} and store.subscriber("reader@example.net") is None
    accepted = sign_up(http, site, "reader@example.net", topics=("security-cooperation",))  # the form as offered still works
    assert accepted.status_code == 200
    settle(store)
    assert store.subscriber("reader@example.net").topics == ("security-cooperation",)


# -- CSRF on every form that changes state ------------------------------------------------------------------------------


def attempts(http: requests.Session, url: str, fields: dict[str, object]) -> list[int]:
    """The forged posts of a cross-site attack: no token, another visitor's token, the right token from another site."""
    stranger = requests.Session()
    other_token = csrf_of(stranger.get(url, timeout=10).text)
    own_token = csrf_of(http.get(url, timeout=10).text)
    return [
        http.post(url, data=fields, timeout=10).status_code,
        http.post(url, data={**fields, "csrf": other_token}, timeout=10).status_code,
        requests.post(url, data={**fields, "csrf": own_token}, timeout=10).status_code,  # the token without the cookie
        http.post(url, data={**fields, "csrf": own_token}, headers={"Sec-Fetch-Site": "cross-site"}, timeout=10).status_code,
    ]


def test_the_preferences_form_needs_its_csrf_token(cfg: Config, store: Store, site: str) -> None:
    sub, _ = add_subscriber(store, "prefs@example.net", NOW, confirmed=True)
    url = local(links_for(cfg, sub)["preferences_url"], site)
    http = requests.Session()
    assert attempts(http, url, {"topics": "security-cooperation"}) == [400] * 4
    assert store.subscriber("prefs@example.net").topics == ()
    page = http.get(url, timeout=10)
    saved = http.post(url, data={"topics": "security-cooperation", "csrf": csrf_of(page.text)}, timeout=10)
    assert saved.status_code == 200 and "Saved" in saved.text and store.subscriber("prefs@example.net").topics == ("security-cooperation",)


def test_the_confirm_button_needs_its_csrf_token(cfg: Config, store: Store, site: str) -> None:
    sub, _ = add_subscriber(store, "confirm@example.net", NOW)
    store.reopen_signup(sub.id, (), "nonce-1", NOW)
    url = f"{site}/confirm/{make_confirm_token(cfg.secret_key.get(), sub.id, sub.email, 'nonce-1')}"
    http = requests.Session()
    assert attempts(http, url, {}) == [400] * 4
    assert store.subscriber("confirm@example.net").status is SubscriberStatus.PENDING
    expired = http.post(url, timeout=10)
    assert "The form expired" in expired.text and 'name="csrf"' in expired.text  # the button comes back, ready to press again
    assert "You are subscribed" in http.post(url, data={"csrf": csrf_of(expired.text)}, timeout=10).text


def test_the_unsubscribe_button_needs_its_token_but_rfc_8058_one_click_needs_none(cfg: Config, store: Store, site: str) -> None:
    button_user, _ = add_subscriber(store, "button@example.net", NOW, confirmed=True)
    url = local(links_for(cfg, button_user)["unsubscribe_url"], site)
    http = requests.Session()
    assert attempts(http, url, {}) == [400] * 4
    assert store.subscriber("button@example.net").status is SubscriberStatus.ACTIVE
    done = http.post(url, data={"csrf": csrf_of(http.get(url, timeout=10).text)}, timeout=10)
    assert "You are unsubscribed" in done.text and store.subscriber("button@example.net").status is SubscriberStatus.UNSUBSCRIBED
    # A mail client's one-click POST (RFC 8058 forbids it cookies and context): no cookie, no token, and it works.
    mail_user, _ = add_subscriber(store, "oneclick@example.net", NOW, confirmed=True)
    one_click = requests.post(local(links_for(cfg, mail_user)["unsubscribe_url"], site), timeout=10, **ONE_CLICK)
    assert one_click.status_code == 200 and store.subscriber("oneclick@example.net").status is SubscriberStatus.UNSUBSCRIBED


def test_the_sign_up_form_needs_its_csrf_token(cfg: Config, store: Store, site: str) -> None:
    http = client_from("127.4.1.1")
    assert attempts(http, f"{site}/subscribe", {"email": "csrf@example.net"}) == [400] * 4
    assert store.waiting_signups() == 0 and store.signup_outcomes() == {}
    assert sign_up(http, site, "csrf@example.net").status_code == 200


# -- malformed tokens and over-long fields: 400, never 500 ---------------------------------------------------------------


def hostile_link_tokens(cfg: Config, sid: int, purpose: str) -> list[str]:
    good = make_token(cfg.secret_key.get(), purpose, sid)
    sig = good.partition(".")[2]
    arabic = str(sid).translate(str.maketrans("0123456789", "٠١٢٣٤٥٦٧٨٩"))
    return [
        f"{arabic}.{sig}",  # non-ASCII digits that int() would read as the same id
        f"0{sid}.{sig}", f"+{sid}.{sig}", f" {sid}.{sig}", f"{sid}.{sig}.", f"{sid}..{sig}",
        f"{2**31}.{sig}", f"{10**18}.{sig}", "9" * 40 + f".{sig}", f"-{sid}.{sig}",
        f"{sid}." + "ñ" * 22, f"{sid}." + "A" * 5000, "1" * 5000, f"{sid}.%00{sig[1:]}", "%ff%fe", "..x", "",
    ]


def hostile_confirm_tokens(cfg: Config, sid: int, email: str) -> list[str]:
    """Garbage, and tokens signed with the real key but holding what we never write (the key is not the only guard)."""
    signed = URLSafeTimedSerializer(cfg.secret_key.get(), salt="publisher.confirm").dumps
    tag = _address_tag(email)
    return ["x", "A" * 5000, "ñ" * 40, "a.b.c", signed([2**40, tag, "n"]), signed([True, tag, "n"]), signed([sid, tag, 7]), signed([-sid, tag, "n"]),
            signed(["١", tag, "n"]), signed({"id": sid}), signed([sid, tag, "n", "extra"]), signed([f"{sid}", tag, "n"])]


@pytest.mark.parametrize("method", ["GET", "POST"])
def test_malformed_tokens_answer_400_never_500_and_change_nothing(cfg: Config, store: Store, site: str, method: str) -> None:
    sub, _ = add_subscriber(store, "target@example.net", NOW, confirmed=True)
    pending, _ = add_subscriber(store, "pending@example.net", NOW)
    store.reopen_signup(pending.id, (), "n", NOW)
    http = requests.Session()
    token = csrf_of(http.get(f"{site}/subscribe", timeout=10).text)
    paths = [f"/unsubscribe/{quote(t, safe='%')}" for t in hostile_link_tokens(cfg, sub.id, "unsubscribe") if t]
    paths += [f"/preferences/{quote(t, safe='%')}" for t in hostile_link_tokens(cfg, sub.id, "preferences") if t]
    paths += [f"/confirm/{quote(t, safe='%')}" for t in hostile_confirm_tokens(cfg, pending.id, pending.email)]
    answers = {}
    for path in paths:
        resp = http.request(method, site + path, data={"csrf": token, "topics": "security-cooperation", "List-Unsubscribe": "One-Click"}, timeout=10)
        answers[path[:60]] = resp.status_code
    assert set(answers.values()) == {400}, {p: c for p, c in answers.items() if c != 400}
    assert store.subscriber("target@example.net").status is SubscriberStatus.ACTIVE and store.subscriber("target@example.net").topics == ()
    assert store.subscriber("pending@example.net").status is SubscriberStatus.PENDING
    # The real links still work.
    assert requests.post(local(links_for(cfg, sub)["unsubscribe_url"], site), timeout=10, **ONE_CLICK).status_code == 200


@pytest.mark.parametrize("field, value", [
    ("email", "a" * 10_000 + "@example.net"), ("email", "x@" + "b" * 300 + ".net"), ("email", "ok@example.net\x00"),
    ("topics", "t" * 10_000), ("csrf", "c" * 10_000), ("email", "\udcff@example.net"),
], ids=["email-local", "email-domain", "email-nul", "topic", "csrf", "surrogate"])
def test_over_long_and_broken_fields_answer_400_never_500(cfg: Config, store: Store, site: str, field: str, value: str) -> None:
    http = client_from("127.4.2.1")
    form = {"email": "fine@example.net", "csrf": csrf_of(http.get(f"{site}/subscribe", timeout=10).text), "website": "", field: value}
    resp = http.post(f"{site}/subscribe", data={k: v.encode("utf-8", "surrogatepass") for k, v in form.items()}, timeout=10)
    assert resp.status_code == 400 and len(resp.text) < 20_000
    assert store.waiting_signups() == 0 and store.subscribers() == []
    too_big = http.post(f"{site}/subscribe", data={"email": "fine@example.net", "padding": "p" * 20_000}, timeout=10)
    assert too_big.status_code == 413  # the whole form over 16 KiB: refused unread, "Payload Too Large"
    assert sign_up(http, site, "fine@example.net").status_code == 200  # and the form still works
