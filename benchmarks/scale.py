"""Many small images: where the time goes from inputs to a published collection.

Workload S(N): N GeoTIFFs of 64 × 64, one band uint8, EPSG:32633 at 10 m, laid on a square
grid with small overlaps (N = 10,000 by default). One `create_image_collection` run on a
LocalCluster, with the stage times taken from the engine's progress events:

* ``plan``: inputs resolved, every image probed, the collection planned (target < 10 s
  for 10,000 images);
* ``compute``: templates written and every chunk task run;
* ``publish``: catalog, STAC and descriptor written;

plus images/s over the whole run and the scheduler's peak RSS (sampled every 0.2 s).

    python -m benchmarks.scale [--images 10000] [--workers 2]
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import rasterio
from affine import Affine

WORK = Path(__file__).resolve().parent / "work" / "scale"


def make_images(n: int) -> Path:
    folder = WORK / f"small-{n}"
    done = folder / ".complete"
    if done.exists():
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    side = math.ceil(math.sqrt(n))
    rng = np.random.default_rng(3)
    for k in range(n):
        i, j = divmod(k, side)
        data = rng.integers(1, 255, (1, 64, 64), dtype="uint8")
        profile = {
            "driver": "GTiff", "width": 64, "height": 64, "count": 1, "dtype": "uint8",
            "crs": "EPSG:32633", "nodata": 0,
            "transform": Affine(10, 0, 400_000 + j * 600, 0, -10, 5_600_000 - i * 600),
        }  # fmt: skip
        with rasterio.open(folder / f"s{k:05d}.tif", "w", **profile) as dst:
            dst.write(data)
    done.touch()
    return folder


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=10_000)
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args(argv)

    from distributed import Client, LocalCluster

    from engine import create_image_collection

    folder = make_images(args.images)
    out = WORK / "out.zarr"
    shutil.rmtree(out, ignore_errors=True)
    stamps: dict[str, float] = {}
    t0 = time.perf_counter()

    def progress(event: dict[str, Any]) -> None:
        stamps.setdefault(str(event.get("stage")), time.perf_counter() - t0)

    with (
        LocalCluster(n_workers=1, threads_per_worker=args.workers, processes=True) as cluster,
        Client(cluster) as client,
    ):
        sched = psutil.Process(cluster.scheduler_comm.address and _scheduler_pid(client))
        peak = [sched.memory_info().rss]
        stop = threading.Event()

        def sample() -> None:
            while not stop.wait(0.2):
                peak[0] = max(peak[0], sched.memory_info().rss)

        threading.Thread(target=sample, daemon=True).start()
        t0 = time.perf_counter()
        result = create_image_collection(
            [str(folder)], image_collection=str(out), client=client, progress=progress
        )
        total = time.perf_counter() - t0
        stop.set()
    res = {
        "images": args.images,
        "complete": len(result.complete),
        "plan_s": stamps.get("planned"),
        "compute_s": (stamps.get("publish") or total) - (stamps.get("planned") or 0.0),
        "total_s": total,
        "images_per_s": args.images / total,
        "scheduler_peak_rss_mib": peak[0] / 2**20,
        "stages": stamps,
    }
    print(json.dumps(res, indent=2))
    (WORK.parent / f"results-scale-{args.images}.json").write_text(json.dumps(res, indent=2))
    return 0


def _scheduler_pid(client: Any) -> int:
    import os

    return int(client.run_on_scheduler(os.getpid))


if __name__ == "__main__":
    sys.exit(main())
