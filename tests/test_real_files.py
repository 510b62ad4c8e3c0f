"""Every GeoTIFF of the shared sample data, ingested as a user would.

A collection has one cell size, so the eleven files (0.6 m to 20 km pixels, a 20 m
square to the whole globe) cannot sensibly share one: at the finest input's 0.6 m
(``MinOf``, the default) ``world.byte.tif`` alone would be 67 million pixels wide, at a
world-scale cell size the 2 × 2 pixel ``test_esri_wkt.tif`` would vanish. A user groups
them by scale, one request (one collection) per group, all in Web Mercator (EPSG:3857):

* site scenes (0.6 m to 10 m, at the finest one's pixel size: ``MinOf``, the default),
  with the files that must fail whatever the grid;
* regional scenes (60 m to 500 m) at 300 m, the pixel size of the main scene;
* world-scale images. ``world.byte.tif`` stops at ±75° latitude, inside Web Mercator's
  ±85.06°, so 3857 works and no EPSG:4326 fallback is needed. ``goes.tif`` (a full
  geostationary disk, ±81°) is something GDAL warps to 3857 as well (``gdalwarp -t_srs
  EPSG:3857`` and rasterio's ``calculate_default_transform`` both succeed).

Each file is either complete (footprint contains the centre of its valid data, catalog
statistics equal numpy over the stored pixels, no pixel outside the source) or failed
with the reason a user needs. The collection extent of ``service.json`` is the union of
the complete images' catalog bounds.
"""

from __future__ import annotations

import functools
import json
import math
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import rasterio
import shapely
import zarr
from pyproj import CRS, Transformer

from engine import create_image_collection
from engine.grid import Grid
from engine.plan import resampling_scale
from graphs.chunk import gdal_warp

SITE = [
    "cogeo.tif",
    "RGBA.uint16.tif",
    "test_esri_wkt.tif",
    "all-nodata.tif",
    "rotated.tif",
    "float_nan.tif",
]
REGIONAL = ["RGB.byte.tif", "byte.tif", "float_raster_with_nodata.tif"]
WORLD = ["world.byte.tif"]
# Files that must fail, and the words their failure message must hold.
MUST_FAIL = {
    "all-nodata.tif": "no valid pixels",  # every pixel is its nodata value (0)
    "rotated.tif": "no CRS",  # a rotated geotransform without any CRS
    "float_nan.tif": "no CRS",  # a bare 3 × 2 float grid without any CRS
}


def ingest(client, shared_data: Path, tmp_path: Path, files: list[str], name: str, **context):
    geotiff = shared_data / "geotiff"
    result = create_image_collection(
        [str(geotiff / f) for f in files],
        image_collection=str(tmp_path / f"{name}.zarr"),
        context={"outSR": {"wkid": 3857}, **context},
        client=client,
    )
    assert len(result.records) == len(files)
    return result


def _catalog(store: str) -> dict[str, dict]:
    rows = pq.read_table(Path(store) / "catalog.parquet").to_pylist()
    return {Path(r["source_uris"][0]).name: r for r in rows}


@functools.lru_cache(maxsize=2)
def _stored(store: str, row_key: tuple) -> np.ndarray:
    """The image's bands as stored (bands, h, w); ``row_key`` = (image_id, band names)."""
    image_id, band_names = row_key
    group = f"{store}/images/{image_id}"
    return np.stack([zarr.open_array(f"{group}/{b}", mode="r")[:] for b in band_names])


def stored(store: str, row: dict) -> np.ndarray:
    return _stored(store, (row["image_id"], tuple(row["band_names"])))


def _valid(bands: np.ndarray, nodata: float | None) -> np.ndarray:
    """Per band: pixels holding data (not nodata, not NaN)."""
    valid = np.ones(bands.shape, dtype=bool)
    if bands.dtype.kind == "f":
        valid &= ~np.isnan(bands)
    if nodata is not None and not math.isnan(nodata):
        valid &= bands != np.array(nodata, dtype=bands.dtype)
    return valid


def valid_pixels(path: Path, store: str, row: dict) -> np.ndarray:
    """Per band: the stored pixels that hold data.

    With a nodata value: pixels not equal to it (nor NaN). An image without one keeps
    none, so every value is data where the source covers the pixel: coverage is GDAL's
    own, a whole-image warp's alpha band (exact transformer, the image's resampling scale).
    """
    bands = stored(store, row)
    if row["nodata"] is not None:
        return _valid(bands, row["nodata"])
    grid = _grid(row)
    with rasterio.open(path) as src:
        scale = resampling_scale(Grid(src.crs, src.transform, src.shape), grid)
        _, covered = gdal_warp(src, grid, "nearest", scale=scale)
    alpha = np.array(covered)
    # GDAL also fills pixels a CRS wraps around (beyond Web Mercator's edge); those lie
    # outside the source's outline and are no data of this image
    rows, cols = np.nonzero(alpha)
    xs, ys = grid.transform @ (cols + 0.5, rows + 0.5)
    alpha[rows, cols] = shapely.contains_xy(source_reach(path, grid), xs, ys)
    return np.broadcast_to(alpha, bands.shape)


