"""A newcomer's first hour (issue 14): every command example in the README, in content/README.md and in every
`--help`, run in order as subprocesses on a fresh copy of the repository, on the embedded defaults.

The copy gets its own virtual environment from the README's first command (`pip install -e .`), and every later
`publisher` is that one, found on PATH as a newcomer's shell would. Each example must exit 0 and do what its text
says: the files it names written, the messages in the outbox, the lines printed, the pages served. The list of
examples is read from the texts themselves, so a new example without a check here fails the test.

Not run, with the reason: the README's second command (it is this test suite; CI runs it) and the benchmark
scripts (minutes each; they print their own tables). Commands that serve a port (`serve --port 8000`,
`preview --port 8025`) run in a network namespace of their own, so the documented port is used as written and
never collides with anything else on the machine. The Deployment section's commands (PostgreSQL and a broker)
have a test of their own below.
"""

from __future__ import annotations

import email
import email.policy
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import click
import pytest

REPO = Path(__file__).resolve().parents[1]
NOT_RUN = {
    '.venv/bin/pip install -e ".[test]" && .venv/bin/python -m pytest': "the test suite itself (CI runs it: .ci/run)",
    "benchmarks/": "the benchmark scripts: minutes each, run on their own (README: Performance)",
}


# -- the examples, from the texts ---------------------------------------------------------------------------------

def _is_command(line: str) -> bool:
    return bool(re.match(r"^(?:[A-Z_]+=\S+ )*(?:publisher|python3|\.venv/bin/)\b", line))


def readme_examples() -> list[str]:
    """Shell lines of the READMEs' code blocks, in order (comments dropped)."""
    found: list[str] = []
    for doc in (REPO / "README.md", REPO / "content" / "README.md"):
        fence: str | None = None  # the open block's language ("" for none), or None outside a block
        for raw in doc.read_text(encoding="utf-8").splitlines():
            if raw.startswith("```"):
                fence = raw[3:].strip() if fence is None else None
                continue
            if fence in ("", "sh", "bash", "shell"):
                line = re.sub(r"\s+#.*$", "", raw).strip()
                if line and not line.startswith("#") and _is_command(line):
                    found.append(line)
    return found


def help_examples() -> list[str]:
    """The lines under "Example:" / "Examples:" in every command's --help, in the order `--help` lists them."""
    from publisher.cli import main

    def walk(cmd: click.Command) -> Iterator[click.Command]:
        if isinstance(cmd, click.Group):
            for sub in cmd.commands.values():
                yield from walk(sub)
        else:
            yield cmd

    found: list[str] = []
    for cmd in walk(main):
        text = cmd.help or ""
        _, marker, rest = text.partition("Example")
        if not marker:
            pytest.fail(f"`publisher {cmd.name}` --help has no example")
        for raw in rest.splitlines()[1:]:
            line = re.sub(r"\s+#.*$", "", raw).strip()
            if not line:
                break
            if _is_command(line):
                found.append(line)
    return found


def not_run(line: str) -> str | None:
    return next((why for key, why in NOT_RUN.items() if key in line), None)


# -- running them -------------------------------------------------------------------------------------------------

