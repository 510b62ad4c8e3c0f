"""Overview levels of an image (2×, 4×, … down to one tile), built in the ingestion job.

Every level equals a GDAL decimation *of level 0* onto the level's grid (``gdal_translate
-r average`` / rasterio ``read(out_shape=...)`` of the level-0 pixels), not a cascade of
rounded 2× steps: GDAL's own ``gdaladdo -r average`` cascades level k from the rounded
level k-1, which drifts by a DN per level and, at nodata edges, weighs a lone valid pixel
like a full block. Two per-band resamplings:

* ``average``: the mean of the valid level-0 pixels under the level pixel (nodata where
  none is valid), rounded half up for integer types;
* ``nearest``: the level-0 pixel under the level pixel's centre, i.e. level-0 row
  ``2**k * r + 2**(k-1)`` (GDAL's nearest for an integer factor).

Strategy: one task per output chunk of each level, each level built from the one below
(a 2× reduction), so a task has at most four children and the graph stays linear in the
output chunks. Exactness across levels comes from what a task hands its parent: not its
rounded pixels but a *carry* already reduced to the parent's resolution —

* ``average``: the sum and the count of valid level-0 pixels under each parent pixel
  (float64 sums are exact for every integer type up to 2**53);
* ``nearest``: the two level-0 samples each parent needs: the one under the parent pixel's
  centre (its value) and the one at the parent pixel's corner (which the grandparent's
  centre sample is).

Level-1 tasks read level 0 from the store (2 × 2 chunks, after those chunks' tasks); a
carry is a quarter of a chunk per band. Pixels beyond the level-0 grid count as invalid
(average) or hold the fill value (nearest), like a level-0 copy padded with nodata.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import zarr
from affine import Affine

from engine.grid import Grid, chunk_grid
from engine.rastertypes.base import SourcePart

AVERAGE, NEAREST = "average", "nearest"
# collection resamplings whose values are labels or picks: their overviews pick, too
_PICKING = {"nearest", "mode"}
# band-name tokens of categorical bands (Landsat QA_PIXEL/QA_RADSAT/BQA/SR_CLOUD_QA,
# Sentinel-2 SCL and QA60)
_CATEGORICAL = ("QA", "BQA", "SCL")

# a carry: per band, two arrays at the parent's resolution (see the module docstring)
Carry = list[tuple[np.ndarray, np.ndarray]]


# -- planning -------------------------------------------------------------------------
def overview_count(shape: tuple[int, int], tile: int) -> int:
    """How many 2× levels until the image fits one ``tile`` × ``tile`` chunk (0 when it
    already does; 0 too for an odd tile, whose chunks do not halve onto pixel pairs)."""
    if tile % 2:
        return 0
    h, w = shape
    n = 0
    while h > tile or w > tile:
        h, w = -(-h // 2), -(-w // 2)
        n += 1
    return n


def level_grid(grid: Grid, level: int) -> Grid:
    """The grid of overview ``level`` (0 is ``grid``): same origin, cells 2**level larger."""
    f = 2**level
    h, w = grid.shape
    return Grid(grid.crs, grid.transform @ Affine.scale(f), (-(-h // f), -(-w // f)))


def is_categorical(band_name: str) -> bool:
    """Whether a band holds labels or bit flags (QA_*, BQA, SCL, QA60, SR_CLOUD_QA ...)."""
    tokens = band_name.upper().replace("-", "_").split("_")
    return any(t.startswith(_CATEGORICAL) for t in tokens)


def band_methods(
    variables: Sequence[str], parts: Sequence[SourcePart], resampling: str
) -> tuple[str, ...]:
    """The overview resampling of each band: ``nearest`` for categorical bands, for parts
    warped with nearest, and for a collection resampled with nearest/mode; else ``average``."""
    part_of: list[str | None] = []
    for p in parts:
        part_of += [p.resampling] * len(p.band_indexes)
    part_of += [None] * (len(variables) - len(part_of))
    out = []
    for name, own in zip(variables, part_of, strict=False):
        picking = (own or resampling).lower() in _PICKING or is_categorical(name)
        out.append(NEAREST if picking else AVERAGE)
    return tuple(out)


@dataclass(frozen=True)
class PyramidJob:
    """What the overview tasks of one image need; one graph node shared by its tasks."""

    image_id: str
    store: str
    grid: Grid  # level 0
    tile: int
    dtype: str
    nodata: float | None
    variables: tuple[str, ...]
    methods: tuple[str, ...]  # per band: "average" | "nearest"
    levels: int

    @property
    def group_path(self) -> str:
        return f"{self.store.rstrip('/')}/images/{self.image_id}"

    def level_path(self, level: int) -> str:
        return self.group_path if level == 0 else f"{self.group_path}/overviews/{level}"

    @property
    def fill(self) -> float:
        return 0 if self.nodata is None else self.nodata


def level_chunks(base_chunks: Sequence[tuple[int, int]], levels: int) -> list[set[tuple[int, int]]]:
    """The chunks of each level that get a task (index 0: the planned level-0 chunks):
    a chunk is built when one of its four children is."""
    out = [set(base_chunks)]
    for _ in range(levels):
        out.append({(i // 2, j // 2) for i, j in out[-1]})
    return out


# -- kernels (numpy) ------------------------------------------------------------------
def _pad_even(a: np.ndarray, value: Any) -> np.ndarray:
    h, w = a.shape
    if h % 2 == 0 and w % 2 == 0:
        return a
    out = np.full((h + h % 2, w + w % 2), value, dtype=a.dtype)
    out[:h, :w] = a
    return out


def block_sum(a: np.ndarray, dtype: str) -> np.ndarray:
    """2 × 2 block sums of ``a`` in ``dtype`` (odd edges padded with zeros): four strided
    adds, several times faster than a reshaped ``sum`` over the block axes."""
    a = _pad_even(a, 0)
    out = a[0::2, 0::2].astype(dtype)
    out += a[1::2, 0::2]
    out += a[0::2, 1::2]
    out += a[1::2, 1::2]
    return out


def base_state(
    band: np.ndarray, method: str, nodata: float | None
) -> tuple[np.ndarray, np.ndarray]:
    """A level-0 band as a level state: (sum, count) for average, (value, corner) for nearest."""
    if method == NEAREST:
        return band, band
    valid = band_valid(band, nodata)
    return np.where(valid, band, 0), valid  # widened by the first reduction


def band_valid(band: np.ndarray, nodata: float | None) -> np.ndarray:
    """Valid pixels of one band: not NaN, not ``nodata`` (every value when None)."""
    if band.dtype.kind == "f":
        valid = ~np.isnan(band)
        if nodata is not None and not math.isnan(nodata):
            valid &= band != nodata
        return valid
    if nodata is None:
        return np.ones(band.shape, dtype=bool)
    return band != nodata


def reduce_state(
    state: tuple[np.ndarray, np.ndarray], method: str, fill: float
) -> tuple[np.ndarray, np.ndarray]:
    """A level state → the next level's state (2× coarser) over the same area."""
    a, b = state
    if method == NEAREST:
        corner = _pad_even(b, fill)
        return corner[1::2, 1::2], corner[::2, ::2]
    return block_sum(a, "float64"), block_sum(b, "int64")


