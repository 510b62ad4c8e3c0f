"""The GeoParquet catalog: columns, types, geo metadata, atomic writes, round trip."""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime, timedelta, timezone

import geopandas as gpd
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import shapely
from affine import Affine
from pyproj import CRS

from engine.catalog import (
    CORE_SCHEMA,
    build_table,
    read_catalog,
    read_records,
    write_catalog,
)
from engine.footprint import mask_to_footprint, to_wgs84_footprint
from engine.grid import Grid
from engine.records import BandStats, CollectionInfo, ImageRecord

SPEC_COLUMNS = {
    "ObjectID": pa.int64(),
    "image_id": pa.string(),
    "Name": pa.string(),
    "group": pa.string(),
    "raster_type": pa.string(),
    "product_name": pa.string(),
    "sensor": pa.string(),
    "acquisition_time": pa.timestamp("us", tz="UTC"),
    "source_uris": pa.list_(pa.string()),
    "byref": pa.bool_(),
    "crs": pa.string(),
    "LowPS": pa.float64(),
    "HighPS": pa.float64(),
    "MinPS": pa.float64(),
    "MaxPS": pa.float64(),
    "width": pa.int32(),
    "height": pa.int32(),
    "band_names": pa.list_(pa.string()),
    "dtype": pa.string(),
    "nodata": pa.float64(),
    "xmin": pa.float64(),
    "ymin": pa.float64(),
    "xmax": pa.float64(),
    "ymax": pa.float64(),
    "CenterX": pa.float64(),
    "CenterY": pa.float64(),
    "ZOrder": pa.int32(),
    "Category": pa.int32(),
    "cloud_cover": pa.float64(),
    "sun_elevation": pa.float64(),
    "sun_azimuth": pa.float64(),
    "status": pa.string(),
    "message": pa.string(),
    "checksum": pa.string(),
    "ingested_at": pa.timestamp("us", tz="UTC"),
    "footprint": pa.binary(),
}


def _image(image_id, grid, *, bands=3, seed=0, **kw) -> ImageRecord:
    rng = np.random.default_rng(seed)
    mask = np.ones((8, 8), bool)
    mask[:2, :2] = False
    coarse = Grid(grid.crs, grid.transform @ Affine.scale(grid.width / 8, grid.height / 8), (8, 8))
    fp_native = mask_to_footprint(mask, coarse)
    kw.setdefault("acquisition_time", datetime(2024, 5, 1, 10, 30, tzinfo=UTC))
    return ImageRecord(
        image_id=image_id,
        name=f"{image_id}.tif",
        source_uris=[f"/data/{image_id}.tif"],
        raster_type="Raster Dataset",
        status="complete",
        grid=grid,
        native_crs_wkt=grid.crs.to_wkt(),
        native_resolution=grid.resolution,
        band_names=[f"b{i + 1}" for i in range(bands)],
        dtype="uint16",
        nodata=0.0,
        footprint=to_wgs84_footprint(fp_native, grid.crs),
        data_bounds=fp_native.bounds,
        stats=[BandStats.of(rng.integers(1, 1000, 50)) for _ in range(bands)],
        checksum=f"sha256:{image_id}",
        ingested_at=datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC),
        **kw,
    )


@pytest.fixture
def collection():
    crs = CRS.from_epsg(32633)
    info = CollectionInfo("test", crs.to_wkt(), 10.0, 256, (0.0, 0.0), "Satellite")
    g1 = Grid(crs, Affine(10, 0, 500000, 0, -10, 4000000), (300, 400))
    g2 = Grid(crs, Affine(10, 0, 503000, 0, -10, 3998000), (200, 200))
    records = [
        _image(
            "a",
            g1,
            cloud_cover=12.5,
            sun_elevation=40.0,
            sun_azimuth=150.0,
            extra={"path": 190, "tile": "33SVB"},
            sensor="MSI",
            product_name="S2L2A",
            group="g1",
        ),
        _image(
            "b",
            g2,
            bands=2,
            seed=1,
            extra={"row": 5, "HighPS": 40.0, "ZOrder": 3},
            acquisition_time=datetime(2024, 5, 2, 12, 0, tzinfo=timezone(timedelta(hours=2))),
        ),
        ImageRecord(
            "c",
            "c.tif",
            ["/data/c.tif"],
            "Raster Dataset",
            "failed",
            message="c.tif: not a raster",
            ingested_at=datetime(2025, 1, 2),
        ),
    ]
    return records, info


