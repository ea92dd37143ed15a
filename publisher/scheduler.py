"""`publisher run`: APScheduler in the foreground, one instance at a time. The jobs only call the pipeline's stages.

- Jobs live in a persistent job store on the project's database (explicit ids, replace_existing), so a
  digest missed while the service was down runs when it comes back, within [scheduler].misfire_grace
  (an older miss is skipped, and APScheduler logs it). Runs that piled up are coalesced into one.
- A lease in the database makes one `publisher run` the scheduler; a second one waits as a standby and
  takes over when the first stops renewing, or at once when its process is known dead (its liveness lock
  is free: kill -9, a crash, a reboot). The send log stays the last
  line of defence: even two schedulers at once send each subscriber an issue once.
- Delivery finishes by itself: every DELIVERY_EVERY seconds, and at once when the scheduler starts or takes
  the lease, an interrupted issue is resumed and earlier issues' deferred recipients that are due are
  retried (backing off from [delivery].retry_first to retry_max, until give_up_after). After a fault
  that needs a human (the relay refuses us), the service tries again less and less often, up to an hour.
- SIGTERM and Ctrl-C stop between steps: a running ingest finishes, a running send finishes the
  messages in flight and records them.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import uuid
from datetime import datetime, timedelta
from typing import Any

from apscheduler.jobstores.sqlalchemy import SQLAlchemyJobStore
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger

from .config import Config, parse_duration
from .delivery.send import SendOutcome, retry_deferred
from .feeds import FeedBuilder
from .pipeline import FAULT_SETTING, now_utc, record_outcome, run_feeds, run_ingest, run_signups, run_site, send_digest, warmup_held
from .store import Store

log = logging.getLogger(__name__)
LEASE = "scheduler"
JOBS_TABLE = "apscheduler_jobs"
SIGNUP_EVERY = 60  # seconds: the web app's sender is woken at once; this only catches what it left behind
DELIVERY_EVERY = 20  # seconds between looks for an interrupted issue or deferred recipients that are due
_sending = threading.Lock()  # one send at a time in this process: the digest job and the delivery job take turns
# The jobs are stored by reference ("publisher.scheduler:ingest_job"), not with their arguments (a Store does
# not pickle); the running scheduler puts what they need here.
_context: dict[str, Any] = {}


def ingest_job() -> None:
    cfg, store = _context["cfg"], _context["store"]
    report = run_ingest(cfg, store, now_utc())
    log.info("ingest: %d new, %d updated, %d skipped", len(report.new), len(report.updated), len(report.errors))
    for err in report.errors:
        log.warning("source problem: %s", err)
    if report.changed:
        changed = run_feeds(cfg, store, report, _context["builder"])
        site = run_site(cfg, store)
        log.info("feeds: %d files rewritten; site: %d pages written, %d removed", len(changed), len(site.written), len(site.removed))


class _Either:
    """Set when any of its events is: the service stopping, or a new issue asking the retries to make way."""

    def __init__(self, *events: threading.Event | None) -> None:
        self.events = [e for e in events if e is not None]

    def is_set(self) -> bool:
        return any(e.is_set() for e in self.events)


_make_way = threading.Event()  # set by the digest job: stragglers' retries pause (the message in flight completes)


def digest_job() -> None:
    cfg, store = _context["cfg"], _context["store"]
    _make_way.set()  # a new issue is never held back by an older issue's stragglers
    try:
        with _sending:
            _make_way.clear()
            outcome = send_digest(cfg, store, now_utc(), stop=_context.get("stop"), due=now_utc())
    finally:
        _make_way.clear()
    _report(store, outcome)


def delivery_job() -> None:
    """Resume an interrupted issue at once; retry what is due. Skipped while the digest job sends, and while a
    fault that needs a human waits for its next try."""
    cfg, store = _context["cfg"], _context["store"]
    if not _sending.acquire(blocking=False):
        return
    try:
        now = now_utc()
        if not _fault_allows(store, now) or warmup_held(cfg, store, now) is not None:
            return  # a fault waits for its next try; a warm-up's issue for the next day's allowance
        if store.open_issue():
            log.info("resuming the interrupted issue %s", store.open_issue()[0])  # type: ignore[index]
            _report(store, send_digest(cfg, store, now, stop=_context.get("stop"), due=now))
        elif store.due_retries(now) and not _make_way.is_set():
            _report(store, retry_deferred(cfg, store, now, due=now, stop=_Either(_context.get("stop"), _make_way)))  # type: ignore[arg-type]
    finally:
        _sending.release()


def _fault_allows(store: Store, now: datetime) -> bool:
    held = store.setting(FAULT_SETTING)
    if not held:
        return True
    stamp, _, rest = held.partition(" ")
    wait = float(rest.partition("\t")[0] or 60)
    return now >= datetime.fromisoformat(stamp) + timedelta(seconds=wait)


def _report(store: Store, outcome: SendOutcome) -> None:
    record_outcome(store, outcome)
    summary = (f"{outcome.reason}" if outcome.reason and not (outcome.sent or outcome.deferred or outcome.failed) else
               f"{outcome.sent} sent, {outcome.deferred} deferred, {outcome.failed} failed, {outcome.skipped} skipped")
    if outcome.fault:
        log.error("digest %s stopped, needs a fix: %s", outcome.issue_id, outcome.fault)
    if outcome.held and outcome.held_until:
        log.info("digest %s: %d recipient(s) wait for the warm-up's next allowance, from %s", outcome.issue_id, outcome.held,
                 outcome.held_until.isoformat())
    if outcome.deferred:
        log.warning("digest %s: %d deferred, retried by the service from %s", outcome.issue_id, outcome.deferred,
                    outcome.next_retry.isoformat() if outcome.next_retry else "soon")
    log.info("digest %s: %s", outcome.issue_id, summary)
    if outcome.issue_id != "retries" and not outcome.reason:
        store.set_setting("job.digest.last_run", f"{now_utc().isoformat()} {outcome.issue_id}: {summary}")


def signup_job() -> None:
    """Confirmations queued by the web form that its own sender has not done (it is down, or another host's)."""
    cfg, store = _context["cfg"], _context["store"]
    done = run_signups(cfg, store, stop=_context.get("stop"))
    if done:
        log.info("sign-ups: %s", ", ".join(f"{n} {outcome}" for outcome, n in sorted(done.items())))


def digest_trigger(cfg: Config) -> Any:
    """[digest].schedule: a crontab line in [site].timezone (DST-aware), or "every <duration>" (tests, special cases)."""
    schedule = cfg.digest.schedule.strip()
    if schedule.startswith("every "):
        return IntervalTrigger(seconds=parse_duration(schedule[6:]), timezone=cfg.site.timezone)
    return CronTrigger.from_crontab(schedule, timezone=cfg.site.timezone)


def build_scheduler(cfg: Config, store: Store) -> BackgroundScheduler:
    sched = BackgroundScheduler(timezone=cfg.site.timezone, jobstores={"default": SQLAlchemyJobStore(engine=store.engine, tablename=JOBS_TABLE)},
                                job_defaults={"coalesce": True, "max_instances": 1})
    return sched


def add_jobs(sched: BackgroundScheduler, cfg: Config) -> None:
    sched.add_job("publisher.scheduler:ingest_job", IntervalTrigger(seconds=parse_duration(cfg.scheduler.ingest_every)), id="ingest",
                  name="ingest", replace_existing=True, next_run_time=now_utc(), misfire_grace_time=None)
    sched.add_job("publisher.scheduler:signup_job", IntervalTrigger(seconds=SIGNUP_EVERY), id="signups", name="signups",
                  replace_existing=True, next_run_time=now_utc(), misfire_grace_time=None)
    # At once on start (and on taking the lease over): an interrupted issue does not wait for the next fire.
    sched.add_job("publisher.scheduler:delivery_job", IntervalTrigger(seconds=DELIVERY_EVERY), id="delivery", name="delivery",
                  replace_existing=True, next_run_time=now_utc(), misfire_grace_time=None)
    existing = sched.get_job("digest")
    trigger = digest_trigger(cfg)
    kwargs: dict[str, Any] = {"id": "digest", "name": "digest", "replace_existing": True,
                              "misfire_grace_time": parse_duration(cfg.scheduler.misfire_grace)}
    if existing is not None and str(existing.trigger) == str(trigger):
        kwargs["next_run_time"] = existing.next_run_time  # keep a missed run: it is caught up below, within the grace
    sched.add_job("publisher.scheduler:digest_job", trigger, **kwargs)


def run_forever(cfg: Config, store: Store, stop: threading.Event) -> None:
    """Hold the lease and run the jobs; without the lease, wait as a standby. Returns when ``stop`` is set."""
    from .store.operations import lease_liveness_id

    holder = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
    alive = store.hold_run(lease_liveness_id(holder))  # dies with this process: a standby takes over at once, not after the lease
    ttl = timedelta(seconds=parse_duration(cfg.scheduler.lease))
    _context.update(cfg=cfg, store=store, builder=FeedBuilder(cfg), stop=stop)
    sched: BackgroundScheduler | None = None
    waiting_logged = False
    try:
        while not stop.is_set():
            now = now_utc()
            if store.acquire_lease(LEASE, holder, now, now + ttl):
                if sched is None:
                    sched = build_scheduler(cfg, store)
                    sched.start(paused=True)
                    add_jobs(sched, cfg)
                    sched.resume()
                    log.info("scheduler started (%s): ingest every %s, digest on '%s' (%s), misfire grace %s",
                             holder, cfg.scheduler.ingest_every, cfg.digest.schedule, cfg.site.timezone, cfg.scheduler.misfire_grace)
                    waiting_logged = False
            else:
                if sched is not None:
                    log.warning("lost the scheduler lease; stopping jobs and waiting as a standby")
                    sched.shutdown(wait=True)
                    sched = None
                if not waiting_logged:
                    other = store.lease_holder(LEASE)
                    log.info("standby: %s holds the scheduler lease; taking over if it stops", other[0] if other else "another process")
                    waiting_logged = True
            stop.wait(ttl.total_seconds() / 3)
    finally:
        if sched is not None:
            log.info("stopping: waiting for running jobs to reach a safe point")
            sched.shutdown(wait=True)
            store.release_lease(LEASE, holder, now_utc())
        alive.release()
        log.info("stopped")


def next_runs(store: Store, cfg: Config) -> dict[str, datetime | None]:
    """Each stored job's next run (for `publisher status`), without starting anything."""
    jobstore = SQLAlchemyJobStore(engine=store.engine, tablename=JOBS_TABLE)
    sched = BackgroundScheduler(timezone=cfg.site.timezone, jobstores={"default": jobstore})
    jobstore.start(sched, "default")
    try:
        return {job.id: job.next_run_time for job in jobstore.get_all_jobs()}
    except Exception:  # noqa: BLE001 - an unreadable job (a job store of another version): nothing to show
        return {}
