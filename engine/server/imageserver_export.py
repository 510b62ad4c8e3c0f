"""ImageServer ``exportImage``: an axis-aligned mosaic read from the images whose catalog
bounds meet the request, ordered and combined per the ArcGIS ``mosaicRule``."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from affine import Affine
from pyproj import CRS

from engine import mosaic
from engine.geometry import Region
from engine.grid import Grid
from engine.server.arcgis import ArcGISError
from engine.server.imageserver_common import (
    _bad,
    _collection,
    _collection_crs,
    _service_rows,
)
from engine.server.imageserver_where import _resolve, _where_mask
from engine.spatialref import parse_spatial_reference

# -- exportImage ----------------------------------------------------------------------
_PIXEL_TYPES = {
    "U8": "uint8",
    "S8": "int8",
    "U16": "uint16",
    "S16": "int16",
    "U32": "uint32",
    "S32": "int32",
    "F32": "float32",
    "F64": "float64",
}


# ArcGIS interpolation names → GDAL resampling
_INTERPOLATIONS = {
    "RSP_NearestNeighbor": "nearest",
    "RSP_BilinearInterpolation": "bilinear",
    "RSP_CubicConvolution": "cubic",
    "RSP_Majority": "mode",
}
# display formats carry 8-bit pixels; png and tiff carry the data as it is
FORMATS = ("jpgpng", "png", "png8", "png24", "png32", "jpg", "tiff")
_FORMAT_ALIASES = {"tif": "tiff", "geotiff": "tiff", "jpeg": "jpg"}


@dataclass
class _Export:
    data: np.ndarray  # (bands, h, w) of the output pixel type, nodata where not valid
    valid: np.ndarray  # (h, w)
    grid: Grid
    nodata: float
    fmt: str
    stretch: list[tuple[float, float]]  # per output band (min, max) for the display formats
    compression: str | None = None  # GDAL COMPRESS for tiff (ArcGIS ``compression``)

    @property
    def bbox(self) -> tuple[float, float, float, float]:
        return self.grid.bounds

    @property
    def crs(self) -> CRS:
        return self.grid.crs


def _numbers(raw: str, n: int, what: str) -> list[float]:
    try:
        nums = [float(p) for p in re.split(r"[,\s]+", raw.strip()) if p]
    except ValueError:
        raise _bad(f"Invalid {what}", f"{raw!r} is not {n} numbers") from None
    if len(nums) != n or not all(math.isfinite(v) for v in nums):
        raise _bad(f"Invalid {what}", f"{raw!r} is not {n} numbers")
    return nums


def _bbox(params: Mapping[str, str], service_crs: CRS) -> tuple[list[float], CRS]:
    """The request's bbox and the CRS it is in (bboxSR, the envelope's own, or the service's)."""
    raw_bbox = (params.get("bbox") or "").strip()
    if not raw_bbox:
        raise _bad("Invalid bbox", "bbox is required: xmin,ymin,xmax,ymax")
    if raw_bbox.startswith("{"):
        try:
            env = json.loads(raw_bbox)
            nums = [float(env[k]) for k in ("xmin", "ymin", "xmax", "ymax")]
        except (json.JSONDecodeError, KeyError, TypeError, ValueError):
            raise _bad("Invalid bbox", "give xmin,ymin,xmax,ymax or an Esri envelope") from None
        sr = env.get("spatialReference")
    else:
        nums, sr = _numbers(raw_bbox, 4, "bbox"), None
    if not (nums[0] < nums[2] and nums[1] < nums[3]):
        raise _bad("Invalid bbox", "needs xmin < xmax and ymin < ymax")
    bbox_sr = (params.get("bboxsr") or "").strip()
    if bbox_sr:
        return nums, parse_spatial_reference(bbox_sr, "bboxSR")
    if sr:
        return nums, parse_spatial_reference(sr, "bbox.spatialReference")
    return nums, service_crs


