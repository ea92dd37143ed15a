"""The readers' site build: 10,000 publications over 50 topics (or --publications N --topics T), each with its own page.

Prints, from one run on this machine:
- the first build (every page written: home, topics, types, each with its archived pages, and one page per
  publication), and its cost per page;
- a rebuild of unchanged content (every page rendered and compared, none written), as a share of the first;
- the rebuild after one new publication, as a share of the first, and how many pages it wrote (target: the pages
  that show it, and no others: its own, the front pages of the home, its topics and its type);
- the baseline, measured in the same run: the same number of bytes written to the same number of files by plain
  Python (what writing the site costs before any rendering).
Pagefind is left out (it is a separate program, run only when a publication page changed).

Run: .venv/bin/python benchmarks/site.py [--publications N] [--topics T]
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import sys
import tempfile
import time
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks.feeds import START, load_fast, make_pub, topic_slug  # noqa: E402
from publisher import site as site_module  # noqa: E402
from publisher.config import load_config  # noqa: E402
from publisher.models import Topic  # noqa: E402
from publisher.site import build_site  # noqa: E402
from publisher.store import open_store  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--publications", type=int, default=10_000)
    parser.add_argument("--topics", type=int, default=50)
    args = parser.parse_args()
    site_module.search_engine = lambda: None  # Pagefind is timed apart, not here  # type: ignore[assignment]
    tmp = Path(tempfile.mkdtemp(prefix="publisher-site-bench-"))
    try:
        (tmp / "config.toml").write_text(f"[site]\ntemplates_dir = \"{REPO / 'templates'}\"\n", encoding="utf-8")
        cfg = load_config(tmp / "config.toml", env={"PUBLISHER_SECRET_KEY": "benchmark-only-signing-key-0123456789"})
        base = cfg.site.base_url.rstrip("/")
        store = open_store(cfg.store_url)
        rng = random.Random(5)
        for n in range(args.topics):
            store.upsert_topic(Topic(topic_slug(n, args.topics), f"Topic {n}", f"Everything about topic {n}."))
        ours = next(name for name, sc in cfg.sources.items() if sc.kind == "files")  # pages only for content/'s publications
        pubs = [replace(make_pub(i, rng, args.topics), url=f"{base}/publications/pub-{i}/", source=ours) for i in range(args.publications)]
        load_fast(store, pubs)

        started = time.perf_counter()
        first = build_site(cfg, store)
        cold = time.perf_counter() - started
        started = time.perf_counter()
        again = build_site(cfg, store)
        unchanged = time.perf_counter() - started
        new = make_pub(args.publications, rng, args.topics)
        new = replace(new, url=f"{base}/publications/new-one/", source=ours, published_at=START + timedelta(days=4000),
                      updated_at=START + timedelta(days=4000))
        store.upsert_publication(new, START + timedelta(days=4000))
        started = time.perf_counter()
        one = build_site(cfg, store)
        incremental = time.perf_counter() - started
        public = cfg.path(cfg.site.public_dir)
        written = sorted(p.relative_to(public).as_posix() for p in one.written)
        size = cfg.site.page_size
        listings = {"": len(pubs) + 1, f"types/{new.content_type.lower().replace(' ', '-')}/": sum(p.content_type == new.content_type for p in pubs) + 1,
                    **{f"topics/{t}/": sum(t in p.topics for p in pubs) + 1 for t in new.topics}}
        expected = {"publications/new-one/index.html", *(f"{prefix}index.html" for prefix in listings)}
        for prefix, count in listings.items():  # the front page full: its oldest become the next archived page
            if count >= 2 * size and count % size == 0:
                expected |= {f"{prefix}page/{count // size - 1}/index.html", f"{prefix}page/{count // size}/index.html"}

        files = [p for p in public.rglob("*.html")]
        sizes = [p.stat().st_size for p in files]
        bench = tmp / "baseline"
        payload = os.urandom(max(sizes))
        started = time.perf_counter()
        for k, size in enumerate(sizes):
            folder = bench / str(k)
            folder.mkdir(parents=True)
            (folder / "index.html").write_bytes(payload[:size])
        baseline = time.perf_counter() - started
        store.close()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    print(f"site build, {args.publications:,} publications over {args.topics} topics: {first.files:,} files, "
          f"{sum(sizes) / 1e6:.1f} MB of HTML")
    print(f"{'build':<42}{'seconds':>10}{'ratio':>10}   note")
    print(f"{'baseline: write the same files (plain)':<42}{baseline:>10.2f}{1.0:>10.2f}   {len(sizes):,} files")
    print(f"{'first build (every file written)':<42}{cold:>10.2f}{cold / baseline:>10.2f}   {len(first.written):,} written, "
          f"{1000 * cold / first.files:.2f} ms a file")
    print(f"{'rebuild, nothing changed':<42}{unchanged:>10.2f}{unchanged / cold:>10.2f}   of the first build; {len(again.written)} written")
    print(f"{'rebuild after one new publication':<42}{incremental:>10.2f}{incremental / cold:>10.2f}   of the first build; "
          f"{len(written)} written: {', '.join(written)}")
    ok = set(written) == expected and not again.written
    print(f"only the pages that show the new publication were written: {'yes' if ok else 'NO: expected ' + ', '.join(sorted(expected))}")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
