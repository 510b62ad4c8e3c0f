"""Mosaics of a collection onto any grid: the pixels behind exportImage (and notebooks).

Strategy: every image of the collection lies on the collection lattice, so the part of an
image a destination grid needs is one window of its stored arrays. For each image, in
mosaic order, the window covering the destination (padded by the resampling kernel's
reach) is read from Zarr — only the chunks it touches, chunks never written cost nothing —
and warped onto the destination by GDAL (``rasterio.warp.reproject``), which handles any
destination CRS and resampling. Images are read and warped in a small thread pool (Zarr
decoding and GDAL release the GIL) and combined in order: first/last valid pixel, or the
min/max/mean of the valid ones. A pixel is valid where the first requested band is.

With the destination on the collection lattice and ``nearest`` the result is the stored
pixels themselves (the transform is a pure integer shift, which GDAL's nearest reproduces).
"""

from __future__ import annotations

import math
import os
import threading
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any

import numpy as np
import pyarrow as pa
import zarr
from affine import Affine
from pyproj import CRS
from rasterio.crs import CRS as RioCRS
from rasterio.enums import Resampling
from rasterio.io import MemoryFile
from rasterio.vrt import WarpedVRT
from rasterio.warp import reproject

from engine import storage
from engine.chunkread import WindowReader
from engine.grid import Grid
from engine.store import overview_levels

OPERATIONS = ("first", "last", "min", "max", "mean")
# GDAL kernel radius in source pixels at scale 1 (GDAL widens it by the downsampling factor)
_RADIUS = {"nearest": 1, "bilinear": 1, "cubic": 2, "cubic_spline": 2, "lanczos": 3, "mode": 1}
_RADIUS_DEFAULT = 3


@dataclass(frozen=True)
class StoredImage:
    """Where one image's arrays are and how they sit on the ground."""

    image_id: str
    grid: Grid
    arrays: dict[str, zarr.Array]
    fill: float | None  # the bands' nodata (_FillValue), None: every stored pixel is data
    overviews: tuple[StoredImage, ...] = ()  # levels 1, 2, ...: cells 2×, 4×, ... larger

    def level_for(self, dst: Grid) -> StoredImage:
        """The level to read for ``dst``: the coarsest whose cell size is at most the
        destination's pixel size (GDAL's choice of overview for a decimated read), so a
        request at the native resolution reads the image itself."""
        k = overview_for(self.grid, dst, len(self.overviews)) if self.overviews else 0
        return self if k == 0 else self.overviews[k - 1]

    def band(self, name: str) -> zarr.Array:
        try:
            return self.arrays[name]
        except KeyError:
            raise KeyError(f"image {self.image_id} has no band {name!r}") from None

    def read(
        self, bands: Sequence[str], r0: int, r1: int, c0: int, c1: int, reader: WindowReader
    ) -> np.ndarray:
        """Rows r0:r1, columns c0:c1 of ``bands``, (bands, h, w), in the stored type."""
        return reader.read([self.band(b) for b in bands], r0, r1, c0, c1)


# Chunk decoding for every collection served by this process (see engine.chunkread).
# Reading and warping whole images for every render of this process (a pool per request
# would start threads on every exportImage); image tasks never wait on this pool.
_IMAGE_POOL = ThreadPoolExecutor(max_workers=4, thread_name_prefix="mosaic-images")
_CHUNK_POOL = ThreadPoolExecutor(max_workers=2 * (os.cpu_count() or 2), thread_name_prefix="chunks")