def state_values(
    state: tuple[np.ndarray, np.ndarray], method: str, dtype: str, fill: float
) -> np.ndarray:
    """The pixels of a level state, in ``dtype``: the mean (rounded half up for integer
    types, as GDAL writes it) or the picked sample; ``fill`` where nothing is valid."""
    a, b = state
    if method == NEAREST:
        return a.astype(dtype, copy=False)
    dt = np.dtype(dtype)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = a / b
    if dt.kind in "iu":
        info = np.iinfo(dt)
        mean = np.clip(np.floor(mean + 0.5), info.min, info.max)
    out = np.where(b == 0, fill, mean).astype(dt)
    return out


def empty_state(
    shape: tuple[int, int], method: str, dtype: str, fill: float
) -> tuple[np.ndarray, np.ndarray]:
    """The state of an area no task wrote (every pixel the fill value)."""
    if method == NEAREST:
        v = np.full(shape, fill, dtype=dtype)
        return v, v
    return np.zeros(shape, dtype="float64"), np.zeros(shape, dtype="int64")


def assemble(
    children: dict[tuple[int, int], tuple[np.ndarray, np.ndarray]],
    shape: tuple[int, int],
    half: int,
    method: str,
    dtype: str,
    fill: float,
) -> tuple[np.ndarray, np.ndarray]:
    """One chunk's state from its children's carries (child (di, dj) at (di, dj) * half)."""
    a, b = empty_state(shape, method, dtype, fill)
    if method == NEAREST:
        a, b = a.copy(), b.copy()
    for (di, dj), (ca, cb) in children.items():
        r0, c0 = di * half, dj * half
        h, w = min(ca.shape[0], shape[0] - r0), min(ca.shape[1], shape[1] - c0)
        a[r0 : r0 + h, c0 : c0 + w] = ca[:h, :w]
        b[r0 : r0 + h, c0 : c0 + w] = cb[:h, :w]
    return a, b


