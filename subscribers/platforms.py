"""Imports from the platforms people leave: which export a CSV is, by its header row, and what each row means here.

Plain functions over plain data, no store and no I/O: ``detect(header) -> Layout`` and ``map_row(layout, row, topics)
-> ImportRow``. The import in ``subscribers.service`` reads the file, neutralises and validates each cell, and stores
what these say. Each layout follows the platform's documented columns (and its exporter's code where that is open
source). What each status becomes here:

- Mailchimp audience export ("Email Address", MEMBER_RATING, OPTIN_TIME, CONFIRM_TIME, LEID, EUID, TAGS...): the
  subscribed file -> active, consent at CONFIRM_TIME (else OPTIN_TIME), or pending when it has neither (no sign of an
  opt-in: a non-subscribed contact); the unsubscribed file (UNSUB_TIME...) -> unsubscribed; the cleaned file
  (CLEAN_TIME...: hard bounces) -> bounced.
- Substack subscriber export (email, active_subscription, expiry, email_disabled, created_at...): email_disabled
  false -> active (consent at created_at), true -> unsubscribed; an ``@deletion-request.substack.com`` placeholder
  is rejected (it is no one's address).
- listmonk subscribers export (uuid, email, name, attributes, status, created_at, updated_at): enabled -> active
  (created_at); disabled, blocklisted -> unsubscribed.
- Buttondown subscriber export (email, subscriber_type, creation_date, subscription_date, tags...): regular, premium,
  gifted, trialed, churning, churned, past_due, paused, upcoming, unpaid -> active (subscription_date, else
  creation_date); unactivated -> pending; unsubscribed, removed, blocked, disabled -> unsubscribed; undeliverable,
  spammy, malformed -> bounced; complained -> complained.
- Ghost members CSV (id, email, name, note, subscribed_to_emails, ..., created_at, deleted_at, labels, tiers):
  subscribed_to_emails true -> active (created_at); false, or a deleted_at -> unsubscribed.
- This publisher's own export, and any CSV with an ``email`` column: new people are pending, or active with
  --confirmed; our own export's unsubscribed, bounced and complained stay so (a restore never mails them). Their
  ``topics`` keep only topics the site has.

A status cell with any other value (an empty one included) rejects that row, with its line: a guess could mail
someone who left. Tags (Mailchimp TAGS, Buttondown tags, Ghost labels) become topics where they name a known topic by
its slug or its name, whatever the case, spaces, hyphens or underscores ("Security Cooperation" ->
security-cooperation); the others are reported once, never refused. Times without a zone (Mailchimp's) are UTC.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone

from publisher.errors import PublisherError
from publisher.models import SubscriberStatus, Topic

ACTIVE, PENDING = SubscriberStatus.ACTIVE, SubscriberStatus.PENDING
UNSUBSCRIBED, BOUNCED, COMPLAINED = SubscriberStatus.UNSUBSCRIBED, SubscriberStatus.BOUNCED, SubscriberStatus.COMPLAINED

PLAIN, OWN = "plain", "publisher"
MAILCHIMP, SUBSTACK, LISTMONK, BUTTONDOWN, GHOST = "mailchimp", "substack", "listmonk", "buttondown", "ghost"

# Columns only Mailchimp's audience export has (every file of it: subscribed, unsubscribed, cleaned).
_MAILCHIMP_MARKS = {"member_rating", "optin_time", "confirm_time", "leid", "euid"}
_SUBSTACK_MARKS = {"active_subscription", "expiry", "prefer_digests", "stripe_connected_customer_id"}
_OWN_EXPORT = {"email", "status", "topics", "created_at", "confirmed_at"}

# Buttondown's subscriber types (its API's SubscriberType, and the ones retired in 2025: spammy, malformed, disabled).
_BUTTONDOWN = {
    **dict.fromkeys(("regular", "premium", "gifted", "trialed", "churning", "churned", "past_due", "paused", "upcoming",
                     "unpaid"), ACTIVE),
    "unactivated": PENDING,
    **dict.fromkeys(("unsubscribed", "removed", "blocked", "disabled"), UNSUBSCRIBED),
    **dict.fromkeys(("undeliverable", "spammy", "malformed"), BOUNCED),
    "complained": COMPLAINED,
}
_LISTMONK = {"enabled": ACTIVE, "disabled": UNSUBSCRIBED, "blocklisted": UNSUBSCRIBED}
_TRUE, _FALSE = {"true", "t", "yes", "y", "1"}, {"false", "f", "no", "n", "0"}
# listmonk writes times with Go's time.String(): "2024-03-13 00:03:09.183465 +0000 UTC".
_GO_TIME = re.compile(r"(\d{4}-\d{2}-\d{2})[ T](\d{2}:\d{2}:\d{2}(?:\.\d+)?) ?([+-]\d{2}):?(\d{2})(?: [A-Za-z_/+-]+)?")

EXPECTED = (  # what the error for an unknown layout lists
    ("a plain CSV", "email, and optionally topics (slugs separated by ';' or ',')"),
    ("a Mailchimp audience export (its subscribed, unsubscribed or cleaned file)",
     "Email Address, First Name, Last Name, ..., MEMBER_RATING, OPTIN_TIME, CONFIRM_TIME, LEID, EUID, NOTES, TAGS"),
    ("a Substack subscriber export", "email, active_subscription, expiry, plan, email_disabled, created_at"),
    ("a listmonk subscribers export", "uuid, email, name, attributes, status, created_at, updated_at"),
    ("a Buttondown subscriber export", "email, subscriber_type, creation_date, subscription_date, tags, notes, metadata"),
    ("a Ghost members export", "id, email, name, note, subscribed_to_emails, complimentary_plan, stripe_customer_id, created_at, "
                               "deleted_at, labels, tiers"),
)


class UnknownLayout(PublisherError):
    """The header row is no layout the import knows: no column to take the addresses from."""

    exit_code = 2


class RowRejected(ValueError):
    """This row cannot be imported (its status says something this import does not know); the message says why."""


@dataclass(frozen=True)
class Layout:
    platform: str  # PLAIN, OWN, MAILCHIMP...
    label: str  # the summary's name for it: "Mailchimp audience export (unsubscribed)"
    email_column: str
    variant: str = ""  # Mailchimp: "subscribed", "unsubscribed" or "cleaned"
    has_status: bool = False  # the file says each person's status (so --confirmed does not apply)
    has_tags: bool = False
    notes: tuple[str, ...] = ()  # what the format cannot tell, said once in the summary
    pending: str = ""  # who this format's pending people are, for the summary


@dataclass(frozen=True)
class ImportRow:
    email: str  # as the file has it; the import validates and folds it
    status: SubscriberStatus | None  # None: the file does not say (a plain list), --confirmed decides
    consent_at: datetime | None = None  # when they opted in on the old platform (active ones), UTC
    topics: tuple[str, ...] = ()  # slugs: from a plain file's `topics` as written (checked by the import), or matched tags
    unmatched_tags: tuple[str, ...] = ()
    unreadable_time: bool = False  # the opt-in time was there but is no date: the import's time is kept instead


def column_key(name: str) -> str:
    """A header cell as layouts name it: "Email Address" -> "email_address", " MEMBER_RATING" -> "member_rating"."""
    return re.sub(r"[\s-]+", "_", name.lstrip("\ufeff").strip().lower())


def detect(header: Sequence[str]) -> Layout:
    """The layout of a CSV with this header row (its cells as the file has them). Raises UnknownLayout."""
    keys = {column_key(cell) for cell in header}
    email = "email_address" if "email_address" in keys else "email"
    if email in keys and len(keys & _MAILCHIMP_MARKS) >= 2:
        variant = "cleaned" if "clean_time" in keys else "unsubscribed" if "unsub_time" in keys else "subscribed"
        return Layout(MAILCHIMP, f"Mailchimp audience export ({variant})", email, variant, has_status=True, has_tags="tags" in keys,
                      pending="subscribed contacts with neither OPTIN_TIME nor CONFIRM_TIME, so no sign that they opted in")
    if "email" in keys and "subscribed_to_emails" in keys:
        return Layout(GHOST, "Ghost members export", "email", has_status=True, has_tags="labels" in keys)
    if email in keys and "subscriber_type" in keys:
        return Layout(BUTTONDOWN, "Buttondown subscriber export", email, has_status=True, has_tags="tags" in keys,
                      pending="'unactivated' ones, who never confirmed their sign-up")
    if "email" in keys and "email_disabled" in keys and keys & _SUBSTACK_MARKS:
        return Layout(SUBSTACK, "Substack subscriber export", "email", has_status=True)
    if {"uuid", "email", "attributes", "status"} <= keys:
        return Layout(LISTMONK, "listmonk subscribers export", "email", has_status=True, notes=(
            "listmonk's export has no list subscriptions: someone who unsubscribed from a list without being blocklisted "
            "is 'enabled' in it and was imported as active; check them against the list's unsubscribed view",))
    if _OWN_EXPORT <= keys:
        return Layout(OWN, "publisher subscribers export", "email", notes=(
            "who it says unsubscribed, bounced or complained is stored so and never mailed; everyone else new is pending, "
            "or active with --confirmed",))
    if "email" in keys:
        return Layout(PLAIN, "CSV with an email column", "email")
    expected = "".join(f"\n  - {name}: {columns}" for name, columns in EXPECTED)
    raise UnknownLayout(f"the CSV has no 'email' column and is no export this import recognises (columns found: {_columns(header)}). "
                        f"Expected one of:{expected}")


def topic_index(topics: Iterable[Topic]) -> dict[str, str]:
    """Each known topic under its slug and its name, as :func:`tag_key` makes them -> its slug."""
    index: dict[str, str] = {}
    for topic in topics:
        for text in (topic.name, topic.slug):  # the slug last: it wins over another topic's name
            if key := tag_key(text):
                index[key] = topic.slug
    return index


def tag_key(text: str) -> str:
    """Case, spaces, hyphens and underscores do not count: "Security  Cooperation" and "security_cooperation" are one."""
    return re.sub(r"[\W_]+", "-", text.casefold()).strip("-")


def map_row(layout: Layout, row: Mapping[str, str], topics: Mapping[str, str]) -> ImportRow:
    """What one row (cells by column key, already stripped and neutralised) is here. Raises RowRejected."""
    email = row.get(layout.email_column, "")
    if layout.platform in (PLAIN, OWN):
        cell = row.get("topics", "")
        named = [t.strip() for t in cell.replace(",", ";").split(";") if t.strip()]
        # Only topics the site has (by slug or name, as `subscribers add --topic` insists): a misspelt one would
        # leave the person with a digest of nothing; the others are listed once in the summary.
        matched, unmatched = match_tags(named, topics) if topics else ((), tuple(named))
        status = None
        if layout.platform == OWN:  # our own export: who left stays left (a restore must never mail them again)
            said = row.get("status", "").strip().lower()
            if said in ("unsubscribed", "bounced", "complained"):
                status = SubscriberStatus(said)
        return ImportRow(email, status, topics=matched, unmatched_tags=unmatched)
    status, when_cells, tags = _STATUS[layout.platform](layout, row)
    consent, unreadable = None, False
    for cell in when_cells if status is ACTIVE else ():
        try:
            consent = parse_time(cell)
        except ValueError:
            unreadable = True
            continue
        if consent is not None:
            break
    unreadable = unreadable and consent is None
    if status is ACTIVE and layout.platform == MAILCHIMP and consent is None:
        status = PENDING  # its only sign of consent is an opt-in time, and the cell holds none that is a date
    matched, unmatched = match_tags(tags, topics)
    return ImportRow(email, status, consent, matched, unmatched, unreadable)


def match_tags(tags: Iterable[str], topics: Mapping[str, str]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(topic slugs, tags that name no topic), each once, in the file's order."""
    matched: dict[str, None] = {}
    unmatched: dict[str, None] = {}
    for tag in tags:
        slug = topics.get(tag_key(tag))
        if slug is not None:
            matched[slug] = None
        else:
            unmatched[tag] = None
    return tuple(matched), tuple(unmatched)


