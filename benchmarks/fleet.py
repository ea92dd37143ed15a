"""The fleet (engine = "celery"): throughput of one and two `publisher worker` processes, and memory as the list grows.

Real processes on this machine: PostgreSQL, RabbitMQ, Postfix's smtp-sink, the coordinator (`publisher digest send`)
and the workers. Prints, from one run:
- throughput to smtp-sink for N subscribers: the one-machine engine (engine = "threads", the baseline), one worker,
  two workers (target: two workers >= 1.5x one, or the figures that show what bounds it);
- peak RSS of the coordinator and of a worker at a small and a large list (target: within 1.5x). At the large size the
  coordinator is measured through its whole walk (every row queued, every task sent) and a worker through its first
  `--large-sent` messages; then both are stopped (SIGTERM), since sending a million messages takes this machine
  twenty minutes and the memory of neither depends on how far the send has gone.

Run: .venv/bin/python benchmarks/fleet.py [--messages 20000] [--small 10000] [--large 1000000]
Needs: apt-get install postfix (smtp-sink); PostgreSQL on 127.0.0.1:5432 (trust); RabbitMQ on 127.0.0.1:5672 (guest).
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import psycopg  # noqa: E402
from send import PUBLISHER, SOURCE, free_port, project, start_sink  # noqa: E402

PG = "postgresql://postgres@127.0.0.1:5432"
BROKER = os.environ.get("PUBLISHER_TEST_BROKER_URL", "amqp://guest:guest@127.0.0.1:5672//")


def fleet_env(db: str, engine: str = "celery") -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("PUBLISHER_")} | {
        "PUBLISHER_SECRET_KEY": "benchmark-only-signing-key-0123456789",
        "PUBLISHER_STORE__URL": f"postgresql+psycopg://postgres@127.0.0.1:5432/{db}",
        "PUBLISHER_DELIVERY__ENGINE": engine, "PUBLISHER_BROKER_URL": BROKER,
        "PUBLISHER_DELIVERY__TASK_QUEUE": f"bench-{db}",
    }


class Setup:
    """A fresh database with ``n`` subscribers (bulk SQL) and a project folder whose relay is smtp-sink."""

    def __init__(self, tmp: Path, port: int, n: int) -> None:
        self.db = f"bench_{uuid.uuid4().hex[:10]}"
        with psycopg.connect(f"{PG}/postgres", autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{self.db}"')
        (tmp / self.db).mkdir()
        self.root = project(tmp / self.db, port)
        self.env = fleet_env(self.db)
        subprocess.run([PUBLISHER, "ingest"], cwd=self.root, env=self.env, check=True, capture_output=True)
        with psycopg.connect(f"{PG}/{self.db}") as conn:
            conn.execute("INSERT INTO subscribers (email, status, created_at, updated_at, confirmed_at) "
                         "SELECT 'reader' || i || '@example.com', 'active', now() - interval '1 day', now() - interval '1 day', "
                         "now() - interval '1 day' FROM generate_series(1, %s) AS i", (n,))
            conn.execute("ANALYZE")

    def sent(self) -> tuple[int, int]:
        """(rows of the issue in the send log, rows sent)."""
        with psycopg.connect(f"{PG}/{self.db}") as conn:
            row = conn.execute("SELECT count(*), count(*) FILTER (WHERE status = 'sent') FROM send_log").fetchone()
        return int(row[0]), int(row[1])

    def drop(self) -> None:
        with psycopg.connect(f"{PG}/postgres", autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{self.db}" WITH (FORCE)')


def peak_rss(pid: int) -> int:
    """VmHWM (KiB): the process's peak resident set so far."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return 0


