"""Enough of an ArcGIS portal for clients to connect and resolve item ids and folders.

Routes under ``/portal/sharing/rest``: the root, ``info``, ``portals/self``,
``content/items/<itemId>``, ``content/users/<user>[/<folderId>]`` and ``search``. Items
come from the app's :class:`~engine.items.ItemRegistry`
(``request.app.state.mosaicflow_items``). The root, ``info`` and ``portals/self`` are
public (clients read them before signing in); the content needs the token when the server
has one.
"""

from __future__ import annotations

from typing import Any, cast

from fastapi import APIRouter, Request
from fastapi.responses import Response

from engine.items import IMAGE_SERVICE, OWNER, ItemRegistry
from engine.server.arcgis import ArcGISError, respond

PORTAL = "/portal/sharing/rest"
VERSION = "11.3"
PORTAL_ID = "mosaicflow"

router = APIRouter()


def _items(request: Request) -> ItemRegistry:
    registry = getattr(request.app.state, "mosaicflow_items", None)
    if registry is None:
        raise ArcGISError(500, "portal not configured", [])
    return cast(ItemRegistry, registry)


def _token(request: Request) -> str | None:
    state = getattr(request.app.state, "mosaicflow", None)
    return getattr(state, "token", None)


def _portal_url(request: Request) -> str:
    return str(request.base_url).rstrip("/") + "/portal"


def item_json(item: dict[str, Any]) -> dict[str, Any]:
    """An item as the portal's ``content/items/<id>`` answers."""
    keywords = ["Dynamic Imagery", "Raster"] if item["type"] == IMAGE_SERVICE else ["Raster"]
    return {
        "id": item["id"],
        "owner": item["owner"],
        "created": item["created"],
        "modified": item["created"],
        "name": item["title"],
        "title": item["title"],
        "type": item["type"],
        "typeKeywords": keywords,
        "description": None,
        "tags": [],
        "snippet": None,
        "url": item["url"],
        "access": "private",
        "ownerFolder": item["folder_id"],
        "size": -1,
    }


def _folder_json(folder: dict[str, Any]) -> dict[str, Any]:
    return {
        "username": OWNER,
        "id": folder["id"],
        "title": folder["title"],
        "created": folder["created"],
    }


def _check_user(user: str) -> None:
    if user != OWNER:
        raise ArcGISError(400, f"User '{user}' does not exist or is inaccessible.", [])


def _int(params: dict[str, str], name: str, default: int, low: int, high: int) -> int:
    raw = params.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ArcGISError(400, f"Invalid value for parameter {name}: {raw!r}", []) from None
    return max(low, min(high, value))


def _page(params: dict[str, str], rows: list[dict[str, Any]]) -> dict[str, Any]:
    """``start`` (1-based) and ``num`` paging, as the portal does it."""
    start = _int(params, "start", 1, 1, 10**9)
    num = _int(params, "num", 10, 0, 100)
    page = rows[start - 1 : start - 1 + num]
    after = start + len(page)
    return {
        "total": len(rows),
        "start": start,
        "num": len(page),
        "nextStart": after if after <= len(rows) else -1,
        "page": page,
    }


def _matches(item: dict[str, Any], query: str) -> bool:
    """``id:<id>``, ``title:<text>``, ``owner:<user>``, or a title substring; ``*`` all."""
    for term in query.split(" AND "):
        term = term.strip().strip("()").strip()
        if not term or term == "*":
            continue
        field, sep, value = term.partition(":")
        field = field.strip().lower()
        value = value.strip().strip("\"'") if sep else term.strip("\"'")
        if sep and field == "id":
            ok = item["id"] == value
        elif sep and field == "owner":
            ok = item["owner"] == value
        elif sep and field == "type":
            ok = item["type"].lower() == value.lower()
        elif sep and field == "title":
            ok = value.lower() in item["title"].lower()
        else:
            ok = value.lower() in item["title"].lower()
        if not ok:
            return False
    return True


@router.api_route(PORTAL, methods=["GET", "POST"])
async def root(request: Request) -> Response:
    return await respond(
        request,
        lambda params: {"currentVersion": VERSION},
        token=_token(request),
        title="Portal REST",
        public=True,
    )


