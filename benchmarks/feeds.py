"""Feed build speed: 10,000 publications over 50 topics (or --publications N --topics T, e.g. 100,000 over 500).

Prints, from one run on this machine:
- the full build (RSS + Atom, every feed: all, each topic, each content type; 50 entries each) by a
  new process, i.e. a new FeedBuilder, on an established site whose store holds the rendered entries,
  against bare feedgen generating the same feeds with the same entries (target: ratio <= 1.3);
- the very first build, when the store holds no rendered entry yet (reported, no target);
- the incremental rebuild after one new publication (the feeds that hold it), as a share of the full
  build (target: <= 5%).
Every build writes every file (the output folder is emptied before each full build).
Then one full build in a new OS process (interpreter and imports not timed): its time and its peak RSS,
against that process's RSS before building, so memory that grows with the archive shows.

Run: .venv/bin/python benchmarks/feeds.py [--publications N] [--topics T] [--repeat R]
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

from feedgen.feed import FeedGenerator
from sqlalchemy import event

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from publisher.config import load_config  # noqa: E402
from publisher.feeds import FeedBuilder, feed_specs, specs_holding  # noqa: E402
from publisher.models import Image, Publication, Topic  # noqa: E402
from publisher.store import open_store  # noqa: E402

TYPES = ["Commentary", "Research Brief", "Report", "Multimedia"]
START = datetime(2020, 1, 1, tzinfo=timezone.utc)
BODY = "<p>" + " ".join(["Allied deterrence depends on credible commitments and shared capabilities."] * 6) + "</p>"


def topic_slug(n: int, topics: int) -> str:
    return f"topic-{n:0{max(2, len(str(topics - 1)))}d}"


def make_pub(i: int, rng: random.Random, n_topics: int = 50) -> Publication:
    when = START + timedelta(hours=3 * i, minutes=rng.randrange(60))
    topics = tuple(sorted({topic_slug(rng.randrange(n_topics), n_topics) for _ in range(rng.choice((1, 1, 2)))}))
    image = Image(f"https://www.example.org/media/{i}.jpg", f"Photo {i}", f"Caption for item {i}.", "Photographer/Agency") if rng.random() < 0.8 else None
    return Publication(
        id=f"pub-{i}", url=f"https://www.example.org/p/{i}.html", title=f"Publication number {i}: on alliances & deterrence",
        summary=f"A summary of publication {i}, in two sentences. It says what the piece argues.", content_type=rng.choice(TYPES),
        published_at=when, updated_at=when, topics=topics, authors=(f"Author {i % 97}",), image=image, body_html=BODY, source="bench",
    )


def bare_feedgen(specs: list, pubs_by_spec: dict, base: str) -> None:
    """What feedgen alone costs for the same feeds: every entry built and serialised in every feed it is in."""
    for spec in specs:
        for fmt in ("rss", "atom"):
            fg = FeedGenerator()
            fg.load_extension("media")
            fg.id(f"{base}/feeds/{spec.path}.{fmt}")
            fg.title(spec.title)
            fg.subtitle(spec.description)
            fg.link(href=f"{base}/feeds/{spec.path}.{fmt}", rel="self")
            fg.link(href=f"{base}{spec.page}", rel="alternate")
            fg.language("en")
            for pub in pubs_by_spec[spec.path]:
                fe = fg.add_entry(order="append")
                fe.id(f"{base}/{pub.id}")
                fe.title(pub.title)
                fe.link(href=pub.url, rel="alternate", type="text/html")
                fe.published(pub.published_at)
                fe.updated(pub.updated_at)
                fe.summary(pub.summary)
                fe.content(pub.body_html, type="html")
                for a in pub.authors:
                    fe.author(name=a)
                fe.category(term=pub.content_type)
                for t in pub.topics:
                    fe.category(term=t)
                if pub.image:
                    fe.media.content(url=pub.image.url, medium="image", group=None)
                    fe.media.thumbnail(url=pub.image.url, group=None)
            fg.rss_str(pretty=True) if fmt == "rss" else fg.atom_str(pretty=True)


def timed(fn) -> float:  # noqa: ANN001
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def _vm(field: str) -> int:
    """KiB, from /proc/self/status: VmHWM is this process's own peak (ru_maxrss keeps the forking parent's)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def child_build(config: str) -> None:
    """One full build in this fresh process: prints seconds, peak RSS before and after (KiB)."""
    cfg = load_config(Path(config), env={"PUBLISHER_SECRET_KEY": "benchmark-only-signing-key-0123456789"})
    store = open_store(cfg.store_url)
    shutil.rmtree(cfg.path(cfg.feeds.output_dir), ignore_errors=True)
    before = _vm("VmHWM")
    seconds = timed(lambda: FeedBuilder(cfg).build(store))
    print(json.dumps({"seconds": seconds, "rss_before_kib": before, "rss_peak_kib": _vm("VmHWM")}))
    store.close()


