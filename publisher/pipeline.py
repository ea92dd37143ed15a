"""The main job, as the list of its stages: ingest → feeds → digest (when due), and the digest as its own:
recover → plan → render → compose → archive → deliver → finish → retry (the web copy goes before the first
message, which links to it).

Every entry point (the CLI, the scheduler, the preview, the tests) calls these functions; each stage is a
plain function of the package that owns it.
"""

from __future__ import annotations

import json
import logging
import threading
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path

from apscheduler.triggers.cron import CronTrigger

from subscribers import seed_samples

from .config import Config
from .delivery.backends import Transport as _Transport
from .delivery.send import SendOutcome, archive, compose, deliver, finish, merge, recover, retry_deferred
from .digest import PlannedIssue, plan_issue, render_variants
from .digest.render import RenderedIssue
from .feeds import FeedBuilder, copy_media, feed_specs, feeds_url, specs_holding
from .feeds.websub import ping_hub
from .ingest import IngestReport, run_sources
from .site import SiteReport, build_site
from .store import Store, open_store

log = logging.getLogger(__name__)


@dataclass
class CycleReport:
    ingest: IngestReport
    feeds_changed: list[Path] = field(default_factory=list)
    feeds_dir: Path | None = None
    site: SiteReport | None = None
    digest: SendOutcome | None = None
    digest_skipped_reason: str = ""
    signups: Counter[str] = field(default_factory=Counter)  # sign-up requests done this cycle, by outcome


def now_utc() -> datetime:
    return datetime.now(timezone.utc)


SAMPLES_SETTING = "subscribers.samples_seeded"


def open_project_store(cfg: Config) -> Store:
    """The store, with the config's sample subscribers seeded once; when the line is taken out of config.toml (as it
    says to before a real relay), those it seeded and who are still active or pending are unsubscribed."""
    store = open_store(cfg.store_url)
    seeded = set(json.loads(store.setting(SAMPLES_SETTING) or "[]"))
    samples = cfg.subscribers.sample_subscribers
    if samples:
        seed_samples(store, samples, now_utc())
        if not set(samples) <= seeded:
            store.set_setting(SAMPLES_SETTING, json.dumps(sorted(seeded | set(samples))))
    elif seeded:
        from .models import SubscriberStatus

        gone = [email for email in sorted(seeded) if (sub := store.subscriber(email)) is not None
                and sub.status in (SubscriberStatus.ACTIVE, SubscriberStatus.PENDING)
                and store.set_subscriber_status(email, SubscriberStatus.UNSUBSCRIBED, now_utc())]
        if gone:
            log.warning("sample_subscribers is gone from the config: the sample subscribers %s are unsubscribed", ", ".join(gone))
        store.set_setting(SAMPLES_SETTING, None)
    return store


def run_ingest(cfg: Config, store: Store, now: datetime) -> IngestReport:
    report = run_sources(cfg, store, now)
    # Whoever ran it (the service, `run --once`, `ingest`): `publisher status` shows when it last ran.
    store.set_setting("job.ingest.last_run", f"{now_utc().isoformat(timespec='seconds')} {len(report.new)} new, {len(report.errors)} skipped")
    return report


# Seconds one cycle (or one scheduler run) gives the sign-up queue before it moves on: the ingest, feeds and digest
# of `run --once` never wait behind a queue of sign-ups for a relay that does not answer.
SIGNUP_BUDGET = 60.0


def run_signups(cfg: Config, store: Store, *, stop: threading.Event | None = None) -> Counter[str]:
    """The sign-up queue: confirmations the web app queued and has not sent (it is not running, or it died), then pruned.

    The web app's own sender and this share the queue through the store: a request is done by whoever claims it.
    """
    from .delivery.transactional import drain_signups, worker_name

    done = drain_signups(cfg, store, worker=worker_name("run"), stop=stop, budget=SIGNUP_BUDGET)
    store.prune_signups(now_utc())
    return done


def run_feeds(cfg: Config, store: Store, report: IngestReport | None = None, builder: FeedBuilder | None = None) -> list[Path]:
    """Write the feeds; after an ingest, only the feeds its new publications are in.

    Publications that were updated or withdrawn, or topics that changed, can move between feeds: then every feed is
    rebuilt (unchanged files are still left alone). Returns the feed files whose bytes changed.
    """
    builder = builder or FeedBuilder(cfg)
    copy_media(cfg)
    topics = store.topics()
    specs = feed_specs(store, cfg, topics)
    if report is not None and report.new and not (report.updated or report.topics_changed or report.withdrawn):
        specs = specs_holding(specs, builder.remember(store.publications(ids=report.new)))
    builder.topic_names = {t.slug: t.name for t in topics}
    listings = builder.listings(store, specs)
    changed = builder.write(listings, store)
    if cfg.feeds.websub_hub and changed:
        root = cfg.path(cfg.feeds.output_dir)
        ping_hub(cfg.feeds.websub_hub, [f"{feeds_url(cfg)}/{p.relative_to(root).as_posix()}" for p in changed])
    return changed


def run_site(cfg: Config, store: Store) -> SiteReport:
    """The readers' pages (home, topics, types, publications, archive, search): unchanged pages are not written."""
    return build_site(cfg, store)


def next_issue(cfg: Config, store: Store, now: datetime, topic_sets: Iterable[tuple[str, ...]] | None = None
               ) -> tuple[PlannedIssue, dict[tuple[str, ...], RenderedIssue]]:
    """Plan → render: the issue that would go out now (an interrupted one resumed), each variant rendered once.
    For the send, the preview, `digest preview` and `--dry-run` alike."""
    plan = plan_issue(cfg, store, now)
    return plan, render_variants(cfg, plan, store.subscriber_topic_sets() if topic_sets is None else topic_sets)


