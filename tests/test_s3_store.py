"""Collections written to and read from s3:// (a real moto S3 server on loopback).

The chunk tasks run on the session's LocalCluster worker processes and write their chunks
straight to the bucket; the workers get the AWS_* variables as a deployment would give
them (their environment), nothing through a shared file system. The collection must equal
one made from the same inputs on a local path, pixel for pixel, and everything around it
(catalog, STAC, descriptor, resume, add/remove, verify, the writer lock) must work on the
bucket.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import rioxarray  # noqa: F401  (the .rio accessor)
from affine import Affine

from engine import create_image_collection, open_collection, storage
from engine.errors import StoreError
from engine.lock import LOCK_NAME, ObjectLock, StoreLock, store_lock
from engine.update import add_images, remove_images
from engine.verify import verify_collection
from tests.conftest import write_raster
from tests.s3server import S3Server, moto_s3_everywhere

pytest.importorskip("moto.server", reason="moto[server] (test extra) is needed")
pytest.importorskip("obstore", reason="obstore (a core dependency) is needed")

BUCKET = "collections"


@pytest.fixture(scope="module")
def s3(client) -> Iterator[S3Server]:
    """The server, its variables set in this process and on the cluster's workers."""
    with moto_s3_everywhere(client, [BUCKET]) as server:
        yield server


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> dict[str, str]:
    """Three small rasters and one corrupt file, by name."""
    d = tmp_path_factory.mktemp("s3-store-src")
    out = {}
    for i in range(3):
        out[f"r{i}"] = str(
            write_raster(
                d / f"r{i}.tif",
                crs="EPSG:32633",
                transform=Affine(20, 0, 500_000 + i * 900, 0, -20, 4_650_000 - i * 300),
                shape=(180, 200),
                dtype="uint16",
                nodata=0,
                bands=2,
                seed=10 + i,
            )
        )
    bad = d / "bad.tif"
    bad.write_bytes(b"II*\x00" + b"\x00" * 64)  # a TIFF header and nothing usable
    out["bad"] = str(bad)
    return out


@pytest.fixture(scope="module")
def local(inputs, client, tmp_path_factory):
    """The same request on a local path: the reference."""
    out = tmp_path_factory.mktemp("s3-store-ref") / "ref.zarr"
    create_image_collection(list(inputs.values()), image_collection=str(out), client=client)
    return open_collection(out)


def _rows(coll) -> dict[str, dict]:
    return {r["Name"]: r for r in coll.catalog.to_pylist()}


def _keys(s3: S3Server, prefix: str) -> list[str]:
    pages = s3.client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix)
    return [o["Key"] for page in pages for o in page.get("Contents", [])]


def test_create_on_s3_equals_local_and_resumes(s3, inputs, local, client, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)  # a URL mistaken for a path would appear here as ./s3:
    uri = f"s3://{BUCKET}/c.zarr"
    result = create_image_collection(list(inputs.values()), image_collection=uri, client=client)

    assert result.exit_code == 3  # the corrupt file fails alone, the others complete
    assert [r.name for r in result.failed] == ["bad"]
    assert list(tmp_path.iterdir()) == []
    coll = open_collection(uri)
    rows, ref = _rows(coll), _rows(local)
    assert {n: r["status"] for n, r in rows.items()} == {
        "r0": "complete", "r1": "complete", "r2": "complete", "bad": "failed"
    }  # fmt: skip
    assert {n: r["checksum"] for n, r in rows.items()} == {n: r["checksum"] for n, r in ref.items()}
    assert coll.image_ids == local.image_ids
    for image_id in coll.image_ids:
        got, want = coll.image(image_id), local.image(image_id)
        for band in ("b1", "b2"):
            np.testing.assert_array_equal(got[band].values, want[band].values)
        assert got.rio.crs == want.rio.crs and got.rio.transform() == want.rio.transform()

    # the mosaic renderer (exportImage's) reads the bucket's chunks through zarr
    np.testing.assert_array_equal(coll.mosaic().values, local.mosaic().values)

    # the descriptor and the STAC tree are in the bucket, and agree with the catalog
    assert coll.descriptor["bandCount"] == 2
    assert coll.descriptor["mosaicflow"]["store"] == uri
    stac = json.loads(storage.read_bytes(f"{uri}/stac/collection.json"))
    items = {link["href"] for link in stac["links"] if link["rel"] == "item"}
    assert items == {f"./items/{i}.json" for i in coll.image_ids}
    assert sorted(k for k in _keys(s3, "c.zarr/stac/items/")) == sorted(
        f"c.zarr/stac/items/{i}.json" for i in coll.image_ids
    )
    verified = verify_collection(uri)
    assert (verified["checked"], verified["bad"]) == (3, 0)
    assert not storage.exists(f"{uri}/{LOCK_NAME}")  # released

    # resume: the same request recomputes nothing and lists the same rows
    events: list[dict] = []
    again = create_image_collection(
        list(inputs.values()), image_collection=uri, client=client, progress=events.append
    )
    planned = next(e for e in events if e["stage"] == "planned")
    assert planned["skipped"] == 3 and planned["chunks"] == 0
    assert again.exit_code == 3
    rows_again = _rows(open_collection(uri))
    assert {n: (r["ObjectID"], r["checksum"]) for n, r in rows_again.items()} == {
        n: (r["ObjectID"], r["checksum"]) for n, r in rows.items()
    }


