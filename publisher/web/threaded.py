"""Serve an ASGI app with uvicorn in a background thread: for tests, scripts, and embedding."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any


def free_port() -> int:
    """A port on 127.0.0.1 that was free a moment ago (never a fixed one)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def serve_in_thread(app: Any, *, host: str = "127.0.0.1", lifespan: str = "off", start_timeout: float = 10.0,
                    port: int | None = None) -> Iterator[str]:
    """Start uvicorn on ``port`` (default: a free one), yield its base URL, stop it on exit."""
    import uvicorn

    port = port or free_port()
    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning", lifespan=lifespan,
                                          proxy_headers=False))  # the app decides whom to believe: [web].trusted_proxies
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + start_timeout
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError(f"uvicorn did not start within {start_timeout} s")
        time.sleep(0.02)
    try:
        yield f"http://{host}:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
