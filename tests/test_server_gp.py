"""The CreateImageCollection GP service over real HTTP (uvicorn in a thread, httpx)."""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from affine import Affine

from engine.jobs import EXECUTING, JobStore
from engine.request import parse_request
from engine.server import create_app
from tests.conftest import write_raster
from tests.loopback import serve

TASK = "/arcgis/rest/services/System/RasterAnalysisTools/GPServer/CreateImageCollection"


def _raster(d: Path, name: str, seed: int) -> Path:
    return write_raster(
        d / name,
        crs="EPSG:32633",
        transform=Affine(30, 0, 500_000 + 1000 * seed, 0, -30, 4_650_000),
        shape=(60, 70),
        nodata=0,
        seed=seed,
    )


def _params(uris: list[str], **over: Any) -> dict[str, str]:
    params = {
        "inputRasters": json.dumps({"uris": uris}),
        "rasterType": json.dumps({"rasterTypeName": "Raster Dataset"}),
        "imageCollection": json.dumps({"serviceProperties": {"name": "uavcollection"}}),
        "context": json.dumps({"outSR": {"wkid": 102100}}),
        "f": "json",
    }
    return params | over


def _wait(http: httpx.Client, job_id: str, timeout: float = 60, **extra: str) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        st: dict[str, Any] = http.get(f"{TASK}/jobs/{job_id}", params={"f": "json", **extra}).json()
        if st["jobStatus"] in ("esriJobSucceeded", "esriJobFailed", "esriJobCancelled"):
            return st
        assert time.monotonic() < deadline, st
        time.sleep(0.1)


def _texts(status: dict[str, Any], kind: str) -> list[str]:
    return [m["description"] for m in status["messages"] if m["type"].endswith(kind)]


def _job_count(root: Path) -> int:
    with sqlite3.connect(root / "jobs.sqlite") as c:
        count: int = c.execute("SELECT COUNT(*) FROM jobs").fetchone()[0]
    return count


@pytest.fixture
def rasters(tmp_path: Path) -> list[str]:
    d = tmp_path / "in"
    d.mkdir()
    return [str(_raster(d, "a.tif", 1)), str(_raster(d, "b.tif", 2))]


def test_seed_request_by_get_and_post(tmp_path, rasters, client):
    root = tmp_path / "store"
    app = create_app(root, client_factory=lambda: client)
    with serve(app) as http:
        base = str(http.base_url).rstrip("/")
        get = http.get(f"{TASK}/submitJob", params=_params(rasters)).json()
        assert set(get) == {"jobId", "jobStatus"} and len(get["jobId"]) == 32
        st = _wait(http, get["jobId"])
        assert st["jobStatus"] == "esriJobSucceeded", st
        url = f"{base}/arcgis/rest/services/Hosted/uavcollection/ImageServer"
        assert f"Output image service url is: {url}" in _texts(st, "Informative")
        assert st["results"] == {"result": {"paramUrl": "results/result"}}
        result = http.get(f"{TASK}/jobs/{get['jobId']}/results/result?f=json").json()
        assert result["paramName"] == "result" and result["dataType"] == "GPString"
        assert result["value"]["url"] == url and len(result["value"]["itemId"]) == 32
        assert (root / "uavcollection.zarr").is_dir()

        # the same request as an ArcGIS client's form post (a second collection name)
        form = _params(rasters, imageCollection='{"serviceProperties": {"name": "posted"}}')
        post = http.post(f"{TASK}/submitJob", data=form).json()
        st = _wait(http, post["jobId"])
        assert st["jobStatus"] == "esriJobSucceeded", st
        assert any("Hosted/posted/ImageServer" in t for t in _texts(st, "Informative"))
        assert (root / "posted.zarr").is_dir()
        assert not _texts(st, "Warning")


def test_missing_file_is_a_warning_and_service_url(tmp_path, rasters, client):
    root = tmp_path / "store"
    missing = str(tmp_path / "in" / "missing.tif")
    app = create_app(root, service_url="https://gis.example.com/", client_factory=lambda: client)
    with serve(app) as http:
        job = http.post(f"{TASK}/submitJob", data=_params([rasters[0], missing])).json()
        st = _wait(http, job["jobId"])
        assert st["jobStatus"] == "esriJobSucceeded", st
        warnings = _texts(st, "Warning")
        assert len(warnings) == 1 and "Image missing failed" in warnings[0]
        url = "https://gis.example.com/arcgis/rest/services/Hosted/uavcollection/ImageServer"
        result = http.get(f"{TASK}/jobs/{job['jobId']}/results/result?f=json").json()
        assert result["value"]["url"] == url


