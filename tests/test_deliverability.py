"""Issue 16: deliverability. Message-IDs unique across installs and stable across retries; the size that counts is the
size as sent; a new sending domain warms up; bounce and complaint rates against the providers' limits.

Each through the real command on the embedded defaults where a user meets it, or the real engine against a real SMTP
server (aiosmtpd) where a fault has to be injected.
"""

from __future__ import annotations

import email
import email.policy
import hashlib
import re
import shutil
from datetime import datetime, timedelta, timezone
from pathlib import Path

from sqlalchemy import select

from publisher.config import Config
from publisher.delivery.send import retry_deferred
from publisher.pipeline import run_ingest, send_digest
from publisher.store import Store, open_store, tables
from subscribers import add_subscriber

from .conftest import REPO
from .smtp_faults import relay
from .test_first_hour import outbox, run_ok
from .test_retries import b_is_over_quota, smtp

ID = re.compile(r"^<digest\.(?P<issue>[^.]+)\.(?P<tag>[0-9a-f]{32})@example\.org>$")


def _copy(where: Path) -> Path:
    for name in ("content", "templates"):
        shutil.copytree(REPO / name, where / name)
    shutil.copy(REPO / "config.toml", where / "config.toml")
    return where


# -- 1. Message-ID -----------------------------------------------------------------------------------------------------


def test_two_installs_give_the_same_issue_different_unguessable_message_ids(tmp_path: Path) -> None:
    """Two projects made from the same sample, with the same signing key, send the same issue to the same three
    sample subscribers (the same subscriber ids): every Message-ID differs between them, and none is the hash of
    (issue, subscriber) that anyone could compute (the ids before issue 16)."""
    ids = {}
    for name in ("a", "b"):
        project = _copy(tmp_path / name)
        run_ok(project, "run", "--once")
        ids[name] = {str(m["To"]): str(m["Message-ID"]) for m in outbox(project)}
    assert set(ids["a"]) == set(ids["b"]) and len(ids["a"]) == 3
    for to, mid in ids["a"].items():
        a, b = ID.match(mid), ID.match(ids["b"][to])
        assert a and b and a["issue"] == b["issue"] and a["tag"] != b["tag"], (mid, ids["b"][to])
    issue = ID.match(next(iter(ids["a"].values())))["issue"]  # type: ignore[index]
    guessable = {hashlib.sha256(f"{issue}:{n}".encode()).hexdigest()[:24] for n in range(1, 10)}
    assert not any(ID.match(m)["tag"][:24] in guessable for m in [*ids["a"].values(), *ids["b"].values()])  # type: ignore[index]


def test_a_retried_recipient_gets_the_message_id_of_its_first_attempt(cfg: Config) -> None:
    """b is deferred (mailbox full), then delivered by the service's retry, through a new engine and a store opened
    again: the message b receives carries the id the send log recorded at the first attempt."""
    store, handler, now = b_is_over_quota(cfg)
    with relay(handler) as port:
        c = smtp(cfg, port)
        first = send_digest(c, store, now)
        assert (first.sent, first.deferred) == (1, 1)
        store.close()
        store = open_store(cfg.store_url)  # as the service's next look would: another process, the same store
        sub = store.subscriber("b@example.com")
        with store.engine.connect() as conn:
            recorded = conn.execute(select(tables.send_log.c.message_id).where(tables.send_log.c.subscriber_id == sub.id)).scalar_one()  # type: ignore[union-attr]
        handler.answers.clear()
        later = datetime.now(timezone.utc) + timedelta(hours=1)
        assert retry_deferred(c, store, later, due=later).sent == 1
    store.close()
    got = [email.message_from_bytes(raw, policy=email.policy.default) for raw in handler.messages]
    to_b = [str(m["Message-ID"]) for m in got if "b@example.com" in str(m["To"])]
    assert to_b == [recorded] and ID.match(recorded)


# -- 3. size as sent ---------------------------------------------------------------------------------------------------


