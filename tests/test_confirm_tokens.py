"""Issue 11, point 4: a confirmation link confirms the sign-up it was made for, and no later one.

Through real uvicorn, on SQLite and PostgreSQL: the links come from the confirmation emails in the outbox.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import requests
from itsdangerous import URLSafeTimedSerializer

from publisher.config import Config
from publisher.delivery.send import links_for
from publisher.models import SubscriberStatus
from publisher.pipeline import run_ingest
from publisher.store import Store
from publisher.web import create_app
from subscribers import add_subscriber
from subscribers.tokens import _address_tag

from .conftest import NOW
from .servers import run_app
from .signup_support import client_from, confirm_link, csrf_of, outbox, settle, sign_up


@pytest.fixture
def site(cfg: Config, store: Store) -> Iterator[str]:
    run_ingest(cfg, store, NOW)
    with run_app(create_app(cfg, store)) as base:
        yield base


def sign_up_and_get_link(cfg: Config, store: Store, site: str, address: str, network: str, **kw: tuple[str, ...]) -> str | None:
    """Sign ``address`` up from ``network`` and return the link that sign-up's email brought (None: no email came)."""
    before = links_to(cfg, address)
    sign_up(client_from(network), site, address, **kw)
    settle(store)
    new = links_to(cfg, address) - before
    assert len(new) <= 1
    return new.pop() if new else None


def links_to(cfg: Config, address: str) -> set[str]:
    return {confirm_link(m) for m in outbox(cfg) if m["To"] == address}


def press(base: str, path: str) -> requests.Response:
    """What the person does with a link: open it (a page with a button), press the button."""
    http = requests.Session()
    page = http.get(base + path, timeout=10)
    if page.status_code != 200:
        return page
    return http.post(base + path, data={"csrf": csrf_of(page.text)}, timeout=10)


def test_an_old_link_does_not_confirm_a_later_sign_up(cfg: Config, store: Store, site: str) -> None:
    address = "again@example.net"
    first = sign_up_and_get_link(cfg, store, site, address, "127.3.0.1")
    sub = store.subscriber(address)
    # They leave (the unsubscribe link works for a pending sign-up too), then someone signs the address up again.
    one_click = requests.post(links_for(cfg, sub)["unsubscribe_url"].replace("http://127.0.0.1:8000", site),
                              data="List-Unsubscribe=One-Click", headers={"Content-Type": "application/x-www-form-urlencoded"}, timeout=10)
    assert one_click.status_code == 200 and store.subscriber(address).status is SubscriberStatus.UNSUBSCRIBED
    second = sign_up_and_get_link(cfg, store, site, address, "127.3.1.1")
    assert first and second and second != first

    refused = press(site, first)  # the attack: the first link, still within its 7 days
    assert refused.status_code == 400 and "This link does not work" in refused.text  # said on opening it, no button
    http = requests.Session()
    forced = http.post(site + first, data={"csrf": csrf_of(http.get(f"{site}/subscribe", timeout=10).text)}, timeout=10)
    assert forced.status_code == 400 and "This link does not work" in forced.text  # and pressing anyway changes nothing
    assert store.subscriber(address).status is SubscriberStatus.PENDING  # nothing changed
    assert "You are subscribed" in press(site, second).text
    assert store.subscriber(address).status is SubscriberStatus.ACTIVE
    assert "You are subscribed" in press(site, second).text  # the same link twice: a double click, no harm
    assert press(site, first).status_code == 400  # the old one stays dead


def test_a_second_pending_sign_up_retires_the_first_link(cfg: Config, store: Store, site: str) -> None:
    address = "twice@example.net"
    first = sign_up_and_get_link(cfg, store, site, address, "127.3.2.1")
    second = sign_up_and_get_link(cfg, store, site, address, "127.3.3.1")
    assert first and second
    assert press(site, first).status_code == 400 and store.subscriber(address).status is SubscriberStatus.PENDING
    assert "You are subscribed" in press(site, second).text


def test_a_sign_up_over_the_daily_cap_changes_nothing_so_the_last_link_still_works(cfg: Config, store: Store, site: str) -> None:
    address = "capped@example.net"
    links = [sign_up_and_get_link(cfg, store, site, address, f"127.3.{10 + k}.1", topics=("security-cooperation",) if k == 3 else ())
             for k in range(cfg.subscribers.confirmations_per_day + 1)]
    assert links[-1] is None and all(links[:-1])  # the fourth was not sent...
    links = links[:-1]
    assert store.subscriber(address).topics == ()  # ...and changed nothing: not the topics
    assert [press(site, link).status_code for link in links[:-1]] == [400, 400]
    assert "You are subscribed" in press(site, links[-1]).text  # ...nor the nonce: the last link sent still works


def test_links_sent_before_the_upgrade_still_confirm_only_while_no_newer_sign_up_exists(cfg: Config, store: Store, site: str) -> None:
    """A pending subscriber from before nonces (or added by `subscribers add`) has none; the old token format then holds."""
    old_format = URLSafeTimedSerializer(cfg.secret_key.get(), salt="publisher.confirm")
    waiting, _ = add_subscriber(store, "waiting@example.net", NOW)
    assert "You are subscribed" in press(site, f"/confirm/{old_format.dumps([waiting.id, _address_tag(waiting.email)])}").text
    resigned, _ = add_subscriber(store, "resigned@example.net", NOW)
    old_link = f"/confirm/{old_format.dumps([resigned.id, _address_tag(resigned.email)])}"
    sign_up(client_from("127.3.20.1"), site, resigned.email)  # a new sign-up gives it a nonce: the old link is retired
    settle(store)
    assert press(site, old_link).status_code == 400 and store.subscriber(resigned.email).status is SubscriberStatus.PENDING
