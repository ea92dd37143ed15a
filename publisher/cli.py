"""The `publisher` command: a thin layer over the pipeline. Each command's --help has an example."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import threading
import time
import warnings
from collections.abc import Iterable
from datetime import datetime
from pathlib import Path
from typing import Any

import click

from subscribers import add_subscriber, export_csv

from . import __version__
from .config import Config, SecretKeyWarning, load_config
from .errors import PublisherError, StoreError
from .models import SubscriberStatus
from .store import Store


class Context:
    def __init__(self, config_path: str | None) -> None:
        self.config_path = config_path
        self._cfg: Config | None = None
        self._store: Store | None = None

    @property
    def cfg(self) -> Config:
        if self._cfg is None:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always", SecretKeyWarning)
                self._cfg = load_config(self.config_path)
            for w in caught:
                click.echo(f"warning: {w.message}", err=True)
        return self._cfg

    @property
    def store(self) -> Store:
        if self._store is None:
            from .pipeline import open_project_store

            self._store = open_project_store(self.cfg)
        return self._store

    def close(self) -> None:
        if self._store is not None:
            self._store.close()


class PublisherGroup(click.Group):
    """Turns a PublisherError anywhere below into one clear line and its exit code."""

    def invoke(self, ctx: click.Context) -> Any:
        from sqlalchemy.exc import DBAPIError

        from .store.db import describe_failure, unusable

        try:
            return super().invoke(ctx)
        except PublisherError as exc:
            click.echo(f"error: {exc}", err=True)
            ctx.exit(exc.exit_code)
        except DBAPIError as exc:
            # Raised outside the store's own methods (the scheduler's job store reads the database directly):
            # a damaged or unreachable database is one line, like every other error, not a traceback.
            if not unusable(exc):
                raise
            click.echo(f"error: {describe_failure(_store_url(ctx), exc)}", err=True)
            ctx.exit(StoreError.exit_code)


def _store_url(ctx: click.Context) -> str:
    c = ctx.obj
    if isinstance(c, Context) and c._store is not None:
        return str(c._store.engine.url)
    return c.cfg.store_url if isinstance(c, Context) else "the store"


pass_ctx = click.make_pass_decorator(Context)


@click.group(cls=PublisherGroup)
@click.option("--config", "config_path", type=click.Path(dir_okay=False), envvar="PUBLISHER_CONFIG",
              help="Config file (default: ./config.toml, or $PUBLISHER_CONFIG).")
@click.option("-v", "--verbose", is_flag=True, help="Log every step.")
@click.version_option(__version__, prog_name="publisher")
@click.pass_context
def main(ctx: click.Context, config_path: str | None, verbose: bool) -> None:
    """Newsletters and feeds for teams that publish research and commentary.

    \b
    Example:
      publisher run --once      # ingest, build feeds, send the digest if due
    """
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    ctx.obj = Context(config_path)
    ctx.call_on_close(ctx.obj.close)


def _now():  # noqa: ANN202 - one clock for the CLI
    from .pipeline import now_utc

    return now_utc()


# -- run ---------------------------------------------------------------------------------------

@main.command()
@click.option("--once", is_flag=True, help="Run one full cycle now and exit, instead of the scheduler.")
@click.option("--force-digest", is_flag=True, help="With --once: send the digest even if it is not due by the schedule.")
@pass_ctx
def run(c: Context, once: bool, force_digest: bool) -> None:
    """The main job: ingest, feeds, and the weekly digest.

    Without --once it runs the scheduler in the foreground until stopped (Ctrl-C or SIGTERM).

    \b
    Example:
      publisher run --once
      publisher run             # on a server, under systemd or similar
    """
    if not once:
        if force_digest:
            raise click.UsageError("--force-digest only goes with --once.")
        from .scheduler import run_forever

        logging.getLogger().setLevel(logging.INFO)
        with _stop_on_signals() as stop:
            run_forever(c.cfg, c.store, stop)
        return
    from .pipeline import run_cycle

    report = run_cycle(c.cfg, c.store, _now(), force_digest=force_digest)
    _print_ingest(report.ingest)
    if report.feeds_dir is not None:
        click.echo(f"feeds: {len(report.feeds_changed)} written, all in {report.feeds_dir}/")
    if report.site is not None:
        _print_site(report.site, c.cfg)
    if report.digest_skipped_reason:
        click.echo(f"digest: not due ({report.digest_skipped_reason}); use --force-digest to send now")
    if report.digest is not None:  # the issue, or (not due) the retries of earlier issues' deferred recipients
        _print_send(report.digest, c.cfg)
        if report.digest.exit_code:
            sys.exit(report.digest.exit_code)


@main.command()
@click.option("--name", help="This worker's name in logs and `publisher status` (default: publisher-<id>@<host>).")
@pass_ctx
def worker(c: Context, name: str | None) -> None:
    """A send worker: with [delivery].engine = "celery", sends the digest with the others (any number, any machine).

    It takes tasks from the broker ([delivery].broker_url, or PUBLISHER_BROKER_URL when it needs a password), claims
    their recipients in the send log (PostgreSQL) and sends them. SIGTERM or Ctrl-C stops it within seconds; what it
    had claimed and not sent goes to another worker. Killed outright, its rows are taken over within seconds too.

    \b
    Example:
      PUBLISHER_DELIVERY__ENGINE=celery publisher worker
    """
    from .delivery.fleet import run_worker
    from .errors import ConfigError

    c.store  # a damaged or foreign store is reported before anything else, as by every command
    if c.cfg.delivery.engine != "celery":
        raise ConfigError('a worker sends only with [delivery].engine = "celery" (now "threads": `publisher run` sends by itself). '
                          "Set it in config.toml or as PUBLISHER_DELIVERY__ENGINE=celery, for the workers and `publisher run` alike.",
                          key="delivery.engine")
    logging.getLogger().setLevel(logging.INFO)
    run_worker(c.cfg, c.store, name=name)


def _print_ingest(report: Any) -> None:
    withdrawn = f", {len(report.withdrawn)} withdrawn" if report.withdrawn else ""
    drafts = f", {report.drafts} draft{'s' if report.drafts != 1 else ''}" if report.drafts else ""
    click.echo(f"ingest: {len(report.new)} new, {len(report.updated)} updated, {report.unchanged} unchanged, {len(report.errors)} skipped"
               f"{withdrawn}{drafts}")
    for title, why in report.withdrawn_titles:
        title = "".join(ch if ch.isprintable() else " " for ch in title)
        click.echo(f'  withdrawn: "{title}" ({why})')
    for err in report.errors:
        click.echo(f"  skipped {err}", err=True)
    for warning in report.warnings:
        click.echo(f"  warning: {warning}", err=True)


def _print_site(site: Any, cfg: Config) -> None:
    removed = f", {len(site.removed)} removed" if site.removed else ""
    click.echo(f"site: {len(site.written)} of {site.files} files written{removed}, in {cfg.path(cfg.site.public_dir)}/ (search {site.search})")


def _print_send(outcome: Any, cfg: Config | None = None) -> None:
    if outcome.reason and not (outcome.sent or outcome.deferred or outcome.failed or outcome.fault):
        click.echo(f"digest {outcome.issue_id}: not sent ({outcome.reason})")
        return
    if outcome.reason:  # nothing new, but earlier issues' deferred recipients were retried
        click.echo(f"digest {outcome.issue_id}: no new issue ({outcome.reason}); retried earlier recipients:")
    open_note = "" if outcome.finished or outcome.reason else " (the issue stays open: the next run resumes it)"
    click.echo(f"digest {outcome.issue_id}: {outcome.sent} sent, {outcome.deferred} deferred, {outcome.failed} failed, "
               f"{outcome.skipped} skipped" + open_note)
    for failure in outcome.failures[:5]:
        click.echo(f"  {failure}", err=True)
    if outcome.held and outcome.held_until:
        click.echo(f"  {outcome.held} held back by the warm-up ([delivery].warmup): today's allowance is used; `publisher run` "
                   f"sends them from {outcome.held_until.isoformat(timespec='minutes')}")
    if outcome.deferred and not outcome.fault:
        when = outcome.next_retry.isoformat(timespec="seconds") if outcome.next_retry else "soon"
        click.echo(f"  {outcome.deferred} deferred: `publisher run` retries them by itself (next {when}), "
                   "or run `publisher digest send` again", err=True)
    if outcome.fault:
        click.echo(f"error: the send stopped: {outcome.fault}", err=True)
    if outcome.outbox is not None:
        click.echo(f"  delivered to the outbox: {outcome.outbox}/new/")
    if outcome.archive is not None:
        click.echo(f"  web copy: {outcome.archive}")
        if cfg is not None:
            from .config_checks import is_local

            if is_local(cfg.site.base_url):  # the embedded default: the pages, images and links are served here
                click.echo(f"  to look at it: run `publisher serve`, then open {cfg.site.base_url.rstrip('/')}/digests/{outcome.archive.name}")


@main.command("ingest")
@pass_ctx
def ingest_cmd(c: Context) -> None:
    """Pull new publications from every source and print what is new.

    \b
    Example:
      publisher ingest
    """
    from .pipeline import run_ingest

    report = run_ingest(c.cfg, c.store, _now())
    _print_ingest(report)
    shown = 20  # a cold ingest of 20,000 files stays readable
    for title, where in report.new_titles[:shown]:
        title = "".join(ch if ch.isprintable() else " " for ch in title)  # a remote title carries no terminal escapes
        click.echo(f'  new: "{title}" ({where})')
    if len(report.new_titles) > shown:
        click.echo(f"  ... and {len(report.new_titles) - shown:,} more")


@main.command()
@pass_ctx
def status(c: Context) -> None:
    """What ran, what will run, which sources are unhealthy, and the pending issue.

    \b
    Example:
      publisher status
    """
    from .pipeline import digest_due, warmup_held
    from .scheduler import LEASE, next_runs

    now = _now()
    holder = c.store.lease_holder(LEASE)
    if holder and holder[1] > now:
        click.echo(f"scheduler: running ({holder[0]}, lease until {holder[1].isoformat(timespec='seconds')})")
    else:
        click.echo("scheduler: not running (start it with `publisher run`)")
    runs = next_runs(c.store, c.cfg)
    last_issue = c.store.last_sent_issue()
    for job in ("ingest", "digest"):
        last = c.store.setting(f"job.{job}.last_run") or "never"
        if job == "digest" and last_issue:  # whoever sent it: the scheduler, `run --once` or `digest send`
            last = f"{last_issue[2].isoformat(timespec='seconds')} {last_issue[0]}"
        nxt = runs.get(job)
        click.echo(f"  {job}: last {last}; next {nxt.isoformat(timespec='seconds') if nxt else 'not scheduled'}")
    if not os.environ.get("PUBLISHER_SECRET_KEY"):
        click.echo(f"signing key: the development key in {c.cfg.path('var/secret_key')}; set PUBLISHER_SECRET_KEY before real mail goes out")
    states = {s["name"]: s for s in c.store.all_source_states()}
    click.echo("sources:")
    for name, source in c.cfg.sources.items():
        st = states.get(name, {})
        ok, bad = st.get("last_success_at"), st.get("last_error_at")
        health = "UNHEALTHY" if bad and (not ok or bad > ok) else "ok" if ok else "not polled yet"
        line = f"  {name} ({source.kind}{', ' + source.url if source.url else ''}): {health}"
        if ok:
            line += f"; last success {ok.isoformat(timespec='seconds')}"
        if bad:
            line += f"; last error {bad.isoformat(timespec='seconds')}: {st.get('last_error')}"
        click.echo(line)
    _print_delivery_status(c, now)
    opened = c.store.open_issue()
    due, why = digest_due(c.cfg, c.store, now)
    if opened and warmup_held(c.cfg, c.store, now) is not None:
        click.echo(f"pending issue: {opened[0]} (held by the warm-up), resumed when the next day's allowance begins")
    elif opened:
        click.echo(f"pending issue: {opened[0]} (interrupted; {c.store.unfinished_sends(opened[0])} sends left), resumed by the next send")
    else:
        from .digest import plan_issue

        plan = plan_issue(c.cfg, c.store, now)
        click.echo(f"pending issue: {len(plan.publications)} new publications; {'due now' if due else why}")


def _print_delivery_status(c: Context, now: Any) -> None:
    """The last issue's delivery, what the service will retry and when, and a fault that needs a human."""
    from .pipeline import FAULT_SETTING

    last = c.store.last_sent_issue()
    if last:
        counts = c.store.send_counts(last[0])
        parts = ", ".join(f"{counts.get(k, 0)} {k}" for k in ("sent", "deferred", "failed", "undeliverable") if counts.get(k) or k == "sent")
        nxt = c.store.next_retry(last[0])
        retry = f"; next retry {nxt.isoformat(timespec='seconds')}" if nxt else ""
        click.echo(f"last issue: {last[0]}, sent {last[2].isoformat(timespec='seconds')}: {parts}{retry}")
        _print_rates(*c.store.issue_rates(last[0]))
    _print_warmup(c, now)
    for run_id, issue_id, holder, started in c.store.live_runs():
        click.echo(f"  sending now: {issue_id} by {holder} since {started.isoformat(timespec='seconds')}")
    workers = c.store.live_workers(now)
    if c.cfg.delivery.engine == "celery" or workers:
        click.echo(f"workers: {len(workers)} alive" + ("" if workers else " (start `publisher worker` on each sending machine)"))
        for worker_id, holder, started, sent, rate in workers:
            click.echo(f"  {worker_id} on {holder} since {started.isoformat(timespec='seconds')}: {sent} sent, {rate:.1f}/s over the last minute")
    fault = c.store.setting(FAULT_SETTING)
    if fault:
        stamp, _, rest = fault.partition(" ")
        click.echo(f"DELIVERY STOPPED at {stamp[:19]}: {rest.partition(chr(9))[2]}")


