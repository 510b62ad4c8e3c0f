"""Benchmark (c) of issue 7: W8 on 1 and on 2 Dask workers, speed-up per cluster layout.

Run from the repository root::

    python -m benchmarks.cluster_scaling                     # W8, every layout, 1 and 2 workers
    python -m benchmarks.cluster_scaling --repeat 2          # round-robin, fastest of each
    python -m benchmarks.cluster_scaling --scenes 2 --size 1024 --layouts threads

Layouts (each run in its own measured subprocess, ``benchmarks.measure``):

threads
    The default local cluster: one worker in the process, N threads.
processes
    ``processes=True`` (``mosaicflow create --processes``): N single-threaded worker
    processes under nannies, a LocalCluster.
dask-cli
    A real cluster: ``dask scheduler`` and N ``dask worker --nthreads 1`` processes on
    loopback, started inside the measured child, and the ingestion through ``scheduler=``
    (the ``--scheduler`` path). Start-up counts in wall time, not in ingest time.

``ingest s`` is the engine's own elapsed time (probe → plan → chunks → catalog);
``wall s`` adds interpreter start-up, imports and cluster start-up. ``chunks s`` runs
from the cluster being up to the last chunk (the work on the workers, with each worker's
first-task warm-up: imports, numba's cached kernels), ``warm-up s`` to the first chunk.
``speed-up`` is a layout's ingest time on 1 worker divided by its time on 2, ``chunks
speed-up`` the same for ``chunks s``: the issue's target is ≥ 1.8×.
A worker here is one task slot, so 2 workers on this 2-core machine use every core.

Results are printed and written to ``benchmarks/work/results-cluster-scaling.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks.measure import Measurement, format_table, run_callable
from engine.synth import make_scenes

WORK = Path(__file__).resolve().parent / "work"
LAYOUTS = ("threads", "processes", "dask-cli")
CONTEXT = {"outSR": {"wkid": 3857}, "cellSize": 60, "resamplingMethod": "BILINEAR"}


def run_layout(scenes: Sequence[str], out_store: str, layout: str, workers: int) -> dict[str, Any]:
    """Ingest ``scenes`` on ``workers`` workers of ``layout`` (runs in the measured child).

    Parameters
    ----------
    scenes : sequence of str
        Input GeoTIFFs.
    out_store : str
        The collection to create (replaced).
    layout : str
        One of :data:`LAYOUTS`.
    workers : int
        Task slots: threads (``threads``) or single-threaded worker processes.

    Returns
    -------
    dict
        ``ingest_s`` (the engine's elapsed time), ``chunks_s`` (from the cluster being up
        to the last chunk), ``warmup_s`` (to the first chunk), ``images``, ``checksums``.
    """
    from engine import create_image_collection

    marks: dict[str, float] = {}
    t0 = time.perf_counter()

    def progress(event: dict[str, Any]) -> None:
        now = time.perf_counter() - t0
        if event.get("stage") == "compute":  # the cluster is up, chunk tasks submitted next
            marks["compute"] = now
        elif event.get("stage") == "chunks":
            marks.setdefault("first_chunk", now)
            marks["last_chunk"] = now

    kw: dict[str, Any] = {
        "image_collection": out_store,
        "context": CONTEXT,
        "overwrite": True,
        "progress": progress,
    }
    if layout == "dask-cli":
        with _dask_cli_cluster(workers) as address:
            result = create_image_collection(list(scenes), scheduler=address, **kw)
    else:
        result = create_image_collection(
            list(scenes), workers=workers, processes=layout == "processes", **kw
        )
    if result.exit_code:
        raise RuntimeError(f"exit code {result.exit_code}: {result.to_dict()['failed']}")
    return {
        "ingest_s": result.elapsed,
        "chunks_s": marks["last_chunk"] - marks["compute"],
        "warmup_s": marks["first_chunk"] - marks["compute"],
        "images": len(result.complete),
        "checksums": sorted(r.checksum for r in result.complete),
    }


class _dask_cli_cluster:
    """``dask scheduler`` + ``workers`` × ``dask worker --nthreads 1`` on loopback."""

    def __init__(self, workers: int) -> None:
        self.workers = workers
        self.procs: list[subprocess.Popen[bytes]] = []
        self.tmp = Path(tempfile.mkdtemp(prefix="mf-cluster-"))

    def __enter__(self) -> str:
        from distributed import Client

        dask = str(Path(sys.executable).parent / "dask")
        sched_file = self.tmp / "scheduler.json"
        self.procs.append(
            subprocess.Popen(
                [dask, "scheduler", "--host", "127.0.0.1", "--port", "0", "--no-dashboard",
                 "--scheduler-file", str(sched_file)],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )
        )  # fmt: skip
        deadline = time.monotonic() + 60
        while not (sched_file.is_file() and sched_file.stat().st_size):
            if time.monotonic() > deadline:
                raise RuntimeError("dask scheduler did not start in 60 s")
            time.sleep(0.05)
        address = str(json.loads(sched_file.read_text())["address"])
        for k in range(self.workers):
            self.procs.append(
                subprocess.Popen(
                    [dask, "worker", address, "--name", f"w{k}", "--nthreads", "1",
                     "--memory-limit", "0", "--no-dashboard"],
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                )
            )  # fmt: skip
        with Client(address, timeout=60) as c:
            c.wait_for_workers(self.workers, timeout=120)
        return address

    def __exit__(self, *exc: object) -> None:
        for p in reversed(self.procs):
            p.send_signal(signal.SIGTERM)
        for p in self.procs:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
        shutil.rmtree(self.tmp, ignore_errors=True)


def _busy_percent(seconds: float = 1.0) -> float:
    """System-wide CPU use (%) over ``seconds`` before a run: other sessions' load, which
    slows every layout (2 cores): the table shows it beside each best run."""
    import psutil

    return float(psutil.cpu_percent(interval=seconds))


def _row(m: Measurement, layout: str, workers: int) -> dict[str, Any]:
    res = m.result if isinstance(m.result, dict) else {}
    cores = m.cpu_s / m.wall_s if m.ok and m.cpu_s and m.wall_s else None
    return {
        "layout": layout,
        "workers": workers,
        "wall_s": m.wall_s if m.ok else None,
        "ingest_s": res.get("ingest_s"),
        "chunks_s": res.get("chunks_s"),
        "warmup_s": res.get("warmup_s"),
        "cpu_s": m.cpu_s if m.ok else None,
        "cores": cores,
        "peak_rss_mib": m.peak_rss_mib if m.ok else None,
        "status": m.status if m.ok else f"{m.status}: {m.note[:120]}",
        "checksums": res.get("checksums"),
    }


def main(argv: Sequence[str] | None = None) -> int:
    """Run the layouts on 1 and 2 workers; print the table; write the JSON results."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--scenes", type=int, default=8)
    p.add_argument("--size", type=int, default=4096)
    p.add_argument("--layouts", default=",".join(LAYOUTS))
    p.add_argument("--repeat", type=int, default=1)
    p.add_argument("--timeout", type=float, default=1800)
    args = p.parse_args(argv)
    layouts = [x.strip() for x in args.layouts.split(",") if x.strip()]
    for x in layouts:
        if x not in LAYOUTS:
            p.error(f"unknown layout {x!r}: choose among {', '.join(LAYOUTS)}")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    WORK.mkdir(parents=True, exist_ok=True)
    # the same cached scenes as benchmarks.ingest
    scene_dir = WORK / f"scenes-{args.size}px-3b-s0"
    scenes = [str(s) for s in make_scenes(scene_dir, n=args.scenes, size=args.size)]
    out = WORK / "out-cluster-scaling"
    print(
        f"# cluster scaling: {args.scenes} scenes of {args.size}², {os.cpu_count()} cores, "
        f"layouts {', '.join(layouts)}, 1 and 2 workers, repeat {args.repeat}"
    )
    runs: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for r in range(args.repeat):
        for layout in layouts:
            for workers in (1, 2):
                name = f"{layout}-{workers}"
                kw = {
                    "scenes": scenes,
                    "out_store": str(out / "collection.zarr"),
                    "layout": layout,
                    "workers": workers,
                }
                busy = _busy_percent()
                m = run_callable(
                    run_layout, kw, name=name, timeout=args.timeout,
                    log_path=WORK / "logs" / f"cluster-{name}.log",
                )  # fmt: skip
                row = _row(m, layout, workers) | {"busy_before_pct": busy}
                runs.setdefault((layout, workers), []).append(row)
                print(
                    f"run {r + 1}: {name:<12} wall {row['wall_s'] or float('nan'):.1f} s, "
                    f"ingest {row['ingest_s'] or float('nan'):.1f} s, {row['status']} "
                    f"(machine {busy:.0f} % busy before)",
                    flush=True,
                )
    best = {k: min(v, key=lambda row: row["ingest_s"] or float("inf")) for k, v in runs.items()}
    rows = []
    for (layout, workers), row in best.items():
        one = best.get((layout, 1), {}).get("ingest_s")
        row = dict(row)
        row["speedup"] = one / row["ingest_s"] if workers == 2 and one and row["ingest_s"] else None
        one_c = best.get((layout, 1), {}).get("chunks_s")
        two_c = row.get("chunks_s")
        row["chunks_speedup"] = one_c / two_c if workers == 2 and one_c and two_c else None
        rows.append(row)
    columns = [
        ("layout", "layout", ""), ("workers", "workers", "d"), ("wall_s", "wall s", ".1f"),
        ("ingest_s", "ingest s", ".1f"), ("chunks_s", "chunks s", ".1f"),
        ("warmup_s", "warm-up s", ".1f"), ("cpu_s", "cpu s", ".1f"), ("cores", "cores", ".2f"),
        ("peak_rss_mib", "peak RSS MiB", ".0f"), ("busy_before_pct", "busy % before", ".0f"), ("speedup", "speed-up 1→2", ".2f"),
        ("chunks_speedup", "chunks speed-up", ".2f"),
        ("status", "status", ""),
    ]  # fmt: skip
    print()
    print(format_table(rows, columns))
    sums = {tuple(r["checksums"] or ()) for r in rows if r["checksums"]}
    print(f"\npixels: {'identical' if len(sums) == 1 else 'DIFFER'} across every run (checksums)")
    (WORK / "results-cluster-scaling.json").write_text(
        json.dumps(
            {
                "args": vars(args),
                "best": rows,
                "runs": {f"{k[0]}-{k[1]}": v for k, v in runs.items()},
            },
            indent=2,
        )
    )
    return 0 if all(r["status"] == "ok" for r in rows) and len(sums) == 1 else 1


if __name__ == "__main__":
    sys.exit(main())
