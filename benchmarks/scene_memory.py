"""Peak memory per worker for one 4k and one 32k scene (issue 7 (b): "flat per-worker memory").

Run from the repository root::

    python -m benchmarks.scene_memory                      # 4096² and 32768²
    python -m benchmarks.scene_memory --sizes 2048,8192    # quicker, while developing

Inputs: one synthetic scene per size (``engine.synth.make_scenes``: 1 band uint16, 10 m,
EPSG:32633, tiled 512² DEFLATE with predictor, a tilted valid footprint with a nodata
collar, landscape-like content), written strip by strip and cached under
``benchmarks/work/scene-memory/``. A 32768² scene (2 GiB of pixels, 0.93 GB on disk) takes
about two minutes on a busy 2-core machine.

Each scene is ingested with ``create_image_collection`` into EPSG:3857 at 20 m, bilinear,
on two layouts, each in its own fresh measured subprocess (``benchmarks.measure``):

processes
    ``LocalCluster(n_workers=2, threads_per_worker=1, processes=True)``, what
    ``mosaicflow create --processes`` starts. Every worker process is sampled by pid
    (``client.run(os.getpid)``).
threads
    ``LocalCluster(n_workers=1, threads_per_worker=2, processes=False)``, the engine's
    default: the worker is the client's own process, which is what is sampled.

RSS is sampled every 0.1 s with psutil. ``peak MiB`` is the largest peak of any worker
process, ``idle MiB`` that worker's RSS before the ingestion (interpreter, imports, the
cluster). The reference line is ``gdalwarp`` (Debian's GDAL; default ``-wm``, GeoTIFF
output, the same target grid), whose one process is sampled the same way and also reported
as the kernel's exact ``ru_maxrss``. ``32k / 4k`` is the ratio of the two sizes' peaks
per layout; "flat" means about 1.0. Also per worker: its CPU seconds (they move less than
wall time when the machine is shared), an RSS trace (one sample a second, in the JSON), and
its GDAL block cache in use at the end (``GDALGetCacheUsed64``), the usual suspect when
memory grows with the scene. ``GDAL_CACHEMAX=32 python -m benchmarks.scene_memory`` tries
another cache size: a variable set on the workers wins over the engine's setting.

Results are printed and written to ``benchmarks/work/results-scene-memory.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks.measure import format_table, ratio, run_callable, run_command

WORK = Path(__file__).resolve().parent / "work" / "scene-memory"
LAYOUTS = ("processes", "threads")
SCENE_RES = 10.0
OUT_CRS, OUT_CELL = "EPSG:3857", 20.0
CONTEXT = {"outSR": {"wkid": 3857}, "cellSize": OUT_CELL, "resamplingMethod": "BILINEAR"}


def make_scene(size: int) -> Path:
    """The cached synthetic scene of ``size``² pixels (``engine.synth``)."""
    from engine.synth import make_scenes

    return make_scenes(WORK / f"scene-{size}", n=1, size=size, bands=1, res=SCENE_RES)[0]


class _Sampler(threading.Thread):
    """Peak RSS of each process in ``pids`` every ``interval`` seconds, a trace of the
    largest one every ``trace_every`` samples, and each process's CPU seconds at the end
    (CPU time, unlike wall time, barely moves when other work shares the machine)."""

    def __init__(self, pids: Sequence[int], interval: float = 0.1, trace_every: int = 10) -> None:
        import psutil

        super().__init__(daemon=True)
        self.procs = [psutil.Process(p) for p in pids]
        self.idle = [p.memory_info().rss for p in self.procs]
        self.cpu0 = [sum(p.cpu_times()[:2]) for p in self.procs]
        self.peak = list(self.idle)
        self.cpu_s = [0.0 for _ in self.procs]
        self.trace: list[tuple[float, float]] = []  # (seconds, MiB of the largest process)
        self.interval, self.trace_every = interval, trace_every
        self.halt = threading.Event()

    def run(self) -> None:
        import psutil

        t0, n = time.perf_counter(), 0
        while True:
            rss = []
            for k, p in enumerate(self.procs):
                with contextlib.suppress(psutil.Error):  # a worker may end first
                    rss.append(p.memory_info().rss)
                    self.peak[k] = max(self.peak[k], rss[-1])
            if rss and n % self.trace_every == 0:
                self.trace.append((round(time.perf_counter() - t0, 1), round(max(rss) / 2**20)))
            n += 1
            if self.halt.wait(self.interval):
                return

    def stop(self) -> None:
        import psutil

        self.halt.set()
        self.join()
        for k, p in enumerate(self.procs):
            with contextlib.suppress(psutil.Error):
                self.cpu_s[k] = sum(p.cpu_times()[:2]) - self.cpu0[k]


def ingest(scene: str, store: str, layout: str) -> dict[str, Any]:
    """Ingest one scene on a fresh local cluster of ``layout`` (in the measured child)
    and return each worker process's idle and peak RSS in MiB."""
    from distributed import Client, LocalCluster

    from cluster.client import one_blas_thread
    from engine import create_image_collection

    shape: dict[str, Any] = (
        {"n_workers": 2, "threads_per_worker": 1, "processes": True}
        if layout == "processes"
        else {"n_workers": 1, "threads_per_worker": 2, "processes": False, "memory_limit": 0}
    )
    shutil.rmtree(store, ignore_errors=True)
    with (
        one_blas_thread(),
        LocalCluster(dashboard_address=None, **shape) as cluster,
        Client(cluster) as client,
    ):
        by_worker = client.run(os.getpid)
        workers = sorted(by_worker)
        pids = [int(by_worker[w]) for w in workers]
        sampler = _Sampler(pids)
        sampler.start()
        t0 = time.perf_counter()
        try:
            result = create_image_collection(
                [scene], image_collection=store, context=CONTEXT, client=client
            )
        finally:
            sampler.stop()
        elapsed = time.perf_counter() - t0
        caches = client.run(gdal_cache_mib)  # after the run: source handles are still open
    if result.exit_code:
        raise RuntimeError(f"exit code {result.exit_code}: {result.to_dict()['failed']}")
    mib = 2.0**20
    return {
        "ingest_s": elapsed,
        "workers": [
            {"pid": pid, "idle_mib": i / mib, "peak_mib": p / mib, "gdal_cache": c, "cpu_s": t}
            for pid, i, p, c, t in zip(
                pids,
                sampler.idle,
                sampler.peak,
                [caches[w] for w in workers],
                sampler.cpu_s,
                strict=True,
            )
        ],
        "trace": sampler.trace,
    }


