"""Chunked ingestion equals a whole-image GDAL warp onto the same grid.

The reference is GDAL's warper run once over the image's whole target grid with the exact
transformer (``gdalwarp -et 0``) and the image's resampling scale. mosaicflow warps chunk by
chunk: nearest must be identical pixel for pixel; bilinear and cubic (warped with a 1e-4 px
transformer error threshold for speed) within 1 DN on >= 99.9 % of pixels, and identical
when the same threshold is used for the reference (no seams: the chunking changes nothing).
Against rasterio.warp.reproject's default *approximate* transformer (0.125 px) exact
equality is impossible for anyone who splits the destination, GDAL included, so that
comparison is within tolerance.
"""

from __future__ import annotations

import numpy as np
import pytest
import rasterio
import rasterio.warp
from affine import Affine
from rasterio.enums import Resampling

from engine import create_image_collection
from engine.grid import Grid
from engine.plan import resampling_scale
from engine.store import store_path
from graphs.chunk import gdal_warp

PROJ_ONLY = "+proj=lcc +lat_1=20 +lat_2=60 +lat_0=40 +lon_0=-96 +x_0=0 +y_0=0 +ellps=GRS80 +units=m +no_defs"


def _raw(store: str, image_id: str, name: str) -> np.ndarray:
    import zarr

    return zarr.open_array(f"{store_path(store)}/images/{image_id}/{name}", mode="r")[:]


def whole_image_reference(
    src_path,
    grid,
    resampling: str,
    nodata: float,
    dtype: str,
    exact: bool = True,
    tolerance: float = 1e-9,
) -> np.ndarray:
    """GDAL's warp of the whole image onto ``grid`` in one call.

    ``exact``: GDAL's exact transformer and the image's resampling scale fixed
    (XSCALE/YSCALE), the two settings that make a warp independent of how GDAL splits it.
    """
    with rasterio.open(src_path) as src:
        if exact:
            scale = resampling_scale(Grid(src.crs, src.transform, src.shape), grid)
            ref, _ = gdal_warp(
                src,
                grid,
                resampling,
                dst_nodata=nodata,
                dtype=dtype,
                scale=scale,
                tolerance=tolerance,
            )
            return ref
        out = np.empty((src.count, *grid.shape), dtype=dtype)
        rasterio.warp.reproject(
            rasterio.band(src, list(range(1, src.count + 1))),
            out,
            dst_transform=grid.transform,
            dst_crs=grid.crs.to_wkt(),
            dst_nodata=nodata,
            resampling=Resampling[resampling],
        )
        return out


def ingest_one(client, path, tmp_path, **context):
    ctx = {k: v for k, v in context.items() if k != "tile"}
    result = create_image_collection(
        [str(path)],
        image_collection=str(tmp_path / "c.zarr"),
        context=ctx,
        client=client,
        overwrite=True,
        tile_size=context.get("tile", 64),
    )
    assert result.exit_code == 0, result.to_dict()
    rec = result.complete[0]
    got = np.stack([_raw(result.store, rec.image_id, b) for b in rec.band_names])
    return rec, got


def assert_close(got: np.ndarray, ref: np.ndarray, resampling: str) -> None:
    """Nearest: identical. Interpolating kernels: within 1 DN on >= 99.9 % of pixels, same nodata."""
    if resampling == "nearest":
        assert_same(got, ref)
        return
    gv, rv = got.astype("float64"), ref.astype("float64")
    np.testing.assert_array_equal(np.isnan(gv), np.isnan(rv))
    ok = ~np.isnan(rv)
    assert (np.abs(gv[ok] - rv[ok]) <= 1).mean() >= 0.999


def assert_same(got: np.ndarray, ref: np.ndarray) -> None:
    if got.dtype.kind == "f":
        np.testing.assert_array_equal(np.isnan(got), np.isnan(ref))
        np.testing.assert_array_equal(np.nan_to_num(got, nan=-1), np.nan_to_num(ref, nan=-1))
    else:
        diff = got != ref
        assert not diff.any(), f"{diff.sum()} of {diff.size} pixels differ"