def fresh_copy(dest: Path) -> Path:
    """What a clone holds: the files git tracks (and new ones not ignored), nothing built, no venv, no var/."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                            capture_output=True, check=True).stdout.decode().split("\0")
    for name in filter(None, listed):
        src = REPO / name
        if src.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / name)
    return dest


def shell_env(copy: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PUBLISHER_", "VIRTUAL_ENV", "PYTHON"))}
    env["PATH"] = f"{copy / '.venv' / 'bin'}:{env.get('PATH', '/usr/bin:/bin')}"
    return env | extra


def sh(copy: Path, line: str, env: dict[str, str], timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", "-c", line], cwd=copy, env=env, capture_output=True, text=True, timeout=timeout)


def wait_for(check: Callable[[], bool], seconds: float, proc: subprocess.Popen[str] | None = None) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if check():
            return True
        if proc is not None and proc.poll() is not None:
            return False
        time.sleep(0.5)
    return False


def stop(proc: subprocess.Popen[str], timeout: float = 60) -> int:
    proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        pytest.fail(f"{proc.args} did not stop within {timeout} s of SIGTERM")


# A command that serves a port, run in a network namespace of its own: start it, fetch the pages, stop it.
SERVE_SCRIPT = r"""
import json, signal, subprocess, sys, time, urllib.error, urllib.request
line, port, paths = sys.argv[1], int(sys.argv[2]), json.loads(sys.argv[3])
subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
proc = subprocess.Popen(["bash", "-c", line], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
def get(path):
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as r:
            return r.status, r.headers.get("content-type", ""), r.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as e:
        return e.code, e.headers.get("content-type", ""), e.read().decode("utf-8", "replace")
    except OSError as e:
        return 0, "", str(e)
for _ in range(120):
    if get("/")[0] or proc.poll() is not None:
        break
    time.sleep(0.25)
pages = {}
for path in paths:
    pages[path] = get(path)
    if path == "/" and pages[path][0] == 200:
        import re
        paths += [p for p in re.findall(r'(?:src|href)="http://127\.0\.0\.1:%d(/[^"]*)"' % port, pages[path][2]) if p not in paths][:3]
proc.send_signal(signal.SIGTERM)
out, _ = proc.communicate(timeout=60)
print(json.dumps({"rc": proc.returncode, "pages": pages, "output": out[-3000:]}))
"""


def netns_missing() -> str | None:
    try:
        proc = subprocess.run(["unshare", "--net", "ip", "link", "set", "lo", "up"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"cannot run unshare: {exc}"
    return None if proc.returncode == 0 else f"cannot make a network namespace (unshare --net needs root): {proc.stderr.strip()}"


def serve_in_own_network(copy: Path, line: str, env: dict[str, str], paths: list[str]) -> dict[str, object]:
    port = int(re.search(r"--port (\d+)", line).group(1))  # type: ignore[union-attr]
    proc = subprocess.run(["unshare", "--net", sys.executable, "-c", SERVE_SCRIPT, line, str(port), json.dumps(paths)],
                          cwd=copy, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def outbox(copy: Path) -> list[email.message.EmailMessage]:
    folder = copy / "var" / "outbox" / "new"
    return [email.message_from_bytes(p.read_bytes(), policy=email.policy.default) for p in sorted(folder.iterdir())] if folder.is_dir() else []  # type: ignore[misc]


def to(msg: email.message.EmailMessage) -> str:
    return str(msg["To"])


def listed(copy: Path, env: dict[str, str]) -> dict[str, str]:
    out = sh(copy, "publisher subscribers list", env).stdout
    return dict(line.split("\t")[:2] for line in out.splitlines() if "\t" in line)


# -- what each example must do ------------------------------------------------------------------------------------

def check(copy: Path, line: str, env: dict[str, str], seen: dict[str, object]) -> None:
    """Run one example and check it did what its text says."""
    if line.startswith("publisher serve --port") or line.startswith("publisher preview --port"):
        if missing := netns_missing():
            if os.environ.get("CI"):
                pytest.fail(missing)
            pytest.skip(missing)
        issue = seen["issue"]
        paths = ["/", f"/digests/{issue}.html", "/feeds/all.rss", "/feeds/all.atom", "/unsubscribe", "/preferences"] \
            if "serve" in line else ["/"]
        got = serve_in_own_network(copy, line, env, paths)
        pages = {k: tuple(v) for k, v in got["pages"].items()}  # type: ignore[union-attr]
        assert got["rc"] == 0, got["output"]
        for path, (status, ctype, body) in pages.items():
            assert status == 200, f"{line}: GET {path} answered {status}: {body[:300]}"
        if "serve" in line:
            assert "rss" in pages["/feeds/all.rss"][1] and "atom" in pages["/feeds/all.atom"][1]
            web_copy = pages[f"/digests/{issue}.html"][2]
            images = re.findall(r'<img[^>]+src="http://127\.0\.0\.1:8000(/[^"]+)"', web_copy)
            assert images, "the web copy's images do not point at the local site"
            check_images = serve_in_own_network(copy, line, env, images[:3] + ["/unsubscribe"])
            for path, (status, ctype, _) in check_images["pages"].items():  # type: ignore[union-attr]
                assert status == 200 and (path == "/unsubscribe" or ctype.startswith("image/")), f"{path}: {status} {ctype}"
            assert "use the link" in pages["/unsubscribe"][2].lower()
        else:
            assert "security" in pages["/"][2].lower(), pages["/"][2][:500]
        return
    if line == "publisher run":  # the service in the foreground: it takes the lease, runs its jobs, stops on SIGTERM
        with (copy / "run.log").open("w") as log:
            proc = subprocess.Popen(["bash", "-c", line], cwd=copy, env=env, stdout=log, stderr=subprocess.STDOUT, text=True)
        try:
            assert wait_for(lambda: "scheduler: running" in sh(copy, "publisher status", env).stdout, 60, proc), \
                (copy / "run.log").read_text()
        finally:
            rc = stop(proc)
        assert rc == 0, (copy / "run.log").read_text()[-3000:]
        return

    before = outbox(copy)
    if line.startswith("publisher subscribers import list.csv"):  # the example's own file: a newcomer's list
        (copy / "list.csv").write_text("email,topics\nimported@example.com,security-cooperation\n", encoding="utf-8")
    proc = sh(copy, line, env)
    out = proc.stdout + proc.stderr
    if line == "publisher doctor":  # the sample config is not ready to send for real, and says what to change
        assert proc.returncode == 1 and all(f"error: {check}:" in out for check in ("alignment", "unsubscribe", "postal-address")), out
        return
    assert proc.returncode == 0, f"{line!r} exited {proc.returncode}:\n{out[-3000:]}"
    after = outbox(copy)
    new = after[len(before):]

    if line.endswith("publisher run --once") and "venv" in line:  # the README's first command
        assert "ingest: 22 new" in out and "3 sent" in out, out
        assert {to(m) for m in new} == {"reader@example.com", "analyst@example.com", "editor@example.com"}
        issue = re.search(r"digest (\S+): 3 sent", out).group(1)  # type: ignore[union-attr]
        seen["issue"] = issue
        assert (copy / "public" / "feeds" / "all.rss").is_file() and (copy / "public" / "digests" / f"{issue}.html").is_file()
        assert f"open http://127.0.0.1:8000/digests/{issue}.html" in out, "the summary says how to look at the result"
        assert out.count("PUBLISHER_SECRET_KEY is not set") == 1, out
        return
    assert "PUBLISHER_SECRET_KEY is not set" not in out, f"{line}: the development-key warning again:\n{out}"
    if line == "publisher run --once":
        assert "ingest: 0 new" in out and "not due" in out and "--force-digest" in out, out
    elif line == "publisher ingest":
        assert "0 new" in out, out
    elif line == "publisher status":
        assert re.search(r"ingest: last 20\d\d-", out) and re.search(r"digest: last 20\d\d-", out), out
        assert f"last issue: {seen['issue']}" in out, out
    elif line == "publisher feeds build":
        assert "feeds:" in out and (copy / "public" / "feeds" / "topics" / "security-cooperation.atom").is_file()
    elif line == "publisher digest preview --out next.html":
        assert "<html" in (copy / "next.html").read_text(encoding="utf-8").lower()
    elif line == "publisher digest preview --text --email reader@example.com":
        assert "unsubscribe" in proc.stdout.lower(), proc.stdout[:500]
    elif line == "publisher digest preview --eml --out next.eml":
        msg = email.message_from_bytes((copy / "next.eml").read_bytes(), policy=email.policy.default)
        assert msg["Subject"] and msg.is_multipart()
    elif line == "publisher digest send --dry-run":
        assert "nothing sent" in out and not new, out
    elif line.startswith("publisher digest send --test-to "):
        address = line.split()[-1]
        assert [to(m) for m in new] == [address] and str(new[0]["Subject"]).startswith("[TEST]"), out
    elif line == "publisher digest send":
        assert "not sent (nothing new" in out and not new and "ahead of the schedule" not in out, out  # already sent: nothing new
    elif line.startswith('publisher digest note "'):
        note = line.split('"')[1]
        assert note in sh(copy, "publisher digest preview --text", env).stdout
    elif line == "publisher digest note --clear":
        assert "A special issue" not in sh(copy, "publisher digest preview --text", env).stdout
    elif line.startswith("publisher subscribers add ") and "--confirmed" not in line:
        address = line.split()[3]
        assert [to(m) for m in new] == [address] and "/confirm/" in new[0].get_body(("plain",)).get_content(), out  # type: ignore[union-attr]
        assert listed(copy, env)[address] == "pending" and "confirmation email was sent" in out
    elif line.startswith("publisher subscribers add ") and "--confirmed" in line:
        address = line.split()[3]
        shown = json.loads(sh(copy, f"publisher subscribers show {address}", env).stdout)
        assert shown["status"] == "active" and shown["topics"] == ["security-cooperation"] and not new
    elif line.startswith("publisher subscribers import list.csv"):
        assert "1 added" in out and listed(copy, env)["imported@example.com"] == "active", out
    elif line.startswith("publisher subscribers export"):
        text = (copy / "subscribers.csv").read_text(encoding="utf-8")
        assert text.startswith('"email"') or text.startswith("email"), text[:200]
        assert "colleague@example.com" in text
        (copy / "subscribers.csv").unlink()
    elif line == "publisher subscribers list --status active":
        assert "reader@example.com\tactive" in out and "newreader@example.com" not in out, out
    elif line.startswith("publisher subscribers show "):
        shown = json.loads(proc.stdout)
        assert [d["issue"] for d in shown["digests"] if d["status"] == "sent"] == [seen["issue"]], shown
    elif line.startswith("publisher subscribers forget "):
        address = line.split()[3]
        assert f"forgotten: {address}" in out and address not in listed(copy, env)
        for after_forget in ("publisher status", "publisher run --once"):  # nothing re-adds the sample address
            again = sh(copy, after_forget, env)
            assert again.returncode == 0, again.stdout + again.stderr
        assert address not in listed(copy, env)
    elif line.startswith("publisher subscribers remove "):
        assert listed(copy, env)[line.split()[3]] == "unsubscribed", out
    else:
        pytest.fail(f"no check for the example {line!r}: add one to tests/test_walkthrough.py")


def test_every_example_in_the_readme_and_every_help_works_in_order_on_a_fresh_copy(tmp_path: Path) -> None:
    copy = fresh_copy(tmp_path / "publisher")
    env = shell_env(copy)
    examples = [line for line in dict.fromkeys(readme_examples() + help_examples()) if "ENGINE=celery" not in line]
    assert examples[0].startswith("python3 -m venv .venv && .venv/bin/pip install -e . &&"), examples[:2]
    seen: dict[str, object] = {}
    ran = []
    for line in examples:
        if not_run(line):
            continue
        check(copy, line, env, seen)
        ran.append(line)
    print(f"{len(ran)} examples run in order, each checked:\n  " + "\n  ".join(ran))
    assert len(ran) >= 25


def test_the_deployment_examples_run_a_coordinator_and_a_worker_that_send_the_issue(tmp_path: Path, postgres_url: str, broker: str) -> None:  # noqa: F811
    """The README's Deployment block, as written, on PostgreSQL and RabbitMQ: a worker, then the coordinator (both
    starting on a new database: one migrates it, the other waits); the sample issue goes out through the worker, and
    both stop on SIGTERM with exit 0."""
    blocks = [line for line in readme_examples() + help_examples() if "ENGINE=celery" in line]
    worker_line = next(line for line in blocks if line.endswith("publisher worker"))
    run_line = next(line for line in blocks if line.endswith("publisher run"))
    copy = fresh_copy(tmp_path / "publisher")
    venv = subprocess.run(["bash", "-c", "python3 -m venv .venv && .venv/bin/pip install -q -e ."], cwd=copy, capture_output=True, text=True, timeout=600)
    assert venv.returncode == 0, venv.stderr[-3000:]
    # What the section tells the operator to set besides the engine: the PostgreSQL store and the broker.
    env = shell_env(copy, PUBLISHER_STORE__URL=postgres_url, PUBLISHER_BROKER_URL=broker,
                    PUBLISHER_DELIVERY__TASK_QUEUE=f"publisher-walkthrough-{uuid.uuid4().hex[:8]}")
    status_env = env | {"PUBLISHER_DELIVERY__ENGINE": "celery"}
    procs = []
    try:
        for line, ready in ((worker_line, "workers: 1 alive"), (run_line, "scheduler: running")):
            with (copy / f"{len(procs)}.log").open("w") as log:
                procs.append(subprocess.Popen(["bash", "-c", line], cwd=copy, env=env, stdout=log, stderr=subprocess.STDOUT, text=True))
            assert wait_for(lambda: ready in sh(copy, "publisher status", status_env).stdout, 90, procs[-1]), \
                (copy / f"{len(procs) - 1}.log").read_text()[-3000:]
        # The service sends on [digest].schedule (Monday 08:00); the operator sends the first issue now. With the
        # engine set, `digest send` is a coordinator too: the worker sends.
        sent = sh(copy, "publisher digest send --no-progress", status_env, timeout=300)
        assert sent.returncode == 0 and "3 sent" in sent.stdout, sent.stdout + sent.stderr + (copy / "0.log").read_text()[-3000:]
        status = sh(copy, "publisher status", status_env).stdout
    finally:
        codes = [stop(p) for p in reversed(procs)]
    assert {to(m) for m in outbox(copy)} == {"reader@example.com", "analyst@example.com", "editor@example.com"}
    assert "3 sent" in status, status
    assert codes == [0, 0], [(copy / f"{i}.log").read_text()[-2000:] for i in range(2)]
