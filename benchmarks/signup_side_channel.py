"""Does the sign-up tell a prober who is subscribed through the site's load? (issue 11, point 3)

The sign-up's own answer is the same for every address (tests/test_signup_abuse.py checks its timing). This
measures the second-order channel a security review found: right after a sign-up, the sender thread does the
sign-up's work in the web app's process, so a prober fetching other pages meanwhile may feel it.

For each trial (new and known addresses in random order, each from its own /24): sign up, then fetch
/feeds/all.atom every 5 ms for 1.3 s and keep the slowest answer. Prints the median of those per kind, and the
AUC: the chance that a trial after a new address is slower than one after a known address (0.5: nothing to tell;
the review measured 0.85 before the sender built the same message for every sign-up).

Runs a real `publisher serve` on the shipped config (only the per-network limit raised, so the trials are not
refused). Noisy on a 2-core machine with other work running: repeat it.

Run: .venv/bin/python benchmarks/signup_side_channel.py [--trials N]
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from publisher.web.threaded import free_port  # noqa: E402
from tests.signup_support import PUBLISHER, client_from, sign_up  # noqa: E402

KEY = "benchmark-signup-side-channel-key-0123456789"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--trials", type=int, default=90, help="trials per kind (default 90)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        project = Path(tmp)
        for name in ("content", "templates"):
            shutil.copytree(REPO / name, project / name)
        shutil.copy(REPO / "config.toml", project / "config.toml")
        env = {k: v for k, v in os.environ.items() if not k.startswith("PUBLISHER_")}
        env |= {"PUBLISHER_SECRET_KEY": KEY, "PUBLISHER_WEB__SIGNUPS_PER_NETWORK": "10000"}
        subprocess.run([PUBLISHER, "run", "--once"], cwd=project, env=env, capture_output=True, check=True)
        port = free_port()
        server = subprocess.Popen([PUBLISHER, "serve", "--port", str(port)], cwd=project, env=env,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            slowest = run_trials(f"http://127.0.0.1:{port}", args.trials)
        finally:
            server.terminate()
            server.wait()
    new, known = slowest["new"], slowest["known"]
    auc = sum((a > b) + 0.5 * (a == b) for a in new for b in known) / (len(new) * len(known))
    print(f"{'after a sign-up of':<22}{'slowest other answer (median)':>32}")
    print(f"{'a new address':<22}{statistics.median(new):>29.2f} ms")
    print(f"{'a known address':<22}{statistics.median(known):>29.2f} ms")
    print(f"AUC (0.5 = nothing to tell): {auc:.2f}   [{len(new)} + {len(known)} trials]")


def run_trials(base: str, trials: int) -> dict[str, list[float]]:
    for _ in range(200):
        try:
            requests.get(f"{base}/subscribe", timeout=1)
            break
        except requests.RequestException:
            time.sleep(0.05)
    probe = requests.Session()
    kinds = ["new"] * trials + ["known"] * trials
    random.shuffle(kinds)
    slowest: dict[str, list[float]] = {"new": [], "known": []}
    for i, kind in enumerate(kinds):
        address = f"fresh{i}.{random.randrange(10**9)}@example.net" if kind == "new" else "reader@example.com"
        sign_up(client_from(f"127.{100 + i // 250}.{i % 250}.1"), base, address)
        worst, end = 0.0, time.monotonic() + 1.3
        while time.monotonic() < end:
            started = time.perf_counter()
            probe.get(f"{base}/feeds/all.atom", timeout=5)
            worst = max(worst, time.perf_counter() - started)
            time.sleep(0.005)
        slowest[kind].append(worst * 1000)
    return slowest


if __name__ == "__main__":
    main()
