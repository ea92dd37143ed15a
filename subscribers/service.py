"""Add, import, export, seed. Addresses are validated and folded before anything is stored."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import TextIO

from email_validator import EmailNotValidError, validate_email

from publisher.errors import PublisherError
from publisher.models import Subscriber, SubscriberStatus
from publisher.store import Store

EXPORT_FIELDS = ("email", "status", "topics", "created_at", "confirmed_at")


class InvalidAddress(PublisherError):
    exit_code = 2


def normalise_email(raw: str) -> str:
    """Validated, with the domain lower-cased and the whole address case-folded (one person, one row)."""
    if any(ch in raw for ch in "\r\n\0"):
        raise InvalidAddress(f"{raw!r} contains a line break or NUL; an address is one line.")
    text = raw.strip()
    try:
        info = validate_email(text, check_deliverability=False)
    except EmailNotValidError as exc:
        raise InvalidAddress(f"{text!r} is not a valid email address: {exc}") from None
    return info.normalized.lower()


def add_subscriber(store: Store, email: str, now: datetime, *, topics: Sequence[str] = (), confirmed: bool = False) -> tuple[Subscriber, bool]:
    """Pending (double opt-in) unless ``confirmed``; an existing address is returned unchanged."""
    status = SubscriberStatus.ACTIVE if confirmed else SubscriberStatus.PENDING
    return store.add_subscriber(normalise_email(email), status, topics, now)


@dataclass
class ImportReport:
    added: int = 0
    existing: int = 0
    rejected: list[tuple[int, str]] = field(default_factory=list)  # (line number, reason)


def import_csv(store: Store, fh: TextIO, now: datetime, *, confirmed: bool = False) -> ImportReport:
    """Rows need an ``email`` column; ``topics`` (separated by ';' or ',') is optional.

    A bad row is reported with its line number and skipped. An address already in the
    store (suppressed ones included) is left as it is: an import never revives it.
    """
    report = ImportReport()
    reader = csv.DictReader(fh)
    fields = [f.strip().lower() for f in (reader.fieldnames or [])]
    if "email" not in fields:
        raise InvalidAddress(f"the CSV has no 'email' column (header: {', '.join(fields) or 'empty'}); add a header row with an 'email' column.")
    reader.fieldnames = fields
    seen: set[str] = set()
    for row in reader:
        line = reader.line_num
        try:
            email = normalise_email(row.get("email") or "")
        except InvalidAddress as exc:
            report.rejected.append((line, str(exc)))
            continue
        if email in seen:
            report.rejected.append((line, f"{email} appears earlier in the file"))
            continue
        seen.add(email)
        topics = [t.strip() for t in (row.get("topics") or "").replace(",", ";").split(";") if t.strip()]
        _, created = add_subscriber(store, email, now, topics=topics, confirmed=confirmed)
        if created:
            report.added += 1
        else:
            report.existing += 1
    return report


def export_csv(subscribers: Iterable[Subscriber]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(EXPORT_FIELDS)
    for s in subscribers:
        writer.writerow([s.email, s.status.value, ";".join(s.topics), s.created_at.isoformat(), s.confirmed_at.isoformat() if s.confirmed_at else ""])
    return out.getvalue()


def seed_samples(store: Store, emails: Sequence[str], now: datetime) -> int:
    """Add the config's sample subscribers once, as active. Never revives one that left."""
    added = 0
    for email in emails:
        _, created = add_subscriber(store, email, now, confirmed=True)
        added += created
    return added
