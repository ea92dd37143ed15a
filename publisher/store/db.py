"""Store: the only module that speaks SQL. Every method takes and returns plain models."""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import re
import secrets
import sqlite3
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy import Connection, Engine, create_engine, delete, event, func, insert, inspect, select, table, tuple_, update
from sqlalchemy.exc import DatabaseError, DBAPIError, IntegrityError, InternalError, OperationalError, SQLAlchemyError

from ..errors import StoreError
from ..models import Image, Publication, Subscriber, SubscriberStatus, Topic
from . import tables as t
from .audience import AudienceMixin
from .contentfiles import ContentFilesMixin
from .fleet import FleetMixin
from .operations import OperationsMixin
from .sendlog import SendLogMixin
from .signups import SignupMixin

MIGRATIONS = Path(__file__).parent / "migrations"
_REVISION = re.compile(r"^(down_revision|revision)\s*(?::[^=]*)?=\s*['\"]?(\w+)?", re.M)


@functools.lru_cache(maxsize=1)
def head_revision() -> str:
    """The newest migration's id, read from migrations/versions/ (the revision no other one comes after)."""
    revisions, parents = set(), set()
    for path in (MIGRATIONS / "versions").glob("*.py"):
        found = dict((key, value) for key, value in _REVISION.findall(path.read_text(encoding="utf-8")))
        if found.get("revision"):
            revisions.add(found["revision"])
        if found.get("down_revision") and found["down_revision"] != "None":
            parents.add(found["down_revision"])
    heads = revisions - parents
    if len(heads) != 1:
        raise RuntimeError(f"the migrations have {len(heads)} heads ({sorted(heads)}); they must form one line")
    return heads.pop()
_MIGRATE_LOCK = threading.Lock()  # alembic's migration context is process-global: one migration at a time
MIGRATE_LOCK_KEY = 0x7075626C6D  # "publm": the PostgreSQL advisory lock that makes migrations one at a time across processes


def open_store(url: str) -> Store:
    """Connect and bring the schema to the newest migration."""
    if url.startswith("sqlite:///") and ":memory:" not in url:
        path = Path(url[len("sqlite:///"):].partition("?")[0])
        path.parent.mkdir(parents=True, exist_ok=True)
        # The subscriber list is personal data: a new store is readable by its owner only (SQLite gives its -wal
        # and -shm files the same mode). An empty file is an empty database.
        with contextlib.suppress(FileExistsError):
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600))
    try:
        engine = create_engine(url, future=True)
    except (SQLAlchemyError, ImportError, ValueError) as exc:
        raise StoreError(f"cannot use store URL {_safe_url(url)}: {exc}. Check [store].url.") from None
    if engine.dialect.name == "sqlite":
        event.listen(engine, "connect", _sqlite_pragmas)
    if engine.dialect.name == "sqlite" and engine.url.database not in (None, "", ":memory:"):
        _refuse_foreign(engine.url.database)
    store = Store(engine)
    store.migrate()
    store.probe()
    return store


