"""exportImage latency against GDAL reading the same area from a VRT of the same images.

Workload E16: 16 GeoTIFFs of 2048 × 2048, 3 bands uint16, EPSG:32633 at 10 m, tiled 512²,
Zstandard level 1 (the encoding mosaicflow's store uses), laid 4 × 4 with 256 px overlaps
and a nodata corner each. They are ingested once (nearest, same CRS and cell size, so the
collection holds the same pixels) and served by the real ``mosaicflow serve``.

Requests (1024 × 1024 each, nearest): ``full`` — the whole collection (about 7.4× decimated),
``native`` — random windows at the native 10 m, crossing image edges, ``zoom`` — random
windows at 2-4× decimation. For each, in one run and round-robin:

* ``mosaicflow http``: GET exportImage (format=tiff, f=image) from the running server,
  which reads the Zarr chunks it needs and warps them (engine.mosaic);
* ``mosaicflow pixels``: the same request in process (no HTTP, no encoding);
* ``gdal vrt``: ``gdalbuildvrt`` over the 16 GeoTIFFs, then rasterio (GDAL 3.10)
  ``read(window=..., out_shape=(3, 1024, 1024))`` plus a GeoTIFF encode in memory, the work
  exportImage does; once with GDAL's defaults and once with ``GDAL_NUM_THREADS=ALL_CPUS``.

The report gives p50/p95 latency per tool and request kind and the ratio mosaicflow /
GDAL (the faster GDAL setting); the target is ≤ 1.0. Pixels are compared too (the share of
equal pixels between mosaicflow and GDAL, which must be 1.0 for ``native``).

    python -m benchmarks.export_image [--repeat 15] [--port 8931]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import rasterio
from affine import Affine
from rasterio.io import MemoryFile
from rasterio.windows import from_bounds

WORK = Path(__file__).resolve().parent / "work" / "export"
N, SIZE, STEP, CELL = 4, 2048, 1792, 10.0  # 4 × 4 images, 256 px overlaps
X0, Y0 = 400_000.0, 5_600_000.0
OUT = 1024


def make_sources(folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    rng = np.random.default_rng(7)
    yy, xx = np.mgrid[0:SIZE, 0:SIZE].astype("float32")
    for i in range(N):
        for j in range(N):
            path = folder / f"img_{i}_{j}.tif"
            paths.append(path)
            if path.exists():
                continue
            gx, gy = xx + j * STEP, yy + i * STEP  # world-consistent content
            bands = []
            for b in range(3):
                base = 2000 + 1500 * np.sin(gx / (180 + 40 * b)) * np.cos(gy / (230 - 30 * b))
                noise = rng.normal(0, 60, (SIZE, SIZE)).astype("float32")
                bands.append(np.clip(base + noise + 800 * b, 1, 60000).astype("uint16"))
            data = np.stack(bands)
            data[:, (xx + yy) < 300] = 0  # a nodata corner
            profile = {
                "driver": "GTiff", "width": SIZE, "height": SIZE, "count": 3, "dtype": "uint16",
                "crs": "EPSG:32633", "nodata": 0, "tiled": True, "blockxsize": 512,
                "blockysize": 512, "compress": "zstd", "zstd_level": 1,
                "transform": Affine(CELL, 0, X0 + j * STEP * CELL, 0, -CELL, Y0 - i * STEP * CELL),
            }  # fmt: skip
            with rasterio.open(path, "w", **profile) as dst:
                dst.write(data)
    return paths


def build_vrt(paths: list[Path], vrt: Path) -> None:
    subprocess.run(
        ["gdalbuildvrt", "-q", "-overwrite", str(vrt), *map(str, paths)], check=True, timeout=120
    )


def ingest(paths: list[Path], store: Path) -> None:
    if (store / "catalog.parquet").exists():
        return
    from engine import create_image_collection

    create_image_collection(
        [str(p) for p in paths],
        image_collection=str(store),
        context={"resamplingMethod": "NEAREST"},
    )


def requests(repeat: int, seed: int = 1) -> list[tuple[str, tuple[float, float, float, float]]]:
    """(kind, bbox) pairs, round-robin over kinds."""
    rng = np.random.default_rng(seed)
    total = (N - 1) * STEP + SIZE
    xmin, ymax = X0, Y0
    full = (xmin, ymax - total * CELL, xmin + total * CELL, ymax)
    out = []
    for _ in range(repeat):
        out.append(("full", full))
        for kind, zoom in (("native", 1.0), ("zoom", float(rng.uniform(2, 4)))):
            span = OUT * zoom
            c = float(rng.uniform(0, total - span))
            r = float(rng.uniform(0, total - span))
            c, r = round(c), round(r)  # on the lattice
            box = (
                xmin + c * CELL,
                ymax - (r + span) * CELL,
                xmin + (c + span) * CELL,
                ymax - r * CELL,
            )
            out.append((kind, box))
    return out


def gdal_read(vrt: Path, bbox: tuple[float, ...]) -> tuple[np.ndarray, bytes]:
    with rasterio.open(vrt) as ds:
        window = from_bounds(*bbox, transform=ds.transform)
        data = ds.read(window=window, out_shape=(3, OUT, OUT), boundless=False)
        transform = ds.window_transform(window) * Affine.scale(
            window.width / OUT, window.height / OUT
        )
        with MemoryFile() as mem:
            with mem.open(driver="GTiff", width=OUT, height=OUT, count=3, dtype="uint16",
                          crs=ds.crs, transform=transform, nodata=0) as dst:  # fmt: skip
                dst.write(data)
            return data, mem.read()


def _params(bbox: tuple[float, ...]) -> dict[str, str]:
    return {
        "bbox": ",".join(repr(v) for v in bbox),
        "size": f"{OUT},{OUT}",
        "format": "tiff",
        "f": "image",
        "interpolation": "RSP_NearestNeighbor",
        # a VRT draws its sources in order, the last on top: the same as MT_LAST here
        "mosaicRule": json.dumps({"mosaicMethod": "esriMosaicNone", "mosaicOperation": "MT_LAST"}),
    }


def _lower(params: dict[str, str]) -> dict[str, str]:
    return {k.lower(): v for k, v in params.items()}  # as the server reads them


def _http(http: httpx.Client, base: str, bbox: tuple[float, ...]) -> bytes:
    r = http.get(f"{base}/exportImage", params=_params(bbox))
    assert r.headers["content-type"] == "image/tiff", r.text[:300]
    return r.content


def _threaded(func: Any, *args: Any) -> Any:
    with rasterio.Env(GDAL_NUM_THREADS="ALL_CPUS"):
        return func(*args)


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=15)
    ap.add_argument("--port", type=int, default=8931)
    args = ap.parse_args(argv)

    paths = make_sources(WORK / "sources")
    vrt = WORK / "mosaic.vrt"
    build_vrt(paths, vrt)
    root = WORK / "store"
    ingest(paths, root / "e16.zarr")

    from engine.server import imageserver
    from engine.server.imageserver_export import _export

    imageserver.configure(root)
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "engine.cli",
            "serve",
            "--root",
            str(root),
            "--port",
            str(args.port),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{args.port}/arcgis/rest/services/Hosted/e16/ImageServer"
    times: dict[tuple[str, str], list[float]] = {}
    equal: dict[str, list[float]] = {}
    try:
        with httpx.Client(timeout=120) as http:
            for _ in range(300):
                try:
                    http.get(base, params={"f": "json"})
                    break
                except httpx.TransportError:
                    time.sleep(0.1)
            work = requests(args.repeat)
            # one warm-up of each path (imports, file handles, GDAL caches)
            http.get(f"{base}/exportImage", params=_params(work[0][1]))
            _export("e16", _lower(_params(work[0][1])))
            gdal_read(vrt, work[0][1])
            for n, (kind, bbox) in enumerate(work):
                # rotate which tool goes first, so none always meets a cold cache
                runs = [
                    ("mosaicflow http", lambda b=bbox: _http(http, base, b)),
                    ("mosaicflow pixels", lambda b=bbox: _export("e16", _lower(_params(b)))),
                    ("gdal vrt", lambda b=bbox: gdal_read(vrt, b)),
                    ("gdal vrt threads", lambda b=bbox: _threaded(gdal_read, vrt, b)),
                ]
                runs = runs[n % 4 :] + runs[: n % 4]
                got: dict[str, Any] = {}
                for name, run in runs:
                    t = time.perf_counter()
                    got[name] = run()
                    times.setdefault((name, kind), []).append(time.perf_counter() - t)
                ref = got["gdal vrt"][0]
                equal.setdefault(kind, []).append(
                    float((got["mosaicflow pixels"].data == ref).mean())
                )
    finally:
        proc.terminate()
        proc.wait(timeout=30)

    kinds = ("full", "native", "zoom")
    tools = ("mosaicflow http", "mosaicflow pixels", "gdal vrt", "gdal vrt threads")
    results: dict[str, Any] = {"workload": "E16", "repeat": args.repeat, "cpus": os.cpu_count()}
    print(f"exportImage {OUT}x{OUT} over 16 images, {args.repeat} requests per kind\n")
    print(f"{'tool':<20}" + "".join(f"{k + ' p50':>12}{k + ' p95':>12}" for k in kinds))
    for tool in tools:
        row = f"{tool:<20}"
        for k in kinds:
            v = times[(tool, k)]
            p50, p95 = statistics.median(v), percentile(v, 95)
            results.setdefault(tool, {})[k] = {"p50_s": p50, "p95_s": p95}
            row += f"{p50 * 1000:>10.0f}ms{p95 * 1000:>10.0f}ms"
        print(row)
    print("\nratio mosaicflow http / best GDAL (p50, p95); ≤ 1.0 meets the target")
    for k in kinds:
        best = min(
            (results[t][k] for t in ("gdal vrt", "gdal vrt threads")), key=lambda r: r["p50_s"]
        )
        mf = results["mosaicflow http"][k]
        r50, r95 = mf["p50_s"] / best["p50_s"], mf["p95_s"] / best["p95_s"]
        px = results["mosaicflow pixels"][k]["p50_s"] / best["p50_s"]
        results.setdefault("ratios", {})[k] = {"http_p50": r50, "http_p95": r95, "pixels_p50": px}
        share = min(equal[k])
        results.setdefault("equal_pixels_min", {})[k] = share
        print(
            f"  {k:<7} http {r50:5.2f}× / {r95:5.2f}×   pixels-only {px:5.2f}×   equal pixels ≥ {share:.4f}"
        )
    (WORK.parent / "results-export.json").write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
