"""The chunk task: read, warp, clip, write one output chunk; return its small statistics.

Strategy: GDAL's warper is the reference, so the task gives GDAL the *source dataset itself*
(not a pre-read window) and a destination array the size of one output chunk. GDAL then
computes the source window it needs, padded by the resampling kernel's reach (widened when
downsampling), from exactly the same geotransform arithmetic as a whole-image warp. That is
why chunked output equals a whole-image ``rasterio.warp.reproject``: the only thing that
differs is where the destination starts, by a whole number of pixels. Reads stay bounded by
the chunk, and GDAL's block cache serves source blocks shared by neighbouring chunks.

Dataset handles are cached per thread (GDAL handles are not thread-safe) and Zarr arrays
per process; pixels never leave the worker: the client receives only statistics, a coarse
validity mask and a digest.
"""

from __future__ import annotations

import importlib
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np
import rasterio
import rasterio.features
import shapely
import zarr
from rasterio._err import CPLE_BaseError
from rasterio.crs import CRS as RioCRS
from rasterio.enums import MaskFlags, Resampling
from rasterio.errors import RasterioError
from rasterio.vrt import WarpedVRT

from engine.errors import remote_read_reason
from engine.grid import Grid, chunk_grid
from engine.rastertypes.base import SourcePart
from graphs import fastwarp, kernels

# Transformer error thresholds, in source pixels. GDAL's default (0.125) interpolates the
# transformation along each destination row of a processing chunk, so results depend on
# how the destination is split. Nearest-neighbour-like methods use the exact transformer
# (1e-9: GDALAutoCreateWarpedVRT refuses 0) and match a whole-image warp bit for bit;
# interpolating kernels use 1e-4 px, 1250 times tighter than gdalwarp's default and ~1.8
# times faster than exact; on the W8 benchmark scenes it changed 0.05 % of pixels by 1 DN
# and none by more (1e-3 was 2.4 times faster but moved steep uint16 gradients by 2-3 DN).
EXACT_TOLERANCE = 1e-9
INTERPOLATING_TOLERANCE = 1e-4
_EXACT_METHODS = {"nearest", "mode", "min", "max", "med", "q1", "q3"}


def default_tolerance(resampling: str) -> float:
    """The transformer error threshold mosaicflow uses for a resampling method."""
    return EXACT_TOLERANCE if resampling in _EXACT_METHODS else INTERPOLATING_TOLERANCE


@dataclass(frozen=True)
class ImageJob:
    """Everything a chunk task of one image needs; one graph node shared by its chunks."""

    image_id: str
    parts: tuple[SourcePart, ...]
    grid: Grid
    tile: int
    dtype: str
    nodata: float | None  # None: the image has no nodata value; coverage comes from GDAL's alpha
    resampling: str
    variables: tuple[str, ...]
    store: str
    clip_wkb: bytes | None = None
    coarse: int = 16
    scales: tuple[tuple[float, float], ...] = ()  # GDAL XSCALE/YSCALE per part
    tolerance: float = EXACT_TOLERANCE  # transformer error threshold, source pixels
    origin: tuple[float, float] = (0.0, 0.0)  # the collection lattice origin
    fast: bool = True  # use graphs.fastwarp where it reproduces GDAL (else GDAL itself)
    write: bool = True  # False for byref images: summaries only, the pixels stay at the source

    @property
    def group_path(self) -> str:
        return f"{self.store.rstrip('/')}/images/{self.image_id}"


_local = threading.local()


def _dataset(path: str) -> rasterio.DatasetReader:
    cache: dict[str, Any] = getattr(_local, "datasets", None) or {}
    _local.datasets = cache
    ds = cache.get(path)
    if ds is None or ds.closed:
        if len(cache) > 32:  # bound open handles per thread
            for old in cache.values():
                old.close()
            cache.clear()
        ds = cache[path] = rasterio.open(path)
    return ds


@lru_cache(maxsize=64)
def _rio_crs(wkt: str) -> RioCRS:
    return RioCRS.from_wkt(wkt)


def _zarr_array(job: ImageJob, name: str) -> zarr.Array:
    # a local path or an object-store URL: workers share no file system with the client and
    # open the store from the URL the job carries (cached per process by engine.storage)
    from engine import storage

    expect = (job.grid.shape, job.dtype, job.tile)
    return storage.open_array(f"{job.group_path}/{name}", expect)


