"""A real multi-process Dask cluster on loopback: ``dask scheduler`` and two ``dask worker``
processes started here, the real ``mosaicflow create --scheduler`` command, and a worker
killed with SIGKILL in the middle of an ingestion.

What a user checks after a worker dies: the command still exits 0, every image is
complete, each image's pixels and checksum equal those of a run that lost nothing, the
catalog has one row per image, and ``mosaicflow verify`` re-reads every chunk cleanly.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import zarr
from distributed import Client

from cluster.client import GDAL_WORKER_ENV
from engine.synth import make_scenes
from engine.verify import verify_collection

BIN = Path(sys.executable).parent
DASK = str(BIN / "dask")
MOSAICFLOW = str(BIN / "mosaicflow")
REPO = Path(__file__).resolve().parents[1]
CREATE = ["--out-sr", "3857", "--cell-size", "60", "--resampling", "bilinear"]


@dataclass
class RealCluster:
    """A scheduler and its worker processes, all children of the test."""

    address: str
    directory: Path
    scheduler: subprocess.Popen[bytes]
    workers: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def add_worker(self, name: str) -> subprocess.Popen[bytes]:
        # --no-nanny: the worker is this very process, so SIGKILL takes it down for good
        # (a nanny would restart it, and the test would not show the job surviving on the
        # remaining worker)
        log = open(self.directory / f"{name}.log", "wb")  # noqa: SIM115 (closed by the process)
        proc = subprocess.Popen(
            [DASK, "worker", self.address, "--name", name, "--nthreads", "1", "--nworkers", "1",
             "--memory-limit", "2GB", "--no-nanny", "--no-dashboard"],
            stdout=log, stderr=subprocess.STDOUT, env=_env(), cwd=self.directory,
        )  # fmt: skip
        self.workers[name] = proc
        return proc


def _env() -> dict[str, str]:
    # the worker processes import engine/graphs from this checkout; nothing GDAL-related
    # is set here: the settings must come from the engine's worker plugin
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GDAL_", "CPL_", "VSI_"))}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    env.pop("DASK_SCHEDULER_ADDRESS", None)
    return env


@pytest.fixture
def real_cluster(tmp_path) -> Iterator[RealCluster]:
    """``dask scheduler`` on a free loopback port and two single-threaded workers."""
    directory = tmp_path / "cluster"
    directory.mkdir()
    sched_file = directory / "scheduler.json"
    sched = subprocess.Popen(
        [DASK, "scheduler", "--host", "127.0.0.1", "--port", "0", "--no-dashboard",
         "--scheduler-file", str(sched_file)],
        stdout=open(directory / "scheduler.log", "wb"),  # noqa: SIM115
        stderr=subprocess.STDOUT, env=_env(), cwd=directory,
    )  # fmt: skip
    cluster = None
    try:
        deadline = time.monotonic() + 30
        while not (sched_file.is_file() and sched_file.stat().st_size):
            assert sched.poll() is None, (directory / "scheduler.log").read_text()
            assert time.monotonic() < deadline, "the scheduler did not start in 30 s"
            time.sleep(0.05)
        cluster = RealCluster(json.loads(sched_file.read_text())["address"], directory, sched)
        cluster.add_worker("worker-a")
        cluster.add_worker("worker-b")
        with Client(cluster.address, timeout=30) as c:
            c.wait_for_workers(2, timeout=60)
        yield cluster
    finally:
        procs = [*(cluster.workers.values() if cluster else []), sched]
        for p in procs:
            if p.poll() is None:
                p.terminate()
        for p in procs:
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


@pytest.fixture(scope="module")
def scenes(tmp_path_factory) -> list[Path]:
    """Four realistic 1024² uint16 scenes (nodata collars, overlapping, one orbit path)."""
    return make_scenes(tmp_path_factory.mktemp("scenes"), n=4, size=1024)


def _create(store: Path, scenes: list[Path], address: str, *extra: str) -> list[str]:
    return [MOSAICFLOW, "create", str(store), *map(str, scenes), *CREATE, *extra,
            "--scheduler", address, "--json"]  # fmt: skip


def _run_env() -> dict[str, str]:
    env = _env()
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _pixels(store: Path) -> dict[str, dict[str, np.ndarray]]:
    root = zarr.open_group(str(store), mode="r")
    out = {}
    for image_id, group in root["images"].groups():
        out[image_id] = {name: arr[:] for name, arr in group.arrays() if name.startswith("b")}
    return out


def _catalog(store: Path) -> list[dict[str, object]]:
    rows: list[dict[str, object]] = pq.read_table(
        store / "catalog.parquet", columns=["image_id", "status", "checksum"]
    ).to_pylist()
    return rows


def out_chunks(stderr: str) -> int:
    """The chunk count the CLI's last progress line reports (done == total checked)."""
    last = [ln for ln in stderr.splitlines() if "chunks " in ln][-1]
    done, total = last.split("chunks ")[1].split()[0].split("/")
    assert done == total, last
    return int(total)