class ImageIndex:
    """Opened image groups of one store, cached: opening a group reads its metadata once."""

    def __init__(self, store_path: str, crs: CRS) -> None:
        self.root = zarr.open_group(storage.zarr_store(store_path), mode="r")
        self.path = store_path
        self.crs = crs
        self.reader = WindowReader(_CHUNK_POOL)
        self._cache: dict[str, StoredImage] = {}
        self._lock = threading.Lock()

    def get(self, image_id: str) -> StoredImage:
        with self._lock:
            hit = self._cache.get(image_id)
        if hit is not None:
            return hit
        group = self.root[f"images/{image_id}"]
        assert isinstance(group, zarr.Group)
        if (group.attrs.get("mosaicflow") or {}).get("byref"):  # type: ignore[union-attr]
            from engine.byref import ByrefImage  # pixels at the source, warped on read

            img: StoredImage = ByrefImage.open(self.path, image_id, self.crs)
            with self._lock:  # as below: every thread uses the first one (and its cache)
                return self._cache.setdefault(image_id, img)
        t: Any = group.attrs.get("spatial:transform")
        arrays = {
            name: arr
            for name, arr in group.arrays()
            if arr.ndim == 2 and name not in ("x", "y", "spatial_ref")
        }
        first = next(iter(arrays.values()))
        # no _FillValue attribute: the image has no nodata and every stored pixel is data
        fill = float(first.fill_value) if "_FillValue" in first.attrs else None
        img = StoredImage(
            image_id,
            Grid(self.crs, Affine(*[float(v) for v in t[:6]]), (first.shape[0], first.shape[1])),
            arrays,
            fill,
            self._overviews(group, fill),
        )
        with self._lock:  # two threads may open it at once: all use the first one cached
            return self._cache.setdefault(image_id, img)

    def _overviews(self, group: zarr.Group, fill: float | None) -> tuple[StoredImage, ...]:
        """The image's overview levels (its ``multiscales`` layout), opened like level 0."""
        levels = []
        for asset in overview_levels(group):
            g = group[asset]
            assert isinstance(g, zarr.Group)
            t: Any = g.attrs.get("spatial:transform")
            arrays = {name: arr for name, arr in g.arrays() if arr.ndim == 2}
            shape = next(iter(arrays.values())).shape
            grid = Grid(self.crs, Affine(*[float(v) for v in t[:6]]), (shape[0], shape[1]))
            levels.append(StoredImage(f"{group.basename}/{asset}", grid, arrays, fill))
        return tuple(levels)


def overview_for(img: Grid, dst: Grid, levels: int) -> int:
    """The overview level (0 … ``levels``) a read of ``img`` onto ``dst`` uses: the largest
    k with 2**k source pixels per destination pixel or more (the finer axis, as GDAL)."""
    if img.is_axis_aligned and dst.is_axis_aligned and img.crs_wkt == dst.crs_wkt:
        span = min(dst.resolution[0] / img.resolution[0], dst.resolution[1] / img.resolution[1])
    else:  # the destination's mean pixel size in the image CRS
        try:
            area = dst.footprint_in(img.crs).area
        except Exception:  # a destination that does not project into the image CRS
            return 0
        span = math.sqrt(area / max(dst.width * dst.height, 1)) / math.sqrt(
            img.resolution[0] * img.resolution[1]
        )
    k = 0
    while k < levels and 2 ** (k + 1) <= span * (1 + 1e-9):
        k += 1
    return k


def source_window(img: Grid, dst: Grid, resampling: str) -> tuple[int, int, int, int] | None:
    """Rows and columns ``(r0, r1, c0, c1)`` of ``img`` that a warp onto ``dst`` can touch.

    The destination outline (densified, in the image CRS) bounds the window, padded by the
    kernel's reach in source pixels; None when the two do not meet.
    """
    try:
        fp = dst.footprint_in(img.crs)
    except Exception:  # a destination that does not project into the image CRS
        return None
    if fp.is_empty:
        return None
    xmin, ymin, xmax, ymax = fp.bounds
    inv = ~img.transform
    xs, ys = np.array([xmin, xmax, xmin, xmax]), np.array([ymin, ymin, ymax, ymax])
    cols = inv.a * xs + inv.b * ys + inv.c
    rows = inv.d * xs + inv.e * ys + inv.f
    # how many source pixels one destination pixel spans: GDAL widens its kernel by it
    span = max(
        (max(cols) - min(cols)) / max(dst.width, 1), (max(rows) - min(rows)) / max(dst.height, 1)
    )
    pad = math.ceil(_RADIUS.get(resampling, _RADIUS_DEFAULT) * max(1.0, span)) + 1
    r0 = max(0, math.floor(min(rows)) - pad)
    r1 = min(img.height, math.ceil(max(rows)) + pad)
    c0 = max(0, math.floor(min(cols)) - pad)
    c1 = min(img.width, math.ceil(max(cols)) + pad)
    if r0 >= r1 or c0 >= c1:
        return None
    return r0, r1, c0, c1