def load_fast(store, pubs) -> None:  # noqa: ANN001
    """The store's own upserts, with SQLite's fsync per commit off while loading (not what is measured)."""
    def no_sync(dbapi_conn, _record) -> None:  # noqa: ANN001
        dbapi_conn.execute("PRAGMA synchronous=OFF")

    sqlite = store.engine.dialect.name == "sqlite"
    if sqlite:
        store.engine.dispose()
        event.listen(store.engine, "connect", no_sync)
    try:
        now = datetime.now(timezone.utc)
        for pub in pubs:
            store.upsert_publication(pub, now)
    finally:
        if sqlite:
            event.remove(store.engine, "connect", no_sync)
            store.engine.dispose()  # the timed builds get connections as a real run has them


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--publications", type=int, default=10_000)
    parser.add_argument("--topics", type=int, default=50)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--child-build", metavar="CONFIG", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child_build:
        return child_build(args.child_build)

    tmp = Path(tempfile.mkdtemp(prefix="publisher-bench-"))
    (tmp / "config.toml").write_text(f"[site]\ntemplates_dir = \"{REPO / 'templates'}\"\n[feeds]\nformats = [\"rss\", \"atom\"]\n", encoding="utf-8")
    (tmp / "content").mkdir()
    cfg = load_config(tmp / "config.toml", env={"PUBLISHER_SECRET_KEY": "benchmark-only-signing-key-0123456789"})
    store = open_store(cfg.store_url)
    rng = random.Random(7)
    now = datetime.now(timezone.utc)
    for n in range(args.topics):
        store.upsert_topic(Topic(topic_slug(n, args.topics), f"Topic {n}", f"Everything about topic {n}."))
    t0 = time.perf_counter()
    load_fast(store, (make_pub(i, rng, args.topics) for i in range(args.publications)))
    load_s = time.perf_counter() - t0

    specs = feed_specs(store, cfg)
    limit = cfg.feeds.item_limit
    pubs_by_spec = {s.path: store.publications(topic=s.topic, content_type=s.content_type, limit=limit) for s in specs}
    out = cfg.path(cfg.feeds.output_dir)

    from sqlalchemy import delete

    from publisher.store.tables import feed_fragments

    first, full, bare, incremental = [], [], [], []
    for r in range(args.repeat):
        with store.engine.begin() as conn:
            conn.execute(delete(feed_fragments))
        shutil.rmtree(out, ignore_errors=True)
        first.append(timed(lambda: FeedBuilder(cfg).build(store)))
        shutil.rmtree(out, ignore_errors=True)
        builder = FeedBuilder(cfg)
        full.append(timed(lambda: builder.build(store)))
        bare.append(timed(lambda: bare_feedgen(specs, pubs_by_spec, cfg.site.base_url)))
        new = make_pub(args.publications + r, rng, args.topics)
        new = Publication(**{**{f: getattr(new, f) for f in new.__dataclass_fields__}, "published_at": now + timedelta(minutes=r), "updated_at": now + timedelta(minutes=r)})
        store.upsert_publication(new, now)
        # What run_feeds does after an ingest that found one new publication, feeds only (like the full build).
        def rebuild() -> None:
            topics = store.topics()
            builder.build(store, specs_holding(feed_specs(store, cfg, topics), builder.remember(store.publications(ids=[new.id]))), topics)

        incremental.append(timed(rebuild))

    files = len(list(out.rglob("*.*")))
    child = json.loads(subprocess.run([sys.executable, __file__, "--child-build", str(tmp / "config.toml")],
                                      check=True, capture_output=True, text=True).stdout.splitlines()[-1])
    f_med, b_med, i_med = statistics.median(full), statistics.median(bare), statistics.median(incremental)
    print(f"feeds benchmark: {args.publications:,} publications, {args.topics} topics, {len(specs)} feeds x RSS+Atom ({files} files), "
          f"{limit} entries each; median of {args.repeat} (store load {load_s:.1f} s, not timed)")
    print(f"{'measure':<44}{'median':>10}{'min':>10}{'max':>10}")
    print(f"{'first build (no rendered entry stored yet)':<44}{statistics.median(first) * 1000:>8.0f}ms{min(first) * 1000:>8.0f}ms{max(first) * 1000:>8.0f}ms")
    print(f"{'full build (new process, established site)':<44}{f_med * 1000:>8.0f}ms{min(full) * 1000:>8.0f}ms{max(full) * 1000:>8.0f}ms")
    print(f"{'bare feedgen, same feeds and entries':<44}{b_med * 1000:>8.0f}ms{min(bare) * 1000:>8.0f}ms{max(bare) * 1000:>8.0f}ms")
    print(f"{'incremental after one new publication':<44}{i_med * 1000:>8.0f}ms{min(incremental) * 1000:>8.0f}ms{max(incremental) * 1000:>8.0f}ms")
    print(f"{'full build in a new OS process (once)':<44}{child['seconds'] * 1000:>8.0f}ms"
          f"   peak RSS {child['rss_peak_kib'] / 1024:.0f} MiB ({(child['rss_peak_kib'] - child['rss_before_kib']) / 1024:+.0f} MiB while building)")
    ratio, share = f_med / b_med, i_med / f_med
    print(f"{'first build / bare feedgen':<44}{statistics.median(first) / b_med:>10.2f}   (no target)")
    print(f"{'full / bare feedgen':<44}{ratio:>10.2f}   target <= 1.30  {'OK' if ratio <= 1.3 else 'MISSED'}")
    print(f"{'full in a new OS process / bare feedgen':<44}{child['seconds'] / b_med:>10.2f}   (one run; reported)")
    print(f"{'incremental / full':<44}{share:>9.1%}   target <=  5.0%  {'OK' if share <= 0.05 else 'MISSED'}")
    store.close()
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
