"""Notebook API: Collection.mosaic (lazy, per-block reads) against GDAL warping a VRT of the
same source images and against numpy over the stored images; Collection.stack; the repr."""

from __future__ import annotations

import math
import shutil
import subprocess
import warnings
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pyarrow.compute as pc
import pytest
import rasterio
from affine import Affine
from rasterio.enums import Resampling
from rasterio.vrt import WarpedVRT

from engine import RequestError, create_image_collection, open_collection
from engine import mosaic as engine_mosaic
from engine.catalog import read_records, write_catalog
from tests.conftest import write_raster

X0, Y0 = 500_000.0, 5_200_000.0  # UTM 33N
CELL = 20.0
NODATA = 0
# per image: column / row offset in cells, cloud cover, acquisition day (two share a day)
LAYOUT = [(0, 0, 40.0, 3), (50, 15, 10.0, 1), (100, 30, None, 2), (30, 60, 25.0, 2)]


@pytest.fixture(scope="module")
def sources(tmp_path_factory) -> list[Path]:
    folder = tmp_path_factory.mktemp("nbsrc")
    return [
        write_raster(
            folder / f"scene{i}.tif",
            crs="EPSG:32633",
            transform=Affine(CELL, 0, X0 + c * CELL, 0, -CELL, Y0 - r * CELL),
            shape=(90, 100),
            dtype="uint16",
            nodata=NODATA,
            bands=3,
            seed=10 * i,
        )
        for i, (c, r, _, _) in enumerate(LAYOUT)
    ]


@pytest.fixture(scope="module")
def store(client, sources, tmp_path_factory) -> Path:
    """Four overlapping images and one broken input, ingested with nearest (the store holds
    the source pixels); cloud cover and times are set in the catalog as a raster type that
    reads them from metadata would."""
    folder = tmp_path_factory.mktemp("nbstore")
    broken = folder / "broken.tif"
    broken.write_text("not a raster")
    path = folder / "scenes.zarr"
    create_image_collection(
        [*map(str, sources), str(broken)],
        image_collection=str(path),
        context={"resamplingMethod": "NEAREST"},
        client=client,
        tile_size=64,
    )
    coll = open_collection(path)
    records = read_records(path / "catalog.parquet")
    by_name = {f"scene{i}": spec for i, spec in enumerate(LAYOUT)}
    for rec in records:
        if rec.name in by_name:
            _, _, cloud, day = by_name[rec.name]
            rec.cloud_cover = cloud
            rec.acquisition_time = datetime(2024, 5, day, 10, 30, tzinfo=UTC)
    write_catalog(path / "catalog.parquet", records, coll.info)
    return path


def _ids_by_name(coll) -> dict[str, str]:
    t = coll.catalog
    return dict(zip(t["Name"].to_pylist(), t["image_id"].to_pylist(), strict=True))


def _placed(coll, grid_da, image_ids) -> np.ndarray:
    """Each stored image (read back through xarray) placed on the mosaic's grid (same CRS
    and cell size): (n, bands, h, w) float64, NaN where the image has no valid pixel."""
    t = grid_da.rio.transform()
    h, w = grid_da.shape[1:]
    out = np.full((len(image_ids), grid_da.shape[0], h, w), np.nan)
    for k, image_id in enumerate(image_ids):
        ds = coll.image(image_id)
        it = ds.rio.transform()
        c0, r0 = round((it.c - t.c) / t.a), round((it.f - t.f) / t.e)
        vals = np.stack([ds[str(b)].values for b in grid_da.band.values]).astype("float64")
        ih, iw = vals.shape[1:]
        rs, cs = slice(max(r0, 0), min(r0 + ih, h)), slice(max(c0, 0), min(c0 + iw, w))
        out[k, :, rs, cs] = vals[:, rs.start - r0 : rs.stop - r0, cs.start - c0 : cs.stop - c0]
    return out


def _first_valid(stack: np.ndarray) -> np.ndarray:
    valid = np.isfinite(stack[:, 0])
    first = np.where(valid.any(0), valid.argmax(0), 0)
    out = np.take_along_axis(stack, first[None, None], axis=0)[0]
    out[:, ~valid.any(0)] = np.nan
    return out


def _as_float(da) -> np.ndarray:
    v = da.values.astype("float64")
    return np.where(v == da.rio.nodata, np.nan, v) if np.isfinite(da.rio.nodata) else v


