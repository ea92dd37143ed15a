"""Ingest: run every configured source, upsert what it holds, report what is new.

One broken source or item is reported and skipped; the rest goes on. Slugs are checked here once more,
whatever the source: a slug becomes a file name under public/, so a bad one never reaches the store.

What went wrong is in the report, and only there: whoever ran the ingest says it once (the CLI on stderr, the
service in its log). Logging it here as well printed every error twice.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

from .config import Config
from .errors import SourceError
from .fsutil import is_slug, slug_problem
from .sources import FileState, Source, SourceResult
from .sources.files import FilesSource
from .sources.remote import FeedSource, Fetcher, PageSource
from .store import Store
from .store.contentfiles import topic_hash
from .store.db import content_hash

log = logging.getLogger(__name__)


@dataclass
class IngestReport:
    new: list[str] = field(default_factory=list)
    # The new publications as people know them: (title, the file or source it came from), newest first (an undated one
    # counts as published now), so that the head of a long list is what just came out.
    new_titles: list[tuple[str, str]] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    unchanged: int = 0
    topics_changed: list[str] = field(default_factory=list)
    errors: list[SourceError] = field(default_factory=list)
    sources_ok: set[str] = field(default_factory=set)  # sources that answered (a bad item in one is still an error)
    not_modified: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    # Files sources: of the unchanged, how many were not even read (their stat said so) and how many were read
    # but not parsed (their bytes were the same); and the files gone since the last ingest.
    files_not_read: int = 0
    files_not_parsed: int = 0
    files_gone: list[str] = field(default_factory=list)
    # Publications unpublished because their file was deleted or made a draft (and no other file gives their id):
    # their ids, and (title, why) as the CLI prints them; how many files are drafts (kept out).
    withdrawn: list[str] = field(default_factory=list)
    withdrawn_titles: list[tuple[str, str]] = field(default_factory=list)
    drafts: int = 0

    @property
    def changed(self) -> bool:
        return bool(self.new or self.updated or self.topics_changed or self.withdrawn)


def build_sources(cfg: Config, *, states: dict[str, dict] | None = None, fetcher: Fetcher | None = None) -> list[Source]:
    """The enabled sources; remote ones get their stored state (validators, ids) and the shared fetcher."""
    sources: list[Source] = []
    for name, sc in cfg.sources.items():
        if not sc.enabled:
            continue
        if sc.kind == "files":
            sources.append(FilesSource(name, cfg.path(sc.path), cfg.site.base_url, cfg.site.timezone,
                                       max_file_size=cfg.ingest.max_file_size))
            continue
        fetcher = fetcher or make_fetcher(cfg)
        common: dict[str, Any] = dict(base_url=cfg.site.base_url, timezone=cfg.site.timezone, state=(states or {}).setdefault(name, {}),
                                      fetcher=fetcher, topics=sc.topics, content_type=sc.content_type,
                                      content_types=cfg.digest.type_order)
        if sc.kind == "feed":
            sources.append(FeedSource(name, sc.url, **common))
        else:
            sources.append(PageSource(name, sc.url, selectors=dict(sc.selectors), **common))
    return sources


def make_fetcher(cfg: Config) -> Fetcher:
    i = cfg.ingest
    return Fetcher(cfg.site.base_url, timeout=i.timeout, total_timeout=i.total_timeout, max_bytes=i.max_bytes,
                   max_redirects=i.max_redirects, allow_private=i.allow_private_addresses)


def run_sources(cfg: Config, store: Store, now: datetime) -> IngestReport:
    """Ingest from every source, with each remote source's state loaded from and saved back to the store.

    State is saved only after the publications are stored: an ETag saved for content that was not would
    turn the next poll into a 304 and lose those entries.
    """
    states = {name: _load_state(store, name) for name, sc in cfg.sources.items() if sc.kind != "files"}
    fetcher = make_fetcher(cfg) if states else None
    try:
        report = ingest(build_sources(cfg, states=states, fetcher=fetcher), store, now)
    finally:
        if fetcher is not None:
            fetcher.close()
    failed = {e.source: e for e in report.errors}
    for name in cfg.sources:
        if not cfg.sources[name].enabled:
            continue
        values: dict[str, Any] = {}
        if name in states:
            values["state"] = json.dumps(states[name])
        if name in failed and (name not in report.sources_ok):
            values.update(last_error_at=now, last_error=str(failed[name].reason)[:500])
        else:
            values["last_success_at"] = now
        store.save_source_state(name, **values)
    return report


def _load_state(store: Store, name: str) -> dict:
    raw = store.source_state(name).get("state")
    try:
        return json.loads(raw) if raw else {}
    except ValueError:
        return {}


def ingest(sources: list[Source], store: Store, now: datetime) -> IngestReport:
    report = IngestReport()
    seen_ids: dict[str, str] = {}
    new: list[tuple[datetime, str, str]] = []  # (published, title, where) of each new publication
    # The topics a publication may name besides its own folder's: the store's (any source's, earlier ingests'), the
    # remote sources' configured ones, and those this ingest stores. Read once per ingest, not per file.
    known_topics = {t.slug for t in store.topics()} | {t for s in sources if not isinstance(s, FilesSource) for t in getattr(s, "topics", ())}
    # Publications whose file was deleted or made a draft: (source, id, why). Withdrawn once every source has been read,
    # unless one of them still gives the id (a file renamed or moved, keeping its id): then it was an update.
    to_withdraw: list[tuple[str, str, str]] = []
    for source in sources:
        if isinstance(source, FilesSource):
            source.known = store.content_files(source.name)
            source.known_topics = known_topics
        try:
            result = source.fetch()
        except SourceError as exc:  # the whole source failed: report it, go on with the others
            report.errors.append(exc)
            continue
        except Exception as exc:  # a bug in a source must not stop the others either
            log.info("source %r failed; the traceback, for a bug report:", source.name, exc_info=True)
            report.errors.append(SourceError(source.name, "(whole source)", f"unexpected {type(exc).__name__}: {exc}"))
            continue
        report.errors.extend(result.errors)
        report.warnings.extend(result.warnings)
        if result.publications or result.topics or result.unchanged or getattr(result, "not_modified", False) or not result.errors:
            report.sources_ok.add(source.name)
        if getattr(result, "not_modified", False):
            report.not_modified.append(source.name)
        for warning in result.warnings:  # for the service's log (its ingest job logs the errors); the CLI prints them
            log.info("warning: %s", warning)
        kept: list[FileState] = []  # files whose items the store took (or still holds): recorded for the next ingest
        # Unchanged files first: what the store already holds from a file keeps its id against a new file giving it too.
        for state in result.unchanged:
            if state.kind == "publication":
                if state.item_id in seen_ids:
                    _skip(report, SourceError(source.name, state.item_id, f"duplicate id, also given by {seen_ids[state.item_id]}; "
                                                                          "the first one is kept"))
                    continue
                seen_ids[state.item_id] = f"source {source.name!r}"
                report.unchanged += 1
            kept.append(state)
        for topic in result.topics:
            if not is_slug(topic.slug):
                _skip(report, SourceError(source.name, f"topic {topic.name!r}", f"slug {slug_problem(topic.slug)}"))
                continue
            if store.upsert_topic(topic):
                report.topics_changed.append(topic.slug)
            known_topics.add(topic.slug)
            _keep(kept, result, topic, topic_hash(topic))
        for pub in result.publications:
            bad_topic = next((t for t in pub.topics if not is_slug(t)), None)
            if bad_topic is not None:
                _skip(report, SourceError(source.name, pub.id, f"topic {slug_problem(bad_topic)}"))
                continue
            if pub.id in seen_ids:
                _skip(report, SourceError(source.name, pub.id, f"duplicate id, also given by {seen_ids[pub.id]}; the first one is kept"))
                continue
            seen_ids[pub.id] = f"source {source.name!r}"
            outcome = store.upsert_publication(pub, now)
            if outcome == "new":
                report.new.append(pub.id)
                state = result.file_states.get(id(pub))
                new.append((pub.published_at or now, pub.title, state.path if state is not None else f"source {source.name!r}"))
            elif outcome == "updated":
                report.updated.append(pub.id)
            else:
                report.unchanged += 1
            _keep(kept, result, pub, content_hash(pub))
        if isinstance(source, FilesSource):
            known = source.known or {}
            report.drafts += len(result.drafts)
            kept.extend(result.drafts)
            to_withdraw += [(source.name, known[p].item_id, f"{p} deleted") for p in result.gone if known[p].kind == "publication"]
            to_withdraw += [(source.name, known[d.path].item_id, f"{d.path} is a draft") for d in result.drafts
                            if d.path in known and known[d.path].kind == "publication"]
            _record_files(store, source, result, kept, report)
    _withdraw(store, report, [w for w in to_withdraw if w[1] not in seen_ids])
    new.sort(key=lambda n: n[0], reverse=True)  # stable: the same instant keeps the order of ingest
    report.new_titles = [(title, where) for _, title, where in new]
    return report


def _keep(kept: list[FileState], result: SourceResult, item: object, item_hash: str) -> None:
    state = result.file_states.get(id(item))
    if state is not None:
        kept.append(replace(state, item_hash=item_hash))


def _withdraw(store: Store, report: IngestReport, wanted: list[tuple[str, str, str]]) -> None:
    """Unpublish what ``wanted`` names ((source, id, why)), each id once; only a publication its own files source gave."""
    by_source: dict[str, dict[str, str]] = {}
    for source, pub_id, why in wanted:
        by_source.setdefault(source, {}).setdefault(pub_id, why)
    for source, whys in by_source.items():
        titles = store.withdraw_publications(whys, source)
        for pub_id in sorted(titles, key=lambda i: whys[i]):
            report.withdrawn.append(pub_id)
            report.withdrawn_titles.append((titles[pub_id], whys[pub_id]))
            log.info("%s: withdrawn %r (%s): no longer in the store, the feeds or the site", source, pub_id, whys[pub_id])


def _record_files(store: Store, source: FilesSource, result: SourceResult, kept: list[FileState], report: IngestReport) -> None:
    """Save the states of the files ingested and forget those gone: one batch, only what moved.

    A file that failed (or gave a duplicate id) keeps the state of what it last gave, so that deleting it later still
    withdraws that; and so do the files ``held`` (the folder looks lost, not emptied: see FilesSource._gone).
    """
    known = source.known or {}
    changed = [s for s in kept if known.get(s.path) is not s]
    store.save_content_files(source.name, changed, result.gone)
    report.files_not_read += result.not_read
    report.files_not_parsed += len(result.unchanged) - result.not_read
    report.files_gone.extend(result.gone)
    if result.gone:
        log.info("%s: %d file(s) gone since the last ingest, their publications withdrawn unless another file gives their ids: %s",
                 source.name, len(result.gone), ", ".join(result.gone[:5]) + (", ..." if len(result.gone) > 5 else ""))
    if result.held:
        log.info("%s: %d file(s) not found and not withdrawn (see the error): %s", source.name, len(result.held),
                 ", ".join(result.held[:5]) + (", ..." if len(result.held) > 5 else ""))


def _skip(report: IngestReport, err: SourceError) -> None:
    report.errors.append(err)
