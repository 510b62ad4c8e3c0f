"""Lazy mosaics and time stacks of a collection, for notebooks: Dask-backed xarray.

Strategy: the output grid (bbox, CRS, resolution, snapped outward to multiples of the
resolution like ``gdalwarp -tap``) is cut into blocks of ``chunks`` pixels. Each block is
one Dask task that calls :func:`engine.mosaic.render` — the renderer behind exportImage —
with the images whose catalog bounds meet that block, chosen when the graph is built from
the catalog alone. A block therefore reads only the windows of its own images (and, once
the store has overviews, the level render picks for it). Nothing is read before
``compute``; the graph has one task per block (per block and time slice for a stack) and
its keys are tokens of the store's state and the request, so the same request on the same
store gives the same keys.

Values: with ``nearest`` and first/last/min/max the mosaic keeps the stored data type and
stored values, the collection's nodata where no image has data (NaN for float types);
other resamplings and ``mean`` give float64 with NaN (a float type stays itself).
"""

from __future__ import annotations

import math
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import dask.array as da
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import rioxarray  # noqa: F401  (the .rio accessor)
import xarray as xr
from affine import Affine
from dask.base import tokenize
from pyproj import CRS
from rasterio.warp import calculate_default_transform

from engine import mosaic
from engine.errors import RequestError
from engine.geometry import Region
from engine.grid import Grid, as_crs
from graphs.chunk import default_tolerance

_SORT_FIELDS = "acquisition_time, cloud_cover or any numeric catalog column"
_EPS = 1e-3  # in pixels: a bbox edge this close to a line of the grid is on it


@dataclass(frozen=True)
class Selection:
    """The complete images a mosaic or stack may use, in mosaic order, and their frame."""

    table: pa.Table  # catalog rows in mosaic order
    bands: list[str]
    dtype: np.dtype  # the stored type (common to the images)
    nodata: float | None


# -- choosing images ----------------------------------------------------------------------
def select(
    coll: Any,
    *,
    where: Any = None,
    sort_by: str | None = None,
    ascending: bool = True,
    bands: Sequence[str] | str | None = None,
) -> Selection:
    """The complete images that pass ``where``, ordered by ``sort_by`` (ties and images
    without the attribute keep catalog order; those without it come last).

    ``where`` is an ArcGIS-style SQL clause on catalog columns (the service's ``where``),
    a ``pyarrow.compute`` expression, or a boolean sequence over the catalog rows.
    """
    t = coll.catalog
    if where is not None:
        t = t.filter(_where_mask(where, t))
    t = t.filter(pc.fill_null(pc.equal(t["status"], "complete"), False))
    t = t.take(pc.sort_indices(t, sort_keys=[("ObjectID", "ascending")]))
    if sort_by is not None:
        name = _column(sort_by, t.column_names)
        try:
            key = mosaic.attribute_key(t[name])
        except TypeError:
            raise RequestError(
                "sort_by", sort_by, f"column {name!r} is {t[name].type}", f"sort by {_SORT_FIELDS}"
            ) from None
        t = t.take(pa.array(mosaic.order_by_key(key, ascending), type=pa.int64()))
    names = _band_names(coll, t)
    chosen = names if bands is None else _pick_bands(bands, names)
    dtypes = {d for d in t["dtype"].to_pylist() if d}
    dtype = np.result_type(*dtypes) if dtypes else np.dtype("float64")
    nodatas = [v for v in t["nodata"].to_pylist() if v is not None]
    return Selection(t, chosen, np.dtype(dtype), nodatas[0] if nodatas else None)