def _gdal_vrt_warp(paths: list[Path], vrt: Path, like) -> np.ndarray:
    """GDAL: gdalbuildvrt over ``paths`` (the last one on top), warped with nearest onto
    the grid of the DataArray ``like`` with GDAL's exact transformer (a WarpedVRT with
    error threshold 1e-9, as mosaicflow's chunk warps)."""
    exe = shutil.which("gdalbuildvrt")
    if exe is None:
        pytest.skip("gdalbuildvrt is not installed (apt-get install gdal-bin)")
    subprocess.run([exe, "-q", "-overwrite", str(vrt), *map(str, paths)], check=True, timeout=60)
    h, w = like.shape[1:]
    with (
        rasterio.open(vrt) as ds,
        WarpedVRT(
            ds,
            crs=like.rio.crs,
            transform=like.rio.transform(),
            width=w,
            height=h,
            resampling=Resampling.nearest,
            tolerance=1e-9,
            src_nodata=NODATA,
            nodata=NODATA,
        ) as warped,
    ):
        return warped.read()


def test_first_equals_gdal_warp_of_a_vrt(store, sources, tmp_path):
    coll = open_collection(store)
    m = coll.mosaic(chunks=64)
    assert m.dtype == np.uint16 and m.rio.nodata == NODATA
    assert m.rio.crs.to_epsg() == 32633 and m.rio.resolution() == (CELL, -CELL)
    got = m.values
    # catalog order is the sources' order; a VRT draws its last source on top, so the VRT
    # in reverse order is the mosaic's first-valid order everywhere
    ordered = _gdal_vrt_warp(sources[::-1], tmp_path / "rev.vrt", m)
    np.testing.assert_array_equal(got, ordered)
    # in plain order the VRT is "last": it agrees exactly where one image alone covers
    plain = _gdal_vrt_warp(sources, tmp_path / "plain.vrt", m)
    count = np.isfinite(_placed(coll, m, coll.image_ids)[:, 0]).sum(0)
    single = count == 1
    assert single.sum() > 0.3 * single.size and (count > 1).sum() > 1000
    np.testing.assert_array_equal(got[:, single], plain[:, single])
    assert (got[:, count > 1] != plain[:, count > 1]).any()  # the order matters there
    np.testing.assert_array_equal(got[:, count == 0], NODATA)


def test_first_in_another_resolution_and_bbox_equals_gdal(store, sources, tmp_path):
    coll = open_collection(store)
    bbox = (X0 + 300, Y0 - 1900, X0 + 2700, Y0 - 130)  # snapped outward to 30 m
    m = coll.mosaic(bbox, resolution=30, chunks=(16, 24))
    assert m.rio.bounds() == (X0 + 280, Y0 - 1900, X0 + 2710, Y0 - 130)
    assert m.shape == (3, 59, 81) and m.data.numblocks == (1, 4, 4)
    np.testing.assert_array_equal(m.values, _gdal_vrt_warp(sources[::-1], tmp_path / "rev.vrt", m))


def test_shape_keeps_the_bbox_and_equals_gdal(store, sources, tmp_path):
    """``shape`` cuts the bbox as given (no snapping) into that many pixels (1.43 cells each,
    off the lattice): still the pixels GDAL's nearest warp of the VRT picks."""
    coll = open_collection(store)
    bbox = (X0 + 333.0, Y0 - 2100.0, X0 + 2333.0, Y0 - 101.0)
    m = coll.mosaic(bbox, shape=(70, 70), chunks=32)
    assert m.rio.bounds() == pytest.approx(bbox) and m.shape == (3, 70, 70)
    np.testing.assert_array_equal(m.values, _gdal_vrt_warp(sources[::-1], tmp_path / "r.vrt", m))
    with pytest.raises(RequestError, match="shape"):
        coll.mosaic(bbox, shape=(70, 70), resolution=30)


def test_coarse_mosaic_reads_the_overview(store):
    """At 2× the cell size each image is read from its first overview level."""
    import zarr

    from engine.store import overview_levels

    coll = open_collection(store)
    m = coll.mosaic(resolution=2 * CELL, chunks=40)
    root = zarr.open_group(str(store), mode="r")
    t = m.rio.transform()
    h, w = m.shape[1:]
    placed = np.full((len(coll.image_ids), 3, h, w), np.nan)
    for k, image_id in enumerate(coll.image_ids):
        group = root[f"images/{image_id}"]
        levels = overview_levels(group)
        if not levels:
            pytest.skip("this store has no overviews")
        level = group[levels[0]]
        lt = Affine(*level.attrs["spatial:transform"][:6])
        assert lt.a == 2 * CELL
        vals = np.stack([level[b][...] for b in ("b1", "b2", "b3")]).astype("float64")
        vals[vals == NODATA] = np.nan
        c0, r0 = round((lt.c - t.c) / t.a), round((lt.f - t.f) / t.e)
        ih, iw = vals.shape[1:]
        rs, cs = slice(max(r0, 0), min(r0 + ih, h)), slice(max(c0, 0), min(c0 + iw, w))
        placed[k, :, rs, cs] = vals[:, rs.start - r0 : rs.stop - r0, cs.start - c0 : cs.stop - c0]
    np.testing.assert_array_equal(_as_float(m), _first_valid(placed))