# Complaint rates as Gmail's and Yahoo's bulk-sender rules judge them (keep under 0.1 %, never reach 0.3 %); bounce
# rates as the providers review accounts (Amazon SES: under review from 5 %; most ask to stay under 2 %).
RATE_LIMITS = {"complaint": (0.001, 0.003), "bounce": (0.02, 0.05)}


def _print_rates(attempted: int, bounced: int, complained: int) -> None:
    """The last issue's bounce and complaint rates (from the relay's refusals and the providers' webhooks)."""
    if not attempted:
        return
    for name, n in (("bounce", bounced), ("complaint", complained)):
        rate = n / attempted
        warn, error = RATE_LIMITS[name]
        line = f"  {name} rate: {rate:.2%} ({n} of {attempted:,})"
        if rate > error:
            click.echo(f"{line}: ERROR, above {error:.1%}" + (" (Gmail's limit for bulk senders): mail from this domain goes to spam "
                       "or is refused. Stop and find out who is complaining: confirm sign-ups (double opt-in), remove old addresses"
                       if name == "complaint" else ": providers suspend senders here. Clean the list (remove old, never-confirmed addresses)"))
        elif rate > warn:
            click.echo(f"{line}: warning, above {warn:.1%}" + (" (Gmail asks bulk senders to stay under it)" if name == "complaint" else ""))
        else:
            click.echo(line)