@router.api_route(f"{PORTAL}/info", methods=["GET", "POST"])
async def info(request: Request) -> Response:
    def handler(params: dict[str, str]) -> dict[str, Any]:
        return {
            "owningSystemUrl": _portal_url(request),
            "authInfo": {"isTokenBasedSecurity": _token(request) is not None},
        }

    return await respond(request, handler, token=_token(request), title="Info", public=True)


@router.api_route(f"{PORTAL}/portals/self", methods=["GET", "POST"])
async def portal_self(request: Request) -> Response:
    def handler(params: dict[str, str]) -> dict[str, Any]:
        https = request.url.scheme == "https"
        return {
            "id": PORTAL_ID,
            "name": "mosaicflow",
            "portalName": "mosaicflow",
            "isPortal": True,
            "portalMode": "singletenant",
            "currentVersion": VERSION,
            "portalHostname": f"{request.url.netloc}/portal",
            "allSSL": https,
            "httpPort": request.url.port or 80,
            "httpsPort": request.url.port or 443,
            "supportsOAuth": False,
            "culture": "en",
            "units": "metric",
            "helperServices": {},
            "user": None,
        }

    return await respond(request, handler, token=_token(request), title="Portal", public=True)


@router.api_route(f"{PORTAL}/content/items/{{item_id}}", methods=["GET", "POST"])
async def content_item(request: Request, item_id: str) -> Response:
    def handler(params: dict[str, str]) -> dict[str, Any]:
        registry = _items(request)
        try:
            return item_json(registry.get(item_id))
        except KeyError:
            raise ArcGISError(400, "Item does not exist or is inaccessible.", []) from None

    return await respond(request, handler, token=_token(request), title="Item")


def _user_content(
    user: str,
    params: dict[str, str],
    items: list[dict[str, Any]],
    folder: dict[str, Any] | None,
    folders: list[dict[str, Any]],
) -> dict[str, Any]:
    """A page of ``content/users/<user>[/<folder>]``: the items of one folder (None: root)."""
    paged = _page(params, [item_json(i) for i in items])
    return {
        "username": user,
        **{k: paged[k] for k in ("total", "start", "num", "nextStart")},
        "currentFolder": folder,
        "items": paged["page"],
        "folders": folders,
    }


@router.api_route(f"{PORTAL}/content/users/{{user}}", methods=["GET", "POST"])
async def user_content(request: Request, user: str) -> Response:
    def handler(params: dict[str, str]) -> dict[str, Any]:
        registry = _items(request)
        _check_user(user)
        folders = [_folder_json(f) for f in registry.folders()]
        return _user_content(user, params, registry.list(None), None, folders)

    return await respond(request, handler, token=_token(request), title="User Content")


@router.api_route(f"{PORTAL}/content/users/{{user}}/{{folder_id}}", methods=["GET", "POST"])
async def folder_content(request: Request, user: str, folder_id: str) -> Response:
    def handler(params: dict[str, str]) -> dict[str, Any]:
        registry = _items(request)
        _check_user(user)
        try:
            folder = registry.folder(folder_id)
        except KeyError:
            raise ArcGISError(400, "Folder does not exist or is inaccessible.", []) from None
        items = registry.list(folder["id"])
        return _user_content(user, params, items, _folder_json(folder), [])

    return await respond(request, handler, token=_token(request), title="Folder Content")


@router.api_route(f"{PORTAL}/search", methods=["GET", "POST"])
async def search(request: Request) -> Response:
    def handler(params: dict[str, str]) -> dict[str, Any]:
        registry = _items(request)
        query = (params.get("q") or "").strip()
        found = [item_json(i) for i in registry.all() if _matches(i, query)]
        paged = _page(params, found)
        return {
            "query": query,
            "total": paged["total"],
            "start": paged["start"],
            "num": paged["num"],
            "nextStart": paged["nextStart"],
            "results": paged["page"],
        }

    return await respond(request, handler, token=_token(request), title="Search")