def test_the_size_cap_counts_the_html_as_encoded_in_the_message(cfg: Config) -> None:
    """A week of summaries in Greek: two bytes a letter in UTF-8, six in quoted-printable ("=CE=B1"). Measured
    decoded, the issue would hold far more than Gmail shows before clipping; measured as sent, it is cut to fit,
    and the message's HTML part as it travels stays under Gmail's 102 KB."""
    from publisher.digest.issue import GMAIL_CLIPS_AT, MAX_HTML_BYTES, plan_issue, render_fitting
    from publisher.digest.render import Renderer, size_as_sent

    from .test_digest_acceptance import make_pub, parse, raw_messages

    store = open_store(cfg.store_url)
    greek = "Η συμμαχία σταθμίζει το κόστος της προκεχωρημένης άμυνας έναντι των εφεδρειών στο εσωτερικό. " * 3
    for n in range(60):
        store.upsert_publication(make_pub(n, summary=f"{n}: {greek}"), datetime.now(timezone.utc))
    plan = plan_issue(cfg, store, datetime.now(timezone.utc))
    renderer = Renderer(cfg)
    rendered = render_fitting(cfg, plan, (), renderer)
    held = len(rendered.issue.publications)
    assert size_as_sent(rendered.html) <= MAX_HTML_BYTES and 0 < held < cfg.digest.max_items
    one_more = renderer.render(plan.select(cfg, (), held + 1))
    # The old measure (decoded bytes) would have let one more in, and more: the encoded size is what stopped it.
    assert len(one_more.html.encode("utf-8")) < MAX_HTML_BYTES * 0.8 < MAX_HTML_BYTES < size_as_sent(one_more.html)

    add_subscriber(store, "reader@example.com", datetime.now(timezone.utc) - timedelta(days=1), confirmed=True)
    assert send_digest(cfg, store, datetime.now(timezone.utc)).sent == 1
    store.close()
    (raw,) = raw_messages(cfg)
    part = next(p for p in parse(raw).walk() if p.get_content_type() == "text/html")
    assert len(str(part.get_payload(decode=False)).encode("ascii")) < GMAIL_CLIPS_AT


# -- 4. warm-up --------------------------------------------------------------------------------------------------------


def _warming(project: Path, readers: int = 250) -> tuple[Config, Store, datetime]:
    """The sample project with the warm-up on, its content ingested and ``readers`` confirmed subscribers: (the
    config, the open store, now)."""
    from publisher.config import load_config

    from .test_delivery_faults import configure

    configure(project, ("warmup = false ", "warmup = true "))
    cfg = load_config(project / "config.toml")
    store = open_store(cfg.store_url)
    today = datetime.now(timezone.utc)
    run_ingest(cfg, store, today)
    for n in range(readers):
        add_subscriber(store, f"reader{n}@example.com", today - timedelta(days=1), confirmed=True)
    return cfg, store, today


def test_the_warm_up_holds_back_what_exceeds_the_days_allowance_and_sends_it_the_next_day(project: Path) -> None:
    """250 subscribers and the default ramp (200 on the first day): 200 go today, the other 50 wait; the service's
    looks later that day send nothing (and render nothing); the next day (an injected clock) sends the 50 and closes
    the issue. Everyone gets the issue once."""
    from publisher.pipeline import WARMUP_SETTING, record_outcome

    from .test_first_hour import run_ok

    cfg, store, today = _warming(project)
    first = send_digest(cfg, store, today)
    record_outcome(store, first)
    assert (first.sent, first.held, first.finished) == (200, 50, False), first
    assert first.held_until is not None and first.held_until.date() == (today + timedelta(days=1)).date()
    assert store.open_issue()[0] == first.issue_id  # type: ignore[index]
    later = send_digest(cfg, store, today + timedelta(minutes=5))  # the service's next look, the same day
    record_outcome(store, later)
    assert later.sent == 0 and "warm-up" in later.reason and store.setting(WARMUP_SETTING)
    store.close()
    shown = run_ok(project, "status").stdout
    assert "warm-up: example.org, day 1 of 42: 200 of today's 200 sent; tomorrow 236" in shown, shown
    assert f"issue {first.issue_id} waits for the next allowance" in shown

    store = open_store(cfg.store_url)
    tomorrow = first.held_until + timedelta(minutes=1)
    second = send_digest(cfg, store, tomorrow)
    record_outcome(store, second)
    assert (second.issue_id, second.sent, second.held, second.finished) == (first.issue_id, 50, 0, True), second
    assert store.open_issue() is None and store.setting(WARMUP_SETTING) is None
    store.close()
    to = [str(m["To"]) for m in outbox(project)]
    assert len(to) == 250 and len(set(to)) == 250