SRC_CRS_CASES = [
    # (source CRS, transform, output SR)
    ("EPSG:32633", Affine(30, 0, 500_000, 0, -30, 4_650_000), 3857),  # UTM north → Web Mercator
    ("EPSG:32733", Affine(30, 0, 300_000, 0, -30, 7_000_000), 4326),  # UTM south → geographic
    ("EPSG:3413", Affine(100, 0, -200_000, 0, -100, -1_000_000), 3413),  # polar stereo, same CRS
    ("EPSG:4326", Affine(0.001, 0, 10.0, 0, -0.001, 45.0), 32632),  # geographic → UTM
    ("EPSG:3857", Affine(50, 0, 1_000_000, 0, -50, 6_000_000), 3035),  # Web Mercator → LAEA Europe
    (PROJ_ONLY, Affine(40, 0, 100_000, 0, -40, 200_000), 4326),  # a PROJ-string-only CRS
]


@pytest.mark.parametrize("resampling", ["nearest", "bilinear", "cubic"])
@pytest.mark.parametrize("case", range(len(SRC_CRS_CASES)))
def test_chunked_equals_whole_image_warp(client, raster_factory, tmp_path, case, resampling):
    crs, transform, out_sr = SRC_CRS_CASES[case]
    src = raster_factory(
        crs=crs, transform=transform, shape=(150, 170), dtype="uint16", nodata=0, bands=2, seed=case
    )
    rec, got = ingest_one(
        client, src, tmp_path, outSR=out_sr, resamplingMethod=resampling.upper(), tile=64
    )
    ref = whole_image_reference(src, rec.grid, resampling, rec.nodata, rec.dtype)
    assert rec.grid.shape[0] > 64 and rec.grid.shape[1] > 64, "the image must span several chunks"
    assert_close(got, ref, resampling)


@pytest.mark.parametrize("resampling", ["bilinear", "cubic", "lanczos", "average"])
def test_chunking_adds_no_seams(client, raster_factory, tmp_path, resampling):
    """With GDAL's exact transformer every kernel is identical to the whole-image warp,
    so the chunk grid itself contributes nothing: no seams, for any tile size."""
    src = raster_factory(
        crs="EPSG:32633",
        transform=Affine(30, 0, 500_000, 0, -30, 4_650_000),
        shape=(160, 150),
        dtype="uint16",
        nodata=0,
        bands=1,
        seed=5,
    )
    ctx = {"outSR": 3857, "cellSize": 70, "resamplingMethod": resampling.upper()}  # downsampling
    result = create_image_collection(
        [str(src)],
        image_collection=str(tmp_path / "s.zarr"),
        context=ctx,
        client=client,
        tile_size=32,
        warp_tolerance=1e-9,
    )
    rec = result.complete[0]
    got = _raw(result.store, rec.image_id, "b1")[None]
    assert_same(got, whole_image_reference(src, rec.grid, resampling, rec.nodata, rec.dtype))


@pytest.mark.parametrize(
    ("dtype", "nodata"),
    [
        ("uint8", 0),
        ("int16", -9999),
        ("uint16", 65535),
        ("float32", float("nan")),
        ("float32", -3.4e38),
    ],
)
@pytest.mark.parametrize("tile", [16, 48, 128])
def test_dtypes_and_chunk_sizes(client, raster_factory, tmp_path, dtype, nodata, tile):
    src = raster_factory(
        crs="EPSG:32633",
        transform=Affine(20, 0, 400_000, 0, -20, 5_000_000),
        shape=(97, 131),
        dtype=dtype,
        nodata=nodata,
        bands=1,
        seed=3,
    )
    rec, got = ingest_one(client, src, tmp_path, outSR=3857, resamplingMethod="BILINEAR", tile=tile)
    assert got.dtype == np.dtype(dtype)
    ref = whole_image_reference(src, rec.grid, "bilinear", rec.nodata, rec.dtype)
    assert_close(got, ref, "bilinear")
    # nodata is carried through: the collar stays nodata, nothing else becomes nodata
    if np.isnan(nodata):
        assert np.isnan(got).any() and np.isnan(rec.nodata)
    else:
        assert (
            np.float32(rec.nodata) == np.float32(nodata) and (got == np.array(nodata, dtype)).any()
        )


@pytest.mark.parametrize("shape", [(1, 1), (3, 7), (17, 5), (257, 131)])
def test_odd_and_tiny_images(client, raster_factory, tmp_path, shape):
    src = raster_factory(
        crs="EPSG:32633",
        transform=Affine(10, 0, 600_000, 0, -10, 5_100_000),
        shape=shape,
        dtype="uint8",
        nodata=None,
        bands=3,
        seed=1,
        collar=False,
    )
    rec, got = ingest_one(client, src, tmp_path, outSR=32633, resamplingMethod="NEAREST", tile=16)
    ref = whole_image_reference(src, rec.grid, "nearest", rec.nodata, rec.dtype)
    assert_same(got, ref)
    # same CRS and cell size on the lattice: the pixels are the source pixels themselves
    with rasterio.open(src) as ds:
        data = ds.read()
    r0 = round((rec.grid.transform.f - 5_100_000) / 10)
    c0 = round((600_000 - rec.grid.transform.c) / 10)
    np.testing.assert_array_equal(got[:, r0 : r0 + shape[0], c0 : c0 + shape[1]], data)


