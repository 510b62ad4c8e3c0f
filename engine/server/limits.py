"""Request-size limits: a request body over the limit is refused before it is read whole.

ASGI middleware: a declared ``Content-Length`` over the limit is answered at once; a body
without one (chunked) is counted as it streams in and cut off when it passes the limit.
The answer is ArcGIS error JSON (code 413) with HTTP 200, like every other error here.
"""

from __future__ import annotations

import json
from typing import Any

from engine.server.arcgis import ArcGISError

DEFAULT_MAX_BODY = 16 * 1024 * 1024  # a 10,000-uri submitJob form is about 1 MB


class _TooLarge(Exception):
    pass


class BodyLimit:
    """Refuse request bodies over ``max_bytes`` with an ArcGIS 413 error."""

    def __init__(self, app: Any, max_bytes: int = DEFAULT_MAX_BODY) -> None:
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await self._refuse(send)
            return
        seen = 0
        started = False

        async def counting_receive() -> dict[str, Any]:
            nonlocal seen
            message: dict[str, Any] = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise _TooLarge
            return message

        async def tracking_send(message: dict[str, Any]) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, counting_receive, tracking_send)
        except _TooLarge:
            if not started:
                await self._refuse(send)

    async def _refuse(self, send: Any) -> None:
        mb = self.max_bytes / (1024 * 1024)
        error = ArcGISError(
            413,
            "Request too large",
            [f"the request body is larger than the server's limit of {mb:g} MB",
             "Send fewer inputs per job, or raise the limit with --max-request-mb"],
        )  # fmt: skip
        body = json.dumps(error.to_json()).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})