def _print_warmup(c: Context, now: Any) -> None:
    """How far a warming-up domain's ramp has come, and whether an issue waits for tomorrow's allowance."""
    from .delivery.send import warmup_allowance
    from .pipeline import warmup_held

    d = c.cfg.delivery
    if not d.warmup:
        return
    allowance = warmup_allowance(c.cfg, c.store, now)
    if allowance is None:
        click.echo(f"warm-up: done (the ramp's {d.warmup_days} days are over): no daily limit")
        return
    day = allowance.state()
    click.echo(f"warm-up: {day.domain}, day {day.day + 1} of {d.warmup_days}: {day.used:,} of today's {day.allowance:,} sent; "
               f"tomorrow {allowance.ramp.allowance(day.day + 1) or 'no limit'}")
    held = warmup_held(c.cfg, c.store, now)
    if held is not None and held.held_until is not None:
        click.echo(f"  issue {held.issue_id} waits for the next allowance, from {held.held_until.isoformat(timespec='minutes')}")


# -- doctor --------------------------------------------------------------------------------------

@main.command()
@click.option("--network", is_flag=True, help="Also look up the SPF, DKIM and DMARC records in DNS.")
@click.option("--nameserver", metavar="HOST[:PORT]", help="Ask this DNS server instead of the system's (implies --network).")
@pass_ctx
def doctor(c: Context, network: bool, nameserver: str | None) -> None:
    """Before the first send: what is wrong with the sending setup (DMARC alignment, DKIM, one-click unsubscribe,
    postal address, SMTP TLS, signing key) and the DNS records to publish. Offline unless --network; exits 1 on
    any error.

    \b
    Example:
      publisher doctor
      $ publisher doctor --network --nameserver 127.0.0.1:5353
    """
    from .doctor import parse_nameserver, report_lines, run_checks

    if nameserver:
        try:
            parse_nameserver(nameserver)
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--nameserver") from None
    network = network or bool(nameserver)
    c.store.probe()  # a damaged store is the first thing to fix: one clear line (restore it), as every command says
    findings = run_checks(c.cfg, network=network, nameserver=nameserver)
    for line in report_lines(findings, network=network):
        click.echo(line)
    if any(f.level == "error" for f in findings):
        click.get_current_context().exit(1)


