"""Pure numpy block kernels of the chunk task: validity, clip masking, statistics, digests.

No Dask and no I/O here: each function takes arrays and returns arrays or small values,
so they are tested directly and reused by ``verify`` and the server.
"""

from __future__ import annotations

import hashlib

import numpy as np


def valid_mask(block: np.ndarray, nodata: float | None) -> np.ndarray:
    """(h, w) boolean: pixels where at least one band holds data.

    ``block`` is (bands, h, w). NaN is never valid; ``nodata`` None means every finite
    pixel is valid.
    """
    if block.dtype.kind == "f":
        valid = ~np.isnan(block)
        if nodata is not None and not np.isnan(nodata):
            valid &= block != nodata
    elif nodata is None:
        return np.ones(block.shape[1:], dtype=bool)
    else:
        valid = block != nodata
    return valid.any(axis=0)


def apply_mask(block: np.ndarray, keep: np.ndarray, fill: float) -> None:
    """Set every band of ``block`` to ``fill`` where ``keep`` is False (in place)."""
    if not keep.all():
        block[:, ~keep] = fill


def band_stats(
    block: np.ndarray, nodata: float | None, mask: np.ndarray | None = None
) -> list[tuple[int, float, float, float, float]]:
    """Per band (count, min, max, sum, sum of squares) over the band's own valid pixels.

    8- and 16-bit integer bands go through a histogram (``np.bincount``): exact, no
    masked copies, and the nodata bin is simply dropped; other types mask explicitly.
    ``mask`` (h, w), when given, selects the valid pixels instead of ``nodata``.
    """
    if mask is not None:
        return [_masked_stats(band, None, mask) for band in block]
    return [
        _small_int_stats(band, nodata) if _is_small_int(band.dtype) else _masked_stats(band, nodata)
        for band in block
    ]


_EMPTY = (0, np.inf, -np.inf, 0.0, 0.0)


def _is_small_int(dtype: np.dtype) -> bool:
    return dtype.kind in "ui" and dtype.itemsize <= 2


def _small_int_stats(
    band: np.ndarray, nodata: float | None
) -> tuple[int, float, float, float, float]:
    info = np.iinfo(band.dtype)
    offset = -int(info.min)
    flat = band.ravel()
    counts = np.bincount(
        flat.astype(np.int32) + offset if offset else flat, minlength=int(info.max) + offset + 1
    )
    if (
        nodata is not None
        and np.isfinite(nodata)
        and info.min <= nodata <= info.max
        and float(nodata).is_integer()
    ):
        counts[int(nodata) + offset] = 0
    present = np.flatnonzero(counts)
    if present.size == 0:
        return _EMPTY
    values = present.astype("float64") - offset
    c = counts[present].astype("float64")
    cv = c * values
    return (int(c.sum()), float(values[0]), float(values[-1]), float(cv.sum()), float(cv @ values))


def _masked_stats(
    band: np.ndarray, nodata: float | None, mask: np.ndarray | None = None
) -> tuple[int, float, float, float, float]:
    ok: np.ndarray | None
    if mask is not None:
        ok = mask & ~np.isnan(band) if band.dtype.kind == "f" else mask
    elif band.dtype.kind == "f":
        ok = ~np.isnan(band)
        if nodata is not None and not np.isnan(nodata):
            ok &= band != nodata
    elif nodata is None:
        ok = None
    else:
        ok = band != nodata
    v = band.ravel() if ok is None or ok.all() else band[ok]
    if v.size == 0:
        return _EMPTY
    v64 = v.astype("float64", copy=False).ravel()
    return (int(v64.size), float(v64.min()), float(v64.max()), float(v64.sum()), float(v64 @ v64))


def coarse_mask(valid: np.ndarray, factor: int) -> np.ndarray:
    """Block-``any`` of a validity mask: one cell per ``factor`` × ``factor`` pixels.

    Edge blocks that are not a whole multiple still get a cell (ceil division).
    """
    h, w = valid.shape
    ch, cw = -(-h // factor), -(-w // factor)
    padded = np.zeros((ch * factor, cw * factor), dtype=bool)
    padded[:h, :w] = valid
    return np.asarray(padded.reshape(ch, factor, cw, factor).any(axis=(1, 3)))


def chunk_digest(block: np.ndarray) -> str:
    """Digest of a chunk's pixels (all bands, C order, with dtype and shape)."""
    # SHA-256 runs on the CPU's SHA extensions: ~3x faster than blake2b on chunk-sized input
    h = hashlib.sha256()
    h.update(f"{block.dtype.str}{block.shape}".encode())
    h.update(np.ascontiguousarray(block).tobytes())
    return h.hexdigest()


def combine_digests(entries: list[tuple[int, int, str]], shape: tuple[int, int], dtype: str) -> str:
    """The image checksum: chunk digests of every chunk holding data, in (row, col) order.

    Chunks without any valid pixel are left out, so the checksum depends only on the
    pixels, not on which chunks were planned.
    """
    h = hashlib.blake2b(digest_size=20)
    h.update(f"{dtype}|{shape}".encode())
    for i, j, d in sorted(entries):
        h.update(f"|{i},{j}:{d}".encode())
    return h.hexdigest()