def _where_mask(where: Any, t: pa.Table) -> pa.Array:
    if isinstance(where, str):
        from engine.server.arcgis import ArcGISError
        from engine.server.imageserver_where import _where_mask as sql_mask

        try:
            mask = sql_mask(where, t)
        except ArcGISError as exc:
            raise RequestError("where", where, exc.message, "; ".join(exc.details)) from None
        return mask if mask is not None else pa.array(np.ones(t.num_rows, bool))
    if isinstance(where, pc.Expression):
        rows = t.append_column("__row", pa.array(np.arange(t.num_rows)))
        try:
            kept = np.asarray(rows.filter(where)["__row"], dtype="int64")
        except (pa.ArrowInvalid, pa.ArrowTypeError, KeyError) as exc:
            raise RequestError("where", str(where), str(exc), "filter on catalog columns") from None
        mask = np.zeros(t.num_rows, dtype=bool)
        mask[kept] = True
        return pa.array(mask)
    mask = np.asarray(where, dtype=bool)
    if mask.shape != (t.num_rows,):
        raise RequestError(
            "where",
            where,
            f"a mask of {mask.shape} for {t.num_rows} catalog rows",
            "give a SQL clause, a pyarrow expression or one boolean per catalog row",
        )
    return pa.array(mask)


def _column(name: str, columns: list[str]) -> str:
    for c in columns:
        if c.lower() == name.lower():
            return c
    raise RequestError("sort_by", name, "no such catalog column", f"sort by {_SORT_FIELDS}")


def _band_names(coll: Any, t: pa.Table) -> list[str]:
    for names in t["band_names"].to_pylist():
        if names:
            return list(names)
    d = coll.descriptor
    n = int(d.get("bandCount") or 1)
    return list(d.get("bandNames") or [f"b{i + 1}" for i in range(n)])


def _pick_bands(bands: Sequence[str] | str, names: list[str]) -> list[str]:
    wanted = [bands] if isinstance(bands, str) else list(bands)
    out = []
    for b in wanted:
        if isinstance(b, int) and not isinstance(b, bool) and 0 <= b < len(names):
            out.append(names[b])
        elif b in names:
            out.append(str(b))
        else:
            raise RequestError(
                "bands", bands, f"{b!r} is not a band", f"use some of {', '.join(names)}"
            )
    if not out:
        raise RequestError("bands", bands, "no band chosen", f"use some of {', '.join(names)}")
    return out


# -- the output grid ----------------------------------------------------------------------
def output_grid(
    coll: Any,
    rows: pa.Table,
    *,
    bbox: Sequence[float] | None = None,
    bbox_crs: Any = None,
    crs: Any = None,
    resolution: float | Sequence[float] | None = None,
    shape: Sequence[int] | None = None,
) -> Grid:
    """The mosaic's grid: ``bbox`` (in ``bbox_crs``, default ``crs``; default the images'
    extent) in ``crs`` (default the collection's), cells of ``resolution`` (default the
    collection cell size, or GDAL's suggested size in another CRS), edges snapped outward
    to multiples of the resolution (from the collection origin in its own CRS). With
    ``shape`` (height, width) instead, the bbox is kept exactly and cut into that many
    pixels (like exportImage's ``size`` or GDAL's ``out_shape``)."""
    ccrs = CRS.from_wkt(coll.info.crs_wkt)
    try:
        dcrs = ccrs if crs is None else as_crs(crs)
    except Exception as exc:
        raise RequestError("crs", crs, f"not a CRS ({exc})", "give e.g. 'EPSG:4326'") from None
    if bbox is None:
        if rows.num_rows == 0:
            raise RequestError("bbox", None, "no image to take the extent from", "give a bbox")
        cols = [np.asarray(rows[k], dtype="float64") for k in ("xmin", "ymin", "xmax", "ymax")]
        box: tuple[float, ...] = (cols[0].min(), cols[1].min(), cols[2].max(), cols[3].max())
        box_crs = ccrs
    else:
        box = tuple(float(v) for v in bbox)
        if len(box) != 4 or not (box[0] < box[2] and box[1] < box[3]):
            raise RequestError(
                "bbox", bbox, "not xmin, ymin, xmax, ymax", "give four numbers, min < max"
            )
        box_crs = dcrs if bbox_crs is None else as_crs(bbox_crs)
    if box_crs != dcrs:
        box = Region.from_bounds(box, box_crs).to_crs(dcrs).bounds
    if not all(math.isfinite(v) for v in box):
        raise RequestError("bbox", bbox, f"has no position in {dcrs.name}", "give another crs")
    if shape is not None:
        return _shaped(box, dcrs, shape, resolution)
    xres, yres = _resolution(coll, resolution, ccrs, dcrs, box_crs, rows)
    ox, oy = coll.info.origin if dcrs == ccrs else (0.0, 0.0)
    c0 = math.floor((box[0] - ox) / xres + _EPS)
    c1 = math.ceil((box[2] - ox) / xres - _EPS)
    r0 = math.floor((box[1] - oy) / yres + _EPS)
    r1 = math.ceil((box[3] - oy) / yres - _EPS)
    transform = Affine(xres, 0.0, ox + c0 * xres, 0.0, -yres, oy + r1 * yres)
    return Grid(dcrs, transform, (max(1, r1 - r0), max(1, c1 - c0)))