# -- feeds ---------------------------------------------------------------------------------------

@main.group()
def feeds() -> None:
    """RSS, Atom and JSON feeds."""


@feeds.command("build")
@pass_ctx
def feeds_build(c: Context) -> None:
    """Write every feed (all, per topic, per content type) under [feeds].output_dir, and the site's pages.

    \b
    Example:
      publisher feeds build
    """
    from .pipeline import run_feeds, run_site

    changed = run_feeds(c.cfg, c.store)
    click.echo(f"feeds: {len(changed)} written ({'the rest unchanged' if changed else 'all unchanged'}) in {c.cfg.path(c.cfg.feeds.output_dir)}/")
    _print_site(run_site(c.cfg, c.store), c.cfg)


@main.command()
@click.option("--host", help="Address to bind (default [web].host).")
@click.option("--port", type=int, help="Port (default [web].port).")
@pass_ctx
def serve(c: Context, host: str | None, port: int | None) -> None:
    """Serve the site: feeds (with ETag, Last-Modified and 304s), media, digest web copies, topic pages.

    \b
    Example:
      publisher serve --port 8000
    """
    import uvicorn

    from .web import create_app

    app = create_app(c.cfg, c.store)
    host = host or c.cfg.web.host
    port = port if port is not None else c.cfg.web.port
    click.echo(f"serving {c.cfg.path(c.cfg.site.public_dir)} on http://{host}:{port}/", err=True)
    _exit_0_after_graceful_stop()
    uvicorn.run(app, host=host, port=port, log_level="info", proxy_headers=False)  # X-Forwarded-For: see [web].trusted_proxies


