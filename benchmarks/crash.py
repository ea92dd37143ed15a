"""Crash benchmark: `publisher digest send` killed -9 three times mid-send at full speed, then one more send.

A counting SMTP server (aiosmtpd, in this process) receives the digest for N subscribers over the default 2
connections, on the default configuration (only the relay's address changed). Prints what was lost (must be 0),
the duplicates against their bound (connections x kills: one message in flight per connection per crash), the
time the last send took to finish the issue after the kills, and the rate of an uninterrupted send to the same
server in the same run, for scale.

Run: .venv/bin/python benchmarks/crash.py [--subscribers 5000]
"""

from __future__ import annotations

import argparse
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from send import PUBLISHER, REPO, add_subscribers, env, free_port  # noqa: E402

CONNECTIONS = 2


class Counting:
    def __init__(self) -> None:
        self.delivered: Counter[str] = Counter()
        self.lock = threading.Lock()

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        with self.lock:
            for rcpt in envelope.rcpt_tos:
                self.delivered[rcpt] += 1
        return "250 OK: queued"


def project(tmp: Path, port: int) -> Path:
    for name in ("content", "templates"):
        shutil.copytree(REPO / name, tmp / name)
    text = (REPO / "config.toml").read_text(encoding="utf-8")
    for old, new in (('backend = "outbox"', 'backend = "smtp"'), ('host = "localhost"', 'host = "127.0.0.1"'), ("port = 587", f"port = {port}"),
                     ('security = "starttls"', 'security = "none"'),
                     ('sample_subscribers = ["reader@example.com", "analyst@example.com", "editor@example.com"]', "sample_subscribers = []")):
        text = text.replace(old, new)
    (tmp / "config.toml").write_text(text, encoding="utf-8")
    return tmp


def main() -> None:
    from aiosmtpd.controller import Controller

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subscribers", type=int, default=5000)
    args = parser.parse_args()
    n = args.subscribers
    tmp = Path(tempfile.mkdtemp(prefix="publisher-crash-"))
    handler = Counting()
    port = free_port()
    controller = Controller(handler, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        clean = project(tmp / "clean", port)
        add_subscribers(clean, n)
        t0 = time.perf_counter()
        subprocess.run([PUBLISHER, "digest", "send", "--no-progress"], cwd=clean, env=env(), check=True, capture_output=True)
        rate = n / (time.perf_counter() - t0)
        handler.delivered.clear()

        root = project(tmp / "crash", port)
        add_subscribers(root, n)
        kills = []
        for share in (0.2, 0.45, 0.7):
            proc = subprocess.Popen([PUBLISHER, "digest", "send", "--no-progress"], cwd=root, env=env(),
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            while len(handler.delivered) < share * n and proc.poll() is None:
                time.sleep(0.005)
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            kills.append(len(handler.delivered))
        time.sleep(2)
        t1 = time.perf_counter()
        last = subprocess.run([PUBLISHER, "digest", "send", "--no-progress"], cwd=root, env=env(), capture_output=True, text=True)
        finish = time.perf_counter() - t1
    finally:
        controller.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    emails = [f"reader{i}@example.com" for i in range(n)]
    lost = sum(1 for e in emails if handler.delivered[e] == 0)
    duplicates = sum(max(0, handler.delivered[e] - 1) for e in emails)
    bound = CONNECTIONS * len(kills)
    print(f"crash benchmark: {n:,} subscribers, {CONNECTIONS} SMTP connections, default config, kill -9 at {', '.join(f'{k:,}' for k in kills)} delivered")
    print(f"{'measure':<52}{'value':>12}")
    print(f"{'uninterrupted send, same server (scale)':<52}{rate:>8,.0f} msg/s")
    print(f"{'last send after the kills: exit code':<52}{last.returncode:>12}")
    print(f"{'last send: time to finish the issue':<52}{finish:>10.1f} s")
    print(f"{'lost (subscribers with no copy)':<52}{lost:>12}         target 0      {'OK' if lost == 0 else 'MISSED'}")
    print(f"{'duplicates':<52}{duplicates:>12}         target <= {bound}  {'OK' if duplicates <= bound else 'MISSED'}")


if __name__ == "__main__":
    main()