def _shaped(box: Sequence[float], crs: CRS, shape: Sequence[int], resolution: Any) -> Grid:
    if resolution is not None:
        raise RequestError("shape", shape, "given with a resolution", "give one of the two")
    try:
        h, w = (int(v) for v in shape)
    except (TypeError, ValueError):
        h = w = 0
    if h < 1 or w < 1:
        raise RequestError("shape", shape, "not (height, width) in pixels", "e.g. (1024, 1024)")
    xmin, ymin, xmax, ymax = box
    return Grid(crs, Affine((xmax - xmin) / w, 0.0, xmin, 0.0, -(ymax - ymin) / h, ymax), (h, w))


def _resolution(
    coll: Any, resolution: Any, ccrs: CRS, dcrs: CRS, box_crs: CRS, rows: pa.Table
) -> tuple[float, float]:
    if resolution is not None:
        scalar = isinstance(resolution, (int, float, np.number))
        res = [float(resolution)] * 2 if scalar else [float(r) for r in resolution]
        if len(res) != 2 or not all(math.isfinite(r) and r > 0 for r in res):
            raise RequestError(
                "resolution", resolution, "not a positive cell size", "give x or (x, y)"
            )
        return res[0], res[1]
    cell = float(coll.info.cell_size)
    if dcrs == ccrs:
        return cell, cell
    # GDAL's suggested output size for the collection extent, as gdalwarp picks it
    cols = [np.asarray(rows[k], dtype="float64") for k in ("xmin", "ymin", "xmax", "ymax")]
    xmin, ymin, xmax, ymax = cols[0].min(), cols[1].min(), cols[2].max(), cols[3].max()
    w, h = max(1, round((xmax - xmin) / cell)), max(1, round((ymax - ymin) / cell))
    t, _, _ = calculate_default_transform(ccrs, dcrs, w, h, xmin, ymin, xmax, ymax)
    return abs(t.a), abs(t.e)


# -- the Dask graph -----------------------------------------------------------------------
def _chunk_sizes(total: int, size: int) -> tuple[int, ...]:
    n, rest = divmod(total, size)
    return (size,) * n + ((rest,) if rest else ())


def _chunks(chunks: int | Sequence[int] | dict[str, int]) -> tuple[int, int]:
    if isinstance(chunks, dict):
        cy, cx = chunks.get("y", 1024), chunks.get("x", 1024)
    elif isinstance(chunks, int):
        cy = cx = chunks
    else:
        cy, cx = chunks
    if int(cy) < 1 or int(cx) < 1:
        raise RequestError("chunks", chunks, "block sizes must be positive", "e.g. 1024")
    return int(cy), int(cx)


def blocks(grid: Grid, chunks: Any) -> tuple[tuple[int, ...], tuple[int, ...], list[Any]]:
    """Row and column block sizes of ``grid`` and each block as ``(i, j, Grid)``."""
    cy, cx = _chunks(chunks)
    ys, xs = _chunk_sizes(grid.height, cy), _chunk_sizes(grid.width, cx)
    out = []
    r = 0
    for i, h in enumerate(ys):
        c = 0
        for j, w in enumerate(xs):
            out.append((i, j, grid.window(r, c, h, w)))
            c += w
        r += h
    return ys, xs, out