def _output_grid(params: Mapping[str, str], service_crs: CRS, d: Mapping[str, Any]) -> Grid:
    """The exported image's grid: ``bbox`` brought into ``imageSR``, ``size`` pixels."""
    nums, bcrs = _bbox(params, service_crs)
    image_sr = (params.get("imagesr") or "").strip()
    icrs = parse_spatial_reference(image_sr, "imageSR") if image_sr else service_crs
    if bcrs != icrs:
        try:
            nums = list(Region.from_bounds(nums, bcrs).to_crs(icrs).bounds)
        except Exception as exc:
            raise _bad("Invalid bbox", f"cannot bring the bbox into imageSR: {exc}") from None
        if not all(math.isfinite(v) for v in nums):
            raise _bad("Invalid bbox", "the bbox has no position in imageSR")
    w, h = (int(v) for v in _numbers(params.get("size") or "400,400", 2, "size"))
    if w <= 0 or h <= 0:
        raise _bad("Invalid size", "width and height must be positive")
    mw, mh = int(d.get("maxImageWidth") or 15000), int(d.get("maxImageHeight") or 4100)
    if w > mw or h > mh:
        raise _bad(
            "Requested image exceeds the size limit",
            f"{w}x{h} is larger than maxImageWidth x maxImageHeight ({mw}x{mh})",
        )
    xmin, ymin, xmax, ymax = nums
    transform = Affine((xmax - xmin) / w, 0.0, xmin, 0.0, -(ymax - ymin) / h, ymax)
    return Grid(icrs, transform, (h, w))


def _interpolation(params: Mapping[str, str]) -> str:
    raw = (params.get("interpolation") or "").strip()
    if not raw:
        return "nearest"
    for name, resampling in _INTERPOLATIONS.items():
        if raw.lower() == name.lower():
            return resampling
    raise _bad("Invalid interpolation", f"{raw!r}: use one of {', '.join(_INTERPOLATIONS)}")


def _band_ids(params: Mapping[str, str], band_names: list[str]) -> list[int]:
    raw_bands = (params.get("bandids") or "").strip()
    if not raw_bands:
        return list(range(len(band_names)))
    try:
        band_ids = [int(b) for b in re.split(r"[,\s]+", raw_bands) if b]
    except ValueError:
        raise _bad("Invalid bandIds", f"{raw_bands!r}: give zero-based integers") from None
    if not band_ids or any(b < 0 or b >= len(band_names) for b in band_ids):
        raise _bad("Invalid bandIds", f"band ids run from 0 to {len(band_names) - 1}")
    return band_ids


