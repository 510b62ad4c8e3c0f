"""Lazy mosaics for notebooks: ``Collection.mosaic`` against GDAL reading a VRT of the same
images and against odc-stac/stackstac-style loading with odc-geo, side by side.

Workload E16 (the sources of benchmarks/export_image.py): 16 GeoTIFFs of 2048 × 2048,
3 bands uint16, EPSG:32633 at 10 m, tiled 512², Zstandard, laid 4 × 4 with 256 px overlaps
(7424 × 7424 px in all) and a nodata corner each. They are ingested once (nearest, same CRS
and cell size, so level 0 holds the same pixels; the store has its 2×, 4×, … overviews).

Grids (2048 × 2048, nearest, the last image on top as a VRT draws its sources):

* ``full`` — the whole collection (3.6× decimated);
* ``native`` — random 2048² windows at the native 10 m, crossing image edges.

Tools, in one run, round-robin (the first tool rotates so none always meets a cold cache):

* ``mosaicflow``: ``open_collection(store).mosaic(bbox, shape=(2048, 2048), method="last",
  chunks=1024).compute()`` on Dask's threads: one task per 1024² block, each reading only
  the images that meet it, from the overview level that fits (the 2× level for ``full``);
* ``gdal vrt``: ``gdalbuildvrt`` over the GeoTIFFs, then rasterio ``read(window=...,
  out_shape=(3, 2048, 2048))`` (nearest), the faster of GDAL's default threading and
  ``GDAL_NUM_THREADS=ALL_CPUS``; ``gdal vrt+ovr`` is the same with nearest overviews on
  the sources (``gdaladdo -ro -r nearest``, external .ovr, on hard links of the files),
  which the VRT uses as its implicit overviews — the rival that reads as little as
  mosaicflow does on ``full`` (the store's overviews are nearest too, as the collection's
  resampling, but take the pixel under each overview pixel's centre where gdaladdo takes
  the top-left one, and GDAL may pick another level: its pixels differ, its work is alike);
* ``odc-geo``: for each GeoTIFF that meets the grid, ``rioxarray.open_rasterio`` (Dask
  chunks 1024²) and ``odc.geo.xr.xr_reproject`` onto the same GeoBox (nearest), then a
  last-valid combine, computed on Dask's threads (how odc-stac/stackstac load and fuse).

The report gives the median time per tool and grid, the ratios mosaicflow / GDAL and
mosaicflow / odc-geo (< 1: mosaicflow is faster), and the share of pixels equal to GDAL's
(``native`` must be 1.0 for mosaicflow and odc-geo against ``gdal vrt``).

    python -m benchmarks.mosaic [--repeat 5]
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

import numpy as np
import rasterio
import rioxarray
import xarray as xr
from affine import Affine
from rasterio.windows import from_bounds

from benchmarks.export_image import CELL, SIZE, STEP, X0, Y0, N, build_vrt, ingest, make_sources

WORK = Path(__file__).resolve().parent / "work"
OUT = 2048
NODATA = 0


def grids(repeat: int, seed: int = 3) -> list[tuple[str, tuple[float, float, float, float]]]:
    """(kind, bbox) pairs, round-robin over kinds; native windows on the 10 m lattice."""
    rng = np.random.default_rng(seed)
    total = (N - 1) * STEP + SIZE
    full = (X0, Y0 - total * CELL, X0 + total * CELL, Y0)
    out = []
    for _ in range(repeat):
        out.append(("full", full))
        c, r = (int(rng.integers(0, total - OUT)) for _ in range(2))
        box = (X0 + c * CELL, Y0 - (r + OUT) * CELL, X0 + (c + OUT) * CELL, Y0 - r * CELL)
        out.append(("native", box))
    return out


def with_overviews(paths: list[Path], folder: Path) -> list[Path]:
    """Hard links of ``paths`` in ``folder`` with external average overviews (.ovr)."""
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for p in paths:
        q = folder / p.name
        if not q.exists():
            os.link(p, q)
        if not Path(f"{q}.ovr").exists():
            subprocess.run(
                ["gdaladdo", "-q", "-ro", "-r", "nearest", str(q), "2", "4", "8"],
                check=True,
                timeout=600,
                env={**os.environ, "COMPRESS_OVERVIEW": "ZSTD"},
            )
        out.append(q)
    return out


def gdal_read(vrt: Path, bbox: tuple[float, ...], threads: bool) -> np.ndarray:
    with rasterio.Env(GDAL_NUM_THREADS="ALL_CPUS" if threads else "1"), rasterio.open(vrt) as ds:
        window = from_bounds(*bbox, transform=ds.transform)
        return ds.read(window=window, out_shape=(3, OUT, OUT))


def odc_load(paths: list[Path], bbox: tuple[float, ...]) -> np.ndarray:
    from odc.geo.geobox import GeoBox
    from odc.geo.xr import xr_reproject

    xmin, ymin, xmax, ymax = bbox
    t = Affine((xmax - xmin) / OUT, 0, xmin, 0, -(ymax - ymin) / OUT, ymax)
    gbox = GeoBox((OUT, OUT), t, "EPSG:32633")
    layers = []
    for p in paths:  # as a STAC search would, only the items that meet the area
        with rasterio.open(p) as ds:
            b = ds.bounds
        if b.left >= xmax or b.right <= xmin or b.bottom >= ymax or b.top <= ymin:
            continue
        src = rioxarray.open_rasterio(p, chunks={"x": 1024, "y": 1024}, lock=False)
        layers.append(xr_reproject(src, gbox, resampling="nearest", dst_nodata=NODATA))
    out = layers[-1]
    for layer in layers[-2::-1]:  # the last valid pixel wins, as in the VRT
        out = xr.where(out != NODATA, out, layer)
    return np.asarray(out.compute())


def mosaicflow_load(coll: Any, bbox: tuple[float, ...]) -> np.ndarray:
    m = coll.mosaic(bbox, shape=(OUT, OUT), method="last", chunks=1024)
    return np.asarray(m.compute())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args(argv)

    from engine import open_collection

    sources = make_sources(WORK / "export" / "sources")
    vrt = WORK / "mosaic" / "e16.vrt"
    vrt.parent.mkdir(parents=True, exist_ok=True)
    build_vrt(sources, vrt)
    ovr_vrt = WORK / "mosaic" / "e16-ovr.vrt"
    build_vrt(with_overviews(sources, WORK / "mosaic" / "sources-ovr"), ovr_vrt)
    store = WORK / "mosaic" / "e16.zarr"
    ingest(sources, store)
    coll = open_collection(store)

    tools = {
        "mosaicflow": lambda b: mosaicflow_load(coll, b),
        "gdal vrt": lambda b: gdal_read(vrt, b, threads=False),
        "gdal vrt threads": lambda b: gdal_read(vrt, b, threads=True),
        "gdal vrt+ovr": lambda b: gdal_read(ovr_vrt, b, threads=False),
        "gdal vrt+ovr threads": lambda b: gdal_read(ovr_vrt, b, threads=True),
        "odc-geo": lambda b: odc_load(sources, b),
    }
    work = grids(args.repeat)
    for run in tools.values():  # warm-up: imports, file handles, GDAL caches
        run(work[0][1])
    times: dict[tuple[str, str], list[float]] = {}
    equal: dict[tuple[str, str], list[float]] = {}
    for n, (kind, bbox) in enumerate(work):
        names = list(tools)
        names = names[n % len(names) :] + names[: n % len(names)]
        got = {}
        for name in names:
            t0 = time.perf_counter()
            got[name] = tools[name](bbox)
            times.setdefault((name, kind), []).append(time.perf_counter() - t0)
        for name, ref in (("mosaicflow", "gdal vrt"), ("mosaicflow", "gdal vrt+ovr")):
            equal.setdefault((name + " = " + ref, kind), []).append(
                float((got[name] == got[ref]).mean())
            )
        equal.setdefault(("odc-geo = gdal vrt", kind), []).append(
            float((got["odc-geo"] == got["gdal vrt"]).mean())
        )

    kinds = ("full", "native")
    res: dict[str, Any] = {"workload": "E16", "out": OUT, "repeat": args.repeat}
    res["cpus"] = os.cpu_count()
    print(f"mosaic {OUT}x{OUT} over 16 images, {args.repeat} grids per kind (median s)\n")
    print(f"{'tool':<22}" + "".join(f"{k:>10}" for k in kinds))
    for name in tools:
        med = {k: statistics.median(times[(name, k)]) for k in kinds}
        res.setdefault("median_s", {})[name] = med
        print(f"{name:<22}" + "".join(f"{med[k]:>9.2f}s" for k in kinds))
    med = res["median_s"]
    print("\nratios (median time of mosaicflow / the other; < 1: mosaicflow is faster)")
    for k in kinds:
        gdal = min(med["gdal vrt"][k], med["gdal vrt threads"][k])
        gdal_ovr = min(med["gdal vrt+ovr"][k], med["gdal vrt+ovr threads"][k])
        mf = med["mosaicflow"][k]
        r = {
            "gdal_vrt": mf / gdal,
            "gdal_vrt_ovr": mf / gdal_ovr,
            "odc_geo": mf / med["odc-geo"][k],
        }
        res.setdefault("ratios", {})[k] = r
        print(
            f"  {k:<7} / gdal vrt {r['gdal_vrt']:5.2f}×   / gdal vrt+ovr {r['gdal_vrt_ovr']:5.2f}×"
            f"   / odc-geo {r['odc_geo']:5.2f}×"
        )
    print("\nshare of equal pixels (minimum over the grids)")
    for (pair, k), shares in sorted(equal.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        res.setdefault("equal_pixels_min", {}).setdefault(k, {})[pair] = min(shares)
        print(f"  {k:<7} {pair:<28} {min(shares):.4f}")
    (WORK / "results-mosaic.json").write_text(json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