def parse_time(text: str) -> datetime | None:
    """An export's time, in UTC; None for an empty cell. ISO 8601 (Substack, Ghost, Buttondown), Mailchimp's
    "2018-02-12 10:54:27" (no zone: UTC), Go's time.String() (listmonk). Raises ValueError for anything else."""
    text = text.strip()
    if not text:
        return None
    if m := _GO_TIME.fullmatch(text):
        text = f"{m[1]}T{m[2]}{m[3]}:{m[4]}"
    when = datetime.fromisoformat(text)
    return (when if when.tzinfo else when.replace(tzinfo=timezone.utc)).astimezone(timezone.utc)


# -- each platform: (status, cells that may hold the consent time, in order of preference, tags) ------------------------

_Mapped = tuple[SubscriberStatus, tuple[str, ...], list[str]]


def _mailchimp(layout: Layout, row: Mapping[str, str]) -> _Mapped:
    times = (row.get("confirm_time", ""), row.get("optin_time", ""))
    if layout.variant == "cleaned":
        status = BOUNCED
    elif layout.variant == "unsubscribed":
        status = UNSUBSCRIBED
    else:  # a subscribed contact with neither time shows no opt-in (a non-subscribed or transactional contact)
        status = ACTIVE if any(times) else PENDING
    return status, times, mailchimp_tags(row.get("tags", ""))


