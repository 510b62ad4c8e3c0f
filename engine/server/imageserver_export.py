"""ImageServer ``exportImage``: an axis-aligned mosaic (method First) read from the images
whose catalog bounds meet the request."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow.compute as pc
from pyproj import CRS

from engine.geometry import Region
from engine.server.imageserver_common import (
    _bad,
    _collection,
    _collection_crs,
    _service_rows,
)
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


@dataclass
class _Export:
    data: np.ndarray  # (bands, h, w)
    bbox: tuple[float, float, float, float]
    crs: CRS
    nodata: float
    fmt: str


def _numbers(raw: str, n: int, what: str) -> list[float]:
    try:
        nums = [float(p) for p in re.split(r"[,\s]+", raw.strip()) if p]
    except ValueError:
        raise _bad(f"Invalid {what}", f"{raw!r} is not {n} numbers") from None
    if len(nums) != n or not all(math.isfinite(v) for v in nums):
        raise _bad(f"Invalid {what}", f"{raw!r} is not {n} numbers")
    return nums


def _export(name: str, params: Mapping[str, str]) -> _Export:
    coll = _collection(name)
    d = coll.descriptor
    crs = _collection_crs(coll)
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
    xmin, ymin, xmax, ymax = nums
    if not (xmin < xmax and ymin < ymax):
        raise _bad("Invalid bbox", "needs xmin < xmax and ymin < ymax")
    bbox_sr = (params.get("bboxsr") or "").strip()
    bcrs = (
        parse_spatial_reference(bbox_sr, "bboxSR")
        if bbox_sr
        else (parse_spatial_reference(sr, "bbox.spatialReference") if sr else crs)
    )
    image_sr = (params.get("imagesr") or "").strip()
    if image_sr and parse_spatial_reference(image_sr, "imageSR") != crs:
        raise _bad("Unsupported imageSR", "only the service's spatial reference is supported")
    if bcrs != crs:
        xmin, ymin, xmax, ymax = Region.from_bounds(nums, bcrs).to_crs(crs).bounds
    w, h = (int(v) for v in _numbers(params.get("size") or "400,400", 2, "size"))
    if w <= 0 or h <= 0:
        raise _bad("Invalid size", "width and height must be positive")
    mw, mh = int(d.get("maxImageWidth") or 15000), int(d.get("maxImageHeight") or 4100)
    if w > mw or h > mh:
        raise _bad(
            "Requested image exceeds the size limit",
            f"{w}x{h} is larger than maxImageWidth x maxImageHeight ({mw}x{mh})",
        )
    fmt = (params.get("format") or "png").strip().lower()
    if fmt in ("tif", "geotiff"):
        fmt = "tiff"
    if fmt not in ("png", "tiff"):
        raise _bad("Unsupported format", f"format {fmt!r}: use png or tiff")
    nbands = int(d.get("bandCount") or 1)
    band_names = list(d.get("bandNames") or [f"b{i + 1}" for i in range(nbands)])
    raw_bands = (params.get("bandids") or "").strip()
    if raw_bands:
        try:
            band_ids = [int(b) for b in re.split(r"[,\s]+", raw_bands) if b]
        except ValueError:
            raise _bad("Invalid bandIds", f"{raw_bands!r}: give zero-based integers") from None
        if not band_ids or any(b < 0 or b >= len(band_names) for b in band_ids):
            raise _bad("Invalid bandIds", f"band ids run from 0 to {len(band_names) - 1}")
    else:
        band_ids = list(range(len(band_names)))
    dtype = np.dtype(_PIXEL_TYPES.get(str(d.get("pixelType")), "float64"))
    raw_nd = (params.get("nodata") or "").strip()
    if raw_nd:
        nodata = _numbers(raw_nd, 1, "noData")[0]
    else:
        nd = d.get("noDataValue")
        nodata = float(nd) if nd is not None else 0.0
    if fmt == "png" and dtype not in (np.dtype("uint8"), np.dtype("uint16")):
        raise _bad("Unsupported format", f"PNG holds 8 or 16 bit pixels, not {dtype}: use tiff")

    out = np.zeros((len(band_ids), h, w), dtype="float64")
    filled = np.zeros((h, w), dtype=bool)
    dx, dy = (xmax - xmin) / w, (ymax - ymin) / h
    xs = xmin + (np.arange(w) + 0.5) * dx
    ys = ymax - (np.arange(h) + 0.5) * dy
    table = _service_rows(coll)
    table = table.take(pc.sort_indices(table, sort_keys=[("ObjectID", "ascending")]))
    hits = (
        (np.asarray(table["xmin"]) < xmax)
        & (np.asarray(table["xmax"]) > xmin)
        & (np.asarray(table["ymin"]) < ymax)
        & (np.asarray(table["ymax"]) > ymin)
    )
    for image_id in np.asarray(table["image_id"].to_pylist(), dtype=object)[hits]:
        if filled.all():
            break
        ds = coll.image(str(image_id))
        a, _b, c, _d, e, f = _transform_of(ds)
        ny, nx = ds.sizes["y"], ds.sizes["x"]
        cols = np.floor((xs - c) / a).astype("int64")
        rows = np.floor((ys - f) / e).astype("int64")
        cok = (cols >= 0) & (cols < nx)
        rok = (rows >= 0) & (rows < ny)
        if not cok.any() or not rok.any():
            continue
        c0, c1 = int(cols[cok].min()), int(cols[cok].max()) + 1
        r0, r1 = int(rows[rok].min()), int(rows[rok].max()) + 1
        oc, orr = np.nonzero(cok)[0], np.nonzero(rok)[0]
        need = ~filled[np.ix_(orr, oc)]
        if not need.any():
            continue
        valid_any: np.ndarray | None = None
        for k, b in enumerate(band_ids):
            var = ds[band_names[b]]
            block = np.asarray(var.isel(y=slice(r0, r1), x=slice(c0, c1)).values, dtype="float64")
            vals = block[np.ix_(rows[orr] - r0, cols[oc] - c0)]
            fill = var.encoding.get("_FillValue")
            valid = np.isfinite(vals)
            if fill is not None and not (isinstance(fill, float) and math.isnan(fill)):
                valid &= vals != float(fill)
            valid_any = valid if valid_any is None else (valid_any & valid)
            if k == 0:
                take = need & valid
            sub = out[k][np.ix_(orr, oc)]
            sub[take] = vals[take]
            out[k][np.ix_(orr, oc)] = sub
        sub_f = filled[np.ix_(orr, oc)]
        sub_f[take] = True
        filled[np.ix_(orr, oc)] = sub_f
    out[:, ~filled] = nodata
    return _Export(out.astype(dtype), (xmin, ymin, xmax, ymax), crs, nodata, fmt)


def _transform_of(ds: Any) -> tuple[float, ...]:
    t = ds.attrs.get("spatial:transform")
    if t is not None and len(t) >= 6:
        return tuple(float(v) for v in t[:6])
    import rioxarray  # noqa: F401  (registers the .rio accessor)

    tr = ds.rio.transform()
    return (tr.a, tr.b, tr.c, tr.d, tr.e, tr.f)


def _encode(img: _Export) -> tuple[bytes, str]:
    from affine import Affine
    from rasterio.io import MemoryFile

    bands, h, w = img.data.shape
    xmin, ymin, xmax, ymax = img.bbox
    transform = Affine((xmax - xmin) / w, 0.0, xmin, 0.0, -(ymax - ymin) / h, ymax)
    driver, media = ("PNG", "image/png") if img.fmt == "png" else ("GTiff", "image/tiff")
    profile: dict[str, Any] = {
        "driver": driver,
        "width": w,
        "height": h,
        "count": bands,
        "dtype": str(img.data.dtype),
        "transform": transform,
        "crs": img.crs.to_wkt(),
        "nodata": img.nodata,
    }
    with MemoryFile() as mem:
        with mem.open(**profile) as dst:
            dst.write(img.data)
        return mem.read(), media
