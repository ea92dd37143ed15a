"""Send-log scaling on PostgreSQL: the claim + record cost of one batch at 1,000,000 subscribers against 10,000.

A worker's work per batch is two transactions: ``claim_batch`` (50 rows of the issue, queued and unclaimed as the
coordinator left them) and ``record_sends`` (the 50 outcomes). Both touch only those 50 rows, so with the right
indexes their cost must not depend on how many subscribers there are, nor on how many rows the send log holds.
This benchmark checks that, and shows the plans, so a reader can see which index each statement uses.

For each size N (each in a fresh schema of the `test` database, migrated by ``open_store``, dropped afterwards):
- N active, confirmed subscribers, and a send log of 2N rows: a previous issue sent to all N (status 'sent'),
  and the current issue queued for all N, unclaimed (as ``queue_rows`` leaves them); bulk SQL, then VACUUM ANALYZE;
- ``range_recipients(issue, lo, lo+499, 50)``, first batch (what a worker reads for a hint), and ``pending_count``
  (the coordinator's poll, once a second: it counts the whole issue, so it may grow with N; reported, no target),
  and ``pending_ranges(..., handed_back_only=True)``, which the coordinator also runs on every poll (reported, no target);
- after 20 warm-up batches, ``claim_batch`` + ``record_sends`` ("sent") of --batches batches of 50 consecutive ids,
  at random non-overlapping positions over the id range (target: median at the largest size / at the smallest <= 1.2).
Then, on the largest size, EXPLAIN (ANALYZE, BUFFERS) of every statement the two calls run (captured from the
engine with their parameters, re-run on a fresh batch in a transaction that is rolled back): the two UPDATEs in
full, the others as one line each. A sequential scan of send_log or subscribers is flagged as a problem.

Run: .venv/bin/python benchmarks/sendlog_scale.py [--sizes 10000,1000000] [--batches 200]
"""

from __future__ import annotations

import argparse
import os
import random
import re
import statistics
import sys
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from sqlalchemy import event

from publisher.store import Store, open_store

PG_URL = os.environ.get("PUBLISHER_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
BATCH = 50  # [delivery].batch_size
TASK = 500  # [delivery].task_size: the ids one hint covers
WARMUP = 20
PREV, ISSUE, RUN = "bench-prev", "bench-issue", "bench-run"
SEQ_SCAN = re.compile(r"Seq Scan on (send_log|subscribers)\b")


def short(n: int) -> str:
    return f"{n // 1_000_000}M" if n % 1_000_000 == 0 else f"{n // 1000}k" if n % 1000 == 0 else f"{n:,}"


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, round(q * (len(xs) - 1)))]


def dsn() -> str:
    return PG_URL.replace("postgresql+psycopg://", "postgresql://")


def create_schema() -> tuple[str, str]:
    import psycopg

    schema = f"bench_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(dsn(), autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
    sep = "&" if "?" in PG_URL else "?"
    return schema, f"{PG_URL}{sep}options=-csearch_path%3D{schema}"