def block_images(rows: pa.Table, block: Grid, collection_crs: CRS) -> list[int]:
    """Positions of ``rows`` whose catalog bounds (collection CRS) meet ``block``."""
    try:
        xmin, ymin, xmax, ymax = (
            block.bounds
            if block.crs == collection_crs
            else block.footprint_in(collection_crs).bounds
        )
    except Exception:
        return []
    if not all(math.isfinite(v) for v in (xmin, ymin, xmax, ymax)):
        return []
    hit = (
        (np.asarray(rows["xmin"], dtype="float64") < xmax)
        & (np.asarray(rows["xmax"], dtype="float64") > xmin)
        & (np.asarray(rows["ymin"], dtype="float64") < ymax)
        & (np.asarray(rows["ymax"], dtype="float64") > ymin)
    )
    return [int(i) for i in np.nonzero(hit)[0]]


_INDEXES: dict[tuple[str, str], mosaic.ImageIndex] = {}
_INDEX_LOCK = threading.Lock()


def _index(store: str, crs_wkt: str) -> mosaic.ImageIndex:
    """One opened ImageIndex per store and process (tasks may run on Dask workers)."""
    with _INDEX_LOCK:
        idx = _INDEXES.get((store, crs_wkt))
        if idx is None:
            idx = _INDEXES[(store, crs_wkt)] = mosaic.ImageIndex(store, CRS.from_wkt(crs_wkt))
        return idx


def render_block(
    store: str,
    crs_wkt: str,
    image_ids: tuple[str, ...],
    bands: tuple[str, ...],
    block: Grid,
    resampling: str,
    operation: str,
    dtype: str,
    fill: float,
    direct: bool,
) -> np.ndarray:
    """One output block: :func:`engine.mosaic.render` of its images, ``fill`` elsewhere."""
    out_type = np.dtype(dtype)
    if not image_ids:
        return np.full((len(bands), block.height, block.width), fill, dtype=out_type)
    data, valid = mosaic.render(
        _index(store, crs_wkt),
        list(image_ids),
        list(bands),
        block,
        resampling=resampling,
        operation=operation,
        threads=2,
        dtype=out_type if direct else None,
        tolerance=default_tolerance(resampling),  # blocks equal one warp of the whole grid
    )
    data = data.astype(out_type, copy=False)
    data[:, ~valid] = fill
    return data


def _value_type(sel: Selection, resampling: str, operation: str) -> tuple[np.dtype, float, bool]:
    """(output dtype, fill, direct): stored values where nearest copies them."""
    stored = sel.dtype
    exact = resampling == "nearest" and operation != "mean"
    if exact and stored.kind == "f":
        return stored, math.nan, True
    if exact and sel.nodata is not None and _holds(stored, sel.nodata):
        return stored, float(sel.nodata), True
    return (stored if stored.kind == "f" else np.dtype("float64")), math.nan, False


def _holds(dtype: np.dtype, value: float) -> bool:
    """Whether an integer ``dtype`` represents ``value`` exactly."""
    info = np.iinfo(dtype)
    return float(value).is_integer() and info.min <= value <= info.max


def _check(method: str, resampling: str) -> None:
    if method not in mosaic.OPERATIONS:
        raise RequestError(
            "method", method, "not a mosaic method", f"use one of {', '.join(mosaic.OPERATIONS)}"
        )
    from rasterio.enums import Resampling

    if resampling not in Resampling.__members__:
        raise RequestError(
            "resampling", resampling, "not a GDAL resampling", "e.g. nearest, bilinear, cubic"
        )


def _coords(grid: Grid) -> dict[str, np.ndarray]:
    x, y = grid.coords()
    return {"y": y, "x": x}


