"""byref against byvalue: store size, ingestion time, and window reads (exportImage's path).

Workload: N synthetic scenes (engine.synth, 3 bands uint16, 30 m, EPSG:32633) ingested
twice to EPSG:3857 with bilinear resampling, once copying the pixels and once by
reference. Reported: the bytes under ``images/`` of each store, the create times, and the
time of ``engine.mosaic.render`` (what exportImage runs) of a 1024 × 1024 window on the
collection grid with nearest, cold (a fresh image index) and warm (the same index again),
plus whether both stores give the same pixels.

    python -m benchmarks.byref [--scenes 4] [--size 2048] [--workers 2]
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
from affine import Affine

from engine import create_image_collection, open_collection
from engine.grid import Grid
from engine.mosaic import ImageIndex, render
from engine.synth import make_scenes


def _bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _render(path: Path, window: int) -> tuple[np.ndarray, list[float]]:
    coll = open_collection(path)
    first = coll.catalog.to_pylist()[0]
    start = Affine(*first["grid_transform"]) @ Affine.translation(256, 256)
    grid = Grid(coll.mosaic_index.crs, start, (window, window))
    index = ImageIndex(coll.path, coll.mosaic_index.crs)
    times = []
    for _ in range(2):  # cold, then warm (the same index: its caches filled)
        t = time.perf_counter()
        data, _ = render(index, coll.image_ids, ["b1", "b2", "b3"], grid, resampling="nearest")
        times.append(round(time.perf_counter() - t, 3))
    return data, times


def run(work: Path, scenes: int, size: int, workers: int, window: int = 1024) -> dict[str, Any]:
    """Ingest the scenes byvalue and byref into ``work`` and measure both stores."""
    sources = [str(p) for p in make_scenes(work / f"in-{size}", n=scenes, size=size, bands=3)]
    out: dict[str, Any] = {"scenes": scenes, "size": size, "sources_MB": 0.0}
    out["sources_MB"] = round(sum(Path(s).stat().st_size for s in sources) / 1e6, 1)
    mosaics = {}
    for mode in ("byvalue", "byref"):
        store = work / f"{mode}.zarr"
        shutil.rmtree(store, ignore_errors=True)
        t = time.perf_counter()
        result = create_image_collection(
            {"uris": sources, "byref": mode == "byref"},
            image_collection=str(store),
            context={"outSR": 3857, "resamplingMethod": "BILINEAR"},
            workers=workers,
        )
        assert result.exit_code == 0, result.failed
        out[f"{mode}_create_s"] = round(time.perf_counter() - t, 2)
        out[f"{mode}_images_MB"] = round(_bytes(store / "images") / 1e6, 2)
        mosaics[mode], out[f"{mode}_render_cold_warm_s"] = _render(store, window)
    out["same_pixels"] = bool(np.array_equal(mosaics["byvalue"], mosaics["byref"], equal_nan=True))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scenes", type=int, default=4)
    ap.add_argument("--size", type=int, default=2048)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--work", default="benchmarks/work/byref")
    args = ap.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    print(json.dumps(run(work, args.scenes, args.size, args.workers), indent=1))


if __name__ == "__main__":
    main()