@dataclass
class Piece:
    """One image's contribution: ``vals`` (bands, h, w) and ``valid`` (h, w) for the
    destination rows ``rows`` and columns ``cols`` (the part of it the image can reach)."""

    rows: slice
    cols: slice
    vals: np.ndarray
    valid: np.ndarray


def _same_frame_nearest(img: Grid, dst: Grid) -> tuple[np.ndarray, np.ndarray] | None:
    """For nearest on the same CRS with both grids axis-aligned, the source row of each
    destination row and the source column of each destination column (as GDAL's nearest
    picks them: the pixel under the destination pixel's centre); else None."""
    t, d = img.transform, dst.transform
    if not (img.is_axis_aligned and dst.is_axis_aligned) or img.crs_wkt != dst.crs_wkt:
        return None
    xs = d.c + (np.arange(dst.width) + 0.5) * d.a
    ys = d.f + (np.arange(dst.height) + 0.5) * d.e
    cols = np.floor((xs - t.c) / t.a).astype("int64")
    rows = np.floor((ys - t.f) / t.e).astype("int64")
    return rows, cols


def warp_image(
    img: StoredImage,
    bands: Sequence[str],
    dst: Grid,
    resampling: str = "nearest",
    reader: WindowReader | None = None,
    tolerance: float | None = None,
) -> Piece | None:
    """``bands`` of one stored image on ``dst``: nearest on the same frame is an index
    lookup; anything else is GDAL's warp of the window the destination needs.

    ``tolerance`` is GDAL's transformer error threshold in source pixels; None keeps
    GDAL's default (0.125), whose interpolation along each destination row makes a pixel
    depend on where ``dst`` starts. A tiny one (1e-9: exact) makes a block of a grid equal
    the same pixels of a warp onto the whole grid, as the lazy mosaic needs.
    """
    index = _same_frame_nearest(img.grid, dst) if resampling == "nearest" else None
    reader = reader or WindowReader(_CHUNK_POOL)
    if index is not None:
        return _lookup(img, bands, *index, reader)
    win = source_window(img.grid, dst, resampling)
    if win is None:
        return None
    r0, r1, c0, c1 = win
    src = img.read(bands, r0, r1, c0, c1, reader)
    if img.fill is not None and src.dtype.kind == "f" and not math.isnan(img.fill):
        src = np.where(src == img.fill, np.nan, src)
        fill: float | None = math.nan
    else:
        fill = img.fill
    if tolerance is not None:
        win_grid = img.grid.window(r0, c0, r1 - r0, c1 - c0)
        out = _warp_window(src, win_grid, fill, dst, resampling, tolerance)
        valid = np.isfinite(out[0])
        return Piece(slice(0, dst.height), slice(0, dst.width), out, valid) if valid.any() else None
    out = np.full((len(bands), dst.height, dst.width), np.nan, dtype="float64")
    reproject(
        source=src,
        destination=out,
        src_transform=img.grid.window(r0, c0, r1 - r0, c1 - c0).transform,
        src_crs=RioCRS.from_wkt(img.grid.crs_wkt),
        src_nodata=fill,
        dst_transform=dst.transform,
        dst_crs=RioCRS.from_wkt(dst.crs_wkt),
        dst_nodata=math.nan,
        resampling=Resampling[resampling],
    )
    valid = np.isfinite(out[0])
    if not valid.any():
        return None
    return Piece(slice(0, dst.height), slice(0, dst.width), out, valid)


