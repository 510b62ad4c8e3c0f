"""Images by reference (``"byref": true``): the pixels stay at the source.

Strategy: a byref image is ingested by the same chunk tasks as any other (so its footprint,
statistics and checksum come from its pixels), with the write switched off
(``ImageJob.write``). Its group in the store holds no arrays, only metadata: the image grid
(zarr-conventions ``proj:``/``spatial:`` attributes) and, under ``mosaicflow.source``, the
recipe of its chunk warp — the source parts (paths, band indexes, georeferencing, nodata,
per-part resampling and GDAL options), the resampling method and scale, transformer
tolerance, clip and lattice origin — plus which chunks hold data (``written``, the chunks a
byvalue ingestion would have written). Reading chunk (i, j) re-runs
:func:`graphs.chunk.warp_chunk` with that recipe, so a byref image reads exactly the pixels
a byvalue ingestion of the same inputs stores.

Readers: :func:`lazy_dataset` (``open_collection(store).image(id)``: a Dask-backed Dataset,
one task per chunk), :class:`ByrefImage` (engine.mosaic's stored-image variant behind
exportImage), :func:`image_checksum` (``mosaicflow verify``). A source that was moved or
deleted raises :class:`ByrefSourceError` naming the image, the path and the fix.
"""

from __future__ import annotations

import base64
import math
import os
import threading
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import numpy as np
import xarray as xr
import zarr
from affine import Affine
from pyproj import CRS

from engine import storage, store
from engine.errors import StoreError
from engine.grid import Grid
from engine.mosaic import ImageIndex, StoredImage, warp_image
from engine.rastertypes.base import ImageSource, SourcePart
from graphs import kernels
from graphs.chunk import ImageJob, warp_chunk


class ByrefSourceError(StoreError):
    """A byref image's source cannot be read (moved, deleted or damaged)."""


# -- the recipe as JSON attributes -------------------------------------------------------


def _num(value: float | None) -> float | str | None:
    """A float as JSON allows it (NaN and infinities as strings)."""
    if value is None:
        return None
    return value if math.isfinite(value) else repr(float(value))


def _float(value: Any) -> float | None:
    return None if value is None else float(value)


def _grid_json(grid: Grid) -> dict[str, Any]:
    return {
        "crs": grid.crs_wkt,
        "transform": [float(v) for v in tuple(grid.transform)[:6]],
        "shape": list(grid.shape),
    }


def _grid(d: dict[str, Any]) -> Grid:
    return Grid(CRS.from_wkt(d["crs"]), Affine(*d["transform"]), tuple(d["shape"]))


BYREF_MODEL = (
    "cannot be kept by reference: its georeferencing is a camera model mosaicflow computes "
    "at ingestion and does not store; ingest it byvalue (omit byref)"
)


def storable(src: ImageSource) -> bool:
    """Whether an image can be re-read from its attributes alone (no in-memory model)."""
    return all(p.model is None for p in src.parts)


def job_attrs(job: ImageJob) -> dict[str, Any]:
    """The chunk-warp recipe of a byref image as JSON-able attributes."""
    return {
        "parts": [
            {
                "path": p.path,
                "band_indexes": list(p.band_indexes),
                "band_names": list(p.band_names),
                "grid": _grid_json(p.grid),
                "dtype": p.dtype,
                "nodata": _num(p.nodata),
                "georef": p.georef,
                "resampling": p.resampling,
                "warp_options": [list(kv) for kv in p.warp_options],
            }
            for p in job.parts
        ],
        "grid": _grid_json(job.grid),
        "tile": job.tile,
        "dtype": job.dtype,
        "nodata": _num(job.nodata),
        "resampling": job.resampling,
        "variables": list(job.variables),
        "clip_wkb": job.clip_wkb.hex() if job.clip_wkb is not None else None,
        "coarse": job.coarse,
        "scales": [list(s) if s is not None else None for s in job.scales],
        "tolerance": job.tolerance,
        "origin": list(job.origin),
        "fast": job.fast,
    }