def test_the_ramp_is_ghosts_and_ends(project: Path) -> None:
    from publisher.delivery.warmup import Ramp

    ramp = Ramp()
    days = [ramp.allowance(d) for d in range(43)]
    assert (days[0], days[1], days[14], days[28], days[42]) == (200, 236, 2_000, 20_000, None)  # ten times more every two weeks
    assert all(a < b for a, b in zip(days[:41], days[1:42], strict=True))  # type: ignore[operator]


# -- 6. rates after each issue -----------------------------------------------------------------------------------------


def test_status_shows_the_last_issues_bounce_and_complaint_rates_against_gmails_limits(project: Path) -> None:
    """1,000 recipients; the provider's webhooks (Postmark's, through the real endpoint) report bounces and spam
    complaints: 0.1 % complaints is fine, 0.2 % a warning (over Gmail's 0.1 % advice), 0.4 % an error (over its 0.3 %)."""
    from starlette.applications import Starlette
    from starlette.testclient import TestClient

    from publisher.config import load_config
    from publisher.web.webhooks import POSTMARK_AUTH_ENV, webhook_routes

    from .test_first_hour import run_ok

    cfg = load_config(project / "config.toml")
    store = open_store(cfg.store_url)
    now = datetime.now(timezone.utc)
    run_ingest(cfg, store, now)
    for n in range(997):
        add_subscriber(store, f"reader{n}@example.com", now - timedelta(days=1), confirmed=True)
    store.close()
    assert "1000 sent" in run_ok(project, "run", "--once").stdout  # with the config's three sample subscribers
    store = open_store(cfg.store_url)
    app = Starlette(routes=webhook_routes(cfg, store, {POSTMARK_AUTH_ENV: "pm:" + "s" * 24}))

    def complain(*numbers: int) -> None:
        with TestClient(app) as client:
            for n in numbers:
                r = client.post("/webhooks/postmark", json={"RecordType": "SpamComplaint", "Email": f"reader{n}@example.com"},
                                auth=("pm", "s" * 24))
                assert r.status_code == 200 and r.json() == {"updated": 1}

    with TestClient(app) as client:
        bounce = {"RecordType": "Bounce", "Type": "HardBounce", "Email": "reader500@example.com", "Inactive": True}
        assert client.post("/webhooks/postmark", json=bounce, auth=("pm", "s" * 24)).json() == {"updated": 1}
    complain(1)
    shown = run_ok(project, "status").stdout
    assert "  bounce rate: 0.10% (1 of 1,000)\n" in shown and "  complaint rate: 0.10% (1 of 1,000)\n" in shown, shown
    complain(2)
    assert "complaint rate: 0.20% (2 of 1,000): warning, above 0.1%" in run_ok(project, "status").stdout
    complain(3, 4)
    assert "complaint rate: 0.40% (4 of 1,000): ERROR, above 0.3% (Gmail's limit" in run_ok(project, "status").stdout
    store.close()