@lru_cache(maxsize=16)
def _clip_geometry(wkb: bytes) -> shapely.Geometry:
    geom = shapely.from_wkb(wkb)
    shapely.prepare(geom)
    return geom


def warp_part(
    part: SourcePart,
    dst: Grid,
    resampling: str,
    dst_nodata: float | None,
    dtype: str,
    scale: tuple[float, float] | None = None,
    tolerance: float = EXACT_TOLERANCE,
    fast_origin: tuple[int, int] | None = None,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Warp the bands of one source part onto ``dst``: (bands, h, w) of ``dtype``, and the
    coverage mask when the image has no nodata value (else None).

    An image without nodata keeps none: every source pixel is data (zeros included), and
    which destination pixels the source covers comes from GDAL's alpha band, as with
    ``gdalwarp -dstalpha``; uncovered pixels hold 0, as gdalwarp writes them.

    ``fast_origin`` (the chunk's global lattice row and column) enables graphs.fastwarp,
    which computes the same pixels as GDAL's exact warp at about twice the speed of GDAL's
    1e-4 px path, for the cases it supports; the others fall through to GDAL.

    GDAL's warper runs through a WarpedVRT shaped exactly like the chunk, with the exact
    transformer (an error threshold of 1e-9 px instead of gdalwarp's default 0.125): the
    approximate transformer interpolates along each destination row, so its result would
    depend on where the chunk starts and chunked output would not equal a whole-image warp.
    For the same reason the resampling scale is fixed per image (``scale``, see
    engine.plan.resampling_scale) instead of being re-estimated from each chunk's window.
    """
    if part.georef == "camera":  # frame cameras: no GDAL transformer knows their model
        camera_warp = importlib.import_module("graphs.camera_warp")  # built with the camera types
        return camera_warp.warp_camera_part(
            part, dst, part.resampling or resampling, dst_nodata, dtype
        )
    if part.georef == "collection":  # an image of another collection: read it as stored
        from engine.byref import warp_stored_part

        return warp_stored_part(part, dst, part.resampling or resampling, dst_nodata, dtype)
    if part.georef == "rpcs":  # WarpedVRT ignores RPCs on a given grid: GDAL's own warped VRT
        from engine.rastertypes.rpc import warp_rpc

        return warp_rpc(
            part.path, part.model if part.model is not None else _dataset(part.path).rpcs, dst,
            part.resampling or resampling, bands=part.band_indexes, dtype=dtype,
            src_nodata=part.nodata, dst_nodata=dst_nodata, options=dict(part.warp_options),
            scale=scale, tolerance=0.0 if tolerance <= EXACT_TOLERANCE else tolerance,
        )  # fmt: skip
    ds = _dataset(part.path)
    if (
        fast_origin is not None
        and not part.warp_options
        and scale
        and dst_nodata is not None
        and part.georef == "transform"
        and not _has_mask_band(ds)  # fastwarp knows nodata values, not mask/alpha bands
    ):
        out = fastwarp.warp_chunk_fast(
            ds, part.band_indexes, part.grid, dst, fast_origin, part.resampling or resampling,
            part.nodata, dst_nodata, dtype, scale,
        )  # fmt: skip
        if out is not None:
            return out, None
    return gdal_warp(
        ds, dst, part.resampling or resampling, bands=part.band_indexes, src_nodata=part.nodata,
        dst_nodata=dst_nodata, dtype=dtype, scale=scale, tolerance=tolerance,
        options=dict(part.warp_options),
    )  # fmt: skip


def _has_mask_band(ds: rasterio.DatasetReader) -> bool:
    return any(
        MaskFlags.per_dataset in flags or MaskFlags.alpha in flags for flags in ds.mask_flag_enums
    )


def gdal_warp(
    ds: rasterio.DatasetReader,
    dst: Grid,
    resampling: str,
    *,
    bands: Sequence[int] | None = None,
    src_nodata: float | None = None,
    dst_nodata: float | None = None,
    dtype: str | None = None,
    scale: tuple[float, float] | None = None,
    tolerance: float = EXACT_TOLERANCE,
    options: dict[str, str] | None = None,
) -> tuple[np.ndarray, np.ndarray | None]:
    """GDAL's warp of ``bands`` of ``ds`` onto ``dst``, and its coverage when ``dst_nodata``
    is None (GDAL's alpha band; the source's own alpha when it has one).

    This one call is both mosaicflow's GDAL path for a chunk and, given a whole image grid,
    the reference the tests and benchmarks compare chunked output with: a WarpedVRT shaped
    like ``dst``, the transformer error threshold ``tolerance`` and the resampling scale
    ``scale`` (GDAL's XSCALE/YSCALE) fixed. ``options`` are further GDAL warp and
    transformer options (RPC_HEIGHT, RPC_DEM, ...).
    """
    bands = list(bands) if bands is not None else list(range(1, ds.count + 1))
    extras = {"XSCALE": repr(scale[0]), "YSCALE": repr(scale[1])} if scale else {}
    extras.update(options or {})
    # a source with its own alpha band gets a destination alpha from GDAL already
    own_alpha = any(MaskFlags.alpha in flags for flags in ds.mask_flag_enums)
    with WarpedVRT(
        ds,
        crs=_rio_crs(dst.crs_wkt),
        transform=dst.transform,
        width=dst.width,
        height=dst.height,
        resampling=Resampling[resampling],
        tolerance=tolerance,
        src_nodata=src_nodata if src_nodata is not None else ds.nodata,
        nodata=dst_nodata,
        add_alpha=dst_nodata is None and not own_alpha,
        dtype=dtype or ds.dtypes[0],
        **extras,
    ) as vrt:
        if dst_nodata is not None:
            return vrt.read(bands), None
        data = vrt.read([*bands, vrt.count])
        return data[:-1], data[-1] > 0


def clip_keep_mask(clip: shapely.Geometry, dst: Grid) -> np.ndarray | None:
    """Pixels of ``dst`` whose centres fall inside ``clip``; None when all of them do."""
    box = shapely.box(*dst.bounds)
    if clip.contains(box):
        return None
    piece = shapely.clip_by_rect(clip, *dst.bounds)
    if piece.is_empty:
        return np.zeros(dst.shape, dtype=bool)
    return rasterio.features.geometry_mask([piece], dst.shape, dst.transform, invert=True)


def _lattice_rowcol(dst: Grid, origin: tuple[float, float]) -> tuple[int, int]:
    """Global lattice (row, col) of a chunk's top-left pixel."""
    t = dst.transform
    return (round((origin[1] - t.f) / -t.e), round((t.c - origin[0]) / t.a))


class ChunkReadError(RuntimeError):
    """A source could not be read for a chunk; one plain message, so it pickles back to
    the client intact (GDAL's chained errors do not survive distributed's serialisation)."""


# Reads from object stores and web servers fail transiently (throttling, resets, 5xx that
# outlast GDAL's own GDAL_HTTP_MAX_RETRY): a chunk retries its remote reads with backoff on
# a fresh handle, and counts the retries in its summary. Local read errors do not heal.
REMOTE_ATTEMPTS = 4
_BACKOFF_S = (0.2, 1.0, 3.0)


def _is_remote(path: str) -> bool:
    return path.startswith(("/vsicurl", "/vsis3", "/vsigs", "/vsiaz", "/vsioss", "/vsiswift")) or (
        path.startswith(("/vsizip/", "/vsitar/")) and "/vsi" in path[8:]
    )


def _forget(path: str) -> None:
    """Drop this thread's cached handle of ``path`` (a failed handle may stay failed)."""
    cache: dict[str, Any] = getattr(_local, "datasets", None) or {}
    ds = cache.pop(path, None)
    if ds is not None:
        ds.close()


def _warp_with_retries(part: SourcePart, *args: Any) -> tuple[np.ndarray, np.ndarray | None, int]:
    """``warp_part`` with bounded retries for remote sources; returns the retry count too."""
    attempts = REMOTE_ATTEMPTS if _is_remote(part.path) else 1
    for attempt in range(attempts):
        try:
            data, covered = warp_part(part, *args)
            return data, covered, attempt
        except (RasterioError, CPLE_BaseError) as exc:
            if attempt + 1 == attempts:
                raise _read_failure(part, exc, attempts) from None
            _forget(part.path)
            time.sleep(_BACKOFF_S[min(attempt, len(_BACKOFF_S) - 1)])
    raise AssertionError("unreachable")


def _read_failure(part: SourcePart, exc: Exception, attempts: int = 1) -> ChunkReadError:
    causes: list[str] = []
    e: BaseException | None = exc
    while e is not None and len(causes) < 4:
        text = str(e).strip()
        if text and text not in causes and "See previous exception" not in text:
            causes.append(text)
        e = e.__cause__ or e.__context__
    detail = "; ".join(causes) or type(exc).__name__
    if attempts > 1:
        reason = remote_read_reason(detail) or f"the object is unreachable or corrupt ({detail})"
        return ChunkReadError(f"read error in {part.path} after {attempts} attempts: {reason}")
    return ChunkReadError(
        f"read error in {part.path}: the file is truncated or corrupt (GDAL: {detail})"
    )


def warp_chunk(job: ImageJob, i: int, j: int) -> tuple[np.ndarray, np.ndarray, int]:
    """Chunk (i, j) of ``job``'s image: its pixels (bands, h, w), their validity (h, w) and
    the number of read retries. The one computation behind ingesting a chunk and reading a
    byref image (engine.byref): both give the same pixels."""
    dst = chunk_grid(job.grid, i, j, job.tile)
    scales = job.scales or (None,) * len(job.parts)
    origin = _lattice_rowcol(dst, job.origin) if job.fast else None
    blocks = []
    coverage: np.ndarray | None = None
    retries = 0
    for p, sc in zip(job.parts, scales, strict=True):
        data, covered, n = _warp_with_retries(
            p, dst, job.resampling, job.nodata, job.dtype, sc, job.tolerance, origin
        )
        retries += n
        blocks.append(data)
        if covered is not None:
            coverage = covered if coverage is None else coverage & covered
    block = blocks[0] if len(blocks) == 1 else np.concatenate(blocks, axis=0)
    fill = 0 if job.nodata is None else job.nodata
    if job.clip_wkb is not None:
        keep = clip_keep_mask(_clip_geometry(job.clip_wkb), dst)
        if keep is not None:
            kernels.apply_mask(block, keep, fill)
            coverage = keep if coverage is None else coverage & keep
    if job.nodata is None:
        valid = coverage if coverage is not None else np.ones(dst.shape, dtype=bool)
    else:
        valid = kernels.valid_mask(block, job.nodata)
    return block, valid, retries


def ingest_chunk(job: ImageJob, i: int, j: int, *after: Any) -> dict[str, Any]:
    """Warp chunk (i, j) of ``job``'s image, write it to the store (unless the image is
    byref: ``job.write`` False), return its summary. ``after``: the results of tasks that
    must run first (the image's template task).

    A chunk that cannot be made returns its failure (``error``) instead of raising: the
    image's finish task then drops the image once every task of it has run. Raising would
    fail the finish task at once, and the group would be removed while sibling chunk tasks
    were still writing into it.
    """
    try:
        return _ingest_chunk(job, i, j)
    except Exception as exc:
        return {"i": i, "j": j, "valid": 0, "error": failure_reason(exc)}


def failure_reason(exc: BaseException) -> str:
    """A task's failure as the image's catalog message: one line, no traceback."""
    from engine.errors import ImageError

    if isinstance(exc, ImageError):
        return exc.reason
    msg = str(exc).strip() or type(exc).__name__
    return msg if isinstance(exc, ChunkReadError) else f"{type(exc).__name__}: {msg}"


def _ingest_chunk(job: ImageJob, i: int, j: int) -> dict[str, Any]:
    block, valid, retries = warp_chunk(job, i, j)
    n_valid = int(valid.sum())
    summary: dict[str, Any] = {
        "i": i,
        "j": j,
        "valid": n_valid,
        "coarse": kernels.coarse_mask(valid, job.coarse),
        "stats": kernels.band_stats(block, job.nodata, valid if job.nodata is None else None)
        if n_valid
        else None,
        "digest": kernels.chunk_digest(block) if n_valid else None,
        "retries": retries,
    }
    if n_valid and job.write:
        r0, c0 = i * job.tile, j * job.tile
        h, w = block.shape[1:]
        for name, band in zip(job.variables, block, strict=True):
            _zarr_array(job, name)[r0 : r0 + h, c0 : c0 + w] = band
    return summary