def test_add_and_remove_on_s3(s3, inputs, local, client):
    uri = f"s3://{BUCKET}/living.zarr"
    first = create_image_collection([inputs["r0"]], image_collection=uri, client=client)
    assert first.exit_code == 0
    r0_item = f"living.zarr/stac/items/{first.complete[0].image_id}.json"
    before = s3.client.head_object(Bucket=BUCKET, Key=r0_item)["LastModified"]
    time.sleep(1.1)  # LastModified has one-second resolution
    added = add_images(uri, [inputs["r1"]], client=client)
    assert [r.name for r in added.complete] == ["r1"]
    rows = _rows(open_collection(uri))
    assert {n: r["ObjectID"] for n, r in rows.items()} == {"r0": 1, "r1": 2}
    assert rows["r1"]["checksum"] == _rows(local)["r1"]["checksum"]
    # the add PUT r1's STAC item and the collection, not r0's unchanged item again
    assert s3.client.head_object(Bucket=BUCKET, Key=r0_item)["LastModified"] == before
    collection_doc = json.loads(storage.read_bytes(f"{uri}/stac/collection.json"))
    assert len([ln for ln in collection_doc["links"] if ln["rel"] == "item"]) == 2

    gone = rows["r0"]["image_id"]
    assert remove_images(uri, [gone]) == [gone]
    rows = _rows(open_collection(uri))
    assert {n: r["ObjectID"] for n, r in rows.items()} == {"r1": 2}
    assert _keys(s3, f"living.zarr/images/{gone}/") == []  # its group is deleted
    assert _keys(s3, "living.zarr/stac/items/") == [
        f"living.zarr/stac/items/{rows['r1']['image_id']}.json"
    ]  # and its STAC item
    verified = verify_collection(uri)
    assert (verified["checked"], verified["bad"]) == (1, 0)


def test_an_endpoint_given_as_aws_endpoint_url_serves_gdal_and_the_store(
    s3, inputs, local, monkeypatch
):
    """Inputs read by GDAL from the bucket and the store written to it, with the endpoint
    given only in the AWS SDKs' form (workers in this process: they share its variables)."""
    for name in ("r0", "r2"):
        s3.client.upload_file(inputs[name], BUCKET, f"inputs/{name}.tif")
    for var in ("AWS_S3_ENDPOINT", "AWS_HTTPS", "AWS_VIRTUAL_HOSTING"):
        monkeypatch.delenv(var)
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3.endpoint)
    uri = f"s3://{BUCKET}/sdk.zarr"
    result = create_image_collection(
        [f"s3://{BUCKET}/inputs/{n}.tif" for n in ("r0", "r2")], image_collection=uri, workers=1
    )
    assert result.exit_code == 0, [r.message for r in result.failed]
    rows, ref = _rows(open_collection(uri)), _rows(local)
    assert {n: r["checksum"] for n, r in rows.items()} == {
        n: ref[n]["checksum"] for n in ("r0", "r2")
    }


