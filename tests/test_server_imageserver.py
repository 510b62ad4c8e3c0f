"""The ImageServer endpoints over a real HTTP server (uvicorn in a thread, httpx client)."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import numpy as np
import pytest
import rasterio
import shapely
from affine import Affine
from fastapi import FastAPI
from rasterio.io import MemoryFile

from engine import create_image_collection, open_collection
from engine.server import imageserver
from tests.conftest import write_raster
from tests.loopback import serve

BASE = "/arcgis/rest/services/Hosted/demo/ImageServer"
X0, Y0 = 1_000_000.0, 6_000_000.0


@pytest.fixture(scope="module")
def collection(client, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("imageserver")
    sources = [
        str(
            write_raster(
                root / f"{name}.tif",
                crs="EPSG:3857",
                transform=Affine(10, 0, X0 + i * 300, 0, -10, Y0),
                shape=(40, 50),
                nodata=0,
                seed=i,
            )
        )
        for i, name in enumerate(["alpha", "beta", "gamma"])
    ]
    create_image_collection(
        sources, image_collection=str(root / "demo.zarr"), context={"outSR": 3857}, client=client
    )
    return root


@pytest.fixture(scope="module")
def http(collection):
    imageserver.configure(collection)
    app = FastAPI()
    app.include_router(imageserver.router)
    with serve(app) as c:
        yield c


def q(http, **params):
    r = http.get(f"{BASE}/query", params={"f": "json", **params})
    assert r.status_code == 200
    return r.json()


def ids(body) -> list[int]:
    return [f["attributes"]["ObjectID"] for f in body["features"]]


def test_descriptor(http, collection):
    r = http.get(BASE, params={"f": "json"})
    assert r.status_code == 200
    body = r.json()
    assert body == json.loads((collection / "demo.zarr" / "service.json").read_text())
    assert body["name"] == "demo" and body["bandCount"] == 1
    assert http.get(BASE, params={"f": "pjson"}).json() == body
    page = http.get(BASE)  # html is the default
    assert page.headers["content-type"].startswith("text/html") and "bandCount" in page.text
    missing = http.get("/arcgis/rest/services/Hosted/nope/ImageServer", params={"f": "json"})
    assert missing.status_code == 200 and missing.json()["error"]["code"] == 404
    assert missing.json()["error"]["message"] == "Service not found"


def test_query_all_and_fields(http):
    body = q(http, where="1=1", outFields="*")
    assert body["objectIdFieldName"] == "ObjectID"
    assert body["geometryType"] == "esriGeometryPolygon"
    assert body["spatialReference"]["wkid"] == 4326
    assert ids(body) == [1, 2, 3]
    assert body["exceededTransferLimit"] is False
    names = [f["name"] for f in body["fields"]]
    assert {"ObjectID", "Name", "acquisition_time", "xmin", "cloud_cover"} <= set(names)
    assert "footprint" not in names
    types = {f["name"]: f["type"] for f in body["fields"]}
    assert types["ObjectID"] == "esriFieldTypeOID"
    assert types["ingested_at"] == "esriFieldTypeDate"
    attrs = body["features"][0]["attributes"]
    assert attrs["Name"] == "alpha"
    assert isinstance(attrs["ingested_at"], int) and attrs["ingested_at"] > 1.6e12  # epoch ms
    ring = body["features"][0]["geometry"]["rings"][0]
    lon, lat = np.array(ring).mean(axis=0)
    assert 8.9 < lon < 9.1 and 47 < lat < 48  # EPSG:3857 (1e6, 6e6) is about (8.98°E, 47.3°N)

    only = q(http, where="Name = 'beta'", outFields="Name", returnGeometry="false")
    assert [f["attributes"] for f in only["features"]] == [{"ObjectID": 2, "Name": "beta"}]
    assert "geometry" not in only["features"][0]

    merc = q(http, objectIds="1", outSR="3857")
    assert merc["spatialReference"]["latestWkid"] == 3857
    xs = [p[0] for p in merc["features"][0]["geometry"]["rings"][0]]
    assert min(xs) >= X0 - 50 and max(xs) <= X0 + 600


@pytest.mark.parametrize(
    ("where", "expected"),
    [
        ("Name = 'alpha'", [1]),
        ("name <> 'alpha'", [2, 3]),
        ("ObjectID != 2", [1, 3]),
        ("ObjectID >= 2 AND ObjectID < 3", [2]),
        ("Name IN ('alpha', 'gamma')", [1, 3]),
        ("Name NOT IN ('alpha')", [2, 3]),
        ("Name LIKE 'g%'", [3]),
        ("Name LIKE '_eta'", [2]),
        ("cloud_cover IS NULL", [1, 2, 3]),
        ("cloud_cover IS NOT NULL", []),
        ("NOT (Name = 'alpha' OR Name = 'beta')", [3]),
        ("(ObjectID = 1 OR ObjectID = 3) AND xmin > 0", [1, 3]),
        ("ObjectID BETWEEN 2 AND 3", [2, 3]),
        ("2 < ObjectID", [3]),
        ("1=0", []),
        ("ingested_at > TIMESTAMP '2000-01-01 00:00:00'", [1, 2, 3]),
        ("ingested_at > 946684800000", [1, 2, 3]),  # epoch milliseconds, as ArcGIS
        ("Name = 'it''s'", []),
    ],
)
def test_query_where(http, where, expected):
    assert ids(q(http, where=where, returnGeometry="false")) == expected


@pytest.mark.parametrize(
    "where",
    [
        "1=1; DROP TABLE x",
        "Name = '' OR __import__('os')",
        "Name = '' OR __import__('os').system('true')",
        "Name = 'a' --",
        "Name = 'unterminated",
        "ObjectID = 1 OR",
        "Name = alpha",
    ],
)
def test_malicious_or_malformed_where_refused(http, where):
    body = q(http, where=where)
    assert body["error"]["code"] == 400, body


def test_unknown_field_named(http):
    body = q(http, where="bogus_field = 1")
    assert body["error"]["code"] == 400
    assert "bogus_field" in body["error"]["message"]
    body = q(http, where="1=1", outFields="Name,nope")
    assert body["error"]["code"] == 400 and "nope" in body["error"]["message"]
    body = q(http, where="1=1", orderByFields="missing DESC")
    assert body["error"]["code"] == 400 and "missing" in body["error"]["message"]
    body = q(http, where="Name = 5")
    assert body["error"]["code"] == 400


def test_object_ids_count_and_ids_only(http):
    assert ids(q(http, objectIds="3,1", returnGeometry="false")) == [1, 3]
    assert q(http, where="ObjectID > 1", returnCountOnly="true") == {"count": 2}
    assert q(http, where="1=1", returnIdsOnly="true") == {
        "objectIdFieldName": "ObjectID",
        "objectIds": [1, 2, 3],
    }
    assert q(http, objectIds="x,y")["error"]["code"] == 400


def test_geometry_filters(http, collection):
    coll = open_collection(collection / "demo.zarr")
    fps = shapely.from_wkb(coll.catalog["footprint"].to_numpy(zero_copy_only=False))
    # A small envelope inside image 1 only, in the collection CRS (the default inSR).
    env = {"xmin": X0 + 20, "ymin": Y0 - 200, "xmax": X0 + 60, "ymax": Y0 - 150}
    body = q(http, geometry=json.dumps(env), geometryType="esriGeometryEnvelope")
    assert ids(body) == [1]
    # The same as "xmin,ymin,xmax,ymax" with an explicit inSR.
    assert ids(q(http, geometry=f"{X0 + 20},{Y0 - 200},{X0 + 60},{Y0 - 150}", inSR="3857")) == [1]
    # A polygon spanning the overlap of 1 and 2, in EPSG:4326.
    lon0, lat0, _, lat1 = fps[1].bounds
    ring = [[lon0, lat0], [lon0, lat1], [lon0 + 0.0005, lat1], [lon0 + 0.0005, lat0], [lon0, lat0]]
    poly = {"rings": [ring], "spatialReference": {"wkid": 4326}}
    assert ids(q(http, geometry=json.dumps(poly), geometryType="esriGeometryPolygon")) == [1, 2]
    # Contains: the query geometry contains the footprint; Within: the other way round.
    big = {"xmin": X0 - 100, "ymin": Y0 - 600, "xmax": X0 + 850, "ymax": Y0 + 100}
    assert ids(q(http, geometry=json.dumps(big), spatialRel="esriSpatialRelContains")) == [1, 2]
    assert ids(q(http, geometry=json.dumps(env), spatialRel="esriSpatialRelWithin")) == [1]
    far = {"xmin": 0, "ymin": 0, "xmax": 10, "ymax": 10, "spatialReference": {"wkid": 3857}}
    assert ids(q(http, geometry=json.dumps(far))) == []
    assert q(http, geometry="{not json")["error"]["code"] == 400


def test_order_and_paging(http):
    assert ids(q(http, orderByFields="Name DESC", returnGeometry="false")) == [3, 2, 1]
    assert ids(q(http, orderByFields="ObjectID DESC", returnGeometry="false")) == [3, 2, 1]
    first = q(http, orderByFields="Name", resultRecordCount="2", returnGeometry="false")
    assert ids(first) == [1, 2] and first["exceededTransferLimit"] is True
    rest = q(
        http,
        orderByFields="Name",
        resultOffset="2",
        resultRecordCount="2",
        returnGeometry="false",
    )
    assert ids(rest) == [3] and rest["exceededTransferLimit"] is False
    assert q(http, resultOffset="-1")["error"]["code"] == 400


def _stored(coll, object_id: int) -> tuple[np.ndarray, Affine]:
    row = coll.catalog.filter(
        np.asarray(coll.catalog["ObjectID"].to_pylist()) == object_id
    ).to_pylist()[0]
    ds = coll.image(row["image_id"])
    t = Affine(*ds.attrs["spatial:transform"][:6])
    return ds["b1"].values, t


def _window(values: np.ndarray, t: Affine, bbox, size) -> np.ndarray:
    c0 = round((bbox[0] - t.c) / t.a)
    r0 = round((bbox[3] - t.f) / t.e)
    return values[r0 : r0 + size[1], c0 : c0 + size[0]]


def test_export_image_matches_store(http, collection):
    coll = open_collection(collection / "demo.zarr")
    first, t1 = _stored(coll, 1)
    second, t2 = _stored(coll, 2)
    # Over image 1 and the overlap with image 2, at the store's own 10 m grid.
    bbox = (X0, Y0 - 400, X0 + 500, Y0)
    size = (50, 40)
    r = http.get(
        f"{BASE}/exportImage",
        params={
            "bbox": ",".join(map(str, bbox)),
            "size": f"{size[0]},{size[1]}",
            "format": "tiff",
            "f": "image",
        },
    )
    assert r.status_code == 200 and r.headers["content-type"] == "image/tiff"
    with MemoryFile(r.content) as mem, mem.open() as ds:
        got = ds.read(1)
        assert ds.crs.to_epsg() == 3857 and ds.transform.a == 10
        assert ds.bounds == rasterio.coords.BoundingBox(*bbox)
    a = _window(first, t1, bbox, size)
    b = _window(second, t2, bbox, size)
    expected = np.where(np.isfinite(a), a, np.where(np.isfinite(b), b, 0)).astype("uint8")
    assert np.isfinite(b).any() and (np.isfinite(a) & np.isfinite(b)).any()  # a real overlap
    np.testing.assert_array_equal(got, expected)

    png = http.get(
        f"{BASE}/exportImage",
        params={"bbox": ",".join(map(str, bbox)), "size": "50,40", "format": "png", "f": "image"},
    )
    assert png.content[:8] == b"\x89PNG\r\n\x1a\n"
    with MemoryFile(png.content) as mem, mem.open() as ds:
        np.testing.assert_array_equal(ds.read(1), expected)

    meta = http.get(
        f"{BASE}/exportImage",
        params={"bbox": ",".join(map(str, bbox)), "size": "50,40", "f": "json"},
    ).json()
    assert meta["width"] == 50 and meta["height"] == 40
    assert meta["extent"]["xmin"] == bbox[0] and meta["extent"]["spatialReference"]["wkid"]
    assert "f=image" in meta["href"]
    again = httpx.get(meta["href"], timeout=30)
    assert again.content[:8] == b"\x89PNG\r\n\x1a\n"


def test_export_image_refusals(http):
    base = {"bbox": f"{X0},{Y0 - 400},{X0 + 500},{Y0}", "f": "json"}
    too_big = http.get(f"{BASE}/exportImage", params={**base, "size": "20000,10"}).json()
    assert too_big["error"]["code"] == 400 and "size limit" in too_big["error"]["message"]
    for extra in ({"format": "bmp"}, {"bbox": "1,2,3"}, {"bandIds": "5"}, {"size": "0,10"}):
        body = http.get(f"{BASE}/exportImage", params={**base, **extra}).json()
        assert body["error"]["code"] == 400, (extra, body)


# -- exportImage mosaicRule ---------------------------------------------------------------
OVERLAP = (X0 + 300, Y0 - 400, X0 + 500, Y0)  # images 1 and 2 overlap here (3 starts at +600)


def _export_rule(http, bbox, rule) -> np.ndarray:
    size = (round((bbox[2] - bbox[0]) / 10), round((bbox[3] - bbox[1]) / 10))
    params = {
        "bbox": ",".join(map(str, bbox)),
        "size": f"{size[0]},{size[1]}",
        "format": "tiff",
        "f": "image",
    }
    if rule is not None:
        params["mosaicRule"] = rule if isinstance(rule, str) else json.dumps(rule)
    r = http.get(f"{BASE}/exportImage", params=params)
    assert r.status_code == 200 and r.headers["content-type"] == "image/tiff", r.text
    with MemoryFile(r.content) as mem, mem.open() as ds:
        assert ds.transform.a == 10 and ds.nodata == 0
        return ds.read(1)


def _windows(collection, bbox, object_ids=(1, 2)) -> list[np.ndarray]:
    coll = open_collection(collection / "demo.zarr")
    size = (round((bbox[2] - bbox[0]) / 10), round((bbox[3] - bbox[1]) / 10))
    return [_window(*_stored(coll, oid), bbox, size) for oid in object_ids]


def _dist(p, q) -> float:
    return float(np.hypot(p[0] - q[0], p[1] - q[1]))


def _first_of(*arrays: np.ndarray) -> np.ndarray:
    out = np.zeros(arrays[0].shape)
    for arr in reversed(arrays):
        out = np.where(np.isfinite(arr), arr, out)
    return out.astype("uint8")


def test_export_mosaic_first_last(http, collection):
    a, b = _windows(collection, OVERLAP)
    both = np.isfinite(a) & np.isfinite(b)
    assert both.any() and (np.isfinite(a) & ~np.isfinite(b)).any()  # image 2 has a collar here
    first = _export_rule(http, OVERLAP, {"mosaicMethod": "esriMosaicNone"})
    last = _export_rule(http, OVERLAP, {"mosaicMethod": "None", "mosaicOperation": "MT_LAST"})
    np.testing.assert_array_equal(first, _export_rule(http, OVERLAP, None))  # the default
    np.testing.assert_array_equal(first, _first_of(a, b))
    np.testing.assert_array_equal(last, _first_of(b, a))
    np.testing.assert_array_equal(first[both], a[both].astype("uint8"))
    np.testing.assert_array_equal(last[both], b[both].astype("uint8"))
    np.testing.assert_array_equal(first != last, both & (a != b))
    assert (first != last).any()


def test_export_mosaic_min_max_mean(http, collection):
    a, b = _windows(collection, OVERLAP)
    stack = np.stack([a, b])
    valid = np.isfinite(stack)
    n = valid.sum(axis=0)
    filled = np.where(valid, stack, 0.0)
    lo = np.where(valid, stack, np.inf).min(axis=0)
    hi = np.where(valid, stack, -np.inf).max(axis=0)
    mean = np.floor(filled.sum(axis=0) / np.maximum(n, 1) + 0.5)
    for op, want in (("MT_MIN", lo), ("mt_max", hi), ("MT_MEAN", mean)):
        got = _export_rule(http, OVERLAP, {"mosaicMethod": "esriMosaicNone", "mosaicOperation": op})
        np.testing.assert_array_equal(got, np.where(n > 0, want, 0).astype("uint8"), err_msg=op)
    odd = (n == 2) & ((filled.sum(axis=0) % 2) == 1)
    assert odd.any()  # the rounding of .5 means is exercised


def test_export_mosaic_lock_raster(http, collection):
    a, b = _windows(collection, OVERLAP)
    got = _export_rule(
        http, OVERLAP, {"mosaicMethod": "esriMosaicLockRaster", "lockRasterIds": [2]}
    )
    np.testing.assert_array_equal(got, np.where(np.isfinite(b), b, 0).astype("uint8"))
    assert (got == 0).any() and np.isfinite(a[got == 0]).any()  # image 1 is not used
    both = _export_rule(http, OVERLAP, {"mosaicMethod": "LockRaster", "lockRasterIds": [2, 1]})
    np.testing.assert_array_equal(both, _first_of(b, a))


def test_export_mosaic_center_northwest_attribute(http, collection):
    bbox = (X0 + 450, Y0 - 400, X0 + 500, Y0)  # nearer image 2's centre and NW corner
    coll = open_collection(collection / "demo.zarr")
    cat = coll.catalog.to_pylist()
    cx = {r["ObjectID"]: (r["CenterX"], r["CenterY"]) for r in cat}
    mid, nw = (X0 + 475, Y0 - 200), (X0 + 450, Y0)
    assert _dist(cx[2], mid) < _dist(cx[1], mid)
    assert _dist(cx[2], nw) < _dist(cx[1], nw)
    a, b = _windows(collection, bbox)
    one_first, two_first = _first_of(a, b), _first_of(b, a)
    assert (one_first != two_first).any()
    np.testing.assert_array_equal(_export_rule(http, bbox, None), one_first)
    for rule in (
        {"mosaicMethod": "esriMosaicCenter"},
        {"mosaicMethod": "esriMosaicNorthwest"},
        {"mosaicMethod": "center", "mosaicOperation": "MT_FIRST"},
        {"mosaicMethod": "esriMosaicAttribute", "sortField": "objectid", "sortValue": 3},
        {"mosaicMethod": "esriMosaicAttribute", "sortField": "ObjectID", "ascending": False},
    ):
        np.testing.assert_array_equal(_export_rule(http, bbox, rule), two_first, err_msg=str(rule))
    # Far from image 2: the centre rule keeps image 1 first; a timestamp attribute works.
    left = (X0 + 300, Y0 - 400, X0 + 350, Y0)
    a, b = _windows(collection, left)
    np.testing.assert_array_equal(
        _export_rule(http, left, {"mosaicMethod": "esriMosaicCenter"}), _first_of(a, b)
    )
    rule = {"mosaicMethod": "esriMosaicAttribute", "sortField": "ingested_at", "sortValue": 0}
    assert _export_rule(http, left, rule).shape == (40, 5)


@pytest.mark.parametrize(
    "rule",
    [
        "{not json",
        "[1, 2]",
        '{"mosaicMethod": "esriMosaicSeamline"}',
        '{"mosaicMethod": "bogus"}',
        '{"mosaicOperation": "MT_BLEND"}',
        '{"mosaicOperation": "MT_NOPE"}',
        '{"mosaicMethod": "esriMosaicLockRaster"}',
        '{"mosaicMethod": "esriMosaicLockRaster", "lockRasterIds": ["x"]}',
        '{"mosaicMethod": "esriMosaicAttribute"}',
        '{"mosaicMethod": "esriMosaicAttribute", "sortField": "Name", "sortValue": 1}',
        '{"mosaicMethod": "esriMosaicAttribute", "sortField": "ObjectID", "sortValue": "x"}',
        '{"ascending": "maybe"}',
        '{"where": "bogus_field = 1"}',
        '{"where": "Name = "}',
    ],
)
def test_export_mosaic_rule_refused(http, rule):
    params = {"bbox": ",".join(map(str, OVERLAP)), "size": "20,40", "f": "json", "mosaicRule": rule}
    body = http.get(f"{BASE}/exportImage", params=params).json()
    assert body["error"]["code"] == 400, (rule, body)
    assert "mosaicRule" in body["error"]["message"] + " ".join(body["error"].get("details", []))


def test_export_mosaic_where(http, collection):
    a, b = _windows(collection, OVERLAP)
    got = _export_rule(http, OVERLAP, {"where": "Name = 'beta'"})
    np.testing.assert_array_equal(got, np.where(np.isfinite(b), b, 0).astype("uint8"))
    rule = {"mosaicMethod": "esriMosaicNone", "mosaicOperation": "MT_LAST", "where": "ObjectID < 2"}
    np.testing.assert_array_equal(
        _export_rule(http, OVERLAP, rule), np.where(np.isfinite(a), a, 0).astype("uint8")
    )
