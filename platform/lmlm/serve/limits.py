"""`BodyLimit`: a request body over `app.state.max_body_bytes` gets 413, however it is sent.

A pure ASGI middleware (it must be able to stop reading a body stream). A declared Content-Length
over the limit is refused before any of the body is read; within it, the request passes untouched
(the server reads no more than is declared). A body without one (Transfer-Encoding: chunked) is read
here and counted, and refused as soon as the count passes the limit, so that no more than the limit
(plus the chunk that passed it) is held; a body within the limit goes on to the app as received.
`error_response` is the app's one error shape.
"""
from __future__ import annotations

from collections import deque
from typing import Optional

from starlette.responses import JSONResponse

METHODS = ("POST", "PUT", "PATCH", "DELETE")


def error_response(status: int, message: str, field_name: Optional[str] = None, kind: str = "invalid_request_error",
                   headers: Optional[dict] = None) -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": kind, "param": field_name}}, status_code=status,
                        headers=headers)


class BodyLimit:
    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        limit = getattr(scope["app"].state, "max_body_bytes", None) if scope["type"] == "http" else None
        if limit is None or scope["method"] not in METHODS:
            return await self.app(scope, receive, send)
        size = dict(scope["headers"]).get(b"content-length")
        if size is not None and size.isdigit():
            if int(size) > limit:
                return await error_response(413, f"body: {int(size)} bytes, more than the limit of {limit}",
                                            "body")(scope, receive, send)
            return await self.app(scope, receive, send)
        received, n = deque(), 0
        while True:
            msg = await receive()
            received.append(msg)
            if msg["type"] != "http.request":  # the client went away: the app sees that too
                break
            n += len(msg.get("body", b""))
            if n > limit:
                return await error_response(413, f"body: more than the limit of {limit} bytes", "body")(
                    scope, receive, send)
            if not msg.get("more_body", False):
                break

        async def replay():
            return received.popleft() if received else await receive()

        await self.app(scope, replay, send)
