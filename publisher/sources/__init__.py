"""Sources of publications. Each kind is one module behind the small :class:`Source` protocol."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from ..errors import SourceError
from ..models import Publication, Topic


@dataclass
class SourceResult:
    publications: list[Publication] = field(default_factory=list)
    topics: list[Topic] = field(default_factory=list)
    errors: list[SourceError] = field(default_factory=list)  # items reported and skipped
    warnings: list[str] = field(default_factory=list)  # items kept, with something to fix
    # Files sources only: files found as they were last ingested, not parsed again (their stored states), what
    # was read and parsed (an item's id() -> its file's state, to record once the store took it), and files gone.
    unchanged: list[FileState] = field(default_factory=list)
    file_states: dict[int, FileState] = field(default_factory=dict)
    gone: list[str] = field(default_factory=list)  # their publications are withdrawn (unless another file gives their ids)
    # Files known and missing whose publications are NOT withdrawn: the folder (or its publications/) is missing or
    # unreadable, or every known publication file is gone at once; ``errors`` says why. Their states are kept.
    held: list[str] = field(default_factory=list)
    drafts: list[FileState] = field(default_factory=list)  # files with draft = true (kind "draft"): kept out
    not_read: int = 0  # of the unchanged: files whose stat said so (the rest were read and their bytes compared)


@dataclass(frozen=True)
class FileState:
    """A content file as last ingested: see the content_files table."""

    path: str  # relative to the source's folder, with "/"
    kind: str  # publication / topic / draft (a publication file with draft = true: item_id is the id it would have)
    item_id: str
    item_hash: str  # the publication's content hash (or the topic's) the store held; "" when it no longer does
    size: int
    mtime_ns: int
    ctime_ns: int
    file_id: str  # "device:inode"
    read_ns: int
    file_hash: str
    settings: str
    image_src: str | None = None
    image_rel: str | None = None
    warnings: tuple[str, ...] = ()


class Source(Protocol):
    name: str

    def fetch(self) -> SourceResult:
        """Everything the source holds now. Never raises for one bad item: it goes to ``errors``."""
        ...