# -- tasks ----------------------------------------------------------------------------
def _array(pyr: PyramidJob, level: int, name: str) -> zarr.Array:
    # a local path or an object-store URL: workers share no file system with the client and
    # open the store from the URL the job carries (cached per process by engine.storage)
    from engine import storage

    expect = (level_grid(pyr.grid, level).shape, pyr.dtype, pyr.tile)
    return storage.open_array(f"{pyr.level_path(level)}/{name}", expect)


def _write(pyr: PyramidJob, level: int, i: int, j: int, states: list[Any]) -> None:
    """Write chunk (i, j) of ``level`` unless no band holds a valid pixel (unwritten chunks
    read as the fill value, as for level 0)."""
    blocks = [
        state_values(s, m, pyr.dtype, pyr.fill) for s, m in zip(states, pyr.methods, strict=True)
    ]
    if pyr.nodata is not None and not any(band_valid(b, pyr.nodata).any() for b in blocks):
        return
    r0, c0 = i * pyr.tile, j * pyr.tile
    for name, block in zip(pyr.variables, blocks, strict=True):
        h, w = block.shape
        _array(pyr, level, name)[r0 : r0 + h, c0 : c0 + w] = block


def _finish(pyr: PyramidJob, level: int, i: int, j: int, states: list[Any]) -> Any:
    _write(pyr, level, i, j, states)
    if level == pyr.levels:  # the top: the client receives this, keep it small
        return {"image_id": pyr.image_id, "levels": pyr.levels}
    return [reduce_state(s, m, pyr.fill) for s, m in zip(states, pyr.methods, strict=True)]


def level1_chunk(pyr: PyramidJob, i: int, j: int, *after: Any) -> Any:
    """Chunk (i, j) of level 1 from the level-0 store (``after``: the level-0 chunk tasks
    it waits for); returns the carry for level 2, or a small summary at the top."""
    h0, w0 = pyr.grid.shape
    t = pyr.tile
    r0, r1 = 2 * i * t, min(2 * (i + 1) * t, h0)
    c0, c1 = 2 * j * t, min(2 * (j + 1) * t, w0)
    states = []
    for name, method in zip(pyr.variables, pyr.methods, strict=True):
        band = np.asarray(_array(pyr, 0, name)[r0:r1, c0:c1])
        states.append(reduce_state(base_state(band, method, pyr.nodata), method, pyr.fill))
    return _finish(pyr, 1, i, j, states)


def level_chunk(
    pyr: PyramidJob,
    level: int,
    i: int,
    j: int,
    offsets: Sequence[tuple[int, int]],
    carries: Sequence[Carry],
) -> Any:
    """Chunk (i, j) of ``level`` (≥ 2) from its children's carries; child n sits at
    ``offsets[n]`` = (di, dj) in the 2 × 2 block of chunks below."""
    shape = chunk_grid(level_grid(pyr.grid, level), i, j, pyr.tile).shape
    states = []
    for b, method in enumerate(pyr.methods):
        below = {tuple(o): carry[b] for o, carry in zip(offsets, carries, strict=True)}
        states.append(assemble(below, shape, pyr.tile // 2, method, pyr.dtype, pyr.fill))  # type: ignore[arg-type]
    return _finish(pyr, level, i, j, states)


def pyramid_job(job: Any) -> PyramidJob:
    """The overview plan of an ingestion image job (graphs.chunk.ImageJob)."""
    return PyramidJob(
        image_id=job.image_id,
        store=job.store,
        grid=job.grid,
        tile=job.tile,
        dtype=job.dtype,
        nodata=job.nodata,
        variables=tuple(job.variables),
        methods=band_methods(job.variables, job.parts, job.resampling),
        levels=overview_count(job.grid.shape, job.tile),
    )
