"""The content/ folder: one Markdown file per publication, with TOML (+++) or YAML (---) front matter.

Files under ``topics/`` describe topics (``slug``, ``name``; the body is the description).
Every other ``*.md`` file is a publication. See content/README.md for the keys. A publication must have a date,
and each of its topics must be known (a file under ``topics/``, or a topic the store already holds): an unknown one
is most often a typo, and is reported with the closest known slug. A publication file with ``draft = true`` is kept
out (``SourceResult.drafts``), and checked no further; files known and gone are sorted into ``gone`` (withdrawn by the
ingest) and ``held`` (not: the folder looks lost rather than emptied; see ``FilesSource._gone``).

The folder is treated as hostile: a symlink out of it is refused (files and images alike), a file over
``[ingest].max_file_size`` is refused before it is read, and every slug is checked, since slugs become
file names under public/. Each refusal is one skipped item; the rest of the folder goes on. Errors and warnings
name a file from the folder (``publications/x.md:4``), as editors know it; ``ContentFileError.path`` is the full path.
"""

from __future__ import annotations

import bisect
import hashlib
import json
import os
import re
import stat
import tomllib
from dataclasses import dataclass, replace
from datetime import date, datetime, time
from pathlib import Path
from time import time_ns
from typing import Any
from urllib.parse import quote
from zoneinfo import ZoneInfo

import markdown_it
import yaml
from markdown_it import MarkdownIt

from .. import __version__
from ..config import IngestConfig
from ..errors import ContentFileError
from ..feeds import IMAGE_SUFFIXES
from ..fsutil import PathRefused, is_slug, read_inside, read_inside_stat, slug_problem, suggest_slug, walk_inside
from ..models import Image, Publication, Topic, suggest_topic
from . import FileState, SourceResult

_md = MarkdownIt("commonmark", {"html": False, "typographer": False}).enable("table")
_TOML_POS = re.compile(r"\(at line (\d+), column (\d+)\)")
PUBLICATION_KEYS = {
    "id", "title", "date", "updated", "content_type", "topics", "authors", "summary", "url",
    "featured", "featured_rank", "image", "draft",
}
IMAGE_KEYS = {"src", "alt", "caption", "credit"}
TYPE_MAX = 100  # publications.content_type is VARCHAR(100)
DEFAULT_MAX_FILE_SIZE = IngestConfig.max_file_size
# Bump when reading a file gives something else for the same bytes: every file is parsed again once.
# 2: a missing date and an unknown topic are refused; messages name files from the folder.
PARSER_VERSION = 2
# A stat is trusted to mean "not changed" only for a file whose mtime and ctime were this much older than the
# moment it was read: a write in the same clock tick as the read leaves the same stat (git's "racy clean" case);
# 2 s covers the coarsest timestamps (FAT, some network file systems).
RACY_NS = 2_000_000_000


@dataclass(frozen=True)
class FrontMatter:
    data: dict[str, Any]
    body: str
    lines: list[str]  # the front-matter lines, for pointing at a key
    first_line: int  # file line number of the first front-matter line
    fence: str = "+++"  # "+++" (TOML) or "---" (YAML): how a fix is spelt (date = ... or date: ...)


class _YamlLoader(yaml.SafeLoader):
    """PyYAML's safe loader, whose impossible dates (2024-02-30) are errors with their line like any other: its own
    raise a bare ValueError, with no position."""

    def construct_yaml_timestamp(self, node: yaml.ScalarNode) -> Any:
        try:
            return super().construct_yaml_timestamp(node)
        except ValueError as exc:
            raise yaml.constructor.ConstructorError(None, None, f"{node.value!r} is not a date ({exc})", node.start_mark) from None


_YamlLoader.add_constructor("tag:yaml.org,2002:timestamp", _YamlLoader.construct_yaml_timestamp)


