"""The store on a real SQLite file and on a real PostgreSQL (skipped with a reason when unreachable)."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timedelta, timezone

import pytest
from sqlalchemy import inspect

from publisher.errors import StoreError
from publisher.models import Image, Publication, SubscriberStatus, Topic
from publisher.store import Store, open_store

from .conftest import NOW


def pub(n: int, **kw: object) -> Publication:
    when = datetime(2024, 3, n, tzinfo=timezone.utc)
    base = Publication(
        id=f"p{n}", url=f"http://127.0.0.1:8000/p/{n}", title=f"Title {n}", summary="Summary",
        content_type="Commentary", published_at=when, updated_at=when, topics=("security-cooperation",),
        authors=("A. Author",), image=Image("http://127.0.0.1:8000/media/x.png", "alt", "cap", "credit"), source="test",
    )
    return replace(base, **kw)  # type: ignore[arg-type]


def test_migrations_create_every_table(store: Store) -> None:
    tables = set(inspect(store.engine).get_table_names())
    assert {"publications", "topics", "publication_topics", "subscribers", "subscriber_topics", "digest_issues", "send_log", "alembic_version"} <= tables


def test_opening_twice_is_harmless(tmp_path) -> None:
    url = f"sqlite:///{tmp_path / 'again.db'}"
    open_store(url).close()
    s = open_store(url)
    assert s.topics() == []
    s.close()


def test_upsert_new_unchanged_updated_keeps_first_seen(store: Store) -> None:
    assert store.upsert_publication(pub(1), NOW) == "new"
    assert store.upsert_publication(pub(1), NOW + timedelta(hours=1)) == "unchanged"
    assert store.upsert_publication(pub(1, title="Retitled"), NOW + timedelta(hours=2)) == "updated"
    [p] = store.publications()
    assert p.title == "Retitled"
    assert p.first_seen_at == NOW
    assert p.published_at.tzinfo is not None and p.published_at == datetime(2024, 3, 1, tzinfo=timezone.utc)
    assert p.image == Image("http://127.0.0.1:8000/media/x.png", "alt", "cap", "credit")


def test_datetimes_come_back_aware_in_utc_whatever_zone_went_in(store: Store) -> None:
    from zoneinfo import ZoneInfo

    local = datetime(2024, 3, 5, 9, 0, tzinfo=ZoneInfo("America/New_York"))
    store.upsert_publication(pub(5, published_at=local, updated_at=local), NOW)
    [p] = store.publications()
    assert p.published_at == local and p.published_at.utcoffset() == timedelta(0)


def test_naive_datetimes_are_refused() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        pub(1, published_at=datetime(2024, 1, 1))


def test_filters_order_and_limit(store: Store) -> None:
    store.upsert_publication(pub(1, topics=("a",)), NOW)
    store.upsert_publication(pub(2, topics=("b",), content_type="Report"), NOW + timedelta(minutes=1))
    store.upsert_publication(pub(3, topics=("a", "b"), image=None), NOW + timedelta(minutes=2))
    assert [p.id for p in store.publications()] == ["p3", "p2", "p1"]  # newest first
    assert [p.id for p in store.publications(topic="a")] == ["p3", "p1"]
    assert [p.id for p in store.publications(content_type="Report")] == ["p2"]
    assert [p.id for p in store.publications(limit=1)] == ["p3"]
    assert [p.id for p in store.publications(seen_after=NOW)] == ["p3", "p2"]
    assert [p.id for p in store.publications(seen_after=NOW, seen_until=NOW + timedelta(minutes=1))] == ["p2"]
    assert store.publications(topic="a")[0].topics == ("a", "b")
    assert store.content_types() == ["Commentary", "Report"]
    assert store.count_publications() == 3


def test_topics_upsert(store: Store) -> None:
    assert store.upsert_topic(Topic("security-cooperation", "Security Cooperation", "d"))
    assert not store.upsert_topic(Topic("security-cooperation", "Security Cooperation", "d"))
    assert store.upsert_topic(Topic("security-cooperation", "Security Cooperation", "new"))
    assert store.topics() == [Topic("security-cooperation", "Security Cooperation", "new")]


def test_subscribers_unique_email_and_status(store: Store) -> None:
    s, created = store.add_subscriber("a@example.com", SubscriberStatus.PENDING, ["x", "y"], NOW)
    assert created and s.topics == ("x", "y") and s.confirmed_at is None
    again, created = store.add_subscriber("a@example.com", SubscriberStatus.ACTIVE, [], NOW)
    assert not created and again.status is SubscriberStatus.PENDING
    assert store.set_subscriber_status("a@example.com", SubscriberStatus.ACTIVE, NOW)
    [active] = store.subscribers(status=SubscriberStatus.ACTIVE)
    assert active.confirmed_at == NOW and active.topics == ("x", "y")
    assert not store.set_subscriber_status("nobody@example.com", SubscriberStatus.ACTIVE, NOW)


def test_issue_lifecycle_and_send_log_claims_once(store: Store) -> None:
    sub, _ = store.add_subscriber("a@example.com", SubscriberStatus.ACTIVE, [], NOW)
    assert store.last_sent_issue() is None and store.open_issue() is None
    assert store.start_issue("2026-W48", NOW, NOW) == NOW
    assert store.start_issue("2026-W48", NOW + timedelta(days=1), NOW) == NOW  # the first cutoff stands
    assert store.open_issue() == ("2026-W48", NOW, "")
    store.register_run("run-a", "2026-W48", NOW)
    store.register_run("run-b", "2026-W48", NOW)
    stale_before = NOW - timedelta(minutes=2)
    assert store.claim_batch("2026-W48", "run-a", [(sub.id, "<m@x>")], NOW, stale_before) == {sub.id}
    assert store.claim_batch("2026-W48", "run-b", [(sub.id, "<m@x>")], NOW, stale_before) == set()  # a second sender backs off
    assert store.unfinished_sends("2026-W48") == 1
    store.record_sends("2026-W48", [(sub.id, "sent", "", 1)], NOW)
    assert store.send_counts("2026-W48") == {"sent": 1} and store.unfinished_sends("2026-W48") == 0
    assert store.claim_batch("2026-W48", "run-b", [(sub.id, "<m@x>")], NOW, NOW + timedelta(hours=1)) == set()  # sent stays sent
    store.finish_issue("2026-W48", NOW)
    assert store.open_issue() is None
    assert store.last_sent_issue() == ("2026-W48", NOW, NOW)
    assert store.issue_ids() == ["2026-W48"]


def test_unreachable_database_is_a_clear_store_error() -> None:
    with pytest.raises(StoreError, match="Check \\[store\\].url"):
        open_store("postgresql+psycopg://nobody@127.0.0.1:1/none?connect_timeout=2")


def test_repr_hides_the_password(postgres_url: str) -> None:
    s = open_store(postgres_url.replace("postgres@", "postgres:hunter2@"))
    assert "hunter2" not in repr(s)
    s.close()


def test_newest_lists_ids_and_hashes_off_the_indexes(store: Store) -> None:
    store.upsert_publication(pub(1, topics=("a",)), NOW)
    store.upsert_publication(pub(2, topics=("a", "b"), content_type="Report"), NOW)
    store.upsert_publication(pub(3, topics=("b",), published_at=None, updated_at=None), NOW + timedelta(days=9000))
    assert [i for i, _ in store.newest(limit=10)] == ["p3", "p2", "p1"]  # undated: listed at first seen
    assert [i for i, _ in store.newest(topic="a", limit=10)] == ["p2", "p1"]
    assert [i for i, _ in store.newest(content_type="Report", limit=10)] == ["p2"]
    assert [i for i, _ in store.newest(limit=1)] == ["p3"]
    from publisher.store.db import content_hash

    assert dict(store.newest(limit=10))["p1"] == content_hash(pub(1, topics=("a",)))


def test_moving_a_publication_between_topics_moves_its_listing(store: Store) -> None:
    store.upsert_publication(pub(1, topics=("a",)), NOW)
    store.upsert_publication(pub(1, topics=("b",)), NOW)
    assert store.newest(topic="a", limit=5) == [] and [i for i, _ in store.newest(topic="b", limit=5)] == ["p1"]


def test_feed_fragments_round_trip_and_replace(store: Store) -> None:
    store.upsert_publication(pub(1), NOW)
    store.save_feed_fragments([("p1", "atom", "f1", b"<entry/>"), ("p1", "rss", "f1", b"<item/>")])
    store.save_feed_fragments([("p1", "atom", "f2", b"<entry>2</entry>")])
    assert store.feed_fragments([("p1", "atom"), ("p1", "rss")]) == {("p1", "atom"): ("f2", b"<entry>2</entry>"), ("p1", "rss"): ("f1", b"<item/>")}
    assert store.feed_fragments([("nope", "atom")]) == {}


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def empty_db_url(request: pytest.FixtureRequest, tmp_path) -> str:
    return f"sqlite:///{tmp_path / 'old.db'}" if request.param == "sqlite" else request.getfixturevalue("postgres_url")


def test_an_older_database_is_migrated_with_its_data(empty_db_url: str) -> None:
    """A store made by the first release (revision 0001) upgrades in place and lists what it held."""
    from alembic import command
    from alembic.config import Config as AlembicConfig
    from sqlalchemy import create_engine, text

    from publisher.store.db import MIGRATIONS

    url = empty_db_url
    engine = create_engine(url)
    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "0001")
        conn.execute(text(
            "INSERT INTO publications (id, url, title, summary, body_html, content_type, authors, published_at, updated_at,"
            " featured, source, content_hash, first_seen_at) VALUES ('old', 'https://x/old', 'Old', '', '', 'Report', '[]',"
            " :when, :when, :no, 'content', 'h', :seen)"),
            {"when": datetime(2024, 1, 2, 3, 4, 5), "seen": datetime(2024, 2, 1), "no": False})
        conn.execute(text("INSERT INTO publication_topics (publication_id, topic_slug) VALUES ('old', 'a')"))
    engine.dispose()
    s = open_store(url)
    [old] = s.publications(topic="a")
    assert old.id == "old" and old.published_at == datetime(2024, 1, 2, 3, 4, 5, tzinfo=timezone.utc)
    assert s.newest(topic="a", limit=5) == [("old", "h")]
    s.close()


def test_the_scheduler_lease_has_one_holder_until_it_expires(store: Store) -> None:
    from publisher.store.operations import lease_liveness_id

    # Each holder keeps its liveness lock while it lives, as `publisher run` does; b's and c's die with this test.
    alive = [store.hold_run(lease_liveness_id(h)) for h in ("a", "b", "c")]
    later = NOW + timedelta(seconds=30)
    assert store.acquire_lease("scheduler", "a", NOW, later)
    assert not store.acquire_lease("scheduler", "b", NOW + timedelta(seconds=10), later)  # a holds it
    assert store.acquire_lease("scheduler", "a", NOW + timedelta(seconds=10), later + timedelta(seconds=10))  # a renews
    assert store.acquire_lease("scheduler", "b", later + timedelta(seconds=11), later + timedelta(seconds=60))  # a went quiet
    assert store.lease_holder("scheduler")[0] == "b"
    store.release_lease("scheduler", "b", later + timedelta(seconds=12))
    assert store.acquire_lease("scheduler", "c", later + timedelta(seconds=13), later + timedelta(seconds=40))
    # A holder whose process is gone (its lock free) is taken over at once, long before its lease expires.
    assert not store.acquire_lease("scheduler", "a", later + timedelta(seconds=14), later + timedelta(seconds=50))
    alive[2].release()  # c dies
    assert store.acquire_lease("scheduler", "a", later + timedelta(seconds=15), later + timedelta(seconds=50))
    for lock in alive[:2]:
        lock.release()


def test_source_state_round_trip(store: Store) -> None:
    store.save_source_state("partner", state='{"etag": "v1"}', last_success_at=NOW)
    store.save_source_state("partner", last_error_at=NOW + timedelta(hours=1), last_error="timed out")
    saved = store.source_state("partner")
    assert (saved["state"], saved["last_success_at"], saved["last_error"]) == ('{"etag": "v1"}', NOW, "timed out")
    assert [s["name"] for s in store.all_source_states()] == ["partner"]


def test_job_stores_starting_at_once_on_a_new_store_all_start(store: Store) -> None:
    """APScheduler's job table comes with the migrations: job stores starting together on a new store (`publisher run`
    taking the lease while `publisher status` reads the next runs) find it and create nothing. When APScheduler
    created it itself, two of them on one PostgreSQL schema could both create it, and one failed (a duplicate key in
    pg_type, seen in CI)."""
    import threading

    from apscheduler.jobstores.sqlalchemy import SQLAlchemyJobStore
    from apscheduler.schedulers.background import BackgroundScheduler

    from publisher.scheduler import JOBS_TABLE

    columns = {c["name"]: c for c in inspect(store.engine).get_columns(JOBS_TABLE)}
    assert set(columns) == {"id", "next_run_time", "job_state"} and not columns["job_state"]["nullable"]
    assert [ix["column_names"] for ix in inspect(store.engine).get_indexes(JOBS_TABLE)] == [["next_run_time"]]
    start, errors = threading.Barrier(6), []

    def one() -> None:
        jobstore = SQLAlchemyJobStore(engine=store.engine, tablename=JOBS_TABLE)
        start.wait()
        try:
            jobstore.start(BackgroundScheduler(), "default")
            assert jobstore.get_all_jobs() == []
        except Exception as exc:  # noqa: BLE001 - collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=one) for _ in range(6)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert errors == []
