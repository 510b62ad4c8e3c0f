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
import threading
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import zarr
from affine import Affine
from pyproj import CRS
from rasterio.crs import CRS as RioCRS
from rasterio.enums import Resampling
from rasterio.warp import reproject

from engine.grid import Grid

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

    def band(self, name: str) -> zarr.Array:
        try:
            return self.arrays[name]
        except KeyError:
            raise KeyError(f"image {self.image_id} has no band {name!r}") from None


class ImageIndex:
    """Opened image groups of one store, cached: opening a group reads its metadata once."""

    def __init__(self, store_path: str, crs: CRS) -> None:
        self.root = zarr.open_group(store_path, mode="r")
        self.crs = crs
        self._cache: dict[str, StoredImage] = {}
        self._lock = threading.Lock()

    def get(self, image_id: str) -> StoredImage:
        with self._lock:
            hit = self._cache.get(image_id)
        if hit is not None:
            return hit
        group = self.root[f"images/{image_id}"]
        assert isinstance(group, zarr.Group)
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
        )
        with self._lock:
            self._cache[image_id] = img
        return img


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


def warp_image(
    img: StoredImage, bands: Sequence[str], dst: Grid, resampling: str = "nearest"
) -> np.ndarray | None:
    """``bands`` of one stored image warped onto ``dst`` as float64, NaN where not valid."""
    win = source_window(img.grid, dst, resampling)
    if win is None:
        return None
    r0, r1, c0, c1 = win
    src = np.stack([np.asarray(img.band(b)[r0:r1, c0:c1]) for b in bands])
    if img.fill is not None and src.dtype.kind == "f" and not math.isnan(img.fill):
        src = np.where(src == img.fill, np.nan, src)
        fill: float | None = math.nan
    else:
        fill = img.fill
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
    return out


def render(
    index: ImageIndex,
    image_ids: Iterable[str],
    bands: Sequence[str],
    dst: Grid,
    *,
    resampling: str = "nearest",
    operation: str = "first",
    threads: int = 4,
) -> tuple[np.ndarray, np.ndarray]:
    """Mosaic ``image_ids`` (in priority order) onto ``dst``.

    Returns
    -------
    (data, valid)
        ``data`` (bands, h, w) float64, NaN where no image has a valid pixel; ``valid`` the
        (h, w) mask of pixels some image covered.

    Examples
    --------
    >>> data, valid = render(index, ids, ["b1"], grid, operation="max")  # doctest: +SKIP
    """
    if operation not in OPERATIONS:
        raise ValueError(f"operation {operation!r}: use one of {', '.join(OPERATIONS)}")
    ids = list(image_ids)
    if operation == "last":  # last valid wins == first valid of the reversed order
        ids, operation = ids[::-1], "first"
    out = np.full((len(bands), dst.height, dst.width), np.nan, dtype="float64")
    filled = np.zeros(dst.shape, dtype=bool)
    count = np.zeros(dst.shape, dtype="int64") if operation == "mean" else None

    def one(image_id: str) -> np.ndarray | None:
        return warp_image(index.get(image_id), bands, dst, resampling)

    with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
        # bounded look-ahead: at most 2 × threads warped images wait in memory
        pending: list[Any] = []
        it = iter(ids)
        done = False
        while not done:
            while len(pending) < 2 * max(1, threads):
                nxt = next(it, None)
                if nxt is None:
                    break
                pending.append(pool.submit(one, nxt))
            if not pending:
                break
            vals = pending.pop(0).result()
            if vals is None:
                continue
            take = np.isfinite(vals[0])
            if operation == "first":
                take &= ~filled
                out[:, take] = vals[:, take]
            elif operation == "mean":
                assert count is not None
                out[:, take & ~filled] = 0.0
                out[:, take] += vals[:, take]
                count += take
            else:
                better = vals < out if operation == "min" else vals > out
                m = take & ~filled
                out[:, m] = vals[:, m]
                keep = take[None] & better
                out[keep] = vals[keep]
            filled |= take
            if operation == "first" and filled.all():
                done = True
                for f in pending:
                    f.cancel()
    if count is not None:
        out[:, filled] /= count[filled]
    return out, filled