class FilesSource:
    def __init__(self, name: str, folder: Path, base_url: str, timezone: str, *, max_file_size: int = DEFAULT_MAX_FILE_SIZE) -> None:
        self.name = name
        self.folder = folder
        self.base_url = base_url.rstrip("/")
        self.tz = ZoneInfo(timezone)
        self.max_file_size = max_file_size
        # How each file was last ingested (path -> state), set by ingest from the store: a file whose stat, or else
        # whose bytes, are the same is not parsed again. None: every file is read and parsed.
        self.known: dict[str, FileState] | None = None
        # The topic slugs known besides this folder's topics/ (the store's, set by ingest once per ingest): a publication
        # naming a topic that is neither is refused. None: topics are not checked (no store to ask).
        self.known_topics: set[str] | None = None
        self._topics_now: set[str] | None = None  # during a fetch: known_topics and the folder's topics
        self._root: Path | None = None
        self._plain_dirs: dict[str, bool] = {}  # folder under ours (relative) -> a real folder, no symlink on the way

    def __repr__(self) -> str:
        return f"FilesSource({self.name!r}, {str(self.folder)!r})"

    def fetch(self) -> SourceResult:
        result = SourceResult()
        if not self.folder.is_dir():
            known = self.known or {}
            fix = f"fix [sources.{self.name}].path in config.toml"
            if any(s.kind == "publication" for s in known.values()):  # the folder moved, or a mount is missing: withdraw nothing
                count = sum(s.kind == "publication" for s in known.values())
                reason = f"folder not found: nothing was withdrawn (the store knows {count} publication file(s) from it). If the folder moved, {fix}"
            else:
                reason = f"folder not found; create it or {fix}"
            result.errors.append(ContentFileError(self.name, self.folder, None, reason))
            result.held = sorted(known)
            return result
        walk = walk_inside(self.folder, _is_content_file)
        result.errors.extend(self._shown(ContentFileError(self.name, r.path, None, r.reason)) for r in walk.refused)
        result.warnings.extend(walk.notes)
        known = self.known or {}
        settings = self.settings()
        self._root, self._plain_dirs = None, {}  # what the folder looks like now, not at a previous fetch
        images: dict[str, tuple[str | None, str]] = {}  # src -> _local_image(src), once per ingest
        seen: set[str] = set()
        prefix = os.path.join(str(self.folder), "")
        # Topics first, so that a publication read before its topic's file (publications/ sorts before topics/) finds it.
        # A topic file counts by its name even when it is refused: its own error says what to fix, once.
        ordered, topic_files = _topics_first(walk.files, self.folder)
        self._topics_now = None if self.known_topics is None else set(self.known_topics) | {p.stem for p in topic_files}
        for path in ordered:
            name = str(path)  # the key by string slicing: Path.relative_to costs as much as the stat, 20,000 times
            key = name[len(prefix):] if name.startswith(prefix) else path.relative_to(self.folder).as_posix()
            if os.sep != "/":
                key = key.replace(os.sep, "/")
            seen.add(key)
            old = known.get(key)
            usable = old is not None and old.item_hash != "" and old.settings == settings
            try:
                if usable and old is not None:
                    try:
                        st = os.stat(name)  # follows a symlink inside the folder, as reading does
                    except OSError:
                        pass  # reading it says why
                    else:
                        if _same_stat(old, st) and not _racy(old) and self._same_image(old, images):
                            if old.kind == "draft":
                                result.drafts.append(old)
                                continue
                            if old.kind == "topic" and self._topics_now is not None:
                                self._topics_now.add(old.item_id)
                            result.unchanged.append(old)
                            result.warnings.extend(old.warnings)
                            result.not_read += 1
                            continue
                read_ns = time_ns()
                data, st = _read(self.name, path, self.folder, self.max_file_size)
                rel = path.relative_to(self.folder)
                file_hash = hashlib.sha256(data).hexdigest()
                state = FileState(path=key, kind="topic" if rel.parts[0] == "topics" else "publication", item_id="", item_hash="",
                                  size=st.st_size, mtime_ns=st.st_mtime_ns, ctime_ns=st.st_ctime_ns, file_id=f"{st.st_dev}:{st.st_ino}",
                                  read_ns=read_ns, file_hash=file_hash, settings=settings)
                if (usable and old is not None and old.file_hash == file_hash and old.kind in (state.kind, "draft" if state.kind == "publication" else "")
                        and self._same_image(old, images)):
                    # Touched, checked out again, or read too soon after a write: the same bytes give the same item.
                    if old.kind == "draft":
                        result.drafts.append(_replace(old, state))
                        continue
                    if old.kind == "topic" and self._topics_now is not None:
                        self._topics_now.add(old.item_id)
                    result.unchanged.append(_replace(old, state))
                    result.warnings.extend(old.warnings)
                    continue
                fm = _front_matter(self.name, path, data)
                if state.kind == "topic":
                    topic = self._topic(path, fm)
                    if self._topics_now is not None:
                        self._topics_now.add(topic.slug)
                    result.topics.append(topic)
                    result.file_states[id(topic)] = replace(state, item_id=topic.slug)
                elif (draft_id := self._draft(path, rel, fm)) is not None:  # kept out, and not checked any further
                    result.drafts.append(replace(state, kind="draft", item_id=draft_id, item_hash=file_hash))
                else:
                    pub, warnings, image = self._publication(path, rel, fm)
                    result.publications.append(pub)
                    result.warnings.extend(warnings)
                    result.file_states[id(pub)] = replace(state, item_id=pub.id, warnings=tuple(warnings),
                                                          image_src=image[0] if image else None, image_rel=image[1] if image else None)
            except ContentFileError as exc:
                result.errors.append(self._shown(exc))
        self._topics_now = None
        self._gone(result, known, seen, [r.path for r in walk.refused])
        return result

    def _gone(self, result: SourceResult, known: dict[str, FileState], seen: set[str], refused: list[str]) -> None:
        """Sort the files known and not found now into ``gone`` (their publications are withdrawn) and ``held`` (not).

        A file under a folder that could not be listed, or refused itself (a symlink out), is not gone: it is an error
        like any other, and what it gave stays. Nor is anything when the publications look lost rather than deleted:
        publications/ missing while the store knows files in it, or every known publication file gone at once (at
        least 2): that is a folder moved or unmounted far more often than an editor's decision, so nothing is withdrawn
        and the error says how to withdraw them all on purpose."""
        prefix = os.path.join(str(self.folder), "")
        under = ["" if r == str(self.folder) else r[len(prefix):].replace(os.sep, "/") for r in refused if r == str(self.folder) or r.startswith(prefix)]
        missing = set(known) - seen
        held = {k for k in missing if any(not u or k == u or k.startswith(u + "/") for u in under)}
        gone = missing - held
        published = [k for k, s in known.items() if s.kind == "publication"]
        inside = [k for k in published if k.startswith("publications/")]
        sub = self.folder / "publications"
        where, count, what = None, 0, ""
        if inside and not sub.is_dir():
            where, count, what = sub, len(inside), "has none of the {count} files the store knows (the folder is missing)"
        elif len(published) >= 2 and all(k in missing for k in published):
            where, count = (sub, len(inside)) if len(inside) == len(published) else (self.folder, len(published))
            what = "has none of the {count} files the store knows"
        if where is not None:
            result.errors.append(ContentFileError(
                self.name, f"{where}{os.sep}", None,
                f"{what.format(count=count)}: nothing was withdrawn. If the folder moved, fix [sources.{self.name}].path in config.toml; "
                f"if you meant to withdraw them all, set draft = true (draft: true in YAML front matter) in each of them, let one ingest "
                f"run (it withdraws them), then delete them"))
            held |= gone
            gone = set()
        result.gone = sorted(gone)
        result.held = sorted(held)

    def _draft(self, path: Path, rel: Path, fm: FrontMatter) -> str | None:
        """The id a publication file with ``draft = true`` would have (None when it is no draft). Nothing else in it is
        checked: editors keep drafts incomplete."""
        if "draft" not in fm.data:
            return None
        value = fm.data["draft"]
        if not isinstance(value, bool):
            spelt = "draft = true" if fm.fence == "+++" else "draft: true"
            raise _error(self.name, path, fm, "draft", f"draft must be true or false, got {value!r}; write {spelt} to keep the file "
                                                       "unpublished, or remove the line to publish it")
        if not value:
            return None
        given = fm.data.get("id")
        return given if isinstance(given, str) and given else rel.with_suffix("").as_posix()

    def _shown(self, exc: ContentFileError) -> ContentFileError:
        """The error with its file named from the folder (``publications/x.md:4``); its ``path`` stays the full one."""
        full = exc.path
        prefix = os.path.join(str(self.folder), "")
        if not full.startswith(prefix):
            return exc  # the folder itself (not found), or a path from elsewhere
        err = ContentFileError(exc.source, full[len(prefix):].replace(os.sep, "/"), exc.line, exc.reason)
        err.path = full
        return err

    def settings(self) -> str:
        """A fingerprint of everything but the bytes that reading a file depends on: a change parses every file again."""
        parts = [PARSER_VERSION, __version__, markdown_it.__version__, yaml.__version__, self.base_url, str(self.tz),
                 self.max_file_size, str(self.folder.absolute()), sorted(IMAGE_SUFFIXES)]
        return hashlib.sha256(json.dumps(parts).encode()).hexdigest()

    def _same_image(self, old: FileState, images: dict[str, tuple[str | None, str]]) -> bool:
        """Whether the local image a file names is still found where it was (and not refused now)."""
        if old.image_src is None:
            return True
        if old.image_src not in images:
            images[old.image_src] = self._plain_image(old.image_src) or self._local_image(old.image_src)
        rel, problem = images[old.image_src]
        return not problem and (rel or "") == old.image_rel

    def _topic(self, path: Path, fm: FrontMatter) -> Topic:
        slug = _get(self.name, path, fm, "slug", str, default=path.stem)
        if not is_slug(slug):  # the slug names the topic's feeds and page: public/feeds/topics/<slug>.rss
            if "slug" in fm.data:
                raise _error(self.name, path, fm, "slug", f"slug {slug_problem(slug)}")
            fix = suggest_slug(slug)
            raise ContentFileError(self.name, path, fm.first_line - 1, f"the file name is the topic's slug, and {slug_problem(slug)}: "
                                                                       f"rename the file to {fix}.md, or set slug = \"{fix}\"")
        name = _get(self.name, path, fm, "name", str)
        return Topic(slug=slug, name=name, description=fm.body.strip())

    def _publication(self, path: Path, rel: Path, fm: FrontMatter) -> tuple[Publication, list[str], tuple[str, str] | None]:
        """The publication, its warnings, and the local image it names: (src, where it was found or "")."""
        def get(key: str, kind: type | tuple[type, ...], default: Any = ...) -> Any:
            return _get(self.name, path, fm, key, kind, default)

        unknown = sorted(set(fm.data) - PUBLICATION_KEYS)
        if unknown:
            raise _error(self.name, path, fm, unknown[0], f"unknown key {unknown[0]!r}; known keys: {', '.join(sorted(PUBLICATION_KEYS))}")
        title = get("title", str).strip()
        if not title:
            raise _error(self.name, path, fm, "title", "title is empty")
        shown = rel.as_posix()
        warnings = []
        if fm.data.get("date") is None:  # missing, or YAML's "date:" with nothing after it
            today = datetime.now(self.tz).date().isoformat()
            line = _line_of(fm, "date") if "date" in fm.data else fm.first_line - 1
            raise ContentFileError(self.name, path, line, f"missing required key 'date'; add date{' =' if fm.fence == '+++' else ':'} "
                                                          f"{today} (the day it was published) to the front matter")
        published = self._datetime(path, fm, "date", get("date", (date, datetime, str)))
        updated_raw = get("updated", (date, datetime, str), None)
        updated = self._datetime(path, fm, "updated", updated_raw) if updated_raw is not None else published
        if updated and updated < published:
            updated = published
        authors = get("authors", (list, str), [])
        authors = [authors] if isinstance(authors, str) else authors
        topics = get("topics", list, [])
        for key, values in (("authors", authors), ("topics", topics)):
            if not all(isinstance(v, str) and v.strip() for v in values):
                raise _error(self.name, path, fm, key, f"{key} must be a list of non-empty strings")
        bad_topic = next((t for t in topics if not is_slug(t)), None)
        if bad_topic is not None:
            raise _error(self.name, path, fm, "topics", f"topic {slug_problem(bad_topic)}; topics are the slugs of the files in topics/")
        known_topics = self._topics_now
        if known_topics is not None:
            unknown_topic = next((t for t in topics if t not in known_topics), None)
            if unknown_topic is not None:
                raise _error(self.name, path, fm, "topics", f"unknown topic {unknown_topic!r};"
                                                            f"{suggest_topic(unknown_topic, known_topics, topics_dir='topics/')}")
        content_type = get("content_type", str).strip()
        if not content_type or len(content_type) > TYPE_MAX:
            raise _error(self.name, path, fm, "content_type", f"content_type must be 1 to {TYPE_MAX} characters, like 'Commentary'")
        rank = get("featured_rank", int, None)
        pub_id = get("id", str, rel.with_suffix("").as_posix())
        url = get("url", str, f"{self.base_url}/publications/{quote(path.stem)}/")  # a file name may hold spaces, quotes...
        if not re.match(r"^https?://", url):
            raise _error(self.name, path, fm, "url", f"url must be absolute (https://...), got {url!r}")
        image, image_warnings, local = self._image(path, shown, fm)
        warnings.extend(image_warnings)
        pub = Publication(
            id=pub_id, url=url, title=title, summary=get("summary", str, "").strip(),
            content_type=content_type, published_at=published, updated_at=updated,
            topics=tuple(topics), authors=tuple(a.strip() for a in authors), image=image,
            featured=get("featured", bool, False) or rank is not None, featured_rank=rank,
            body_html=_md.render(fm.body).strip(), source=self.name,
        )
        return pub, warnings, local

    def _image(self, path: Path, shown: str, fm: FrontMatter) -> tuple[Image | None, list[str], tuple[str, str] | None]:
        raw = _get(self.name, path, fm, "image", dict, None)
        if raw is None:
            return None, [], None
        unknown = sorted(set(raw) - IMAGE_KEYS)
        if unknown or not isinstance(raw.get("src"), str) or not all(isinstance(v, str) for v in raw.values()):
            raise _error(self.name, path, fm, "image", f"image needs src (and optional alt, caption, credit), all strings; got keys {sorted(raw)}")
        src = raw["src"]
        warnings = []
        local = None
        if re.match(r"^https?://", src):
            url = src
        else:
            rel, problem = self._local_image(src)
            if problem:
                raise _error(self.name, path, fm, "image", problem)
            local = (src, rel or "")
            if rel is None:
                warnings.append(f"{shown}: image {src!r} not found in {self.folder}")
                rel = os.path.normpath(src)
            elif Path(rel).suffix.lower() not in IMAGE_SUFFIXES:
                kinds = ", ".join(sorted(IMAGE_SUFFIXES))
                warnings.append(f"{shown}: image {src!r} is not published: only {kinds} files are copied to media/")
            url = f"{self.base_url}/media/{Path(rel).as_posix()}"
        alt = raw.get("alt", "").strip()
        if not alt:
            warnings.append(f"{shown}: image has no alt text; the caption or title stands in")
        return Image(url=url, alt=alt, caption=raw.get("caption", "").strip(), credit=raw.get("credit", "").strip()), warnings, local

    def _plain_image(self, src: str) -> tuple[str, str] | None:
        """What :meth:`_local_image` answers for an image that is a plain file under the folder, no symlink on the way
        and within the size limit, at the cost of a stat or two; None for anything else (then ask _local_image)."""
        lexical = os.path.normpath(src)  # strings, not Paths: this runs for every unchanged file with an image
        if os.path.isabs(src) or os.path.splitdrive(src)[0] or lexical == ".." or lexical.startswith("../") or "\x00" in src:
            return None
        parent = os.path.dirname(lexical)
        if parent not in self._plain_dirs:
            self._plain_dirs[parent] = _plain_dir(self.folder, parent)
        if not self._plain_dirs[parent]:
            return None
        try:
            st = os.lstat(os.path.join(self.folder, lexical))
        except OSError:
            return None
        if not stat.S_ISREG(st.st_mode) or st.st_size > self.max_file_size:
            return None
        return lexical.replace(os.sep, "/"), ""

    def _local_image(self, src: str) -> tuple[str | None, str]:
        """(the image's path relative to the folder, or None when it is missing; why it is refused, or "")."""
        lexical = os.path.normpath(src)
        if Path(src).is_absolute() or lexical == ".." or lexical.startswith("../") or "\x00" in src:
            return None, f"image src {src!r} points outside the content folder; give a path inside it, like 'images/photo.png'"
        if self._root is None:
            self._root = self.folder.resolve()
        root = self._root
        try:
            real = (self.folder / lexical).resolve()
        except (OSError, RuntimeError):  # a symlink loop (RuntimeError on Python 3.11)
            return None, f"image src {src!r} is a symlink loop; fix or remove the link"
        if not (real == root or real.is_relative_to(root)):
            link = _first_symlink(self.folder, lexical)
            where = f"{link} is a symlink to {link.resolve()}" if link else f"it resolves to {real}"
            return None, f"image src {src!r}: {where}, outside {self.folder}; copy the file in instead"
        if not real.is_file():
            return None, ""
        size = real.stat().st_size  # before anything reads it: copy_media refuses it too
        if size > self.max_file_size:
            return None, (f"image {src!r} is {size:,} bytes, over the limit of {self.max_file_size:,} ([ingest].max_file_size); "
                          "make the image smaller, or raise max_file_size in config.toml")
        return real.relative_to(root).as_posix(), ""

    def _datetime(self, path: Path, fm: FrontMatter, key: str, value: date | datetime | str) -> datetime:
        """Day-precision dates are midnight in the site's time zone; naive times are read in it too."""
        if isinstance(value, str):
            try:
                value = datetime.fromisoformat(value.strip())
            except ValueError:
                raise _error(self.name, path, fm, key, f"{key} {value!r} is not a date; write it as 2024-02-26 or 2024-02-26T09:30:00+01:00") from None
        if not isinstance(value, datetime):
            value = datetime.combine(value, time(0, 0))
        return value.replace(tzinfo=self.tz) if value.tzinfo is None else value


