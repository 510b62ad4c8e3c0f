"""Chunk-kernel benchmark: GDAL WarpedVRT per chunk versus graphs.fastwarp.

    python -m benchmarks.kernel_bench                     # bilinear, 12 chunks, 3 rounds
    python -m benchmarks.kernel_bench --methods nearest,bilinear,cubic --chunks 24

On one W8 scene (engine.synth.make_scenes(n=1, size=4096): UTM 33N, 30 m, 3 x uint16,
nodata 0) warped onto EPSG:3857 at 60 m (XSCALE ~ 0.84, GDAL's widened general kernel),
each 512 x 512 chunk is computed by

* GDAL: a WarpedVRT shaped like the chunk (as graphs.chunk.warp_part), transformer error
  threshold 0.125 px (gdalwarp's default), 1e-4 px (mosaicflow's interpolating default)
  and 1e-9 px (exact, the reference);
* fastwarp: graphs.fastwarp.warp_chunk_fast (after a JIT warm-up).

Single thread, warm GDAL block cache (every tool reads the same blocks, so decompression
is not what is compared). Reports the median time per chunk, the ratios, and agreement
with GDAL's exact warp.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np
import rasterio

from engine.grid import Grid, Lattice
from engine.plan import resampling_scale
from engine.synth import make_scenes
from graphs.chunk import gdal_warp
from graphs.fastwarp import warp_chunk_fast

WORK = Path(__file__).resolve().parent / "work"
TILE = 512
CELL = 60.0
DST_CRS = "EPSG:3857"
NODATA = 0


def gdal_chunk(ds, chunk: Grid, method: str, tol: float, scale) -> np.ndarray:
    """GDAL's warp of one chunk: mosaicflow's own GDAL path (graphs.chunk.gdal_warp)."""
    return gdal_warp(
        ds, chunk, method, bands=[1, 2, 3], src_nodata=NODATA, dst_nodata=NODATA,
        dtype="uint16", scale=scale, tolerance=tol,
    )[0]  # fmt: skip


def agreement(got: np.ndarray, ref: np.ndarray) -> dict:
    gm, rm = got == NODATA, ref == NODATA
    both = ~gm & ~rm
    d = np.abs(got.astype("int64") - ref.astype("int64"))[both]
    return {
        "pixels": int(ref.size),
        "valid": int(both.sum()),
        "nodata_mismatch": int((gm != rm).sum()),
        "identical": float((d == 0).mean()) if d.size else 1.0,
        "within_1dn": float((d <= 1).mean()) if d.size else 1.0,
        "max_diff": int(d.max()) if d.size else 0,
    }


def merge(stats: list[dict]) -> dict:
    valid = sum(s["valid"] for s in stats) or 1
    return {
        "pixels": sum(s["pixels"] for s in stats),
        "valid": valid,
        "nodata_mismatch": sum(s["nodata_mismatch"] for s in stats),
        "identical": sum(s["identical"] * s["valid"] for s in stats) / valid,
        "within_1dn": sum(s["within_1dn"] * s["valid"] for s in stats) / valid,
        "max_diff": max(s["max_diff"] for s in stats),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--methods", default="bilinear")
    ap.add_argument("--chunks", type=int, default=12, help="chunks timed (most valid first)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", default=str(WORK / "results-kernel.json"))
    args = ap.parse_args(argv)

    scene = make_scenes(WORK / "scenes-4096px-3b-s0", n=1, size=4096)[0]
    results: dict = {"scene": str(scene), "tile": TILE, "cell": CELL, "methods": {}}
    with rasterio.Env(GDAL_CACHEMAX=1024, GDAL_NUM_THREADS=1), rasterio.open(scene) as ds:
        native = Grid(ds.crs, ds.transform, ds.shape)
        lattice = Lattice(DST_CRS, CELL, TILE)
        grid = lattice.grid_for(native.footprint_in(DST_CRS, 21).bounds)
        scale = resampling_scale(native, grid)
        origin = (round(-grid.transform.f / CELL), round(grid.transform.c / CELL))
        ds.read()  # warm GDAL's block cache: every contender reads the same blocks
        tiles = [(i, j, g) for i, j, g in lattice.tiles(grid) if g.shape == (TILE, TILE)]
        # the chunks nearest the centre first (all data: the footprint is a tilted square)
        ci, cj = grid.height / TILE / 2 - 0.5, grid.width / TILE / 2 - 0.5
        tiles.sort(key=lambda t: (t[0] - ci) ** 2 + (t[1] - cj) ** 2)
        tiles = tiles[: args.chunks]
        print(f"scene {scene.name}: grid {grid.shape}, XSCALE/YSCALE {scale}, {len(tiles)} chunks")
        for method in args.methods.split(","):

            def fast(i, j, g, method=method):
                return warp_chunk_fast(
                    ds,
                    [1, 2, 3],
                    native,
                    g,
                    (origin[0] + i * TILE, origin[1] + j * TILE),
                    method,
                    NODATA,
                    NODATA,
                    "uint16",
                    scale,
                )

            contenders = {
                "gdal_0.125": lambda i, j, g, m=method: gdal_chunk(ds, g, m, 0.125, scale),
                "gdal_1e-4": lambda i, j, g, m=method: gdal_chunk(ds, g, m, 1e-4, scale),
                "gdal_1e-9": lambda i, j, g, m=method: gdal_chunk(ds, g, m, 1e-9, scale),
                "fastwarp": fast,
            }
            fast(*tiles[0])  # JIT warm-up (compiles, or loads numba's cache)
            times: dict[str, list[float]] = {k: [] for k in contenders}
            outputs: dict[str, list[np.ndarray]] = {k: [] for k in contenders}
            for rnd in range(args.rounds):
                for name, fn in contenders.items():
                    for i, j, g in tiles:
                        t0 = time.perf_counter()
                        a = fn(i, j, g)
                        times[name].append(time.perf_counter() - t0)
                        if rnd == 0:
                            outputs[name].append(a)
            med = {k: statistics.median(v) * 1e3 for k, v in times.items()}
            ref = outputs["gdal_1e-9"]
            agree = {
                k: merge([agreement(a, r) for a, r in zip(outputs[k], ref, strict=True)])
                for k in ("gdal_0.125", "gdal_1e-4", "fastwarp")
            }
            ratios = {k: med[k] / med["fastwarp"] for k in med}
            results["methods"][method] = {"ms_per_chunk": med, "speedup": ratios, "vs_exact": agree}
            print(f"\n{method}: median ms per 512² chunk (3 bands uint16), speed-up of fastwarp")
            for k in contenders:
                print(f"  {k:11s} {med[k]:7.1f} ms   x{ratios[k]:.2f}")
            print("  agreement with GDAL exact (1e-9):")
            for k, s in agree.items():
                print(
                    f"  {k:11s} identical {s['identical']:.5%}  within 1 DN {s['within_1dn']:.5%}"
                    f"  max {s['max_diff']}  nodata mismatches {s['nodata_mismatch']}"
                    f" of {s['pixels']}"
                )
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
