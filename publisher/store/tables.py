"""The schema, in SQLAlchemy Core. Alembic migrations under migrations/ create it."""

from __future__ import annotations

from datetime import datetime, timezone

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    TypeDecorator,
    text,
)


class UTCDateTime(TypeDecorator[datetime]):
    """Aware datetimes in, aware UTC datetimes out, on SQLite (which keeps no zone) and PostgreSQL alike."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: object) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"refusing to store naive datetime {value.isoformat()}")
        return value.astimezone(timezone.utc)

    def process_result_value(self, value: datetime | None, dialect: object) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value.astimezone(timezone.utc)


metadata = MetaData(
    naming_convention={
        "ix": "ix_%(column_0_label)s",
        "uq": "uq_%(table_name)s_%(column_0_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)

topics = Table(
    "topics",
    metadata,
    Column("slug", String(200), primary_key=True),
    Column("name", Text, nullable=False),
    Column("description", Text, nullable=False, default=""),
)

publications = Table(
    "publications",
    metadata,
    Column("id", String(200), primary_key=True),
    Column("url", Text, nullable=False),
    Column("title", Text, nullable=False),
    Column("summary", Text, nullable=False, default=""),
    Column("body_html", Text, nullable=False, default=""),
    Column("content_type", String(100), nullable=False),
    Column("authors", JSON, nullable=False),
    Column("published_at", UTCDateTime, index=True),  # NULL: the source gave no date
    Column("updated_at", UTCDateTime),
    Column("image_url", Text),
    Column("image_alt", Text),
    Column("image_caption", Text),
    Column("image_credit", Text),
    Column("featured", Boolean, nullable=False, default=False),
    Column("featured_rank", Integer),
    Column("source", String(200), nullable=False),
    Column("content_hash", String(64), nullable=False),
    Column("first_seen_at", UTCDateTime, nullable=False, index=True),
    # The listing order: published_at, or first_seen_at when the source gave no date. Kept by the store.
    Column("listed_at", UTCDateTime, nullable=False, index=True),
    Index("ix_publications_type_listing", "content_type", "listed_at", "id"),
)

publication_topics = Table(
    "publication_topics",
    metadata,
    Column("publication_id", String(200), ForeignKey("publications.id", ondelete="CASCADE"), primary_key=True),
    Column("topic_slug", String(200), primary_key=True, index=True),
    # A copy of publications.listed_at, so a topic's newest items come straight off an index.
    Column("listed_at", UTCDateTime, nullable=False),
    Index("ix_publication_topics_listing", "topic_slug", "listed_at", "publication_id"),
)

subscribers = Table(
    "subscribers",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("email", String(320), nullable=False, unique=True),
    Column("status", String(20), nullable=False, index=True),
    Column("created_at", UTCDateTime, nullable=False),
    Column("updated_at", UTCDateTime, nullable=False),
    Column("confirmed_at", UTCDateTime),
    # The latest sign-up's random nonce, signed into its confirmation link: a new sign-up makes a new one, so an
    # older link no longer confirms. Kept after confirming, so that link (clicked twice) says "subscribed" again.
    Column("confirm_nonce", String(32)),
    # Soft bounces (mailbox full, or still deferred when the retries gave up) across issues: at
    # [subscribers].soft_bounce_limit the address is suppressed as bounced. A delivered issue resets it.
    Column("soft_bounces", Integer, nullable=False, server_default="0"),
    # The few who are not active, for "is this row's subscriber still active" without reading every subscriber.
    Index("ix_subscribers_inactive", "id", postgresql_where=text("status <> 'active'"), sqlite_where=text("status <> 'active'")),
)

subscriber_topics = Table(
    "subscriber_topics",
    metadata,
    Column("subscriber_id", Integer, ForeignKey("subscribers.id", ondelete="CASCADE"), primary_key=True),
    Column("topic_slug", String(200), primary_key=True),
)

digest_issues = Table(
    "digest_issues",
    metadata,
    Column("id", String(100), primary_key=True),
    Column("created_at", UTCDateTime, nullable=False),
    # Publications first seen up to this instant belong to this issue or an earlier one.
    Column("cutoff", UTCDateTime, nullable=False),
    Column("sent_at", UTCDateTime),
    Column("note", Text, nullable=False, server_default=""),  # the editor's note this issue went out with
    Column("publications", Integer, nullable=False, server_default="0"),  # how many, for the archive
)

# Small named values the operator sets from the CLI, e.g. the editor's note for the next issue.
settings = Table(
    "settings",
    metadata,
    Column("key", String(100), primary_key=True),
    Column("value", Text, nullable=False),
)

send_log = Table(
    "send_log",
    metadata,
    Column("issue_id", String(100), ForeignKey("digest_issues.id"), primary_key=True),
    Column("subscriber_id", Integer, ForeignKey("subscribers.id", ondelete="CASCADE"), primary_key=True),
    Column("status", String(20), nullable=False),  # queued / sent / deferred / failed
    Column("message_id", Text, nullable=False),
    Column("updated_at", UTCDateTime, nullable=False),
    Column("error", Text),
    Column("attempts", Integer, nullable=False, server_default="0"),
    Column("claimed_by", String(64)),  # the send run holding a queued row
    # queued / sent / deferred / failed / undeliverable (still deferred after [delivery].give_up_after)
    Column("next_attempt_at", UTCDateTime),  # a deferred row is retried by the service from then on
    Column("kind", String(10)),  # why the last try did not deliver: hard / soft / sender (see delivery.classify)
    Column("deferrals", Integer, nullable=False, server_default="0"),  # how many times deferred: the retry backoff
    Column("first_tried_at", UTCDateTime),  # when the row was made: give_up_after counts from it (NULL: the issue's start)
    Index("ix_send_log_issue_status", "issue_id", "status"),
)

# Each `digest send` is a run. Its process holds a lock that dies with it (a PostgreSQL session advisory lock,
# or an flock on a file beside the SQLite store): a queued row whose run's lock is free is taken over at once.
send_runs = Table(
    "send_runs",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("issue_id", String(100), nullable=False),
    Column("started_at", UTCDateTime, nullable=False),
    Column("heartbeat_at", UTCDateTime, nullable=False),
    Column("finished_at", UTCDateTime),
    Column("holder", String(200)),  # host:pid, for `publisher status`
)

# Rendered feed entries, so a new process does not re-render what an earlier one did. A fragment is
# valid while its fingerprint (publication content, topic names, site, renderer code) matches.
feed_fragments = Table(
    "feed_fragments",
    metadata,
    Column("publication_id", String(200), ForeignKey("publications.id", ondelete="CASCADE"), primary_key=True),
    Column("format", String(10), primary_key=True),
    Column("fingerprint", String(64), nullable=False),
    Column("data", LargeBinary, nullable=False),
)

# Addresses erased on request (`subscribers forget`): only a hash stays, so they are never mailed or imported again.
suppressions = Table(
    "suppressions",
    metadata,
    Column("email_hash", String(64), primary_key=True),
    Column("reason", String(20), nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
)

# The single running scheduler: whoever holds an unexpired lease runs the jobs; another `publisher run` waits.
scheduler_lease = Table(
    "scheduler_lease",
    metadata,
    Column("name", String(50), primary_key=True),
    Column("holder", String(100), nullable=False),
    Column("expires_at", UTCDateTime, nullable=False),
)

# What each source last did: its HTTP validators (conditional GET) and its health, for `publisher status`.
source_state = Table(
    "source_state",
    metadata,
    Column("name", String(200), primary_key=True),
    Column("state", Text),  # JSON: HTTP validators (ETag, Last-Modified) and the ids the source has given
    Column("last_success_at", UTCDateTime),
    Column("last_error_at", UTCDateTime),
    Column("last_error", Text),
)

# Each content file a files source last read: its stat (to skip reading it while that stays the same), the hash
# of its bytes (to skip parsing it when only its stat moved: a touch, a checkout), what it gave the store and
# what that depended on. Only files that were ingested have a row (kind "draft": a file kept out by draft = true); a
# file that fails later keeps the row of what it last gave, and is read again until it is fixed (deleted, it withdraws that).
content_files = Table(
    "content_files",
    metadata,
    Column("source", String(200), primary_key=True),
    Column("path", Text, primary_key=True),  # relative to the source's folder, with "/"
    Column("kind", String(20), nullable=False),  # publication / topic
    Column("item_id", String(200), nullable=False),  # the publication's id or the topic's slug
    Column("item_hash", String(64), nullable=False),  # what the store held for it then (publications.content_hash)
    Column("size", BigInteger, nullable=False),
    Column("mtime_ns", BigInteger, nullable=False),
    Column("ctime_ns", BigInteger, nullable=False),
    Column("file_id", String(60), nullable=False),  # "device:inode", as text: an inode may not fit a signed BIGINT
    Column("read_ns", BigInteger, nullable=False),  # when it was read: a stat within 2 s of that is not trusted
    Column("file_hash", String(64), nullable=False),  # sha256 of the bytes read
    Column("settings", String(64), nullable=False),  # fingerprint of what parsing depends on (base URL, time zone...)
    Column("image_src", Text),  # a local image it names, and where that was found ("" when missing)
    Column("image_rel", Text),
    Column("warnings", JSON(none_as_null=True)),  # what reading it warned about: repeated on each ingest that skips it
)

# Sign-ups from the web form, queued so the page answers at once, the same for every address; a background
# sender (the web app's thread, or `publisher run`) takes them in turn. The address is kept only until the
# request is done; a done row keeps its outcome for a day (see SignupMixin.prune_signups).
signup_requests = Table(
    "signup_requests",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("email", String(320)),  # NULL once done
    Column("topics", JSON, nullable=False),
    Column("status", String(20), nullable=False),  # queued / retry (waiting) ; sent / unchanged / capped / failed (done)
    Column("subscriber_id", Integer),  # set once the sign-up is applied: retries only resend
    Column("attempts", Integer, nullable=False, server_default="0"),
    Column("created_at", UTCDateTime, nullable=False),
    Column("next_attempt_at", UTCDateTime, nullable=False),
    Column("claimed_by", String(64)),
    Column("claimed_until", UTCDateTime),  # a sender that died lets go of its row when this passes
    Column("done_at", UTCDateTime),
    Column("error", Text),
    Index("ix_signup_requests_status_next", "status", "next_attempt_at"),
)

# Sliding-window limits shared by every process: a key ("net:203.0.113.0/24", "addr:<sha256>") has at most
# `limit` slots, each taken until it expires. Taking one is a single conditional UPDATE or INSERT, so two
# processes can never both take the last one.
rate_slots = Table(
    "rate_slots",
    metadata,
    Column("key", String(100), primary_key=True),
    Column("slot", Integer, primary_key=True),
    Column("expires_at", UTCDateTime, nullable=False, index=True),
)

# The fleet (engine = "celery"): each issue's variants, compiled once by the coordinator and read by every worker;
# the workers alive (each holds a lock that dies with it, as a send run does); and one shared rate for all of them.
issue_variants = Table(
    "issue_variants",
    metadata,
    Column("issue_id", String(100), primary_key=True),
    Column("topics", String(2000), primary_key=True),  # the topic selection, slugs joined by "," ("" = everything)
    Column("is_empty", Boolean, nullable=False),
    Column("payload", LargeBinary, nullable=False),  # JSON: the compiled MIME chunks and the API parts (no code, no pickle)
    Column("created_at", UTCDateTime, nullable=False),
)

workers = Table(
    "workers",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("holder", String(200), nullable=False),  # host:pid
    Column("started_at", UTCDateTime, nullable=False),
    Column("heartbeat_at", UTCDateTime, nullable=False),
    Column("stopped_at", UTCDateTime),
    Column("sent", BigInteger, nullable=False, server_default="0"),  # messages it delivered since it started
    Column("rate", Float, nullable=False, server_default="0"),  # messages a second over its last minute
)

# A generic cell rate algorithm: `tat` is the database-clock time (epoch seconds) at which the next message may go.
# Taking n slots is one row lock and one UPDATE, so every worker draws from the same rate.
rate_buckets = Table(
    "rate_buckets",
    metadata,
    Column("name", String(100), primary_key=True),
    Column("tat", Float, nullable=False),
)
