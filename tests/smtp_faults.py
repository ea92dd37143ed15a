"""A real SMTP server (aiosmtpd, in-process, on a free port) that misbehaves on purpose."""

from __future__ import annotations

import asyncio
import random
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from aiosmtpd.controller import Controller

from .servers import free_port


class FaultyRelay:
    """Counts what it accepts, per recipient. Injects: 550 for `refuse`, 451 for a share of messages,
    a dropped connection every `drop_every` messages, and an optional delay per message. ``arrivals``: when each
    message's DATA had been received (time.monotonic()), in order, whatever the answer."""

    def __init__(self, *, refuse: set[str] = frozenset(), tempfail: float = 0.0, drop_every: int = 0, delay: float = 0.0, seed: int = 7) -> None:
        self.refuse = set(refuse)
        self.tempfail = tempfail
        self.drop_every = drop_every
        self.delay = delay
        self.rng = random.Random(seed)
        self.delivered: Counter[str] = Counter()
        self.messages: list[bytes] = []
        self.data_commands = 0
        self.tempfailed = 0
        self.dropped = 0
        self.arrivals: list[float] = []
        self.lock = threading.Lock()

    async def handle_RCPT(self, server: Any, session: Any, envelope: Any, address: str, rcpt_options: list[str]) -> str:
        if address in self.refuse:
            return "550 5.1.1 <%s>: recipient address rejected: user unknown" % address
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.arrivals.append(time.monotonic())
        if self.delay:
            await asyncio.sleep(self.delay)
        with self.lock:
            self.data_commands += 1
            n = self.data_commands
            drop = self.drop_every and n % self.drop_every == 0
            fail = not drop and self.rng.random() < self.tempfail
        if drop:
            self.dropped += 1
            server.transport.close()  # abruptly, before answering: the client must not count it as sent
            return "421 closing"
        if fail:
            self.tempfailed += 1
            return "451 4.3.0 temporary failure, try again later"
        with self.lock:
            for rcpt in envelope.rcpt_tos:
                self.delivered[rcpt] += 1
            self.messages.append(envelope.original_content)
        return "250 OK: queued"


@contextmanager
def relay(handler: FaultyRelay) -> Iterator[int]:
    port = free_port()
    controller = Controller(handler, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        yield port
    finally:
        controller.stop()