def _exit_0_after_graceful_stop() -> None:
    """uvicorn stops gracefully on SIGTERM or Ctrl-C, then raises the signal again under the handlers it found: with
    these, that is a no-op and the command exits 0 (a stop asked for is a success, as for `publisher run`)."""
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda signum, frame: None)


@main.command()
@click.option("--port", type=int, help="Port on 127.0.0.1 (default [preview].port).")
@pass_ctx
def preview(c: Context, port: int | None) -> None:
    """Editor preview: the next issue as subscribers get it, updating live as you edit content, templates or config.

    It binds 127.0.0.1 only, needs no mail server, and sends test copies only to [preview].test_recipients.

    \b
    Example:
      publisher preview --port 8025
    """
    import uvicorn

    from .web.preview import create_preview_app

    port = port if port is not None else c.cfg.preview.port
    app = create_preview_app(c.cfg, c.store)
    click.echo(f"preview: http://127.0.0.1:{port}/  (Ctrl-C to stop)", err=True)
    _exit_0_after_graceful_stop()
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning")


# -- digest ----------------------------------------------------------------------------------------

@main.group()
def digest() -> None:
    """The weekly digest email."""


@digest.command("preview")
@click.option("--out", "out", type=click.Path(dir_okay=False, path_type=Path), help="Write to this file instead of standard output.")
@click.option("--email", "email", help="Render the variant this subscriber gets (their topics, their links).")
@click.option("--text", "as_text", is_flag=True, help="The plain-text part instead of the HTML.")
@click.option("--eml", "as_eml", is_flag=True, help="The whole MIME message, headers and both parts, as the subscriber gets it.")
@pass_ctx
def digest_preview(c: Context, out: Path | None, email: str | None, as_text: bool, as_eml: bool) -> None:
    """Render the next issue as a subscriber would get it.

    \b
    Example:
      publisher digest preview --out next.html
      publisher digest preview --text --email reader@example.com
      publisher digest preview --eml --out next.eml
    """
    from subscribers import normalise_email

    from .delivery.message import compile_message, preview_message_id
    from .delivery.send import links_for
    from .models import Subscriber
    from .pipeline import next_issue

    if as_text and as_eml:
        raise click.UsageError("choose one of --text and --eml.")
    now = _now()
    if email:
        sub = c.store.subscriber(normalise_email(email))
        if sub is None:
            raise PublisherError(f"no subscriber {email!r}; see `publisher subscribers list`.")
    else:
        sub = Subscriber(0, "subscriber@example.com", SubscriberStatus.ACTIVE, now, now)
    plan, variants = next_issue(c.cfg, c.store, now, [sub.topics])
    rendered = variants[sub.topics]
    links = links_for(c.cfg, sub)
    if as_eml:
        message = compile_message(c.cfg, rendered, now)
        body = message.for_recipient(preview_message_id(message.domain), sub.email, links)
    else:
        html, text = rendered.personalise({**links, "email": sub.email})
        body = (text if as_text else html).encode("utf-8")
    if out is None:
        click.echo(body.decode("utf-8"), nl=False)
    else:
        from .fsutil import write_atomic

        write_atomic(out, body)
        issue = rendered.issue
        more = f", {issue.more_count} more on the site" if issue.more_count else ""
        click.echo(f"issue {plan.id}: {len(issue.publications)} publications ({len(issue.featured)} featured{more}) → {out}", err=True)


