"""The main job end to end, as a user runs it: a real `publisher run --once` process in a temporary directory."""

from __future__ import annotations

import email
import email.policy
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import feedparser

from .conftest import REPO, TEST_SECRET_KEY


def publisher_exe() -> list[str]:
    exe = Path(sys.executable).parent / "publisher"
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "publisher"]


def run(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PUBLISHER_")}
    return subprocess.run([*publisher_exe(), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


def test_run_once_in_a_fresh_directory(tmp_path: Path) -> None:
    for name in ("content", "templates"):
        shutil.copytree(REPO / name, tmp_path / name)
    shutil.copy(REPO / "config.toml", tmp_path / "config.toml")

    proc = run(tmp_path, "run", "--once")
    assert proc.returncode == 0, proc.stderr
    # It says where the feeds and the delivered digest are.
    assert str(tmp_path / "public" / "feeds") in proc.stdout
    assert str(tmp_path / "var" / "outbox") in proc.stdout
    # No signing key in the environment: a development key is made, with a warning.
    assert "PUBLISHER_SECRET_KEY is not set" in proc.stderr
    assert (tmp_path / "var" / "secret_key").is_file()
    assert (tmp_path / "var" / "publisher.db").is_file()

    feeds = tmp_path / "public" / "feeds"
    for name in ("all.rss", "all.atom"):
        parsed = feedparser.parse((feeds / name).read_bytes())
        assert not parsed.bozo, (name, parsed.get("bozo_exception"))
        assert len(parsed.entries) == 22, name
    json_feed = json.loads((feeds / "all.json").read_bytes())  # feedparser 6.0 does not read JSON Feed
    assert json_feed["version"] == "https://jsonfeed.org/version/1.1" and len(json_feed["items"]) == 22

    messages = sorted((tmp_path / "var" / "outbox" / "new").iterdir())
    assert len(messages) == 3
    msg = email.message_from_bytes(messages[0].read_bytes(), policy=email.policy.default)
    assert msg.get_content_type() == "multipart/alternative"
    assert msg["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert msg["List-Unsubscribe"].startswith("<http://127.0.0.1:8000/unsubscribe/")
    html = msg.get_body(("html",)).get_content()
    text = msg.get_body(("plain",)).get_content()
    assert html.index("Yes to Striking Iranian-Backed Militants") < html.index("Persistent Gray Zone Aggression")
    assert text.index("FEATURED: Yes to Striking") < text.index("FEATURED: From Forward Presence") < text.index("== Commentary ==")
    assert msg["To"] in text  # personalised, not a placeholder
    assert not re.search(r"slot-[0-9a-f]{32}-", html + text)  # every slot filled
    assert (tmp_path / "public" / "digests").is_dir()
    assert (tmp_path / "public" / "media" / "images").is_dir()

    # A second cycle changes nothing and sends nothing twice.
    before = {p: p.read_bytes() for p in feeds.rglob("*") if p.is_file()}
    again = run(tmp_path, "run", "--once")
    assert again.returncode == 0, again.stderr
    assert "not due" in again.stdout
    assert {p: p.read_bytes() for p in feeds.rglob("*") if p.is_file()} == before
    assert len(list((tmp_path / "var" / "outbox" / "new").iterdir())) == 3


def test_bad_config_exits_2_with_the_key(tmp_path: Path) -> None:
    (tmp_path / "config.toml").write_text('[site]\nbase_url = "example.org"\n', encoding="utf-8")
    proc = run(tmp_path, "run", "--once")
    assert proc.returncode == 2
    assert "config.toml" in proc.stderr and "site.base_url" in proc.stderr and "absolute" in proc.stderr


def test_run_starts_the_scheduler_ingests_at_once_and_stops_cleanly_on_sigterm(tmp_path: Path) -> None:
    import signal
    import time

    for name in ("content", "templates"):
        shutil.copytree(REPO / name, tmp_path / name)
    shutil.copy(REPO / "config.toml", tmp_path / "config.toml")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PUBLISHER_")}
    env["PUBLISHER_SECRET_KEY"] = TEST_SECRET_KEY
    proc = subprocess.Popen([*publisher_exe(), "run"], cwd=tmp_path, env=env, stderr=subprocess.PIPE, text=True)
    try:
        lines = []
        deadline = time.monotonic() + 60
        assert proc.stderr is not None
        while time.monotonic() < deadline:
            line = proc.stderr.readline()
            lines.append(line)
            if "feeds:" in line or not line:
                break
        assert any("scheduler started" in l for l in lines), lines
        assert any("ingest: 22 new" in l for l in lines), lines
        proc.send_signal(signal.SIGTERM)
        _, rest = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, rest
    assert "stopping" in rest
    assert (tmp_path / "public" / "feeds" / "all.atom").is_file()
