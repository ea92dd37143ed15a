"""Real servers for tests, each on a free port on 127.0.0.1: uvicorn for our app, and a recording HTTP server."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from publisher.web.threaded import free_port, serve_in_thread

__all__ = ["free_port", "http_server", "recording_server", "run_app"]


def run_app(app: Any) -> Any:
    """Serve an ASGI app with real uvicorn in a thread; yields its base URL."""
    return serve_in_thread(app)


Answer = tuple[int, dict[str, str], bytes]


@contextmanager
def http_server(answer: Callable[[str, str, dict[str, str], bytes], Answer | None]) -> Iterator[str]:
    """A real HTTP server on a free port of 127.0.0.1; yields its base URL.

    ``answer(method, path, headers, body)`` gives (status, headers, payload), or None to accept the request and
    never answer it (as when the client is killed waiting): such a request is held until the server stops.
    """
    stopping = threading.Event()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _handle(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            got = answer(self.command, self.path, dict(self.headers), body)
            if got is None:
                stopping.wait()
                self.close_connection = True
                return
            status, headers, payload = got
            self.send_response(status)
            for k, v in headers.items():
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            try:
                self.wfile.write(payload)
            except OSError:
                pass  # the client gave up waiting

        do_GET = do_POST = _handle

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        stopping.set()
        server.shutdown()
        server.server_close()


@contextmanager
def recording_server(respond: Callable[[str, str, bytes], Answer] | None = None) -> Iterator[tuple[str, list[dict[str, Any]]]]:
    """An HTTP server that records every request; ``respond(method, path, body)`` decides the answer (default 204)."""
    requests: list[dict[str, Any]] = []

    def answer(method: str, path: str, headers: dict[str, str], body: bytes) -> Answer:
        requests.append({"method": method, "path": path, "headers": headers, "body": body})
        return respond(method, path, body) if respond else (204, {}, b"")

    with http_server(answer) as base:
        yield base, requests