def test_columns_and_types(tmp_path, collection):
    records, info = collection
    path = tmp_path / "catalog.parquet"
    write_catalog(path, records, info)
    table = read_catalog(path)
    for name, typ in SPEC_COLUMNS.items():
        assert table.schema.field(name).type == typ, name
    assert table.num_rows == 3
    assert table["ObjectID"].to_pylist() == [1, 2, 3]
    assert table["Category"].to_pylist() == [1, 1, 254]
    assert table["status"].to_pylist() == ["complete", "complete", "failed"]
    assert table["footprint"].to_pylist()[2] is None
    assert table["message"].to_pylist()[2] == "c.tif: not a raster"
    # extra columns: union over the records, null where missing; overrides consumed
    assert table["path"].to_pylist() == [190, None, None]
    assert table["tile"].to_pylist() == ["33SVB", None, None]
    assert table["row"].to_pylist() == [None, 5, None]
    assert table["HighPS"].to_pylist() == [10.0, 40.0, 10.0]
    assert table["MaxPS"].to_pylist() == [2560.0, 40.0 * 256, 2560.0]
    assert table["MinPS"].to_pylist() == [0.0, 0.0, 0.0]
    assert table["ZOrder"].to_pylist() == [None, 3, None]
    # acquisition time normalised to UTC
    assert table["acquisition_time"].to_pylist()[1] == datetime(2024, 5, 2, 10, 0, tzinfo=UTC)
    assert table["ingested_at"].to_pylist()[2] == datetime(2025, 1, 2, tzinfo=UTC)
    # bounds: valid-data bounds, collection CRS; centre of that box
    row = table.slice(0, 1).to_pylist()[0]
    assert (row["xmin"], row["ymin"], row["xmax"], row["ymax"]) == records[0].data_bounds
    assert row["CenterX"] == (row["xmin"] + row["xmax"]) / 2
    assert row["width"] == 400 and row["height"] == 300
    assert CRS.from_wkt(row["crs"]) == CRS.from_epsg(32633)
    assert row["band_stats"][0]["mean"] == pytest.approx(records[0].stats[0].mean)
    assert [f.name for f in CORE_SCHEMA] == table.schema.names[: len(CORE_SCHEMA)]


def test_geoparquet_metadata(tmp_path, collection):
    records, info = collection
    path = tmp_path / "catalog.parquet"
    write_catalog(path, records, info)
    geo = json.loads(pq.read_schema(path).metadata[b"geo"])
    assert geo["version"] == "1.1.0" and geo["primary_column"] == "footprint"
    col = geo["columns"]["footprint"]
    assert col["encoding"] == "WKB"
    assert CRS.from_json_dict(col["crs"]) == CRS.from_epsg(4326)
    assert col["geometry_types"] == ["Polygon"]
    assert col["covering"]["bbox"]["xmin"] == ["footprint_bbox", "xmin"]
    union = shapely.union_all([r.footprint for r in records[:2]])
    assert col["bbox"] == pytest.approx(list(union.bounds))
    bbox = pq.read_table(path)["footprint_bbox"].to_pylist()
    assert bbox[0] == dict(
        zip(("xmin", "ymin", "xmax", "ymax"), records[0].footprint.bounds, strict=True)
    )
    assert bbox[2] is None


def test_geopandas_reads_it(tmp_path, collection):
    records, info = collection
    path = tmp_path / "catalog.parquet"
    write_catalog(path, records, info)
    gdf = gpd.read_parquet(path)
    assert gdf.geometry.name == "footprint"
    assert gdf.crs.to_epsg() == 4326
    assert gdf.geometry.iloc[0].equals(records[0].footprint)
    assert gdf.geometry.iloc[2] is None
    assert str(gdf["acquisition_time"].dt.tz) == "UTC"
    assert set(SPEC_COLUMNS) <= set(gdf.columns)


