"""``mosaicflow serve`` with its raster store in a bucket (a real moto S3 server on loopback).

The job and item tables stay in the local ``--root``; collections are published from and
written to ``--raster-store s3://bucket/prefix``. The served collection must answer like
the same collection on a local folder (descriptor, query, exportImage pixels), a GP job must
write its collection to the bucket, an update made by another process must be seen without
a restart, and outputs outside the raster store are refused with the ArcGIS error.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from affine import Affine
from rasterio.io import MemoryFile

from engine import create_image_collection, open_collection, storage
from engine.items import ItemRegistry
from engine.server import create_app
from tests.conftest import write_raster
from tests.loopback import free_port, serve, serve_command
from tests.s3server import S3Server, moto_s3_everywhere
from tests.test_cli import _script

pytest.importorskip("moto.server", reason="moto[server] (test extra) is needed")
pytest.importorskip("obstore", reason="obstore (a core dependency) is needed")

BUCKET = "rasters"
HOSTED = f"s3://{BUCKET}/hosted"
TASK = "/arcgis/rest/services/System/RasterAnalysisTools/GPServer/CreateImageCollection"
X0, Y0 = 1_000_000.0, 6_000_000.0


def _service(name: str) -> str:
    return f"/arcgis/rest/services/Hosted/{name}/ImageServer"


@pytest.fixture(scope="module")
def s3(client) -> Iterator[S3Server]:
    """The server, its variables set in this process and on the cluster's workers."""
    with moto_s3_everywhere(client, [BUCKET]) as server:
        yield server


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> Path:
    """Three overlapping rasters in one folder (a data store for the GP tests)."""
    d = tmp_path_factory.mktemp("s3-serve-in")
    for i, name in enumerate(["alpha", "beta", "gamma"]):
        write_raster(
            d / f"{name}.tif",
            crs="EPSG:3857",
            transform=Affine(10, 0, X0 + i * 300, 0, -10, Y0 - i * 100),
            shape=(40, 50),
            dtype="uint16",
            nodata=0,
            bands=2,
            seed=i,
        )
    return d


@pytest.fixture(scope="module")
def demo(s3, inputs, client, tmp_path_factory) -> tuple[Path, str]:
    """The same collection ``demo`` in a local folder and under ``HOSTED`` in the bucket."""
    local = tmp_path_factory.mktemp("s3-serve-local")
    sources = sorted(str(p) for p in inputs.glob("*.tif"))
    for store in (str(local / "demo.zarr"), f"{HOSTED}/demo.zarr"):
        made = create_image_collection(
            sources, image_collection=store, context={"outSR": 3857}, client=client
        )
        assert made.exit_code == 0, [r.message for r in made.failed]
    return local, f"{HOSTED}/demo.zarr"


def _keys(s3: S3Server, prefix: str) -> list[str]:
    pages = s3.client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix)
    return [o["Key"] for page in pages for o in page.get("Contents", [])]


def _export(http: httpx.Client, name: str, bbox: tuple[float, ...], size: str) -> np.ndarray:
    r = http.get(
        f"{_service(name)}/exportImage",
        params={
            "bbox": ",".join(map(str, bbox)),
            "bboxSR": "3857",
            "size": size,
            "format": "tiff",
            "f": "image",
        },
    )
    assert r.headers["content-type"] == "image/tiff", r.text
    with MemoryFile(r.content) as mem, mem.open() as ds:
        return ds.read()


def _object_ids(http: httpx.Client, name: str) -> list[int]:
    body = http.get(
        f"{_service(name)}/query", params={"f": "json", "where": "1=1", "outFields": "*"}
    ).json()
    return [f["attributes"]["ObjectID"] for f in body["features"]]


def _wait(http: httpx.Client, job_id: str, timeout: float = 120) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        st: dict[str, Any] = http.get(f"{TASK}/jobs/{job_id}", params={"f": "json"}).json()
        if st["jobStatus"] in ("esriJobSucceeded", "esriJobFailed", "esriJobCancelled"):
            return st
        assert time.monotonic() < deadline, st
        time.sleep(0.1)


