"""graphs.fastwarp tiled over a whole image equals GDAL's exact whole-image warp.

The reference is the one of tests/test_warp_equivalence.py: a GDAL WarpedVRT over the
image's whole lattice grid, transformer error threshold 1e-9 px and the image's fixed
XSCALE/YSCALE (engine.plan.resampling_scale). ``warp_chunk_fast`` runs chunk by chunk.
Required: nearest identical; bilinear and cubic within 1 DN on >= 99.9 % of the pixels
and the same nodata mask. (On every case below the kernel is in fact bit-identical; the
tests assert the required bounds plus the exact nodata mask.)
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import rasterio
import rasterio.warp
from affine import Affine

from engine.grid import Grid, Lattice
from engine.plan import resampling_scale
from graphs.chunk import gdal_warp
from graphs.fastwarp import source_coordinates, supports, warp_chunk_fast
from tests.conftest import write_raster

UTM = Affine(30, 0, 500_000, 0, -30, 4_650_000)

# (name, source CRS, source transform, destination CRS, cell size or None for GDAL's default)
CRS_CASES = [
    ("utm-3857-up", "EPSG:32633", UTM, "EPSG:3857", 20.0),  # XSCALE ~ 2: upsampling
    ("utm-3857-down", "EPSG:32633", UTM, "EPSG:3857", 70.0),  # XSCALE ~ 0.58: wide kernel
    ("utm-3857-w8", "EPSG:32633", UTM, "EPSG:3857", 60.0),  # XSCALE ~ 0.84 (like W8)
    ("utm-south-4326", "EPSG:32733", Affine(30, 0, 300_000, 0, -30, 7_000_000), "EPSG:4326", None),
    ("4326-utm", "EPSG:4326", Affine(0.001, 0, 10.0, 0, -0.001, 45.0), "EPSG:32632", 60.0),
    (
        "polar-3413-3995",
        "EPSG:3413",
        Affine(100, 0, -200_000, 0, -100, -1_000_000),
        "EPSG:3995",
        None,
    ),
    (
        "polar-same-crs",
        "EPSG:3413",
        Affine(100, 0, -200_000, 0, -100, -1_000_000),
        "EPSG:3413",
        60.0,
    ),
]
DTYPES = [("uint8", 0), ("int16", -9999), ("uint16", 0), ("float32", math.nan)]
SHAPE = (150, 170)


def _default_cell(ds: rasterio.DatasetReader, crs: str) -> float:
    t, _, _ = rasterio.warp.calculate_default_transform(
        ds.crs, crs, ds.width, ds.height, *ds.bounds
    )
    return float(min(abs(t.a), abs(t.e)))


def _setup(path, dst_crs: str, cell: float | None, tile: int = 64):
    """(dataset, native grid, lattice grid of the image, its global (row, col), scale)."""
    ds = rasterio.open(path)
    native = Grid(ds.crs, ds.transform, ds.shape)
    cell = cell or _default_cell(ds, dst_crs)
    lattice = Lattice(dst_crs, cell, tile)
    grid = lattice.grid_for(native.footprint_in(dst_crs, 21).bounds)
    origin = (round(-grid.transform.f / cell), round(grid.transform.c / cell))
    return ds, native, grid, origin, resampling_scale(native, grid)


def gdal_reference(ds, grid: Grid, method: str, nodata: float, dtype: str, scale) -> np.ndarray:
    """GDAL's exact whole-image warp (the engine's own GDAL call on the whole grid)."""
    return gdal_warp(ds, grid, method, dst_nodata=nodata, dtype=dtype, scale=scale)[0]


def tiled_fast(ds, native, grid, origin, method, nodata, dtype, scale, tile=64) -> np.ndarray:
    """warp_chunk_fast over ``grid`` in ``tile``-pixel chunks, assembled."""
    out = np.empty((ds.count, *grid.shape), dtype=dtype)
    for r in range(0, grid.height, tile):
        for c in range(0, grid.width, tile):
            h, w = min(tile, grid.height - r), min(tile, grid.width - c)
            chunk = grid.window(r, c, h, w)
            block = warp_chunk_fast(
                ds,
                range(1, ds.count + 1),
                native,
                chunk,
                (origin[0] + r, origin[1] + c),
                method,
                nodata,
                nodata,
                dtype,
                scale,
            )
            assert block is not None
            out[:, r : r + h, c : c + w] = block
    return out


def nodata_mask(a: np.ndarray, nodata: float) -> np.ndarray:
    return np.isnan(a) if math.isnan(nodata) else a == np.array(nodata, a.dtype)


def assert_matches_gdal(got: np.ndarray, ref: np.ndarray, method: str, nodata: float) -> None:
    gm, rm = nodata_mask(got, nodata), nodata_mask(ref, nodata)
    assert (~rm).sum() > 1000, "the case must hold data"
    np.testing.assert_array_equal(gm, rm)  # the same nodata pattern
    if method == "nearest":
        np.testing.assert_array_equal(got[~gm], ref[~rm])
        return
    diff = np.abs(got[~gm].astype("float64") - ref[~rm].astype("float64"))
    assert (diff <= 1).mean() >= 0.999, f"max diff {diff.max()}, {(diff > 1).sum()} pixels > 1 DN"


@pytest.mark.parametrize("method", ["nearest", "bilinear", "cubic"])
@pytest.mark.parametrize("case", CRS_CASES, ids=[c[0] for c in CRS_CASES])
def test_crs_pairs_match_gdal_exact_warp(tmp_path, case, method):
    _, crs, transform, dst_crs, cell = case
    path = write_raster(
        tmp_path / "s.tif",
        crs=crs,
        transform=transform,
        shape=SHAPE,
        dtype="uint16",
        nodata=0,
        bands=2,
        seed=4,
    )
    ds, native, grid, origin, scale = _setup(path, dst_crs, cell)
    with ds:
        ref = gdal_reference(ds, grid, method, 0, "uint16", scale)
        got = tiled_fast(ds, native, grid, origin, method, 0, "uint16", scale)
    assert_matches_gdal(got, ref, method, 0)


@pytest.mark.parametrize("method", ["nearest", "bilinear", "cubic"])
@pytest.mark.parametrize("cell", [20.0, 70.0])
@pytest.mark.parametrize(("dtype", "nodata"), DTYPES, ids=[d[0] for d in DTYPES])
def test_dtypes_and_nodata_match_gdal(tmp_path, dtype, nodata, cell, method):
    path = write_raster(
        tmp_path / "s.tif",
        crs="EPSG:32633",
        transform=UTM,
        shape=SHAPE,
        dtype=dtype,
        nodata=nodata,
        bands=2,
        seed=9,
    )
    with rasterio.open(path, "r+") as ds:  # interior nodata holes in one band only
        band = ds.read(1)
        band[60:64, 80:90] = nodata
        band[100, 100:103] = nodata
        ds.write(band, 1)
    ds, native, grid, origin, scale = _setup(path, "EPSG:3857", cell)
    with ds:
        ref = gdal_reference(ds, grid, method, nodata, dtype, scale)
        got = tiled_fast(ds, native, grid, origin, method, nodata, dtype, scale)
    assert got.dtype == np.dtype(dtype)
    assert_matches_gdal(got, ref, method, nodata)


@pytest.mark.parametrize("method", ["nearest", "bilinear", "cubic"])
def test_chunk_independent(tmp_path, method):
    """Two different tilings of one image grid give identical arrays (no seams)."""
    path = write_raster(
        tmp_path / "s.tif",
        crs="EPSG:32633",
        transform=UTM,
        shape=SHAPE,
        dtype="uint16",
        nodata=0,
        bands=1,
        seed=2,
    )
    ds, native, grid, origin, scale = _setup(path, "EPSG:3857", 60.0)
    with ds:
        a = tiled_fast(ds, native, grid, origin, method, 0, "uint16", scale, tile=64)
        b = tiled_fast(ds, native, grid, origin, method, 0, "uint16", scale, tile=37)
        c = tiled_fast(ds, native, grid, origin, method, 0, "uint16", scale, tile=500)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(a, c)


def test_coordinates_are_chunk_independent_and_accurate(tmp_path):
    """Interpolated source coordinates: the same in any chunk, within 1e-8 px of exact."""
    path = write_raster(tmp_path / "s.tif", crs="EPSG:32633", transform=UTM, shape=SHAPE, nodata=0)
    ds, native, grid, origin, _ = _setup(path, "EPSG:3857", 20.0)
    ds.close()
    whole = source_coordinates(native, grid, origin)
    exact = source_coordinates(native, grid, origin, step=1)
    part = source_coordinates(native, grid.window(37, 53, 40, 60), (origin[0] + 37, origin[1] + 53))
    np.testing.assert_array_equal(part[0], whole[0][37:77, 53:113])
    np.testing.assert_array_equal(part[1], whole[1][37:77, 53:113])
    assert np.nanmax(np.abs(whole[0] - exact[0])) < 1e-8
    assert np.nanmax(np.abs(whole[1] - exact[1])) < 1e-8


def test_supports_and_fallback(tmp_path):
    assert supports("bilinear", "uint16") and supports("nearest", np.float32)
    assert not supports("lanczos", "uint16") and not supports("cubic", "float64")
    path = write_raster(tmp_path / "s.tif", crs="EPSG:32633", transform=UTM, shape=SHAPE, nodata=0)
    ds, native, grid, origin, scale = _setup(path, "EPSG:3857", 60.0)
    with ds:
        args = (ds, [1], native, grid, origin)
        assert warp_chunk_fast(*args, "average", 0, 0, "uint8", scale) is None
        assert warp_chunk_fast(*args, "bilinear", None, 0, "uint8", scale) is None