def _warp_window(
    src: np.ndarray, grid: Grid, fill: float | None, dst: Grid, resampling: str, tolerance: float
) -> np.ndarray:
    """GDAL's warp of ``src`` (on ``grid``) onto ``dst`` as float64, NaN where nothing
    lands, with the transformer error threshold ``tolerance``: a WarpedVRT over an
    in-memory GeoTIFF (``reproject`` always uses GDAL's default 0.125 px)."""
    profile = {"width": grid.width, "height": grid.height, "count": src.shape[0]}
    with MemoryFile() as mem:
        with mem.open(
            driver="GTiff", dtype=src.dtype, crs=RioCRS.from_wkt(grid.crs_wkt),
            transform=grid.transform, nodata=fill, **profile,
        ) as out:  # fmt: skip
            out.write(src)
        with mem.open() as ds, WarpedVRT(
            ds, crs=RioCRS.from_wkt(dst.crs_wkt), transform=dst.transform, width=dst.width,
            height=dst.height, resampling=Resampling[resampling], tolerance=max(tolerance, 1e-9),
            src_nodata=fill, nodata=math.nan, dtype="float64",
        ) as vrt:  # fmt: skip
            return vrt.read()


def _span(index: np.ndarray, size: int) -> slice | None:
    """The destination positions whose (monotonic) source index falls inside [0, size)."""
    inside = np.nonzero((index >= 0) & (index < size))[0]
    return slice(int(inside[0]), int(inside[-1]) + 1) if inside.size else None


def _lookup(
    img: StoredImage,
    bands: Sequence[str],
    rows: np.ndarray,
    cols: np.ndarray,
    reader: WindowReader,
) -> Piece | None:
    ys, xs = _span(rows, img.grid.height), _span(cols, img.grid.width)
    if ys is None or xs is None:
        return None
    r, c = rows[ys], cols[xs]
    r0, r1, c0, c1 = int(r.min()), int(r.max()) + 1, int(c.min()), int(c.max()) + 1
    window = img.read(bands, r0, r1, c0, c1, reader)
    if r.size == r1 - r0 and c.size == c1 - c0:  # the same cell size: the window itself
        vals = window
    else:  # decimation: pick the rows and columns under the destination pixels
        vals = window[:, (r - r0)[:, None], (c - c0)[None, :]]
    first = vals[0]
    if img.fill is None:
        valid = np.ones(first.shape, dtype=bool)
    elif math.isnan(img.fill):
        valid = ~np.isnan(first)
    else:
        valid = first != img.fill
        if first.dtype.kind == "f":
            valid &= ~np.isnan(first)
    if not valid.any():
        return None
    return Piece(ys, xs, vals, valid)


