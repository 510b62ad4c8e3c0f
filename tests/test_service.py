"""The ImageServer descriptor: extents, pixel type, pooled statistics, fields, JSON write."""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime

import numpy as np
import pytest
from affine import Affine
from pyproj import CRS

from engine.catalog import read_catalog, write_catalog
from engine.grid import Grid
from engine.records import BandStats, CollectionInfo, ImageRecord
from engine.service import (
    build_descriptor,
    pixel_type,
    write_descriptor,
)
from engine.spatialref import to_esri_spatial_reference


def _record(image_id, grid, arrays, *, dtype="uint8", status="complete", **kw) -> ImageRecord:
    return ImageRecord(
        image_id=image_id,
        name=image_id,
        source_uris=[f"/in/{image_id}.tif"],
        raster_type=kw.pop("raster_type", "Raster Dataset"),
        status=status,
        grid=grid,
        band_names=[f"Band_{i + 1}" for i in range(len(arrays))],
        dtype=dtype,
        nodata=kw.pop("nodata", 0.0),
        stats=[BandStats.of(a.ravel()) for a in arrays],
        **kw,
    )


@pytest.fixture
def collection():
    rng = np.random.default_rng(42)
    crs = CRS.from_epsg(32633)
    info = CollectionInfo("svc", crs.to_wkt(), 10.0, 512, (0.0, 0.0), "Satellite", "Landsat 8")
    arrays = {
        "a": [rng.integers(1, 255, 500) for _ in range(3)],
        "b": [rng.integers(1, 255, 700) for _ in range(3)],
        "c": [rng.integers(1, 255, 300) for _ in range(3)],
    }
    g = {
        "a": Grid(crs, Affine(10, 0, 500000, 0, -10, 4000000), (100, 100)),
        "b": Grid(crs, Affine(10, 0, 499000, 0, -10, 3999000), (50, 300)),
        "c": Grid(crs, Affine(10, 0, 600000, 0, -10, 4100000), (10, 10)),
    }
    records = [
        _record("a", g["a"], arrays["a"], acquisition_time=datetime(2024, 1, 1, tzinfo=UTC)),
        _record(
            "b",
            g["b"],
            arrays["b"],
            data_bounds=(499500.0, 3998600.0, 501500.0, 3999000.0),
            acquisition_time=datetime(2024, 3, 1, tzinfo=UTC),
            raster_type="Landsat 8",
        ),
        _record("c", g["c"], arrays["c"], status="failed", message="corrupt"),
    ]
    return records, info, arrays


def test_extents_match_catalog(tmp_path, collection):
    records, info, _ = collection
    d = build_descriptor(records, info, str(tmp_path / "svc.zarr"))
    # a: grid 500000..501000 x 3999000..4000000; b: data bounds 499500..501500 x 3998600..3999000
    expected = {"xmin": 499500.0, "ymin": 3998600.0, "xmax": 501500.0, "ymax": 4000000.0}
    for key in ("extent", "initialExtent", "fullExtent"):
        assert {k: d[key][k] for k in expected} == expected
        assert d[key]["spatialReference"] == to_esri_spatial_reference(CRS.from_epsg(32633))
    # same numbers as the catalog's complete rows (the failed image does not count)
    write_catalog(tmp_path / "catalog.parquet", records, info)
    t = read_catalog(tmp_path / "catalog.parquet").to_pylist()
    done = [r for r in t if r["status"] == "complete"]
    assert d["extent"]["xmin"] == min(r["xmin"] for r in done)
    assert d["extent"]["ymax"] == max(r["ymax"] for r in done)
    assert d["minPixelSize"] == min(r["LowPS"] for r in done)
    assert d["maxPixelSize"] == max(r["MaxPS"] for r in done)


def test_pooled_statistics_equal_numpy(collection):
    records, info, arrays = collection
    d = build_descriptor(records, info, "/s.zarr")
    assert d["bandCount"] == 3 and d["bandNames"] == ["Band_1", "Band_2", "Band_3"]
    for i in range(3):
        allv = np.concatenate([arrays["a"][i], arrays["b"][i]]).astype("float64")
        assert d["minValues"][i] == allv.min()
        assert d["maxValues"][i] == allv.max()
        assert d["meanValues"][i] == pytest.approx(allv.mean(), rel=1e-12)
        assert d["stdvValues"][i] == pytest.approx(allv.std(), rel=1e-9)


