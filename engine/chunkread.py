"""Fast windowed reads of the store's 2-D arrays, for serving.

zarr-python reads every chunk through one asyncio event loop; for the small windows an
exportImage needs, that loop (not decompression) is most of the time. The store's own
layout is simple — a local Zarr v3 array, regular chunks, the ``bytes`` codec then one
Zstandard/none compressor, no sharding — so for it this module reads the chunk files and
decodes them directly, every chunk of every band and image on one shared thread pool
(Zstandard and file reads release the GIL). Any other array (object stores, sharding,
other codecs) is read through zarr itself: the result is identical, only slower.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any

import numcodecs
import numpy as np
import zarr
from zarr.codecs import BytesCodec, ZstdCodec
from zarr.storage import LocalStore


@dataclass(frozen=True)
class _Layout:
    folder: str
    chunk: tuple[int, int]
    dtype: np.dtype
    fill: Any
    zstd: bool
    encode_key: Any


_ZSTD = numcodecs.Zstd()  # decoding keeps no state between calls: shared by threads


def _layout(arr: zarr.Array) -> _Layout | None:
    """The array's layout when the direct path can read it, else None."""
    store = arr.store_path.store
    meta = arr.metadata
    if not isinstance(store, LocalStore) or getattr(meta, "zarr_format", None) != 3:
        return None
    codecs = list(getattr(meta, "codecs", ()))
    if not codecs or not isinstance(codecs[0], BytesCodec) or len(codecs) > 2:
        return None
    if len(codecs) == 2 and not isinstance(codecs[1], ZstdCodec):
        return None
    endian = codecs[0].endian
    dtype = np.dtype(arr.dtype).newbyteorder(
        "<" if endian is None or endian.value == "little" else ">"
    )
    chunk = tuple(int(c) for c in arr.chunks)
    return _Layout(
        os.path.join(str(store.root), arr.store_path.path),
        (chunk[0], chunk[1]),
        dtype,
        arr.fill_value,
        len(codecs) == 2,
        meta.encode_chunk_key,
    )


class WindowReader:
    """Reads windows of 2-D arrays, chunks decoded on ``pool``."""

    def __init__(self, pool: Executor) -> None:
        self.pool = pool
        # by id(arr), the array kept with its layout: a freed array's id could otherwise be
        # reused by another array, which would then be read from the first one's folder
        self._layouts: dict[int, tuple[zarr.Array, _Layout | None]] = {}

    def layout(self, arr: zarr.Array) -> _Layout | None:
        key = id(arr)
        hit = self._layouts.get(key)
        if hit is None or hit[0] is not arr:
            hit = self._layouts[key] = (arr, _layout(arr))
        return hit[1]

    def read(self, arrays: Sequence[zarr.Array], r0: int, r1: int, c0: int, c1: int) -> np.ndarray:
        """``[r0:r1, c0:c1]`` of each array, stacked: (len(arrays), r1 - r0, c1 - c0)."""
        layouts = [self.layout(a) for a in arrays]
        if any(lay is None for lay in layouts):
            return np.stack([np.asarray(a[r0:r1, c0:c1]) for a in arrays])
        first = layouts[0]
        assert first is not None
        out = np.empty((len(arrays), r1 - r0, c1 - c0), dtype=first.dtype.newbyteorder("="))
        ch, cw = first.chunk
        tasks = []
        for k, lay in enumerate(layouts):
            assert lay is not None
            for ci in range(r0 // ch, (r1 - 1) // ch + 1):
                for cj in range(c0 // cw, (c1 - 1) // cw + 1):
                    tasks.append(self.pool.submit(_fill, out[k], lay, ci, cj, r0, r1, c0, c1))
        for t in tasks:
            t.result()
        return out


def _fill(
    out: np.ndarray, lay: _Layout, ci: int, cj: int, r0: int, r1: int, c0: int, c1: int
) -> None:
    """Decode chunk (ci, cj) into its part of ``out`` (the window [r0:r1, c0:c1])."""
    ch, cw = lay.chunk
    ys, xs = ci * ch, cj * cw
    a0, a1 = max(r0, ys), min(r1, ys + ch)
    b0, b1 = max(c0, xs), min(c1, xs + cw)
    target = out[a0 - r0 : a1 - r0, b0 - c0 : b1 - c0]
    path = os.path.join(lay.folder, *lay.encode_key((ci, cj)).split("/"))
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except FileNotFoundError:  # a chunk never written holds the fill value
        target[...] = lay.fill
        return
    data = _ZSTD.decode(raw) if lay.zstd else raw
    chunk = np.frombuffer(data, dtype=lay.dtype).reshape(ch, cw)  # edge chunks are full size
    target[...] = chunk[a0 - ys : a1 - ys, b0 - xs : b1 - xs]