def gdal_cache_mib() -> dict[str, float] | None:
    """This process's GDAL block cache: MiB in use and its limit (None without libgdal).

    Read through the C API of the libgdal rasterio loaded: blocks of datasets still open
    (mosaicflow keeps its source handles open per thread) count as used.
    """
    import ctypes

    with open("/proc/self/maps") as maps:
        paths = [ln.split()[-1] for ln in maps if "/libgdal" in ln]
    if not paths:
        return None
    lib = ctypes.CDLL(paths[0])
    lib.GDALGetCacheUsed64.restype = lib.GDALGetCacheMax64.restype = ctypes.c_int64
    return {"used": lib.GDALGetCacheUsed64() / 2**20, "max": lib.GDALGetCacheMax64() / 2**20}


def gdalwarp(scene: Path, size: int) -> dict[str, Any]:
    """The reference line: gdalwarp onto the same grid, default ``-wm``, GeoTIFF out."""
    out = WORK / f"gdalwarp-{size}.tif"
    out.unlink(missing_ok=True)
    cmd = [
        "gdalwarp", "-q", "-overwrite", "-multi", "-wo", "NUM_THREADS=ALL_CPUS",
        "-t_srs", OUT_CRS, "-tr", f"{OUT_CELL:g}", f"{OUT_CELL:g}", "-tap", "-r", "bilinear",
        "-co", "TILED=YES", "-co", "BLOCKXSIZE=512", "-co", "BLOCKYSIZE=512",
        "-co", "COMPRESS=ZSTD", "-co", "ZSTD_LEVEL=1", "-co", "BIGTIFF=YES",
        str(scene), str(out),
    ]  # fmt: skip
    m = run_command(cmd, name=f"gdalwarp-{size}", interval=0.1, log_path=WORK / "gdalwarp.log")
    out.unlink(missing_ok=True)
    return {
        "tool": "gdalwarp",
        "size": size,
        "status": m.status if m.ok else f"{m.status}: {m.note}",
        "seconds": m.wall_s,
        "peak_mib": m.peak_rss_mib,
        "maxrss_mib": m.max_single_rss_mib,
    }


