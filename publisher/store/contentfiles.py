"""Content files as last ingested (the content_files table): what lets an ingest skip the files that did not change."""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterable
from dataclasses import fields
from typing import Any

from sqlalchemy import and_, delete, insert, select
from sqlalchemy.exc import IntegrityError

from ..models import Topic
from ..sources import FileState
from . import tables as t

log = logging.getLogger(__name__)
_CHUNK = 500
_FIELDS = [f.name for f in fields(FileState)]  # the columns, in the order FileState takes them


def topic_hash(topic: Topic) -> str:
    return hashlib.sha256(json.dumps([topic.name, topic.description]).encode()).hexdigest()


class ContentFilesMixin:
    def _tx(self) -> Any: ...  # provided by Store

    def content_files(self, source: str) -> dict[str, FileState]:
        """path -> state of every file recorded for ``source``, in one query.

        A state whose item the store no longer holds as it was recorded (deleted, or changed by anything but this
        file) comes back with item_hash "": that file is parsed again.
        """
        c, p, tp = t.content_files, t.publications, t.topics
        q = (select(*(c.c[name] for name in _FIELDS), p.c.content_hash.label("pub_hash"), tp.c.name.label("topic_name"), tp.c.description.label("topic_description"))
             .outerjoin(p, and_(c.c.kind == "publication", p.c.id == c.c.item_id))
             .outerjoin(tp, and_(c.c.kind == "topic", tp.c.slug == c.c.item_id))
             .where(c.c.source == source))
        found: dict[str, FileState] = {}
        with self._tx() as conn:
            rows = conn.execute(q).all()
        for (path, kind, item_id, item_hash, size, mtime_ns, ctime_ns, file_id, read_ns, file_hash, settings,
             image_src, image_rel, warnings, pub_hash, topic_name, topic_description) in rows:
            if kind == "topic":
                current = topic_hash(Topic(item_id, topic_name, topic_description)) if topic_name is not None else None
            elif kind == "draft":  # a publication kept out (draft: true): nothing in the store to compare with
                current = item_hash
            else:
                current = pub_hash
            found[path] = FileState(path, kind, item_id, item_hash if current == item_hash else "", size, mtime_ns, ctime_ns, file_id,
                                    read_ns, file_hash, settings, image_src, image_rel, tuple(warnings) if warnings else ())
        return found

    def save_content_files(self, source: str, states: Iterable[FileState], remove: Iterable[str] = ()) -> None:
        """Record ``states`` (replacing what was recorded for their paths) and forget the paths in ``remove``; one transaction."""
        c = t.content_files
        rows = [{"source": source, **{name: getattr(s, name) for name in _FIELDS}} for s in states]
        for row in rows:
            row["warnings"] = list(row["warnings"]) or None
        paths = sorted(set(remove) | {row["path"] for row in rows})
        if not paths:
            return
        for attempt in (1, 2):
            try:
                with self._tx() as conn:
                    for start in range(0, len(paths), _CHUNK):
                        conn.execute(delete(c).where(c.c.source == source, c.c.path.in_(paths[start:start + _CHUNK])))
                    for start in range(0, len(rows), _CHUNK):
                        conn.execute(insert(c), rows[start:start + _CHUNK])
                return
            except IntegrityError:  # another ingest recorded the same files meanwhile (PostgreSQL): once more, on what it left
                if attempt == 2:
                    # Only a shortcut is lost: the files not recorded are read again next time.
                    log.warning("could not record the content files of %r (another ingest ran at the same time); "
                                "they are read again next time", source)
