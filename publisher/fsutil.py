"""Files we read from content/ and write under public/: inside their root, of a bounded size, written atomically.

Every path built from data (a topic slug, a content type, an issue id, an image's path) goes through
:func:`safe_join`, which refuses anything that would land outside its root, even through a symlink already
on disk. Content is found with :func:`walk_inside`, which never follows a symlink out of its root, and read
with :func:`read_inside`, which checks again at the moment of reading and never reads more than the limit.
"""

from __future__ import annotations

import os
import re
import stat
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from .errors import PathRefused

# A slug is what becomes a file or folder name: lowercase ASCII words joined by single hyphens.
# Stricter than [a-z0-9-]+ on purpose: no leading, trailing or doubled hyphens, so "-", "--x" and ""
# are not names, and every slug is also a clean URL segment.
SLUG = re.compile(r"^[a-z0-9]+(?:-[a-z0-9]+)*$")
SLUG_MAX = 100  # characters: far under the 255 bytes a file name may have, with room for ".atom"
SLUG_RULE = "lowercase a-z, digits and single hyphens"
_NAME_MAX = 255  # bytes in one path component (ext4, APFS, NTFS)


def is_slug(text: object) -> bool:
    return isinstance(text, str) and len(text) <= SLUG_MAX and SLUG.fullmatch(text) is not None


def suggest_slug(text: str) -> str:
    """A slug close to ``text``, to offer as the fix."""
    return re.sub(r"[^a-z0-9]+", "-", text.lower())[:SLUG_MAX].strip("-") or "security-cooperation"


def slug_problem(text: str) -> str:
    """Why ``text`` is not a slug, and one it could be (for error messages)."""
    if len(text) > SLUG_MAX:
        what = f"{text[:40]!r}... is {len(text)} characters, over the {SLUG_MAX} a slug may have"
    else:
        what = f"{text!r} is not a slug ({SLUG_RULE} only)"
    return f"{what}; for example {suggest_slug(text)!r}"


def _inside(path: Path, root: Path) -> bool:
    return path == root or path.is_relative_to(root)


def safe_join(root: Path, *parts: str) -> Path:
    """``root / parts``, refused (:class:`PathRefused`) unless it is, once resolved, under ``root``.

    No part may be absolute or contain ``..`` (so the path written is the path checked), and the joined
    path is resolved, following symlinks already on disk, before it is compared with the resolved root.
    Returns the path as joined (not resolved), so callers can still take it relative to ``root``.
    """
    rel = Path()
    for part in parts:
        if "\x00" in part:
            raise PathRefused(root / part.replace("\x00", "\\0"), "the name contains a NUL byte")
        piece = Path(part)
        if piece.is_absolute() or ".." in piece.parts:
            raise PathRefused(root / part, f"{part!r} would leave {root}; a name from data may not be absolute or contain '..'")
        too_long = next((p for p in piece.parts if len(p.encode("utf-8", "surrogateescape")) > _NAME_MAX), None)
        if too_long is not None:
            raise PathRefused(root / part, f"the name {too_long[:40]!r}... is longer than {_NAME_MAX} bytes")
        rel = rel / piece
    joined = root / rel
    base = root.resolve()
    try:
        resolved = joined.resolve()
    except (OSError, RuntimeError) as exc:  # RuntimeError: a symlink loop (Python 3.11)
        raise PathRefused(joined, f"cannot be resolved ({exc})") from None
    if not _inside(resolved, base):
        raise PathRefused(joined, f"resolves to {resolved}, outside {root}; remove the symlink that leads there")
    return joined


@dataclass
class Walk:
    """What :func:`walk_inside` found: the files to read, the entries refused, and notes for the editor."""

    files: list[Path] = field(default_factory=list)
    refused: list[PathRefused] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def walk_inside(root: Path, wanted: Callable[[str], bool]) -> Walk:
    """Every file under ``root`` whose name is ``wanted``, sorted, never following a symlink out of ``root``.

    A symlink to a file inside ``root`` is read (an editor may give one image two names; nothing leaves
    the folder). A symlink that resolves outside is refused, a file or a folder alike, and so is a broken
    one that looks wanted. A symlink to a folder inside is not followed: its files are read where they
    really are (following it would read them twice under other names, and a link to a parent would loop).
    We walk ourselves rather than trust ``Path.rglob``, whose handling of symlinks differs between Python
    versions (3.11 yields symlinked files without a word and silently skips symlinked folders).
    """
    walk = Walk()
    base = root.resolve()
    _walk_dir(root, base, wanted, walk)
    walk.files.sort()
    return walk