def test_descriptor_content(collection):
    records, info, _ = collection
    d = build_descriptor(records, info, "/s.zarr/")
    assert d["currentVersion"] == 11.3 and d["name"] == "svc"
    assert d["pixelType"] == "U8" and d["serviceDataType"] == "esriImageServiceDataTypeRGB"
    assert d["pixelSizeX"] == d["pixelSizeY"] == 10.0
    assert d["serviceSourceType"] == "esriImageServiceSourceTypeMosaicDataset"
    assert d["capabilities"] == "Image,Metadata,Catalog,Mensuration"
    assert d["defaultMosaicMethod"] == "Northwest" and d["mosaicOperator"] == "First"
    assert "Seamline" in d["allowedMosaicMethods"].split(",")
    assert (d["maxImageWidth"], d["maxImageHeight"], d["maxRecordCount"]) == (15000, 4100, 1000)
    assert d["objectIdField"] == "ObjectID"
    assert not d["hasMultidimensions"] and not d["hasColormap"] and not d["hasRasterAttributeTable"]
    assert d["noDataValue"] == 0.0 and d["noDataValues"] == [0.0, 0.0, 0.0]
    assert d["imageCollectionType"] == "Satellite"
    assert [r["name"] for r in d["rasterTypeInfos"]] == ["Landsat 8", "Raster Dataset"]
    assert d["timeInfo"]["timeExtent"] == [1704067200000, 1709251200000]
    fields = {f["name"]: f for f in d["fields"]}
    assert fields["ObjectID"]["type"] == "esriFieldTypeOID"
    assert fields["Name"]["type"] == "esriFieldTypeString" and fields["Name"]["length"] >= 256
    assert fields["acquisition_time"]["type"] == "esriFieldTypeDate"
    assert fields["LowPS"]["type"] == "esriFieldTypeDouble"
    assert fields["Category"]["type"] == "esriFieldTypeInteger"
    assert fields["byref"]["type"] == "esriFieldTypeSmallInteger"
    assert fields["footprint"]["type"] == "esriFieldTypeGeometry"
    assert "band_stats" not in fields and "footprint_bbox" not in fields
    mf = d["mosaicflow"]
    assert mf["store"] == "/s.zarr" and mf["catalog"] == "/s.zarr/catalog.parquet"
    assert mf["stac"] == "/s.zarr/stac/collection.json"
    assert (mf["image_count"], mf["failed_count"], mf["tile_size"]) == (2, 1, 512)
    assert mf["lattice_origin"] == [0.0, 0.0]


@pytest.mark.parametrize(
    "dtypes, expected",
    [
        (["uint8"], "U8"),
        (["int8"], "S8"),
        (["uint16", "uint8"], "U16"),
        (["int16", "uint8"], "S16"),
        (["uint32"], "U32"),
        (["int32", "int16"], "S32"),
        (["float32"], "F32"),
        (["float64", "float32"], "F64"),
        (["uint8", "float32"], "F32"),
        (["int16", "float32"], "F32"),
        (["int32", "float32"], "F64"),
        (["uint8", "int8"], "S16"),
        (["int64"], "F64"),
        ([], "UNKNOWN"),
    ],
)
def test_pixel_type(dtypes, expected):
    assert pixel_type(dtypes) == expected


def test_esri_spatial_reference():
    assert to_esri_spatial_reference(CRS.from_epsg(3857)) == {"wkid": 102100, "latestWkid": 3857}
    assert to_esri_spatial_reference("EPSG:32633") == {"wkid": 32633, "latestWkid": 32633}
    custom = CRS.from_proj4("+proj=stere +lat_0=-90 +lat_ts=-71 +lon_0=10 +datum=WGS84 +units=m")
    sr = to_esri_spatial_reference(custom)
    assert set(sr) == {"wkt"} and "Stereographic" in sr["wkt"]


def test_mixed_nodata_float_and_write(tmp_path):
    crs = CRS.from_epsg(3031)
    info = CollectionInfo("ice", crs.to_wkt(), 100.0, 256)
    grid = Grid(crs, Affine(100, 0, -1000, 0, -100, 1000), (20, 20))
    recs = [
        _record("f", grid, [np.linspace(-5, 5, 50)], dtype="float32", nodata=math.nan),
        _record("i", grid, [np.arange(10)], dtype="int16", nodata=-9999.0),
        _record("j", grid, [np.arange(3), np.arange(3)], dtype="int16", nodata=-9999.0),
    ]
    d = build_descriptor(recs, info, "/ice.zarr")
    assert d["pixelType"] == "F32" and d["serviceDataType"] == "esriImageServiceDataTypeGeneric"
    assert d["noDataValue"] is None  # images disagree
    assert d["bandCount"] == 2 and d["minValues"][1] == 0 and d["maxValues"][1] == 2
    path = tmp_path / "service.json"
    write_descriptor(path, d)
    assert json.loads(path.read_text()) == json.loads(json.dumps(d))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["service.json"]
    nan_only = build_descriptor(recs[:1], info, "/ice.zarr")
    assert nan_only["noDataValue"] is None  # NaN cannot be written as JSON
    write_descriptor(path, nan_only)


def test_empty_collection():
    info = CollectionInfo("none", CRS.from_epsg(3857).to_wkt(), 1.0, 256, (100.0, 200.0))
    d = build_descriptor([], info, "/n.zarr")
    assert d["bandCount"] == 0 and d["pixelType"] == "UNKNOWN"
    assert (d["extent"]["xmin"], d["extent"]["ymax"]) == (100.0, 200.0)
    json.dumps(d, allow_nan=False)