def job_from_attrs(path: str, image_id: str, a: dict[str, Any]) -> ImageJob:
    """The :class:`ImageJob` (write off) that :func:`job_attrs` describes."""
    parts = tuple(
        SourcePart(
            path=p["path"],
            band_indexes=tuple(p["band_indexes"]),
            band_names=tuple(p["band_names"]),
            grid=_grid(p["grid"]),
            dtype=p["dtype"],
            nodata=_float(p["nodata"]),
            georef=p["georef"],
            resampling=p["resampling"],
            warp_options=tuple((str(k), str(v)) for k, v in p["warp_options"]),
        )
        for p in a["parts"]
    )
    return ImageJob(
        image_id=image_id,
        parts=parts,
        grid=_grid(a["grid"]),
        tile=int(a["tile"]),
        dtype=a["dtype"],
        nodata=_float(a["nodata"]),
        resampling=a["resampling"],
        variables=tuple(a["variables"]),
        store=path,
        clip_wkb=bytes.fromhex(a["clip_wkb"]) if a["clip_wkb"] else None,
        coarse=int(a["coarse"]),
        scales=tuple(tuple(s) if s is not None else None for s in a["scales"]),  # type: ignore[misc]
        tolerance=float(a["tolerance"]),
        origin=(float(a["origin"][0]), float(a["origin"][1])),
        fast=bool(a["fast"]),
        write=False,
    )


