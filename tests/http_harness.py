"""A real HTTP server on 127.0.0.1 for tests (a handler class of http.server), stopped by its shutdown call."""
from __future__ import annotations

import threading
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from lmlm.netutil import free_port


@contextmanager
def serving(handler, path: str = ""):
    """Serve `handler` on a free port of 127.0.0.1; yields the base URL (+ `path`)."""
    httpd = ThreadingHTTPServer(("127.0.0.1", free_port()), handler)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}{path}"
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


class JSONHandler(BaseHTTPRequestHandler):
    """A quiet handler base that answers with JSON bodies."""

    def log_message(self, *args):  # keep pytest output clean
        pass

    def _send(self, code: int, payload: bytes):
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)