def _export(name: str, params: Mapping[str, str]) -> _Export:
    coll = _collection(name)
    d = coll.descriptor
    crs = _collection_crs(coll)
    grid = _output_grid(params, crs, d)
    resampling = _interpolation(params)
    fmt = (params.get("format") or "jpgpng").strip().lower()
    fmt = _FORMAT_ALIASES.get(fmt, fmt)
    if fmt not in FORMATS:
        raise _bad("Unsupported format", f"format {fmt!r}: use one of {', '.join(FORMATS)}")
    nbands = int(d.get("bandCount") or 1)
    band_names = list(d.get("bandNames") or [f"b{i + 1}" for i in range(nbands)])
    band_ids = _band_ids(params, band_names)
    service_type = str(d.get("pixelType"))
    raw_type = (params.get("pixeltype") or "").strip().upper()
    if raw_type and raw_type != "UNKNOWN" and raw_type not in _PIXEL_TYPES:
        raise _bad("Invalid pixelType", f"{raw_type!r}: use one of {', '.join(_PIXEL_TYPES)}")
    dtype = np.dtype(
        _PIXEL_TYPES.get(raw_type or service_type, _PIXEL_TYPES.get(service_type, "float64"))
    )
    raw_nd = (params.get("nodata") or "").strip()
    if raw_nd:
        nodata = _numbers(raw_nd, 1, "noData")[0]
    else:
        nd = d.get("noDataValue")
        nodata = float(nd) if nd is not None else 0.0
    if fmt == "png" and dtype not in (np.dtype("uint8"), np.dtype("uint16")):
        raise _bad(
            "Unsupported format",
            f"PNG holds 8 or 16 bit pixels, not {dtype}: use format=tiff or pixelType=U8/U16",
        )

    rule = _mosaic_rule(params.get("mosaicrule") or "")
    table = _service_rows(coll)
    table = table.take(pc.sort_indices(table, sort_keys=[("ObjectID", "ascending")]))
    try:
        wmask = _where_mask(rule.where, table) if rule.where else None
    except ArcGISError as exc:
        raise _rule_bad(f"where: {exc.message}", *exc.details) from None
    if wmask is not None:
        table = table.filter(wmask)
    # the request's ground in the service CRS picks the images and places NW/Center
    try:
        area = grid.footprint_in(crs).bounds
    except Exception:
        area = (math.nan,) * 4
    if not all(math.isfinite(v) for v in area):
        raise _bad("Invalid bbox", "the requested area has no position in the service's CRS")
    xmin, ymin, xmax, ymax = area
    hits = (
        (np.asarray(table["xmin"]) < xmax)
        & (np.asarray(table["xmax"]) > xmin)
        & (np.asarray(table["ymin"]) < ymax)
        & (np.asarray(table["ymax"]) > ymin)
    )
    table = table.filter(pa.array(hits, type=pa.bool_()))
    order = _ordering(table, rule, area)
    image_ids = table["image_id"].to_pylist()
    # nearest copies stored values: assembled in the stored type when that is the output's
    stored = np.dtype(_PIXEL_TYPES.get(service_type, "float64"))
    direct = (
        resampling == "nearest"
        and rule.operation != "mean"
        and dtype == stored
        and float(np.array(nodata).astype(dtype)) == nodata
    )
    data, valid = mosaic.render(
        coll.mosaic_index,
        [str(image_ids[i]) for i in order],
        [band_names[b] for b in band_ids],
        grid,
        resampling=resampling,
        operation=rule.operation,
        dtype=dtype if direct else None,
    )
    if not direct and dtype.kind in "iu":  # GDAL rounds to integers half up, clips to range
        info = np.iinfo(dtype)
        data = np.clip(np.floor(data + 0.5), info.min, info.max)
    data[:, ~valid] = nodata
    stretch = [_band_range(d, b) for b in band_ids]
    compression = _compression(params, dtype)
    return _Export(data.astype(dtype, copy=False), valid, grid, nodata, fmt, stretch, compression)


# ArcGIS ``compression`` (tiff only) → GDAL COMPRESS; the default sends the pixels as they are
_COMPRESSIONS = {"none": None, "lz77": "deflate", "lzw": "lzw", "jpeg": "jpeg"}


def _compression(params: Mapping[str, str], dtype: np.dtype) -> str | None:
    raw = (params.get("compression") or "").strip().lower()
    if not raw:
        return None
    if raw not in _COMPRESSIONS:
        raise _bad("Invalid compression", f"{raw!r}: use LZ77, LZW, JPEG or None")
    if raw == "jpeg" and dtype != np.dtype("uint8"):
        raise _bad("Invalid compression", "JPEG holds 8-bit pixels: use pixelType=U8 or LZ77")
    return _COMPRESSIONS[raw]


def _band_range(d: Mapping[str, Any], band: int) -> tuple[float, float]:
    """The service's statistics range of a band (for display formats), else (0, 255)."""
    lo, hi = d.get("minValues") or [], d.get("maxValues") or []
    if band < len(lo) and band < len(hi) and lo[band] is not None and hi[band] is not None:
        return float(lo[band]), float(hi[band])
    return 0.0, 255.0


# -- mosaicRule -----------------------------------------------------------------------
_METHODS = ("none", "northwest", "center", "attribute", "lockraster")
_OPERATIONS = ("first", "last", "min", "max", "mean")


@dataclass
class _Rule:
    method: str = "none"
    operation: str = "first"
    sort_field: str | None = None
    sort_value: Any = None
    ascending: bool = True
    lock_ids: list[int] = field(default_factory=list)
    where: str = ""


def _rule_bad(*details: str) -> ArcGISError:
    return _bad("Invalid mosaicRule", *details)


