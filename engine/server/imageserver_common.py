"""Shared pieces of the ImageServer routes: ArcGIS errors and formats, parameters, and the
published collections of the raster store (a local folder or an object-store prefix)."""

from __future__ import annotations

import re
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
from fastapi import APIRouter, Request
from fastapi.responses import Response
from pyproj import CRS

from engine import storage
from engine.collection import Collection, open_collection
from engine.server.arcgis import ArcGISError, read_params, render
from engine.spatialref import parse_spatial_reference

PREFIX = "/arcgis/rest/services/Hosted/{name}/ImageServer"
WGS84 = CRS.from_epsg(4326)
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")

router = APIRouter()

_state: dict[str, Any] = {"raster_store": None}
# location -> (the two files' versions, the opened collection)
_cache: dict[str, tuple[tuple[str, str], Collection]] = {}
_cache_lock = threading.Lock()


def configure(raster_store: Path | str) -> None:
    """Publish every ``<raster_store>/<name>.zarr`` as ``Hosted/<name>``; the raster store
    is a local folder or an object-store prefix (``s3://bucket/prefix``, ``gs://...``)."""
    _state["raster_store"] = storage.normalize(raster_store)
    with _cache_lock:
        _cache.clear()


# -- errors and output formats ----------------------------------------------------------
# ArcGISError is the server-wide one (engine/server/arcgis.py): the app renders it anywhere.
def _bad(message: str, *details: str) -> ArcGISError:
    return ArcGISError(400, message, list(details))


def _error_response(err: ArcGISError, f: str) -> Response:
    return render(err.to_json(), f if f in ("json", "pjson", "html") else "json", "Error")


async def _params(request: Request) -> dict[str, str]:
    """Query-string and form parameters, keys lower-cased (ArcGIS reads them so)."""
    return {k.lower(): v for k, v in (await read_params(request)).items()}


def _format(params: Mapping[str, str], allowed: tuple[str, ...], default: str = "html") -> str:
    f = (params.get("f") or default).strip().lower()
    if f not in allowed:
        raise _bad(f"Invalid format '{f}'", f"f must be one of {', '.join(allowed)}")
    return f


def _flag(params: Mapping[str, str], key: str, default: bool) -> bool:
    raw = params.get(key.lower())
    if raw is None or raw.strip() == "":
        return default
    v = raw.strip().lower()
    if v in ("true", "1", "yes"):
        return True
    if v in ("false", "0", "no"):
        return False
    raise _bad(f"Invalid value for '{key}': {raw!r}", "Use true or false")


def _int_param(params: Mapping[str, str], key: str, default: int | None) -> int | None:
    raw = params.get(key.lower())
    if raw is None or raw.strip() == "":
        return default
    try:
        value = int(raw.strip())
    except ValueError:
        raise _bad(f"Invalid value for '{key}': {raw!r}", "Give a whole number") from None
    if value < 0:
        raise _bad(f"Invalid value for '{key}': {raw!r}", "Give a number >= 0")
    return value


# -- collections ----------------------------------------------------------------------
def _collection(name: str) -> Collection:
    """The published collection ``name``, opened once and reopened when it changed.

    Freshness: the versions of service.json and catalog.parquet, the files every commit
    rewrites (local: one stat each; object store: one HEAD each), so a collection that
    another process updated is seen at the next request."""
    raster_store = _state["raster_store"]
    if raster_store is None or not _NAME.match(name):
        raise ArcGISError(404, "Service not found", [f"Hosted/{name} is not published"])
    location = storage.join(raster_store, f"{name}.zarr")
    service = storage.version(storage.join(location, "service.json"))
    catalog = storage.version(storage.join(location, "catalog.parquet"))
    if service is None or catalog is None:
        raise ArcGISError(404, "Service not found", [f"Hosted/{name} is not published"])
    stamp = (service, catalog)
    with _cache_lock:
        hit = _cache.get(location)
        if hit is not None and hit[0] == stamp:
            return hit[1]
    coll = open_collection(location)
    with _cache_lock:
        _cache[location] = (stamp, coll)
    return coll


def _collection_crs(coll: Collection) -> CRS:
    d = coll.descriptor
    wkt = (d.get("mosaicflow") or {}).get("crs_wkt")
    if wkt:
        return CRS.from_wkt(wkt)
    return parse_spatial_reference(d["spatialReference"], "spatialReference")


def _service_rows(coll: Collection) -> pa.Table:
    """The catalog rows the service shows: the complete images (failed ones have no pixels)."""
    t = coll.catalog
    if "status" in t.column_names:
        t = t.filter(pc.fill_null(pc.equal(t["status"], "complete"), False))
    return t
