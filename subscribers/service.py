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
from publisher.models import Subscriber, SubscriberStatus

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
              check_deliverability: bool = False, may_send: Callable[[str], bool] | None = None) -> SubscribeResult:
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
            "updated_at": sub.updated_at.isoformat(), "confirmed_at": sub.confirmed_at.isoformat() if sub.confirmed_at else None}


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


@dataclass
class ImportReport:
    added: int = 0
    existing: int = 0
    suppressed: int = 0
    rejected: list[tuple[int, str]] = field(default_factory=list)  # (line number, reason), at most the first 1,000 kept
    rejected_count: int = 0

    def reject(self, line: int, reason: str) -> None:
        self.rejected_count += 1
        if len(self.rejected) < 1000:
            self.rejected.append((line, reason))


def import_csv(store: Store, fh: Iterable[str], now: datetime, *, confirmed: bool = False, batch: int = 1000) -> ImportReport:
    """Rows need an ``email`` column; ``topics`` (separated by ';' or ',') is optional.

    Streams the file (memory stays flat for any size), adding in batches of ``batch`` rows. A bad row is reported with
    its line number and skipped; blank lines are ignored. An address already known (suppressed ones
    included) is left as it is: an import never revives it; an erased address is not added back.
    """
    report = ImportReport()
    reader = csv.DictReader(fh)
    try:
        header = reader.fieldnames or []
    except csv.Error as exc:
        raise InvalidAddress(f"the CSV's header row cannot be read ({exc}); "
                             "the first line must name the columns, e.g. 'email,topics'.") from None
    fields = [f.strip().lower().lstrip("\ufeff") for f in header]
    if "email" not in fields:
        raise InvalidAddress(f"the CSV has no 'email' column (header: {', '.join(fields) or 'empty'}); add a header row with an 'email' column.")
    reader.fieldnames = fields
    status = SubscriberStatus.ACTIVE if confirmed else SubscriberStatus.PENDING
    for chunk in _chunks(_rows(reader, report), batch):
        unique: dict[str, list[str]] = {}
        for line, address, topics in chunk:  # duplicates within a batch are reported; across batches the store says "known"
            if address in unique:
                report.reject(line, f"{address} appears earlier in the file")
            else:
                unique[address] = topics
        hashes = {address: email_hash(address) for address in unique}
        suppressed = store.suppressed_hashes(hashes.values())
        wanted = [(a, topics) for a, topics in unique.items() if hashes[a] not in suppressed]
        report.suppressed += len(unique) - len(wanted)
        added = store.add_subscribers(wanted, status, now)
        report.added += added
        report.existing += len(wanted) - added
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


def _rows(reader: csv.DictReader, report: ImportReport) -> Iterator[tuple[int, str, list[str]]]:
    for line, end, row in _records(reader, report):
        raw = _restore((row.get("email") or "").strip())
        if not raw and not any((v or "").strip() for v in row.values() if isinstance(v, str)):
            continue  # a blank line
        try:
            address = normalise_email(raw)
        except InvalidAddress as exc:
            spans = f" (this row runs over lines {line}-{end}: is a quote left open?)" if end > line else ""
            report.reject(line, str(exc) + spans)
            continue
        topics = [t.strip() for t in _restore(row.get("topics") or "").replace(",", ";").split(";") if t.strip()]
        wrong = next((t for t in topics if not TOPIC_SLUG.fullmatch(t)), None)
        if wrong is not None:
            shown = wrong if len(wrong) <= 60 else wrong[:57] + "..."
            report.reject(line, f"topic {shown!r} is not a topic slug (lowercase letters, digits and hyphens, e.g. security-cooperation)")
            continue
        yield line, address, topics


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
