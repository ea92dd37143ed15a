"""Issue 14: one test per bug a newcomer met in the first hour, each through the real command on the embedded
defaults (a fresh project: the repository's config.toml, content/ and templates/). The walkthrough
(tests/test_walkthrough.py) runs every documented example in order; these pin each bug on its own.
"""

from __future__ import annotations

import email
import email.policy
import re
import subprocess
import time
import urllib.request
from pathlib import Path

from .test_delivery import free_port
from .test_delivery_faults import PUBLISHER, configure, env_for, publisher


def run_ok(project: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    proc = publisher(project, *args, env=env)
    assert proc.returncode == 0, f"publisher {' '.join(args)} exited {proc.returncode}:\n{proc.stdout}{proc.stderr}"
    return proc


def outbox(project: Path) -> list[email.message.EmailMessage]:
    folder = project / "var" / "outbox" / "new"
    return [email.message_from_bytes(p.read_bytes(), policy=email.policy.default) for p in sorted(folder.iterdir())]  # type: ignore[misc]


def served(project: Path, command: str) -> tuple[subprocess.Popen[bytes], int]:
    """After a first `run --once`: `publisher serve` or `preview` on a free port, its output in <command>.log."""
    run_ok(project, "run", "--once")
    port = free_port()
    with (project / f"{command}.log").open("w") as log:
        return subprocess.Popen([*PUBLISHER, command, "--port", str(port)], cwd=project, env=env_for(), stdout=log,
                                stderr=subprocess.STDOUT), port


def test_forgetting_a_sample_subscriber_leaves_every_command_working(project: Path) -> None:
    run_ok(project, "run", "--once")
    run_ok(project, "subscribers", "forget", "reader@example.com", "--yes")
    for args in (["status"], ["run", "--once"], ["ingest"], ["subscribers", "list"], ["digest", "preview", "--text"]):
        run_ok(project, *args)
    assert "reader@example.com" not in run_ok(project, "subscribers", "list").stdout


def test_on_the_defaults_images_and_links_point_at_the_local_site(project: Path) -> None:
    out = run_ok(project, "run", "--once").stdout
    issue = re.search(r"digest (\S+): 3 sent", out).group(1)  # type: ignore[union-attr]
    web_copy = (project / "public" / "digests" / f"{issue}.html").read_text(encoding="utf-8")
    message = outbox(project)[0]
    html = message.get_body(("html",)).get_content()  # type: ignore[union-attr]
    for where, text in (("web copy", web_copy), ("message", html)):
        images = re.findall(r'<img[^>]+src="([^"]+)"', text)
        assert images and all(src.startswith("http://127.0.0.1:8000/media/") for src in images), (where, images[:3])
        for src in images:  # and each is a file `publisher serve` serves from public/
            assert (project / "public" / src.removeprefix("http://127.0.0.1:8000/")).is_file(), src
    assert f"open http://127.0.0.1:8000/digests/{issue}.html" in out


def test_mail_leaving_the_machine_with_the_local_base_url_is_refused_with_the_fix(project: Path) -> None:
    configure(project, ('backend = "outbox"', 'backend = "smtp"'), ('host = "localhost"', 'host = "smtp.example.net"'))
    proc = publisher(project, "status")
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "site.base_url" in proc.stderr and "smtp.example.net" in proc.stderr and "public address" in proc.stderr
    # A relay on this machine (Mailpit, a test server): the links are read here, so it is allowed.
    configure(project, ('host = "smtp.example.net"', 'host = "127.0.0.1"'))
    run_ok(project, "status")


def test_the_web_copys_tokenless_footer_links_answer_under_serve(project: Path) -> None:
    proc, port = served(project, "serve")
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2).close()
                break
            except OSError:
                assert time.monotonic() < deadline and proc.poll() is None, (project / "serve.log").read_text()
                time.sleep(0.2)
        for path in ("/unsubscribe", "/preferences"):
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
                body = r.read().decode()
            assert r.status == 200 and "link at the bottom" in body and "digest@example.org" in body, body[:500]
    finally:
        proc.terminate()
        assert proc.wait(timeout=30) == 0  # a stop asked for is a success


