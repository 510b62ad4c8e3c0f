"""The ArcGIS ``ImageServer`` endpoints of a published collection.

Routes (``<raster store>/<name>.zarr`` is published as ``Hosted/<name>``)::

    /arcgis/rest/services/Hosted/{name}/ImageServer              the descriptor (service.json)
    /arcgis/rest/services/Hosted/{name}/ImageServer/query        catalog query (FeatureSet)
    /arcgis/rest/services/Hosted/{name}/ImageServer/exportImage  axis-aligned mosaic, "First"

The ``where`` clause is parsed here into a small expression tree (comparisons, IN, LIKE,
BETWEEN, IS [NOT] NULL, AND/OR/NOT, parentheses) and evaluated with ``pyarrow.compute``:
nothing of the request is ever evaluated as Python or passed to a SQL engine. Errors are
ArcGIS error JSON ``{"error": {"code", "message", "details"}}`` with HTTP status 200, as
ArcGIS Server answers.

Usage::

    from engine.server import imageserver
    imageserver.configure(Path("/data/collections"))
    app.include_router(imageserver.router)
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import shapely
from fastapi import Request
from fastapi.responses import Response
from pyproj import CRS, Transformer
from starlette.concurrency import run_in_threadpool

from engine.collection import Collection
from engine.errors import MosaicflowError, RequestError
from engine.geometry import Region, parse_clipping_geometry, parse_extent
from engine.server.arcgis import render
from engine.server.imageserver_common import (
    PREFIX,
    WGS84,
    ArcGISError,
    _bad,
    _collection,
    _collection_crs,
    _error_response,
    _flag,
    _format,
    _int_param,
    _params,
    _service_rows,
    configure,
    router,
)
from engine.server.imageserver_encode import encode
from engine.server.imageserver_export import _export
from engine.server.imageserver_where import _resolve, _where_mask, parse_where
from engine.spatialref import parse_spatial_reference, to_esri_spatial_reference

__all__ = ["ArcGISError", "configure", "parse_where", "router"]


# -- geometry filter ------------------------------------------------------------------
def _query_region(params: Mapping[str, str], default_crs: CRS) -> shapely.Geometry | None:
    raw = (params.get("geometry") or "").strip()
    if not raw:
        return None
    in_sr_raw = (params.get("insr") or "").strip()
    in_crs = parse_spatial_reference(in_sr_raw, "inSR") if in_sr_raw else default_crs
    gtype = (params.get("geometrytype") or "").strip()
    if raw[0] != "{":
        parts = [p for p in re.split(r"[,\s]+", raw) if p]
        try:
            nums = [float(p) for p in parts]
        except ValueError:
            raise _bad("Invalid geometry", f"{raw!r} is not JSON nor xmin,ymin,xmax,ymax") from None
        if len(nums) == 2:
            return _point_4326(nums[0], nums[1], in_crs)
        if len(nums) != 4:
            raise _bad("Invalid geometry", "give xmin,ymin,xmax,ymax or x,y")
        return (
            parse_extent(
                {
                    "xmin": nums[0],
                    "ymin": nums[1],
                    "xmax": nums[2],
                    "ymax": nums[3],
                    "spatialReference": to_esri_spatial_reference(in_crs),
                },
                "geometry",
            )
            .to_crs(WGS84)
            .geometry
        )
    try:
        obj = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise _bad("Invalid geometry", f"not valid JSON: {exc.msg}") from None
    if not isinstance(obj, dict):
        raise _bad("Invalid geometry", "expected a JSON object")
    sr = obj.get("spatialReference")
    crs = parse_spatial_reference(sr, "geometry.spatialReference") if sr else in_crs
    obj = {**obj, "spatialReference": to_esri_spatial_reference(crs)}
    if ("x" in obj and "y" in obj) or gtype == "esriGeometryPoint":
        try:
            return _point_4326(float(obj["x"]), float(obj["y"]), crs)
        except (KeyError, TypeError, ValueError):
            raise _bad("Invalid geometry", "a point needs numeric x and y") from None
    if gtype == "esriGeometryEnvelope" or ("xmin" in obj and "rings" not in obj):
        region: Region = parse_extent(obj, "geometry")
    else:
        region = parse_clipping_geometry(obj, "geometry")
    return region.to_crs(WGS84).geometry


def _point_4326(x: float, y: float, crs: CRS) -> shapely.Geometry:
    tr = Transformer.from_crs(crs, WGS84, always_xy=True)
    px, py = tr.transform(x, y)
    if not (math.isfinite(px) and math.isfinite(py)):
        raise _bad("Invalid geometry", "the point is outside its spatial reference's domain")
    return shapely.Point(px, py)


_RELATIONS: dict[str, Callable[[Any, Any, np.ndarray], np.ndarray]] = {
    "esrispatialrelintersects": lambda g, env, fp: shapely.intersects(fp, g),
    "esrispatialrelenvelopeintersects": lambda g, env, fp: shapely.intersects(
        shapely.envelope(fp), env
    ),
    "esrispatialrelindexintersects": lambda g, env, fp: shapely.intersects(
        shapely.envelope(fp), env
    ),
    # ArcObjects' reading: the *query geometry* contains / is within the footprint.
    "esrispatialrelcontains": lambda g, env, fp: shapely.contains(g, fp),
    "esrispatialrelwithin": lambda g, env, fp: shapely.within(g, fp),
    "esrispatialreloverlaps": lambda g, env, fp: shapely.overlaps(g, fp),
    "esrispatialreltouches": lambda g, env, fp: shapely.touches(g, fp),
    "esrispatialrelcrosses": lambda g, env, fp: shapely.crosses(g, fp),
}


# -- query ----------------------------------------------------------------------------
_ESRI_TYPES = {
    "int8": "esriFieldTypeSmallInteger",
    "int16": "esriFieldTypeSmallInteger",
    "int32": "esriFieldTypeInteger",
    "int64": "esriFieldTypeInteger",
    "float": "esriFieldTypeSingle",
    "double": "esriFieldTypeDouble",
    "bool": "esriFieldTypeSmallInteger",
}


def _field_defs(coll: Collection, table: pa.Table) -> dict[str, dict[str, Any]]:
    """Field definitions of the attribute columns (scalar columns only)."""
    known = {f["name"]: f for f in coll.descriptor.get("fields") or [] if isinstance(f, dict)}
    out: dict[str, dict[str, Any]] = {}
    for field in table.schema:
        name, typ = field.name, field.type
        if name == "footprint" or pa.types.is_nested(typ) or pa.types.is_binary(typ):
            continue
        if name in known and known[name].get("type") != "esriFieldTypeGeometry":
            d = {k: v for k, v in known[name].items() if k in ("name", "type", "alias", "length")}
        elif name == "ObjectID":
            d = {"name": name, "type": "esriFieldTypeOID", "alias": name}
        elif pa.types.is_timestamp(typ) or pa.types.is_date(typ):
            d = {"name": name, "type": "esriFieldTypeDate", "alias": name}
        else:
            esri = _ESRI_TYPES.get(str(typ), "esriFieldTypeString")
            d = {"name": name, "type": esri, "alias": name}
            if esri == "esriFieldTypeString":
                d["length"] = 256
        out[name] = d
    return out


def _json_value(v: Any) -> Any:
    if isinstance(v, datetime):
        if v.tzinfo is None:
            v = v.replace(tzinfo=UTC)
        return round(v.timestamp() * 1000)
    if isinstance(v, bool):
        return int(v)
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


def _order(table: pa.Table, spec: str) -> list[tuple[str, str, str]]:
    keys: list[tuple[str, str, str]] = []
    for part in (p.strip() for p in spec.split(",")):
        if not part:
            continue
        words = part.split()
        if len(words) > 2 or (len(words) == 2 and words[1].upper() not in ("ASC", "DESC")):
            raise _bad("Invalid orderByFields", f"{part!r}: give 'field [ASC|DESC]'")
        name = _resolve(words[0], table.column_names)
        direction = "descending" if len(words) == 2 and words[1].upper() == "DESC" else "ascending"
        keys.append((name, direction, "at_end"))
    if not any(k[0] == "ObjectID" for k in keys):
        keys.append(("ObjectID", "ascending", "at_end"))
    return keys


def _query(name: str, params: Mapping[str, str]) -> dict[str, Any]:
    coll = _collection(name)
    table = _service_rows(coll)
    crs = _collection_crs(coll)
    fields = _field_defs(coll, table)
    mask = np.ones(table.num_rows, dtype=bool)

    where = params.get("where") or ""
    wmask = _where_mask(where, table)
    if wmask is not None:
        mask &= np.asarray(wmask.to_numpy(zero_copy_only=False), dtype=bool)

    oids_raw = (params.get("objectids") or "").strip()
    if oids_raw:
        try:
            oids = [int(x) for x in re.split(r"[,\s]+", oids_raw) if x]
        except ValueError:
            raise _bad(
                "Invalid objectIds", f"{oids_raw!r}: give comma-separated integers"
            ) from None
        mask &= np.isin(table["ObjectID"].to_numpy(), np.asarray(oids, dtype="int64"))

    geom = _query_region(params, crs)
    if geom is not None:
        rel = (params.get("spatialrel") or "esriSpatialRelIntersects").strip().lower()
        if rel not in _RELATIONS:
            raise _bad("Invalid spatialRel", f"{rel!r} is not supported")
        fps = shapely.from_wkb(table["footprint"].to_numpy(zero_copy_only=False))
        valid = ~shapely.is_missing(fps)
        hit = np.zeros(len(fps), dtype=bool)
        if valid.any():
            hit[valid] = _RELATIONS[rel](geom, shapely.envelope(geom), fps[valid])
        mask &= hit

    table = table.filter(pa.array(mask))
    order = _order(table, params.get("orderbyfields") or "")
    table = table.take(pc.sort_indices(table, sort_keys=order))

    if _flag(params, "returnCountOnly", False):
        return {"count": table.num_rows}
    if _flag(params, "returnIdsOnly", False):
        return {"objectIdFieldName": "ObjectID", "objectIds": table["ObjectID"].to_pylist()}

    max_records = int(coll.descriptor.get("maxRecordCount") or 1000)
    offset = _int_param(params, "resultOffset", 0) or 0
    count = _int_param(params, "resultRecordCount", None)
    limit = max_records if count is None or count == 0 else min(count, max_records)
    page = table.slice(offset, limit)
    exceeded = offset + page.num_rows < table.num_rows

    out_raw = (params.get("outfields") or "").strip()
    if out_raw in ("", "*"):
        names = list(fields) if out_raw == "*" else ["ObjectID"]
    else:
        names = []
        for part in (p.strip() for p in out_raw.split(",")):
            if not part:
                continue
            if part == "*":
                names.extend(fields)
                continue
            col = _resolve(part, table.column_names)
            if col not in fields:
                raise _bad(f"Invalid field: '{part}'", f"'{part}' cannot be returned as a field")
            names.append(col)
        if "ObjectID" not in names:
            names.insert(0, "ObjectID")
    names = list(dict.fromkeys(names))

    out_sr_raw = (params.get("outsr") or "").strip()
    out_crs = parse_spatial_reference(out_sr_raw, "outSR") if out_sr_raw else WGS84
    with_geometry = _flag(params, "returnGeometry", True)

    columns = {n: page[n].to_pylist() for n in names}
    geoms = (
        shapely.from_wkb(page["footprint"].to_numpy(zero_copy_only=False))
        if with_geometry
        else None
    )
    features = []
    for i in range(page.num_rows):
        feat: dict[str, Any] = {"attributes": {n: _json_value(columns[n][i]) for n in names}}
        if geoms is not None:
            g = geoms[i]
            if g is None or g.is_empty:
                feat["geometry"] = None
            else:
                esri = Region(g, WGS84).to_crs(out_crs, densify_points=0).to_esri_json()
                feat["geometry"] = {"rings": esri["rings"]}
        features.append(feat)
    result: dict[str, Any] = {
        "objectIdFieldName": "ObjectID",
        "geometryType": "esriGeometryPolygon",
        "spatialReference": to_esri_spatial_reference(out_crs),
        "fields": [fields[n] for n in names],
        "features": features,
        "exceededTransferLimit": exceeded,
    }
    return result


# -- routes ---------------------------------------------------------------------------
def _to_arcgis_error(exc: Exception) -> ArcGISError:
    if isinstance(exc, ArcGISError):
        return exc
    if isinstance(exc, RequestError):
        return _bad(str(exc))
    if isinstance(exc, MosaicflowError):
        return ArcGISError(500, "Unable to complete operation", [str(exc)])
    return ArcGISError(500, "Unable to complete operation", [f"{type(exc).__name__}: {exc}"])


async def _answer(
    request: Request, work: Callable[[Mapping[str, str]], dict[str, Any]], title: str
) -> Response:
    """Read the parameters, run ``work`` off the event loop, render its JSON or error."""
    params = await _params(request)
    f = (params.get("f") or "html").lower()
    try:
        f = _format(params, ("json", "pjson", "html"))
        result = await run_in_threadpool(work, params)
    except Exception as exc:
        return _error_response(_to_arcgis_error(exc), f)
    return render(result, f, title)


@router.api_route(PREFIX, methods=["GET", "POST"])
async def image_server(name: str, request: Request) -> Response:
    return await _answer(request, lambda p: _collection(name).descriptor, f"{name} (ImageServer)")


@router.api_route(PREFIX + "/query", methods=["GET", "POST"])
async def query(name: str, request: Request) -> Response:
    return await _answer(request, lambda p: _query(name, p), f"Query: {name} (ImageServer)")


@router.api_route(PREFIX + "/exportImage", methods=["GET", "POST"])
async def export_image(name: str, request: Request) -> Response:
    params = await _params(request)
    f = (params.get("f") or "html").lower()
    try:
        f = _format(params, ("json", "pjson", "html", "image"))
        img = await run_in_threadpool(_export, name, params)
        if f == "image":
            data, media = await run_in_threadpool(encode, img)
            return Response(data, media_type=media)
    except Exception as exc:
        return _error_response(_to_arcgis_error(exc), f)
    h, w = img.data.shape[1:]
    href = str(request.url.replace_query_params(**{**params, "f": "image"}))
    xmin, ymin, xmax, ymax = img.bbox
    result = {
        "href": href,
        "width": w,
        "height": h,
        "extent": {
            "xmin": xmin,
            "ymin": ymin,
            "xmax": xmax,
            "ymax": ymax,
            "spatialReference": to_esri_spatial_reference(img.crs),
        },
        "scale": 0,
    }
    return render(result, f, f"Export Image: {name} (ImageServer)")
