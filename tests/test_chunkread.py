"""The direct chunk reader returns exactly what zarr-python reads, missing chunks included."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import zarr

from engine.chunkread import WindowReader


@pytest.mark.parametrize("compressors", [None, "zstd"])
def test_windows_equal_zarr(tmp_path, compressors):
    comp = zarr.codecs.ZstdCodec(level=1) if compressors else None
    arr = zarr.create_array(
        tmp_path / "a.zarr",
        shape=(700, 900),
        chunks=(256, 256),
        dtype="uint16",
        fill_value=7,
        compressors=comp,
    )
    rng = np.random.default_rng(0)
    data = rng.integers(0, 60000, (700, 900), dtype="uint16")
    arr[:, :600] = data[:, :600]  # chunks right of column 768 are never written
    reader = WindowReader(ThreadPoolExecutor(4))
    assert reader.layout(arr) is not None  # the direct path, not zarr's
    for r0, r1, c0, c1 in [(0, 700, 0, 900), (100, 101, 250, 780), (255, 513, 511, 899)]:
        got = reader.read([arr, arr], r0, r1, c0, c1)
        want = arr[r0:r1, c0:c1]
        assert got.shape == (2, r1 - r0, c1 - c0)
        np.testing.assert_array_equal(got[0], want)
        np.testing.assert_array_equal(got[1], want)
    assert (reader.read([arr], 0, 10, 800, 900) == 7).all()


def test_other_layouts_fall_back_to_zarr(tmp_path):
    arr = zarr.create_array(
        tmp_path / "s.zarr", shape=(300, 300), chunks=(50, 50), shards=(100, 100), dtype="int16"
    )
    arr[:] = np.arange(90000, dtype="int16").reshape(300, 300)
    reader = WindowReader(ThreadPoolExecutor(2))
    assert reader.layout(arr) is None
    np.testing.assert_array_equal(reader.read([arr], 10, 220, 5, 299)[0], arr[10:220, 5:299])
