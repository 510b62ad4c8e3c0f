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


def test_a_job_cut_off_by_a_killed_server_resumes_after_restart(tmp_path, client):
    """SIGKILL the real server while a job computes; the restarted server resumes the job,
    and the collection equals one made without interruption (same images, same checksums)."""
    import signal

    import pyarrow.parquet as pq

    from engine import create_image_collection

    data = tmp_path / "imagery"
    data.mkdir()
    for i in range(12):
        write_raster(
            data / f"s{i:02d}.tif",
            crs="EPSG:32633",
            transform=Affine(10, 0, 500_000 + i * 3000, 0, -10, 4_650_000),
            shape=(700, 700),
            dtype="uint16",
            nodata=0,
            seed=i,
        )
    port = free_port()
    args = [_script(), "serve", "--root", str(tmp_path / "store"), "--port", str(port)]
    args += ["--data-store", f"imagery={data}"]
    params = {
        "f": "json",
        "inputRasters": json.dumps({"uris": ["/imagery/"]}),
        "imageCollection": json.dumps({"serviceProperties": {"name": "cut"}}),
        "context": json.dumps({"outSR": {"wkid": 3857}, "resamplingMethod": "CUBIC"}),
    }
    base = f"http://127.0.0.1:{port}"
    with serve_command(args, base) as http:
        job_id = http.post(f"{TASK}/submitJob", data=params).json()["jobId"]
        for _ in range(600):
            st = http.get(f"{TASK}/jobs/{job_id}", params={"f": "json"}).json()
            if 0 < st.get("progress", {}).get("percent", 0) < 100:
                break
            assert st["jobStatus"] not in ("esriJobSucceeded", "esriJobFailed"), st
            time.sleep(0.05)
        else:
            pytest.fail(f"the job never reported progress: {st}")
        http.server_process.send_signal(signal.SIGKILL)  # hard, mid-compute
        http.server_process.wait(timeout=30)
    store = tmp_path / "store" / "cut.zarr"
    assert not (store / "catalog.parquet").exists()  # nothing shown as complete yet

    with serve_command(args, base) as http:
        for _ in range(900):
            st = http.get(f"{TASK}/jobs/{job_id}", params={"f": "json"}).json()
            if st["jobStatus"] in ("esriJobSucceeded", "esriJobFailed"):
                break
            time.sleep(0.1)
        assert st["jobStatus"] == "esriJobSucceeded", st
        warnings = [m["description"] for m in st["messages"] if m["type"].endswith("Warning")]
        assert any("server restarted" in w for w in warnings), st["messages"]

    clean = tmp_path / "clean.zarr"
    create_image_collection(
        [str(data)],
        image_collection=str(clean),
        context={"outSR": {"wkid": 3857}, "resamplingMethod": "CUBIC"},
        client=client,
    )
    resumed = pq.read_table(store / "catalog.parquet").to_pydict()
    expected = pq.read_table(clean / "catalog.parquet").to_pydict()
    assert len(resumed["image_id"]) == 12 and set(resumed["status"]) == {"complete"}
    assert dict(zip(resumed["image_id"], resumed["checksum"], strict=True)) == dict(
        zip(expected["image_id"], expected["checksum"], strict=True)
    )
