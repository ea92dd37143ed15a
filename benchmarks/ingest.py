"""Ingest speed: 20,000 content files, cold and unchanged.

Prints, from one run on this machine:
- the cold ingest: a new store, every file new (run_sources, as `publisher ingest` runs it);
- the ingest of the same, unchanged files by a NEW process on that store, as the next cycle of
  `publisher run --once` from cron would run it: nothing cached in memory counts (target: <= 5% of cold);
- the ingest after one file was edited, by a new process (reported, no target);
- the ingest after every file was touched (its mtime moved, its bytes the same: a checkout, a copy), where
  every file is read and hashed but none parsed (reported, no target);
- each child's whole wall time, interpreter start and imports included (reported, no target).
The files are like content/publications/*.md: TOML (+++) and YAML (---) front matter with title, date,
content_type, topics, authors, summary, url, featured and image (a local file or an https URL), and a
Markdown body of a few paragraphs, a heading and a list. The timed figure is run_sources in the child,
store opening included; the OS page cache is warm in both (the files were just written or read). The files are
written more than 2 s before the cold ingest reads them: a file read within 2 s of its last change is read again
next time (its stat cannot be trusted yet), and content that nobody is editing is the case measured.

Run: .venv/bin/python benchmarks/ingest.py [--files N] [--repeat R]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
TYPES = ["Commentary", "Research Brief", "Report", "Multimedia"]
TOPICS = 50
WORDS = ("allied deterrence depends on credible commitments shared capabilities forward defense readiness reinforcement "
         "logistics interoperability partners posture budgets procurement industrial base air defense maritime security").split()


def sentence(rng: random.Random, n: int) -> str:
    words = [rng.choice(WORDS) for _ in range(n)]
    return " ".join(words).capitalize() + "."


def paragraph(rng: random.Random) -> str:
    return " ".join(sentence(rng, rng.randrange(8, 20)) for _ in range(rng.randrange(3, 6)))


def body(rng: random.Random) -> str:
    parts = [paragraph(rng), paragraph(rng), f"## {sentence(rng, 5)[:-1]}", "\n".join(f"- {sentence(rng, 7)}" for _ in range(3)),
             paragraph(rng), f"Read *more* in [the report](https://www.example.org/r/{rng.randrange(10**6)}.html)."]
    return "\n\n".join(parts) + "\n"


def publication_file(i: int, rng: random.Random) -> tuple[str, str]:
    """(file name, text) of one publication."""
    day = f"20{10 + i // 2000:02d}-{1 + (i // 160) % 12:02d}-{1 + (i // 6) % 28:02d}"
    slug = f"{day}-publication-{i}-on-" + "-".join(rng.sample(WORDS, 3))
    title = f"Publication {i}: {sentence(rng, 6)[:-1]}"
    summary = sentence(rng, 18) + " " + sentence(rng, 12)
    topics = sorted({f"topic-{rng.randrange(TOPICS):02d}" for _ in range(rng.choice((1, 1, 2, 3)))})
    authors = [f"Author {rng.randrange(400)}" for _ in range(rng.choice((1, 1, 2)))]
    ctype = rng.choice(TYPES)
    image = None
    if rng.random() < 0.7:
        src = f"images/{i // 1000:02d}/photo-{i}.png" if rng.random() < 0.8 else f"https://cdn.example.org/photos/{i}.jpg"
        image = {"src": src, "alt": f"What photo {i} shows", "caption": sentence(rng, 14), "credit": "Photographer/Agency"}
    featured = rng.random() < 0.02
    if i % 10 < 7:  # TOML, like the samples
        lines = ["+++", f"title = {json.dumps(title)}", f"date = {day}T{rng.randrange(24):02d}:{rng.randrange(60):02d}:00Z",
                 f"content_type = {json.dumps(ctype)}", f"topics = {json.dumps(topics)}", f"authors = {json.dumps(authors)}",
                 f"summary = {json.dumps(summary)}", f"url = \"https://www.example.org/{ctype.lower().replace(' ', '-')}/{slug}.html\""]
        if featured:
            lines.append("featured = true")
        if image:
            lines.append("")
            lines.append("[image]")
            lines += [f"{k} = {json.dumps(v)}" for k, v in image.items()]
        lines.append("+++")
    else:  # YAML
        lines = ["---", f"title: {json.dumps(title)}", f"date: {day}", f"content_type: {ctype}", "topics:"]
        lines += [f"  - {t}" for t in topics]
        lines += ["authors:"] + [f"  - {a}" for a in authors]
        lines.append(f"summary: {json.dumps(summary)}")
        if featured:
            lines.append("featured: true")
        if image:
            lines.append("image:")
            lines += [f"  {k}: {json.dumps(v)}" for k, v in image.items()]
        lines.append("---")
    return f"{slug}.md", "\n".join(lines) + "\n\n" + body(rng)


def make_site(root: Path, n: int) -> Path:
    rng = random.Random(13)
    content = root / "content"
    for sub in ("publications", "topics", "images"):
        (content / sub).mkdir(parents=True)
    png = next((REPO / "content" / "images").glob("*.png")).read_bytes()
    for k in range(TOPICS):
        (content / "topics" / f"topic-{k:02d}.md").write_text(f"+++\nname = \"Topic {k}\"\n+++\nEverything about topic {k}.\n", encoding="utf-8")
    for i in range(n):
        name, text = publication_file(i, rng)
        local = re.search(r'src\s*[:=]\s*"(images/[^"]+)"', text)
        if local:  # every local image is there, one per publication, as in the sample content
            (content / local.group(1)).parent.mkdir(exist_ok=True)
            (content / local.group(1)).write_bytes(png)
        (content / "publications" / f"{i // 1000:02d}").mkdir(exist_ok=True)
        (content / "publications" / f"{i // 1000:02d}" / name).write_text(text, encoding="utf-8")
    config = root / "config.toml"
    config.write_text(f"[site]\ntemplates_dir = \"{REPO / 'templates'}\"\n[store]\nurl = \"sqlite:///{root / 'var' / 'publisher.db'}\"\n", encoding="utf-8")
    return config


def child(config: str) -> None:
    """One ingest, as a new `publisher ingest` process runs it; prints its figures as JSON."""
    t_start = time.perf_counter()
    sys.path.insert(0, str(REPO))
    from publisher.config import load_config
    from publisher.ingest import run_sources
    from publisher.pipeline import now_utc
    from publisher.store import open_store

    cfg = load_config(Path(config), env={"PUBLISHER_SECRET_KEY": "benchmark-only-signing-key-0123456789"})
    t0 = time.perf_counter()
    store = open_store(cfg.store_url)
    report = run_sources(cfg, store, now_utc())
    elapsed = time.perf_counter() - t0
    store.close()
    print(json.dumps({"seconds": elapsed, "imports": t0 - t_start, "new": len(report.new), "updated": len(report.updated),
                      "unchanged": report.unchanged, "errors": len(report.errors), "topics": len(report.topics_changed),
                      "not_read": getattr(report, "files_not_read", None), "not_parsed": getattr(report, "files_not_parsed", None)}))


def run_child(config: Path, extra: list[str] | None = None) -> dict:
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, *(extra or []), __file__, "--child", str(config)], check=True, capture_output=True, text=True).stdout
    figures = json.loads(out.strip().splitlines()[-1])
    figures["wall"] = time.perf_counter() - t0
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=20_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--keep", action="store_true", help="keep the generated site (its path is printed)")
    args = parser.parse_args()
    if args.child:
        child(args.child)
        return

    tmp = Path(tempfile.mkdtemp(prefix="publisher-bench-ingest-"))
    t0 = time.perf_counter()
    config = make_site(tmp, args.files)
    gen_s = time.perf_counter() - t0
    size = sum(p.stat().st_size for p in (tmp / "content").rglob("*.md"))
    images = sum(1 for _ in (tmp / "content" / "images").rglob("*.png"))
    db = tmp / "var" / "publisher.db"
    time.sleep(2.1)  # see above: no file is "racy" for the cold ingest
    cold, unchanged, edited, touched = [], [], [], []
    first_cold = first_unchanged = None
    for r in range(args.repeat):
        for leftover in db.parent.glob("publisher.db*"):
            leftover.unlink()
        c = run_child(config)
        assert c["new"] == args.files and c["errors"] == 0, c
        u = run_child(config)
        assert u["new"] == u["updated"] == 0 and u["unchanged"] == args.files, u
        victim = sorted((tmp / "content" / "publications" / "00").glob("*.md"))[r]
        victim.write_text(victim.read_text(encoding="utf-8").replace("Publication ", f"Edited {r} publication ", 1), encoding="utf-8")
        e = run_child(config)
        assert e["updated"] == 1 and e["unchanged"] == args.files - 1, e
        for path in (tmp / "content").rglob("*.md"):
            os.utime(path)
        time.sleep(2.1)
        h = run_child(config)
        assert h["new"] == h["updated"] == 0 and h["unchanged"] == args.files, h
        time.sleep(2.1)  # the next round's unchanged ingest trusts the stats the touched one recorded
        cold.append(c)
        unchanged.append(u)
        edited.append(e)
        touched.append(h)
        first_cold, first_unchanged = first_cold or c, first_unchanged or u

    def med(rows: list[dict], key: str = "seconds") -> float:
        return statistics.median(r[key] for r in rows)

    print(f"ingest benchmark: {args.files:,} publications ({size / 1e6:.0f} MB of Markdown, 70% TOML, 30% YAML front matter), "
          f"{TOPICS} topics, {images:,} local images (one per publication that has one); each ingest a new process; median of {args.repeat} (files written in {gen_s:.1f} s, not timed)")
    print(f"{'measure':<46}{'median':>10}{'min':>10}{'max':>10}")
    for label, rows in (("cold ingest (new store, every file new)", cold), ("unchanged files, new process", unchanged),
                        ("one file edited, new process", edited),
                        ("every file touched, new process", touched)):
        xs = [r["seconds"] for r in rows]
        skipped = ""
        if rows is not cold and rows[0]["not_read"] is not None:  # how the unchanged were found: by their stat, or by their bytes
            skipped = f"   ({med(rows, 'not_read'):,.0f} not read, {med(rows, 'not_parsed'):,.0f} read, not parsed)"
        print(f"{label:<46}{statistics.median(xs) * 1000:>8.0f}ms{min(xs) * 1000:>8.0f}ms{max(xs) * 1000:>8.0f}ms{skipped}")
    xs = [r["wall"] for r in unchanged]
    print(f"{'  the unchanged child, whole process':<46}{statistics.median(xs) * 1000:>8.0f}ms{min(xs) * 1000:>8.0f}ms{max(xs) * 1000:>8.0f}ms"
          f"   (imports {med(unchanged, 'imports') * 1000:.0f} ms)")
    share = med(unchanged) / med(cold)
    print(f"{'one file edited / cold':<46}{med(edited) / med(cold):>9.1%}   (no target)")
    print(f"{'every file touched / cold':<46}{med(touched) / med(cold):>9.1%}   (no target)")
    print(f"{'unchanged / cold':<46}{share:>9.1%}   target <=  5.0%  {'OK' if share <= 0.05 else 'MISSED'}")
    if args.keep:
        print(f"site kept in {tmp}")
    else:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
