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


class Source(Protocol):
    name: str

    def fetch(self) -> SourceResult:
        """Everything the source holds now. Never raises for one bad item: it goes to ``errors``."""
        ...