def _grid(row: dict) -> Grid:
    from affine import Affine

    return Grid(CRS.from_wkt(row["crs"]), Affine(*row["grid_transform"]), tuple(row["grid_shape"]))


def source_valid_centre_lonlat(path: Path) -> tuple[float, float]:
    """Lon/lat of the centre of mass of the source's valid pixels (GDAL's dataset mask)."""
    with rasterio.open(path) as ds:
        mask = ds.dataset_mask() > 0
        rows, cols = np.nonzero(mask)
        x, y = ds.transform @ (cols.mean() + 0.5, rows.mean() + 0.5)
        tr = Transformer.from_crs(ds.crs, "EPSG:4326", always_xy=True)
        return tr.transform(x, y)


def check_footprint(path: Path, row: dict) -> None:
    """The footprint (EPSG:4326) holds the centre of the source's valid data."""
    footprint = shapely.from_wkb(row["footprint"])
    lon, lat = source_valid_centre_lonlat(path)
    assert footprint.covers(shapely.Point(lon, lat)), (path.name, (lon, lat), footprint.bounds)


def check_complete(path: Path, store: str, row: dict) -> None:
    """What a user checks of an ingested image: footprint, statistics, bounds."""
    assert row["status"] == "complete", f"{path.name}: {row['message']}"
    assert row["Category"] == 1
    check_footprint(path, row)
    check_statistics(path, store, row)
    check_bounds(path, store, row)


def check_statistics(path: Path, store: str, row: dict) -> None:
    """Band statistics are numpy's over the stored array's valid pixels."""
    bands = stored(store, row)
    valid = valid_pixels(path, store, row)
    assert valid.any(), f"{path.name}: complete but holds no valid pixel"
    assert len(row["band_stats"]) == bands.shape[0]
    for b, (band, ok, stats) in enumerate(zip(bands, valid, row["band_stats"], strict=True)):
        v = band[ok].astype("float64")
        where = f"{path.name} band {b + 1}"
        assert stats["count"] == v.size, where
        if v.size:
            assert (stats["min"], stats["max"]) == (v.min(), v.max()), where
            assert stats["mean"] == pytest.approx(v.mean(), rel=1e-9), where
            assert stats["stddev"] == pytest.approx(v.std(), rel=1e-6, abs=1e-6), where


def check_bounds(path: Path, store: str, row: dict) -> None:
    """The catalog bounds (collection CRS) hold every valid stored pixel."""
    valid = valid_pixels(path, store, row)
    grid = _grid(row)
    rows, cols = np.nonzero(valid.any(axis=0))
    (x0, x1), (y1, y0) = grid.transform @ (
        np.array([cols.min(), cols.max() + 1]),
        np.array([rows.min(), rows.max() + 1]),
    )
    eps = 1e-6 * grid.resolution[0]
    assert row["xmin"] <= x0 + eps and row["xmax"] >= x1 - eps, path.name
    assert row["ymin"] <= y0 + eps and row["ymax"] >= y1 - eps, path.name


def source_reach(path: Path, grid: Grid) -> shapely.Geometry:
    """The source's densified outline in the grid's CRS, plus one pixel of resampling
    reach; the whole grid when the outline has no position there (a full disk)."""
    with rasterio.open(path) as ds:
        h, w = ds.shape
        t = np.linspace(0.0, 1.0, 257)[:-1]
        cols = np.concatenate([t * w, np.full_like(t, w), (1 - t) * w, np.zeros_like(t)])
        rows = np.concatenate([np.zeros_like(t), t * h, np.full_like(t, h), (1 - t) * h])
        xs, ys = ds.transform @ (cols, rows)
        tr = Transformer.from_crs(ds.crs, grid.crs, always_xy=True)
    px, py = tr.transform(xs, ys, errcheck=False)
    if not (np.isfinite(px).all() and np.isfinite(py).all()):
        return shapely.box(*grid.bounds)
    return shapely.Polygon(np.column_stack([px, py])).buffer(grid.resolution[0])


