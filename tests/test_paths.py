"""Issue 11, point 2: a hostile content/ folder cannot make us read or write outside our folders.

Real files, real symlinks, a real FIFO, and a real `publisher run --once` process: each attack is refused
with an error naming the file and the fix, and the sample publications beside it are still published.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import feedparser
import pytest

from publisher.errors import ContentFileError
from publisher.sources.files import FilesSource

from .conftest import REPO, TEST_SECRET_KEY
from .test_pipeline import publisher_exe

SECRET = "TOPSECRET-7f3a9c-do-not-publish"
LIMIT = 5_242_880  # the default [ingest].max_file_size: the tests run on the defaults, never a tuned limit
GOOD = '+++\ntitle = "Good"\ndate = 2024-03-01\ncontent_type = "Commentary"\n+++\nA good body.\n'
BASE = "http://127.0.0.1:8000"


def publication(title: str, *, topics: str = '["security-cooperation"]', extra: str = "") -> str:
    return f'+++\ntitle = "{title}"\ndate = 2024-03-01\ncontent_type = "Commentary"\ntopics = {topics}\n{extra}+++\nBody of {title}.\n'


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def make_outside(root: Path) -> Path:
    """Files an attacker wants read: a secret publication, a secret 'image', in a folder outside content/."""
    outside = root / "outside"
    write(outside / "secret.md", publication(SECRET))
    write(outside / "secret.png", SECRET)
    write(outside / "nested" / "also-secret.md", publication(SECRET + "-nested"))
    return outside


def make_hostile(content: Path, outside: Path, escape: str) -> dict[str, str]:
    """Every attack of the brief, beside the sample content. Returns {file name: phrase its error must carry}."""
    write(content / "topics" / "evil.md", f'+++\nslug = "{escape}/pwned"\nname = "Evil"\n+++\n')
    write(content / "topics" / "abs.md", f'+++\nslug = "{outside}/abs-pwned"\nname = "Absolute"\n+++\n')
    write(content / "topics" / "Bad Name.md", '+++\nname = "Bad name"\n+++\n')
    write(content / "publications" / "evil-topic.md", publication("Evil topic", topics=f'["security-cooperation", "{escape}/pwned-topic"]'))
    (content / "publications" / "leak.md").symlink_to(outside / "secret.md")
    (content / "publications" / "leaked-dir").symlink_to(outside, target_is_directory=True)
    (content / "images" / "leak.png").symlink_to(outside / "secret.png")
    write(content / "publications" / "evil-image.md", publication("Evil image", extra='[image]\nsrc = "images/leak.png"\nalt = "x"\n'))
    big = content / "publications" / "big.md"
    write(big, publication("Too big") + "x" * (LIMIT + 1))  # valid front matter: only the size refuses it
    with (content / "images" / "huge.png").open("wb") as fh:
        fh.truncate(LIMIT + 1)
    write(content / "publications" / "huge-image.md", publication("Huge image", extra='[image]\nsrc = "images/huge.png"\nalt = "x"\n'))
    (content / "publications" / "loop").symlink_to(".", target_is_directory=True)  # a loop: must not hang or repeat
    return {
        "evil.md:2": "is not a slug",
        "abs.md:2": "is not a slug",
        "Bad Name.md:1": "rename the file to bad-name.md, or set slug = \"bad-name\"",
        "evil-topic.md:5": "is not a slug",
        "leak.md": "is a symlink to",
        "leaked-dir": "copy the folder in instead",
        "evil-image.md:6": "copy the file in instead",
        "big.md": f"is {LIMIT + len(publication('Too big').encode()) + 1:,} bytes, over the limit of {LIMIT:,} ([ingest].max_file_size)",
        "huge-image.md:6": f"is {LIMIT + 1:,} bytes, over the limit of {LIMIT:,} ([ingest].max_file_size)",
    }


def snapshot(root: Path, *, skip: tuple[Path, ...]) -> dict[str, tuple[int, int] | None]:
    """Every path under ``root`` (not following symlinks), files with their size and mtime, leaving out ``skip``.

    Folders are listed without their mtime: making public/ and var/ inside the project touches the project's.
    """
    found: dict[str, tuple[int, int] | None] = {}
    for folder, dirs, files in os.walk(root):
        here = Path(folder)
        dirs[:] = [d for d in dirs if here / d not in skip]
        found.update({str((here / d).relative_to(root)): None for d in dirs})
        for name in files:
            st = (here / name).lstat()
            found[str((here / name).relative_to(root))] = (st.st_size, st.st_mtime_ns)
    return found


def run(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PUBLISHER_")}
    env["PUBLISHER_SECRET_KEY"] = TEST_SECRET_KEY
    return subprocess.run([*publisher_exe(), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=180)


def test_a_hostile_content_folder_writes_nothing_outside_and_the_sample_still_publishes(tmp_path: Path) -> None:
    project = tmp_path / "srv" / "site" / "project"  # deep enough that every escape lands inside tmp_path
    project.mkdir(parents=True)
    for name in ("content", "templates"):
        shutil.copytree(REPO / name, project / name)
    shutil.copy(REPO / "config.toml", project / "config.toml")
    outside = make_outside(tmp_path)
    # Six levels up from public/feeds/topics/ is tmp_path (the feed would land there); from public/topics/ it is
    # tmp_path's parent (the page would land beside it): both are watched.
    expected = make_hostile(project / "content", outside, "../../../../../..")
    before = snapshot(tmp_path, skip=(project / "public", project / "var"))
    neighbours = set(os.listdir(tmp_path.parent))

    proc = run(project, "run", "--once")

    assert proc.returncode == 0, proc.stderr
    assert "ingest: 22 new" in proc.stdout and f"{len(expected)} skipped" in proc.stdout, proc.stdout + proc.stderr
    for name, phrase in expected.items():
        line = next((ln for ln in proc.stderr.splitlines() if ln.startswith("  skipped") and f"/{name}" in ln), None)
        assert line is not None and phrase in line, f"{name}: {phrase!r} not reported:\n{proc.stderr}"
    assert "media: not copied" in proc.stderr and "leak.png" in proc.stderr and "huge.png" in proc.stderr
    # Nothing outside public/ and var/ changed, nor beside the test's folder.
    assert snapshot(tmp_path, skip=(project / "public", project / "var")) == before
    assert set(os.listdir(tmp_path.parent)) - neighbours <= {tmp_path.name}
    assert not list(tmp_path.rglob("*pwned*"))
    # The secret is nowhere in what we publish or send.
    for folder in (project / "public", project / "var" / "outbox"):
        for path in folder.rglob("*"):
            assert path.is_symlink() is False, path
            if path.is_file():
                assert SECRET.encode() not in path.read_bytes(), path
    assert not (project / "public" / "media" / "images" / "leak.png").exists()
    assert not (project / "public" / "media" / "images" / "huge.png").exists()
    # Every good publication is in the feeds, with its image copied.
    feed = feedparser.parse((project / "public" / "feeds" / "all.atom").read_bytes())
    assert len(feed.entries) == 22
    assert not {e.title for e in feed.entries} & {"Evil topic", "Evil image", "Too big", "Huge image", SECRET}
    topic = feedparser.parse((project / "public" / "feeds" / "topics" / "security-cooperation.atom").read_bytes())
    assert len(topic.entries) == 22
    assert sorted(p.name for p in (project / "public" / "feeds" / "topics").iterdir()) == [
        f"security-cooperation.{fmt}" for fmt in ("atom", "json", "rss")]
    assert len(list((project / "public" / "media" / "images").glob("*.png"))) == 18
    assert SECRET not in proc.stdout  # an error names the file, never its content


# -- each attack alone, on the FilesSource, with a good file beside it --------------------------------------


def fetch(content: Path):
    write(content / "publications" / "good.md", GOOD)
    result = FilesSource("content", content, BASE, "UTC").fetch()
    assert [p.title for p in result.publications] == ["Good"], result.errors
    return result


def only_error(result) -> ContentFileError:
    [err] = result.errors
    assert isinstance(err, ContentFileError)
    return err


@pytest.mark.parametrize("slug", ["../../../tmp/x", "/etc/cron.d/x", "a/b", "Upper", "under_score", "-lead", "double--hyphen",
                                  "", "dot.dot", "x" * 101, "naïve", "sp ace"])
def test_a_topic_slug_that_is_not_a_slug_is_refused_with_the_file_and_line(tmp_path: Path, slug: str) -> None:
    path = write(tmp_path / "topics" / "t.md", f'+++\nname = "T"\nslug = "{slug}"\n+++\n')
    err = only_error(result := fetch(tmp_path))
    assert (err.path, err.line) == (str(path), 3)
    assert ("not a slug" in err.reason or "a slug may have" in err.reason) and "for example" in err.reason
    assert result.topics == []


def test_a_topic_named_by_its_file_needs_a_file_name_that_is_a_slug(tmp_path: Path) -> None:
    write(tmp_path / "topics" / "Security Cooperation.md", '+++\nname = "S"\n+++\n')
    write(tmp_path / "topics" / "arctic-policy.md", '+++\nname = "Arctic"\n+++\n')
    result = fetch(tmp_path)
    err = only_error(result)
    assert err.path.endswith("Security Cooperation.md") and err.line == 1
    assert 'rename the file to security-cooperation.md, or set slug = "security-cooperation"' in err.reason
    assert [t.slug for t in result.topics] == ["arctic-policy"]


@pytest.mark.parametrize("topic", ["../../outside", "/abs", "Security Cooperation", " security-cooperation", "a/b"])
def test_a_publication_topic_that_is_not_a_slug_is_refused(tmp_path: Path, topic: str) -> None:
    path = write(tmp_path / "publications" / "p.md", publication("P", topics=f'["ok", "{topic}"]'))
    err = only_error(fetch(tmp_path))
    assert (err.path, err.line) == (str(path), 5) and "topics are the slugs of the files in topics/" in err.reason


def test_a_symlinked_publication_inside_is_read_and_one_outside_is_refused(tmp_path: Path) -> None:
    content, outside = tmp_path / "content", make_outside(tmp_path)
    write(content / "drafts" / "real.md", publication("Real"))
    (content / "publications" / "alias.md").parent.mkdir(parents=True)
    (content / "publications" / "alias.md").symlink_to(content / "drafts" / "real.md")  # inside: nothing leaves the folder
    (content / "publications" / "leak.md").symlink_to(outside / "secret.md")
    (content / "publications" / "relative-leak.md").symlink_to(Path("..") / ".." / "outside" / "secret.md")
    result = FilesSource("content", content, BASE, "UTC").fetch()
    assert sorted(p.id for p in result.publications) == ["drafts/real", "publications/alias"]
    refused = sorted(e.path for e in result.errors)
    assert refused == [str(content / "publications" / "leak.md"), str(content / "publications" / "relative-leak.md")]
    target = (outside / "secret.md").resolve()
    assert all(f"is a symlink to {target}" in e.reason and "copy the file in instead" in e.reason for e in result.errors)
    assert SECRET not in repr(result.publications)


def test_symlinked_folders_are_not_followed_out_nor_round_in_loops(tmp_path: Path) -> None:
    content, outside = tmp_path / "content", make_outside(tmp_path)
    write(content / "publications" / "p.md", publication("P"))
    (content / "partner").symlink_to(outside, target_is_directory=True)
    (content / "publications" / "again").symlink_to(content / "publications", target_is_directory=True)
    (content / "loop").symlink_to(".", target_is_directory=True)
    (content / "a").symlink_to("b")
    (content / "b").symlink_to("a")  # a loop of two links
    (content / "gone.md").symlink_to(tmp_path / "nothing-here.md")
    started = time.monotonic()
    result = FilesSource("content", content, BASE, "UTC").fetch()
    assert time.monotonic() - started < 5
    assert [p.title for p in result.publications] == ["P"]  # read once, under its real name
    reasons = {Path(e.path).name: e.reason for e in result.errors}
    assert sorted(reasons) == ["gone.md", "partner"]
    assert f"is a symlink to {outside.resolve()}, outside" in reasons["partner"] and "copy the folder in instead" in reasons["partner"]
    assert "broken symlink" in reasons["gone.md"]
    assert sum("not followed" in w for w in result.warnings) == 2  # again/ and loop/: said, not silently dropped


def test_an_image_src_leaving_content_is_refused_at_ingest(tmp_path: Path) -> None:
    content, outside = tmp_path / "content", make_outside(tmp_path)
    (content / "images").mkdir(parents=True)
    (content / "images" / "leak.png").symlink_to(outside / "secret.png")
    (content / "photos").symlink_to(outside, target_is_directory=True)
    shutil.copy(REPO / "content" / "images" / "americas-best-friend-in-asia.png", content / "images" / "ok.png")
    (content / "images" / "alias.png").symlink_to(content / "images" / "ok.png")
    cases = {"leak": "images/leak.png", "dir": "photos/secret.png", "up": "../outside/secret.png", "abs": str(outside / "secret.png"),
             "ok": "images/ok.png", "alias": "images/alias.png", "dots": "images/../images/ok.png"}
    for name, src in cases.items():
        write(content / "publications" / f"{name}.md", publication(name, extra=f'[image]\nsrc = "{src}"\nalt = "a"\n'))
    result = FilesSource("content", content, BASE, "UTC").fetch()
    urls = {p.title: p.image.url for p in result.publications}
    assert urls == {"ok": f"{BASE}/media/images/ok.png", "alias": f"{BASE}/media/images/ok.png", "dots": f"{BASE}/media/images/ok.png"}
    reasons = {Path(e.path).stem: e for e in result.errors}
    assert sorted(reasons) == ["abs", "dir", "leak", "photos", "up"]  # photos/: the folder link itself, refused by the walk
    assert all(reasons[n].line == 6 for n in ("abs", "dir", "leak", "up"))  # the [image] line
    assert "images/leak.png is a symlink to" in reasons["leak"].reason and "photos is a symlink to" in reasons["dir"].reason
    assert all("outside" in e.reason for e in reasons.values())


def test_an_oversized_file_is_refused_unread(tmp_path: Path) -> None:
    """A 40 GiB sparse file: were it read, the test would not end; it is refused from its size alone."""
    path = tmp_path / "publications" / "huge.md"
    path.parent.mkdir(parents=True)
    with path.open("wb") as fh:
        fh.write(b'+++\ntitle = "Huge"\n')
        fh.truncate(40 * 1024**3)
    started = time.monotonic()
    err = only_error(fetch(tmp_path))
    assert time.monotonic() - started < 5
    assert err.path == str(path) and f"is {40 * 1024**3:,} bytes, over the limit of {LIMIT:,} ([ingest].max_file_size)" in err.reason
    assert "raise max_file_size in config.toml" in err.reason


def test_a_file_at_the_limit_is_read(tmp_path: Path) -> None:
    text = GOOD.replace("Good", "Exactly at the limit")
    write(tmp_path / "publications" / "edge.md", text + "x" * (LIMIT - len(text.encode())))
    result = FilesSource("content", tmp_path, BASE, "UTC").fetch()
    assert result.errors == [] and [p.title for p in result.publications] == ["Exactly at the limit"]


def test_a_fifo_named_like_content_is_refused_without_hanging(tmp_path: Path) -> None:
    (tmp_path / "publications").mkdir()
    os.mkfifo(tmp_path / "publications" / "pipe.md")  # opening it for reading would block for ever
    started = time.monotonic()
    err = only_error(fetch(tmp_path))
    assert time.monotonic() - started < 5 and "not a regular file" in err.reason


def test_the_sample_content_passes_every_check(tmp_path: Path) -> None:
    result = FilesSource("content", REPO / "content", BASE, "UTC").fetch()
    assert (result.errors, result.warnings, len(result.publications)) == ([], [], 22)
    assert [t.slug for t in result.topics] == ["security-cooperation"]