def render(
    index: ImageIndex,
    image_ids: Iterable[str],
    bands: Sequence[str],
    dst: Grid,
    *,
    resampling: str = "nearest",
    operation: str = "first",
    threads: int = 4,
    dtype: str | np.dtype | None = None,
    tolerance: float | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Mosaic ``image_ids`` (in priority order) onto ``dst``.

    ``tolerance`` is GDAL's transformer error threshold (see :func:`warp_image`).

    ``dtype`` (first/last/min/max only) assembles the mosaic in that type instead of
    float64: for nearest on the stored type it saves two conversions of the whole image.

    Returns
    -------
    (data, valid)
        ``data`` (bands, h, w) float64, NaN where no image has a valid pixel (or ``dtype``,
        0 there); ``valid`` the (h, w) mask of pixels some image covered.

    Examples
    --------
    >>> data, valid = render(index, ids, ["b1"], grid, operation="max")  # doctest: +SKIP
    """
    if operation not in OPERATIONS:
        raise ValueError(f"operation {operation!r}: use one of {', '.join(OPERATIONS)}")
    ids = list(image_ids)
    if operation == "last":  # last valid wins == first valid of the reversed order
        ids, operation = ids[::-1], "first"
    shape = (len(bands), dst.height, dst.width)
    if dtype is not None and operation != "mean":
        out = np.zeros(shape, dtype=dtype)
    else:
        out = np.full(shape, np.nan, dtype="float64")
    filled = np.zeros(dst.shape, dtype=bool)
    count = np.zeros(dst.shape, dtype="int64") if operation == "mean" else None

    def one(image_id: str) -> Piece | None:
        img = index.get(image_id).level_for(dst)  # the overview that fits the request
        return warp_image(img, bands, dst, resampling, index.reader, tolerance)

    # bounded look-ahead on the process-wide image pool: at most 2 × threads warped
    # images wait in memory
    pending: list[Any] = []
    it = iter(ids)
    while True:
        while len(pending) < 2 * max(1, threads):
            nxt = next(it, None)
            if nxt is None:
                break
            pending.append(_IMAGE_POOL.submit(one, nxt))
        if not pending:
            break
        piece = pending.pop(0).result()
        if piece is None:
            continue
        _combine(out, filled, count, piece, operation)
        if operation == "first" and filled.all():
            for f in pending:
                f.cancel()
            break
    if count is not None:
        out[:, filled] /= count[filled]
    return out, filled


def _combine(
    out: np.ndarray, filled: np.ndarray, count: np.ndarray | None, piece: Piece, operation: str
) -> None:
    """Fold one image's piece into the mosaic, in place, on the piece's rectangle only."""
    o = out[:, piece.rows, piece.cols]
    f = filled[piece.rows, piece.cols]
    take = piece.valid
    vals = piece.vals
    if operation == "first":
        new = take & ~f
        np.copyto(o, vals, where=new[None], casting="unsafe")
    elif operation == "mean":
        assert count is not None
        o[:, take & ~f] = 0.0
        np.add(o, vals, out=o, where=take[None], casting="unsafe")
        count[piece.rows, piece.cols] += take
    else:
        vf = vals.astype("float64", copy=False)
        better = (vf < o) if operation == "min" else (vf > o)
        m = take[None] & (better | ~f[None])
        np.copyto(o, vf, where=m, casting="unsafe")
    filled[piece.rows, piece.cols] = f | take


# -- mosaic order by attribute (esriMosaicAttribute) -------------------------------------
def epoch_ms(value: Any) -> float:
    """A date, datetime (naive = UTC), ISO text or number as milliseconds since 1970 UTC.

    Raises ``ValueError`` naming the value when it is neither a number nor a date.
    """
    if isinstance(value, datetime):
        v = value if value.tzinfo else value.replace(tzinfo=UTC)
        return v.timestamp() * 1000.0
    if isinstance(value, date):
        return datetime(value.year, value.month, value.day, tzinfo=UTC).timestamp() * 1000.0
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            pass
        try:
            return epoch_ms(datetime.fromisoformat(value.strip().replace("Z", "+00:00")))
        except ValueError:
            raise ValueError(f"{value!r} is not a number or a date") from None
    return float(value)


def attribute_key(values: pa.ChunkedArray | pa.Array, target: Any = None) -> np.ndarray:
    """The sort key of a numeric or date catalog column, as ArcGIS's esriMosaicAttribute
    ranks images: the values themselves (dates as epoch milliseconds), or their distance
    to ``target`` when one is given; NaN where a value is missing.

    Raises
    ------
    TypeError
        The column is neither numeric nor a date.
    ValueError
        ``target`` is not a number (or a date, for a date column).
    """
    typ = values.type
    is_time = pa.types.is_timestamp(typ) or pa.types.is_date(typ)
    if not (is_time or pa.types.is_integer(typ) or pa.types.is_floating(typ)):
        raise TypeError(f"a {typ} column is not a number or date field")
    conv = epoch_ms if is_time else float
    vals = np.array([math.nan if v is None else conv(v) for v in values.to_pylist()], "float64")
    if target is None:
        return vals
    if isinstance(target, bool) or not isinstance(target, (int, float, str)):
        raise ValueError(f"{target!r} is not a number or a date")
    try:
        goal = epoch_ms(target) if is_time else float(target)
    except ValueError:
        raise ValueError(f"{target!r} is not a number") from None
    return np.abs(vals - goal)


def order_by_key(key: np.ndarray, ascending: bool = True) -> list[int]:
    """Positions in mosaic order: by ``key`` (stable, so ties keep the given order), images
    without a key (NaN) last whichever the direction."""
    k = np.asarray(key, dtype="float64")
    if not ascending:
        k = -k
    k = np.where(np.isnan(k), np.inf, k)
    return [int(i) for i in np.argsort(k, kind="stable")]
