"""ArcGIS REST conventions shared by every route.

* Errors are ArcGIS error JSON sent with HTTP 200, as ArcGIS Server does:
  ``{"error": {"code": 400, "message": "...", "details": [...]}}``.
* ``f=json`` (compact), ``f=pjson`` (indented) or ``f=html`` (a small page showing the JSON).
  Without ``f``, browsers (``Accept: text/html``) get html and other clients json.
* Parameters come from the query string and, for POST, the form (the form wins).
* The token, when the server has one, is read from ``token`` or the
  ``X-Esri-Authorization: Bearer <token>`` header (or ``Authorization: Bearer``).
"""

from __future__ import annotations

import hmac
import html
import json
import math
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import Request
from fastapi.responses import HTMLResponse, Response

from engine.errors import RequestError

FORMATS = ("json", "pjson", "html")


class ArcGISError(Exception):
    """An error to send as ArcGIS error JSON (``code`` is the ArcGIS code, not HTTP)."""

    def __init__(self, code: int, message: str, details: list[str] | None = None) -> None:
        super().__init__(message)
        self.code, self.message, self.details = code, message, list(details or [])

    def to_json(self) -> dict[str, Any]:
        return {"error": {"code": self.code, "message": self.message, "details": self.details}}

    @classmethod
    def from_request_error(cls, exc: RequestError) -> ArcGISError:
        details = [f"{exc.parameter}: {exc.problem}"]
        if exc.fix:
            details.append(exc.fix)
        message = f"Unable to complete operation. Invalid value for parameter {exc.parameter}."
        return cls(400, message, details)


def token_required() -> ArcGISError:
    return ArcGISError(499, "Token Required", [])


def invalid_token() -> ArcGISError:
    return ArcGISError(498, "Invalid Token", [])


async def read_params(request: Request) -> dict[str, str]:
    """Query parameters merged with the form of a POST (form values win)."""
    params = dict(request.query_params)
    if request.method == "POST":
        ctype = request.headers.get("content-type", "")
        if ctype.startswith(("application/x-www-form-urlencoded", "multipart/form-data")):
            form = await request.form()
            params.update({k: v for k, v in form.items() if isinstance(v, str)})
    return params


def request_token(request: Request, params: dict[str, str]) -> str | None:
    token = params.get("token")
    if token:
        return token
    for header in ("x-esri-authorization", "authorization"):
        value = request.headers.get(header, "")
        if value[:7].lower() == "bearer " and value[7:].strip():
            return value[7:].strip()
    return None


def check_token(expected: str | None, given: str | None) -> None:
    """Raise the ArcGIS 499/498 error unless the token matches (or none is configured)."""
    if expected is None:
        return
    if not given:
        raise token_required()
    if not hmac.compare_digest(given.encode(), expected.encode()):
        raise invalid_token()


def output_format(request: Request, params: dict[str, str]) -> str:
    f = (params.get("f") or "").strip().lower()
    if f in FORMATS:
        return f
    if not f and "text/html" in request.headers.get("accept", ""):
        return "html"
    return "json"


def _finite(value: Any) -> Any:
    """NaN and infinities as null: JSON has no NaN and ArcGIS clients refuse it."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def dumps(payload: Any, indent: int | None = None) -> str:
    """Strict JSON (no NaN), dates and other objects as strings."""
    return json.dumps(_finite(payload), indent=indent, default=str, allow_nan=False)


def render(payload: dict[str, Any], f: str, title: str = "ArcGIS REST") -> Response:
    """The payload as ``f`` asks; errors are rendered the same way (always HTTP 200)."""
    if f == "html":
        body = html.escape(dumps(payload, indent=2))
        page = (
            "<!DOCTYPE html>\n<html><head><meta charset='utf-8'>"
            f"<title>{html.escape(title)}</title></head>\n"
            f"<body><h2>{html.escape(title)}</h2>\n<pre>{body}</pre>\n</body></html>\n"
        )
        return HTMLResponse(page)
    text = dumps(payload, indent=2 if f == "pjson" else None)
    return Response(text, media_type="application/json")


async def respond(
    request: Request,
    handler: Callable[[dict[str, str]], Any],
    *,
    token: str | None,
    title: str,
    public: bool = False,
) -> Response:
    """Read the parameters, check the token, run ``handler(params)`` and render its answer.

    ``handler`` returns the JSON payload (a coroutine is awaited); ArcGISError and
    RequestError become ArcGIS error JSON.
    """
    params: dict[str, str] = {}
    try:
        params = await read_params(request)
        if not public:
            check_token(token, request_token(request, params))
        payload = handler(params)
        if isinstance(payload, Awaitable):
            payload = await payload
    except ArcGISError as exc:
        payload = exc.to_json()
    except RequestError as exc:
        payload = ArcGISError.from_request_error(exc).to_json()
    return render(payload, output_format(request, params), title)
