"""Real servers for tests, each on a free port on 127.0.0.1: uvicorn for our app, and a recording HTTP server."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from publisher.web.threaded import free_port, serve_in_thread

__all__ = ["free_port", "recording_server", "run_app"]


def run_app(app: Any) -> Any:
    """Serve an ASGI app with real uvicorn in a thread; yields its base URL."""
    return serve_in_thread(app)


@contextmanager
def recording_server(respond: Callable[[str, str, bytes], tuple[int, dict[str, str], bytes]] | None = None) -> Iterator[tuple[str, list[dict[str, Any]]]]:
    """An HTTP server that records every request; ``respond(method, path, body)`` decides the answer (default 204)."""
    requests: list[dict[str, Any]] = []

    class Handler(BaseHTTPRequestHandler):
        def _handle(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            requests.append({"method": self.command, "path": self.path, "headers": dict(self.headers), "body": body})
            status, headers, payload = respond(self.command, self.path, body) if respond else (204, {}, b"")
            self.send_response(status)
            for k, v in headers.items():
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        do_GET = do_POST = _handle

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", requests
    finally:
        server.shutdown()
        server.server_close()
