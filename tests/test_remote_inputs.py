"""Inputs from object storage and the web: a real S3-compatible server (moto's server mode)
and a Range-capable HTTP server on loopback, one of them failing some requests.

GDAL reads s3:// through /vsis3/ with the usual AWS_* variables and http(s):// through
/vsicurl/ with Range requests. The collections must equal ones made from local copies;
a missing object fails that image alone, with a reason; transient failures are retried.
"""

from __future__ import annotations

import json
import shutil
import sys
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from affine import Affine

from engine import create_image_collection, open_collection
from tests.conftest import write_raster
from tests.loopback import free_port, serve_command
from tests.s3server import moto_s3

pytest.importorskip("moto.server", reason="moto[server] (test extra) is needed")


@pytest.fixture(scope="module")
def rasters(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("remote-src")
    for i in range(3):
        write_raster(
            d / f"r{i}.tif",
            crs="EPSG:32633",
            transform=Affine(20, 0, 500_000 + i * 900, 0, -20, 4_650_000),
            shape=(400, 420),
            dtype="uint16",
            nodata=0,
            seed=i,
        )
    return d


@pytest.fixture(scope="module")
def local_reference(rasters, tmp_path_factory, client) -> dict[str, str]:
    """Checksums by image name of the collection made from the local files."""
    out = tmp_path_factory.mktemp("remote-ref") / "ref.zarr"
    create_image_collection(
        [str(rasters / f"r{i}.tif") for i in range(3)], image_collection=str(out), client=client
    )
    t = pq.read_table(out / "catalog.parquet").to_pydict()
    return dict(zip(t["Name"], t["checksum"], strict=True))


def _by_name(store: Path) -> dict[str, dict]:
    t = pq.read_table(store / "catalog.parquet").to_pylist()
    return {row["Name"]: row for row in t}


# -- S3 ------------------------------------------------------------------------------------
@pytest.fixture
def s3(rasters, monkeypatch) -> Iterator[str]:
    """A moto S3 server on loopback holding the rasters in bucket 'imagery'."""
    with moto_s3(["imagery"]) as server:
        for k, v in server.env.items():
            monkeypatch.setenv(k, v)
        for i in range(3):
            server.client.upload_file(str(rasters / f"r{i}.tif"), "imagery", f"scenes/r{i}.tif")
        yield server.endpoint


def test_s3_inputs_equal_local_and_a_missing_object_fails_alone(s3, tmp_path, local_reference):
    """The workers run in this process (no client given): they read the AWS_* settings."""
    uris = [f"s3://imagery/scenes/r{i}.tif" for i in range(3)] + ["s3://imagery/scenes/gone.tif"]
    out = tmp_path / "s3.zarr"
    result = create_image_collection(uris, image_collection=str(out), workers=1)
    rows = _by_name(out)
    assert {n: r["checksum"] for n, r in rows.items() if r["status"] == "complete"} == (
        local_reference
    )
    assert rows["r0"]["source_uris"] == ["s3://imagery/scenes/r0.tif"]
    assert [r.name for r in result.failed] == ["gone"]
    assert "object not found" in result.failed[0].message, result.failed[0].message


# -- HTTP with Range, flaky ------------------------------------------------------------------
@contextmanager
def _http_server(folder: Path) -> Iterator[str]:
    """tests/range_server.py in its own process (GDAL holds the GIL while it reads, so a
    server in a thread of this process could not answer)."""
    port = free_port()
    args = [sys.executable, "-m", "tests.range_server", str(folder), str(port)]
    base = f"http://127.0.0.1:{port}"
    with serve_command(args, base, ready_path="/_counts"):
        yield base


def _counts(base: str) -> dict[str, int]:
    return json.loads(urllib.request.urlopen(f"{base}/_counts", timeout=5).read())


def test_http_inputs_with_transient_and_persistent_failures(
    rasters, tmp_path, local_reference, monkeypatch
):
    folder = tmp_path / "www"
    shutil.copytree(rasters, folder)
    # no GDAL-level HTTP retries: the chunk task's own retries must get through
    monkeypatch.setenv("GDAL_HTTP_MAX_RETRY", "0")
    with _http_server(folder) as base:
        uris = [f"{base}/r0.tif", f"{base}/flaky/r1.tif", f"{base}/broken/r2.tif"]
        out = tmp_path / "http.zarr"
        result = create_image_collection(uris, image_collection=str(out), workers=1)
        counts = _counts(base)
    rows = _by_name(out)
    assert rows["r0"]["checksum"] == local_reference["r0"]
    assert rows["r1"]["checksum"] == local_reference["r1"]  # read through the failures
    assert counts.get("failed", 0) >= 1, counts  # the flaky path did fail ...
    # ... more often than GDAL's own read retries cover: the chunk task retried, and said so
    assert counts["failed"] >= 3 and rows["r1"]["read_retries"] >= 1, counts
    assert rows["r0"]["read_retries"] is None
    assert [r.name for r in result.failed] == ["r2"]
    assert "HTTP 500" in result.failed[0].message, result.failed[0].message
    coll = open_collection(out)
    a = coll.image(rows["r1"]["image_id"])["b1"].values
    assert np.isfinite(a).any()
