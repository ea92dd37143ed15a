"""Erasure reaches the local outbox: a forgotten person's copies of our mail leave the Maildir too.

The outbox backend (and test sends, and confirmation emails) write complete messages to a Maildir,
``[delivery].outbox_dir``. Each holds the address in its headers and personal links in its body, so
``subscribers forget`` removes every message there addressed to that person. Only the header block of
each file is read, a line at a time and at most MAX_HEADER (64 KiB) of it, so neither a big outbox nor a
big message is ever held in memory.
"""

from __future__ import annotations

import email.parser
import email.policy
import os
from collections.abc import Iterator
from email.utils import getaddresses
from pathlib import Path

MAILDIR_PARTS = ("new", "cur", "tmp")
MAX_HEADER = 64 * 1024  # bytes; our headers are a few KB, so a longer block is read no further (our To is near its top)
RECIPIENT_HEADERS = ("to", "cc", "bcc")


def remove_outbox_copies(outbox: Path, address: str) -> int:
    """Delete every message in the Maildir at ``outbox`` sent to ``address`` (case-insensitive); how many went."""
    wanted = address.casefold()
    removed = 0
    for path in _messages(outbox):
        if wanted in _recipients(path):
            try:
                path.unlink()
            except FileNotFoundError:  # moved or deleted meanwhile (a mail reader marking it read): gone either way
                continue
            removed += 1
    return removed


def _messages(outbox: Path) -> Iterator[Path]:
    """Regular files directly in new/, cur/ and tmp/ (never a symlink, never a subfolder)."""
    for part in MAILDIR_PARTS:
        try:
            entries = list(os.scandir(outbox / part))
        except (FileNotFoundError, NotADirectoryError):
            continue
        for entry in entries:
            if entry.is_file(follow_symlinks=False):
                yield Path(entry.path)


def _recipients(path: Path) -> set[str]:
    """The casefolded addresses in a message's To, Cc and Bcc headers."""
    headers = email.parser.BytesHeaderParser(policy=email.policy.compat32).parsebytes(_header_block(path))
    values = [str(v) for name in RECIPIENT_HEADERS for v in headers.get_all(name, [])]
    return {addr.casefold() for _, addr in getaddresses(values) if addr}


def _header_block(path: Path) -> bytes:
    try:
        with path.open("rb") as fh:
            block = bytearray()
            while len(block) < MAX_HEADER and (line := fh.readline(MAX_HEADER - len(block))) and line not in (b"\r\n", b"\n"):
                block += line
            return bytes(block)
    except (FileNotFoundError, IsADirectoryError):
        return b""