def test_first_in_another_crs_equals_gdal(store, sources, tmp_path):
    """Web Mercator: every block is warped with GDAL's exact transformer, so the chunked
    mosaic equals GDAL's warp of the whole VRT, whatever the block size."""
    coll = open_collection(store)
    m = coll.mosaic(crs="EPSG:3857", chunks=48)
    assert m.rio.crs.to_epsg() == 3857 and m.data.numblocks[1:] == (4, 5)
    got = m.values
    np.testing.assert_array_equal(got, _gdal_vrt_warp(sources[::-1], tmp_path / "rev.vrt", m))
    np.testing.assert_array_equal(got, coll.mosaic(crs="EPSG:3857", chunks=1000).values)
    assert (got != NODATA).mean() > 0.5


@pytest.mark.parametrize("method", ["last", "min", "max", "mean"])
def test_methods_equal_numpy_over_stored_images(store, method):
    coll = open_collection(store)
    m = coll.mosaic(method=method, chunks=64)
    stack = _placed(coll, m, coll.image_ids)
    with warnings.catch_warnings():  # all-NaN pixels (no image) stay NaN
        warnings.simplefilter("ignore", RuntimeWarning)
        expected = {
            "last": lambda: _first_valid(stack[::-1]),
            "min": lambda: np.nanmin(stack, axis=0),
            "max": lambda: np.nanmax(stack, axis=0),
            "mean": lambda: np.nanmean(stack, axis=0),
        }[method]()
    if method == "mean":
        assert m.dtype == np.float64 and np.isnan(m.rio.nodata)
        np.testing.assert_allclose(m.values, expected, rtol=1e-12, equal_nan=True)
    else:
        assert m.dtype == np.uint16
        np.testing.assert_array_equal(_as_float(m), expected)


def test_sort_by_cloud_cover(store):
    coll = open_collection(store)
    ids = _ids_by_name(coll)
    m = coll.mosaic(sort_by="cloud_cover", chunks=64)
    # 10 %, 25 %, 40 %, then the image without a cloud cover
    order = [ids["scene1"], ids["scene3"], ids["scene0"], ids["scene2"]]
    expected = _first_valid(_placed(coll, m, order))
    np.testing.assert_array_equal(_as_float(m), expected)
    down = coll.mosaic(sort_by="cloud_cover", ascending=False, chunks=64)
    order = [ids["scene0"], ids["scene3"], ids["scene1"], ids["scene2"]]  # missing still last
    np.testing.assert_array_equal(_as_float(down), _first_valid(_placed(coll, m, order)))
    assert (m.values != down.values).any()
    # the newest first, by time: scene0 (day 3), then scene2 and scene3 (day 2), scene1
    newest = coll.mosaic(sort_by="acquisition_time", ascending=False, chunks=64)
    order = [ids["scene0"], ids["scene2"], ids["scene3"], ids["scene1"]]
    np.testing.assert_array_equal(_as_float(newest), _first_valid(_placed(coll, m, order)))


def test_where_and_bands(store):
    coll = open_collection(store)
    ids = _ids_by_name(coll)
    m = coll.mosaic(where="cloud_cover < 30", bands=["b3", "b1"], chunks=64)
    assert list(m.band.values) == ["b3", "b1"]
    assert m.attrs["image_count"] == 2
    expected = _first_valid(_placed(coll, m, [ids["scene1"], ids["scene3"]]))
    np.testing.assert_array_equal(_as_float(m), expected)


def test_lazy_until_compute_one_task_per_block_reading_its_images(store, monkeypatch):
    coll = open_collection(store)
    opened: list[str] = []
    real = engine_mosaic.warp_image

    def spy(img, *a, **k):
        opened.append(img.image_id)
        return real(img, *a, **k)

    monkeypatch.setattr(engine_mosaic, "warp_image", spy)
    m = coll.mosaic(chunks=32)
    again = coll.mosaic(chunks=32)
    assert opened == []  # building reads nothing
    nblocks = int(np.prod(m.data.numblocks))
    t = coll.catalog.filter(pc.equal(coll.catalog["status"], "complete"))
    width = (pc.max(t["xmax"]).as_py() - pc.min(t["xmin"]).as_py()) / CELL
    height = (pc.max(t["ymax"]).as_py() - pc.min(t["ymin"]).as_py()) / CELL
    assert m.shape[1:] == (height, width)  # the images' extent by default
    assert nblocks == math.ceil(height / 32) * math.ceil(width / 32) == 35
    assert len(m.data.__dask_graph__()) == nblocks
    assert m.data.name == again.data.name  # deterministic keys
    assert coll.mosaic(chunks=32, method="max").data.name != m.data.name
    # the top-left block meets scene0 alone: computing it opens only scene0
    m[:, :32, :32].compute(scheduler="sync")  # in this process, where the spy is
    assert set(opened) == {_ids_by_name(coll)["scene0"]}