def _mosaic_rule(raw: str) -> _Rule:
    """Parse the ArcGIS ``mosaicRule`` JSON (absent or empty: None / MT_FIRST)."""
    raw = raw.strip()
    if not raw:
        return _Rule()
    try:
        obj = json.loads(raw)
    except json.JSONDecodeError:
        raise _rule_bad("mosaicRule is not valid JSON") from None
    if not isinstance(obj, dict):
        raise _rule_bad("mosaicRule must be a JSON object")
    obj = {str(k).lower(): v for k, v in obj.items()}
    m_raw, o_raw = obj.get("mosaicmethod") or "esriMosaicNone", obj.get("mosaicoperation")
    method = str(m_raw).strip().lower().removeprefix("esrimosaic")
    if method not in _METHODS:
        raise _rule_bad(f"mosaicMethod {m_raw!r}: use esriMosaic{{None,Northwest,Center,...}}")
    op = str(o_raw or "MT_FIRST").strip().lower().removeprefix("mt_")
    if op not in _OPERATIONS:
        raise _rule_bad(
            f"mosaicOperation {o_raw!r}: use MT_FIRST, MT_LAST, MT_MIN, MT_MAX, MT_MEAN"
        )
    rule = _Rule(method=method, operation=op)
    asc = obj.get("ascending", True)
    if isinstance(asc, str) and asc.strip().lower() in ("true", "false"):
        asc = asc.strip().lower() == "true"
    if not isinstance(asc, bool):
        raise _rule_bad(f"ascending {asc!r} is not true or false")
    rule.ascending = asc
    where = obj.get("where") or ""
    if not isinstance(where, str):
        raise _rule_bad("where must be a string")
    rule.where = where
    if method == "attribute":
        sort_field = obj.get("sortfield")
        if not isinstance(sort_field, str) or not sort_field.strip():
            raise _rule_bad("esriMosaicAttribute needs a sortField")
        rule.sort_field, rule.sort_value = sort_field.strip(), obj.get("sortvalue")
    if method == "lockraster":
        lock = obj.get("lockrasterids")
        if (
            not isinstance(lock, list)
            or not lock
            or not all(isinstance(i, int) and not isinstance(i, bool) for i in lock)
        ):
            raise _rule_bad("esriMosaicLockRaster needs lockRasterIds: a list of ObjectIDs")
        rule.lock_ids = list(lock)
    return rule


def _attribute_key(col: pa.ChunkedArray, value: Any, name: str) -> np.ndarray:
    try:
        return mosaic.attribute_key(col, value)  # the one ordering the lazy mosaic uses too
    except TypeError:
        raise _rule_bad(f"sortField {name!r} is not a number or date field") from None
    except ValueError as exc:
        raise _rule_bad(f"sortValue {exc}") from None


def _ordering(table: pa.Table, rule: _Rule, bbox: tuple[float, float, float, float]) -> list[int]:
    """Row indices of ``table`` (ObjectID order) in mosaic order; ties keep ObjectID order."""
    if rule.method == "lockraster":
        pos = {int(o): i for i, o in enumerate(table["ObjectID"].to_pylist())}
        picked: list[int] = []
        for oid in rule.lock_ids:
            if oid in pos and pos[oid] not in picked:
                picked.append(pos[oid])
        return picked
    if rule.method in ("northwest", "center"):
        xmin, ymin, xmax, ymax = bbox
        tx, ty = (
            (xmin, ymax) if rule.method == "northwest" else ((xmin + xmax) / 2, (ymin + ymax) / 2)
        )
        cx = np.asarray(table["CenterX"].to_pylist(), dtype="float64")
        cy = np.asarray(table["CenterY"].to_pylist(), dtype="float64")
        key = np.hypot(cx - tx, cy - ty)
    elif rule.method == "attribute":
        name = _resolve(str(rule.sort_field), table.column_names)
        key = _attribute_key(table[name], rule.sort_value, name)
        return mosaic.order_by_key(key, rule.ascending)  # images without the attribute last
    else:
        return list(range(table.num_rows))
    return mosaic.order_by_key(key)