def _topics_first(files: list[Path], folder: Path) -> tuple[list[Path], list[Path]]:
    """(``files`` with those under ``folder/topics/`` first, those), from the sorted list a walk gives: the topic files
    are one run in it, found by bisection (no pass over 20,000 paths). Always a reordering of ``files``, sorted or not."""
    lo = bisect.bisect_left(files, folder / "topics")
    hi = bisect.bisect_left(files, folder / "topics\x00", lo)  # the first name after "topics" and every path under it
    topic_files = [p for p in files[lo:hi] if p.parent.parts[:len(folder.parts) + 1] == (*folder.parts, "topics")]
    if not topic_files:
        return files, []
    return files[lo:hi] + files[:lo] + files[hi:], topic_files


def _plain_dir(folder: Path, rel: str) -> bool:
    """Whether ``folder / rel`` is a folder reached without following any symlink."""
    path = str(folder)
    for part in Path(rel).parts:
        path = os.path.join(path, part)
        try:
            if not stat.S_ISDIR(os.lstat(path).st_mode):
                return False
        except OSError:
            return False
    return True


def _is_content_file(name: str) -> bool:
    return name.endswith(".md") and name.lower() != "readme.md"


def _first_symlink(folder: Path, rel: str) -> Path | None:
    """The first component of ``folder / rel`` that is a symlink (to name it in an error)."""
    path = folder
    for part in Path(rel).parts:
        path = path / part
        if path.is_symlink():
            return path
    return None