def assert_no_pixel_outside_source(path: Path, store: str, row: dict) -> None:
    """Every valid stored pixel lies inside the source's outline in the collection CRS."""
    grid = _grid(row)
    with rasterio.open(path) as ds:
        h, w = ds.shape
        t = np.linspace(0.0, 1.0, 257)[:-1]  # the source's pixel-edge ring, densified
        cols = np.concatenate([t * w, np.full_like(t, w), (1 - t) * w, np.zeros_like(t)])
        rows = np.concatenate([np.zeros_like(t), t * h, np.full_like(t, h), (1 - t) * h])
        xs, ys = ds.transform @ (cols, rows)
        tr = Transformer.from_crs(ds.crs, grid.crs, always_xy=True)
    outline = shapely.Polygon(np.column_stack(tr.transform(xs, ys)))
    assert outline.is_valid and not outline.is_empty
    reach = outline.buffer(grid.resolution[0])  # one pixel of resampling reach
    valid = valid_pixels(path, store, row).any(axis=0)
    rows, cols = np.nonzero(valid)
    xs, ys = grid.transform @ (cols + 0.5, rows + 0.5)
    inside = shapely.contains_xy(reach, xs, ys)
    assert inside.all(), f"{path.name}: {(~inside).sum()} valid pixels outside the source"


def check_collection(result, shared_data: Path, expect_complete: list[str]) -> dict[str, dict]:
    rows = _catalog(result.store)
    assert len(rows) == len(result.records), "one catalog row per input"
    for name, row in rows.items():
        if name in MUST_FAIL:
            assert row["status"] == "failed", f"{name} should have failed"
            assert row["Category"] == 254
            assert MUST_FAIL[name].lower() in row["message"].lower(), (name, row["message"])
            assert not (Path(result.store) / "images" / row["image_id"]).exists()
        else:
            check_complete(shared_data / "geotiff" / name, result.store, row)
    assert sorted(n for n, r in rows.items() if r["status"] == "complete") == sorted(
        expect_complete
    )
    check_extent(result.store, [r for r in rows.values() if r["status"] == "complete"])
    return rows


def check_extent(store: str, done: list[dict]) -> None:
    """The service extent is the union of the complete images' catalog bounds."""
    desc = json.loads((Path(store) / "service.json").read_text())
    union = {
        "xmin": min(r["xmin"] for r in done),
        "ymin": min(r["ymin"] for r in done),
        "xmax": max(r["xmax"] for r in done),
        "ymax": max(r["ymax"] for r in done),
    }
    for key in ("extent", "fullExtent"):
        assert {k: desc[key][k] for k in union} == pytest.approx(union, rel=1e-12), key
        assert desc[key]["spatialReference"].get("latestWkid") == 3857


def test_site_scenes(client, shared_data, tmp_path):
    result = ingest(client, shared_data, tmp_path, SITE, "site")
    assert result.exit_code == 3  # some failed, as they must
    ok = [f for f in SITE if f not in MUST_FAIL]
    rows = check_collection(result, shared_data, ok)
    for name in ok:
        assert_no_pixel_outside_source(shared_data / "geotiff" / name, result.store, rows[name])


def test_regional_scenes(client, shared_data, tmp_path):
    # at RGB.byte's own 300 m: MinOf would blow the 237 km scene up to byte.tif's 60 m
    result = ingest(client, shared_data, tmp_path, REGIONAL, "regional", cellSize=300)
    assert result.exit_code == 0, result.to_dict()["failed"]
    rows = check_collection(result, shared_data, REGIONAL)
    for name in REGIONAL:
        assert_no_pixel_outside_source(shared_data / "geotiff" / name, result.store, rows[name])


@pytest.fixture(scope="module")
def world(client, shared_data, tmp_path_factory):
    result = ingest(client, shared_data, tmp_path_factory.mktemp("world"), WORLD, "world")
    return result, _catalog(result.store)["world.byte.tif"]


def test_world_scale_image(world, shared_data):
    result, row = world
    assert result.exit_code == 0, result.to_dict()["failed"]
    check_statistics(shared_data / "geotiff" / "world.byte.tif", result.store, row)
    check_extent(result.store, [row])


def test_world_scale_image_footprint_covers_its_data(world, shared_data):
    _, row = world
    check_footprint(shared_data / "geotiff" / "world.byte.tif", row)


def test_world_scale_image_holds_no_wrapped_pixels(world, shared_data):
    result, row = world
    path = shared_data / "geotiff" / "world.byte.tif"
    assert_no_pixel_outside_source(path, result.store, row)
    check_bounds(path, result.store, row)


def test_geostationary_full_disk(client, shared_data, tmp_path):
    result = ingest(client, shared_data, tmp_path, ["goes.tif"], "goes")
    assert result.exit_code == 0, result.to_dict()["failed"]
    check_collection(result, shared_data, ["goes.tif"])