def cpu_seconds(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def group_cpu(name: str) -> float:
    """CPU seconds so far of every process whose command line holds ``name`` (PostgreSQL's backends, RabbitMQ)."""
    total = 0.0
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if name in (entry / "cmdline").read_bytes().decode(errors="replace"):
                    total += cpu_seconds(int(entry.name))
            except OSError:
                continue
    return total


CPU: dict[str, float] = {}  # the last run's CPU seconds by part (and its message size), for the table


def start(setup: Setup, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    log = (setup.root / f"{args[0]}-{time.monotonic_ns()}.log").open("wb")
    return subprocess.Popen([PUBLISHER, *args], cwd=setup.root, env=env or setup.env, stdout=log, stderr=subprocess.STDOUT)


def stop(procs: list[subprocess.Popen[bytes]]) -> None:
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    for p in procs:
        try:
            p.wait(timeout=60)
        except subprocess.TimeoutExpired:
            p.kill()


def wait_workers(setup: Setup, n: int) -> None:
    for _ in range(300):
        out = subprocess.run([PUBLISHER, "status"], cwd=setup.root, env=setup.env, capture_output=True, text=True).stdout
        if f"workers: {n} alive" in out:
            return
        time.sleep(0.2)
    raise RuntimeError(f"{n} workers did not come up")


def throughput(tmp: Path, port: int, n: int, workers: int) -> tuple[float, int, list[int]]:
    """(seconds for `digest send`, coordinator peak RSS KiB, worker peak RSS KiB each); workers 0: engine "threads"."""
    setup = Setup(tmp, port, n)
    try:
        env = setup.env if workers else fleet_env(setup.db, "threads")
        procs = [start(setup, "worker", "--name", f"w{i}") for i in range(workers)]
        if workers:
            wait_workers(setup, workers)
        size = len(subprocess.run([PUBLISHER, "digest", "preview", "--eml"], cwd=setup.root, env=setup.env,
                                  capture_output=True, check=True).stdout)  # the issue about to go out, for smtp-source
        before = {"postgres": group_cpu("postgres"), "rabbitmq": group_cpu("beam.smp"), "smtp-sink": group_cpu("smtp-sink"),
                  "workers": sum(cpu_seconds(p.pid) for p in procs)}
        t0 = time.perf_counter()
        coordinator = start(setup, "digest", "send", "--no-progress", env=env)
        coordinator_rss, coordinator_cpu = 0, 0.0
        while coordinator.poll() is None:
            coordinator_rss = max(coordinator_rss, peak_rss(coordinator.pid))
            coordinator_cpu = max(coordinator_cpu, cpu_seconds(coordinator.pid))
            time.sleep(0.05)
        took = time.perf_counter() - t0
        worker_rss = [peak_rss(p.pid) for p in procs]
        after = {"postgres": group_cpu("postgres"), "rabbitmq": group_cpu("beam.smp"), "smtp-sink": group_cpu("smtp-sink"),
                 "workers": sum(cpu_seconds(p.pid) for p in procs)}
        CPU.clear()
        CPU.update({k: after[k] - before[k] for k in after} | {"coordinator": coordinator_cpu, "wall": took})
        CPU["message_bytes"] = size
        stop(procs)
        rows, sent = setup.sent()
        if coordinator.returncode != 0 or sent != n:
            raise RuntimeError(f"send failed: exit {coordinator.returncode}, {sent} of {n} sent; see {setup.root}")
        return took, coordinator_rss, worker_rss
    finally:
        setup.drop()


def memory_at(tmp: Path, port: int, n: int, sent_target: int) -> tuple[int, int, float]:
    """(coordinator peak RSS KiB over its whole walk, worker peak RSS KiB over its first ``sent_target`` messages, walk s)."""
    setup = Setup(tmp, port, n)
    try:
        worker = start(setup, "worker", "--name", "w0")
        wait_workers(setup, 1)
        t0 = time.perf_counter()
        coordinator = start(setup, "digest", "send", "--no-progress")
        walked = 0.0
        c_rss = w_rss = 0
        while coordinator.poll() is None:
            c_rss, w_rss = max(c_rss, peak_rss(coordinator.pid)), max(w_rss, peak_rss(worker.pid))
            rows, sent = setup.sent()
            if rows >= n and not walked:
                walked = time.perf_counter() - t0
            if walked and sent >= min(sent_target, n):
                time.sleep(3.0)  # a few of the coordinator's looks at the send log after the walk
                c_rss, w_rss = max(c_rss, peak_rss(coordinator.pid)), max(w_rss, peak_rss(worker.pid))
                break
            time.sleep(0.5)
        stop([coordinator, worker])
        return c_rss, w_rss, walked
    finally:
        setup.drop()


def report_throughput(tmp: Path, port: int, n: int) -> None:
    print(f"fleet benchmark: {n:,} subscribers, sample digest, smtp-sink on loopback, 2 SMTP connections per sender, {os.cpu_count()} cores")
    rows = [("threads (one process, baseline)", *throughput(tmp, port, n, 0))]
    cpu = [dict(CPU)]
    for w in (1, 2):
        rows.append((f"celery, {w} worker{'s' if w > 1 else ''}", *throughput(tmp, port, n, w)))
        cpu.append(dict(CPU))
    base, one = rows[0][1], rows[1][1]
    print(f"{'engine':34} {'seconds':>8} {'msg/s':>8} {'vs threads':>10} {'vs 1 worker':>11} {'coord MiB':>9} {'worker MiB':>10}")
    for name, took, c_rss, w_rss in rows:
        print(f"{name:34} {took:8.1f} {n / took:8.0f} {base / took:10.2f} {one / took:11.2f} {c_rss / 1024:9.0f} "
              f"{'/'.join(f'{r / 1024:.0f}' for r in w_rss) or '-':>10}")
    print(f"two workers / one worker: {one / rows[2][1]:.2f} (target >= 1.5)")
    # The sink's own ceiling: Postfix's C load generator with as many sessions as one worker (2) and two workers (4) open.
    size = CPU["message_bytes"]
    for sessions in (2, 4):
        t0 = time.perf_counter()
        subprocess.run([SOURCE, "-s", str(sessions), "-m", str(n), "-l", str(int(size)), "-f", "digest@example.org", "-t", "reader@example.com",
                        f"127.0.0.1:{port}"], check=True, capture_output=True)
        print(f"smtp-source, {sessions} sessions, {n:,} messages of {size:,.0f} bytes: {n / (time.perf_counter() - t0):.0f} msg/s "
              "(the sink's ceiling on this machine)")
    print("CPU seconds per part over each send (what bounds it: cores busy = total / wall; this machine has "
          f"{os.cpu_count()}):")
    parts = ("coordinator", "workers", "postgres", "rabbitmq", "smtp-sink")
    print(f"{'engine':34} " + " ".join(f"{p:>11}" for p in parts) + f" {'cores busy':>10}")
    for (name, *_), c in zip(rows, cpu, strict=True):
        print(f"{name:34} " + " ".join(f"{c[p]:11.1f}" for p in parts) + f" {sum(c[p] for p in parts) / c['wall']:10.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--small", type=int, default=10_000)
    parser.add_argument("--large", type=int, default=1_000_000)
    parser.add_argument("--large-sent", type=int, default=20_000)
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument("--skip-throughput", action="store_true")
    args = parser.parse_args()
    port = free_port()
    sink = start_sink(port)
    try:
        with tempfile.TemporaryDirectory(prefix="publisher-fleet-") as tmp_name:
            tmp = Path(tmp_name)
            if not args.skip_throughput:
                report_throughput(tmp, port, args.messages)
            if args.skip_memory:
                return
            print(f"memory: coordinator over its whole walk, a worker over its first {args.large_sent:,} messages")
            print(f"{'subscribers':>12} {'coordinator MiB':>16} {'worker MiB':>11} {'walk s':>7}")
            mem = []
            for n in (args.small, args.large):
                c, w, walk = memory_at(tmp, port, n, args.large_sent)
                mem.append((c, w))
                print(f"{n:12,} {c / 1024:16.0f} {w / 1024:11.0f} {walk:7.1f}")
            print(f"ratio {args.large:,}/{args.small:,}: coordinator {mem[1][0] / mem[0][0]:.2f}, worker {mem[1][1] / mem[0][1]:.2f} "
                  "(target <= 1.5)")
    finally:
        sink.terminate()


if __name__ == "__main__":
    main()