def test_status_shows_the_last_ingest_and_digest_whoever_ran_them(project: Path) -> None:
    before = run_ok(project, "status").stdout
    assert "ingest: last never" in before and "digest: last never" in before
    run_ok(project, "run", "--once")
    after = run_ok(project, "status").stdout
    assert re.search(r"ingest: last 20\d\d-\d\d-\d\dT\d\d:\d\d:\d\d\+00:00 22 new", after), after
    assert re.search(r"digest: last 20\d\d-\S+ 20\d\d-W\d\d", after), after


def test_a_running_preview_never_changes_what_the_main_job_reports(project: Path) -> None:
    proc, port = served(project, "preview")
    try:
        def page() -> str:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as r:
                    return r.read().decode()
            except OSError:
                return ""

        deadline = time.monotonic() + 30
        while not page():
            assert time.monotonic() < deadline and proc.poll() is None, (project / "preview.log").read_text()
            time.sleep(0.2)
        source = project / "content" / "publications" / "a-new-brief.md"
        source.write_text("---\ntitle: Deterrence in a crowded orbit\ndate: 2026-11-30\ncontent_type: Research Brief\n"
                          "topics: [security-cooperation]\nsummary: What changes when everyone can reach space.\n---\n\nBody.\n",
                          encoding="utf-8")
        deadline = time.monotonic() + 30
        while "Deterrence in a crowded orbit" not in page():  # the preview shows it, live...
            assert time.monotonic() < deadline, "the preview never showed the new file"
            time.sleep(0.3)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    out = run_ok(project, "run", "--once").stdout  # ...and the main job still finds it new
    assert "ingest: 1 new" in out, out


def test_the_development_key_warning_is_said_once_not_by_every_command(project: Path) -> None:
    newcomer = {k: v for k, v in env_for().items() if k != "PUBLISHER_SECRET_KEY"}  # no key set, as on a new machine
    first = run_ok(project, "status", env=newcomer)
    assert first.stderr.count("PUBLISHER_SECRET_KEY is not set") == 1, first.stderr
    for args in (["status"], ["run", "--once"], ["subscribers", "list"]):
        assert "PUBLISHER_SECRET_KEY" not in run_ok(project, *args, env=newcomer).stderr
    assert "signing key: the development key" in run_ok(project, "status", env=newcomer).stdout
    assert "signing key" not in run_ok(project, "status").stdout  # with the key set, nothing to say


def test_digest_send_says_when_it_goes_ahead_of_the_schedule(project: Path) -> None:
    run_ok(project, "run", "--once")  # the first issue: due, since none was sent
    (project / "content" / "publications" / "late.md").write_text(
        "---\ntitle: A late brief\ndate: 2026-11-30\ncontent_type: Research Brief\ntopics: [security-cooperation]\nsummary: Late.\n---\n\nBody.\n",
        encoding="utf-8")
    once = run_ok(project, "run", "--once")
    assert "not due" in once.stdout and "--force-digest" in once.stdout
    sent = run_ok(project, "digest", "send", "--no-progress")
    assert "sent now, ahead of the schedule" in sent.stderr and "3 sent" in sent.stdout, sent.stdout + sent.stderr


def test_subscribers_add_without_confirmed_sends_the_confirmation_now(project: Path) -> None:
    run_ok(project, "ingest")
    out = run_ok(project, "subscribers", "add", "newreader@example.com", "--topic", "security-cooperation").stdout
    assert "confirmation email was sent" in out
    [msg] = [m for m in outbox(project) if str(m["To"]) == "newreader@example.com"]
    assert "/confirm/" in msg.get_body(("plain",)).get_content()  # type: ignore[union-attr]
    listed = run_ok(project, "subscribers", "list").stdout
    assert "newreader@example.com\tpending" in listed