def test_round_trip_records(tmp_path, collection):
    records, info = collection
    path = tmp_path / "catalog.parquet"
    write_catalog(path, records, info)
    back = read_records(path)
    assert [r.image_id for r in back] == ["a", "b", "c"]
    for a, b in zip(records, back, strict=True):
        for name in (
            "image_id",
            "name",
            "source_uris",
            "raster_type",
            "status",
            "message",
            "group",
            "product_name",
            "sensor",
            "byref",
            "grid",
            "native_crs_wkt",
            "band_names",
            "dtype",
            "nodata",
            "data_bounds",
            "stats",
            "checksum",
            "cloud_cover",
            "sun_elevation",
            "sun_azimuth",
            "extra",
        ):
            assert getattr(b, name) == getattr(a, name), name
        assert b.acquisition_time == a.acquisition_time
        naive = a.ingested_at.tzinfo is None  # naive datetimes are taken as UTC
        assert b.ingested_at == (a.ingested_at.replace(tzinfo=UTC) if naive else a.ingested_at)
        assert b.native_resolution == (tuple(a.native_resolution) if a.native_resolution else None)
        assert (b.footprint is None) == (a.footprint is None)
        if a.footprint is not None:
            assert b.footprint.equals(a.footprint)
    # the round trip is stable: writing what was read gives the same table
    write_catalog(tmp_path / "again.parquet", back, info)
    assert read_catalog(tmp_path / "again.parquet").equals(read_catalog(path))


def test_antimeridian_and_polar_footprints(tmp_path):
    crs = CRS.from_epsg(32660)
    info = CollectionInfo("am", crs.to_wkt(), 1000.0, 256)
    grid = Grid(crs, Affine(1000, 0, 700000, 0, -1000, 5000000), (200, 300))
    rec = _image("am", grid)
    assert rec.footprint.geom_type == "MultiPolygon"
    polar = Grid("EPSG:3031", Affine(1000, 0, -500000, 0, -1000, 500000), (1000, 1000))
    rec2 = _image("pole", polar)
    rec2.footprint = to_wgs84_footprint(polar.footprint(), polar.crs)
    path = tmp_path / "catalog.parquet"
    write_catalog(path, [rec, rec2], info)
    geo = json.loads(pq.read_schema(path).metadata[b"geo"])
    assert geo["columns"]["footprint"]["geometry_types"] == ["MultiPolygon", "Polygon"]
    gdf = gpd.read_parquet(path)
    assert gdf.geometry.iloc[0].geom_type == "MultiPolygon"
    assert gdf.geometry.iloc[1].bounds[1] == -90.0
    assert all(g.is_valid for g in gdf.geometry)


def test_atomic_overwrite_and_odd_extras(tmp_path, collection):
    records, info = collection
    path = tmp_path / "catalog.parquet"
    write_catalog(path, records, info)
    records[0].extra.update({"mixed": 1, "status": "clash"})
    records[1].extra["mixed"] = "text"
    records[1].nodata = math.nan
    write_catalog(path, records[:2], info)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["catalog.parquet"]
    table = read_catalog(path)
    assert table.num_rows == 2
    assert table["extra_status"].to_pylist() == ["clash", None]
    assert table["mixed"].to_pylist() == ["1", '"text"']  # untypable: JSON strings
    assert math.isnan(table["nodata"].to_pylist()[1])
    back = read_records(path)
    assert back[0].extra["status"] == "clash"


def test_failed_write_leaves_old_file(tmp_path, collection, monkeypatch):
    records, info = collection
    path = tmp_path / "catalog.parquet"
    write_catalog(path, records, info)
    before = path.read_bytes()

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(pq, "write_table", boom)
    with pytest.raises(OSError, match="disk full"):
        write_catalog(path, records[:1], info)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["catalog.parquet"]


def test_empty_catalog(tmp_path):
    info = CollectionInfo("empty", CRS.from_epsg(3857).to_wkt(), 1.0, 256)
    table = build_table([], info)
    assert table.num_rows == 0
    write_catalog(tmp_path / "c.parquet", [], info)
    assert read_records(tmp_path / "c.parquet") == []
    assert gpd.read_parquet(tmp_path / "c.parquet").crs.to_epsg() == 4326


def test_complete_without_footprint_gets_grid_outline(tmp_path, collection):
    records, info = collection
    records[1].footprint = None
    write_catalog(tmp_path / "c.parquet", records, info)
    gdf = gpd.read_parquet(tmp_path / "c.parquet")
    outline = to_wgs84_footprint(records[1].grid.footprint(), records[1].grid.crs)
    assert gdf.geometry.iloc[1].equals(outline)
    assert gdf.geometry.iloc[2] is None  # failed: still null