def send_digest(cfg: Config, store: Store, now: datetime, *, make_transport: Callable[[], _Transport] | None = None,
                workers: int | None = None, stop: threading.Event | None = None, progress: Callable[[str, int], None] | None = None,
                due: datetime | None = None) -> SendOutcome:
    """The digest, stage by stage. ``due``: deferred recipients are taken only once due by then (the service);
    None takes them all at once (an operator's `digest send`: "try again now"). The new issue goes first:
    earlier issues' stragglers are retried after it and never hold it back."""
    stop = stop or threading.Event()
    recover(cfg, store, now_utc())  # runs that died: their journals replayed, their rows free
    held = warmup_held(cfg, store, now)
    if held is not None:  # the warm-up's allowance for today is used: nothing goes (retries neither) until tomorrow
        return held
    plan, rendered = next_issue(cfg, store, now)  # plan → render
    if plan.is_empty(cfg) and not cfg.digest.send_empty:
        outcome = SendOutcome(plan.id, reason="nothing new since the last issue")
    else:
        variants = compose(cfg, plan, rendered, now)
        copy = archive(cfg, rendered)
        outcome = deliver(cfg, store, plan, variants, now, make_transport=make_transport, workers=workers, stop=stop, progress=progress, due=due)
        outcome.archive = copy
        finish(cfg, store, outcome, now)
    if not (outcome.stopped or outcome.fault):
        merge(outcome, retry_deferred(cfg, store, now, due=due, make_transport=make_transport, stop=stop, skip=(outcome.issue_id,)))
    return outcome


FAULT_SETTING = "delivery.fault"  # "<iso time> <seconds until the service tries again>\t<what stopped the last send>"
WARMUP_SETTING = "delivery.warmup_held_until"  # an issue waits for the next day's allowance (see delivery.warmup)


def warmup_held(cfg: Config, store: Store, now: datetime) -> SendOutcome | None:
    """The outcome of a send that would find today's warm-up allowance used, without planning or rendering (the
    service looks every 20 seconds); None when something may go."""
    if not cfg.delivery.warmup:
        return None  # off (the default): no look at the store every 20 seconds
    until = store.setting(WARMUP_SETTING)
    opened = store.open_issue() if until else None
    if not (until and opened):
        return None
    try:
        resumes = datetime.fromisoformat(until)
    except ValueError:
        return None
    if now >= resumes:
        return None
    from .delivery.send import warmup_allowance

    allowance = warmup_allowance(cfg, store, now)
    if allowance is None or allowance.state().left:  # the ramp was changed (or given back to) since: something may go
        return None
    return SendOutcome(opened[0], reason=f"the warm-up's allowance for today is used; the issue goes on from {resumes.isoformat()}",
                       held_until=resumes)


def record_outcome(store: Store, outcome: SendOutcome) -> None:
    """Keep a fault that needs a human where `publisher status` shows it (and the service backs off: it tries again
    after a minute, then twice as long each time, up to an hour); clear it once a send delivers again."""
    if outcome.held_until is not None:
        store.set_setting(WARMUP_SETTING, outcome.held_until.isoformat())
    elif outcome.finished or outcome.sent:
        store.set_setting(WARMUP_SETTING, None)
    held = store.setting(FAULT_SETTING)
    if outcome.fault:
        wait = min(float(held.partition(" ")[2].partition("\t")[0] or 30) * 2, 3600.0) if held else 60.0
        store.set_setting(FAULT_SETTING, f"{now_utc().isoformat()} {wait:.0f}\t{outcome.fault}")
    elif outcome.sent and held:
        store.set_setting(FAULT_SETTING, None)
        log.info("delivery works again")


def digest_due(cfg: Config, store: Store, now: datetime) -> tuple[bool, str]:
    """Due when an issue is unfinished, when none was ever sent, or when the schedule fired since the last one."""
    if store.open_issue():
        return True, "an interrupted issue is resumed"
    last = store.last_sent_issue()
    if last is None:
        return True, "no issue has been sent yet"
    trigger = CronTrigger.from_crontab(cfg.digest.schedule, timezone=cfg.site.timezone)
    fire = trigger.get_next_fire_time(None, last[2] + timedelta(seconds=1))
    if fire is not None and fire <= now:
        return True, f"scheduled for {fire.isoformat()}"
    return False, f"the next digest is scheduled for {fire.isoformat() if fire else 'never'}"


def run_cycle(cfg: Config, store: Store, now: datetime, *, force_digest: bool = False) -> CycleReport:
    signups = run_signups(cfg, store)  # first: a person waiting for a confirmation should not wait for an ingest
    report = CycleReport(ingest=run_ingest(cfg, store, now), signups=signups)
    report.feeds_changed = run_feeds(cfg, store)  # all of them: a one-off run also repairs a deleted or edited file
    report.feeds_dir = cfg.path(cfg.feeds.output_dir)
    report.site = run_site(cfg, store)
    due, why = digest_due(cfg, store, now)
    if due or force_digest:
        log.info("digest: %s", "forced" if force_digest and not due else why)
        report.digest = send_digest(cfg, store, now)
        record_outcome(store, report.digest)
    else:
        report.digest_skipped_reason = why
        if store.due_retries(now):  # cron's `run --once` is the service too: the stragglers whose retry is due go now
            report.digest = retry_deferred(cfg, store, now, due=now)
            record_outcome(store, report.digest)
    return report