def chunk_bitmap(chunks: Iterable[tuple[int, int]], grid: Grid, tile: int) -> str:
    """The chunks holding data as a base64 bitmap, row-major over the image's chunk grid."""
    ny, nx = -(-grid.height // tile), -(-grid.width // tile)
    bits = np.zeros(ny * nx, dtype=bool)
    for i, j in chunks:
        bits[i * nx + j] = True
    return base64.b64encode(np.packbits(bits).tobytes()).decode()


def written_chunks(bitmap: str, grid: Grid, tile: int) -> frozenset[tuple[int, int]]:
    """The (i, j) chunks a :func:`chunk_bitmap` marks as holding data."""
    ny, nx = -(-grid.height // tile), -(-grid.width // tile)
    bits = np.unpackbits(np.frombuffer(base64.b64decode(bitmap), dtype=np.uint8))[: ny * nx]
    return frozenset((int(k) // nx, int(k) % nx) for k in np.nonzero(bits)[0])


def create_group(
    path: str, image_id: str, job: ImageJob, attrs: dict[str, Any], band_attrs: list[dict]
) -> None:
    """The byref image's group: grid attributes and the warp recipe, no arrays.

    Written with status ``writing``; :func:`engine.store.commit_image` commits it later.
    """
    group = zarr.open_group(
        storage.zarr_store(store.image_group_path(path, image_id)), mode="w", zarr_format=3
    )
    group.attrs.update(
        {
            **store.grid_attrs(job.grid),
            "mosaicflow": {
                "status": "writing",
                "byref": True,
                **attrs,
                "source": job_attrs(job),
                "band_attrs": band_attrs,
            },
        }
    )


# -- reading -----------------------------------------------------------------------------


def _fill(job: ImageJob) -> float:
    return 0 if job.nodata is None else job.nodata


def read_chunk(job: ImageJob, i: int, j: int, holds_data: bool = True) -> np.ndarray:
    """Chunk (i, j) of a byref image, (bands, h, w): the pixels a byvalue store holds there
    (the fill value where the ingestion found no data)."""
    h = min(job.tile, job.grid.height - i * job.tile)
    w = min(job.tile, job.grid.width - j * job.tile)
    if not holds_data:
        return np.full((len(job.variables), h, w), _fill(job), dtype=job.dtype)
    for p in job.parts:
        if "://" not in p.path and not p.path.startswith("/vsi") and not os.path.exists(p.path):
            raise ByrefSourceError(
                f"image {job.image_id} is stored by reference and its source {p.path} is "
                "missing (moved or deleted): put the file back at that path, or remove the "
                f"image (mosaicflow remove STORE {job.image_id}) and add it from its new place"
            )
    try:
        block, valid, _ = warp_chunk(job, i, j)
    except Exception as exc:
        raise ByrefSourceError(
            f"image {job.image_id} is stored by reference and its source cannot be read "
            f"({exc}): restore the source, or remove the image and add it again"
        ) from None
    if not valid.any():
        block[...] = _fill(job)
    return block


def open_job(path: str, image_id: str) -> tuple[ImageJob, frozenset[tuple[int, int]], dict]:
    """The recipe, the chunks holding data and the ``mosaicflow`` attrs of a byref image."""
    meta = store.image_meta(path, image_id)
    if not meta or not meta.get("byref"):
        raise StoreError(f"image {image_id!r} of {path} is not a byref image")
    job = job_from_attrs(store.store_path(path), image_id, meta["source"])
    return job, written_chunks(meta.get("written", ""), job.grid, job.tile), meta


def lazy_dataset(path: str, image_id: str) -> xr.Dataset:
    """A byref image as a lazy Dataset like a byvalue one (one Dask task per chunk, decoded
    the same way: nodata masked, scale/offset applied, CF ``spatial_ref``)."""
    import dask.array as da
    from dask.base import tokenize

    job, written, meta = open_job(path, image_id)
    tile, (height, width) = job.tile, job.grid.shape
    ys = tuple(min(tile, height - r) for r in range(0, height, tile))
    xs = tuple(min(tile, width - c) for c in range(0, width, tile))
    name = f"byref-{image_id}-{tokenize(job, sorted(written))}"
    dsk = {
        (name, 0, i, j): (read_chunk, job, i, j, (i, j) in written)
        for i in range(len(ys))
        for j in range(len(xs))
    }
    arr = da.Array(dsk, name, chunks=((len(job.variables),), ys, xs), dtype=job.dtype)
    band_attrs = meta.get("band_attrs") or [{}] * len(job.variables)
    data_vars = {}
    for k, band in enumerate(job.variables):
        attrs = {"grid_mapping": "spatial_ref", **band_attrs[k]}
        if job.nodata is not None:
            attrs["_FillValue"] = np.array(job.nodata, dtype=job.dtype).item()
        data_vars[band] = xr.Variable(("y", "x"), arr[k], attrs)
    x, y = job.grid.coords()
    coords = {
        "x": xr.Variable("x", x, {"standard_name": "projection_x_coordinate", "axis": "X"}),
        "y": xr.Variable("y", y, {"standard_name": "projection_y_coordinate", "axis": "Y"}),
        "spatial_ref": xr.Variable((), np.int32(0), store._cf_grid_mapping(job.grid)),
    }
    ds = xr.Dataset(data_vars, coords=coords, attrs=store.grid_attrs(job.grid))
    ds.attrs["mosaicflow"] = {k: v for k, v in meta.items() if k not in ("source", "band_attrs")}
    return xr.decode_cf(ds, decode_coords="all")


def image_checksum(path: str, image_id: str) -> str:
    """A byref image's checksum recomputed from its sources (``mosaicflow verify``)."""
    job, written, _ = open_job(path, image_id)
    digests = [(i, j, kernels.chunk_digest(read_chunk(job, i, j))) for i, j in sorted(written)]
    return kernels.combine_digests(digests, job.grid.shape, job.dtype)


# -- images of another collection as a source (georef "collection") -------------------


@lru_cache(maxsize=16)
def _index(path: str) -> ImageIndex:
    return ImageIndex(path, CRS.from_wkt(store.read_info(path).crs_wkt))


def warp_stored_part(
    part: SourcePart, dst: Grid, resampling: str, dst_nodata: float | None, dtype: str
) -> tuple[np.ndarray, np.ndarray | None]:
    """A stored image of another collection (``part.path`` = its group) warped onto
    ``dst``, as graphs.chunk.warp_part returns it: (bands, h, w) of ``dtype`` and the
    coverage when ``dst_nodata`` is None.

    engine.mosaic reads it (its stored chunks, or its own source when it is byref): on
    the same lattice with nearest the stored pixels themselves, else GDAL's warp of the
    window ``dst`` needs (integers rounded half up, as GDAL does).
    """
    path, image_id = part.path.rsplit("/images/", 1)
    index = _index(path)
    piece = warp_image(index.get(image_id), list(part.band_names), dst, resampling, index.reader)
    fill = 0 if dst_nodata is None else dst_nodata
    out = np.full((len(part.band_names), dst.height, dst.width), fill, dtype=dtype)
    covered = np.zeros(dst.shape, dtype=bool)
    if piece is not None:
        vals = piece.vals
        if np.dtype(dtype).kind in "iu" and vals.dtype.kind == "f":
            info = np.iinfo(dtype)
            vals = np.clip(np.floor(np.nan_to_num(vals) + 0.5), info.min, info.max)
        view = out[:, piece.rows, piece.cols]
        np.copyto(view, vals, where=piece.valid[None], casting="unsafe")
        covered[piece.rows, piece.cols] = piece.valid
    return out, (covered if dst_nodata is None else None)


_CACHE_CHUNKS = 32  # warped chunks kept per process for window reads (exportImage)


@dataclass(frozen=True)
class ByrefImage(StoredImage):
    """engine.mosaic's view of a byref image: windows are warped from the source on read."""

    job: ImageJob | None = None
    written: frozenset[tuple[int, int]] = frozenset()
    _cache: OrderedDict = field(default_factory=OrderedDict, compare=False, repr=False)
    _lock: Any = field(default_factory=threading.Lock, compare=False, repr=False)

    @classmethod
    def open(cls, path: str, image_id: str, crs: CRS) -> ByrefImage:
        job, written, _ = open_job(path, image_id)
        grid = Grid(crs, job.grid.transform, job.grid.shape)
        return cls(image_id, grid, {}, job.nodata, job=job, written=written)

    def _chunk(self, i: int, j: int) -> np.ndarray:
        with self._lock:
            hit = self._cache.get((i, j))
            if hit is not None:
                self._cache.move_to_end((i, j))
                return hit
        assert self.job is not None
        block = read_chunk(self.job, i, j, (i, j) in self.written)
        with self._lock:
            self._cache[(i, j)] = block
            while len(self._cache) > _CACHE_CHUNKS:
                self._cache.popitem(last=False)
        return block

    def read(
        self, bands: Sequence[str], r0: int, r1: int, c0: int, c1: int, reader: Any = None
    ) -> np.ndarray:
        """Rows r0:r1, columns c0:c1 of ``bands``, assembled from warped chunks."""
        assert self.job is not None
        names = list(self.job.variables)
        missing = [b for b in bands if b not in names]
        if missing:
            raise KeyError(f"image {self.image_id} has no band {missing[0]!r}")
        idx = [names.index(b) for b in bands]
        t = self.job.tile
        out = np.empty((len(bands), r1 - r0, c1 - c0), dtype=self.job.dtype)
        for i in range(r0 // t, (r1 - 1) // t + 1):
            for j in range(c0 // t, (c1 - 1) // t + 1):
                block = self._chunk(i, j)
                ra, rb = max(r0, i * t), min(r1, i * t + block.shape[1])
                ca, cb = max(c0, j * t), min(c1, j * t + block.shape[2])
                out[:, ra - r0 : rb - r0, ca - c0 : cb - c0] = block[
                    idx, ra - i * t : rb - i * t, ca - j * t : cb - j * t
                ]
        return out