def mailchimp_tags(cell: str) -> list[str]:
    """Mailchimp's TAGS cell: each tag in double quotes, separated by commas (`"tag one","tag two"`); a bare
    comma-separated list is read the same way."""
    if not cell.strip():
        return []
    try:
        tags = next(csv.reader([cell], skipinitialspace=True), [])
    except csv.Error:
        tags = cell.replace('"', "").split(",")
    return [t.strip() for t in tags if t.strip()]


def _substack(layout: Layout, row: Mapping[str, str]) -> _Mapped:
    if row.get("email", "").lower().endswith("@deletion-request.substack.com"):
        raise RowRejected("a Substack deletion request (the person asked to be deleted), no one's address; skipped")
    disabled = _boolean(row, "email_disabled")
    return (UNSUBSCRIBED if disabled else ACTIVE), (row.get("created_at", ""),), []


def _listmonk(layout: Layout, row: Mapping[str, str]) -> _Mapped:
    return _lookup(row, "status", _LISTMONK), (row.get("created_at", ""),), []


def _buttondown(layout: Layout, row: Mapping[str, str]) -> _Mapped:
    status = _lookup(row, "subscriber_type", _BUTTONDOWN)
    tags = [t.strip() for t in row.get("tags", "").split(";") if t.strip()]
    return status, (row.get("subscription_date", ""), row.get("creation_date", "")), tags