def test_stack(store):
    coll = open_collection(store)
    ids = _ids_by_name(coll)
    cube = coll.stack(chunks=64)
    assert cube.dims == ("time", "band", "y", "x")
    assert cube.shape[:2] == (3, 3)  # days 1, 2 (two images, one slice), 3
    assert list(cube.time.values) == [
        np.datetime64(f"2024-05-0{d}T10:30:00", "ns") for d in (1, 2, 3)
    ]
    assert list(cube.image_id.values) == [
        ids["scene1"],
        f"{ids['scene2']},{ids['scene3']}",
        ids["scene0"],
    ]
    np.testing.assert_allclose(cube.cloud_cover.values, [10.0, 25.0, 40.0])
    assert cube.dtype == np.uint16 and cube.rio.nodata == NODATA
    m = coll.mosaic(chunks=64)
    assert cube.shape[2:] == m.shape[1:] and (cube.x.values == m.x.values).all()
    vals = cube.values
    for k, order in enumerate([[ids["scene1"]], [ids["scene2"], ids["scene3"]], [ids["scene0"]]]):
        want = _first_valid(_placed(coll, m, order))
        got = vals[k].astype("float64")
        np.testing.assert_array_equal(np.where(got == NODATA, np.nan, got), want)
    # a float stack: NaN where an image has no data
    cubic = coll.stack(resolution=40, bands="b1", resampling="bilinear")
    assert cubic.dtype == np.float64 and np.isnan(cubic.rio.nodata)
    v = cubic.values
    assert np.isnan(v).any() and np.isfinite(v).any()


def test_repr_shows_the_collection(store):
    coll = open_collection(store)
    text = repr(coll)
    assert "4 complete, 1 failed" in text and "EPSG:32633" in text
    assert "b1, b2, b3 (uint16, nodata 0)" in text
    assert "2024-05-01 10:30:00 … 2024-05-03 10:30:00" in text
    page = coll._repr_html_()
    assert page.count('<path class="mf-fp"') == 4  # one footprint per complete image
    assert "<svg" in page and "</svg>" in page
    for name in ("scene0", "scene1", "scene2", "scene3", "broken"):
        assert name in page
    assert "failed: " in page and "10.0 %" in page


@pytest.mark.parametrize(
    "kwargs, parameter",
    [
        ({"method": "median"}, "method"),
        ({"sort_by": "Name"}, "sort_by"),
        ({"sort_by": "no_such_column"}, "sort_by"),
        ({"bands": ["b9"]}, "bands"),
        ({"where": "bogus = 1"}, "where"),
        ({"resampling": "nearestish"}, "resampling"),
        ({"bbox": (1, 2, 0, 3)}, "bbox"),
    ],
)
def test_bad_arguments_are_refused_with_the_reason(store, kwargs, parameter):
    coll = open_collection(store)
    with pytest.raises(RequestError) as err:
        coll.mosaic(**kwargs)
    assert err.value.parameter == parameter
    assert str(err.value).startswith(f"{parameter}=")


def test_concurrent_blocks_read_each_image_from_its_own_chunks(store):
    """Dask runs blocks in threads: the image index hands every thread the same opened
    image, and the chunk reader never takes one array's cached layout for another's (a
    freed array's id can be reused by a new one)."""
    from concurrent.futures import ThreadPoolExecutor

    from pyproj import CRS

    coll = open_collection(store)
    image_id = coll.image_ids[0]
    index = engine_mosaic.ImageIndex(str(store), CRS.from_wkt(coll.info.crs_wkt))
    with ThreadPoolExecutor(8) as pool:
        opened = list(pool.map(lambda _: index.get(image_id), range(16)))
    assert all(img is opened[0] for img in opened)
    one, other = (index.get(i) for i in coll.image_ids[:2])
    a, b = one.band("b1"), other.band("b1")
    reader = index.reader
    assert (a[40:48, 40:48] != b[40:48, 40:48]).any()
    reader.read([a], 40, 48, 40, 48)
    reader._layouts[id(b)] = reader._layouts[id(a)]  # as if b had taken a freed array's id
    np.testing.assert_array_equal(reader.read([b], 40, 48, 40, 48)[0], b[40:48, 40:48])