def parse_front_matter(source: str, path: Path, *, root: Path | None = None, max_size: int = DEFAULT_MAX_FILE_SIZE) -> FrontMatter:
    """Read and split one content file; ``root`` (default: its folder) is where it must stay, ``max_size`` its cap in bytes."""
    try:
        data = read_inside(root or path.parent, path, max_size)
    except PathRefused as exc:
        raise ContentFileError(source, path, None, exc.reason) from None
    return _front_matter(source, path, data)


def _read(source: str, path: Path, root: Path, max_size: int) -> tuple[bytes, os.stat_result]:
    try:
        return read_inside_stat(root, path, max_size)
    except PathRefused as exc:
        raise ContentFileError(source, path, None, exc.reason) from None


def _same_stat(old: FileState, st: os.stat_result) -> bool:
    return (old.size, old.mtime_ns, old.ctime_ns, old.file_id) == (st.st_size, st.st_mtime_ns, st.st_ctime_ns, f"{st.st_dev}:{st.st_ino}")


def _racy(old: FileState) -> bool:
    """Changed, or not, within the clock tick it was read in: its stat cannot tell, so its bytes are compared."""
    return max(old.mtime_ns, old.ctime_ns) >= old.read_ns - RACY_NS


def _replace(old: FileState, new: FileState) -> FileState:
    """``old`` (what the file gave) with ``new``'s stat and time of reading."""
    return replace(old, size=new.size, mtime_ns=new.mtime_ns, ctime_ns=new.ctime_ns, file_id=new.file_id, read_ns=new.read_ns)


