"""The STAC export: items and collection against minimal core schemas, extensions, hrefs."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import jsonschema
import numpy as np
import pystac
import pytest
from affine import Affine
from pyproj import CRS

from engine.footprint import to_wgs84_footprint
from engine.grid import Grid
from engine.records import BandStats, CollectionInfo, ImageRecord
from engine.stac import write_stac

# Minimal STAC 1.1.0 core schemas (the official ones need the network, closed here).
_LINK = {
    "type": "object",
    "required": ["rel", "href"],
    "properties": {"rel": {"type": "string"}, "href": {"type": "string", "minLength": 1}},
}
_ASSET = {
    "type": "object",
    "required": ["href"],
    "properties": {
        "href": {"type": "string", "minLength": 1},
        "type": {"type": "string"},
        "roles": {"type": "array", "items": {"type": "string"}},
    },
}
_BBOX = {"type": "array", "minItems": 4, "maxItems": 4, "items": {"type": "number"}}
ITEM_SCHEMA = {
    "type": "object",
    "required": ["type", "stac_version", "id", "geometry", "bbox", "properties", "links", "assets"],
    "properties": {
        "type": {"const": "Feature"},
        "stac_version": {"const": "1.1.0"},
        "stac_extensions": {"type": "array", "items": {"type": "string", "format": "uri"}},
        "id": {"type": "string", "minLength": 1},
        "geometry": {
            "type": "object",
            "required": ["type", "coordinates"],
            "properties": {"type": {"enum": ["Polygon", "MultiPolygon"]}},
        },
        "bbox": _BBOX,
        "properties": {
            "type": "object",
            "required": ["datetime"],
            "properties": {"datetime": {"type": "string", "pattern": r"^\d{4}-\d\d-\d\dT.*Z$"}},
        },
        "links": {"type": "array", "items": _LINK},
        "assets": {"type": "object", "additionalProperties": _ASSET},
        "collection": {"type": "string"},
    },
}
COLLECTION_SCHEMA = {
    "type": "object",
    "required": ["type", "stac_version", "id", "description", "license", "extent", "links"],
    "properties": {
        "type": {"const": "Collection"},
        "stac_version": {"const": "1.1.0"},
        "id": {"type": "string", "minLength": 1},
        "description": {"type": "string", "minLength": 1},
        "license": {"type": "string"},
        "extent": {
            "type": "object",
            "required": ["spatial", "temporal"],
            "properties": {
                "spatial": {
                    "type": "object",
                    "required": ["bbox"],
                    "properties": {"bbox": {"type": "array", "minItems": 1, "items": _BBOX}},
                },
                "temporal": {
                    "type": "object",
                    "required": ["interval"],
                    "properties": {"interval": {"type": "array", "minItems": 1}},
                },
            },
        },
        "links": {"type": "array", "items": _LINK},
        "assets": {"type": "object", "additionalProperties": _ASSET},
    },
}
PROJ = "https://stac-extensions.github.io/projection/v2.0.0/schema.json"
RASTER = "https://stac-extensions.github.io/raster/v1.1.0/schema.json"
EO = "https://stac-extensions.github.io/eo/v1.1.0/schema.json"
VIEW = "https://stac-extensions.github.io/view/v1.0.0/schema.json"


def _record(image_id, grid, *, status="complete", **kw) -> ImageRecord:
    rng = np.random.default_rng(len(image_id))
    fp = to_wgs84_footprint(grid.footprint(), grid.crs) if status == "complete" else None
    return ImageRecord(
        image_id=image_id,
        name=f"{image_id}.tif",
        source_uris=[f"/data/{image_id}.tif"],
        raster_type="Raster Dataset",
        status=status,
        grid=grid if status == "complete" else None,
        band_names=["red", "green"],
        dtype="uint16",
        nodata=0.0,
        footprint=fp,
        stats=[BandStats.of(rng.integers(1, 100, grid.width * grid.height // 2)) for _ in range(2)],
        ingested_at=datetime(2025, 1, 1, tzinfo=UTC),
        **kw,
    )


@pytest.fixture
def collection():
    crs = CRS.from_epsg(3857)
    info = CollectionInfo("demo", crs.to_wkt(), 100.0, 256, collection_type="Aerial")
    g1 = Grid(crs, Affine(100, 0, 1000000, 0, -100, 6000000), (40, 60))
    g2 = Grid(crs, Affine(100, 0, 1010000, 0, -100, 6010000), (50, 50))
    records = [
        _record(
            "img1",
            g1,
            acquisition_time=datetime(2024, 6, 1, 8, tzinfo=UTC),
            cloud_cover=3.0,
            sun_elevation=55.0,
            sun_azimuth=140.0,
        ),
        _record("img2", g2, acquisition_time=None),
        _record("bad", g1, status="failed", message="broken"),
    ]
    return records, info


def _load(path: Path) -> dict:
    return json.loads(path.read_text())


def test_items_and_collection(tmp_path, collection):
    records, info = collection
    stac = tmp_path / "store.zarr" / "stac"
    write_stac(stac, records, info, "..", "../catalog.parquet")
    assert sorted(p.name for p in (stac / "items").iterdir()) == ["img1.json", "img2.json"]
    coll = _load(stac / "collection.json")
    jsonschema.validate(coll, COLLECTION_SCHEMA)
    assert coll["license"] == "other"
    assert coll["assets"]["catalog"] == {
        "href": "../catalog.parquet",
        "type": "application/vnd.apache.parquet",
        "title": "GeoParquet catalog (one row per image)",
        "roles": ["metadata"],
    }
    item_links = sorted(lk["href"] for lk in coll["links"] if lk["rel"] == "item")
    assert item_links == ["./items/img1.json", "./items/img2.json"]
    interval = coll["extent"]["temporal"]["interval"][0]
    assert interval == ["2024-06-01T08:00:00Z", "2025-01-01T00:00:00Z"]

    bboxes = []
    for rec in records[:2]:
        item = _load(stac / "items" / f"{rec.image_id}.json")
        jsonschema.validate(item, ITEM_SCHEMA)
        assert item["collection"] == "demo"
        assert item["bbox"] == pytest.approx(list(rec.footprint.bounds))
        bboxes.append(item["bbox"])
        props = item["properties"]
        assert PROJ in item["stac_extensions"] and RASTER in item["stac_extensions"]
        assert props["proj:code"] == "EPSG:3857"
        assert props["proj:shape"] == list(rec.grid.shape)
        assert props["proj:transform"] == list(rec.grid.transform)[:6]
        assert props["proj:bbox"] == list(rec.grid.bounds)
        asset = item["assets"]["data"]
        assert asset["href"] == f"../../images/{rec.image_id}"
        assert (stac / "items" / asset["href"]).resolve() == (
            tmp_path / "store.zarr" / "images" / rec.image_id
        ).resolve()
        assert asset["type"] == "application/vnd+zarr" and asset["roles"] == ["data"]
        bands = asset["raster:bands"]
        assert len(bands) == 2 and bands[0]["nodata"] == 0 and bands[0]["data_type"] == "uint16"
        st = bands[1]["statistics"]
        assert st["minimum"] == rec.stats[1].min and st["mean"] == pytest.approx(rec.stats[1].mean)
        assert st["valid_percent"] == pytest.approx(50.0)
    union = [
        min(b[0] for b in bboxes),
        min(b[1] for b in bboxes),
        max(b[2] for b in bboxes),
        max(b[3] for b in bboxes),
    ]
    assert coll["extent"]["spatial"]["bbox"][0] == pytest.approx(union)

    one = _load(stac / "items" / "img1.json")
    assert one["properties"]["datetime"] == "2024-06-01T08:00:00Z"
    assert one["properties"]["eo:cloud_cover"] == 3.0 and EO in one["stac_extensions"]
    assert one["properties"]["view:sun_elevation"] == 55.0 and VIEW in one["stac_extensions"]
    two = _load(stac / "items" / "img2.json")
    assert two["properties"]["datetime"] == "2025-01-01T00:00:00Z"  # falls back to ingested_at
    assert "eo:cloud_cover" not in two["properties"] and EO not in two["stac_extensions"]


def test_self_contained_and_pystac_reads(tmp_path, collection):
    records, info = collection
    records[1].footprint = None  # a complete image without footprint: grid outline
    stac = tmp_path / "stac"
    write_stac(stac, records, info, "..", "../catalog.parquet", license="CC-BY-4.0")
    for path in stac.rglob("*.json"):
        text = path.read_text()
        assert str(tmp_path) not in text, path  # relative hrefs only
    coll = pystac.read_file(str(stac / "collection.json"))
    assert isinstance(coll, pystac.Collection) and coll.license == "CC-BY-4.0"
    items = list(coll.get_items())
    assert sorted(i.id for i in items) == ["img1", "img2"]
    assert coll.get_item("img2").geometry["type"] == "Polygon"
    for item in items:
        assert item.get_collection().id == "demo"
        assert item.assets["data"].get_absolute_href().endswith(f"/images/{item.id}")


def test_rewrite_is_atomic_swap(tmp_path, collection, monkeypatch):
    records, info = collection
    stac = tmp_path / "stac"
    write_stac(stac, records, info, "..", "../catalog.parquet")
    write_stac(stac, records[:1], info, "..", "../catalog.parquet")
    assert sorted(p.name for p in (stac / "items").iterdir()) == ["img1.json"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["stac"]  # no temp dir left
    # a failure while writing (the disk full at the second item) leaves the previous tree
    real, written = Path.write_bytes, []

    def fill_up(self, data):
        if written:
            raise OSError("full")
        written.append(self)
        return real(self, data)

    monkeypatch.setattr(Path, "write_bytes", fill_up)
    with pytest.raises(OSError, match="full"):
        write_stac(stac, records, info, "..", "../catalog.parquet")
    assert sorted(p.name for p in (stac / "items").iterdir()) == ["img1.json"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["stac"]


def test_antimeridian_polar_and_custom_crs(tmp_path):
    crs = CRS.from_epsg(32660)
    info = CollectionInfo("am", crs.to_wkt(), 1000.0, 256, collection_type="Satellite")
    am = _record("am", Grid(crs, Affine(1000, 0, 700000, 0, -1000, 5000000), (200, 300)))
    write_stac(
        tmp_path / "stac", [am], info, "s3://bucket/am.zarr", "s3://bucket/am.zarr/catalog.parquet"
    )
    item = _load(tmp_path / "stac" / "items" / "am.json")
    jsonschema.validate(item, ITEM_SCHEMA)
    assert item["geometry"]["type"] == "MultiPolygon"
    west, _, east, _ = item["bbox"]
    assert west > 0 > east  # RFC 7946: crossing bbox
    assert item["assets"]["data"]["href"] == "s3://bucket/am.zarr/images/am"
    coll = _load(tmp_path / "stac" / "collection.json")
    assert coll["extent"]["spatial"]["bbox"][0][0] == west
    assert coll["extent"]["spatial"]["bbox"][0][2] == east

    polar_crs = CRS.from_proj4("+proj=stere +lat_0=-90 +lat_ts=-71 +lon_0=10 +datum=WGS84 +units=m")
    info = CollectionInfo("polar", polar_crs.to_wkt(), 1000.0, 256)
    rec = _record("p", Grid(polar_crs, Affine(1000, 0, -300000, 0, -1000, 300000), (600, 600)))
    write_stac(tmp_path / "polar", [rec], info, "..", "../catalog.parquet")
    item = _load(tmp_path / "polar" / "items" / "p.json")
    jsonschema.validate(item, ITEM_SCHEMA)
    assert "proj:code" not in item["properties"]
    assert CRS.from_wkt(item["properties"]["proj:wkt2"]) == polar_crs
    assert item["bbox"][0] == -180 and item["bbox"][2] == 180 and item["bbox"][1] == -90
