"""Double opt-in and one-click unsubscribe through the real app; hostile input changes nothing."""

from __future__ import annotations

import email
import email.policy
import io
import mailbox
import re
from datetime import datetime, timezone
from pathlib import Path

import pytest
import requests
from starlette.testclient import TestClient

from publisher.config import Config
from publisher.models import SubscriberStatus
from publisher.pipeline import run_ingest, send_digest
from publisher.store import Store, open_store
from publisher.web import create_app
from subscribers import add_subscriber, forget, import_csv, make_confirm_token, make_token

from .conftest import NOW, TEST_SECRET_KEY
from .servers import run_app
from .signup_support import csrf_of, settle


@pytest.fixture
def db(cfg: Config) -> Store:
    store = open_store(cfg.store_url)
    run_ingest(cfg, store, NOW)
    yield store
    store.close()


def outbox(cfg: Config) -> list[email.message.EmailMessage]:
    folder = cfg.path(cfg.delivery.outbox_dir)
    if not folder.exists():
        return []
    return [email.message_from_bytes(m.as_bytes(), policy=email.policy.default) for m in mailbox.Maildir(folder, create=False)]  # type: ignore[misc]


def form_fields(html: str) -> dict[str, str]:
    return dict(re.findall(r'name="(csrf)" value="([^"]+)"', html))


def path_of(url: str) -> str:
    return "/" + url.split("/", 3)[3]