def _front_matter(source: str, path: Path, data: bytes) -> FrontMatter:
    """Split the bytes of one content file into its front matter and body."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ContentFileError(source, path, None, f"not UTF-8 text ({exc.reason} at byte {exc.start}); save it as UTF-8") from None
    text = text.lstrip("\ufeff")
    lines = text.splitlines()
    fence = lines[0].strip() if lines else ""
    if fence not in ("+++", "---"):
        raise ContentFileError(source, path, 1, "no front matter: start the file with a line '+++' (TOML) or '---' (YAML)")
    try:
        end = next(i for i in range(1, len(lines)) if lines[i].strip() == fence)
    except StopIteration:
        raise ContentFileError(source, path, 1, f"front matter opened with {fence!r} is never closed; add a line {fence!r} after it") from None
    head = lines[1:end]
    body = "\n".join(lines[end + 1:])
    first = 2  # the file's line number of head[0]: the front matter starts after the opening fence
    try:
        if fence == "+++":
            data: Any = tomllib.loads("\n".join(head) + "\n")
        else:
            data = yaml.load("\n".join(head), Loader=_YamlLoader) or {}  # a SafeLoader: no Python objects
    except tomllib.TOMLDecodeError as exc:
        m = _TOML_POS.search(str(exc))
        line = int(m.group(1)) + first - 1 if m else end + 1  # "at end of document": point at the closing fence
        reason = _TOML_POS.sub(f"(column {m.group(2)})", str(exc)) if m else str(exc)
        raise ContentFileError(source, path, line, f"invalid TOML front matter: {reason}") from None
    except yaml.YAMLError as exc:
        line, reason = _yaml_problem(exc, "\n".join(head), first)
        raise ContentFileError(source, path, line, f"invalid YAML front matter: {reason}") from None
    except ValueError as exc:  # another value PyYAML builds itself and refuses with no position
        raise ContentFileError(source, path, first - 1, f"invalid YAML front matter: {exc}") from None
    if not isinstance(data, dict):
        raise ContentFileError(source, path, 2, "front matter must be a table of key = value pairs")
    odd = [k for k in data if not isinstance(k, str)]
    if odd:
        raise ContentFileError(source, path, 2, f"front matter key {odd[0]!r} is not a name; keys are words like title or date")
    return FrontMatter(data=data, body=body, lines=head, first_line=first, fence=fence)


def _yaml_problem(exc: yaml.YAMLError, text: str, first: int) -> tuple[int, str]:
    """(the file's line, what PyYAML says) for a YAML error in ``text``, whose first line is the file's line ``first``.

    PyYAML counts lines from 0 in the text it was given (``problem_mark.line``); its "context" says where the thing
    it was reading began (the quote never closed, the list never ended), which is often the line to fix."""
    if isinstance(exc, yaml.reader.ReaderError):  # a character YAML does not allow: a position, no mark
        line = text.count("\n", 0, exc.position) + first
        char = f"#x{exc.character:04x}" if isinstance(exc.character, int) else repr(exc.character)
        return line, f"unacceptable character {char}: {exc.reason}; remove it"
    if not isinstance(exc, yaml.MarkedYAMLError) or exc.problem_mark is None:
        return first - 1, str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    line = exc.problem_mark.line + first
    reason = exc.problem or str(exc).splitlines()[0]
    context = exc.context_mark.line + first if exc.context and exc.context_mark is not None else line
    if context != line and exc.problem_mark.index >= len(text):  # the end came first: the line to fix is where it began
        return context, f"{exc.context} from this line, {reason}"
    if context != line:
        reason += f" ({exc.context} that starts on line {context})"
    return line, reason


def _line_of(fm: FrontMatter, key: str) -> int:
    pattern = re.compile(rf"^\s*(\[)?\s*{re.escape(key)}\s*[=:\]]")
    for i, line in enumerate(fm.lines):
        if pattern.match(line):
            return fm.first_line + i
    return fm.first_line - 1


def _error(source: str, path: Path, fm: FrontMatter, key: str, reason: str) -> ContentFileError:
    return ContentFileError(source, path, _line_of(fm, key), reason)


_TYPE_NAMES = {str: "a string", int: "an integer", bool: "true or false", list: "a list", dict: "a table",
               date: "a date", datetime: "a date and time"}


def _get(source: str, path: Path, fm: FrontMatter, key: str, kind: type | tuple[type, ...], default: Any = ...) -> Any:
    if key not in fm.data:
        if default is ...:
            raise ContentFileError(source, path, fm.first_line - 1, f"missing required key {key!r}; add it to the front matter")
        return default
    value = fm.data[key]
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
        expected = " or ".join(_TYPE_NAMES.get(k, k.__name__) for k in kinds)
        raise _error(source, path, fm, key, f"{key} must be {expected}, got {value!r}")
    return value