@digest.command("send")
@click.option("--dry-run", is_flag=True, help="Select and render, count the recipients, send nothing.")
@click.option("--test-to", "test_to", metavar="ADDR", help="Send one copy to ADDR, subject prefixed [TEST], outside the send log.")
@click.option("--progress/--no-progress", default=None, help="Show a progress bar (default: when the output is a terminal).")
@pass_ctx
def digest_send(c: Context, dry_run: bool, test_to: str | None, progress: bool | None) -> None:
    """Send the next issue now to every active subscriber (an interrupted issue is resumed).

    Now, whatever [digest].schedule says (it says so when the schedule had not come yet): the schedule is
    for the service, `publisher run`; `run --once` sends only when it is due (or with --force-digest).
    Safe to run again, or twice at once: the send log gives each subscriber one copy. Ctrl-C or
    SIGTERM finishes the message in flight, records it, and stops; the next run goes on from there.

    \b
    Example:
      publisher digest send --dry-run
      publisher digest send --test-to editor@example.org
      publisher digest send
    """
    from .delivery.send import send_test
    from .pipeline import next_issue, record_outcome, send_digest

    if dry_run:
        plan, variants = next_issue(c.cfg, c.store, _now())
        recipients = c.store.count_recipients(_now())
        click.echo(f"digest {plan.id}: {len(plan.publications)} publications, {recipients} recipients, "
                   f"{len(variants)} variants (dry run: nothing sent)")
        return
    if test_to:
        result = send_test(c.cfg, c.store, _now(), test_to)
        click.echo(f"test copy to {test_to}: {result.status}{': ' + result.error if result.error else ''}")
        if result.status != "sent":
            sys.exit(1)
        return
    from .pipeline import digest_due

    due, why = digest_due(c.cfg, c.store, _now())
    with _stop_on_signals() as stop, _progress_bar(progress) as on_progress:
        outcome = send_digest(c.cfg, c.store, _now(), stop=stop, progress=on_progress)
    if not due and not outcome.reason:  # an issue went out (not "nothing new"): say it was ahead of the schedule
        click.echo(f"digest: sent now, ahead of the schedule ({why})", err=True)
    _print_send(outcome, c.cfg)
    record_outcome(c.store, outcome)
    if outcome.stopped:
        click.echo("stopped: the next `publisher digest send` (or the service) resumes this issue", err=True)
        sys.exit(128 + getattr(stop, "signum", signal.SIGTERM))  # 143 for SIGTERM, 130 for Ctrl-C: not done
    elif outcome.exit_code:
        sys.exit(outcome.exit_code)


@contextlib.contextmanager
def _stop_on_signals() -> Any:
    """SIGTERM and Ctrl-C set an event the send checks between messages (the message in flight completes)."""
    stop = threading.Event()

    def handler(signum: int, _frame: Any) -> None:
        click.echo(f"\n{signal.Signals(signum).name}: finishing the messages in flight, then stopping", err=True)
        stop.signum = signum  # type: ignore[attr-defined]
        stop.set()

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield stop
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


@contextlib.contextmanager
def _progress_bar(enabled: bool | None) -> Any:
    if enabled is False or (enabled is None and not sys.stderr.isatty()):
        yield None
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskProgressColumn, TextColumn, TimeRemainingColumn

    counts = {"sent": 0, "deferred": 0, "failed": 0}
    columns = (TextColumn("[bold]digest"), BarColumn(), MofNCompleteColumn(), TaskProgressColumn(),
               TextColumn("{task.fields[rate]:>7.0f} msg/s"), TimeRemainingColumn(), TextColumn("{task.fields[counts]}"))
    with Progress(*columns, console=Console(stderr=True), transient=False) as bar:
        task = bar.add_task("send", total=None, rate=0.0, counts="")
        started = time.monotonic()

        def on_progress(status: str, n: int) -> None:
            if status == "total":
                bar.update(task, total=n)
                return
            counts[status] += n
            done = sum(counts.values())
            bar.update(task, completed=done, rate=done / max(time.monotonic() - started, 1e-6),
                       counts=f"{counts['sent']} sent, {counts['deferred']} deferred, {counts['failed']} failed")

        yield on_progress


@digest.command("note")
@click.argument("text", required=False)
@click.option("--clear", is_flag=True, help="Remove the note set for the next issue.")
@pass_ctx
def digest_note(c: Context, text: str | None, clear: bool) -> None:
    """Set the editor's note printed at the top of the next issue (it overrides [digest].note once).

    \b
    Example:
      publisher digest note "A special issue on alliances, with two new reports."
      publisher digest note --clear
    """
    from .digest.issue import NOTE_SETTING

    if clear:
        c.store.set_setting(NOTE_SETTING, None)
        click.echo("note cleared")
    elif text is None:
        current = c.store.setting(NOTE_SETTING)
        click.echo(current if current is not None else f"no note set for the next issue ([digest].note: {c.cfg.digest.note!r})")
    else:
        c.store.set_setting(NOTE_SETTING, text.strip())
        click.echo("note set for the next issue")


