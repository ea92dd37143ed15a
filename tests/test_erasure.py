"""Issue 11, point 9: `publisher subscribers forget` erases the person's copies from the local outbox too.

A real digest is sent to the outbox (the default backend) by the real command; then one subscriber is forgotten.
"""

from __future__ import annotations

import email
import email.policy
import shutil
import tracemalloc
from email.message import EmailMessage
from pathlib import Path

from subscribers.outbox import remove_outbox_copies

from .conftest import TEST_SECRET_KEY
from .test_secrets_transport import publisher

KEY = {"PUBLISHER_SECRET_KEY": TEST_SECRET_KEY}
FORGOTTEN = "reader@example.com"


def messages(outbox: Path) -> dict[Path, bytes]:
    paths = [p for part in ("new", "cur", "tmp") for p in sorted((outbox / part).glob("*"))]
    return {p: p.read_bytes() for p in paths if p.is_file() and not p.is_symlink()}


def to_of(data: bytes) -> str:
    return str(email.message_from_bytes(data, policy=email.policy.default)["To"] or "")


def hand_made(outbox: Path, part: str, name: str, to: str, body: str = "Hello.", size: int = 0) -> Path:
    msg = EmailMessage()
    msg["From"], msg["To"], msg["Subject"] = "digest@example.org", to, "A message"
    msg.set_content(body + "\n" + "x" * size)
    path = outbox / part / name
    path.write_bytes(msg.as_bytes())
    return path


def test_forget_removes_the_persons_outbox_copies_and_only_theirs(project: Path, tmp_path: Path) -> None:
    sent = publisher(project, "run", "--once", **KEY)  # the digest to the three sample subscribers, in var/outbox/new/
    assert sent.returncode == 0 and "3 sent" in sent.stdout, sent.stderr
    test_copy = publisher(project, "digest", "send", "--test-to", FORGOTTEN, **KEY)
    assert test_copy.returncode == 0, test_copy.stderr
    outbox = project / "var" / "outbox"
    theirs = [p for p, data in messages(outbox).items() if to_of(data) == FORGOTTEN]
    assert len(theirs) == 2  # the issue and the test copy
    theirs[0].rename(outbox / "cur" / (theirs[0].name + ":2,S"))  # read in a mail client: moved to cur/, flagged Seen
    hand_made(outbox, "cur", "by-name.eml", '"A Reader" <Reader@Example.COM>')  # a display name and other case
    hand_made(outbox, "tmp", "half-written.eml", FORGOTTEN)  # a delivery interrupted half-way
    hand_made(outbox, "new", "huge.eml", FORGOTTEN, size=20 * 1024 * 1024)
    hand_made(outbox, "new", "cc.eml", "someone@example.org, Reader <reader@example.com>")
    mention = hand_made(outbox, "new", "mention.eml", "analyst@example.com", body=f"Note: {FORGOTTEN} asked about this.")
    outside = hand_made(tmp_path, ".", "outside.eml", FORGOTTEN)
    (outbox / "new" / "link.eml").symlink_to(outside)  # never followed: the target is not in the outbox
    before = messages(outbox)
    kept = {p: data for p, data in before.items() if FORGOTTEN not in to_of(data).lower()}
    assert len(before) - len(kept) == 6

    proc = publisher(project, "subscribers", "forget", FORGOTTEN, "--yes", **KEY)
    assert proc.returncode == 0, proc.stderr
    assert f"forgotten: {FORGOTTEN}" in proc.stdout and "6 message(s) to them deleted from the outbox" in proc.stdout
    after = messages(outbox)
    assert after == kept  # theirs gone; everyone else's untouched, byte for byte (the one that only mentions them too)
    assert mention in after and {to_of(d) for d in after.values()} >= {"analyst@example.com", "editor@example.com"}
    assert (outbox / "new" / "link.eml").is_symlink() and outside.is_file()

    # The rest of the erasure held as before: nothing stored, the address suppressed, the others still subscribed.
    assert publisher(project, "subscribers", "show", FORGOTTEN, **KEY).returncode == 1
    assert publisher(project, "subscribers", "add", FORGOTTEN, **KEY).returncode == 2
    listed = publisher(project, "subscribers", "list", **KEY).stdout
    assert "analyst@example.com\tactive" in listed and FORGOTTEN not in listed
    again = publisher(project, "subscribers", "forget", FORGOTTEN, "--yes", **KEY)
    assert again.returncode == 0 and "message(s)" not in again.stdout


def test_forget_with_no_outbox_is_fine(project: Path) -> None:
    assert not (project / "var" / "outbox").exists()
    proc = publisher(project, "subscribers", "forget", FORGOTTEN, "--yes", **KEY)
    assert proc.returncode == 0 and f"forgotten: {FORGOTTEN}" in proc.stdout, proc.stderr


def test_the_outbox_is_combed_reading_headers_only(tmp_path: Path) -> None:
    """A big outbox and big messages: only the header block of each is read, a line at a time."""
    outbox = tmp_path / "outbox"
    for part in ("new", "cur", "tmp"):
        (outbox / part).mkdir(parents=True)
    big = hand_made(outbox, "new", "big-theirs.eml", FORGOTTEN, size=30 * 1024 * 1024)
    other = hand_made(outbox, "new", "big-other.eml", "analyst@example.com", size=30 * 1024 * 1024)
    (outbox / "new" / "endless-header.eml").write_bytes(b"X-Junk: " + b"y" * (8 * 1024 * 1024) + b"\r\nTo: " + FORGOTTEN.encode() + b"\r\n")
    shutil.copy(other, outbox / "cur" / "copy:2,S")
    tracemalloc.start()
    try:
        removed = remove_outbox_copies(outbox, FORGOTTEN)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert removed == 1 and not big.exists() and other.exists() and (outbox / "cur" / "copy:2,S").exists()
    assert (outbox / "new" / "endless-header.eml").exists()  # its To lies past the 64 KiB a header block may take
    assert peak < 4 * 1024 * 1024, f"peak {peak:,} bytes combing 60 MiB of mail"
