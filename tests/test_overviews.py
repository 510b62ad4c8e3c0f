"""Overview levels: built in the ingestion job, equal to GDAL's decimation of level 0,
described by the zarr-conventions ``multiscales`` attribute, reflected in the catalog, and
read by exportImage / the mosaic renderer when a request is zoomed out."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import dask
import numpy as np
import pyarrow.parquet as pq
import pytest
import rasterio
import rioxarray  # noqa: F401  (the .rio accessor)
import xarray as xr
import zarr
from affine import Affine
from fastapi import FastAPI
from pyproj import CRS
from rasterio.enums import Resampling
from rasterio.errors import NotGeoreferencedWarning
from rasterio.io import MemoryFile

from engine import create_image_collection, open_collection
from engine.catalog import read_records
from engine.grid import Grid, chunk_grid
from engine.mosaic import ImageIndex, render
from engine.rastertypes.base import SourcePart
from engine.server import imageserver
from engine.store import create_image_template, create_overview_templates
from graphs.ingest import add_overview_tasks, chunk_key
from graphs.overviews import (
    PyramidJob,
    band_methods,
    is_categorical,
    level_grid,
    overview_count,
)
from tests.conftest import write_raster
from tests.loopback import serve

TILE = 128
UTM = Affine(10, 0, 500_000, 0, -10, 5_000_000)
MULTISCALES_UUID = "d35379db-88df-4056-af3a-620245f8e347"


def gdal_decimation(level0: np.ndarray, nodata: float | None, k: int, method: str) -> np.ndarray:
    """GDAL's ``method`` decimation of a level-0 band by 2**k: the band padded with nodata
    to whole 2**k blocks (the level's grid covers them), then rasterio ``read(out_shape)``."""
    f = 2**k
    h, w = level0.shape
    hk, wk = -(-h // f), -(-w // f)
    pad = np.full((hk * f, wk * f), 0 if nodata is None else nodata, dtype=level0.dtype)
    pad[:h, :w] = level0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with MemoryFile() as mem:
            with mem.open(
                driver="GTiff", width=wk * f, height=hk * f, count=1, dtype=pad.dtype, nodata=nodata
            ) as ds:
                ds.write(pad, 1)
            with mem.open() as ds:
                return ds.read(1, out_shape=(hk, wk), resampling=Resampling[method])


def assert_within_1dn(got: np.ndarray, ref: np.ndarray, nodata: float | None) -> None:
    """Same shape, nodata exactly where GDAL has it, data within 1 DN."""
    assert got.shape == ref.shape
    if nodata is not None and math.isnan(nodata):
        np.testing.assert_array_equal(np.isnan(got), np.isnan(ref))
        ok = ~np.isnan(ref)
    elif nodata is not None:
        np.testing.assert_array_equal(got == nodata, ref == nodata)
        ok = ref != nodata
    else:
        ok = np.ones(ref.shape, dtype=bool)
    assert ok.any()
    diff = np.abs(got[ok].astype("float64") - ref[ok].astype("float64"))
    assert diff.max() <= 1.0


def levels_of(store: str, image_id: str) -> list[dict]:
    return zarr.open_group(f"{store}/images/{image_id}", mode="r").attrs["multiscales"]["layout"]


def ingest(client, root: Path, name: str, *, dtype="uint16", nodata=0, resampling="BILINEAR"):
    src = write_raster(
        root / f"{name}.tif", crs="EPSG:32633", transform=UTM, shape=(600, 800),
        dtype=dtype, nodata=nodata, bands=2, seed=3,
    )  # fmt: skip
    result = create_image_collection(
        [str(src)],
        image_collection=str(root / f"{name}.zarr"),
        context={"outSR": 3857, "cellSize": 12, "resamplingMethod": resampling},
        client=client,
        tile_size=TILE,
    )
    assert result.exit_code == 0, result.to_dict()
    return result


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("overviews")


@pytest.fixture(scope="module")
def averaged(client, root):
    return ingest(client, root, "avg")


@pytest.fixture(scope="module")
def picked(client, root):
    return ingest(client, root, "near", resampling="NEAREST")


# -- planning ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("shape", "tile", "shapes"),
    [
        ((1, 1), 512, []),
        ((512, 512), 512, []),
        ((513, 100), 512, [(257, 50)]),
        ((1356, 1912), 256, [(678, 956), (339, 478), (170, 239)]),
        ((5000, 300), 256, [(2500, 150), (1250, 75), (625, 38), (313, 19), (157, 10)]),
        ((1000, 1000), 37, []),  # an odd tile does not halve onto pixel pairs: no overviews
    ],
)
def test_levels_go_down_to_one_tile(shape, tile, shapes):
    grid = Grid(CRS.from_epsg(3857), Affine(12, 0, 1200, 0, -12, 2400), shape)
    n = overview_count(shape, tile)
    assert [level_grid(grid, k).shape for k in range(1, n + 1)] == shapes
    if n:
        top = level_grid(grid, n)
        assert max(top.shape) <= tile  # the coarsest level fits one tile
        assert top.transform == Affine(12 * 2**n, 0, 1200, 0, -(12 * 2**n), 2400)


def test_categorical_bands_and_nearest_collections_pick():
    assert all(is_categorical(b) for b in ("QA_PIXEL", "BQA", "SCL", "QA60", "SR_CLOUD_QA"))
    assert not any(is_categorical(b) for b in ("B04", "red", "b1", "SR_B5", "AQUA"))
    grid = Grid(CRS.from_epsg(3857), Affine(10, 0, 0, 0, -10, 0), (4, 4))

    def part(bands, resampling=None):
        return SourcePart("x.tif", tuple(range(1, bands + 1)), tuple(f"p{b}" for b in range(bands)),
                          grid, "uint16", 0, "transform", resampling=resampling)  # fmt: skip

    names = ("B02", "B03", "SCL", "MSK")
    parts = [part(2), part(1), part(1, "nearest")]
    assert band_methods(names, parts, "bilinear") == ("average", "average", "nearest", "nearest")
    assert band_methods(names, parts, "nearest") == ("nearest",) * 4
    assert band_methods(names, parts, "mode") == ("nearest",) * 4
    assert band_methods(names, parts, "cubic") == ("average", "average", "nearest", "nearest")


# -- pixels -----------------------------------------------------------------------------
@pytest.mark.parametrize(("dtype", "nodata"), [("uint16", 0), ("float32", math.nan)])
def test_levels_equal_gdal_average_decimation_of_level0(client, root, averaged, dtype, nodata):
    result = (
        averaged if dtype == "uint16" else ingest(client, root, "f32", dtype=dtype, nodata=nodata)
    )
    rec = result.complete[0]
    layout = levels_of(result.store, rec.image_id)
    assert len(layout) == 1 + 3  # 740 × 1015 px at tile 128: 370, 185, 93 rows
    group = zarr.open_group(f"{result.store}/images/{rec.image_id}", mode="r")
    for band in rec.band_names:
        level0 = group[band][:]
        assert (level0 == nodata).any() or np.isnan(level0).any()  # nodata areas are tested
        for entry in layout[1:]:
            k = int(entry["asset"].rsplit("/", 1)[1])
            assert entry["mosaicflow:resampling"][band] == "average"
            got = group[entry["asset"]][band][:]
            assert_within_1dn(got, gdal_decimation(level0, nodata, k, "average"), nodata)


def test_nearest_levels_equal_gdal_nearest_decimation(picked):
    rec = picked.complete[0]
    group = zarr.open_group(f"{picked.store}/images/{rec.image_id}", mode="r")
    for band in rec.band_names:
        level0 = group[band][:]
        for entry in levels_of(picked.store, rec.image_id)[1:]:
            k = int(entry["asset"].rsplit("/", 1)[1])
            assert entry["resampling_method"] == "nearest"
            ref = gdal_decimation(level0, 0, k, "nearest")
            np.testing.assert_array_equal(group[entry["asset"]][band][:], ref)


@dataclass(frozen=True)
class _Job:
    image_id: str


def test_each_band_keeps_its_method(tmp_path):
    """An image of a reflectance band and a QA band (the graph run on a local scheduler):
    the reflectance averaged, the QA flags picked, each equal to GDAL's decimation."""
    store = str(tmp_path / "mixed.zarr")
    zarr.open_group(store, mode="w", zarr_format=3).require_group("images")
    grid = Grid(CRS.from_epsg(32633), UTM, (300, 455))
    bands, nodata, tile = ["B04", "QA_PIXEL"], 1, 64
    rng = np.random.default_rng(5)
    data = {"B04": rng.integers(2, 9000, grid.shape).astype("uint16"),
            "QA_PIXEL": rng.choice(np.array([21824, 21952, 22080, 55052], "uint16"), grid.shape)}  # fmt: skip
    for a in data.values():
        a[:40, :] = nodata  # a nodata band across the top, with ragged edges below it
        a[40:47, ::3] = nodata
    create_image_template(store, "img", grid, bands, "uint16", nodata, tile)
    for b in bands:
        zarr.open_array(f"{store}/images/img/{b}", mode="r+")[:] = data[b]
    methods = band_methods(bands, [], "bilinear")
    assert methods == ("average", "nearest")
    pyr = PyramidJob("img", store, grid, tile, "uint16", nodata, tuple(bands), methods,
                     overview_count(grid.shape, tile))  # fmt: skip
    assert pyr.levels == 3
    create_overview_templates(store, "img", [level_grid(grid, k) for k in range(4)], bands,
                              "uint16", nodata, tile, list(methods))  # fmt: skip

    job = _Job("img")  # stands for the level-0 chunk tasks (their chunks are written above)
    chunks = [(i, j) for i in range(5) for j in range(8)]
    dsk = {chunk_key(job, i, j): None for i, j in chunks}  # type: ignore[arg-type]
    top = add_overview_tasks(dsk, pyr, job, chunks)  # type: ignore[arg-type]
    # linear: one task per chunk of each level (12 + 4 + 1 chunks) plus the pyramid node
    assert len(dsk) == len(chunks) + 12 + 4 + 1 + 1
    assert dask.get(dsk, top) == {"image_id": "img", "levels": 3}
    group = zarr.open_group(f"{store}/images/img", mode="r")
    for b, method in zip(bands, methods, strict=True):
        for k in (1, 2, 3):
            got = group[f"overviews/{k}"][b][:]
            ref = gdal_decimation(data[b], nodata, k, method)
            if method == "nearest":  # flags are picked, never averaged into other flags
                np.testing.assert_array_equal(got, ref)
                assert set(np.unique(got)) <= {nodata, *np.unique(data[b]).tolist()}
            else:
                assert_within_1dn(got, ref, nodata)


# -- store layout and catalog -------------------------------------------------------------
def test_multiscales_attribute_and_level_arrays(averaged):
    rec = averaged.complete[0]
    group = zarr.open_group(f"{averaged.store}/images/{rec.image_id}", mode="r")
    assert MULTISCALES_UUID in {c["uuid"] for c in group.attrs["zarr_conventions"]}
    layout = group.attrs["multiscales"]["layout"]
    assert group.attrs["multiscales"]["resampling_method"] == "average"
    assert [e["asset"] for e in layout] == [".", "overviews/1", "overviews/2", "overviews/3"]
    tree = xr.open_datatree(averaged.store, engine="zarr", decode_coords="all")
    base = tree[f"images/{rec.image_id}"].to_dataset()  # level 0 reads as before
    assert base.b1.shape == rec.grid.shape
    for k, entry in enumerate(layout):
        lg = level_grid(rec.grid, k)
        assert entry["transform"] == {"scale": [2.0**k] * 2, "translation": [0.0, 0.0]}
        assert entry["spatial:transform"] == pytest.approx(list(lg.transform)[:6])
        assert entry["spatial:shape"] == list(lg.shape)
        if k == 0:
            continue
        assert entry["derived_from"] == "."
        level = group[entry["asset"]]
        assert level.attrs["spatial:transform"] == entry["spatial:transform"]
        assert level.attrs["spatial:shape"] == list(lg.shape)
        for b in rec.band_names:
            arr, arr0 = level[b], group[b]
            assert arr.shape == lg.shape and arr.chunks == arr0.chunks
            assert arr.fill_value == arr0.fill_value == 0
            assert arr.attrs["_FillValue"] == arr0.attrs["_FillValue"]
            assert arr.attrs["_CRS"] == arr0.attrs["_CRS"]
            assert arr.attrs["resampling_method"] == "average"
        # rioxarray reads a level's CRS, transform and nodata once its dims are named x/y
        ds = tree[f"images/{rec.image_id}/{entry['asset']}"].to_dataset(inherit=False)
        ds = ds.rename({f"x_{k}": "x", f"y_{k}": "y"})
        assert ds.b1.rio.crs == rasterio.crs.CRS.from_epsg(3857)
        assert ds.b1.rio.transform().almost_equals(lg.transform, precision=1e-6)
        assert ds.b1.rio.nodata == 0 or ds.b1.rio.encoded_nodata == 0


def test_catalog_and_descriptor_reflect_the_levels(averaged):
    table = pq.read_table(Path(averaged.store) / "catalog.parquet").to_pylist()
    row = next(r for r in table if r["status"] == "complete")
    assert row["LowPS"] == 12.0  # level 0
    assert row["HighPS"] == 12.0 * 2**3  # the coarsest level
    assert row["MinPS"] == 0.0
    assert row["MaxPS"] == row["HighPS"] * TILE  # visible until the top level is one pixel
    service = json.loads((Path(averaged.store) / "service.json").read_text())
    assert service["minPixelSize"] == 12.0
    assert service["maxPixelSize"] == row["MaxPS"]
    # read back as records (add, resume) the coarsest level survives
    (rec,) = read_records(Path(averaged.store) / "catalog.parquet")
    assert rec.extra["HighPS"] == 96.0


# -- readers -----------------------------------------------------------------------------
def _level_pixels(store: str, image_id: str, asset: str, band: str) -> np.ndarray:
    group = zarr.open_group(f"{store}/images/{image_id}", mode="r")
    return (group if asset == "." else group[asset])[band][:]


@pytest.mark.parametrize(("factor", "level"), [(1, 0), (1.9, 0), (2, 1), (3, 1), (4, 2), (64, 3)])
def test_render_reads_the_level_that_fits(picked, factor, level):
    rec = picked.complete[0]
    coll = open_collection(picked.store)
    index = ImageIndex(coll.path, rec.grid.crs)
    img = index.get(rec.image_id)
    assert len(img.overviews) == 3
    dst = Grid(rec.grid.crs, rec.grid.transform @ Affine.scale(factor), (40, 50))
    chosen = img.level_for(dst)
    assert chosen.grid == (img if level == 0 else img.overviews[level - 1]).grid


def test_render_zoomed_out_equals_the_overview_and_native_equals_the_store(picked):
    rec = picked.complete[0]
    index = ImageIndex(picked.store, rec.grid.crs)
    for k in (0, 2):
        lg = level_grid(rec.grid, k)
        dst = chunk_grid(lg, 0, 0, 10_000)  # the whole level, on its own grid
        data, valid = render(index, [rec.image_id], ["b1", "b2"], dst, dtype="uint16")
        asset = "." if k == 0 else f"overviews/{k}"
        for b, band in enumerate(("b1", "b2")):
            stored = _level_pixels(picked.store, rec.image_id, asset, band)
            np.testing.assert_array_equal(np.where(valid, data[b], 0), stored)


@pytest.fixture(scope="module")
def http(root, picked):
    imageserver.configure(root)
    app = FastAPI()
    app.include_router(imageserver.router)
    with serve(app) as c:
        yield c


def test_export_image_zoomed_out_serves_the_overview(http, picked):
    rec = picked.complete[0]
    for k in (0, 3):  # native: the stored pixels; 8× out: the coarsest level's
        lg = level_grid(rec.grid, k)
        size, bbox = (lg.width, lg.height), lg.bounds
        r = http.get(
            "/arcgis/rest/services/Hosted/near/ImageServer/exportImage",
            params={"bbox": ",".join(map(repr, bbox)), "size": f"{size[0]},{size[1]}",
                    "format": "tiff", "f": "image", "interpolation": "RSP_NearestNeighbor"},
        )  # fmt: skip
        assert r.status_code == 200, r.text[:300]
        with MemoryFile(r.content) as mem, mem.open() as ds:
            got = ds.read(1)
        stored = _level_pixels(
            picked.store, rec.image_id, "." if k == 0 else f"overviews/{k}", "b1"
        )
        np.testing.assert_array_equal(got, stored)


# -- commit order ------------------------------------------------------------------------
_CONTEXT = {"outSR": 3857, "cellSize": 12, "resamplingMethod": "BILINEAR"}
_RUN = f"""
import sys
from engine import create_image_collection
create_image_collection(sys.argv[1:-1], image_collection=sys.argv[-1], context={_CONTEXT!r},
                        workers=1, tile_size=64)
"""


def _complete_has_overviews(store: str) -> tuple[int, int]:
    """(complete images, images whose top level is written); asserts that every complete
    image has every level, equal to the decimation of its level 0."""
    complete = with_top = 0
    images = Path(store) / "images"
    for d in sorted(images.iterdir()) if images.is_dir() else []:
        if not (d / "zarr.json").exists():
            continue
        group = zarr.open_group(str(d), mode="r")
        layout = group.attrs.get("multiscales", {}).get("layout", [])
        top = layout[-1]["asset"] if len(layout) > 1 else None
        written = top is not None and (d / top / "b1" / "c").exists()
        with_top += written
        if group.attrs.get("mosaicflow", {}).get("status") == "complete":
            complete += 1
            assert written, f"{d.name} is complete without its overviews"
            level0 = group["b1"][:]
            for e in layout[1:]:
                k = int(e["asset"].rsplit("/", 1)[1])
                ref = gdal_decimation(level0, 0, k, "average")
                assert_within_1dn(group[e["asset"]]["b1"][:], ref, 0)
    return complete, with_top


def test_killed_run_never_leaves_an_image_complete_without_overviews(client, tmp_path):
    sources = [
        str(write_raster(tmp_path / f"s{i}.tif", crs="EPSG:32633", shape=(300, 380), dtype="uint16",
                         nodata=0, bands=1, seed=i, transform=UTM @ Affine.translation(400 * i, 0)))
        for i in range(3)
    ]  # fmt: skip
    out = str(tmp_path / "k.zarr")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    proc = subprocess.Popen([sys.executable, "-c", _RUN, *sources, out], env=env,
                            start_new_session=True, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)  # fmt: skip
    deadline = time.monotonic() + 60
    try:  # SIGKILL as soon as the first overview chunk is on disk: pyramids are mid-way
        while time.monotonic() < deadline and proc.poll() is None:
            if any(Path(out).glob("images/*/overviews/1/b1/c/*/*")):
                break
            time.sleep(0.01)
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    assert any(Path(out).glob("images/*/overviews/1/b1/c/*/*")), "killed too late to test"
    complete, _ = _complete_has_overviews(out)
    assert complete < 3  # the run was cut short
    # the same request resumes the run and finishes every image with its overviews
    again = create_image_collection(
        sources, image_collection=out, context=_CONTEXT, client=client, tile_size=64
    )
    assert again.exit_code == 0, again.to_dict()
    assert _complete_has_overviews(out) == (3, 3)