def _annotate(arr: xr.DataArray, grid: Grid, fill: float) -> xr.DataArray:
    arr = arr.rio.write_crs(grid.crs.to_wkt())
    arr = arr.rio.write_transform(grid.transform)
    return arr.rio.write_nodata(fill, encoded=False)


def lazy_mosaic(
    coll: Any,
    *,
    bbox: Sequence[float] | None = None,
    bbox_crs: Any = None,
    crs: Any = None,
    resolution: float | Sequence[float] | None = None,
    shape: Sequence[int] | None = None,
    method: str = "first",
    sort_by: str | None = None,
    ascending: bool = True,
    where: Any = None,
    bands: Sequence[str] | str | None = None,
    resampling: str = "nearest",
    chunks: int | Sequence[int] | dict[str, int] = 1024,
) -> xr.DataArray:
    """The mosaic of a collection as a lazy (band, y, x) DataArray (see
    :meth:`engine.collection.Collection.mosaic`)."""
    _check(method, resampling)
    sel = select(coll, where=where, sort_by=sort_by, ascending=ascending, bands=bands)
    grid = output_grid(
        coll, sel.table, bbox=bbox, bbox_crs=bbox_crs, crs=crs, resolution=resolution, shape=shape
    )
    dtype, fill, direct = _value_type(sel, resampling, method)
    ys, xs, parts = blocks(grid, chunks)
    ccrs = CRS.from_wkt(coll.info.crs_wkt)
    ids = sel.table["image_id"].to_pylist()
    state = _store_state(coll)
    name = "mosaic-" + tokenize(
        state, ids, sel.bands, grid, method, resampling, ys, xs, str(dtype), fill
    )
    graph: dict[Any, Any] = {}
    for i, j, block in parts:
        mine = tuple(ids[k] for k in block_images(sel.table, block, ccrs))
        graph[(name, 0, i, j)] = (
            render_block,
            coll.path,
            coll.info.crs_wkt,
            mine,
            tuple(sel.bands),
            block,
            resampling,
            method,
            str(dtype),
            fill,
            direct,
        )
    arr = da.Array(graph, name, ((len(sel.bands),), ys, xs), meta=np.empty((0, 0, 0), dtype=dtype))
    out = xr.DataArray(
        arr,
        dims=("band", "y", "x"),
        coords={"band": list(sel.bands), **_coords(grid)},
        name=coll.info.name,
        attrs={
            "mosaic_method": method,
            "sort_by": sort_by or "",
            "ascending": int(ascending),
            "resampling": resampling,
            "image_count": len(ids),
        },
    )
    return _annotate(out, grid, fill)


def _store_state(coll: Any) -> Any:
    """What identifies the store's content: its path and every image's id and checksum."""
    t = coll.catalog
    return (coll.path, t["image_id"].to_pylist(), t["checksum"].to_pylist())