# -- subscribers -------------------------------------------------------------------------------------

@main.group("subscribers")
def subscribers_group() -> None:
    """Manage the audience."""


@subscribers_group.command("add")
@click.argument("email")
@click.option("--confirmed", is_flag=True, help="Active at once (consent collected elsewhere); otherwise pending until confirmed.")
@click.option("--topic", "topics", multiple=True, help="A topic slug to limit the digest to; repeat for several.")
@pass_ctx
def subscribers_add(c: Context, email: str, confirmed: bool, topics: tuple[str, ...]) -> None:
    """Add one subscriber.

    \b
    Without --confirmed (and with [subscribers].double_opt_in), they get a confirmation email now and stay
    pending until they click it.

    \b
    Example:
      publisher subscribers add newreader@example.com
      publisher subscribers add colleague@example.com --confirmed --topic security-cooperation
    """
    _check_topics(c, topics)
    if confirmed or not c.cfg.subscribers.double_opt_in:
        sub, created = add_subscriber(c.store, email, _now(), topics=topics, confirmed=True)
        click.echo(f"{'added' if created else 'already known'}: {sub.email} ({sub.status.value})")
        return
    # Double opt-in: the same way as the web form's sign-up (the queue, the daily cap per address), and the
    # confirmation goes out now, not when the service next looks.
    from subscribers import InvalidAddress, email_hash, normalise_email

    from .pipeline import run_signups

    address = normalise_email(email)
    if c.store.is_suppressed_hash(email_hash(address)):
        raise InvalidAddress(f"{address} is suppressed (it bounced, complained or asked to be forgotten); it cannot be added again.")
    known = c.store.subscriber(address)
    c.store.enqueue_signup(address, topics, _now())
    done = run_signups(c.cfg, c.store)
    sub = c.store.subscriber(address)
    why = ("the address has had its [subscribers].confirmations_per_day today: try again tomorrow" if done.get("capped") else
           "the relay did not take it: the service tries again (see `publisher status`)" if done.get("retry") else
           ", ".join(sorted(done)) or "queued: the service sends it")
    if done.get("sent") and sub is not None:
        where = f" (the outbox: {c.cfg.path(c.cfg.delivery.outbox_dir)}/new/)" if c.cfg.delivery.backend == "outbox" else ""
        click.echo(f"{'added' if known is None else 'asked again'}: {sub.email} (pending): a confirmation email was sent{where}; "
                   "they are subscribed once they click its link")
    elif sub is None:
        raise click.ClickException(f"{address} was not added: no confirmation could be sent ({why}).")
    elif sub.status is SubscriberStatus.PENDING:
        click.echo(f"{'added' if known is None else 'already known'}: {sub.email} (pending): no confirmation sent now ({why})")
    else:
        click.echo(f"already known: {sub.email} ({sub.status.value})")


def _check_topics(c: Context, topics: Iterable[str]) -> None:
    """An unknown topic slug is refused, with the likely one."""
    from .models import suggest_topic

    known = sorted(t.slug for t in c.store.topics())
    for slug in topics:
        if slug not in known:
            hint = suggest_topic(slug, known) if known else " no topics yet: run `publisher ingest` first (topics are files in content/topics/)"
            raise click.UsageError(f"unknown topic {slug!r};{hint}")


@subscribers_group.command("import")
@click.argument("file", type=click.File("rb"))
@click.option("--confirmed", is_flag=True, help="Import a plain list as active: only when its consent was collected elsewhere "
              "(a platform's export says each person's status itself).")
@pass_ctx
def subscribers_import(c: Context, file: Any, confirmed: bool) -> None:
    """Import a CSV with an `email` column (and optional `topics`, separated by ';'), or the subscriber export of
    Mailchimp (its subscribed, unsubscribed or cleaned file), Substack, listmonk, Buttondown or Ghost, recognised by
    its header row. An export's statuses are kept: who left is stored suppressed and never mailed, who opted in is
    active with their opt-in time; tags that name a topic become that topic.

    \b
    Example:
      publisher subscribers import list.csv --confirmed
    """
    from subscribers import import_csv_bytes

    now = _now()
    report = import_csv_bytes(c.store, file, now, confirmed=confirmed)
    for summary in report.summary(confirmed=confirmed):
        click.echo(summary)
    for line, reason in report.rejected:
        click.echo(f"  line {line}: {reason}", err=True)
    if report.rejected_count > len(report.rejected):
        click.echo(f"  ... and {report.rejected_count - len(report.rejected)} more rejected rows", err=True)
    _confirm_pending(c, now)


