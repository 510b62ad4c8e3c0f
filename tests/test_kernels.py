"""The numpy block kernels against plain numpy."""

from __future__ import annotations

import numpy as np
import pytest

from graphs import kernels


@pytest.mark.parametrize("dtype", ["uint8", "int8", "uint16", "int16", "int32", "float32"])
@pytest.mark.parametrize("nodata", [None, 0, -1])
def test_band_stats_equal_numpy(dtype, nodata):
    rng = np.random.default_rng(1)
    info = np.iinfo(dtype) if np.dtype(dtype).kind != "f" else np.finfo(dtype)
    lo, hi = max(float(info.min), -30000), min(float(info.max), 30000)
    block = rng.uniform(lo, hi, (2, 37, 53)).astype(dtype)
    if nodata is not None and lo <= nodata <= hi:
        block[:, :5, :7] = nodata
    got = kernels.band_stats(block, nodata)
    for band, (count, mn, mx, s, ss) in zip(block, got, strict=True):
        v = band.astype("float64").ravel()
        if nodata is not None:
            v = v[v != nodata]
        assert count == v.size
        assert (mn, mx) == (v.min(), v.max())
        assert s == pytest.approx(v.sum(), rel=1e-12)
        assert ss == pytest.approx((v * v).sum(), rel=1e-12)


def test_nan_nodata_and_empty():
    block = np.full((1, 4, 4), np.nan, dtype="float32")
    assert kernels.band_stats(block, float("nan"))[0][0] == 0
    block[0, 1, 1] = 3.0
    assert kernels.band_stats(block, float("nan"))[0][:3] == (1, 3.0, 3.0)
    assert kernels.band_stats(np.zeros((1, 3, 3), "uint8"), 0)[0][0] == 0


def test_coarse_mask_and_digest():
    valid = np.zeros((40, 33), bool)
    valid[39, 32] = True
    m = kernels.coarse_mask(valid, 16)
    assert m.shape == (3, 3) and m[2, 2] and m.sum() == 1
    a = np.arange(12, dtype="uint16").reshape(1, 3, 4)
    assert kernels.chunk_digest(a) == kernels.chunk_digest(a.copy())
    assert kernels.chunk_digest(a) != kernels.chunk_digest(a.astype("int16"))
    assert kernels.combine_digests(
        [(0, 1, "x"), (0, 0, "y")], (3, 4), "uint16"
    ) == kernels.combine_digests([(0, 0, "y"), (0, 1, "x")], (3, 4), "uint16")
