"""The audience: subscribe (double opt-in), confirm, unsubscribe, preferences, import, export, erase.

Addresses are validated and folded before anything is stored. Suppressed addresses (unsubscribed,
bounced, complained, or erased on request) are never mailed again, and no import brings them back.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, BinaryIO

from email_validator import EmailNotValidError, validate_email

from publisher.errors import PublisherError
from publisher.models import Subscriber, SubscriberStatus, Topic

from . import platforms
from .ports import AudienceStore as Store
from .tokens import ConfirmClaim, new_nonce

EXPORT_FIELDS = ("email", "status", "topics", "created_at", "confirmed_at")
MAX_ADDRESS = 254  # RFC 5321's path limit, less the brackets
MAX_LINE = 1024 * 1024  # bytes: an import line longer than this is no subscriber row; it is skipped unread
TOPIC_SLUG = re.compile(r"[a-z0-9-]{1,200}")
# OWASP, "CSV Injection": spreadsheets run a cell that starts with = + - @, a tab or a carriage return as a formula.
# Export prefixes such a cell with a single quote (read as text) and quotes every cell (so no separator, ',' or
# the ';' some locales use, can start a new cell inside one). Cells that already start with quotes before such a
# character get one more, so that import can take exactly one off again: the round trip is exact.
_FORMULA = re.compile(r"'*[=+\-@\t\r]")
_NEUTRALISED = re.compile(r"'+[=+\-@\t\r]")


class InvalidAddress(PublisherError):
    exit_code = 2


def normalise_email(raw: str, *, check_deliverability: bool = False) -> str:
    """Validated, ASCII (international domains in their xn-- form), and case-folded: one person, one row."""
    if not isinstance(raw, str) or any(ch in raw for ch in "\r\n\0"):
        raise InvalidAddress("an address is one line: it contains a line break or NUL.")
    text = raw.strip()
    if len(text) > MAX_ADDRESS:
        raise InvalidAddress(f"an address has at most {MAX_ADDRESS} characters; this one has {len(text)}.")
    try:
        info = validate_email(text, check_deliverability=check_deliverability, allow_smtputf8=False)
    except EmailNotValidError as exc:
        shown = text if len(text) <= 80 else text[:77] + "..."
        raise InvalidAddress(f"{shown!r} is not a valid email address: {exc}") from None
    return (info.ascii_email or info.normalized).lower()


def email_hash(address: str) -> str:
    return hashlib.sha256(address.encode("utf-8")).hexdigest()


# Mail providers that ignore dots in the local part: every spelling reaches one inbox.
DOTLESS_DOMAINS = {"gmail.com": "gmail.com", "googlemail.com": "gmail.com"}


def mailbox_of(address: str) -> str:
    """The inbox an address most likely reaches: ``+tag`` dropped (subaddressing, RFC 5233, which Gmail, Outlook,
    Fastmail, iCloud and most servers honour) and, at Gmail, the dots. Not a new identity for anyone: only what a
    limit on mail to one person should count, so that ``victim+1@``, ``victim+2@``... are one inbox."""
    local, _, domain = address.lower().rpartition("@")
    local = local.split("+", 1)[0] or local
    if domain in DOTLESS_DOMAINS:
        domain, local = DOTLESS_DOMAINS[domain], local.replace(".", "")
    return f"{local}@{domain}"


def add_subscriber(store: Store, email: str, now: datetime, *, topics: Sequence[str] = (), confirmed: bool = False) -> tuple[Subscriber, bool]:
    """Pending (double opt-in) unless ``confirmed``; an existing address is returned unchanged.

    An erased address (see :func:`forget`) is refused: it stays suppressed.
    """
    address = normalise_email(email)
    if store.is_suppressed_hash(email_hash(address)):
        raise InvalidAddress(f"{address} asked to be forgotten and is suppressed; it cannot be added again.")
    status = SubscriberStatus.ACTIVE if confirmed else SubscriberStatus.PENDING
    return store.add_subscriber(address, status, topics, now)


@dataclass(frozen=True)
class SubscribeResult:
    subscriber: Subscriber | None
    send_confirmation: bool  # the caller mails a confirmation link; the page says the same whatever happened
    outcome: str = ""  # "confirm" (a link goes out), "active" (no double opt-in), "unchanged", "suppressed" or "capped"


def subscribe(store: Store, email: str, topics: Sequence[str], now: datetime, *, double_opt_in: bool = True,
              check_deliverability: bool = False, may_send: Callable[[str], bool] | None = None,
              asked_at: datetime | None = None) -> SubscribeResult:
    """A sign-up (from the web form's queue). The answer a visitor sees must not tell whether the address was known.

    New or unsubscribed → pending with a fresh nonce, and a confirmation goes out (an address that left must confirm
    again). Pending → a new nonce (older links stop working) and the confirmation goes out again. Active → nothing
    changes (nobody can alter someone else's topics by signing them up). Bounced, complained or erased → nothing.

    ``may_send(address)`` is asked just before a confirmation would go out (the per-address daily cap); when it says
    no, nothing at all changes: not the topics, not the nonce, so the link already sent keeps working.
    """
    address = normalise_email(email, check_deliverability=check_deliverability)
    if store.is_suppressed_hash(email_hash(address)):
        return SubscribeResult(None, False, "suppressed")
    existing = store.subscriber(address)
    if existing is None and not double_opt_in:
        sid = store.open_signup(address, topics, "", now, status=SubscriberStatus.ACTIVE)
        if sid is not None:
            return SubscribeResult(store.subscriber_by_id(sid), False, "active")
        existing = store.subscriber(address)  # someone else added it a moment ago
    if existing is not None and existing.status not in (SubscriberStatus.PENDING, SubscriberStatus.UNSUBSCRIBED):
        return SubscribeResult(existing, False, "unchanged")
    if existing is not None and existing.status is SubscriberStatus.UNSUBSCRIBED and asked_at is not None and existing.updated_at >= asked_at:
        return SubscribeResult(existing, False, "unchanged")  # they left after this request was queued: it is not theirs any more
    if may_send is not None and not may_send(address):
        return SubscribeResult(existing, False, "capped")
    nonce = new_nonce()
    sid = store.open_signup(address, topics, nonce, now, status=SubscriberStatus.PENDING) if existing is None else None
    if sid is None:
        current = existing or store.subscriber(address)
        if current is None or not store.reopen_signup(current.id, topics, nonce, now):
            return SubscribeResult(current, False, "unchanged")
        sid = current.id
    return SubscribeResult(store.subscriber_by_id(sid), True, "confirm")


def confirmation_holds(store: Store, claim: ConfirmClaim) -> bool:
    """Whether this link would confirm (or has confirmed) its sign-up: asked, changing nothing, before the button is shown."""
    state = store.signup_state(claim.subscriber_id)
    return (state is not None and claim.is_for(state[0]) and state[2] == claim.nonce
            and state[1] in (SubscriberStatus.PENDING, SubscriberStatus.ACTIVE))


def confirm(store: Store, claim: ConfirmClaim, now: datetime) -> Subscriber | None:
    """Pending → active, for the latest sign-up's link only (see subscribers.tokens). None: the link does not hold.

    The same link again, once active, answers with the subscriber and changes nothing (a double click). A link of an
    earlier sign-up, or one for an address no longer on file, confirms nothing.
    """
    state = store.signup_state(claim.subscriber_id)
    if state is None or not claim.is_for(state[0]):
        return None
    _, status, nonce = state
    if status is SubscriberStatus.ACTIVE and nonce == claim.nonce:
        return store.subscriber_by_id(claim.subscriber_id)
    if status is SubscriberStatus.PENDING and store.confirm_signup(claim.subscriber_id, claim.nonce, now):
        return store.subscriber_by_id(claim.subscriber_id)
    return None


def unsubscribe(store: Store, subscriber_id: int, now: datetime) -> bool:
    """Idempotent: True when the subscriber exists (already unsubscribed included)."""
    sub = store.subscriber_by_id(subscriber_id)
    if sub is None:
        return False
    if sub.status in (SubscriberStatus.ACTIVE, SubscriberStatus.PENDING):
        store.set_status_by_id(sub.id, SubscriberStatus.UNSUBSCRIBED, now)
    return True


def set_preferences(store: Store, subscriber_id: int, topics: Sequence[str], known_topics: Iterable[str], now: datetime) -> bool:
    """Only topics that exist are kept; none means everything."""
    known = set(known_topics)
    if store.subscriber_by_id(subscriber_id) is None:
        return False
    store.set_topics(subscriber_id, [t for t in topics if t in known], now)
    return True


def show(store: Store, email: str) -> dict[str, Any] | None:
    """One person's data, as JSON-ready values (the answer to a subject access request)."""
    sub = store.subscriber(normalise_email(email))
    if sub is None:
        return None
    return {"email": sub.email, "status": sub.status.value, "topics": list(sub.topics), "created_at": sub.created_at.isoformat(),
            "updated_at": sub.updated_at.isoformat(), "confirmed_at": sub.confirmed_at.isoformat() if sub.confirmed_at else None,
            "digests": store.send_history(sub.id)}


@dataclass(frozen=True)
class Erasure:
    found: bool  # the store had data about the person
    outbox_copies: int  # messages to them deleted from the local outbox


def forget(store: Store, email: str, now: datetime, *, outbox: Path | None = None) -> Erasure:
    """Erase a person: their row, topics, send log and sign-up requests go, and with ``outbox`` (the Maildir of [delivery].outbox_dir)
    every message there addressed to them; a hash of the address stays so they remain suppressed.

    The store goes first, so no send picks them up again while the outbox is combed.
    """
    from .outbox import remove_outbox_copies

    address = normalise_email(email)
    sub = store.subscriber(address)
    requests = store.erase(sub.id if sub else -1, email_hash(address), "forgotten", now, email=address)
    return Erasure(sub is not None or requests > 0, remove_outbox_copies(outbox, address) if outbox is not None else 0)


MAX_TAGS_KEPT = 1000  # distinct unmatched tags remembered for the summary (a hostile file could have one per row)


@dataclass
class ImportReport:
    added: int = 0
    existing: int = 0
    suppressed: int = 0  # erased addresses (see forget): never added back
    rejected: list[tuple[int, str]] = field(default_factory=list)  # (line number, reason), at most the first 1,000 kept
    rejected_count: int = 0
    layout: str = "CSV"  # the recognised format, as the summary names it (see subscribers.platforms)
    has_status: bool = False  # the file said each person's status, so --confirmed did not apply
    added_as: dict[str, int] = field(default_factory=dict)  # status -> how many were added with it
    now_suppressed: int = 0  # already here, active or pending, and the file says they left: now unsubscribed or bounced
    unmatched_tags: dict[str, None] = field(default_factory=dict)  # tags that name no topic, in the file's order
    more_tags: bool = False  # more distinct unmatched tags than MAX_TAGS_KEPT
    known_topics: int = 0
    unreadable_times: int = 0  # active rows whose opt-in time was no date: they have the import's time instead
    notes: list[str] = field(default_factory=list)
    pending_reason: str = ""  # why the format's pending people are pending

    @property
    def rows(self) -> int:
        """Every row of the file that was not blank: each one is added, known, suppressed or rejected."""
        return self.added + self.existing + self.suppressed + self.rejected_count

    def reject(self, line: int, reason: str) -> None:
        self.rejected_count += 1
        if len(self.rejected) < 1000:
            self.rejected.append((line, reason))

    def summary(self, *, confirmed: bool = False, shown_tags: int = 20) -> list[str]:
        """What the command prints: the format and the counts, then what a reader should know about this import."""
        lines = [f"{self.layout}: {self.rows} row{'' if self.rows == 1 else 's'}: {self.added} added, {self.existing} already known, "
                 f"{self.suppressed} suppressed, {self.rejected_count} rejected"]
        if self.has_status and self.added_as:
            never = sum(n for s, n in self.added_as.items() if SubscriberStatus(s).suppressed)
            counts = ", ".join(f"{n} {s}" for s, n in sorted(self.added_as.items(), key=lambda kv: _STATUS_ORDER.index(kv[0])))
            lines.append(f"  added as: {counts}" + (f" ({never} never mailed: they left the old platform)" if never else ""))
        if self.now_suppressed:
            lines.append(f"  {self.now_suppressed} already here and active or pending are now suppressed: the file says they left")
        if self.has_status and confirmed:
            lines.append("  --confirmed did not apply: the file says each person's status")
        if self.unreadable_times:
            lines.append(f"  {self.unreadable_times} opt-in time(s) were not dates: those people have the import's time as theirs")
        if self.has_status and self.added_as.get(SubscriberStatus.PENDING.value) and self.pending_reason:
            lines.append(f"  pending: {self.pending_reason}; they get nothing until they confirm a sign-up")
        if self.unmatched_tags:
            tags = list(self.unmatched_tags)
            more = len(tags) - shown_tags
            listed = ", ".join(platforms.shown_tag(t) for t in tags[:shown_tags])
            what = "topics not on this site (left out)" if not self.has_status else "tags with no topic"
            lines.append(f"  {what}: {listed}" + (f" and {more}{'+' if self.more_tags else ''} more" if more > 0 else ""))
            if not self.known_topics:
                lines.append("  no topics are known yet: run `publisher ingest` first (topics are files in content/topics/), "
                             "then import again")
        lines.extend(f"  note: {note}" for note in self.notes)
        return lines


_STATUS_ORDER = [s.value for s in (SubscriberStatus.ACTIVE, SubscriberStatus.PENDING, SubscriberStatus.UNSUBSCRIBED,
                                   SubscriberStatus.BOUNCED, SubscriberStatus.COMPLAINED)]


def import_csv(store: Store, fh: Iterable[str], now: datetime, *, confirmed: bool = False, batch: int = 1000,
               topics: Iterable[Topic] | None = None) -> ImportReport:
    """A plain CSV (an ``email`` column; ``topics``, separated by ';' or ',', optional), or the export of a platform
    people leave, recognised by its header row: see subscribers.platforms for each one and what its statuses become.

    Streams the file (memory stays flat for any size), adding in batches of ``batch`` rows. A bad row is reported with
    its line number and skipped; blank lines are ignored. A plain file's people are pending, or active with
    ``confirmed``; an export's say their own status (active with their opt-in time from the old platform, pending,
    or suppressed: unsubscribed, bounced, complained, never mailed). An address already known is left as it is,
    with one exception: the file says they left (a suppressed status), and then an active or pending one here is
    suppressed too. So an import never revives or activates anyone, and an erased address is not added back.
    Tags become topics where they name a known one (``topics``: the known topics; the store's by default).
    """
    report = ImportReport()
    reader = csv.DictReader(fh)
    try:
        header = reader.fieldnames or []
    except csv.Error as exc:
        raise InvalidAddress(f"the CSV's header row cannot be read ({exc}); "
                             "the first line must name the columns, e.g. 'email,topics'.") from None
    layout = platforms.detect(header)
    fields = [platforms.column_key(f) for f in header]
    report.layout, report.has_status, report.pending_reason = layout.label, layout.has_status, layout.pending
    report.notes = list(layout.notes)
    reader.fieldnames = fields
    index: dict[str, str] = {}
    if layout.has_tags or layout.platform in (platforms.PLAIN, platforms.OWN):  # tags, or a `topics` column
        index = platforms.topic_index(store.topics() if topics is None else topics)  # type: ignore[attr-defined]
        report.known_topics = len(set(index.values()))
    default = SubscriberStatus.ACTIVE if confirmed else SubscriberStatus.PENDING
    for chunk in _chunks(_rows(reader, report, layout, index), batch):
        unique: dict[str, platforms.ImportRow] = {}
        for line, address, row in chunk:  # duplicates within a batch are reported; across batches the store says "known"
            if address in unique:
                report.reject(line, f"{address} appears earlier in the file")
            else:
                unique[address] = row
        hashes = {address: email_hash(address) for address in unique}
        erased = store.suppressed_hashes(hashes.values())
        by_status: dict[SubscriberStatus, dict[str, platforms.ImportRow]] = {}
        for address, row in unique.items():
            if hashes[address] in erased:
                report.suppressed += 1
            else:
                by_status.setdefault(row.status or default, {})[address] = row
        for status, rows in by_status.items():
            consent = {a: min(r.consent_at, now) for a, r in rows.items() if r.consent_at is not None}
            added = store.add_subscribers([(a, r.topics) for a, r in rows.items()], status, now,
                                          confirmed_at=consent if status is SubscriberStatus.ACTIVE else None)
            report.added += added
            report.existing += len(rows) - added
            if added:
                report.added_as[status.value] = report.added_as.get(status.value, 0) + added
            if status.suppressed:  # known already, active or pending: the file says they left, so they are not mailed any more
                report.now_suppressed += store.suppress_subscribers(list(rows), status, now)  # type: ignore[attr-defined]
    return report


def import_csv_bytes(store: Store, fh: BinaryIO, now: datetime, *, confirmed: bool = False) -> ImportReport:
    """Like :func:`import_csv`, from bytes: UTF-8 (with or without a BOM). A line that is not UTF-8 (say, Latin-1
    from an old spreadsheet) is reported with its number and skipped; the rest is imported."""
    bad: list[tuple[int, str]] = []

    def lines() -> Iterator[str]:
        for number, raw in enumerate(_bounded_lines(fh), start=1):
            if raw is None:
                bad.append((number, f"longer than {MAX_LINE:,} bytes, so not a subscriber row (is it a CSV file?); skipped"))
                yield "\n"  # keeps the csv module's line numbers in step
                continue
            try:
                yield raw.decode("utf-8-sig" if number == 1 else "utf-8")
            except UnicodeDecodeError as exc:
                bad.append((number, f"not UTF-8 (byte {raw[exc.start]:#04x} at column {exc.start + 1}); save the file as UTF-8"))
                yield "\n"

    report = import_csv(store, lines(), now, confirmed=confirmed)
    for line, reason in bad:
        report.reject(line, reason)
    report.rejected.sort()
    return report


def _bounded_lines(fh: BinaryIO) -> Iterator[bytes | None]:
    """The file's lines, with None for one over MAX_LINE (read past in pieces, never held whole)."""
    while line := fh.readline(MAX_LINE + 1):
        if len(line) <= MAX_LINE or line.endswith(b"\n"):
            yield line if len(line) <= MAX_LINE else None
            continue
        while (rest := fh.readline(MAX_LINE)) and not rest.endswith(b"\n"):
            pass
        yield None


def _records(reader: csv.DictReader, report: ImportReport) -> Iterator[tuple[int, int, dict[str, Any]]]:
    """Each row with its first and last line (a quoted field can span lines). A row the csv module cannot read (a field
    over csv.field_size_limit(), a bare carriage return...) is one rejected row, reported with the lines it took;
    reading goes on after it."""
    lines_in, fields = reader.reader, list(reader.fieldnames or [])  # the plain reader: blank lines count here too
    last = lines_in.line_num
    while True:
        try:
            cells = next(lines_in)
        except StopIteration:
            return
        except csv.Error as exc:
            first, end = last + 1, lines_in.line_num
            lines = f"lines {first}-{end}" if end > first else f"line {first}"
            if "field larger than field limit" in str(exc):
                reason = (f"a field is longer than the CSV reader's limit of {csv.field_size_limit():,} characters ({lines}); "
                          "an unclosed quote makes the lines after it one field: check the quotes in that row")
            else:
                reason = f"not a readable CSV row ({exc}; {lines}); check its quotes and line breaks"
            report.reject(first, reason)
            last = end
            continue
        first, last = last + 1, lines_in.line_num
        if cells:  # a blank line is no row
            yield first, last, dict(zip(fields, cells))


def _rows(reader: csv.DictReader, report: ImportReport, layout: platforms.Layout,
          index: dict[str, str]) -> Iterator[tuple[int, str, platforms.ImportRow]]:
    """Each row that is someone: its line, its validated address and what the layout says of it; the rest rejected."""
    for line, end, cells in _records(reader, report):
        row = {k: _restore(v.strip()) for k, v in cells.items() if isinstance(v, str)}  # every cell neutralised, as export wrote it
        if not any(row.values()):
            continue  # a blank line
        spans = f" (this row runs over lines {line}-{end}: is a quote left open?)" if end > line else ""
        try:
            mapped = platforms.map_row(layout, row, index)
            address = normalise_email(mapped.email)
        except (platforms.RowRejected, InvalidAddress) as exc:
            report.reject(line, str(exc) + spans)
            continue
        wrong = next((t for t in mapped.topics if not TOPIC_SLUG.fullmatch(t)), None)
        if wrong is not None:
            shown = wrong if len(wrong) <= 60 else wrong[:57] + "..."
            report.reject(line, f"topic {shown!r} is not a topic slug (lowercase letters, digits and hyphens, e.g. security-cooperation)")
            continue
        for tag in mapped.unmatched_tags:
            if tag not in report.unmatched_tags:
                if len(report.unmatched_tags) < MAX_TAGS_KEPT:
                    report.unmatched_tags[tag[:200]] = None  # a hostile file's huge tag is not kept whole
                else:
                    report.more_tags = True
        report.unreadable_times += mapped.unreadable_time
        yield line, address, mapped


def _chunks(rows: Iterator[Any], size: int) -> Iterator[list[Any]]:
    chunk: list[Any] = []
    for row in rows:
        chunk.append(row)
        if len(chunk) >= size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def export_csv(subscribers: Iterable[Subscriber]) -> str:
    """Every cell quoted, and any that a spreadsheet would run as a formula neutralised (see _FORMULA)."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n", quoting=csv.QUOTE_ALL)
    writer.writerow(EXPORT_FIELDS)
    for s in subscribers:
        row = [s.email, s.status.value, ";".join(s.topics), s.created_at.isoformat(), s.confirmed_at.isoformat() if s.confirmed_at else ""]
        writer.writerow([_neutralise(cell) for cell in row])
    return out.getvalue()


def _neutralise(cell: str) -> str:
    return "'" + cell if _FORMULA.match(cell) else cell


def _restore(cell: str) -> str:
    """The inverse of _neutralise, for a file this program exported (a hand-made cell like "'=x" loses its quote too)."""
    return cell[1:] if _NEUTRALISED.match(cell) else cell


def seed_samples(store: Store, emails: Sequence[str], now: datetime) -> int:
    """Add the config's sample subscribers once, as active. Never revives one that left."""
    added = 0
    for email in emails:
        if store.is_suppressed_hash(email_hash(normalise_email(email))):
            continue  # forgotten on request: a sample address is no exception (and adding it would stop every command)
        _, created = add_subscriber(store, email, now, confirmed=True)
        added += created
    return added


def record_delivery_event(store: Store, email: str, kind: str, now: datetime) -> bool:
    """A provider reported a hard bounce ("bounced") or a spam complaint ("complained") for this address.

    The subscriber is suppressed from then on (never mailed again, not even after a re-import). Returns
    False when the address is unknown (nothing to do: an event for someone we never had).
    """
    status = {"bounced": SubscriberStatus.BOUNCED, "complained": SubscriberStatus.COMPLAINED}[kind]
    try:
        address = normalise_email(email)
    except InvalidAddress:
        return False
    return store.set_subscriber_status(address, status, now)


def to_json(data: Any) -> str:
    return json.dumps(data, indent=2, ensure_ascii=False)