def test_a_collection_in_the_bucket_is_served_like_the_local_one(demo, tmp_path):
    local, remote = demo
    bbox = (X0 - 100, Y0 - 700, X0 + 1200, Y0 + 100)  # all three images and some margin
    size = "130,80"  # the store's own 10 m grid

    with serve(create_app(tmp_path / "root-local", raster_store=local)) as http:
        want = _export(http, "demo", bbox, size)
        want_desc = http.get(_service("demo"), params={"f": "json"}).json()

    with serve(create_app(tmp_path / "root", raster_store=HOSTED)) as http:
        desc = http.get(_service("demo"), params={"f": "json"}).json()
        assert desc == json.loads(storage.read_bytes(f"{remote}/service.json"))
        assert desc["name"] == "demo" and desc["bandCount"] == 2
        for key in ("extent", "pixelType", "pixelSizeX", "pixelSizeY", "bandCount", "fields"):
            assert desc[key] == want_desc[key], key

        body = http.get(
            f"{_service('demo')}/query",
            params={"f": "json", "where": "1=1", "outFields": "ObjectID,Name"},
        ).json()
        rows = {f["attributes"]["ObjectID"]: f["attributes"]["Name"] for f in body["features"]}
        catalog = open_collection(remote).catalog.to_pylist()
        assert rows == {r["ObjectID"]: r["Name"] for r in catalog}
        assert sorted(rows.values()) == ["alpha", "beta", "gamma"]

        got = _export(http, "demo", bbox, size)
        assert got.shape == (2, 80, 130) and (got != 0).any()
        np.testing.assert_array_equal(got, want)

        missing = http.get(_service("nope"), params={"f": "json"}).json()["error"]
        assert (missing["code"], missing["message"]) == (404, "Service not found")
    # the local root holds the tables, nothing of the collection
    assert (tmp_path / "root" / "jobs.sqlite").is_file()
    assert not [p for p in (tmp_path / "root").iterdir() if p.suffix == ".zarr"]


def test_a_job_writes_its_collection_to_the_bucket_and_it_is_served(s3, inputs, client, tmp_path):
    root = tmp_path / "root"
    app = create_app(
        root,
        raster_store=f"s3://{BUCKET}/jobs",
        client_factory=lambda: client,
        data_stores={"imagery": inputs},
    )
    with serve(app) as http:
        job = http.post(
            f"{TASK}/submitJob",
            data={
                "f": "json",
                "inputRasters": json.dumps({"uris": ["/imagery/alpha.tif", "/imagery/beta.tif"]}),
                "imageCollection": json.dumps({"serviceProperties": {"name": "made"}}),
                "context": json.dumps({"outSR": {"wkid": 3857}}),
            },
        ).json()
        st = _wait(http, job["jobId"])
        assert st["jobStatus"] == "esriJobSucceeded", st

        keys = _keys(s3, "jobs/made.zarr/")
        for name in ("zarr.json", "catalog.parquet", "service.json", "stac/collection.json"):
            assert f"jobs/made.zarr/{name}" in keys
        assert not (root / "made.zarr").exists()
        result = http.get(f"{TASK}/jobs/{job['jobId']}/results/result", params={"f": "json"})
        item = ItemRegistry(root / "items.sqlite").get(result.json()["value"]["itemId"])
        assert item["path"] == f"s3://{BUCKET}/jobs/made.zarr"  # registered as given

        assert _object_ids(http, "made") == [1, 2]
        desc = http.get(_service("made"), params={"f": "json"}).json()
        assert desc["bandCount"] == 2 and desc["name"] == "made"

        # an explicit uri inside the raster store is accepted and published by its name
        inside = http.post(
            f"{TASK}/submitJob",
            data={
                "f": "json",
                "inputRasters": json.dumps({"uris": ["/imagery/gamma.tif"]}),
                "imageCollection": json.dumps({"uri": f"s3://{BUCKET}/jobs/explicit.zarr"}),
            },
        ).json()
        assert _wait(http, inside["jobId"])["jobStatus"] == "esriJobSucceeded"
        assert _object_ids(http, "explicit") == [1]


