"""`publisher run` as an operator runs it: real processes, a fast schedule, one store, kills and restarts."""

from __future__ import annotations

import mailbox
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import replace
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from publisher.config import Config
from publisher.scheduler import digest_trigger

from .conftest import REPO, TEST_SECRET_KEY

PUBLISHER = str(Path(sys.executable).parent / "publisher")


def test_the_weekly_schedule_keeps_its_local_time_across_daylight_saving(cfg: Config) -> None:
    berlin = replace(cfg, site=replace(cfg.site, timezone="Europe/Berlin"))
    trigger = digest_trigger(berlin)
    tz = ZoneInfo("Europe/Berlin")
    autumn = trigger.get_next_fire_time(None, datetime(2026, 10, 20, 12, tzinfo=tz))  # clocks go back on Oct 25
    spring = trigger.get_next_fire_time(None, datetime(2026, 3, 24, 12, tzinfo=tz))  # clocks go forward on Mar 29
    assert (autumn.isoformat(), spring.isoformat()) == ("2026-10-26T08:00:00+01:00", "2026-03-30T08:00:00+02:00")


class Service:
    """A `publisher run` process whose log lines are collected as they come."""

    def __init__(self, root: Path) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PUBLISHER_")} | {"PUBLISHER_SECRET_KEY": TEST_SECRET_KEY}
        self.proc = subprocess.Popen([PUBLISHER, "run"], cwd=root, env=env, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
        self.lines: list[str] = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()
        self.started = time.monotonic()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line)

    def wait_for(self, text: str, timeout: float = 30) -> float:
        """Seconds after start at which a line with ``text`` appeared."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if any(text in line for line in self.lines):
                return time.monotonic() - self.started
            if self.proc.poll() is not None and not self.reader.is_alive():
                break
            time.sleep(0.05)
        raise AssertionError(f"no {text!r} within {timeout} s; log:\n{''.join(self.lines)}")

    def stop(self, sig: int = signal.SIGTERM) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        code = self.proc.wait(timeout=60)
        self.reader.join(timeout=5)
        if self.proc.stderr is not None and not self.reader.is_alive():
            self.proc.stderr.close()
        return code


def project(tmp_path: Path, **settings: str) -> Path:
    for name in ("content", "templates"):
        shutil.copytree(REPO / name, tmp_path / name)
    text = (REPO / "config.toml").read_text(encoding="utf-8")
    for key, value in settings.items():
        text = "\n".join(f'{key} = "{value}"' if line.split("=")[0].strip() == key else line for line in text.splitlines()) + "\n"
    (tmp_path / "config.toml").write_text(text, encoding="utf-8")
    return tmp_path


def delivered(root: Path) -> Counter[str]:
    folder = root / "var" / "outbox"
    return Counter(m["To"] for m in mailbox.Maildir(folder, create=False)) if folder.exists() else Counter()


def test_a_fast_schedule_sends_the_digest_and_two_schedulers_send_it_once(tmp_path: Path) -> None:
    root = project(tmp_path, schedule="every 3s", lease="2s", ingest_every="1h")
    first = Service(root)
    first.wait_for("scheduler started")
    second = Service(root)
    try:
        second.wait_for("standby")
        first.wait_for("digest 20")  # "digest 2026-W48: 3 sent, ..."
        deadline = time.monotonic() + 20
        while sum(delivered(root).values()) < 3 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert delivered(root) == Counter({"reader@example.com": 1, "analyst@example.com": 1, "editor@example.com": 1})
        first.stop(signal.SIGKILL)  # it dies without releasing the lease
        second.wait_for("scheduler started", timeout=20)  # the standby takes over once the lease runs out
        second.wait_for("nothing new since the last issue", timeout=20)  # its digest job runs, and sends nothing twice
        assert delivered(root) == Counter({"reader@example.com": 1, "analyst@example.com": 1, "editor@example.com": 1})
    finally:
        first.stop(signal.SIGKILL)
        assert second.stop() == 0
    assert "stopped" in "".join(second.lines)


@pytest.mark.parametrize("grace, caught_up", [("6h", True), ("1s", False)])
def test_a_digest_missed_while_stopped_is_caught_up_within_the_grace(tmp_path: Path, grace: str, caught_up: bool) -> None:
    root = project(tmp_path, schedule="every 8s", misfire_grace=grace, ingest_every="1h", lease="2s")
    service = Service(root)
    service.wait_for("scheduler started")
    assert service.stop() == 0  # before its first digest, due 8 s after the start
    assert not any("digest 20" in line for line in service.lines)
    time.sleep(10.5)  # that run is missed; the next regular one is 16 s after the first start
    again = Service(root)
    try:
        started = again.wait_for("scheduler started")
        if caught_up:
            # At once: well before the next regular run, which is at least 4 s away.
            assert again.wait_for("digest 20", timeout=10) - started < 2.5
            assert sum(delivered(root).values()) == 3
        else:
            again.wait_for("was missed by", timeout=10)  # APScheduler's own line for a run past its grace
            assert sum(delivered(root).values()) == 0
    finally:
        again.stop()