def test_workers_get_the_gdal_settings_and_the_cli_runs_on_the_scheduler(
    real_cluster, scenes, tmp_path
):
    store = tmp_path / "a.zarr"
    proc = subprocess.run(
        _create(store, scenes[:2], real_cluster.address),
        capture_output=True, text=True, env=_run_env(), cwd=tmp_path, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["complete"] == 2 and out["exit_code"] == 0
    # the scheduler runs no dashboard: no link to a page that does not exist is printed
    assert "dashboard" not in proc.stderr.lower()
    # the progress line has images, chunks, MB/s and ETA
    last = [ln for ln in proc.stderr.splitlines() if "chunks " in ln][-1]
    assert "images 2/2" in last and "MB/s" in last and "ETA" in last

    with Client(real_cluster.address, timeout=30) as c:
        workers = c.scheduler_info()["workers"]
        assert sorted(w["name"] for w in workers.values()) == ["worker-a", "worker-b"]
        # the chunk tasks ran in the worker processes (the CLI process ran none)
        executed = c.run(lambda dask_worker: dask_worker.state.executed_count)
        assert sum(executed.values()) >= out_chunks(proc.stderr)
        # what GDAL itself reads in each worker process (its config falls back to the
        # environment), set there by the plugin the engine registered
        seen = c.run(
            lambda: {
                k: __import__("rasterio.env").env.get_gdal_config(k, normalize=False)
                for k in ("GDAL_DISABLE_READDIR_ON_OPEN", "CPL_VSIL_CURL_CACHE_SIZE",
                          "GDAL_HTTP_MAX_RETRY", "GDAL_HTTP_TIMEOUT", "GDAL_CACHEMAX",
                          "VSI_CACHE", "GDAL_HTTP_MULTIPLEX")
            }
        )  # fmt: skip
        pids = c.run(os.getpid)
    assert set(pids.values()) == {p.pid for p in real_cluster.workers.values()}
    for values in seen.values():
        assert values == {
            "GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR",
            "CPL_VSIL_CURL_CACHE_SIZE": str(128 * 1024 * 1024),
            "GDAL_HTTP_MAX_RETRY": "5",
            "GDAL_HTTP_TIMEOUT": "60",
            "GDAL_CACHEMAX": int(GDAL_WORKER_ENV["GDAL_CACHEMAX"]) * 2**20,  # GDAL's actual size
            "VSI_CACHE": "FALSE",
            "GDAL_HTTP_MULTIPLEX": "YES",
        }
    arr = zarr.open_array(f"{store}/images/{out['image_ids'][0]}/b1", mode="r")[:]
    assert np.count_nonzero(arr) > 0


def test_a_worker_killed_mid_ingestion_loses_nothing(real_cluster, scenes, tmp_path):
    # the reference: the same request on the same cluster, nothing killed
    clean = tmp_path / "clean.zarr"
    proc = subprocess.run(
        _create(clean, scenes, real_cluster.address, "--tile-size", "128"),
        capture_output=True, text=True, env=_run_env(), cwd=tmp_path, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    expected = json.loads(proc.stdout)
    n_chunks = sum(1 for _ in (clean / "images").rglob("c/*/*"))

    faulted = tmp_path / "faulted.zarr"
    victim = real_cluster.workers["worker-b"]
    run = subprocess.Popen(
        _create(faulted, scenes, real_cluster.address, "--tile-size", "128"),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_run_env(), cwd=tmp_path,
    )  # fmt: skip
    killed_at = None
    with Client(real_cluster.address, timeout=30) as c:
        victim_address = next(
            a for a, w in c.scheduler_info()["workers"].items() if w["name"] == "worker-b"
        )
        deadline = time.monotonic() + 90
        while killed_at is None and run.poll() is None and time.monotonic() < deadline:
            written = sum(1 for _ in (faulted / "images").rglob("c/*/*"))
            # mid-ingestion: a fifth of the chunks are on disk and worker-b is running
            # chunk tasks right now
            busy = c.processing(workers=[victim_address]).get(victim_address)
            if written >= n_chunks // 5 and busy:
                victim.send_signal(signal.SIGKILL)
                victim.wait(timeout=10)
                killed_at = written
            time.sleep(0.01)
        stdout, stderr = run.communicate(timeout=120)
        remaining = [w["name"] for w in c.scheduler_info()["workers"].values()]
    assert killed_at is not None, f"the ingestion ended before the kill: {stderr}"
    assert killed_at < n_chunks, "the worker was killed after every chunk was written"
    assert victim.returncode == -signal.SIGKILL
    assert remaining == ["worker-a"]

    # the job completed on the remaining worker ...
    assert run.returncode == 0, stderr
    result = json.loads(stdout)
    assert result["complete"] == 4 and result["failed"] == []
    assert result["image_ids"] == expected["image_ids"]
    # ... with every chunk, pixels identical to the clean run, one catalog row per image
    assert sum(1 for _ in (faulted / "images").rglob("c/*/*")) == n_chunks
    want, got = _pixels(clean), _pixels(faulted)
    assert sorted(got) == sorted(want) == sorted(expected["image_ids"])
    for image_id, bands in want.items():
        assert sorted(got[image_id]) == sorted(bands)
        for name, arr in bands.items():
            np.testing.assert_array_equal(got[image_id][name], arr, err_msg=f"{image_id}/{name}")
    rows = _catalog(faulted)
    assert sorted(r["image_id"] for r in rows) == sorted(expected["image_ids"])
    assert {r["status"] for r in rows} == {"complete"}
    assert {r["image_id"]: r["checksum"] for r in rows} == {
        r["image_id"]: r["checksum"] for r in _catalog(clean)
    }
    report = verify_collection(str(faulted))
    assert report["checked"] == 4 and report["bad"] == 0
    # the progress ended at exactly the planned count: no chunk lost or counted twice
    planned = next(ln for ln in stderr.splitlines() if "planned" in ln)
    assert f"{out_chunks(stderr)} chunks to compute" in planned
    assert "images 4/4" in [ln for ln in stderr.splitlines() if "chunks " in ln][-1]


# -- the local cluster and the progress line ---------------------------------------------


@pytest.mark.parametrize(
    ("factor", "workers", "slots"),
    [(None, None, 8), ("4", None, 4), ("0", None, 1), ("50%", None, 4), ("150%", None, 12),
     ("1%", None, 1), ("100%", None, 8), ("50%", 3, 3)],
)  # fmt: skip
def test_local_cluster_size_follows_parallel_processing_factor(monkeypatch, factor, workers, slots):
    from cluster import local_cluster_size
    from engine.request import parse_context

    monkeypatch.setattr(os, "cpu_count", lambda: 8)
    ctx = parse_context({} if factor is None else {"parallelProcessingFactor": factor})
    assert local_cluster_size(ctx.parallel_processing_factor, workers) == slots


def test_local_cluster_is_threads_by_default_and_processes_on_request():
    from cluster import dask_client

    with dask_client(workers=2) as c:
        (w,) = c.scheduler_info()["workers"].values()
        assert w["nthreads"] == 2
        assert set(c.run(os.getpid).values()) == {os.getpid()}
    with dask_client(workers=2, processes=True) as c:
        workers = c.scheduler_info()["workers"].values()
        assert [w["nthreads"] for w in workers] == [1, 1]
        pids = set(c.run(os.getpid).values())
        assert len(pids) == 2 and os.getpid() not in pids
        # the plugin reached the new processes before any task
        seen = c.run(
            lambda: __import__("rasterio.env").env.get_gdal_config(
                "GDAL_DISABLE_READDIR_ON_OPEN", normalize=False
            )
        )
        assert set(seen.values()) == {"EMPTY_DIR"}


def test_progress_line_shows_mb_per_s_and_an_eta_from_the_recent_pace():
    import io

    from engine.cli import ProgressPrinter

    out = io.StringIO()
    show = ProgressPrinter(out, every=0.0, window=10.0)
    total = 100_000_000

    def event(t: float, done: int, chunks_done: int) -> str:
        show({"stage": "chunks", "chunks_done": chunks_done, "chunks": 100, "images_done": 0,
              "images": 4, "bytes_done": done, "bytes": total, "elapsed": t})  # fmt: skip
        return out.getvalue().splitlines()[-1]

    # 1 MB/s for 20 s: 20 MB done, 80 MB left
    for t in range(1, 21):
        line = event(float(t), t * 1_000_000, t)
    assert line.endswith("images 0/4  chunks 20/100  1.0 MB/s  ETA 80 s")
    # the pace rises to 5 MB/s: after 10 s the rate and the ETA follow it, not the average
    for t in range(21, 31):
        line = event(float(t), 20_000_000 + (t - 20) * 5_000_000, t)
    assert line.endswith("chunks 30/100  5.0 MB/s  ETA 6 s")
    # without byte counts (an older engine) the pace is in chunks
    show = ProgressPrinter(out, every=0.0)
    show({"stage": "chunks", "chunks_done": 5, "chunks": 10, "images_done": 1, "images": 2,
          "elapsed": 5.0})  # fmt: skip
    assert out.getvalue().splitlines()[-1].endswith("chunks 5/10  1.0 chunks/s  ETA 5 s")


def test_plugin_bounds_the_gdal_cache_of_a_worker_that_already_read_rasters(scenes, monkeypatch):
    from distributed import LocalCluster

    from cluster import GDALEnvPlugin

    monkeypatch.delenv("GDAL_CACHEMAX", raising=False)  # the worker process inherits this

    def read_then_cache_size() -> int:
        import rasterio
        from rasterio.env import get_gdal_config

        with rasterio.open(scenes[0]) as ds:  # GDAL sizes its block cache here
            ds.read(1, window=((0, 64), (0, 64)))
        return int(get_gdal_config("GDAL_CACHEMAX"))

    with (
        LocalCluster(n_workers=1, threads_per_worker=1, processes=True,
                     dashboard_address=None, memory_limit=0) as cluster,
        Client(cluster) as c,
    ):  # fmt: skip
        # a worker that has no GDAL settings: GDAL took its default, 5 % of RAM
        before = c.run(read_then_cache_size, on_error="raise")
        bounded = int(GDAL_WORKER_ENV["GDAL_CACHEMAX"]) * 2**20
        assert all(v > bounded for v in before.values())
        c.register_plugin(GDALEnvPlugin())
        after = c.run(lambda: __import__("rasterio.env").env.get_gdal_config("GDAL_CACHEMAX"))
        assert set(after.values()) == {bounded}


def test_worker_processes_reuse_chunk_buffers_instead_of_faulting_in_new_pages():
    """Dask's nanny starts workers with MALLOC_TRIM_THRESHOLD_=65536, which makes glibc
    mmap every buffer above 128 KiB afresh: each chunk-sized buffer is faulted in page by
    page (W8 on one worker process: 37.7 against 25.3 s). The plugin the engine registers
    lets the worker reuse them; a process without the nanny's setting is left alone."""
    from distributed import LocalCluster

    from cluster import AllocatorPlugin, tune_allocator

    def page_faults_per_chunk_buffer() -> float:
        import resource

        import numpy as np

        n = 3 * 2**20 // 8  # one 512² × 3 float32 chunk: 3 MiB
        np.ones(n)
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        for _ in range(20):
            a = np.ones(n)
            del a
        return (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 20

    with (
        LocalCluster(n_workers=1, threads_per_worker=1, processes=True,
                     dashboard_address=None, memory_limit=0) as cluster,
        Client(cluster) as c,
    ):  # fmt: skip
        env = c.run(lambda: __import__("os").environ.get("MALLOC_TRIM_THRESHOLD_"))
        assert set(env.values()) == {"65536"}  # what the nanny sets: the case fixed here
        before = c.run(page_faults_per_chunk_buffer)
        assert all(v > 300 for v in before.values()), before  # ~768 4 KiB pages each time
        c.register_plugin(AllocatorPlugin())
        after = c.run(page_faults_per_chunk_buffer)
        assert all(v < 30 for v in after.values()), after
    assert tune_allocator({}) is False  # no nanny setting (this process): left alone
    assert tune_allocator({"MALLOC_TRIM_THRESHOLD_": "1", "MALLOC_MMAP_THRESHOLD_": "1"}) is False


def test_local_threads_keep_blas_to_one_thread_per_task():
    """numpy's OpenBLAS would add a thread per core beside each Dask thread (on 2 cores,
    13.2 instead of 15.6-16.9 CPU seconds for 3 W8 scenes); the local threads cluster runs
    it on one thread and gives the caller its threads back afterwards."""
    from cluster import dask_client
    from cluster.client import _openblas

    def cpu_per_wall() -> float:
        import time

        import numpy as np

        a = np.random.default_rng(0).random((400, 400))
        t0, c0 = time.perf_counter(), time.process_time()  # process-wide CPU
        while time.perf_counter() - t0 < 1.0:
            a = a @ a
            a /= np.abs(a).max()
        return (time.process_time() - c0) / (time.perf_counter() - t0)

    blas = _openblas()
    if blas is None:
        pytest.skip("numpy here is not built on a bundled OpenBLAS")
    before = blas[0]()
    with dask_client(workers=1) as c:
        ratio = c.submit(cpu_per_wall, pure=False).result()
        assert blas[0]() == 1
    assert ratio < 1.4  # one busy thread, not one per core
    assert blas[0]() == before