@contextlib.contextmanager
def _file_lock(engine: Engine) -> Iterator[None]:
    """A SQLite file's migrations one at a time across processes (`serve` and `preview` started together on a new
    clone each created the tables, and one failed): an flock on a file beside it, dropped by the kernel if we die."""
    database = engine.url.database if engine.dialect.name == "sqlite" else None
    if not database or database == ":memory:":
        yield
        return
    import fcntl

    # Never through a symlink, readable by its owner only (like the store beside it should be).
    fd = os.open(f"{database}.migrate-lock", os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # drops the lock


def _refuse_foreign(path: str) -> None:
    """A SQLite file that holds tables but none of ours is another application's database (a typo in [store].url,
    a path shared by mistake): refused before anything is written to it, WAL mode included, so it is read-only here.
    A PostgreSQL database may well be shared with other applications' tables, so this is SQLite's rule only."""
    if not Path(path).is_file():
        return
    try:
        con = sqlite3.connect(f"{Path(path).absolute().as_uri()}?mode=ro", uri=True)
        try:
            names = {row[0] for row in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        finally:
            con.close()
    except sqlite3.Error:
        return  # damaged or not SQLite at all: opening it says so, with the advice for that case
    names = {n for n in names if not n.startswith("sqlite_")}
    if names and not names & ({"alembic_version"} | set(t.metadata.tables)):
        found = ", ".join(sorted(names)[:5]) + (", ..." if len(names) > 5 else "")
        raise StoreError(f"the store {path} is another application's SQLite database (its tables: {found}); nothing was written "
                         "to it. Point [store].url at the publisher's own file, or at a new path.")


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA busy_timeout=10000")
    cur.close()


def _safe_url(url: str) -> str:
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return "<unparseable URL>"


def unusable(exc: BaseException) -> bool:
    """An error that says the database itself cannot be used (damaged, unreachable, locked, out of space),
    rather than that one statement was wrong (a constraint, bad data): the former ends the command."""
    return isinstance(exc, (OperationalError, InternalError)) or type(exc) is DatabaseError


def describe_failure(url: str, exc: DBAPIError, doing: str = "database error on") -> str:
    """One line for the operator: which database, what it said, and what to do."""
    reason = str(exc.orig).strip() or type(exc.orig).__name__
    if url.startswith("sqlite:///") and type(exc) is DatabaseError:  # SQLite's own word for a damaged file
        path = url[len("sqlite:///"):]
        return (f"the store {path} is damaged or is not a SQLite database ({reason}). Restore it from a backup, or move it "
                f"aside to have a new, empty one made (`sqlite3 {path} .recover` may rescue part of it).")
    return f"{doing} {_safe_url(url)}: {reason}. Check [store].url and that the database is reachable."


def content_hash(pub: Publication) -> str:
    """What an upsert compares: every field an editor can change, nothing the store adds."""
    fields = {
        "url": pub.url, "title": pub.title, "summary": pub.summary, "body_html": pub.body_html,
        "content_type": pub.content_type, "topics": list(pub.topics), "authors": list(pub.authors),
        "published_at": pub.published_at.isoformat() if pub.published_at else None,
        "updated_at": pub.updated_at.isoformat() if pub.updated_at else None,
        "image": [pub.image.url, pub.image.alt, pub.image.caption, pub.image.credit] if pub.image else None,
        "featured": pub.featured, "featured_rank": pub.featured_rank,
    }
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()


class Store(SendLogMixin, AudienceMixin, OperationsMixin, SignupMixin, ContentFilesMixin, FleetMixin):
    closed = False  # set by close(): background threads (the sign-up sender) stop using a closed store

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._on_close: list[Callable[[], None]] = []

    def __repr__(self) -> str:
        return f"Store({_safe_url(str(self.engine.url))})"

    @contextmanager
    def _tx(self) -> Iterator[Connection]:
        try:
            with self.engine.begin() as conn:
                yield conn
        except DBAPIError as exc:
            if not unusable(exc):
                raise  # an IntegrityError and the like: the caller's to handle
            raise StoreError(describe_failure(str(self.engine.url), exc)) from exc

    def migrate(self) -> None:
        """Bring the schema to this version's head. A store already there (every command but the first) is known by
        one query, without loading Alembic: a third of the time every command took to start."""
        if self._at_head():
            return
        from alembic import command
        from alembic.config import Config as AlembicConfig
        from alembic.util.exc import CommandError

        cfg = AlembicConfig()
        cfg.set_main_option("script_location", str(MIGRATIONS))
        sqlite = self.engine.dialect.name == "sqlite"
        try:
            with _MIGRATE_LOCK, _file_lock(self.engine), self.engine.connect() as conn:
                if sqlite:
                    # SQLite alters a table by copying it and dropping the old one; with foreign keys on, that drop
                    # would cascade and delete every row that points at it (topics, send log...). The pragma only
                    # works outside a transaction.
                    conn.exec_driver_sql("PRAGMA foreign_keys=OFF")
                    conn.commit()
                try:
                    with conn.begin():
                        if conn.dialect.name == "postgresql":
                            # Processes starting together on a new database (a coordinator and its workers, `status`
                            # beside them) would each create alembic_version and the tables, and all but one fail:
                            # one migrates, the others wait for its commit and then find the schema current.
                            conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({MIGRATE_LOCK_KEY})")
                        cfg.attributes["connection"] = conn
                        command.upgrade(cfg, "head")
                finally:
                    if sqlite:
                        conn.exec_driver_sql("PRAGMA foreign_keys=ON")
                        conn.commit()
        except DBAPIError as exc:
            raise StoreError(describe_failure(str(self.engine.url), exc, "cannot open or migrate the store")) from None
        except CommandError as exc:  # e.g. a revision this version does not know: the store was made by a newer publisher
            raise StoreError(f"cannot migrate the store {_safe_url(str(self.engine.url))}: {exc}. Was it made by a newer version of "
                             "the publisher? Run that version, or restore a backup made by this one.") from None

    def _at_head(self) -> bool:
        try:
            with self.engine.connect() as conn:
                current = [str(v) for v in conn.exec_driver_sql("SELECT version_num FROM alembic_version").scalars()]
        except (DBAPIError, sqlite3.Error):  # no such table yet (a new store), or not a store at all: Alembic decides
            return False
        return current == [head_revision()]

    def probe(self) -> None:
        """Read the first row of every table (the scheduler's included): a damaged table fails here, at once, not
        halfway through a command. Cheap: a few pages each, however big the tables."""
        with self._tx() as conn:
            for name in inspect(conn).get_table_names():
                conn.execute(select(1).select_from(table(name)).limit(1)).first()

    def on_close(self, callback: Callable[[], None]) -> None:
        """Call this first when the store is closed: a background thread stops before its connections go."""
        self._on_close.append(callback)

    def close(self) -> None:
        self.closed = True
        for callback in self._on_close:
            callback()
        self.engine.dispose()

    # -- topics ---------------------------------------------------------------------------

    def upsert_topic(self, topic: Topic) -> bool:
        """Insert or update; True when something changed."""
        with self._tx() as conn:
            row = conn.execute(select(t.topics).where(t.topics.c.slug == topic.slug)).first()
            values = {"name": topic.name, "description": topic.description}
            if row is None:
                conn.execute(insert(t.topics).values(slug=topic.slug, **values))
                return True
            if (row.name, row.description) == (topic.name, topic.description):
                return False
            conn.execute(update(t.topics).where(t.topics.c.slug == topic.slug).values(**values))
            return True

    def topics(self) -> list[Topic]:
        with self._tx() as conn:
            rows = conn.execute(select(t.topics).order_by(t.topics.c.slug)).all()
        return [Topic(r.slug, r.name, r.description) for r in rows]

    # -- publications -----------------------------------------------------------------------

    def upsert_publication(self, pub: Publication, now: datetime) -> str:
        """'new', 'updated' or 'unchanged'. first_seen_at is set once, on insert, and never moves."""
        digest = content_hash(pub)
        values = {
            "url": pub.url, "title": pub.title, "summary": pub.summary, "body_html": pub.body_html,
            "content_type": pub.content_type, "authors": list(pub.authors),
            "published_at": pub.published_at, "updated_at": pub.updated_at,
            "image_url": pub.image.url if pub.image else None,
            "image_alt": pub.image.alt if pub.image else None,
            "image_caption": pub.image.caption if pub.image else None,
            "image_credit": pub.image.credit if pub.image else None,
            "featured": pub.featured, "featured_rank": pub.featured_rank,
            "source": pub.source, "content_hash": digest,
        }
        with self._tx() as conn:
            old = conn.execute(select(t.publications.c.content_hash, t.publications.c.first_seen_at).where(t.publications.c.id == pub.id)).first()
            if old is not None and old.content_hash == digest:
                return "unchanged"
            listed = pub.published_at or (old.first_seen_at if old is not None else now)
            if old is None:
                conn.execute(insert(t.publications).values(id=pub.id, first_seen_at=now, listed_at=listed, **values))
            else:
                conn.execute(update(t.publications).where(t.publications.c.id == pub.id).values(listed_at=listed, **values))
                conn.execute(delete(t.publication_topics).where(t.publication_topics.c.publication_id == pub.id))
            if pub.topics:
                conn.execute(insert(t.publication_topics), [{"publication_id": pub.id, "topic_slug": s, "listed_at": listed} for s in dict.fromkeys(pub.topics)])
            return "new" if old is None else "updated"

    def publications(
        self,
        *,
        topic: str | None = None,
        content_type: str | None = None,
        seen_after: datetime | None = None,
        seen_until: datetime | None = None,
        ids: Iterable[str] | None = None,
        limit: int | None = None,
    ) -> list[Publication]:
        """Newest first (publication date, or first seen when there is none; then id for a stable order)."""
        p = t.publications
        if ids is not None and topic is content_type is seen_after is seen_until is limit is None:
            q = select(p).where(p.c.id.in_(list(ids))).order_by(p.c.listed_at.desc(), p.c.id.desc())
        else:
            # Pick the ids first, then fetch those rows: sorting narrow rows is several times faster than whole ones.
            q = self._listing(topic=topic, content_type=content_type, seen_after=seen_after, seen_until=seen_until, ids=ids, limit=limit)
            q = select(p).where(p.c.id.in_(q.scalar_subquery() if limit is None else q)).order_by(p.c.listed_at.desc(), p.c.id.desc())
        with self._tx() as conn:
            return self._load(conn, conn.execute(q).all())

    def newest(self, *, topic: str | None = None, content_type: str | None = None, limit: int) -> list[tuple[str, str]]:
        """(id, content hash) of what a listing would hold, in order, without loading the rows.

        For building many feeds at once: a caller that already holds a publication with that hash need not load it.
        """
        return self.newest_of([(topic, content_type)], limit=limit)[0]

    def newest_of(self, selections: Sequence[tuple[str | None, str | None]], *, limit: int) -> list[list[tuple[str, str]]]:
        """:meth:`newest` of many (topic, content type) selections, in their order, on one connection.

        Each is one indexed read of ``limit`` rows; at 505 feeds, building a statement per feed and a transaction per
        feed cost more than the reads, so the statements are built once (bound parameters) and the reads share one.
        """
        found = []
        with self._tx() as conn:
            for topic, content_type in selections:
                q, params = _newest_statement(topic, content_type, limit)
                if q is None:
                    p = t.publications
                    ids = self._listing(topic=topic, content_type=content_type, limit=limit).subquery()
                    q = select(p.c.id, p.c.content_hash).join(ids, ids.c[0] == p.c.id).order_by(p.c.listed_at.desc(), p.c.id.desc())
                found.append([(pid, digest) for pid, digest in conn.execute(q, params)])
        return found

    def _listing(self, *, topic: str | None = None, content_type: str | None = None, seen_after: datetime | None = None,
                 seen_until: datetime | None = None, ids: Iterable[str] | None = None, limit: int | None = None) -> Any:
        p = t.publications
        if topic is not None and content_type is seen_after is seen_until is ids is None:
            pt = t.publication_topics  # straight off ix_publication_topics_listing
            q = select(pt.c.publication_id).where(pt.c.topic_slug == topic).order_by(pt.c.listed_at.desc(), pt.c.publication_id.desc())
            return q.limit(limit) if limit is not None else q
        q = select(p.c.id).order_by(p.c.listed_at.desc(), p.c.id.desc())
        if topic is not None:
            pt = t.publication_topics
            q = q.join(pt, pt.c.publication_id == p.c.id).where(pt.c.topic_slug == topic)
        if content_type is not None:
            q = q.where(p.c.content_type == content_type)
        if seen_after is not None:
            q = q.where(p.c.first_seen_at > seen_after)
        if seen_until is not None:
            q = q.where(p.c.first_seen_at <= seen_until)
        if ids is not None:
            q = q.where(p.c.id.in_(list(ids)))
        if limit is not None:
            q = q.limit(limit)
        return q

    def _load(self, conn: Connection, rows: Sequence[Any]) -> list[Publication]:
        topics_of = self._topics_of(conn, [r.id for r in rows])
        return [_publication(r, tuple(sorted(topics_of.get(r.id, ())))) for r in rows]

    def _topics_of(self, conn: Connection, ids: list[str]) -> dict[str, list[str]]:
        pt = t.publication_topics
        topics_of: dict[str, list[str]] = {}
        if ids:
            for pid, slug in conn.execute(select(pt.c.publication_id, pt.c.topic_slug).where(self._among(pt.c.publication_id, ids))):
                topics_of.setdefault(pid, []).append(slug)
        return topics_of

    def _among(self, column: Any, ids: list[str]) -> Any:
        """``column IN ids`` as one bound parameter, however many ids: a JSON array on SQLite, an array on PostgreSQL.

        A plain ``in_()`` renders one placeholder per id, and at the 20,000 ids of a 500-topic site's feeds
        SQLAlchemy spends longer naming the placeholders than the database spends on the query (and SQLite
        has a cap on their number).
        """
        if self.engine.dialect.name == "postgresql":
            return column == sa.any_(sa.bindparam(None, list(ids), type_=sa.ARRAY(sa.String)))
        values = func.json_each(sa.bindparam(None, json.dumps(list(ids)), type_=sa.String)).table_valued("value")
        return column.in_(select(values.c.value))

    def publications_by_id(self, ids: Iterable[str]) -> dict[str, tuple[str, Publication]]:
        """id → (the row's content hash, publication), in no particular order; unknown ids are left out.

        For the feeds, which place each publication themselves: one query per table however many ids,
        and the hash is the stored row's own (a rendered entry is kept against it).
        """
        ids = list(dict.fromkeys(ids))
        if not ids:
            return {}
        p = t.publications
        columns = [p.c.id, p.c.content_hash, p.c.url, p.c.title, p.c.summary, p.c.content_type, p.c.published_at, p.c.updated_at,
                   p.c.authors, p.c.image_url, p.c.image_alt, p.c.image_caption, p.c.image_credit, p.c.featured, p.c.featured_rank,
                   p.c.body_html, p.c.source, p.c.first_seen_at]
        with self._tx() as conn:
            rows = conn.execute(select(*columns).where(self._among(p.c.id, ids))).all()
            topics_of = self._topics_of(conn, [r[0] for r in rows])
        found = {}
        # Unpacked by position, as _publication() builds them by name: at 20,000 rows the named lookups were a third of the load.
        for (pid, digest, url, title, summary, ctype, published, updated, authors, image_url, alt, caption, credit, featured,
             rank, body, source, first_seen) in rows:
            image = Image(image_url, alt or "", caption or "", credit or "") if image_url else None
            found[pid] = (digest, Publication(
                id=pid, url=url, title=title, summary=summary, content_type=ctype, published_at=published, updated_at=updated,
                topics=tuple(sorted(topics_of.get(pid, ()))), authors=tuple(authors), image=image, featured=bool(featured),
                featured_rank=rank, body_html=body, source=source, first_seen_at=first_seen))
        return found

    def content_types(self) -> list[str]:
        """The distinct content types, by skipping along ix_publications_type_listing: one index probe per type,
        where DISTINCT reads every publication (a tenth of an incremental feed build at 100,000)."""
        ct = t.publications.c.content_type
        seen = select(func.min(ct).label("ct")).cte("types", recursive=True)
        seen = seen.union_all(select(select(func.min(ct)).where(ct > seen.c.ct).scalar_subquery()).where(seen.c.ct.is_not(None)))
        with self._tx() as conn:
            return list(conn.execute(select(seen.c.ct).where(seen.c.ct.is_not(None)).order_by(seen.c.ct)).scalars())

    def withdraw_publications(self, ids: Iterable[str], source: str) -> dict[str, str]:
        """Unpublish these publications of ``source`` (an editor deleted their files, or made them drafts): id → title of
        those it held. One transaction: the row, its topic links and its rendered feed entries go, and so do the compiled
        variants of every issue (engine = "celery"), which a retry of a deferred recipient would otherwise send as they
        were; a worker that finds none renders the issue again from the store, without them. What was sent stays history:
        digest_issues and the send log keep no publication, and a web copy in public/digests/ is left as it was."""
        ids = sorted(set(ids))
        if not ids:
            return {}
        p, pt, f = t.publications, t.publication_topics, t.feed_fragments
        with self._tx() as conn:
            found = {r.id: r.title for r in conn.execute(select(p.c.id, p.c.title).where(self._among(p.c.id, ids), p.c.source == source))}
            if found:
                gone = sorted(found)
                # Explicit, not left to ON DELETE CASCADE: a SQLite connection made without PRAGMA foreign_keys ignores it.
                conn.execute(delete(f).where(self._among(f.c.publication_id, gone)))
                conn.execute(delete(pt).where(self._among(pt.c.publication_id, gone)))
                conn.execute(delete(p).where(self._among(p.c.id, gone)))
                conn.execute(delete(t.issue_variants))
        return found

    def count_publications(self) -> int:
        with self._tx() as conn:
            return conn.execute(select(func.count()).select_from(t.publications)).scalar_one()

    def feed_fragments(self, keys: Iterable[tuple[str, str]]) -> dict[tuple[str, str], tuple[str, bytes]]:
        """Stored rendered entries: (publication id, format) → (fingerprint, bytes), for the keys asked that are stored."""
        f = t.feed_fragments
        keys = set(keys)
        ids = sorted({pid for pid, _ in keys})
        formats = sorted({fmt for _, fmt in keys})
        found: dict[tuple[str, str], tuple[str, bytes]] = {}
        if not keys:
            return found
        q = select(f.c.publication_id, f.c.format, f.c.fingerprint, f.c.data).where(self._among(f.c.publication_id, ids), f.c.format.in_(formats))
        with self._tx() as conn:
            for pid, fmt, fingerprint, data in conn.execute(q):  # streamed: the rows are most of a build's memory
                if (pid, fmt) in keys:
                    found[(pid, fmt)] = (fingerprint, data if type(data) is bytes else bytes(data))
        return found

    def save_feed_fragments(self, rows: Iterable[tuple[str, str, str, bytes]]) -> None:
        """(publication id, format, fingerprint, bytes): insert or replace."""
        rows = list(rows)
        if not rows:
            return
        f = t.feed_fragments
        sqlite = self.engine.dialect.name == "sqlite"
        try:
            with self.engine.connect() as conn:
                if sqlite:  # a disposable cache: losing its last write to a power cut costs a re-render, not an fsync now
                    conn.exec_driver_sql("PRAGMA synchronous=OFF")
                    conn.commit()  # SQLAlchemy autobegan; the pragma itself is outside any SQLite transaction
                try:
                    with conn.begin():
                        for start in range(0, len(rows), 500):
                            chunk = rows[start:start + 500]
                            conn.execute(delete(f).where(tuple_(f.c.publication_id, f.c.format).in_([(r[0], r[1]) for r in chunk])))
                            conn.execute(insert(f), [{"publication_id": a, "format": b, "fingerprint": c, "data": d} for a, b, c, d in chunk])
                finally:
                    if sqlite:
                        conn.exec_driver_sql("PRAGMA synchronous=FULL")
                        conn.commit()
        except OperationalError as exc:
            raise StoreError(f"database error on {self!r}: {exc.orig}") from exc

    # -- subscribers ------------------------------------------------------------------------

    def add_subscriber(self, email: str, status: SubscriberStatus, topics: Sequence[str], now: datetime) -> tuple[Subscriber, bool]:
        """Insert a subscriber; (existing, False) when the address is already known."""
        confirmed = now if status is SubscriberStatus.ACTIVE else None
        try:
            with self._tx() as conn:
                sid = conn.execute(
                    insert(t.subscribers).values(email=email, status=status.value, created_at=now, updated_at=now, confirmed_at=confirmed)
                ).inserted_primary_key[0]
                if topics:
                    conn.execute(insert(t.subscriber_topics), [{"subscriber_id": sid, "topic_slug": s} for s in dict.fromkeys(topics)])
        except IntegrityError:
            existing = self.subscriber(email)
            assert existing is not None
            return existing, False
        return Subscriber(sid, email, status, now, now, tuple(dict.fromkeys(topics)), confirmed), True

    def subscriber(self, email: str) -> Subscriber | None:
        found = self.subscribers(emails=[email])
        return found[0] if found else None

    def subscribers(self, *, status: SubscriberStatus | None = None, emails: Iterable[str] | None = None) -> list[Subscriber]:
        s = t.subscribers
        q = select(s).order_by(s.c.id)
        if status is not None:
            q = q.where(s.c.status == status.value)
        if emails is not None:
            q = q.where(s.c.email.in_(list(emails)))
        with self._tx() as conn:
            rows = conn.execute(q).all()
            ids = [r.id for r in rows]
            st = t.subscriber_topics
            topic_q = select(st) if len(ids) > 500 else select(st).where(st.c.subscriber_id.in_(ids))
            topic_rows = conn.execute(topic_q).all() if rows else []
        topics_of: dict[int, list[str]] = {}
        for tr in topic_rows:
            topics_of.setdefault(tr.subscriber_id, []).append(tr.topic_slug)
        return [
            Subscriber(r.id, r.email, SubscriberStatus(r.status), r.created_at, r.updated_at, tuple(sorted(topics_of.get(r.id, ()))), r.confirmed_at)
            for r in rows
        ]

    def set_subscriber_status(self, email: str, status: SubscriberStatus, now: datetime) -> bool:
        with self._tx() as conn:
            subscriber_id = conn.execute(select(t.subscribers.c.id).where(t.subscribers.c.email == email)).scalar()
        return subscriber_id is not None and self.set_status_by_id(subscriber_id, status, now)

    # -- digest issues and the send log -------------------------------------------------------

    def last_sent_issue(self) -> tuple[str, datetime, datetime] | None:
        """(id, cutoff, sent_at) of the newest sent issue."""
        d = t.digest_issues
        with self._tx() as conn:
            row = conn.execute(select(d).where(d.c.sent_at.is_not(None)).order_by(d.c.sent_at.desc()).limit(1)).first()
        return (row.id, row.cutoff, row.sent_at) if row else None

    def issue(self, issue_id: str) -> tuple[str, datetime, str, datetime, datetime | None] | None:
        """(id, cutoff, note, created_at, sent_at) of one issue."""
        d = t.digest_issues
        with self._tx() as conn:
            row = conn.execute(select(d).where(d.c.id == issue_id)).first()
        return (row.id, row.cutoff, row.note, row.created_at, row.sent_at) if row else None

    def previous_cutoff(self, issue_id: str) -> datetime | None:
        """The cutoff of the newest sent issue before this one: where this one's publications begin."""
        d = t.digest_issues
        with self._tx() as conn:
            mine = select(d.c.cutoff).where(d.c.id == issue_id).scalar_subquery()
            return conn.execute(select(func.max(d.c.cutoff)).where(d.c.sent_at.is_not(None), d.c.cutoff < mine, d.c.id != issue_id)).scalar_one()

    def open_issue(self) -> tuple[str, datetime, str] | None:
        """(id, cutoff, note) of an issue that was started and not finished: it is resumed, not re-selected."""
        d = t.digest_issues
        with self._tx() as conn:
            row = conn.execute(select(d).where(d.c.sent_at.is_(None)).order_by(d.c.created_at).limit(1)).first()
        return (row.id, row.cutoff, row.note) if row else None

    def issue_ids(self) -> list[str]:
        with self._tx() as conn:
            return list(conn.execute(select(t.digest_issues.c.id)).scalars())

    def sent_issues(self) -> list[tuple[str, datetime, str, int]]:
        """(id, sent_at, note, publications) of every sent issue, newest first: the archive."""
        d = t.digest_issues
        with self._tx() as conn:
            rows = conn.execute(select(d).where(d.c.sent_at.is_not(None)).order_by(d.c.sent_at.desc(), d.c.id.desc())).all()
        return [(r.id, r.sent_at, r.note, r.publications) for r in rows]

    def start_issue(self, issue_id: str, cutoff: datetime, now: datetime, *, note: str = "", publications: int = 0) -> datetime:
        """Record the issue (idempotent); returns its cutoff, the stored one if it already existed.

        The editor's pending note (see :meth:`set_setting`) goes with the first issue that starts after it.
        """
        d = t.digest_issues
        try:
            with self._tx() as conn:
                conn.execute(insert(d).values(id=issue_id, created_at=now, cutoff=cutoff, note=note, publications=publications))
                conn.execute(delete(t.settings).where(t.settings.c.key == "digest.next_note"))
            return cutoff
        except IntegrityError:
            with self._tx() as conn:
                return conn.execute(select(d.c.cutoff).where(d.c.id == issue_id)).scalar_one()

    def setting(self, key: str) -> str | None:
        with self._tx() as conn:
            return conn.execute(select(t.settings.c.value).where(t.settings.c.key == key)).scalar()

    def message_id_key(self) -> bytes:
        """This store's own random key for the digest's Message-IDs (see ``delivery.message.MessageIds``): made the
        first time it is asked for, then the same for every process that opens the store. Two processes asking at once
        both try to insert; the loser reads the winner's."""
        key = "delivery.message_id_key"
        if (value := self.setting(key)) is None:
            try:
                with self._tx() as conn:
                    conn.execute(insert(t.settings).values(key=key, value=secrets.token_hex(32)))
            except IntegrityError:
                pass
            value = self.setting(key)
        return bytes.fromhex(value or "")

    def set_setting(self, key: str, value: str | None) -> None:
        """Set, or with None remove, a named value."""
        with self._tx() as conn:
            conn.execute(delete(t.settings).where(t.settings.c.key == key))
            if value is not None:
                conn.execute(insert(t.settings).values(key=key, value=value))

    def finish_issue(self, issue_id: str, now: datetime) -> None:
        with self._tx() as conn:
            conn.execute(update(t.digest_issues).where(t.digest_issues.c.id == issue_id).values(sent_at=now))

    def send_counts(self, issue_id: str) -> dict[str, int]:
        sl = t.send_log
        with self._tx() as conn:
            rows = conn.execute(select(sl.c.status, func.count()).where(sl.c.issue_id == issue_id).group_by(sl.c.status)).all()
        return {status: n for status, n in rows}


_NEWEST: dict[str, Any] = {}


def _newest_statement(topic: str | None, content_type: str | None, limit: int) -> tuple[Any, dict[str, Any]]:
    """The newest-first (id, content hash) statement of everything, a topic or a content type, built once per process,
    with its parameters; (None, {}) for a mix (both a topic and a type), which no feed asks for."""
    if topic is not None and content_type is not None:
        return None, {}
    kind = "topic" if topic is not None else "type" if content_type is not None else "all"
    if kind not in _NEWEST:
        p, pt = t.publications, t.publication_topics
        if kind == "topic":  # straight off ix_publication_topics_listing
            q = select(pt.c.publication_id).where(pt.c.topic_slug == sa.bindparam("topic"))
            q = q.order_by(pt.c.listed_at.desc(), pt.c.publication_id.desc())
        else:  # off ix_publications_type_listing, or ix_publications_listed_at
            q = select(p.c.id).order_by(p.c.listed_at.desc(), p.c.id.desc())
            if kind == "type":
                q = q.where(p.c.content_type == sa.bindparam("content_type"))
        ids = q.limit(sa.bindparam("limit")).subquery()
        _NEWEST[kind] = select(p.c.id, p.c.content_hash).join(ids, ids.c[0] == p.c.id).order_by(p.c.listed_at.desc(), p.c.id.desc())
    params = {"topic": topic} if kind == "topic" else {"content_type": content_type} if kind == "type" else {}
    return _NEWEST[kind], {**params, "limit": limit}


def _publication(r: Any, topics: tuple[str, ...]) -> Publication:
    image = Image(r.image_url, r.image_alt or "", r.image_caption or "", r.image_credit or "") if r.image_url else None
    return Publication(
        id=r.id, url=r.url, title=r.title, summary=r.summary, content_type=r.content_type,
        published_at=r.published_at, updated_at=r.updated_at, topics=topics, authors=tuple(r.authors),
        image=image, featured=bool(r.featured), featured_rank=r.featured_rank, body_html=r.body_html,
        source=r.source, first_seen_at=r.first_seen_at,
    )