@pytest.mark.parametrize(
    ("override", "parameter"),
    [
        ({"context": '{"outSR": {"wkid": 102100}'}, "context"),
        ({"rasterType": '{"rasterTypeName": "No Such Type"}'}, "rasterType"),
        ({"inputRasters": ""}, "inputRasters"),
    ],
)
def test_bad_request_is_error_json_and_no_job(tmp_path, rasters, override, parameter):
    root = tmp_path / "store"
    with serve(create_app(root)) as http:
        params = _params(rasters, **override)
        for r in (
            http.get(f"{TASK}/submitJob", params=params),
            http.post(f"{TASK}/submitJob", data=params),
        ):
            assert r.status_code == 200
            error = r.json()["error"]
            assert error["code"] == 400
            assert parameter in error["message"] and error["details"]
            assert any(parameter in d for d in error["details"])
    assert _job_count(root) == 0


def test_unknown_job_formats_and_task(tmp_path, rasters, client):
    with serve(create_app(tmp_path / "store", client_factory=lambda: client)) as http:
        for path in ("", "/results/result", "/cancel"):
            error = http.get(f"{TASK}/jobs/{'0' * 32}{path}?f=json").json()["error"]
            assert error["code"] == 404 and error["message"] == "Job not found"

        job_id = http.get(f"{TASK}/submitJob", params=_params(rasters)).json()["jobId"]
        _wait(http, job_id)
        page = http.get(f"{TASK}/jobs/{job_id}?f=html")
        assert page.headers["content-type"].startswith("text/html")
        assert "esriJobSucceeded" in page.text and "<pre>" in page.text
        assert "&quot;jobStatus&quot;" in page.text  # the JSON is escaped
        browser = http.get(f"{TASK}/jobs/{job_id}", headers={"Accept": "text/html"})
        assert browser.headers["content-type"].startswith("text/html")
        pretty = http.get(f"{TASK}/jobs/{job_id}?f=pjson")
        assert pretty.text.startswith('{\n  "jobId"') and json.loads(pretty.text)["jobId"] == job_id
        compact = http.get(f"{TASK}/jobs/{job_id}?f=json")
        assert "\n" not in compact.text and compact.json() == pretty.json()

        cancel = http.post(f"{TASK}/jobs/{job_id}/cancel", data={"f": "json"}).json()
        assert cancel["jobStatus"] == "esriJobSucceeded"  # a finished job stays as it is

        task = http.get(TASK, params={"f": "json"}).json()
        assert task["name"] == "CreateImageCollection"
        names = {p["name"] for p in task["parameters"]}
        assert {"inputRasters", "rasterType", "imageCollection", "context", "result"} <= names
        info = http.get("/arcgis/rest/info?f=json").json()
        assert info["currentVersion"] == 11.3 and "authInfo" in info
        assert http.get("/arcgis/rest/nowhere?f=json").json()["error"]["code"] == 404


def test_result_of_unfinished_job_is_an_error(tmp_path, rasters):
    """A job that fails at run time (an output url needs a portal): results/result refuses."""
    with serve(create_app(tmp_path / "store")) as http:
        bad = _params(rasters, imageCollection='{"url": "https://x/ImageServer"}')
        job_id = http.get(f"{TASK}/submitJob", params=bad).json()["jobId"]
        st = _wait(http, job_id)
        assert st["jobStatus"] == "esriJobFailed" and _texts(st, "Error")
        error = http.get(f"{TASK}/jobs/{job_id}/results/result?f=json").json()["error"]
        assert error["code"] == 400 and "esriJobFailed" in error["details"][0]


