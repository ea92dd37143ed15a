"""Ingest: run every configured source, upsert what it holds, report what is new.

One broken source or item is reported and skipped; the rest goes on.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime

from .config import Config
from .errors import SourceError
from .sources import Source
from .sources.files import FilesSource
from .store import Store

log = logging.getLogger(__name__)


@dataclass
class IngestReport:
    new: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    unchanged: int = 0
    topics_changed: list[str] = field(default_factory=list)
    errors: list[SourceError] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        return bool(self.new or self.updated or self.topics_changed)


def build_sources(cfg: Config) -> list[Source]:
    sources: list[Source] = []
    for name, sc in cfg.sources.items():
        if not sc.enabled:
            continue
        if sc.kind == "files":
            sources.append(FilesSource(name, cfg.path(sc.path), cfg.site.base_url, cfg.site.timezone))
    return sources


def ingest(sources: list[Source], store: Store, now: datetime) -> IngestReport:
    report = IngestReport()
    seen_ids: dict[str, str] = {}
    for source in sources:
        try:
            result = source.fetch()
        except SourceError as exc:  # the whole source failed: report it, go on with the others
            report.errors.append(exc)
            log.error("%s", exc)
            continue
        except Exception as exc:  # a bug in a source must not stop the others either
            log.exception("source %r failed", source.name)
            report.errors.append(SourceError(source.name, "(whole source)", f"unexpected {type(exc).__name__}: {exc}"))
            continue
        report.errors.extend(result.errors)
        report.warnings.extend(result.warnings)
        for err in result.errors:
            log.error("skipped: %s", err)
        for warning in result.warnings:
            log.warning("%s", warning)
        for topic in result.topics:
            if store.upsert_topic(topic):
                report.topics_changed.append(topic.slug)
        for pub in result.publications:
            if pub.id in seen_ids:
                err = SourceError(source.name, pub.id, f"duplicate id, also given by {seen_ids[pub.id]}; the first one is kept")
                report.errors.append(err)
                log.error("skipped: %s", err)
                continue
            seen_ids[pub.id] = f"source {source.name!r}"
            outcome = store.upsert_publication(pub, now)
            if outcome == "new":
                report.new.append(pub.id)
            elif outcome == "updated":
                report.updated.append(pub.id)
            else:
                report.unchanged += 1
    return report