def _confirm_pending(c: Context, added_at: datetime) -> None:
    """Who an import left pending gets the confirmation email (they were left waiting with none): queued as the
    web form's sign-ups are (the daily cap per address holds), the first sent now, the rest by the service."""
    from .pipeline import run_signups

    pending = [s for s in c.store.subscribers(status=SubscriberStatus.PENDING) if s.created_at == added_at]
    if not pending:
        return
    c.store.enqueue_signups([(sub.email, sub.topics) for sub in pending], added_at)
    done = run_signups(c.cfg, c.store)
    sent = done.get("sent", 0)
    rest = len(pending) - sent
    where = f" (the outbox: {c.cfg.path(c.cfg.delivery.outbox_dir)}/new/)" if c.cfg.delivery.backend == "outbox" else ""
    click.echo(f"  {len(pending)} pending: confirmation emails sent to {sent}{where}"
               + (f"; the other {rest} go out from `publisher run`, a batch a minute" if rest > 0 else "")
               + "; each is subscribed once they click its link")


@subscribers_group.command("export")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path), required=False)
@pass_ctx
def subscribers_export(c: Context, file: Path | None) -> None:
    """Export everyone as CSV (email, status, topics, created_at, confirmed_at).

    \b
    Example:
      publisher subscribers export subscribers.csv
      publisher subscribers export > subscribers.csv
    """
    data = export_csv(c.store.subscribers())
    if file is None:
        click.echo(data, nl=False)
    else:
        from .fsutil import write_atomic

        write_atomic(file, data.encode("utf-8"), mode=0o600)  # personal data: the owner's alone
        click.echo(f"exported to {file}", err=True)


@subscribers_group.command("list")
@click.option("--status", type=click.Choice([s.value for s in SubscriberStatus]), help="Only subscribers with this status.")
@pass_ctx
def subscribers_list(c: Context, status: str | None) -> None:
    """List subscribers, one per line: email, status, topics.

    \b
    Example:
      publisher subscribers list --status active
    """
    subs = c.store.subscribers(status=SubscriberStatus(status) if status else None)
    for s in subs:
        click.echo(f"{s.email}\t{s.status.value}\t{','.join(s.topics) or 'all topics'}")
    click.echo(f"{len(subs)} subscriber(s)", err=True)


@subscribers_group.command("show")
@click.argument("email")
@pass_ctx
def subscribers_show(c: Context, email: str) -> None:
    """Print everything stored about one person, as JSON.

    \b
    Example:
      publisher subscribers show reader@example.com
    """
    from subscribers import show
    from subscribers.service import to_json

    data = show(c.store, email)
    if data is None:
        raise PublisherError(f"no subscriber {email!r}; see `publisher subscribers list`.")
    click.echo(to_json(data))


@subscribers_group.command("forget")
@click.argument("email")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@pass_ctx
def subscribers_forget(c: Context, email: str, yes: bool) -> None:
    """Erase a person's data, and their copies in the local outbox; only a hash of the address stays, so they are
    never mailed or imported again.

    \b
    Example:
      publisher subscribers forget reader@example.com --yes
    """
    from subscribers import forget

    if not yes:
        click.confirm(f"Erase everything about {email}?", abort=True)
    erased = forget(c.store, email, _now(), outbox=c.cfg.path(c.cfg.delivery.outbox_dir))
    click.echo(f"forgotten: {email}" if erased.found else f"no data for {email}; it is suppressed from now on anyway")
    if erased.outbox_copies:
        click.echo(f"  {erased.outbox_copies} message(s) to them deleted from the outbox {c.cfg.path(c.cfg.delivery.outbox_dir)}/")


@subscribers_group.command("remove")
@click.argument("email")
@pass_ctx
def subscribers_remove(c: Context, email: str) -> None:
    """Unsubscribe an address (it stays suppressed: no import brings it back).

    \b
    Example:
      publisher subscribers remove analyst@example.com
    """
    from subscribers import normalise_email

    addr = normalise_email(email)
    if not c.store.set_subscriber_status(addr, SubscriberStatus.UNSUBSCRIBED, _now()):
        raise PublisherError(f"no subscriber {addr!r}; see `publisher subscribers list`.")
    click.echo(f"unsubscribed: {addr}")