def drop_schema(schema: str) -> None:
    import psycopg

    with psycopg.connect(dsn(), autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


def fill(store: Store, n: int, now: datetime) -> float:
    """N subscribers and 2N send-log rows, by bulk SQL; returns the seconds it took (not part of what is measured)."""
    t0 = time.perf_counter()
    joined = now - timedelta(days=30)
    store.start_issue(PREV, now - timedelta(days=7, hours=1), now - timedelta(days=7))
    store.finish_issue(PREV, now - timedelta(days=7))
    store.start_issue(ISSUE, now - timedelta(hours=1), now - timedelta(minutes=5))
    with store.engine.begin() as conn:
        conn.exec_driver_sql(
            "INSERT INTO send_runs (id, issue_id, started_at, heartbeat_at, finished_at, holder) "
            "VALUES ('bench-prev-run', %(i)s, %(t)s, %(t)s, %(t)s, 'bench:0')", {"i": PREV, "t": now - timedelta(days=7)})
        conn.exec_driver_sql(
            "INSERT INTO subscribers (id, email, status, created_at, updated_at, confirmed_at, confirm_nonce, soft_bounces) "
            "SELECT g, 'reader' || g || '@example.com', 'active', %(j)s, %(j)s, %(j)s, md5(g::text), 0 FROM generate_series(1, %(n)s) g",
            {"j": joined, "n": n})
        conn.exec_driver_sql("SELECT setval(pg_get_serial_sequence('subscribers', 'id'), %(n)s)", {"n": n})
        conn.exec_driver_sql(
            "INSERT INTO send_log (issue_id, subscriber_id, status, message_id, updated_at, error, attempts, claimed_by, deferrals) "
            "SELECT %(i)s::text, g, 'sent', '<' || %(i)s::text || '.' || g || '@example.org>', %(t)s, NULL, 1, 'bench-prev-run', 0 "
            "FROM generate_series(1, %(n)s) g", {"i": PREV, "t": now - timedelta(days=7), "n": n})
        conn.exec_driver_sql(
            "INSERT INTO send_log (issue_id, subscriber_id, status, message_id, updated_at, attempts, claimed_by, deferrals) "
            "SELECT %(i)s::text, g, 'queued', '<' || %(i)s::text || '.' || g || '@example.org>', %(t)s, 0, NULL, 0 "
            "FROM generate_series(1, %(n)s) g", {"i": ISSUE, "t": now - timedelta(minutes=4), "n": n})
    with store.engine.connect() as conn:
        conn = conn.execution_options(isolation_level="AUTOCOMMIT")
        for name in ("subscribers", "send_log", "send_runs", "digest_issues"):
            conn.exec_driver_sql(f"VACUUM ANALYZE {name}")
    return time.perf_counter() - t0


def candidates(slot: int) -> list[tuple[int, str]]:
    lo = slot * BATCH + 1
    return [(sid, f"<{ISSUE}.{sid}@example.org>") for sid in range(lo, lo + BATCH)]


def requeue(store: Store, slot: int) -> None:
    """Put a batch back as the coordinator left it (untimed), so a slot can be measured again."""
    with store.engine.begin() as conn:
        conn.exec_driver_sql("UPDATE send_log SET status = 'queued', claimed_by = NULL, error = NULL, kind = NULL, attempts = 0 "
                             "WHERE issue_id = %(i)s AND subscriber_id BETWEEN %(lo)s AND %(hi)s",
                             {"i": ISSUE, "lo": slot * BATCH + 1, "hi": slot * BATCH + BATCH})


def one_batch(store: Store, slot: int) -> float:
    """claim_batch + record_sends of one batch: seconds."""
    cands = candidates(slot)
    t0 = time.perf_counter()
    now = datetime.now(UTC)
    got = store.claim_batch(ISSUE, RUN, cands, now, now - timedelta(minutes=10), due=None)
    store.record_sends(ISSUE, [(sid, "sent", "", 1, "") for sid in sorted(got)], now, run_id=RUN,
                       retry_in=lambda n: 60.0, soft_bounce_limit=3)
    elapsed = time.perf_counter() - t0
    if len(got) != BATCH:
        raise RuntimeError(f"batch at slot {slot} claimed {len(got)} of {BATCH} rows")
    return elapsed


def timed(fn: Callable[[], Any], repeat: int) -> float:
    xs = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        xs.append(time.perf_counter() - t0)
    return statistics.median(xs)


def first_range_batch(store: Store, lo: int) -> None:
    gen = store.range_recipients(ISSUE, lo, lo + TASK - 1, BATCH)
    got = next(gen)
    gen.close()  # type: ignore[attr-defined]
    if len(got) != BATCH:
        raise RuntimeError(f"range_recipients at {lo} gave {len(got)} rows")


def capture(store: Store, fn: Callable[[], Any]) -> list[tuple[str, Any]]:
    """The (statement, parameters) the engine sends while fn runs; for executemany, the first parameter set."""
    seen: list[tuple[str, Any]] = []

    def listener(conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, executemany: bool) -> None:
        seen.append((statement, parameters[0] if executemany else parameters))

    event.listen(store.engine, "before_cursor_execute", listener)
    try:
        fn()
    finally:
        event.remove(store.engine, "before_cursor_execute", listener)
    return [(s, p) for s, p in seen if re.match(r"\s*(SELECT|UPDATE|INSERT|DELETE)\b", s, re.IGNORECASE) and "pg_advisory" not in s
            and "pg_locks" not in s]


def explain(store: Store, statements: list[tuple[str, str, Any]]) -> list[tuple[str, str, list[str]]]:
    """EXPLAIN (ANALYZE, BUFFERS) of each (label, statement, parameters), in order, in one transaction rolled back."""
    out = []
    with store.engine.connect() as conn:
        tx = conn.begin()
        try:
            for label, stmt, params in statements:
                rows = conn.exec_driver_sql("EXPLAIN (ANALYZE, BUFFERS) " + stmt, params or {}).scalars().all()
                out.append((label, stmt, list(rows)))
        finally:
            tx.rollback()
    return out


def one_line(stmt: str) -> str:
    s = re.sub(r"\s+", " ", stmt).strip()
    s = re.sub(r"(%\([a-z_0-9]+\)s(, )?){4,}", "%(...)s, ", s).replace(", )", ")")
    return s if len(s) <= 110 else s[:107] + "..."


def scans(plan: list[str]) -> str:
    nodes = [re.sub(r"\s+\(cost.*", "", line).strip(" ->") for line in plan
             if re.search(r"(Seq Scan|Index Scan|Index Only Scan|Bitmap Heap Scan|Bitmap Index Scan|Insert on|Conflict Arbiter) ", line)]
    timing = next((line for line in plan if line.startswith("Execution Time")), "")
    return "; ".join(nodes) + (f"  [{timing}]" if timing else "")


def measure(n: int, batches: int, seed: int, want_plans: bool) -> dict[str, Any]:
    schema, url = create_schema()
    store = None
    lock = None
    try:
        store = open_store(url)
        now = datetime.now(UTC)
        fill_s = fill(store, n, now)
        lock = store.hold_run(RUN)
        store.register_run(RUN, ISSUE, now, holder="bench:1")
        rng = random.Random(seed)
        slots_total = n // BATCH

        # Before any batch is sent: the state a worker finds when its hints arrive.
        los = [rng.randrange(slots_total - TASK // BATCH) * BATCH + 1 for _ in range(30)]
        range_ms = statistics.median([timed(lambda lo=lo: first_range_batch(store, lo), 1) for lo in los]) * 1000
        pending_ms = timed(lambda: store.pending_count(ISSUE), 5) * 1000
        pending = store.pending_count(ISSUE)
        handed_ms = timed(lambda: store.pending_ranges(ISSUE, None, TASK, handed_back_only=True), 5) * 1000

        # Non-overlapping batches while there are enough; beyond that, a slot is put back and measured again.
        need = WARMUP + batches + (1 if want_plans else 0)
        order = rng.sample(range(slots_total), min(need, slots_total))
        while len(order) < need:
            order += rng.sample(range(slots_total), min(need - len(order), slots_total))
        used: set[int] = set()
        times = []
        for i, slot in enumerate(order[:WARMUP + batches]):
            if slot in used:
                requeue(store, slot)
            used.add(slot)
            dt = one_batch(store, slot)
            if i >= WARMUP:
                times.append(dt * 1000)
        rows = store.engine.connect()
        try:
            log_rows = rows.exec_driver_sql("SELECT count(*) FROM send_log").scalar_one()
        finally:
            rows.close()

        plans: list[tuple[str, str, list[str]]] = []
        if want_plans:
            slot = order[-1]
            if slot in used:
                requeue(store, slot)
            claim_call = lambda: store.claim_batch(ISSUE, RUN, candidates(slot), now, now - timedelta(minutes=10), due=None)
            claim = capture(store, claim_call)
            record = capture(store, lambda: store.record_sends(ISSUE, [(sid, "sent", "", 1, "") for sid, _ in candidates(slot)], now,
                                                              run_id=RUN, retry_in=lambda k: 60.0, soft_bounce_limit=3))
            # The same statements with the same parameters, each call's in its own transaction as in a real run (rolled
            # back): the claim on rows put back as the coordinator left them, the record on rows the claim committed.
            requeue(store, slot)
            plans = explain(store, [(f"claim_batch {k + 1}", s, p) for k, (s, p) in enumerate(claim)])
            claim_call()
            plans += explain(store, [(f"record_sends {k + 1}", s, p) for k, (s, p) in enumerate(record)])
            lo = los[0]
            plans += explain(store, [(f"range_recipients {k + 1}", s, p) for k, (s, p) in enumerate(capture(store, lambda: first_range_batch(store, lo)))])
            plans += explain(store, [("pending_count", s, p) for s, p in capture(store, lambda: store.pending_count(ISSUE))])
            plans += explain(store, [("pending_ranges(handed_back_only)", s, p) for s, p in
                                     capture(store, lambda: store.pending_ranges(ISSUE, None, TASK, handed_back_only=True))])
        return {"n": n, "log_rows": log_rows, "median": statistics.median(times), "p90": pct(times, 0.9), "range_ms": range_ms,
                "pending_ms": pending_ms, "pending": pending, "handed_ms": handed_ms, "fill_s": fill_s, "plans": plans}
    finally:
        if lock is not None:
            lock.release()
        if store is not None:
            store.close()
        drop_schema(schema)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10000,1000000", help="subscriber counts, comma-separated (default 10000,1000000)")
    parser.add_argument("--batches", type=int, default=200, help="timed batches of 50 per size, after 20 warm-up ones")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    sizes = sorted(int(s.replace("_", "")) for s in args.sizes.split(","))
    if len(sizes) < 2 or sizes[0] < 10 * TASK:
        sys.exit("--sizes needs two sizes or more, each at least 5000")

    results = []
    for n in sizes:
        results.append(measure(n, args.batches, args.seed, want_plans=n == sizes[-1]))
        print(f"  ({n:,} subscribers: data loaded in {results[-1]['fill_s']:.1f} s, not timed)", file=sys.stderr)

    small, large = results[0], results[-1]
    ratio = large["median"] / small["median"]
    print(f"send-log scaling benchmark: claim_batch + record_sends of one batch of {BATCH} (two transactions, queued unclaimed rows "
          f"-> 'sent'), PostgreSQL, median and p90 of {args.batches} batches at random positions after {WARMUP} warm-up; "
          f"range_recipients (first batch of a {TASK}-id hint, median of 30) and pending_count (the coordinator's poll, median of 5)")
    print(f"{'subscribers':>12}{'send_log rows':>15}{'claim+record median':>21}{'p90':>10}{'range_recipients':>18}{'pending_count':>15}")
    for r in results:
        print(f"{r['n']:>12,}{r['log_rows']:>15,}{r['median']:>19.2f}ms{r['p90']:>8.2f}ms{r['range_ms']:>16.2f}ms{r['pending_ms']:>13.1f}ms")
    print(f"ratio {short(large['n'])}/{short(small['n'])} claim+record: {ratio:.2f} (target <= 1.2)  {'OK' if ratio <= 1.2 else 'MISSED'}")
    print(f"ratio {short(large['n'])}/{short(small['n'])} pending_count: {large['pending_ms'] / small['pending_ms']:.1f} (no target; "
          f"it counts {large['pending']:,} rows)")

    print("pending_ranges(handed_back_only=True), the coordinator's other per-poll query (no target): "
          + ", ".join(f"{r['handed_ms']:.1f} ms at {short(r['n'])}" for r in results))
    print(f"\nplans at {large['n']:,} subscribers, EXPLAIN (ANALYZE, BUFFERS), rolled back:")
    problems = []
    for label, stmt, plan in large["plans"]:
        bad = [m.group(0) for line in plan for m in [SEQ_SCAN.search(line)] if m]
        if bad:
            problems.append((label, bad))
        if stmt.lstrip().upper().startswith("UPDATE") and label.split()[0] in ("claim_batch", "record_sends") and "send_log" in stmt.split("SET")[0]:
            print(f"-- {label}: {one_line(stmt)}")
            for line in plan:
                print(f"   {line}")
        else:
            print(f"-- {label}: {one_line(stmt)}\n   {scans(plan)}")
    if problems:
        for label, bad in problems:
            note = " (a coordinator poll, once a second; not part of claim+record)" if label.startswith("pending_") else ""
            print(f"PROBLEM: {label}: {', '.join(sorted(set(bad)))}{note}")
    else:
        print("no sequential scan of send_log or subscribers")


if __name__ == "__main__":
    main()