def _mosaicflow_row(layout: str, size: int, scene: Path) -> dict[str, Any]:
    m = run_callable(
        ingest,
        {"scene": str(scene), "store": str(WORK / f"out-{layout}.zarr"), "layout": layout},
        name=f"{layout}-{size}",
        interval=0.5,  # the tree total is not reported; each worker is sampled in the child
        log_path=WORK / f"log-{layout}-{size}.log",
    )
    row: dict[str, Any] = {"tool": f"mosaicflow {layout}", "size": size, "status": m.status}
    if not m.ok:
        row["status"] = f"{m.status}: {m.note}"
        return row
    workers = m.result["workers"]
    top = max(workers, key=lambda w: w["peak_mib"])
    row.update(
        seconds=m.result["ingest_s"],
        peak_mib=top["peak_mib"],
        idle_mib=top["idle_mib"],
        worker_peaks_mib=[round(w["peak_mib"], 1) for w in workers],
        gdal_cache_mib=(top["gdal_cache"] or {}).get("used"),
        worker_cpu_s=sum(w["cpu_s"] for w in workers),
        trace=m.result["trace"],
    )
    return row


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--sizes", default="4096,32768", help="scene sizes, comma-separated")
    ap.add_argument("--layouts", default=",".join(LAYOUTS))
    ap.add_argument("--no-gdalwarp", action="store_true", help="skip the gdalwarp reference")
    args = ap.parse_args(argv)
    try:
        sizes = [int(s) for s in args.sizes.split(",") if s]
    except ValueError:
        ap.error(f"--sizes {args.sizes!r}: give whole numbers, e.g. 4096,32768")
    layouts = [s for s in args.layouts.split(",") if s]
    if bad := set(layouts) - set(LAYOUTS):
        ap.error(f"--layouts: unknown {sorted(bad)}; choose from {', '.join(LAYOUTS)}")

    rows: list[dict[str, Any]] = []
    for size in sizes:
        t0 = time.perf_counter()
        scene = make_scene(size)
        print(f"scene {size}²: {scene} ({time.perf_counter() - t0:.0f} s)", file=sys.stderr)
        for layout in layouts:
            rows.append(_mosaicflow_row(layout, size, scene))
            print(f"  {rows[-1]}", file=sys.stderr, flush=True)
        if not args.no_gdalwarp and shutil.which("gdalwarp"):
            rows.append(gdalwarp(scene, size))
            print(f"  {rows[-1]}", file=sys.stderr, flush=True)
    # the ratio of the largest size's peak to the smallest's, per tool
    lo, hi = min(sizes), max(sizes)
    peaks = {(r["tool"], r["size"]): r.get("peak_mib") for r in rows}
    for r in rows:
        r["growth"] = ratio(peaks.get((r["tool"], hi)), peaks.get((r["tool"], lo)))
    print(
        format_table(
            rows,
            [
                ("tool", "tool", ""),
                ("size", "scene px", "d"),
                ("seconds", "s", ".1f"),
                ("worker_cpu_s", "worker CPU s", ".1f"),
                ("idle_mib", "idle MiB", ".0f"),
                ("peak_mib", "peak MiB", ".0f"),
                ("maxrss_mib", "ru_maxrss MiB", ".0f"),
                ("gdal_cache_mib", "GDAL cache MiB", ".0f"),
                ("growth", f"{hi}/{lo}", ".2f"),
                ("status", "status", ""),
            ],
        )
    )
    out = WORK.parent / "results-scene-memory.json"
    out.write_text(json.dumps({"sizes": sizes, "rows": rows}, indent=2))
    print(f"results: {out}")
    return 0 if all(r["status"] == "ok" for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
