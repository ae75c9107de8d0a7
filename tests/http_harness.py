"""A real HTTP server on 127.0.0.1 for tests (a handler class of http.server), stopped by its shutdown call."""
from __future__ import annotations

import threading
from contextlib import contextmanager
from http.server import ThreadingHTTPServer

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
