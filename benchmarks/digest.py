"""Digest speed: render time per variant, and personalised ready-to-send messages per second.

Prints, from one run on this machine:
- the time to render one variant (Jinja2 → MJML → HTML, plus the text part) and to compile its MIME message;
- the rate of personalised, ready-to-send messages (bytes as handed to SMTP) for 100,000 recipients
  on one core, over 4 topic variants (target: >= 50,000 messages/s);
- as a baseline in the same run, the rate of building each message with the email package and the
  same rendered HTML (what a straightforward implementation does), on a sample of recipients.

Run: .venv/bin/python benchmarks/digest.py [--recipients N]
"""

from __future__ import annotations

import argparse
import secrets
import shutil
import statistics
import sys
import tempfile
import time
from datetime import datetime, timezone
from email.message import EmailMessage
from email.policy import SMTP
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from publisher.config import load_config  # noqa: E402
from publisher.delivery.message import MessageIds, compile_message  # noqa: E402
from publisher.delivery.send import links_for  # noqa: E402
from publisher.digest import Renderer, plan_issue, render_variants  # noqa: E402
from publisher.models import Subscriber, SubscriberStatus  # noqa: E402
from publisher.pipeline import run_ingest  # noqa: E402
from publisher.store import open_store  # noqa: E402

NOW = datetime(2026, 11, 30, 8, 0, tzinfo=timezone.utc)
VARIANTS = [(), ("security-cooperation",), ("security-cooperation", "other"), ("other",)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipients", type=int, default=100_000)
    parser.add_argument("--baseline-sample", type=int, default=2_000)
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="publisher-bench-"))
    for name in ("content", "templates"):
        shutil.copytree(REPO / name, tmp / name)
    shutil.copy(REPO / "config.toml", tmp / "config.toml")
    cfg = load_config(tmp / "config.toml", env={"PUBLISHER_SECRET_KEY": "benchmark-only-signing-key-0123456789"})
    store = open_store(cfg.store_url)
    run_ingest(cfg, store, NOW)
    plan = plan_issue(cfg, store, NOW)

    renders = []
    for _ in range(5):
        renderer = Renderer(cfg)
        t0 = time.perf_counter()
        variants = render_variants(cfg, plan, VARIANTS, renderer)
        renders.append((time.perf_counter() - t0) / renderer.renders)
    t0 = time.perf_counter()
    messages = {key: compile_message(cfg, rendered, NOW) for key, rendered in variants.items()}
    compile_s = (time.perf_counter() - t0) / len(messages)

    subs = [Subscriber(i + 1, f"reader{i + 1}@example.com", SubscriberStatus.ACTIVE, NOW, NOW, VARIANTS[i % len(VARIANTS)])
            for i in range(args.recipients)]
    ids = MessageIds("example.org", secrets.token_bytes(32))
    t0 = time.perf_counter()
    total = 0
    for sub in subs:
        total += len(messages[sub.topics].for_recipient(ids(plan.id, sub.id), sub.email, links_for(cfg, sub)))
    fast_s = time.perf_counter() - t0

    sample = subs[: args.baseline_sample]
    t0 = time.perf_counter()
    for sub in sample:
        rendered = variants[sub.topics]
        links = links_for(cfg, sub)
        html, text = rendered.personalise({**links, "email": sub.email})
        msg = EmailMessage(policy=SMTP)
        msg["From"] = cfg.digest.from_address
        msg["To"] = sub.email
        msg["Subject"] = rendered.subject
        msg["Message-ID"] = ids(plan.id, sub.id)
        msg["List-Unsubscribe"] = f"<{links['unsubscribe_url']}>"
        msg.set_content(text, charset="utf-8", cte="quoted-printable")
        msg.add_alternative(html, subtype="html", charset="utf-8", cte="quoted-printable")
        msg.as_bytes()
    base_s = time.perf_counter() - t0

    html_sizes = [len(v.html.encode()) for v in variants.values()]
    print(f"digest benchmark: sample content ({len(plan.publications)} publications), {len(variants)} variants, "
          f"{args.recipients:,} recipients on one core; HTML {min(html_sizes):,}-{max(html_sizes):,} bytes, "
          f"average message {total // args.recipients:,} bytes")
    print(f"{'measure':<52}{'value':>16}")
    print(f"{'render one variant (median of 5 runs)':<52}{statistics.median(renders) * 1000:>13.1f} ms")
    print(f"{'compile one variant to MIME':<52}{compile_s * 1000:>13.1f} ms")
    rate = args.recipients / fast_s
    base_rate = len(sample) / base_s
    print(f"{'personalised messages, compiled + substitution':<52}{rate:>11,.0f} msg/s   target >= 50,000  {'OK' if rate >= 50_000 else 'MISSED'}")
    print(f"{'baseline: email package per recipient':<52}{base_rate:>11,.0f} msg/s   ({rate / base_rate:.0f}x slower)")
    store.close()
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