def test_token(tmp_path, rasters, client):
    app = create_app(tmp_path / "store", token="s3cret", client_factory=lambda: client)
    with serve(app) as http:
        for path in (TASK, f"{TASK}/jobs/{'0' * 32}", f"{TASK}/submitJob"):
            assert http.get(path, params={"f": "json"}).json()["error"]["code"] == 499
            wrong = http.get(path, params={"f": "json", "token": "nope"}).json()
            assert wrong["error"]["code"] == 498 and wrong["error"]["message"] == "Invalid Token"
        # the right token: query, form or header
        job = http.get(f"{TASK}/submitJob", params=_params(rasters, token="s3cret")).json()
        assert "jobId" in job, job
        st = _wait(http, job["jobId"], token="s3cret")
        assert st["jobStatus"] == "esriJobSucceeded"
        header = {"X-Esri-Authorization": "Bearer s3cret"}
        assert http.get(f"{TASK}/jobs/{job['jobId']}?f=json", headers=header).json()["jobId"]
        posted = http.post(f"{TASK}/jobs/{job['jobId']}", data={"f": "json", "token": "s3cret"})
        assert posted.json()["jobStatus"] == "esriJobSucceeded"
        # server info stays public so clients can discover that tokens are needed
        info = http.get("/arcgis/rest/info?f=json").json()
        assert info["authInfo"]["isTokenBasedSecurity"] is True
        # the image service the job published is guarded by the same token
        result = http.get(
            f"{TASK}/jobs/{job['jobId']}/results/result", params={"f": "json", "token": "s3cret"}
        ).json()
        image = (
            "/arcgis/rest/services/" + result["value"]["url"].split("/arcgis/rest/services/")[-1]
        )
        assert http.get(image, params={"f": "json"}).json()["error"]["code"] == 499
        assert http.get(image, params={"f": "json", "token": "nope"}).json()["error"]["code"] == 498
        served = http.get(image, params={"f": "json", "token": "s3cret"}).json()
        assert "error" not in served and served["bandCount"] >= 1


def test_jobs_survive_a_restart(tmp_path, rasters, client):
    root = tmp_path / "store"
    with serve(create_app(root, client_factory=lambda: client)) as http:
        job_id = http.get(f"{TASK}/submitJob", params=_params(rasters)).json()["jobId"]
        before = _wait(http, job_id)
        assert before["jobStatus"] == "esriJobSucceeded"
        result = http.get(f"{TASK}/jobs/{job_id}/results/result?f=json").json()
    with serve(create_app(root, client_factory=lambda: client)) as http:
        after = http.get(f"{TASK}/jobs/{job_id}?f=json").json()
        assert after == before
        assert http.get(f"{TASK}/jobs/{job_id}/results/result?f=json").json() == result


def test_restart_recovers_the_table(tmp_path, rasters, client):
    """Jobs a previous server left: executing ones resume, queued ones run on start-up."""
    root = tmp_path / "store"
    root.mkdir()
    store = JobStore(root / "jobs.sqlite")
    request = parse_request(_params(rasters)).to_json_dict()
    cut_off = store.create(request, status=EXECUTING)
    queued = store.create(request)
    store.close()
    with serve(create_app(root, client_factory=lambda: client)) as http:
        st = _wait(http, cut_off)
        assert st["jobStatus"] == "esriJobSucceeded", st
        assert any("server restarted" in t for t in _texts(st, "Warning"))
        st = _wait(http, queued)
        assert st["jobStatus"] == "esriJobSucceeded", st
    assert (root / "uavcollection.zarr").is_dir()


def test_request_bodies_over_the_limit_are_refused(tmp_path, rasters):
    """A submitJob body over --max-request-mb is refused with ArcGIS error 413 and no job,
    whether it declares its length or streams in chunks."""
    root = tmp_path / "store"
    with serve(create_app(root, max_request_bytes=4096)) as http:
        big = _params(rasters) | {"inputRasters": json.dumps({"uris": ["/x.tif"] * 2000})}
        body = http.post(f"{TASK}/submitJob", data=big).json()
        assert body["error"]["code"] == 413, body
        assert "4096" not in body["error"]["details"][0]  # said in MB, with the fix
        assert "--max-request-mb" in body["error"]["details"][1]

        def chunks():
            yield b"f=json&inputRasters="
            for _ in range(100):
                yield b"%5B%22%2Fx.tif%22%5D" * 10

        streamed = http.post(
            f"{TASK}/submitJob",
            content=chunks(),
            headers={"content-type": "application/x-www-form-urlencoded"},
        ).json()
        assert streamed["error"]["code"] == 413, streamed
        small = http.post(f"{TASK}/submitJob", data=_params(rasters)).json()
        assert "jobId" in small, small  # an ordinary request still goes through
    assert _job_count(root) == 1