def _ghost(layout: Layout, row: Mapping[str, str]) -> _Mapped:
    subscribed = _boolean(row, "subscribed_to_emails")
    status = UNSUBSCRIBED if (row.get("deleted_at") or not subscribed) else ACTIVE
    return status, (row.get("created_at", ""),), [t.strip() for t in row.get("labels", "").split(",") if t.strip()]


_STATUS = {MAILCHIMP: _mailchimp, SUBSTACK: _substack, LISTMONK: _listmonk, BUTTONDOWN: _buttondown, GHOST: _ghost}


def _lookup(row: Mapping[str, str], column: str, statuses: Mapping[str, SubscriberStatus]) -> SubscriberStatus:
    value = row.get(column, "")
    status = statuses.get(value.strip().lower())
    if status is None:
        raise RowRejected(f"{column} {_shown(value)} is not one this import knows ({', '.join(sorted(statuses))}); "
                          "the row is skipped rather than guessed")
    return status


def _boolean(row: Mapping[str, str], column: str) -> bool:
    value = row.get(column, "").strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise RowRejected(f"{column} {_shown(row.get(column, ''))} is neither true nor false; the row is skipped rather than guessed")


def _shown(value: str, limit: int = 60) -> str:
    text = value if len(value) <= limit else value[: limit - 3] + "..."
    return repr(text)  # quotes, and escapes for control characters: a cell never writes to the terminal as itself


def shown_tag(tag: str, limit: int = 60) -> str:
    """A tag as the summary prints it: control characters escaped, at most ``limit`` characters."""
    text = tag if len(tag) <= limit else tag[: limit - 3] + "..."
    return "".join(ch if ch.isprintable() else repr(ch)[1:-1] for ch in text)


def _columns(header: Sequence[str], limit: int = 20) -> str:
    if not header:
        return "none"
    cells = [shown_tag(h.lstrip("\ufeff").strip(), 40) or "''" for h in header[:limit]]
    more = f" and {len(header) - limit} more" if len(header) > limit else ""
    return ", ".join(cells) + more