def test_close_to_gdal_default_approximate_warp(client, raster_factory, tmp_path):
    """Against gdalwarp's default approximate transformer, bilinear agrees within 1 DN."""
    src = raster_factory(
        crs="EPSG:32633",
        transform=Affine(30, 0, 500_000, 0, -30, 4_650_000),
        shape=(200, 220),
        dtype="uint8",
        nodata=0,
        bands=1,
        seed=7,
    )
    rec, got = ingest_one(client, src, tmp_path, outSR=3857, resamplingMethod="BILINEAR", tile=64)
    ref = whole_image_reference(src, rec.grid, "bilinear", rec.nodata, rec.dtype, exact=False)
    both = (got != 0) & (ref != 0)
    close = np.abs(got.astype(int) - ref.astype(int)) <= 1
    assert close[both].mean() >= 0.999


def test_overlapping_images_agree_on_the_lattice(client, raster_factory, tmp_path):
    """Two images cut from one raster agree pixel for pixel where they overlap."""
    from tests.conftest import smooth_field

    base = smooth_field((200, 200), seed=11, lo=1, hi=250).astype("uint8")
    t = Affine(25, 0, 500_000, 0, -25, 4_600_000)
    a = raster_factory(
        crs="EPSG:32633",
        transform=t,
        shape=(200, 120),
        dtype="uint8",
        nodata=0,
        data=base[None, :, :120].copy(),
    )
    b = raster_factory(
        crs="EPSG:32633",
        transform=t @ Affine.translation(80, 0),
        shape=(200, 120),
        dtype="uint8",
        nodata=0,
        data=base[None, :, 80:].copy(),
    )
    result = create_image_collection(
        [str(a), str(b)],
        image_collection=str(tmp_path / "two.zarr"),
        context={"outSR": 3857, "cellSize": 30, "resamplingMethod": "NEAREST"},
        client=client,
        tile_size=64,
    )
    assert result.exit_code == 0
    ra, rb = sorted(result.complete, key=lambda r: r.grid.transform.c)
    assert ra.grid.transform.e == rb.grid.transform.e == -30
    ga = np.stack([_raw(result.store, ra.image_id, "b1")])[0]
    gb = np.stack([_raw(result.store, rb.image_id, "b1")])[0]
    # both grids sit on one lattice: find the common window by integer offsets
    dc = round((rb.grid.transform.c - ra.grid.transform.c) / 30)
    dr = round((ra.grid.transform.f - rb.grid.transform.f) / 30)
    assert dc % 64 == 0 and dr % 64 == 0, "image origins must be on collection tile corners"
    h = min(ga.shape[0] - dr, gb.shape[0])
    w = min(ga.shape[1] - dc, gb.shape[1])
    oa, ob = ga[dr : dr + h, dc : dc + w], gb[:h, :w]
    both = (oa != 0) & (ob != 0)
    assert both.sum() > 1000
    np.testing.assert_array_equal(oa[both], ob[both])


def test_internal_mask_band_is_respected(client, tmp_path):
    """A source whose validity is a mask band (no nodata value) warps like GDAL, with the
    output noData the user asked for."""
    path = tmp_path / "masked.tif"
    data = np.full((1, 90, 100), 77, dtype="uint8")
    with rasterio.open(
        path,
        "w",
        driver="GTiff",
        height=90,
        width=100,
        count=1,
        dtype="uint8",
        crs="EPSG:32633",
        transform=Affine(30, 0, 500_000, 0, -30, 4_650_000),
    ) as dst:
        dst.write(data)
        mask = np.full((90, 100), 255, dtype="uint8")
        mask[:, :40] = 0  # the left part is masked out
        dst.write_mask(mask)
    rec, got = ingest_one(
        client, path, tmp_path, outSR=3857, resamplingMethod="NEAREST", noData=255, tile=32
    )
    ref = whole_image_reference(path, rec.grid, "nearest", 255, "uint8")
    assert_same(got, ref)
    assert (got == 255).any() and (got == 77).any()