def test_an_unknown_topic_is_refused_with_the_likely_one(project: Path) -> None:
    run_ok(project, "ingest")
    proc = publisher(project, "subscribers", "add", "x@example.com", "--confirmed", "--topic", "securty-cooperation")
    assert proc.returncode == 2 and "unknown topic 'securty-cooperation'; did you mean 'security-cooperation'?" in proc.stderr, proc.stderr
    assert "x@example.com" not in run_ok(project, "subscribers", "list").stdout


def test_subscribers_show_includes_the_send_history(project: Path) -> None:
    import json

    run_ok(project, "run", "--once")
    shown = json.loads(run_ok(project, "subscribers", "show", "analyst@example.com").stdout)
    [sent] = shown["digests"]
    assert sent["status"] == "sent" and sent["message_id"].startswith("<digest.") and sent["attempts"] == 1
    mine = [m for m in outbox(project) if str(m["To"]) == "analyst@example.com"]
    assert [str(m["Message-ID"]) for m in mine] == [sent["message_id"]]


def _together(project: Path, n: int, env: dict[str, str]) -> list[subprocess.CompletedProcess[str]]:
    procs = [subprocess.Popen([*PUBLISHER, "status"], cwd=project, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(n)]
    return [subprocess.CompletedProcess(p.args, p.wait(timeout=120), *p.communicate()) for p in procs]


def test_commands_started_together_on_a_new_sqlite_store_all_work(project: Path) -> None:
    """`serve` and `preview` (or a service and `status`) started at once on a fresh clone each migrated the new
    store, and all but one failed with "table ... already exists"."""
    for done in _together(project, 4, env_for()):
        assert done.returncode == 0, done.stderr


def test_processes_started_together_on_a_new_postgresql_database_all_work(project: Path, postgres_url: str) -> None:
    for done in _together(project, 4, env_for(PUBLISHER_STORE__URL=postgres_url)):
        assert done.returncode == 0, done.stderr


def test_an_import_without_confirmed_sends_each_pending_person_the_confirmation(project: Path) -> None:
    (project / "list.csv").write_text("email\nfirst@example.com\nsecond@example.com\n", encoding="utf-8")
    out = run_ok(project, "subscribers", "import", "list.csv").stdout
    assert "2 pending: confirmation emails sent to 2" in out, out
    got = sorted(str(m["To"]) for m in outbox(project))
    assert got == ["first@example.com", "second@example.com"]
    assert all("/confirm/" in m.get_body(("plain",)).get_content() for m in outbox(project))  # type: ignore[union-attr]
    again = run_ok(project, "subscribers", "import", "list.csv").stdout  # nobody new: nobody mailed again
    assert "pending:" not in again and len(outbox(project)) == 2


def test_a_queued_confirmation_never_reopens_someone_who_left_after_it_was_queued(cfg) -> None:  # type: ignore[no-untyped-def]
    """An import's confirmations go out a batch a minute; someone who unsubscribes (or is suppressed by a later
    import) meanwhile must not be made pending again and mailed when their turn comes."""
    from datetime import datetime, timedelta, timezone

    from publisher.delivery.transactional import drain_signups
    from publisher.models import SubscriberStatus
    from publisher.pipeline import open_project_store
    from subscribers import add_subscriber

    store = open_project_store(cfg)
    now = datetime.now(timezone.utc)
    add_subscriber(store, "later@example.com", now - timedelta(seconds=2))
    store.enqueue_signup("later@example.com", (), now - timedelta(seconds=1))  # queued by the import
    store.set_subscriber_status("later@example.com", SubscriberStatus.UNSUBSCRIBED, now)  # then they left
    done = drain_signups(cfg, store, worker="test")
    assert done == {"unchanged": 1}, done
    assert store.subscriber("later@example.com").status is SubscriberStatus.UNSUBSCRIBED  # type: ignore[union-attr]
    assert not (cfg.path(cfg.delivery.outbox_dir) / "new").exists() or not any((cfg.path(cfg.delivery.outbox_dir) / "new").iterdir())
    store.close()


def test_every_spelling_of_this_machine_counts_as_local() -> None:
    from publisher.config_checks import is_local, is_local_host

    for host in ("localhost", "localhost.", "LOCALHOST", "a.localhost", "127.0.0.1", "127.1", "2130706433", "0x7f000001",
                 "0.0.0.0", "::1", "[::1]", "[::ffff:127.0.0.1]", "0:0:0:0:0:0:0:1", "::"):
        assert is_local_host(host), host
    for host in ("relay.example.com", "127.example.com", "10.0.0.5", "192.168.1.1", "2001:db8::1", ""):
        assert not is_local_host(host), host
    assert is_local("http://127.0.0.1:8000") and is_local("http://[::1]:8000/") and not is_local("https://127.example.com")


def test_run_once_from_cron_retries_the_deferred_recipients_when_their_retry_is_due(project: Path) -> None:
    """`run --once` on a schedule (cron) is the service for some: it must retry stragglers, not only `publisher run`.
    The default wait before a retry ([delivery].retry_first = 1m) is waited out for real."""
    from .smtp_faults import FaultyRelay, relay
    from .test_delivery_faults import smtp_project, with_subscribers

    handler = FaultyRelay(tempfail=1.0)  # every message: 451, try again later
    with relay(handler) as port:
        smtp_project(project, port)
        emails = with_subscribers(project, 3)
        first = publisher(project, "run", "--once", timeout=300)
        assert first.returncode == 3 and "3 deferred" in first.stdout, first.stdout + first.stderr
        handler.tempfail = 0.0  # the relay is well again
        # Each recipient's retry is due about a minute after its own deferral (+-10 %, so that a large deferred batch
        # does not come back all at once): one cron run may take all three, or each run the ones due by then.
        deadline = time.monotonic() + 300
        sent = 0
        while sent < 3:
            assert time.monotonic() < deadline, f"{sent} of 3 retried in 300 s"
            time.sleep(5)
            again = run_ok(project, "run", "--once")
            assert "digest: not due" in again.stdout, again.stdout
            retried = re.search(r"^digest retries: (\d+) sent, 0 deferred, 0 failed", again.stdout, re.M)
            sent += int(retried.group(1)) if retried else 0
    assert sorted(handler.delivered) == sorted(emails)  # each exactly once


def test_taking_out_the_sample_subscribers_line_unsubscribes_them_and_a_real_relay_refuses_it(project: Path) -> None:
    run_ok(project, "run", "--once")
    configure(project, ('backend = "outbox"', 'backend = "smtp"'), ('host = "localhost"', 'host = "smtp.example.net"'),
              ('base_url = "http://127.0.0.1:8000"', 'base_url = "https://www.example.org"'))
    text = (project / "config.toml").read_text(encoding="utf-8")
    samples = 'sample_subscribers = ["reader@example.com", "analyst@example.com", "editor@example.com"]'
    (project / "config.toml").write_text(text.replace("sample_subscribers = []", samples), encoding="utf-8")
    refused = publisher(project, "status")
    assert refused.returncode == 2 and "subscribers.sample_subscribers" in refused.stderr and "remove the" in refused.stderr, refused.stderr
    (project / "config.toml").write_text(text, encoding="utf-8")  # the line taken out, as config.toml says
    listed = run_ok(project, "subscribers", "list").stdout
    for address in ("reader@example.com", "analyst@example.com", "editor@example.com"):
        assert f"{address}\tunsubscribed" in listed, listed


def test_a_new_sqlite_store_is_readable_by_its_owner_only(project: Path) -> None:
    import stat

    run_ok(project, "run", "--once")
    for name in ("publisher.db", "publisher.db-wal", "publisher.db-shm"):
        path = project / "var" / name
        if path.exists():
            assert stat.S_IMODE(path.stat().st_mode) == 0o600, (name, oct(path.stat().st_mode))
    assert (project / "var" / "publisher.db").exists()
