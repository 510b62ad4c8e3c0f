"""Many small images: mosaicflow side by side with odc-geo's Dask path (issue 7 (a)).

Workload S(N): N GeoTIFFs of 64 × 64, one band uint8, EPSG:32633 at 10 m, laid on a square
grid with small overlaps (N = 10,000 by default). Both tools put every image on the same
collection grid (EPSG:32633, 10 m, pixel corners on multiples of 10 m, 512² tiles of one
collection-wide tiling, nearest: mosaicflow's defaults for these inputs) and store it:

mosaicflow
    ``create_image_collection([folder], image_collection=STORE, client=client)``.
odc-geo
    What a data engineer would write with odc-geo: per image
    ``rioxarray.open_rasterio(chunks=512², lock=False)`` → ``odc.geo.xr.xr_reproject`` onto
    a GeoBox on the collection lattice (origin moved up-left to a tile corner, as
    mosaicflow's image grids are, so both write the same arrays and chunks) →
    ``to_zarr(STORE, group="images/<stem>", compute=False)`` (Zarr v3, zstd level 1);
    then one ``client.compute`` of all the writes.

Each tool runs in its own measured subprocess (``benchmarks.measure``) on its own fresh
cluster: ``dask scheduler`` + 2 × ``dask worker --nthreads 1`` on loopback. A LocalCluster
keeps its scheduler in the client's process, so its RSS would mix the client's planning
memory with the scheduler's; here each process is sampled on its own (psutil, 0.2 s).

Measured, for both tools:

* ``plan_s``: client time from the call until the first graph of pixel work is submitted:
  mosaicflow's ``submitted`` progress event (its first window; before windows existed,
  its one graph), odc-geo's ``client.compute`` returning. ``first_submit_s`` and
  ``last_submit_s``: the first and last graph the scheduler received (a scheduler plugin
  sees every ``update_graph``; mosaicflow's first may be its probing). Target: planning
  under 10 s for 10,000 images.
* ``tasks``: tasks the scheduler received (sum over every ``update_graph``),
  ``tasks_per_image`` and ``tasks_per_chunk`` (÷ level-0 output chunks of every image):
  "graph size linear in output chunks" means these stay constant as N grows.
  ``peak_tasks_held``: the most tasks the scheduler held at once.
* ``scheduler_peak_rss_mib``, ``client_peak_rss_mib``, ``worker_peak_rss_mib`` (largest
  worker process).
* ``images_per_s``: N ÷ the client's time from the call until every image is stored
  (mosaicflow also writes overviews, the catalog, STAC and the descriptor; odc-geo does
  not).

A tool cut off by ``--timeout`` keeps, under ``partial``, what it had done by then (stage
times, images done, RSS so far), from a file the child rewrites every 2 s.

    python -m benchmarks.scale [--images 10000] [--workers 2] [--tools mosaicflow,odc-geo]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import shutil
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from affine import Affine
from distributed.diagnostics.plugin import SchedulerPlugin

from benchmarks.measure import Measurement, format_table, ratio, run_callable

WORK = Path(__file__).resolve().parent / "work" / "scale"
TOOLS = ("mosaicflow", "odc-geo")
SIDE, CELL, TILE = 64, 10.0, 512
CRS = "EPSG:32633"


def make_images(n: int) -> Path:
    """The N small GeoTIFFs of S(N), cached under ``work/scale/small-N``."""
    folder = WORK / f"small-{n}"
    done = folder / ".complete"
    if done.exists():
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    side = math.ceil(math.sqrt(n))
    rng = np.random.default_rng(3)
    for k in range(n):
        i, j = divmod(k, side)
        data = rng.integers(1, 255, (1, SIDE, SIDE), dtype="uint8")
        profile = {
            "driver": "GTiff", "width": SIDE, "height": SIDE, "count": 1, "dtype": "uint8",
            "crs": CRS, "nodata": 0,
            "transform": Affine(CELL, 0, 400_000 + j * 600, 0, -CELL, 5_600_000 - i * 600),
        }  # fmt: skip
        with rasterio.open(folder / f"s{k:05d}.tif", "w", **profile) as dst:
            dst.write(data)
    done.touch()
    return folder


# --------------------------------------------------------------------------------------
# What the scheduler receives
# --------------------------------------------------------------------------------------
class GraphCounter(SchedulerPlugin):
    """Counts the tasks of every graph the scheduler receives, and when they arrive."""

    name = "bench-graph-counter"

    def __init__(self) -> None:
        self.stats: dict[str, Any] = {"graphs": 0, "tasks": 0, "peak_tasks_held": 0}

    def update_graph(self, scheduler: Any, *, tasks: list[Any], **kwargs: Any) -> None:
        now = time.time()  # wall clock: the client compares it with its own
        s = self.stats
        s.setdefault("first_graph_at", now)
        s["last_graph_at"] = now
        s["graphs"] += 1
        s["tasks"] += len(tasks)
        s["peak_tasks_held"] = max(s["peak_tasks_held"], len(scheduler.tasks))


def _counter_stats(dask_scheduler: Any) -> dict[str, Any]:
    return dict(dask_scheduler.plugins[GraphCounter.name].stats)


class _PeakRSS(threading.Thread):
    """Peak RSS of some processes (by pid), sampled every ``interval`` seconds."""

    def __init__(self, pids: dict[str, list[int]], interval: float = 0.2) -> None:
        import psutil

        super().__init__(daemon=True)
        self.procs = {k: [psutil.Process(p) for p in v] for k, v in pids.items()}
        self.peak = dict.fromkeys(pids, 0)
        self.interval = interval
        self.halt = threading.Event()

    def run(self) -> None:
        import psutil

        while True:
            for key, procs in self.procs.items():
                for p in procs:
                    # a process may end before the last sample
                    with contextlib.suppress(psutil.Error):
                        self.peak[key] = max(self.peak[key], p.memory_info().rss)
            if self.halt.wait(self.interval):
                return

    def stop(self) -> dict[str, float]:
        self.halt.set()
        self.join()
        return {f"{k}_peak_rss_mib": v / 2**20 for k, v in self.peak.items()}


# --------------------------------------------------------------------------------------
# The two tools (inside the measured child, on a client of a fresh cluster)
# --------------------------------------------------------------------------------------
def _mosaicflow(client: Any, files: list[str], store: str, live: dict[str, Any]) -> dict[str, Any]:
    from engine import create_image_collection

    stamps: dict[str, float] = live.setdefault("stages", {})
    windows: set[Any] = set()
    t0 = time.perf_counter()

    def progress(event: dict[str, Any]) -> None:
        # tolerant: stages and fields may be added (e.g. "window" when submitting in windows)
        now = time.perf_counter() - t0
        stamps.setdefault(str(event.get("stage")), now)
        if event.get("window") is not None:  # submitted in windows: keep the last one too
            windows.add(event["window"])
            stamps[f"last_{event.get('stage')}"] = now
        if event.get("stage") == "planned" and "chunks" in event:
            stamps["chunks_planned"] = float(event["chunks"])
        if "images_done" in event:
            live["images_done"] = event["images_done"]

    result = create_image_collection(
        files, image_collection=store, client=client, progress=progress, overwrite=True
    )
    if result.exit_code:
        raise RuntimeError(f"mosaicflow exit code {result.exit_code}")
    chunks = stamps.pop("chunks_planned", None)
    return {
        "complete": len(result.complete),
        "planned_event_s": stamps.get("planned"),
        "output_chunks": int(chunks) if chunks is not None else None,
        "windows": len(windows) or None,
        "stages": stamps,
    }


def lattice_geobox(bounds: tuple[float, float, float, float]) -> Any:
    """The image's GeoBox on the collection lattice (origin (0, 0), ``CELL``, ``TILE``):
    corners snapped outward to the pixel lattice, origin moved up-left to a tile corner
    (engine.grid.Lattice.grid_for's rule, written here in odc-geo terms)."""
    from odc.geo.geobox import GeoBox

    left, bottom, right, top = bounds
    col0, row0 = math.floor(left / CELL), math.floor(-top / CELL)
    col1, row1 = math.ceil(right / CELL), math.ceil(-bottom / CELL)
    col0, row0 = col0 // TILE * TILE, row0 // TILE * TILE
    transform = Affine(CELL, 0, col0 * CELL, 0, -CELL, -row0 * CELL)
    return GeoBox((row1 - row0, col1 - col0), transform, CRS)


def _odc_geo(client: Any, files: list[str], store: str, live: dict[str, Any]) -> dict[str, Any]:
    import odc.geo.xr  # noqa: F401  (registers the .odc accessor)
    import rioxarray
    from distributed import as_completed
    from odc.geo.xr import xr_reproject
    from zarr.codecs import ZstdCodec

    from benchmarks.baselines import ZSTD_LEVEL

    writes, chunks, t0 = [], 0, time.perf_counter()
    for path in files:
        src: Any = rioxarray.open_rasterio(
            path, chunks={"band": -1, "y": TILE, "x": TILE}, lock=False
        )
        gbox = lattice_geobox(src.odc.geobox.boundingbox.bbox)
        chunks += math.ceil(gbox.shape.y / TILE) * math.ceil(gbox.shape.x / TILE)
        out = xr_reproject(src, gbox, resampling="nearest", chunks=(TILE, TILE))
        ds = out.to_dataset(dim="band").rename({1: "b1"})
        ds["b1"].attrs = {"grid_mapping": "spatial_ref"}
        enc = {"b1": {"chunks": (TILE, TILE), "compressors": (ZstdCodec(level=ZSTD_LEVEL),)}}
        enc["b1"]["_FillValue"] = out.attrs.get("nodata", 0)
        writes.append(
            ds.to_zarr(
                store, group=f"images/{Path(path).stem}", mode="w", compute=False,
                zarr_format=3, consolidated=False, encoding=enc,
            )
        )  # fmt: skip
    futures = client.compute(writes)
    live["stages"] = {"submitted": time.perf_counter() - t0}
    live["images_done"] = 0
    for fut in as_completed(futures):
        live["images_done"] += 1
        del fut  # results are None; let each future go as it completes
    failed = [f for f in futures if f.status != "finished"]
    if failed:
        raise RuntimeError(f"{len(failed)} odc-geo writes failed: {failed[0].exception()}")
    return {"complete": len(files), "output_chunks": chunks}


_RUNNERS: dict[str, Callable[[Any, list[str], str, dict[str, Any]], dict[str, Any]]] = {
    "mosaicflow": _mosaicflow,
    "odc-geo": _odc_geo,
}


def run_tool(
    tool: str, folder: str, store: str, workers: int = 2, live_path: str | None = None
) -> dict[str, Any]:
    """Run one tool on a fresh ``dask scheduler`` + ``workers`` × ``dask worker`` cluster
    (called in the measured child); the figures of the module docstring. ``live_path``
    gets the stage times and images done so far every 2 s, which is what is left of a run
    that hits the benchmark's timeout."""
    from distributed import Client

    from benchmarks.cluster_scaling import _dask_cli_cluster

    files = sorted(str(p) for p in Path(folder).glob("*.tif"))
    shutil.rmtree(store, ignore_errors=True)
    with _dask_cli_cluster(workers) as address, Client(address) as client:
        client.register_plugin(GraphCounter())
        pids = {
            "scheduler": [int(client.run_on_scheduler(os.getpid))],
            "client": [os.getpid()],
            "worker": [int(p) for p in client.run(os.getpid).values()],
        }
        sampler = _PeakRSS(pids)
        sampler.start()
        live: dict[str, Any] = {}
        dumper = _Dumper(live, sampler, live_path)
        dumper.start()
        t_wall, t0 = time.time(), time.perf_counter()
        try:
            out = _RUNNERS[tool](client, files, store, live)
        finally:
            dumper.halt.set()
        total = time.perf_counter() - t0
        peaks = sampler.stop()
        graphs = client.run_on_scheduler(_counter_stats)
    out.update(peaks)
    out.update(
        images=len(files),
        total_s=total,
        images_per_s=len(files) / total,
        first_submit_s=graphs.get("first_graph_at", math.nan) - t_wall,
        last_submit_s=graphs.get("last_graph_at", math.nan) - t_wall,
        graphs=graphs["graphs"],
        tasks=graphs["tasks"],
        peak_tasks_held=graphs["peak_tasks_held"],
    )
    # planning ends when the first graph of pixel work is submitted: mosaicflow reports it
    # ("submitted", first window); before windows it sent one graph, the scheduler's first
    out["plan_s"] = live.get("stages", {}).get("submitted", out["first_submit_s"])
    out["tasks_per_image"] = out["tasks"] / len(files)
    if out.get("output_chunks"):
        out["tasks_per_chunk"] = out["tasks"] / out["output_chunks"]
    return out


class _Dumper(threading.Thread):
    """Writes ``live`` and the RSS peaks so far to ``path`` every ``interval`` seconds."""

    def __init__(
        self, live: dict[str, Any], sampler: _PeakRSS, path: str | None, interval: float = 2.0
    ) -> None:
        super().__init__(daemon=True)
        self.live, self.sampler, self.path, self.interval = live, sampler, path, interval
        self.halt = threading.Event()

    def run(self) -> None:
        t0 = time.perf_counter()
        while self.path and not self.halt.wait(self.interval):
            snap = {"elapsed_s": time.perf_counter() - t0, **self.live}
            snap.update({f"{k}_peak_rss_mib": v / 2**20 for k, v in self.sampler.peak.items()})
            Path(self.path).write_text(json.dumps(snap, default=str))


# --------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------
COLUMNS = [
    ("tool", "tool", ""),
    ("plan_s", "plan s", ".1f"),
    ("last_submit_s", "last submit s", ".1f"),
    ("total_s", "total s", ".1f"),
    ("images_per_s", "images/s", ".1f"),
    ("tasks", "tasks", "d"),
    ("tasks_per_image", "tasks/image", ".2f"),
    ("tasks_per_chunk", "tasks/chunk", ".2f"),
    ("scheduler_peak_rss_mib", "sched MiB", ".0f"),
    ("client_peak_rss_mib", "client MiB", ".0f"),
    ("worker_peak_rss_mib", "worker MiB", ".0f"),
    ("status", "status", ""),
]
RATIOS = ("plan_s", "total_s", "images_per_s", "tasks", "scheduler_peak_rss_mib",
          "client_peak_rss_mib", "worker_peak_rss_mib")  # fmt: skip


def _row(tool: str, m: Measurement, live: Path) -> dict[str, Any]:
    row: dict[str, Any] = {"tool": tool, "status": m.status if m.ok else f"{m.status}: {m.note}"}
    if m.ok and isinstance(m.result, dict):
        row.update(m.result)
    elif live.is_file():  # cut off: how far it got (stage times, images done, RSS so far)
        row["partial"] = json.loads(live.read_text())
    row["wall_s"], row["tree_peak_rss_mib"] = m.wall_s, m.peak_rss_mib
    return row


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--images", type=int, default=10_000)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--tools", default=",".join(TOOLS))
    ap.add_argument("--timeout", type=float, default=1800, help="seconds per tool")
    args = ap.parse_args(argv)
    tools = [t for t in args.tools.split(",") if t]
    unknown = set(tools) - set(TOOLS)
    if unknown:
        ap.error(f"--tools: unknown {sorted(unknown)}; choose from {', '.join(TOOLS)}")

    folder = make_images(args.images)
    rows = []
    for tool in tools:
        store = WORK / f"out-{tool}.zarr"
        live = WORK / f"live-{tool}.json"
        live.unlink(missing_ok=True)
        print(f"{tool}: {args.images} images ...", file=sys.stderr, flush=True)
        kwargs = {"tool": tool, "folder": str(folder), "store": str(store)}
        m = run_callable(
            run_tool,
            {**kwargs, "workers": args.workers, "live_path": str(live)},
            name=tool,
            timeout=args.timeout,
            interval=0.5,  # the processes are sampled in the child; this is the tree total
            log_path=WORK / f"log-{tool}.log",
        )
        rows.append(_row(tool, m, live))
        print(f"  {rows[-1]['status']} {rows[-1].get('partial', '')}", file=sys.stderr, flush=True)
    by_tool = {r["tool"]: r for r in rows}
    ratios = {}
    if "mosaicflow" in by_tool and "odc-geo" in by_tool:
        mf, og = by_tool["mosaicflow"], by_tool["odc-geo"]
        ratios = {k: ratio(mf.get(k), og.get(k)) for k in RATIOS}
    print(format_table(rows, COLUMNS))
    if ratios:
        print("mosaicflow / odc-geo: " + ", ".join(
            f"{k} {v:.2f}" for k, v in ratios.items() if v is not None
        ))  # fmt: skip
    res = {"images": args.images, "workers": args.workers, "rows": rows, "ratios": ratios}
    out = WORK.parent / f"results-scale-{args.images}.json"
    out.write_text(json.dumps(res, indent=2, default=str))
    print(f"results: {out}")
    return 0 if all(r["status"] == "ok" for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
