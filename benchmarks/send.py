"""Send speed and memory, against Postfix's smtp-sink (Debian package `postfix`, which ships smtp-sink and smtp-source).

Prints, from one run on this machine:
- throughput: the digest (sample content) personalised and sent to N subscribers over 2 SMTP connections
  to smtp-sink, against smtp-source sending the same number of messages of the same size with 2 sessions
  to the same sink in the same run (target: publisher's rate >= 0.9 of smtp-source's, journal per message included);
- memory: peak RSS of `publisher digest send` for 1,000 and for 100,000 subscribers (target: at most 1.5x).

Run: .venv/bin/python benchmarks/send.py [--messages 5000] [--memory-small 1000] [--memory-large 100000]
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
SINK, SOURCE = shutil.which("smtp-sink") or "/usr/sbin/smtp-sink", shutil.which("smtp-source") or "/usr/sbin/smtp-source"
PUBLISHER = str(Path(sys.executable).parent / "publisher")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_sink(port: int) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen([SINK, "-u", os.environ.get("USER", "root"), f"127.0.0.1:{port}", "256"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return proc
        except OSError:
            time.sleep(0.05)
    raise RuntimeError("smtp-sink did not start")


def project(tmp: Path, port: int) -> Path:
    for name in ("content", "templates"):
        shutil.copytree(REPO / name, tmp / name)
    text = (REPO / "config.toml").read_text(encoding="utf-8")
    for old, new in (('backend = "outbox"', 'backend = "smtp"'), ('host = "localhost"', 'host = "127.0.0.1"'), ("port = 587", f"port = {port}"),
                     ('security = "starttls"', 'security = "none"'), ("batch_size = 50", "batch_size = 200"),
                     ('sample_subscribers = ["reader@example.com", "analyst@example.com", "editor@example.com"]', "sample_subscribers = []")):
        text = text.replace(old, new)
    (tmp / "config.toml").write_text(text, encoding="utf-8")
    return tmp


def env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("PUBLISHER_")} | {"PUBLISHER_SECRET_KEY": "benchmark-only-signing-key-0123456789"}


def add_subscribers(root: Path, n: int) -> None:
    """Straight into the store (a bulk insert; importing a CSV of 100,000 rows is not what is measured here)."""
    subprocess.run([PUBLISHER, "ingest"], cwd=root, env=env(), check=True, capture_output=True)
    db = sqlite3.connect(root / "var" / "publisher.db")
    joined = (datetime.now(timezone.utc) - timedelta(days=1)).strftime("%Y-%m-%d %H:%M:%S.000000")
    db.executemany("INSERT INTO subscribers (email, status, created_at, updated_at, confirmed_at) VALUES (?, 'active', ?, ?, ?)",
                   ((f"reader{i}@example.com", joined, joined, joined) for i in range(n)))
    db.commit()
    db.close()


def send(root: Path) -> tuple[float, int, str]:
    """Wall time, peak RSS (KiB) and output of one `publisher digest send` process."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(["/usr/bin/time", "-f", "MAXRSS %M", PUBLISHER, "digest", "send", "--no-progress"], cwd=root, env=env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out, err = proc.communicate(timeout=3600)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(err)
    rss = int(re.search(r"MAXRSS (\d+)", err).group(1))  # type: ignore[union-attr]
    return wall, rss, out


def message_size(root: Path) -> int:
    out = subprocess.run([PUBLISHER, "digest", "preview", "--eml"], cwd=root, env=env(), check=True, capture_output=True).stdout
    return len(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=5000)
    parser.add_argument("--memory-small", type=int, default=1000)
    parser.add_argument("--memory-large", type=int, default=100_000)
    args = parser.parse_args()
    if not (Path(SINK).exists() and Path(SOURCE).exists()):
        sys.exit("smtp-sink and smtp-source are needed: apt-get install postfix")

    port = free_port()
    sink = start_sink(port)
    try:
        tmp = Path(tempfile.mkdtemp(prefix="publisher-send-"))
        root = project(tmp / "throughput", port)
        add_subscribers(root, args.messages)
        size = message_size(root)
        t0 = time.perf_counter()
        subprocess.run([SOURCE, "-s", "2", "-m", str(args.messages), "-l", str(size), "-f", "digest@example.org",
                        "-t", "reader@example.com", f"127.0.0.1:{port}"], check=True, capture_output=True)
        source_s = time.perf_counter() - t0
        wall, _, out = send(root)
        sent = int(re.search(r"(\d+) sent", out).group(1))  # type: ignore[union-attr]

        rows = []
        for n in (args.memory_small, args.memory_large):
            r = project(tmp / f"memory-{n}", port)
            add_subscribers(r, n)
            m_wall, rss, m_out = send(r)
            rows.append((n, rss, m_wall, m_out.splitlines()[0]))
    finally:
        sink.terminate()
        sink.wait()
    src_rate, pub_rate = args.messages / source_s, sent / wall
    print(f"send benchmark: sample digest, {size:,}-byte messages, 2 SMTP connections to smtp-sink on loopback")
    print(f"{'measure':<48}{'value':>18}")
    print(f"{'smtp-source, 2 sessions, same size and count':<48}{src_rate:>12,.0f} msg/s   ({args.messages:,} in {source_s:.1f} s)")
    print(f"{'publisher digest send (whole process)':<48}{pub_rate:>12,.0f} msg/s   ({sent:,} in {wall:.1f} s)")
    ratio = pub_rate / src_rate
    print(f"{'publisher / smtp-source':<48}{ratio:>12.2f}         target >= 0.90  {'OK' if ratio >= 0.9 else 'MISSED'}")
    for n, rss, m_wall, _ in rows:
        print(f"{f'peak RSS, {n:,} subscribers':<48}{rss / 1024:>12.1f} MiB     ({m_wall:.1f} s)")
    growth = rows[1][1] / rows[0][1]
    print(f"{'peak RSS large / small':<48}{growth:>12.2f}         target <= 1.50  {'OK' if growth <= 1.5 else 'MISSED'}")
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