def lazy_stack(
    coll: Any,
    *,
    bbox: Sequence[float] | None = None,
    bbox_crs: Any = None,
    crs: Any = None,
    resolution: float | Sequence[float] | None = None,
    shape: Sequence[int] | None = None,
    bands: Sequence[str] | str | None = None,
    time_field: str = "acquisition_time",
    where: Any = None,
    resampling: str = "nearest",
    chunks: int | Sequence[int] | dict[str, int] = 1024,
) -> xr.DataArray:
    """The collection as a lazy (time, band, y, x) cube (see
    :meth:`engine.collection.Collection.stack`)."""
    _check("first", resampling)
    sel = select(coll, where=where, bands=bands)
    grid = output_grid(
        coll, sel.table, bbox=bbox, bbox_crs=bbox_crs, crs=crs, resolution=resolution, shape=shape
    )
    ccrs = CRS.from_wkt(coll.info.crs_wkt)
    t = sel.table.take(pa.array(block_images(sel.table, grid, ccrs), type=pa.int64()))
    field = _column_for_time(time_field, t)
    times = _times(t[field])
    slices = _time_slices(times)  # [(time, [row positions in catalog order])]
    dtype, fill, direct = _value_type(sel, resampling, "first")
    ys, xs, parts = blocks(grid, chunks)
    ids = t["image_id"].to_pylist()
    name = "stack-" + tokenize(
        _store_state(coll), ids, sel.bands, grid, field, resampling, ys, xs, str(dtype), fill
    )
    graph: dict[Any, Any] = {}
    for k, (_, rows) in enumerate(slices):
        sub = t.take(pa.array(rows, type=pa.int64()))
        sub_ids = [ids[r] for r in rows]
        for i, j, block in parts:
            mine = tuple(sub_ids[p] for p in block_images(sub, block, ccrs))
            graph[(name, k, 0, i, j)] = (
                _stack_block,
                coll.path,
                coll.info.crs_wkt,
                mine,
                tuple(sel.bands),
                block,
                resampling,
                str(dtype),
                fill,
                direct,
            )
    arr = da.Array(
        graph,
        name,
        ((1,) * len(slices), (len(sel.bands),), ys, xs),
        meta=np.empty((0, 0, 0, 0), dtype=dtype),
    )
    cover = np.asarray(t["cloud_cover"], dtype="float64") if t.num_rows else np.zeros(0)
    names = t["Name"].to_pylist()
    out = xr.DataArray(
        arr,
        dims=("time", "band", "y", "x"),
        coords={
            "time": np.array([s[0] for s in slices], dtype="datetime64[ns]"),
            "band": list(sel.bands),
            **_coords(grid),
            "image_id": ("time", [",".join(ids[r] for r in rows) for _, rows in slices]),
            "name": ("time", [",".join(str(names[r]) for r in rows) for _, rows in slices]),
            "cloud_cover": ("time", [_mean(cover[rows]) for _, rows in slices]),
        },
        name=coll.info.name,
        attrs={"time_field": field, "resampling": resampling},
    )
    return _annotate(out, grid, fill)


def _mean(values: np.ndarray) -> float:
    """Mean of the finite values (the cloud cover of a time slice), NaN when none."""
    ok = values[np.isfinite(values)]
    return float(ok.mean()) if ok.size else math.nan


def _stack_block(
    store: str,
    crs_wkt: str,
    image_ids: tuple[str, ...],
    bands: tuple[str, ...],
    block: Grid,
    resampling: str,
    dtype: str,
    fill: float,
    direct: bool,
) -> np.ndarray:
    data = render_block(
        store, crs_wkt, image_ids, bands, block, resampling, "first", dtype, fill, direct
    )
    return data[None]


def _column_for_time(name: str, t: pa.Table) -> str:
    for c in t.column_names:
        if c.lower() == name.lower():
            typ = t[c].type
            if pa.types.is_timestamp(typ) or pa.types.is_date(typ):
                return c
            raise RequestError(
                "time_field", name, f"column {c!r} is {typ}, not a time", "e.g. acquisition_time"
            )
    raise RequestError("time_field", name, "no such catalog column", "e.g. acquisition_time")


def _times(col: pa.ChunkedArray) -> list[np.datetime64]:
    """Times as naive UTC datetime64[ns]; NaT where missing."""
    arr = col.cast(pa.timestamp("ns", tz="UTC")) if pa.types.is_timestamp(col.type) else col
    return [
        np.datetime64("NaT", "ns")
        if v is None
        else np.datetime64(v.replace(tzinfo=None) if hasattr(v, "tzinfo") else v, "ns")
        for v in arr.to_pylist()
    ]


def _time_slices(times: list[np.datetime64]) -> list[tuple[np.datetime64, list[int]]]:
    """Images grouped by equal time, in time order (catalog order within a time); images
    without a time each get their own slice (NaT), at the end."""
    groups: dict[np.datetime64, list[int]] = {}
    missing: list[int] = []
    for pos, tm in enumerate(times):
        if np.isnat(tm):
            missing.append(pos)
        else:
            groups.setdefault(tm, []).append(pos)
    out = [(tm, groups[tm]) for tm in sorted(groups)]
    out += [(np.datetime64("NaT", "ns"), [p]) for p in missing]
    return out