def test_double_opt_in_and_one_click_unsubscribe_over_real_http(cfg: Config, db: Store) -> None:
    with run_app(create_app(cfg, db)) as base:
        http = requests.Session()
        form = http.get(f"{base}/subscribe", timeout=10)
        assert form.status_code == 200 and 'lang="en"' in form.text and '<label for="email">' in form.text
        done = http.post(f"{base}/subscribe", data={"email": "New.Reader@Example.com", "topics": "security-cooperation",
                                                   "csrf": form_fields(form.text)["csrf"], "website": ""}, timeout=10)
        assert done.status_code == 200 and "Check your inbox" in done.text
        settle(db)  # the confirmation goes out off the request path
        sub = db.subscriber("new.reader@example.com")
        assert sub is not None and sub.status is SubscriberStatus.PENDING and sub.topics == ("security-cooperation",)

        [confirmation] = outbox(cfg)
        assert confirmation["To"] == "new.reader@example.com"
        link = re.search(r"http://127\.0\.0\.1:8000/confirm/\S+", confirmation.get_body(("plain",)).get_content()).group(0)
        button = http.get(base + path_of(link), timeout=10)
        assert button.status_code == 200 and "Confirm my subscription" in button.text
        assert db.subscriber("new.reader@example.com").status is SubscriberStatus.PENDING  # a GET changes nothing
        assert "You are subscribed" in http.post(base + path_of(link), data={"csrf": csrf_of(button.text)}, timeout=10).text
        assert db.subscriber("new.reader@example.com").status is SubscriberStatus.ACTIVE

        send_digest(cfg, db, datetime.now(timezone.utc))  # after the confirmation: they joined before this issue
        digest = next(m for m in outbox(cfg) if m["To"] == "new.reader@example.com" and "weekly" in m["Subject"])
        assert digest["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
        one_click = re.search(r"<(http://127\.0\.0\.1:8000/[^>]+)>", digest["List-Unsubscribe"]).group(1)
        # What a mail client does (RFC 8058): POST, that body, no cookie, no login.
        resp = requests.post(base + path_of(one_click), data="List-Unsubscribe=One-Click",
                             headers={"Content-Type": "application/x-www-form-urlencoded"}, timeout=10)
        assert resp.status_code == 200
        assert db.subscriber("new.reader@example.com").status is SubscriberStatus.UNSUBSCRIBED


@pytest.fixture
def client(cfg: Config, db: Store) -> TestClient:
    return TestClient(create_app(cfg, db), base_url="http://127.0.0.1:8000")


def subscribe(client: TestClient, email_address: str, **extra: str) -> object:
    form = client.get("/subscribe")
    return client.post("/subscribe", data={"email": email_address, "csrf": form_fields(form.text)["csrf"], **extra})


def csrf(client: TestClient) -> str:
    """A CSRF token for this client's cookie, as any of our pages hands one out."""
    return csrf_of(client.get("/subscribe").text)


def test_the_answer_does_not_tell_who_is_subscribed(client: TestClient, db: Store, cfg: Config) -> None:
    add_subscriber(db, "known@example.com", NOW, confirmed=True)
    known, unknown = subscribe(client, "known@example.com"), subscribe(client, "unknown@example.com")
    assert known.status_code == unknown.status_code == 200 and known.text == unknown.text
    settle(db)
    assert [m["To"] for m in outbox(cfg)] == ["unknown@example.com"]  # the active one gets nothing, and keeps their topics


def test_an_unsubscribed_address_must_confirm_again(client: TestClient, db: Store, cfg: Config) -> None:
    sub, _ = add_subscriber(db, "back@example.com", NOW, confirmed=True)
    db.set_subscriber_status("back@example.com", SubscriberStatus.UNSUBSCRIBED, NOW)
    subscribe(client, "back@example.com")
    settle(db)
    assert db.subscriber("back@example.com").status is SubscriberStatus.PENDING and len(outbox(cfg)) == 1


@pytest.mark.parametrize("token_for", [
    lambda cfg, sid, addr: "forged." + "A" * 20,
    lambda cfg, sid, addr: make_confirm_token("another-key", sid, addr, "n"),
    lambda cfg, sid, addr: make_token(cfg.secret_key.get(), "unsubscribe", sid),  # wrong purpose
    lambda cfg, sid, addr: make_confirm_token(cfg.secret_key.get(), sid, "someone.else@example.com", "n"),  # bound to another address
    lambda cfg, sid, addr: make_confirm_token(cfg.secret_key.get(), sid, addr, "an-earlier-sign-up"),  # another sign-up's nonce
], ids=["forged", "other-key", "wrong-purpose", "other-address", "other-nonce"])
def test_bad_confirmation_tokens_change_nothing(client: TestClient, db: Store, cfg: Config, token_for) -> None:
    sub, _ = add_subscriber(db, "pending@example.com", NOW)
    db.reopen_signup(sub.id, (), "the-current-nonce", NOW)
    token = token_for(cfg, sub.id, sub.email)
    refused = client.post(f"/confirm/{token}", data={"csrf": csrf(client)})
    assert refused.status_code == 400 and "This link does not work" in refused.text
    assert db.subscriber("pending@example.com").status is SubscriberStatus.PENDING
    good = make_confirm_token(cfg.secret_key.get(), sub.id, sub.email, "the-current-nonce")  # and the real link still works
    assert "You are subscribed" in client.post(f"/confirm/{good}", data={"csrf": csrf(client)}).text


def test_an_expired_confirmation_is_refused(client: TestClient, db: Store, cfg: Config, monkeypatch: pytest.MonkeyPatch) -> None:
    import itsdangerous.timed

    sub, _ = add_subscriber(db, "late@example.com", NOW)
    token = make_confirm_token(cfg.secret_key.get(), sub.id, sub.email, "n")
    db.reopen_signup(sub.id, (), "n", NOW)
    real = itsdangerous.timed.time.time
    monkeypatch.setattr(itsdangerous.timed.time, "time", lambda: real() + 8 * 86400)  # the clock, not our code
    late = client.post(f"/confirm/{token}")
    assert late.status_code == 400 and "This link does not work" in late.text
    assert db.subscriber("late@example.com").status is SubscriberStatus.PENDING


@pytest.mark.parametrize("path", ["/unsubscribe/{t}", "/preferences/{t}"])
def test_forged_and_wrong_purpose_link_tokens_change_nothing(client: TestClient, db: Store, cfg: Config, path: str) -> None:
    sub, _ = add_subscriber(db, "a@example.com", NOW, confirmed=True)
    other_purpose = "preferences" if "unsubscribe" in path else "unsubscribe"
    for token in (f"{sub.id}.forgedsignature00000000", make_token(cfg.secret_key.get(), other_purpose, sub.id), "x", "99999.abc"):
        assert client.post(path.format(t=token), data={"List-Unsubscribe": "One-Click", "topics": "x"}).status_code == 400
    after = db.subscriber("a@example.com")
    assert after.status is SubscriberStatus.ACTIVE and after.topics == ()


def test_old_keys_still_open_links_after_rotation(cfg: Config, db: Store) -> None:
    from dataclasses import replace

    from publisher.config import Secret

    sub, _ = add_subscriber(db, "rot@example.com", NOW, confirmed=True)
    old_token = make_token(cfg.secret_key.get(), "unsubscribe", sub.id)
    rotated = replace(cfg, secret_key=Secret("brand-new-key-" + TEST_SECRET_KEY), old_secret_keys=(cfg.secret_key,))
    client = TestClient(create_app(rotated, db), base_url="http://127.0.0.1:8000")
    assert client.post(f"/unsubscribe/{old_token}", data={"List-Unsubscribe": "One-Click"}).status_code == 200
    assert db.subscriber("rot@example.com").status is SubscriberStatus.UNSUBSCRIBED


@pytest.mark.parametrize("hostile", [
    "victim@example.com\r\nBcc: everyone@example.com", "<script>alert(1)</script>@example.com", "a" * 10_000 + "@example.com",
    "nodomain", "user@", "pаypal@exаmple.com",  # Cyrillic look-alike letters in the local part
])
def test_hostile_addresses_are_never_stored(client: TestClient, db: Store, cfg: Config, hostile: str) -> None:
    resp = subscribe(client, hostile)
    assert resp.status_code == 400 and "does not look like an email address" in resp.text
    assert "<script>" not in resp.text and len(resp.text) < 20_000
    assert db.subscribers() == [] and outbox(cfg) == []


def test_csrf_honeypot_and_rate_limit(client: TestClient, db: Store, cfg: Config) -> None:
    no_token = client.post("/subscribe", data={"email": "x@example.com", "csrf": "nope"})
    assert no_token.status_code == 400 and db.subscribers() == []
    bot = subscribe(client, "bot@example.com", website="http://spam.example")
    assert bot.status_code == 200 and "Check your inbox" in bot.text and db.subscribers() == []
    codes = [subscribe(client, f"r{i}@example.com").status_code for i in range(cfg.web.signups_per_network + 2)]
    assert codes == [200] * cfg.web.signups_per_network + [429, 429]


def test_preferences_page_saves_known_topics_only(client: TestClient, db: Store, cfg: Config) -> None:
    sub, _ = add_subscriber(db, "p@example.com", NOW, confirmed=True)
    token = make_token(cfg.secret_key.get(), "preferences", sub.id)
    page = client.get(f"/preferences/{token}")
    assert page.status_code == 200 and 'value="security-cooperation"' in page.text
    saved = client.post(f"/preferences/{token}", data={"topics": ["security-cooperation", "made-up"], "csrf": csrf_of(page.text)})
    assert "Saved" in saved.text and db.subscriber("p@example.com").topics == ("security-cooperation",)


def test_forget_keeps_only_a_hash_and_the_address_stays_suppressed(db: Store) -> None:
    add_subscriber(db, "gone@example.com", NOW, confirmed=True)
    assert forget(db, "gone@example.com", NOW).found
    assert db.subscriber("gone@example.com") is None
    report = import_csv(db, io.StringIO("email\ngone@example.com\n"), NOW, confirmed=True)
    assert report.suppressed == 1 and db.subscriber("gone@example.com") is None


def test_csv_import_bad_rows_bom_latin1_and_blank_lines(db: Store, cfg: Config, tmp_path: Path) -> None:
    data = "\ufeffEmail,Topics\r\nok1@example.com,security-cooperation\r\n\r\nnot-an-address,\r\nOK1@example.com,\r\nok2@example.com,\r\n"
    report = import_csv(db, io.StringIO(data), NOW, confirmed=True)
    assert (report.added, report.rejected_count) == (2, 2)
    assert [line for line, _ in report.rejected] == [4, 5]
    latin1 = tmp_path / "latin1.csv"
    latin1.write_bytes("email,name\nrené@example.com,René\nplain@example.com,Zoe\n".encode("latin-1"))
    from click.testing import CliRunner

    from publisher.cli import main

    result = CliRunner().invoke(main, ["--config", str(cfg.file), "subscribers", "import", str(latin1), "--confirmed"])
    assert result.exit_code == 0 and "1 added" in result.output and "line 2: not UTF-8" in result.output
    assert db.subscriber("plain@example.com") is not None
    db.set_subscriber_status("ok2@example.com", SubscriberStatus.BOUNCED, NOW)
    again = import_csv(db, io.StringIO("email\nok2@example.com\n"), NOW, confirmed=True)
    assert again.existing == 1 and db.subscriber("ok2@example.com").status is SubscriberStatus.BOUNCED  # never revived


def test_csv_import_streams_in_flat_memory(db: Store) -> None:
    """Peak memory importing 10,000 rows is about that of 1,000: rows are read, checked and stored in batches.
    (tracemalloc slows Python several times over; 100,000 rows are imported through the CLI in benchmarks/send.py.)"""
    import tracemalloc

    def peak(start: int, n: int) -> int:
        lines = ("email\n", *(f"reader{i}@example.com\n" for i in range(start, start + n)))
        tracemalloc.start()
        report = import_csv(db, iter(lines), NOW, confirmed=True)
        _, top = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        assert report.added == n
        return top

    small, large = peak(0, 1_000), peak(1_000, 10_000)
    assert large < 1.5 * small, (small, large)
