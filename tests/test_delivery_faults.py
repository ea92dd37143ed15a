"""Issue 12's acceptance: delivery finishes what it starts, by itself, on the default configuration.

Real `publisher` processes, killed with real signals, against a real SMTP server (aiosmtpd on a free port) that
misbehaves on purpose. The only settings changed are the ones an operator changes to point at a relay
(backend, host, port, security) or at a provider; no timeout, lease or retry wait is shortened.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from .conftest import TEST_SECRET_KEY
from .smtp_faults import FaultyRelay, relay

PUBLISHER = [str(Path(sys.executable).parent / "publisher")]
SAMPLES = 'sample_subscribers = ["reader@example.com", "analyst@example.com", "editor@example.com"]'
CONNECTIONS = 2  # the default [delivery.smtp].connections


def env_for(**extra: str) -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("PUBLISHER_")} | {"PUBLISHER_SECRET_KEY": TEST_SECRET_KEY, **extra}


def configure(project: Path, *replacements: tuple[str, str]) -> None:
    text = (project / "config.toml").read_text(encoding="utf-8")
    for old, new in (((SAMPLES, "sample_subscribers = []"),) if SAMPLES in text else ()) + replacements:
        assert old in text, old
        text = text.replace(old, new)
    (project / "config.toml").write_text(text, encoding="utf-8")


def smtp_project(project: Path, port: int) -> None:
    configure(project, ('backend = "outbox"', 'backend = "smtp"'), ('host = "localhost"', 'host = "127.0.0.1"'),
              ("port = 587", f"port = {port}"), ('security = "starttls"', 'security = "none"'))


def publisher(project: Path, *args: str, env: dict[str, str] | None = None, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*PUBLISHER, *args], cwd=project, env=env or env_for(), capture_output=True, text=True, timeout=timeout)


def start(project: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    """A background process whose output goes to a file (a pipe nobody reads would fill and stall it): see ``output``."""
    with (project / f"{args[0]}.log").open("a", encoding="utf-8") as log:
        return subprocess.Popen([*PUBLISHER, *args], cwd=project, env=env or env_for(), stdout=log, stderr=subprocess.STDOUT, text=True)


def output(project: Path, proc: subprocess.Popen[str]) -> str:
    return (project / f"{proc.args[1]}.log").read_text(encoding="utf-8")[-4000:]  # type: ignore[index]


def with_subscribers(project: Path, n: int, env: dict[str, str] | None = None) -> list[str]:
    emails = [f"reader{i}@example.com" for i in range(n)]
    (project / "list.csv").write_text("email\n" + "".join(e + "\n" for e in emails), encoding="utf-8")
    for args in (["ingest"], ["subscribers", "import", "list.csv", "--confirmed"]):
        proc = publisher(project, *args, env=env)
        assert proc.returncode == 0, proc.stderr
    return emails


def wait_for(condition: Any, timeout: float, proc: subprocess.Popen[str] | None = None) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        if proc is not None and proc.poll() is not None:
            return bool(condition())
        time.sleep(0.02)
    return bool(condition())


def kill9(proc: subprocess.Popen[str]) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)


def statuses(project: Path) -> dict[str, str]:
    listed = publisher(project, "subscribers", "list").stdout
    return dict(line.split("\t")[:2] for line in listed.splitlines() if "\t" in line)


def delivered(handler: FaultyRelay) -> int:
    return len(handler.delivered)


def duplicates(handler: FaultyRelay, emails: list[str]) -> int:
    return sum(max(0, handler.delivered[e] - 1) for e in emails)


@contextmanager
def service(project: Path, env: dict[str, str] | None = None) -> Iterator[subprocess.Popen[str]]:
    proc = start(project, "run", env=env)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=40)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
                pytest.fail("`publisher run` did not stop within 40 s of SIGTERM")


# -- 1. resume at once ----------------------------------------------------------------------------------


def test_the_service_killed_mid_send_and_restarted_delivers_everyone_once_within_a_minute(project: Path) -> None:
    handler = FaultyRelay(delay=0.002)
    with relay(handler) as port:
        smtp_project(project, port)
        emails = with_subscribers(project, 3000)
        first = start(project, "digest", "send", "--no-progress")  # the operator starts the issue...
        assert wait_for(lambda: delivered(handler) >= 300, 60, first), output(project, first)
        kill9(first)  # ...and it dies (a deploy, an OOM kill)
        with service(project) as run:  # the service comes up: it resumes the interrupted issue at once
            assert wait_for(lambda: delivered(handler) >= 1200, 60, run), output(project, run)
            kill9(run)  # killed -9 mid-send, as a crash would
            at_kill = delivered(handler)
        time.sleep(5)  # systemd's RestartSec
        restarted = time.monotonic()
        with service(project) as run:
            done = wait_for(lambda: delivered(handler) == len(emails), 60, run)
            took = time.monotonic() - restarted
            time.sleep(2)  # nothing more arrives once everyone has it
            run.send_signal(signal.SIGTERM)
            stopped = time.monotonic()
            run.wait(timeout=40)
            assert time.monotonic() - stopped < 10, "SIGTERM took too long"
            out = output(project, run)
    assert done, f"{delivered(handler)} of {len(emails)} delivered a minute after the restart ({at_kill} at the kill)\n{out[-3000:]}"
    assert duplicates(handler, emails) <= CONNECTIONS * 2, (duplicates(handler, emails), took)  # one in flight per connection per kill
    assert run.returncode == 0, out[-2000:]
    status = publisher(project, "status")
    assert "last issue:" in status.stdout and "3000 sent" in status.stdout, status.stdout
    assert "digest: last never" not in status.stdout


# -- 2. retries by itself ----------------------------------------------------------------------------


class Greylist(FaultyRelay):
    """Answers 451 4.7.1 to every recipient until ``until`` (a monotonic time), then accepts."""

    def __init__(self, seconds: float) -> None:
        super().__init__()
        self.until = time.monotonic() + seconds
        self.greylisted = 0

    async def handle_RCPT(self, server: Any, session: Any, envelope: Any, address: str, rcpt_options: list[str]) -> str:
        if time.monotonic() < self.until:
            self.greylisted += 1
            return "451 4.7.1 <%s>: Recipient address rejected: Greylisted, see https://postgrey.schweikert.ch/" % address
        return await super().handle_RCPT(server, session, envelope, address, rcpt_options)


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    mount = tmp_path / "small-disk"
    mount.mkdir()
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=512k", "tmpfs", str(mount)], capture_output=True, text=True)
    if made.returncode != 0:
        if os.environ.get("CI"):
            pytest.fail(f"CI runs as root and must be able to mount a tmpfs for the full-disk test: {made.stderr}")
        pytest.skip(f"cannot mount a small tmpfs here (needs root): {made.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def outbox_recipients(outbox: Path) -> list[str]:
    import email
    import email.policy

    return [str(email.message_from_bytes(p.read_bytes(), policy=email.policy.default)["To"]) for p in sorted((outbox / "new").glob("*"))]


def test_a_full_disk_mid_send_ends_the_send_at_once_and_a_later_send_delivers_everyone_once(project: Path, small_disk: Path) -> None:
    outbox = small_disk / "outbox"
    configure(project, ('outbox_dir = "var/outbox"', f'outbox_dir = "{outbox}"'))
    emails = with_subscribers(project, 60)
    began = time.monotonic()
    full = publisher(project, "digest", "send", "--no-progress", timeout=60)
    took = time.monotonic() - began
    assert full.returncode == 4, full.stdout + full.stderr
    assert "No space left on device" in full.stderr and took < 20, (took, full.stderr)
    assert 0 < len(outbox_recipients(outbox)) < len(emails)
    subprocess.run(["mount", "-o", "remount,size=64m", str(small_disk)], check=True)  # the operator frees space
    again = publisher(project, "digest", "send", "--no-progress")
    assert again.returncode == 0, again.stdout + again.stderr
    got = outbox_recipients(outbox)
    assert sorted(got) == sorted(emails), (len(got), len(set(got)))  # everyone, once


def test_a_transport_that_cannot_be_built_ends_the_send_at_once_and_the_fixed_key_delivers_everyone_once(project: Path) -> None:
    """SendGrid with a key pasted with a space in it: the adapter refuses to be built (the worker thread died and the
    process hung for ever before this issue)."""
    from .servers import recording_server

    with recording_server(lambda method, path, body: (202, {}, b"")) as (base, requests):
        configure(project, ('backend = "outbox"', 'backend = "sendgrid"'), ('base_url = ""', f'base_url = "{base}"'))
        emails = with_subscribers(project, 50, env=env_for(PUBLISHER_API_KEY="SG.key"))
        began = time.monotonic()
        broken = publisher(project, "digest", "send", "--no-progress", env=env_for(PUBLISHER_API_KEY="SG. key"), timeout=60)
        took = time.monotonic() - began
        assert broken.returncode == 4 and took < 20, (took, broken.stdout, broken.stderr)
        assert "API key" in broken.stderr and "SG. key" not in broken.stderr + broken.stdout
        assert requests == []
        fixed = publisher(project, "digest", "send", "--no-progress", env=env_for(PUBLISHER_API_KEY="SG.key"))
    assert fixed.returncode == 0, fixed.stdout + fixed.stderr
    sent_to = [to["email"] for r in requests for p in json.loads(r["body"])["personalizations"] for to in p["to"]]
    assert sorted(sent_to) == sorted(emails)


# -- 5. kill -9 three times at full speed -----------------------------------------------------------------


def test_kill_9_three_times_at_full_speed_then_one_send_loses_nothing_and_duplicates_at_most_one_per_connection(project: Path) -> None:
    handler = FaultyRelay()
    with relay(handler) as port:
        smtp_project(project, port)
        emails = with_subscribers(project, 3000)
        kills = []
        for target in (400, 1200, 2000):
            proc = start(project, "digest", "send", "--no-progress")
            assert wait_for(lambda: delivered(handler) >= target, 90, proc), output(project, proc)
            kill9(proc)
            kills.append(delivered(handler))
        time.sleep(2)  # "seconds after": no heartbeat has to go stale
        done = publisher(project, "digest", "send", "--no-progress")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "stays open" not in done.stdout, done.stdout
    assert all(handler.delivered[e] >= 1 for e in emails), [e for e in emails if not handler.delivered[e]][:5]
    assert duplicates(handler, emails) <= CONNECTIONS * len(kills), (duplicates(handler, emails), kills)


# -- SIGTERM on a relay that stopped answering --------------------------------------------------------


def test_sigterm_ends_a_send_stuck_on_a_silent_relay_within_the_smtp_timeout(project: Path) -> None:
    """The relay takes the message and never answers: SIGTERM ends the process within [delivery.smtp].timeout (30 s,
    the default) plus a few seconds, the message in flight is left for the next run, and that run sends everyone once."""
    handler = FaultyRelay(delay=3600)
    with relay(handler) as silent:
        smtp_project(project, silent)
        emails = with_subscribers(project, 20)
        proc = start(project, "digest", "send", "--no-progress")
        # Both connections waiting for the relay's answer to DATA (a fixed sleep raced the start of a loaded machine:
        # SIGTERM came before the send had begun, and the default action killed it with nothing said)
        assert wait_for(lambda: len(handler.arrivals) >= CONNECTIONS, 60, proc), output(project, proc)
        proc.send_signal(signal.SIGTERM)
        began = time.monotonic()
        try:
            proc.wait(timeout=45)
        except subprocess.TimeoutExpired:
            proc.kill()
            pytest.fail(f"`digest send` still running 45 s after SIGTERM:\n{output(project, proc)}")
        took = time.monotonic() - began
    assert took < 30 + 5, took
    assert "SIGTERM: finishing the messages in flight" in output(project, proc)
    quick = FaultyRelay()
    with relay(quick) as port:
        configure(project, (f"port = {silent}", f"port = {port}"))  # the operator points it at a working relay
        again = publisher(project, "digest", "send", "--no-progress")
    assert again.returncode == 0, again.stdout + again.stderr
    assert all(quick.delivered[e] == 1 for e in emails)


# -- a retry killed -9 ------------------------------------------------------------------------------------


def test_a_retry_killed_mid_way_is_finished_by_the_next_send(project: Path) -> None:
    """The issue has gone out with everyone deferred; a `digest send` retrying them is killed -9 half-way: the next
    one delivers the rest (the dead retry's rows are handed back, not left queued on an issue that has gone out)."""
    handler = Greylist(seconds=3600)
    with relay(handler) as port:
        smtp_project(project, port)
        emails = with_subscribers(project, 200)
        first = publisher(project, "digest", "send", "--no-progress")
        assert first.returncode == 3, first.stdout + first.stderr
        handler.until = time.monotonic()  # the relay recovers
        handler.delay = 0.01
        retry = start(project, "digest", "send", "--no-progress")
        assert wait_for(lambda: delivered(handler) >= 30, 60, retry), output(project, retry)
        kill9(retry)
        handler.delay = 0
        done = publisher(project, "digest", "send", "--no-progress")
    assert done.returncode == 0, done.stdout + done.stderr
    assert all(handler.delivered[e] >= 1 for e in emails), [e for e in emails if not handler.delivered[e]][:5]
    assert duplicates(handler, emails) <= CONNECTIONS
    assert "deferred" not in publisher(project, "status").stdout.split("last issue:")[1].splitlines()[0]