def _walk_dir(folder: Path, base: Path, wanted: Callable[[str], bool], walk: Walk) -> None:
    try:
        with os.scandir(folder) as it:
            entries = sorted(it, key=lambda e: e.name)
    except OSError as exc:
        walk.refused.append(PathRefused(folder, f"cannot list the folder: {exc.strerror}"))
        return
    # A Path only for what is followed or kept (a folder may hold 10,000 images nobody asked for), made without
    # parsing again a name that scandir gave as one component (pathlib's own way in glob; plain "/" elsewhere).
    child = getattr(folder, "_make_child_relpath", folder.__truediv__)
    for entry in entries:
        if entry.is_symlink():
            _walk_symlink(child(entry.name), base, wanted, walk)
        elif entry.is_dir(follow_symlinks=False):
            _walk_dir(child(entry.name), base, wanted, walk)
        elif wanted(entry.name):
            walk.files.append(child(entry.name))


def _walk_symlink(path: Path, base: Path, wanted: Callable[[str], bool], walk: Walk) -> None:
    try:
        target = path.resolve(strict=True)
    except (OSError, RuntimeError):  # missing target, or a loop
        if wanted(path.name):
            walk.refused.append(PathRefused(path, "is a broken symlink (its target is missing, or it loops); fix or remove it"))
        return
    is_dir = target.is_dir()
    if not _inside(target, base):
        if is_dir or wanted(path.name):
            what = "folder" if is_dir else "file"
            walk.refused.append(PathRefused(path, f"is a symlink to {target}, outside {base}; copy the {what} in instead"))
        return
    if is_dir:
        walk.notes.append(f"{path}: a symlink to the folder {target}, which is read where it is; the link is not followed")
        return
    if wanted(path.name):
        walk.files.append(path)


def read_inside(root: Path, path: Path, limit: int) -> bytes:
    """The bytes of ``path``: refused unless it resolves under ``root``, is a regular file and holds at most ``limit`` bytes.

    The size is checked with stat before anything is read, and the read itself stops at ``limit`` + 1 bytes
    (a file that grows after the check is refused too). Opened non-blocking, so a FIFO cannot hang us.
    """
    return read_inside_stat(root, path, limit)[0]


def read_inside_stat(root: Path, path: Path, limit: int) -> tuple[bytes, os.stat_result]:
    """:func:`read_inside`, with the stat of the file that was read (taken from the open file, before reading)."""
    try:
        real = path.resolve(strict=True)
    except (OSError, RuntimeError) as exc:
        raise PathRefused(path, f"cannot be read: {getattr(exc, 'strerror', None) or exc}") from None
    if not _inside(real, root.resolve()):
        raise PathRefused(path, f"is a symlink to {real}, outside {root}; copy the file in instead")
    try:
        fd = os.open(real, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0))
    except OSError as exc:
        raise PathRefused(path, f"cannot be read: {exc.strerror}") from None
    with os.fdopen(fd, "rb") as fh:
        info = os.fstat(fh.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise PathRefused(path, "is not a regular file (a FIFO, a device or a socket?); only plain files are read")
        check_size(path, info.st_size, limit)
        data = fh.read(limit + 1)
    check_size(path, len(data), limit)
    return data, info


def check_size(path: Path, size: int, limit: int) -> None:
    if size > limit:
        raise PathRefused(path, f"is {size:,} bytes, over the limit of {limit:,} ([ingest].max_file_size); "
                                "make the file smaller, or raise max_file_size in config.toml")


def write_atomic(path: Path, data: bytes, *, durable: bool = True, mode: int = 0o644) -> bool:
    """Write ``data`` to ``path`` via a temp file and rename. False (and no write) when the bytes are the same.

    Readers see the old file or the new one, never part of one. ``durable`` also fsyncs before the rename, so a
    power cut cannot leave an empty file; files rebuilt from the store on every cycle (feeds, pages) skip that.
    """
    try:
        if path.read_bytes() == data:
            return False
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            if durable:
                fh.flush()
                os.fsync(fh.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return True