def test_cli_create_and_verify_on_s3(s3, inputs, tmp_path):
    uri = f"s3://{BUCKET}/cli.zarr"
    names = ("r0", "r1", "r2")
    created = _cli(
        "create", uri, *(inputs[n] for n in names), "--workers", "1", "--json", cwd=tmp_path
    )
    assert created.returncode == 0, created.stderr
    assert json.loads(created.stdout)["complete"] == 3
    verified = _cli("verify", uri, "--json", cwd=tmp_path)  # info's reads and more
    assert verified.returncode == 0, verified.stderr
    assert (json.loads(verified.stdout)["checked"], json.loads(verified.stdout)["bad"]) == (3, 0)
    assert list(tmp_path.iterdir()) == []


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    beside = Path(sys.executable).with_name("mosaicflow")
    script = str(beside) if beside.exists() else shutil.which("mosaicflow")
    if not script:
        pytest.skip("the mosaicflow console script is not installed (pip install -e .)")
    env = {k: v for k, v in os.environ.items() if k != "DASK_SCHEDULER_ADDRESS"}
    return subprocess.run(
        [script, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=180
    )


# -- the writer lock on the bucket ---------------------------------------------------------


def test_second_writer_is_refused_while_the_lock_is_held(s3):
    uri = f"s3://{BUCKET}/locked.zarr"
    with store_lock(uri, "add"):
        other = store_lock(uri, "remove", timeout=0.3, poll=0.05)
        with pytest.raises(StoreError, match="locked by add"):
            other.acquire()
    with store_lock(uri, "remove"):  # released: the next writer gets it
        assert json.loads(storage.read_bytes(f"{uri}/{LOCK_NAME}"))["purpose"] == "remove"
    assert not storage.exists(f"{uri}/{LOCK_NAME}")


def test_stale_lock_is_taken_over_once_and_its_holder_learns_it(s3):
    location = f"s3://{BUCKET}/stale.zarr/{LOCK_NAME}"
    silent = ObjectLock(location)
    old = {"token": "t-old", "host": "elsewhere", "pid": 1, "purpose": "add"}
    assert silent.create({**old, "heartbeat": time.time() - 3600})

    # two contenders find the same stale lock: only one take-over succeeds
    a, b = ObjectLock(location), ObjectLock(location)
    seen_a, seen_b = a.read(), b.read()
    assert seen_a is not None and seen_b is not None and seen_a["token"] == "t-old"
    assert [a.take_over(seen_a), b.take_over(seen_b)] == [True, False]

    with StoreLock(ObjectLock(location), "create", timeout=5, stale_after=60) as lock:
        holder = ObjectLock(location).read()
        assert holder is not None and holder["token"] == lock.token
        # the silent holder wakes up: its heartbeat is refused, it no longer holds the lock
        assert not silent.refresh("t-old", {**old, "heartbeat": time.time()})
    assert ObjectLock(location).read() is None


def test_a_stale_lock_left_by_a_dead_writer_does_not_block(s3):
    uri = f"s3://{BUCKET}/dead.zarr"
    dead = {"token": "t-dead", "host": "gone", "pid": 1, "heartbeat": time.time() - 3600}
    storage.write_bytes(f"{uri}/{LOCK_NAME}", json.dumps(dead).encode())
    with store_lock(uri, "add", timeout=5, stale_after=60) as lock:
        holder = json.loads(storage.read_bytes(f"{uri}/{LOCK_NAME}"))
        assert holder["token"] == lock.token


def test_one_resolution_of_the_aws_variables_serves_gdal_and_the_store_writer():
    gdal_form = {"AWS_S3_ENDPOINT": "minio:9000", "AWS_HTTPS": "NO", "AWS_REGION": "eu-west-1"}
    assert storage.s3_settings(gdal_form) == {
        "endpoint": "http://minio:9000",
        "allow_http": "true",
        "virtual_hosted_style_request": "false",
        "region": "eu-west-1",
    }
    assert storage.gdal_s3_env(gdal_form) == {}  # GDAL has its own form already
    sdk_form = {"AWS_ENDPOINT_URL": "https://s3.example.org", "AWS_DEFAULT_REGION": "x-1"}
    assert storage.s3_settings(sdk_form)["endpoint"] == "https://s3.example.org"
    assert storage.gdal_s3_env(sdk_form) == {
        "AWS_S3_ENDPOINT": "s3.example.org",
        "AWS_HTTPS": "YES",
        "AWS_VIRTUAL_HOSTING": "FALSE",
    }
    # AWS itself: nothing to set, obstore and GDAL use their defaults (virtual hosting)
    assert storage.s3_settings({"AWS_SESSION_TOKEN": "t"}) == {"session_token": "t"}
    with pytest.raises(StoreError, match="s3://BUCKET/PREFIX"):
        storage.normalize("ftp://host/c.zarr")
