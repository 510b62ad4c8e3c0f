"""Jobs: the SQLite job table, the runner, cancel, restart recovery, and submit_job."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
from affine import Affine

from engine import jobs
from engine.errors import MosaicflowError
from engine.jobs import JobRunner, JobStore, submit_job
from engine.request import build_request
from tests.conftest import write_raster


def _raster(d: Path, name: str = "a.tif", seed: int = 1) -> Path:
    return write_raster(
        d / name,
        crs="EPSG:32633",
        transform=Affine(30, 0, 500_000 + 1000 * seed, 0, -30, 4_650_000),
        shape=(60, 70),
        nodata=0,
        seed=seed,
    )


def _wait(runner: JobRunner, job_id: str, timeout: float = 60) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        st = runner.status(job_id)
        if st["jobStatus"] in jobs.FINISHED:
            return st
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} did not finish: {runner.status(job_id)}")


def _texts(st: dict, type_: str) -> list[str]:
    return [m["description"] for m in st["messages"] if m["type"] == type_]


@pytest.fixture
def runner(tmp_path, client):
    r = JobRunner(JobStore(tmp_path), client_factory=lambda: client)
    yield r
    r.shutdown()
    r.store.close()


def test_job_succeeds_with_arcgis_json(tmp_path, runner):
    a = _raster(tmp_path)
    request = build_request([str(a)], None, str(tmp_path / "out.zarr"), {"outSR": 3857})
    t0 = time.perf_counter()
    job_id = runner.submit(request)
    assert time.perf_counter() - t0 < 1.0
    assert len(job_id) == 32 and int(job_id, 16) >= 0
    assert runner.status(job_id)["jobStatus"] in (jobs.SUBMITTED, jobs.EXECUTING)
    st = _wait(runner, job_id)
    assert st["jobStatus"] == jobs.SUCCEEDED
    assert set(st) == {"jobId", "jobStatus", "messages", "results", "inputs"}
    assert st["results"] == {"result": {"paramUrl": "results/result"}}
    assert st["inputs"] == request.to_json_dict()
    info = _texts(st, jobs.INFO)
    assert info[:3] == [info[0], "Submitted.", "Executing..."] and info[0].startswith("Start Time")
    result = runner.result(job_id)
    assert result is not None
    assert result["paramName"] == "result" and result["dataType"] == "GPString"
    value = result["value"]
    assert len(value["itemId"]) == 32
    assert value["url"] == "http://localhost/arcgis/rest/services/Hosted/out/ImageServer"
    assert f"Output item id is: {value['itemId']}" in info
    assert f"Output image service url is: {value['url']}" in info
    assert any(t.startswith("Found 1 input images") for t in info)
    assert "Compute stage done." in info
    assert not _texts(st, jobs.WARNING) and not _texts(st, jobs.ERROR)


def test_missing_file_is_a_warning(tmp_path, runner):
    a, missing = _raster(tmp_path), tmp_path / "missing.tif"
    request = build_request([str(a), str(missing)], None, str(tmp_path / "w.zarr"))
    st = _wait(runner, runner.submit(request))
    assert st["jobStatus"] == jobs.SUCCEEDED
    warnings = _texts(st, jobs.WARNING)
    assert len(warnings) == 1 and "missing" in warnings[0] and "failed:" in warnings[0]


def test_only_bad_files_fail_the_job(tmp_path, runner):
    bad = tmp_path / "bad.tif"
    bad.write_text("not a raster")
    request = build_request([str(bad), str(tmp_path / "gone.tif")], None, str(tmp_path / "b.zarr"))
    st = _wait(runner, runner.submit(request))
    assert st["jobStatus"] == jobs.FAILED
    assert _texts(st, jobs.ERROR) and "results/result" not in str(st["results"])
    assert len(_texts(st, jobs.WARNING)) == 2
    assert runner.result(st["jobId"]) is None


def test_exceptions_become_errors(tmp_path):
    def boom(request, client=None, progress=None):
        raise RuntimeError("kaput")

    r = JobRunner(JobStore(tmp_path), run=boom)
    request = build_request(["x.tif"], None, str(tmp_path / "x.zarr"))
    st = _wait(r, r.submit(request))
    r.shutdown()
    assert st["jobStatus"] == jobs.FAILED
    assert any("Internal error: RuntimeError('kaput')" in t for t in _texts(st, jobs.ERROR))
    with pytest.raises(KeyError):
        r.status("0" * 32)


def test_restart_recovery(tmp_path, client):
    """Cut-off jobs resume (with a Warning), queued ones run, cancelling ones end cancelled,
    and a job cut off again and again fails instead of looping."""
    a = _raster(tmp_path)
    request = build_request([str(a)], None, str(tmp_path / "r.zarr"))
    first = JobStore(tmp_path / "jobs.sqlite")
    cut = first.create(request.to_json_dict())
    first.set_status(cut, jobs.EXECUTING)
    queued = first.create(request.to_json_dict())
    cancelling = first.create(request.to_json_dict(), status=jobs.CANCELLING)
    looping = first.create(request.to_json_dict(), status=jobs.EXECUTING)
    for _ in range(jobs.MAX_RESUMES):
        first.add_message(looping, jobs.WARNING, jobs.RESUME_MESSAGE)
    first.close()  # the "server" stops

    runner = JobRunner(JobStore(tmp_path / "jobs.sqlite"), client_factory=lambda: client)
    runner.recover()
    assert runner.status(cancelling)["jobStatus"] == jobs.CANCELLED
    st = runner.status(looping)
    assert st["jobStatus"] == jobs.FAILED
    assert _texts(st, jobs.ERROR) == [jobs.RESTART_MESSAGE.format(n=jobs.MAX_RESUMES + 1)]
    st = _wait(runner, cut)
    assert st["jobStatus"] == jobs.SUCCEEDED
    assert _texts(st, jobs.WARNING) == [jobs.RESUME_MESSAGE]
    assert _wait(runner, queued)["jobStatus"] == jobs.SUCCEEDED
    runner.shutdown()


def test_cancel_queued_and_executing(tmp_path):
    release, calls = threading.Event(), []

    def slow(request, client=None, progress=None):
        calls.append(request)
        release.wait(30)
        raise RuntimeError("released")

    r = JobRunner(JobStore(tmp_path), run=slow)
    request = build_request(["x.tif"], None, str(tmp_path / "x.zarr"))
    busy = r.submit(request)
    queued = r.submit(request)
    assert r.cancel(queued) == jobs.CANCELLED
    release.set()
    assert _wait(r, busy)["jobStatus"] == jobs.FAILED
    r.shutdown()
    assert len(calls) == 1 and r.status(queued)["jobStatus"] == jobs.CANCELLED

    def looping(request, client=None, progress=None):
        for i in range(6000):
            progress({"stage": "chunks", "chunks_done": i, "chunks": 6000})
            time.sleep(0.005)
        raise AssertionError("the run was not stopped")

    r = JobRunner(JobStore(tmp_path), run=looping)
    job_id = r.submit(request)
    deadline = time.monotonic() + 10
    while r.status(job_id).get("progress") is None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert r.status(job_id)["progress"]["percent"] >= 0
    assert r.cancel(job_id) in (jobs.CANCELLING, jobs.CANCELLED)
    st = _wait(r, job_id, timeout=10)
    r.shutdown()
    assert st["jobStatus"] == jobs.CANCELLED and not _texts(st, jobs.ERROR)


def test_submit_job_for_python_users(tmp_path, client):
    a = _raster(tmp_path)
    job = submit_job([str(a)], None, str(tmp_path / "py.zarr"), root=tmp_path, client=client)
    summary = job.result(timeout=60)
    assert job.status() == jobs.SUCCEEDED
    assert summary["complete"] == 1 and summary["exit_code"] == 0
    assert len(summary["itemId"]) == 32
    assert any(m["description"].startswith("Output item id") for m in job.messages)

    bad = submit_job([str(tmp_path / "none.tif")], None, str(tmp_path / "n.zarr"), root=tmp_path)
    with pytest.raises(MosaicflowError, match="names no existing file"):
        bad.result(timeout=60)


def test_progress_carries_rate_and_eta(tmp_path):
    """The job status shows the CLI's figures: percent, MB/s and ETA from the same events."""
    at_half = threading.Event()
    release = threading.Event()

    def halfway(request, client=None, progress=None):
        progress({"stage": "chunks", "chunks_done": 5, "chunks": 10, "images_done": 1,
                  "images": 2, "bytes_done": 50_000_000, "bytes": 100_000_000, "elapsed": 10.0})  # fmt: skip
        at_half.set()
        release.wait(10)
        raise RuntimeError("stopped here")

    r = JobRunner(JobStore(tmp_path), run=halfway)
    job_id = r.submit(build_request(["x.tif"], None, str(tmp_path / "x.zarr")))
    assert at_half.wait(10)
    progress = r.status(job_id)["progress"]
    release.set()
    _wait(r, job_id)
    r.shutdown()
    assert progress["percent"] == 50.0
    assert progress["mb_per_s"] == 5.0 and progress["eta_s"] == 10.0  # 50 MB in 10 s, 50 left
    assert progress["message"] == "50%, 5 MB/s, ETA 10 s"