def test_outputs_outside_the_raster_store_are_refused(s3, inputs, tmp_path):
    root = tmp_path / "root"
    app = create_app(root, raster_store=f"s3://{BUCKET}/jobs", data_stores={"imagery": inputs})
    outside = [
        f"s3://{BUCKET}/elsewhere/x.zarr",  # the bucket, not the prefix
        f"s3://{BUCKET}/jobsx/x.zarr",  # a sibling prefix sharing the name's start
        f"s3://{BUCKET}/jobs/../x.zarr",  # object stores do not resolve ..
        "s3://other/jobs/x.zarr",
        f"gs://{BUCKET}/jobs/x.zarr",
        str(tmp_path / "x.zarr"),
    ]
    with serve(app) as http:
        for uri in outside:
            answer = http.post(
                f"{TASK}/submitJob",
                data={
                    "f": "json",
                    "inputRasters": json.dumps({"uris": ["/imagery/alpha.tif"]}),
                    "imageCollection": json.dumps({"uri": uri}),
                },
            ).json()
            error = answer.get("error")
            assert error is not None and error["code"] == 400, (uri, answer)
            assert "imageCollection" in error["message"]
            assert any("outside the server's raster store" in d for d in error["details"]), error
            assert any(f"s3://{BUCKET}/jobs/NAME.zarr" in d for d in error["details"]), error
    assert _keys(s3, "elsewhere/") == _keys(s3, "jobsx/") == []
    assert not (tmp_path / "x.zarr").exists()


def test_an_update_in_the_bucket_is_served_without_restart(s3, inputs, client, tmp_path):
    """Another process removes an image (``mosaicflow remove``): the next requests see it."""
    store = f"{HOSTED}/living.zarr"
    made = create_image_collection(
        sorted(str(p) for p in inputs.glob("*.tif")),
        image_collection=store,
        context={"outSR": 3857},
        client=client,
    )
    assert made.exit_code == 0
    gone = next(r.image_id for r in made.complete if r.name == "beta")
    with serve(create_app(tmp_path / "root", raster_store=HOSTED)) as http:
        assert _object_ids(http, "living") == [1, 2, 3]
        bbox = (X0 + 500, Y0 - 500, X0 + 600, Y0 - 100)  # where beta alone has pixels
        before = _export(http, "living", bbox, "10,40")
        assert (before != 0).all()

        env = {k: v for k, v in os.environ.items() if k != "DASK_SCHEDULER_ADDRESS"}
        removed = subprocess.run(
            [_script(), "remove", store, gone], env=env, capture_output=True, text=True, timeout=120
        )
        assert removed.returncode == 0, removed.stderr

        assert _object_ids(http, "living") == [1, 3]
        assert (_export(http, "living", bbox, "10,40") == 0).all()  # no-data there now
        assert _keys(s3, f"hosted/living.zarr/images/{gone}/") == []


def test_the_serve_command_publishes_the_bucket(s3, demo, tmp_path):
    _, remote = demo
    port = free_port()
    args = [_script(), "serve", "--root", str(tmp_path / "root"), "--port", str(port)]
    args += ["--raster-store", HOSTED + "/"]  # a trailing slash is the same prefix
    with serve_command(args, f"http://127.0.0.1:{port}") as http:
        desc = http.get(_service("demo"), params={"f": "json"}).json()
        assert desc == json.loads(storage.read_bytes(f"{remote}/service.json"))
        assert _object_ids(http, "demo") == [1, 2, 3]

    bad = subprocess.run(
        [_script(), "serve", "--root", str(tmp_path / "root"), "--raster-store", "ftp://h/x"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert bad.returncode == 2, bad.stderr
    assert "--raster-store" in bad.stderr and "s3://BUCKET/PREFIX" in bad.stderr
