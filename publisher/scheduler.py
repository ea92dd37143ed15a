"""`publisher run`: APScheduler in the foreground. The jobs only call the pipeline's stages."""

from __future__ import annotations

import logging
import signal
from types import FrameType

from apscheduler.schedulers.blocking import BlockingScheduler
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger

from .config import Config, parse_duration
from .delivery.send import send_issue
from .feeds import FeedBuilder
from .pipeline import now_utc, run_feeds, run_ingest
from .store import Store

log = logging.getLogger(__name__)


def ingest_job(cfg: Config, store: Store, builder: FeedBuilder) -> None:
    report = run_ingest(cfg, store, now_utc())
    log.info("ingest: %d new, %d updated, %d errors", len(report.new), len(report.updated), len(report.errors))
    if report.changed:
        changed = run_feeds(cfg, store, report, builder)
        log.info("feeds: %d files rewritten", len(changed))


def digest_job(cfg: Config, store: Store) -> None:
    outcome = send_issue(cfg, store, now_utc())
    log.info("digest %s: %d sent, %d deferred, %d failed, %d skipped%s", outcome.issue_id, outcome.sent, outcome.deferred, outcome.failed, outcome.skipped,
             f" ({outcome.reason})" if outcome.reason else "")


def build_scheduler(cfg: Config, store: Store) -> BlockingScheduler:
    sched = BlockingScheduler(timezone=cfg.site.timezone)
    builder = FeedBuilder(cfg)  # kept across runs: its rendered entries make a rebuild after one new item cheap
    sched.add_job(ingest_job, IntervalTrigger(seconds=parse_duration(cfg.scheduler.ingest_every)), args=(cfg, store, builder),
                  id="ingest", replace_existing=True, coalesce=True, max_instances=1, next_run_time=now_utc())
    sched.add_job(digest_job, CronTrigger.from_crontab(cfg.digest.schedule, timezone=cfg.site.timezone), args=(cfg, store),
                  id="digest", replace_existing=True, coalesce=True, max_instances=1, misfire_grace_time=6 * 3600)
    return sched


def run_forever(cfg: Config, store: Store) -> None:
    sched = build_scheduler(cfg, store)

    def stop(signum: int, _frame: FrameType | None) -> None:
        log.info("received %s; stopping after the running job", signal.Signals(signum).name)
        sched.shutdown(wait=True)

    signal.signal(signal.SIGTERM, stop)
    log.info("scheduler started: ingest every %s, digest on '%s' (%s)", cfg.scheduler.ingest_every, cfg.digest.schedule, cfg.site.timezone)
    try:
        sched.start()
    except KeyboardInterrupt:
        log.info("interrupted; stopped")
