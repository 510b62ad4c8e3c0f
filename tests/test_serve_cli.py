"""``mosaicflow serve``: the real command on a loopback port, with data stores and a token.

Inputs resolve only inside registered data stores (``/NAME/rel/path`` or absolute paths
inside); traversal and paths elsewhere are refused before a job exists; outputs go to the
raster store. The server process is started and stopped by the test.
"""

from __future__ import annotations

import json
import subprocess
import time

import httpx
import pytest
from affine import Affine

from tests.conftest import write_raster
from tests.loopback import free_port, self_signed_cert, serve_command
from tests.test_cli import _script

TASK = "/arcgis/rest/services/System/RasterAnalysisTools/GPServer/CreateImageCollection"


@pytest.fixture
def server(tmp_path):
    data = tmp_path / "imagery"
    data.mkdir()
    write_raster(
        data / "a.tif",
        crs="EPSG:32633",
        transform=Affine(30, 0, 500_000, 0, -30, 4_650_000),
        shape=(80, 90),
        dtype="uint8",
        nodata=0,
    )
    (tmp_path / "token").write_text("tok\n")
    port = free_port()
    args = [_script(), "serve", "--root", str(tmp_path / "store"), "--port", str(port)]
    args += ["--data-store", f"imagery={data}", "--token-file", str(tmp_path / "token")]
    with serve_command(args, f"http://127.0.0.1:{port}") as http:
        yield http, tmp_path


def submit(http, uris, name="served"):
    return http.post(
        f"{TASK}/submitJob",
        data={
            "f": "json",
            "token": "tok",
            "inputRasters": json.dumps({"uris": uris}),
            "imageCollection": json.dumps({"serviceProperties": {"name": name}}),
            "context": json.dumps({"outSR": {"wkid": 3857}}),
        },
    ).json()


def test_data_store_relative_uri_runs_end_to_end(server):
    http, tmp = server
    job = submit(http, ["/imagery/a.tif"])
    assert "jobId" in job, job
    for _ in range(300):
        st = http.get(f"{TASK}/jobs/{job['jobId']}", params={"f": "json", "token": "tok"}).json()
        if st["jobStatus"] in ("esriJobSucceeded", "esriJobFailed"):
            break
        time.sleep(0.2)
    assert st["jobStatus"] == "esriJobSucceeded", st
    assert (tmp / "store" / "served.zarr" / "catalog.parquet").exists()
    desc = http.get(
        "/arcgis/rest/services/Hosted/served/ImageServer", params={"f": "json", "token": "tok"}
    )
    assert desc.json()["bandCount"] == 1


@pytest.mark.parametrize(
    "uri",
    ["/imagery/../token", "/etc/hostname", "file:///etc/hostname", "/nostore/a.tif"],
)
def test_paths_outside_the_data_stores_are_refused(server, uri):
    http, tmp = server
    answer = submit(http, [uri])
    assert answer.get("error", {}).get("code") == 400, answer
    assert not (tmp / "store" / "served.zarr").exists()


def test_token_is_required(server):
    http, _ = server
    assert http.get(f"{TASK}?f=json").json()["error"]["code"] == 499


def test_items_add_then_an_itemids_job_becomes_an_item(server):
    http, tmp = server
    added = subprocess.run(
        [
            _script(),
            "items",
            "add",
            str(tmp / "imagery" / "a.tif"),
            "--root",
            str(tmp / "store"),
            "--folder",
            "scenes",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert added.returncode == 0, added.stderr
    item = json.loads(added.stdout)
    job = http.post(
        f"{TASK}/submitJob",
        data={
            "f": "json",
            "token": "tok",
            "inputRasters": json.dumps({"itemIds": [item["id"]]}),
            "imageCollection": json.dumps({"serviceProperties": {"name": "byitem"}}),
        },
    ).json()
    assert "jobId" in job, job
    for _ in range(300):
        st = http.get(f"{TASK}/jobs/{job['jobId']}", params={"f": "json", "token": "tok"}).json()
        if st["jobStatus"] in ("esriJobSucceeded", "esriJobFailed"):
            break
        time.sleep(0.2)
    assert st["jobStatus"] == "esriJobSucceeded", st
    result = http.get(
        f"{TASK}/jobs/{job['jobId']}/results/result", params={"f": "json", "token": "tok"}
    ).json()["value"]
    portal_item = http.get(
        f"/portal/sharing/rest/content/items/{result['itemId']}",
        params={"f": "json", "token": "tok"},
    ).json()
    assert portal_item["type"] == "Image Service" and portal_item["url"] == result["url"]
    unknown = http.post(
        f"{TASK}/submitJob",
        data={
            "f": "json",
            "token": "tok",
            "inputRasters": json.dumps({"itemIds": ["0" * 32]}),
            "imageCollection": json.dumps({"serviceProperties": {"name": "nope"}}),
        },
    ).json()
    assert unknown["error"]["code"] == 400


def test_https_with_tls_cert_and_key(tmp_path):
    """ArcGIS clients insist on https: --tls-cert/--tls-key serve TLS on the same routes."""
    cert, key = self_signed_cert(tmp_path)
    port = free_port()
    args = [_script(), "serve", "--root", str(tmp_path / "store"), "--port", str(port)]
    args += ["--tls-cert", str(cert), "--tls-key", str(key)]
    with serve_command(args, f"https://127.0.0.1:{port}", verify=str(cert)) as http:
        info = http.get("/arcgis/rest/info", params={"f": "json"}).json()
        assert info["currentVersion"] == 11.3
        with pytest.raises(httpx.TransportError):  # plain http is not served on that port
            httpx.get(f"http://127.0.0.1:{port}/arcgis/rest/info", timeout=5)
