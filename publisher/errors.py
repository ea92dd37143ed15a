"""One error tree for the whole publisher.

    PublisherError                 anything we raise on purpose; the CLI prints it and exits
    ├── ConfigError                config.toml or an environment override is missing or wrong (exit 2)
    ├── StoreError                 the database cannot be reached or migrated
    ├── SourceError                one source or one item of a source is broken; ingest reports and skips it
    │   └── ContentFileError       a Markdown file in content/ with bad front matter (file, line, reason)
    ├── PathRefused                a path built from data would leave its root, or a file is a symlink out,
    │                              not a plain file, or too big (path, reason); the item is skipped
    └── TemplateError              a template failed to render (template file, line, reason)

Every message names the thing that is wrong and, where there is one, the fix.
"""

from __future__ import annotations

from pathlib import Path


class PublisherError(Exception):
    """Base of every error the publisher raises on purpose."""

    exit_code = 1


class ConfigError(PublisherError):
    exit_code = 2

    def __init__(self, message: str, *, file: Path | str | None = None, key: str | None = None) -> None:
        self.file = str(file) if file is not None else None
        self.key = key
        self.reason = message
        where = ""
        if self.file:
            where += f"{self.file}: "
        if key:
            where += f"[{key}] "
        super().__init__(f"{where}{message}")


class StoreError(PublisherError):
    pass


class SourceError(PublisherError):
    def __init__(self, source: str, location: str, reason: str) -> None:
        self.source = source
        self.location = location
        self.reason = reason
        super().__init__(f"source {source!r}: {location}: {reason}")


class ContentFileError(SourceError):
    def __init__(self, source: str, path: Path | str, line: int | None, reason: str) -> None:
        self.path = str(path)
        self.line = line
        location = f"{path}:{line}" if line else str(path)
        super().__init__(source, location, reason)


class PathRefused(PublisherError):
    """A path we were asked to read or write is not one we may: outside its root, a symlink out, too big."""

    def __init__(self, path: Path | str, reason: str) -> None:
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{path}: {reason}")


class TemplateError(PublisherError):
    def __init__(self, template: str, line: int | None, reason: str) -> None:
        self.template = template
        self.line = line
        where = f"{template}:{line}" if line else template
        super().__init__(f"template {where}: {reason}")