def test_give_up_after_counts_from_each_recipients_first_try_not_the_issues_start(store) -> None:  # type: ignore[no-untyped-def]
    """A warm-up sends one issue over days: a recipient first tried on its sixth day and deferred (greylisted) gets
    the same five days as the first ones, instead of being given up at once as undeliverable and a soft bounce."""
    from publisher.models import SubscriberStatus

    now = datetime.now(timezone.utc)
    started = now - timedelta(days=6)
    store.start_issue("2026-W01", started, started)
    early, late = (add_subscriber(store, f"{who}@example.com", started - timedelta(days=1), confirmed=True)[0] for who in ("early", "late"))
    for sub, when in ((early, started), (late, now)):  # early: tried on the first day; late: on the sixth (the warm-up)
        assert store.claim_batch("2026-W01", f"run-{sub.id}", [(sub.id, f"<{sub.id}@x>")], when, when) == {sub.id}
        store.record_sends("2026-W01", [(sub.id, "deferred", "450 4.2.0 greylisted", 1, "")], when, run_id=f"run-{sub.id}")
    assert store.give_up(now - timedelta(days=5), now) == 1  # [delivery].give_up_after, the default 5 days
    with store.engine.connect() as conn:
        rows = dict(conn.execute(select(tables.send_log.c.subscriber_id, tables.send_log.c.status)).all())
    assert rows == {early.id: "undeliverable", late.id: "deferred"}
    assert store.subscriber("late@example.com").status is SubscriberStatus.ACTIVE


def test_a_send_stopped_mid_way_gives_back_the_allowance_it_claimed_and_did_not_send(project: Path) -> None:
    """The engine claims ahead of its senders; a Ctrl-C (or a fault) after a few messages leaves the rest of what it
    claimed untried. Those are given back: the day's allowance still holds 200 messages, and the next send that day
    delivers up to it."""
    import threading

    from publisher.delivery.send import warmup_allowance

    cfg, store, today = _warming(project)
    stop, sent = threading.Event(), []

    def progress(status: str, n: int) -> None:
        if status == "sent":
            sent.append(n)
            if sum(sent) >= 20:
                stop.set()

    first = send_digest(cfg, store, today, stop=stop, progress=progress)
    assert first.stopped and 20 <= first.sent < 200 and not first.finished
    state = warmup_allowance(cfg, store, today).state()  # type: ignore[union-attr]
    assert state.used == first.sent, (state, first)  # claimed-and-untried given back
    second = send_digest(cfg, store, today)
    assert first.sent + second.sent == 200 and second.held == 50, second
    store.close()
    assert len(outbox(project)) == 200


def test_a_row_taken_over_is_logged_with_the_message_id_it_is_sent_with(store) -> None:  # type: ignore[no-untyped-def]
    """A deferred row made by a version before per-store ids keeps the old, guessable id in the log; the retry goes
    out with the new one, and the log now says so."""
    now = datetime.now(timezone.utc)
    store.start_issue("2026-W02", now, now)
    sub, _ = add_subscriber(store, "old@example.com", now - timedelta(days=1), confirmed=True)
    old_id = f"<digest.2026-W02.{hashlib.sha256(f'2026-W02:{sub.id}'.encode()).hexdigest()[:24]}@example.org>"
    assert store.claim_batch("2026-W02", "old-run", [(sub.id, old_id)], now, now) == {sub.id}
    store.record_sends("2026-W02", [(sub.id, "deferred", "451 try later", 1, "")], now, run_id="old-run")
    store.finish_run("old-run", now)
    new_id = "<digest.2026-W02.0123456789abcdef0123456789abcdef@example.org>"
    assert store.claim_batch("2026-W02", "new-run", [(sub.id, new_id)], now, now) == {sub.id}
    with store.engine.connect() as conn:
        assert conn.execute(select(tables.send_log.c.message_id)).scalar_one() == new_id


def test_a_send_running_past_midnight_moves_on_to_the_next_days_allowance(store) -> None:  # type: ignore[no-untyped-def]
    """The first day's 200 are used half a second before midnight; the send goes on past it and draws on the second
    day's 236, not on what is left of the first."""
    import time

    from publisher.delivery.warmup import Allowance, Ramp

    midnight = datetime(2027, 3, 1, tzinfo=timezone.utc)
    allowance = Allowance(store, Ramp(), "example.org", midnight - timedelta(seconds=0.5), "UTC")
    assert allowance.take(250) == 200 and allowance.take(1) == 0 and allowance.day_number == 0
    time.sleep(0.6)
    assert allowance.take(250) == 236 and allowance.day_number == 1 and allowance.today.isoformat() == "2027-03-01"
    allowance.give_back(6)  # to the day it was taken from
    assert allowance.state().used == 230
