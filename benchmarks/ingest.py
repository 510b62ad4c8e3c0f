"""Ingest benchmark: mosaicflow side by side with gdalwarp, odc-geo and the I/O floor.

Run from the repository root::

    python -m benchmarks.ingest                       # W8: 8 scenes of 4096², all tools
    python -m benchmarks.ingest --scenes 2 --size 1024 --tools gdalwarp,odc-geo
    python -m benchmarks.ingest --check-pixels        # also compare outputs to gdalwarp's

Every tool runs in its own subprocess (``benchmarks.measure``) on the same cached scenes
(``engine.synth``), one after another, and the table reports *ratios* between tools
measured in the same run on the same machine, which is what stays meaningful across
machines; the absolute seconds are only valid for this machine and load.

Definitions
-----------
input pixels
    Pixel positions of all input scenes, counted once per position, not per band:
    ``n_scenes × size × size``. ``in MPix/s`` is that divided by wall time, in millions.
wall ÷ X, RSS ÷ X
    This tool's wall time (peak process-tree RSS) divided by tool X's: below 1 means
    faster (smaller) than X.

Results are printed and written to ``benchmarks/work/results-ingest.json``.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import re
import signal
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks import baselines
from benchmarks.measure import Measurement, format_table, ratio, run_callable, run_command
from engine.synth import make_scenes

__all__ = ["compare_to_reference", "main", "run_mosaicflow"]

WORK = Path(__file__).resolve().parent / "work"
ALL_TOOLS = ("mosaicflow", "gdalwarp", "odc-geo", "io", "read")
DEFAULT_TOOLS = ("mosaicflow", "gdalwarp", "odc-geo", "io")
RATIO_BASELINES = ("gdalwarp", "odc-geo")

TARGET_CRS = "EPSG:3857"
TARGET_RES = 60.0
RESAMPLING = "bilinear"


# --------------------------------------------------------------------------------------
# mosaicflow (runs inside the measured subprocess)
# --------------------------------------------------------------------------------------
def run_mosaicflow(scenes: Sequence[str], out_store: str, workers: int = 2) -> dict[str, Any]:
    """Ingest the scenes with mosaicflow's public API (called in the measured child).

    Parameters
    ----------
    scenes : sequence of str
        Input GeoTIFFs.
    out_store : str
        The collection store to create.
    workers : int, optional
        mosaicflow's ``workers`` argument.

    Returns
    -------
    dict
        ``{"available": False, "reason": ...}`` when the API cannot be imported (the row
        is then reported as not available), else ``{"available": True, ...}``.
    """
    try:
        from engine import create_image_collection
    except ImportError as exc:
        return {"available": False, "reason": f"{type(exc).__name__}: {exc}"}
    result = create_image_collection(
        [str(p) for p in scenes],
        image_collection=str(out_store),
        context={"outSR": {"wkid": 3857}, "cellSize": TARGET_RES, "resamplingMethod": "BILINEAR"},
        workers=workers,
    )
    # IngestResult carries a CLI-style exit code; a non-zero one is a failed run.
    code = getattr(result, "exit_code", 0)
    if code:
        raise RuntimeError(f"create_image_collection exit_code={code}: {result!r:.400}")
    return {"available": True, "returned": repr(result)[:500]}


# --------------------------------------------------------------------------------------
# Pixel comparison
# --------------------------------------------------------------------------------------
@dataclass
class _Image:
    """One georeferenced image held in memory: bands plus its pixel-centre lattice."""

    bands: list[np.ndarray]
    names: list[str]
    x0: float  # centre of the first column
    y0: float  # centre of the first row
    dx: float
    dy: float
    nodata: list[float | None]

    @property
    def shape(self) -> tuple[int, int]:
        h, w = self.bands[0].shape
        return int(h), int(w)


def _natural_key(name: str) -> tuple[Any, ...]:
    """Sort ``b2`` before ``b10`` (and ``Band2`` before ``Band10``)."""
    return tuple(int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name))


def _load_image(path: Path, group: str | None = None) -> _Image:
    """Read an image from a GeoTIFF or a Zarr image group (mosaicflow, odc-geo, GDAL).

    For Zarr, the bands are the 2-D variables named ``b<n>`` (mosaicflow, odc-geo and io
    outputs) or ``Band<n>`` (GDAL's Zarr driver), else every 2-D variable; x/y come from
    the coordinate variables of the last and first dimensions (pixel centres).
    """
    if path.is_file():
        import rasterio

        with rasterio.open(path) as ds:
            t = ds.transform
            return _Image(
                bands=[ds.read(i) for i in range(1, ds.count + 1)],
                names=[f"band{i}" for i in range(1, ds.count + 1)],
                x0=t.c + t.a / 2,
                y0=t.f + t.e / 2,
                dx=t.a,
                dy=t.e,
                nodata=[ds.nodata] * ds.count,
            )
    import xarray as xr

    ds = xr.open_zarr(str(path), group=group, consolidated=False, mask_and_scale=False, chunks=None)
    two_d = [str(v) for v in ds.data_vars if ds[v].ndim == 2]
    named = [v for v in two_d if re.fullmatch(r"(b|Band)\d+", v)]
    names = sorted(named or two_d, key=_natural_key)
    if not names:
        raise ValueError(f"no 2-D band variables in {path}{'/' + group if group else ''}")
    ydim, xdim = ds[names[0]].dims
    xs = np.asarray(ds[xdim].values, dtype=np.float64)
    ys = np.asarray(ds[ydim].values, dtype=np.float64)
    nodata: list[float | None] = []
    for v in names:
        fill = ds[v].attrs.get("_FillValue", ds[v].encoding.get("_FillValue"))
        nodata.append(None if fill is None else float(fill))
    return _Image(
        bands=[np.asarray(ds[v].values) for v in names],
        names=names,
        x0=float(xs[0]),
        y0=float(ys[0]),
        dx=float(xs[1] - xs[0]) if xs.size > 1 else float("nan"),
        dy=float(ys[1] - ys[0]) if ys.size > 1 else float("nan"),
        nodata=nodata,
    )


def _compare_images(img: _Image, ref: _Image) -> dict[str, Any]:
    """Pixel statistics of ``img`` against ``ref`` where both grids overlap.

    The grids must share pixel size and be offset by whole pixels (both snap to the same
    lattice, as ``-tap`` does); images may cover different extents. Only pixels valid in
    both (not nodata) are differenced; pixels valid in just one are counted separately,
    as they reveal footprint/edge handling rather than resampling differences.
    """
    out: dict[str, Any] = {"shape": list(img.shape), "ref_shape": list(ref.shape)}
    if not (np.isclose(img.dx, ref.dx, rtol=1e-9) and np.isclose(img.dy, ref.dy, rtol=1e-9)):
        out["error"] = f"pixel sizes differ: {img.dx, img.dy} vs {ref.dx, ref.dy}"
        return out
    col_f = (img.x0 - ref.x0) / ref.dx
    row_f = (img.y0 - ref.y0) / ref.dy
    col, row = round(col_f), round(row_f)
    if abs(col_f - col) > 1e-3 or abs(row_f - row) > 1e-3:
        out["error"] = f"grids not aligned: offset ({row_f:.4f}, {col_f:.4f}) pixels"
        return out
    out["offset_rows_cols"] = [row, col]
    (ih, iw), (rh, rw) = img.shape, ref.shape
    # Overlap in reference pixel indices, then the same window in image indices.
    r0, r1 = max(0, row), min(rh, row + ih)
    c0, c1 = max(0, col), min(rw, col + iw)
    if r0 >= r1 or c0 >= c1:
        out["error"] = "images do not overlap"
        return out
    n_both = n_within = n_only_img = n_only_ref = 0
    max_abs = 0
    sum_abs = 0.0
    if len(img.bands) != len(ref.bands):
        out["note"] = (
            f"band counts differ ({len(img.bands)} vs {len(ref.bands)}): compared pairwise"
        )
    for k, (a_full, b_full) in enumerate(zip(img.bands, ref.bands, strict=False)):
        a = a_full[r0 - row : r1 - row, c0 - col : c1 - col].astype(np.int64)
        b = b_full[r0:r1, c0:c1].astype(np.int64)
        va = np.ones(a.shape, bool) if img.nodata[k] is None else a != img.nodata[k]
        vb = np.ones(b.shape, bool) if ref.nodata[k] is None else b != ref.nodata[k]
        both = va & vb
        d = np.abs(a[both] - b[both])
        n_both += int(d.size)
        n_within += int(np.count_nonzero(d <= 1))
        sum_abs += float(d.sum())
        if d.size:
            max_abs = max(max_abs, int(d.max()))
        n_only_img += int(np.count_nonzero(va & ~vb))
        n_only_ref += int(np.count_nonzero(vb & ~va))
    out.update(
        compared=n_both,
        frac_within_1=(n_within / n_both) if n_both else None,
        max_abs_diff=max_abs if n_both else None,
        mean_abs_diff=(sum_abs / n_both) if n_both else None,
        valid_only_in_image=n_only_img,
        valid_only_in_ref=n_only_ref,
    )
    return out


def _image_sources(store: Path) -> list[tuple[str, Path, str | None]]:
    """(image id, path, zarr group) of every image in a store or output directory."""
    images = store / "images"
    if images.is_dir():
        ids = sorted(p.name for p in images.iterdir() if (p / "zarr.json").is_file())
        return [(i, store, f"images/{i}") for i in ids]
    if store.is_dir() and not (store / "zarr.json").is_file() and not (store / ".zgroup").is_file():
        found = sorted(p for p in store.iterdir() if p.suffix in (".zarr", ".tif", ".tiff"))
        return [(p.stem, p, None) for p in found]
    return [(store.stem, store, None)]


def _match_reference(image_id: str, refs: dict[str, Path]) -> Path | None:
    """The reference output for an image id: same stem, else one name containing the other."""
    if image_id in refs:
        return refs[image_id]
    hits = [p for stem, p in refs.items() if stem in image_id or image_id in stem]
    return hits[0] if len(hits) == 1 else None


def compare_to_reference(
    store: str | os.PathLike[str], ref_path: str | os.PathLike[str]
) -> dict[str, Any]:
    """Compare every image of ``store`` with the reference output of the same scene.

    Parameters
    ----------
    store : path-like
        A mosaicflow collection store (``STORE/images/<image_id>/`` groups, one variable
        per band ``b1..bn`` on ``(y, x)`` with pixel-centre ``x``/``y`` coordinates and a
        CF ``spatial_ref``), or a directory of per-scene outputs (``<stem>.zarr`` or
        ``.tif``, e.g. ``benchmarks/work/out-odc-geo``), or one image.
    ref_path : path-like
        The reference: a directory of per-scene outputs (``benchmarks/work/out-gdalwarp``,
        matched to images by scene file stem, e.g. ``scene_03``; an image id that contains
        the stem, or is contained in it, also matches; when no id matches any name and
        the counts agree, images and references are paired in sorted order, with a
        ``note``), or one image (Zarr or GeoTIFF) when ``store`` holds a single image.

    Returns
    -------
    dict
        ``images``: per image ``id``, ``ref``, ``frac_within_1`` (fraction of pixels valid
        in both whose values differ by at most 1 DN), ``max_abs_diff``, ``mean_abs_diff``,
        ``compared`` (pixel-band values compared), ``valid_only_in_image`` /
        ``valid_only_in_ref`` (footprint edge disagreements), grid ``offset_rows_cols``
        or an ``error``; ``summary``: the same statistics pooled over all images.

    Notes
    -----
    Both outputs must lie on the same lattice (same pixel size, whole-pixel offsets), as
    they do when both snap to multiples of the cell size like ``gdalwarp -tap``. Each
    image is loaded whole (one W8 image at 60 m is about 2300² pixels per band).
    """
    store, ref_path = Path(store), Path(ref_path)
    sources = _image_sources(store)
    if (
        ref_path.is_dir()
        and not (ref_path / ".zgroup").is_file()
        and not (ref_path / "zarr.json").is_file()
    ):
        refs = {p.stem: p for p in ref_path.iterdir() if p.suffix in (".zarr", ".tif", ".tiff")}
    else:
        refs = {ref_path.stem: ref_path}
    matched = {image_id: _match_reference(image_id, refs) for image_id, _, _ in sources}
    # Image ids unrelated to file names (counters, hashes): if nothing matched by name and
    # the counts agree, pair images and references in sorted order, and say so.
    by_order = not any(matched.values()) and len(sources) == len(refs)
    if by_order:
        matched = dict(zip(sorted(matched), (refs[k] for k in sorted(refs)), strict=True))
    results = []
    for image_id, path, group in sources:
        ref = matched[image_id]
        entry: dict[str, Any] = {"id": image_id, "ref": str(ref) if ref else None}
        if by_order:
            entry["note"] = "matched to its reference by sorted order, not by name"
        if ref is None:
            entry["error"] = "no reference output matches this image id"
        else:
            try:
                entry.update(_compare_images(_load_image(path, group), _load_image(ref)))
            except Exception as exc:
                entry["error"] = f"{type(exc).__name__}: {exc}"
        results.append(entry)
    ok = [r for r in results if r.get("compared")]
    total = sum(r["compared"] for r in ok)
    summary: dict[str, Any] = {"images": len(results), "compared_images": len(ok)}
    if total:
        summary.update(
            compared=total,
            frac_within_1=sum(r["frac_within_1"] * r["compared"] for r in ok) / total,
            max_abs_diff=max(r["max_abs_diff"] for r in ok),
            mean_abs_diff=sum(r["mean_abs_diff"] * r["compared"] for r in ok) / total,
            valid_only_in_image=sum(r["valid_only_in_image"] for r in ok),
            valid_only_in_ref=sum(r["valid_only_in_ref"] for r in ok),
        )
    return {"store": str(store), "reference": str(ref_path), "images": results, "summary": summary}


# --------------------------------------------------------------------------------------
# Orchestration
# --------------------------------------------------------------------------------------
def _versions() -> dict[str, str | None]:
    """Versions of the libraries that shape the results (without importing engine)."""
    from importlib import metadata

    out: dict[str, str | None] = {}
    for dist in (
        "mosaicflow",
        "rasterio",
        "odc-geo",
        "rioxarray",
        "xarray",
        "dask",
        "distributed",
        "zarr",
        "numpy",
        "numcodecs",
    ):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = None
    try:
        import rasterio

        out["gdal (rasterio)"] = rasterio.__gdal_version__
    except ImportError:
        out["gdal (rasterio)"] = None
    return out


def _machine() -> dict[str, Any]:
    """CPU count, memory and platform of this machine."""
    import psutil

    return {
        "cpus": os.cpu_count(),
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "platform": platform.platform(),
        "python": platform.python_version(),
    }


def _run_tool(
    tool: str, scenes: list[str], out: Path, args: argparse.Namespace, gdal_fmt: Any
) -> Measurement:
    """Run one tool, measured, writing into the freshly emptied ``out`` directory."""
    log = WORK / "logs" / f"{tool}.log"
    common = {"timeout": args.timeout, "log_path": log}
    if tool == "mosaicflow":
        kw = {"scenes": scenes, "out_store": str(out / "collection.zarr"), "workers": args.workers}
        return run_callable(run_mosaicflow, kw, name=tool, **common)
    if tool == "gdalwarp":
        if gdal_fmt is None:
            return Measurement(name=tool, status="not available", note=args.gdal_message)
        cmd = baselines.gdalwarp_command(
            scenes, out, gdal_fmt, crs=TARGET_CRS, res=TARGET_RES, resampling=RESAMPLING
        )
        return run_command(cmd, name=tool, **common)
    if tool == "odc-geo":
        kw = {
            "scenes": scenes,
            "out_dir": str(out),
            "threads": args.workers,
            "crs": TARGET_CRS,
            "res": TARGET_RES,
            "resampling": RESAMPLING,
        }
        return run_callable(baselines.run_odc_geo, kw, name=tool, **common)
    if tool == "io":
        kw = {"scenes": scenes, "out_dir": str(out), "threads": args.workers}
        return run_callable(baselines.run_io, kw, name=tool, **common)
    if tool == "read":
        return run_callable(
            baselines.run_read, {"scenes": scenes, "threads": args.workers}, name=tool, **common
        )
    raise ValueError(f"unknown tool {tool!r}")


def _busy_percent(seconds: float = 1.0) -> float:
    """System-wide CPU use (%) over ``seconds`` while no tool runs: others' load.

    The machine may be shared (other sessions running test suites); a busy machine
    slows every tool, so such runs are flagged, and ``--repeat`` keeps the fastest run.
    """
    import psutil

    return float(psutil.cpu_percent(interval=seconds))


def _best(runs: list[Measurement]) -> Measurement:
    """The fastest successful run (all walls kept in ``extra``), else the last run."""
    ok = [m for m in runs if m.ok]
    best = min(ok, key=lambda m: m.wall_s or float("inf")) if ok else runs[-1]
    best.extra["all_wall_s"] = [m.wall_s for m in runs]
    best.extra["all_peak_rss_mib"] = [m.peak_rss_mib for m in runs]
    best.extra["all_busy_before_pct"] = [m.extra.get("busy_before_pct") for m in runs]
    return best


def _rows(measurements: list[Measurement], input_pixels: int) -> list[dict[str, Any]]:
    """Table rows: each measurement plus throughput and ratios against the baselines."""
    by_name = {m.name: m for m in measurements if m.ok}
    rows = []
    for m in measurements:
        ok = m.ok
        row: dict[str, Any] = {
            "tool": m.name,
            "wall_s": m.wall_s if ok else None,
            "cpu_s": m.cpu_s if ok else None,
            "cores": (m.cpu_s / m.wall_s) if ok and m.cpu_s and m.wall_s else None,
            "mpix_s": (input_pixels / 1e6 / m.wall_s) if ok and m.wall_s else None,
            "peak_rss_mib": m.peak_rss_mib if ok else None,
            "out_mib": m.extra.get("out_mib") if ok else None,
            "status": "ok" if ok else f"{m.status}: {m.note}".rstrip(": "),
            "note": m.note,
        }
        for base in RATIO_BASELINES:
            b = by_name.get(base)
            row[f"wall/{base}"] = ratio(row["wall_s"], b.wall_s if b else None)
            row[f"rss/{base}"] = ratio(row["peak_rss_mib"], b.peak_rss_mib if b else None)
        rows.append(row)
    return rows


TABLE_COLUMNS = [
    ("tool", "tool", ""),
    ("wall_s", "wall s", ".1f"),
    ("cpu_s", "cpu s", ".1f"),
    ("cores", "cores", ".2f"),
    ("mpix_s", "in MPix/s", ".2f"),
    ("peak_rss_mib", "peak RSS MiB", ".0f"),
    ("out_mib", "out MiB", ".0f"),
    ("wall/gdalwarp", "wall÷gdalwarp", ".2f"),
    ("wall/odc-geo", "wall÷odc-geo", ".2f"),
    ("rss/gdalwarp", "RSS÷gdalwarp", ".2f"),
    ("rss/odc-geo", "RSS÷odc-geo", ".2f"),
    ("status", "status", ""),
]


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.ingest",
        description="Ingest benchmark: mosaicflow vs gdalwarp vs odc-geo vs the I/O floor.",
    )
    p.add_argument("--scenes", type=int, default=8, help="number of scenes (default 8)")
    p.add_argument(
        "--size", type=int, default=4096, help="scene width/height in pixels (default 4096)"
    )
    p.add_argument("--bands", type=int, default=3, help="bands per scene (default 3)")
    p.add_argument("--seed", type=int, default=0, help="scene generator seed (default 0)")
    p.add_argument(
        "--tools",
        default=",".join(DEFAULT_TOOLS),
        help=f"comma-separated, run in this order; from {','.join(ALL_TOOLS)} (default {','.join(DEFAULT_TOOLS)})",
    )
    p.add_argument(
        "--workers",
        type=int,
        default=2,
        help="mosaicflow workers / odc-geo and io threads (default 2)",
    )
    p.add_argument(
        "--timeout",
        type=float,
        default=1800.0,
        help="seconds before a tool is killed (default 1800)",
    )
    p.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="run every tool this many times, round-robin, and report each tool's fastest run (default 1)",
    )
    p.add_argument(
        "--check-pixels",
        action="store_true",
        help="compare mosaicflow's (and odc-geo's) images to gdalwarp's",
    )
    p.add_argument(
        "--no-install",
        action="store_true",
        help="do not apt-install gdal-bin when gdalwarp is missing",
    )
    p.add_argument(
        "--json", type=Path, default=WORK / "results-ingest.json", help="where to write the results"
    )
    a = p.parse_args(argv)
    a.tools = [t.strip() for t in a.tools.split(",") if t.strip()]
    unknown = [t for t in a.tools if t not in ALL_TOOLS]
    if unknown:
        p.error(f"unknown tools {unknown}; choose from {', '.join(ALL_TOOLS)}")
    return a


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark; print the table; write the JSON results.

    Parameters
    ----------
    argv : sequence of str, optional
        Command-line arguments (``sys.argv[1:]`` when omitted); see ``--help``.

    Returns
    -------
    int
        0 when every tool that could run succeeded (a tool that is merely not available,
        such as mosaicflow before its API exists, does not fail the run), else 1.
    """
    args = _parse_args(argv)
    # SIGTERM → SystemExit, so the measuring code kills the running tool's process tree
    # (it lives in its own session) instead of leaving it orphaned.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    WORK.mkdir(parents=True, exist_ok=True)
    n, size = args.scenes, args.size
    workload = "W8" if (n, size, args.bands) == (8, 4096, 3) else f"{n}×{size}²×{args.bands}"
    print(
        f"# mosaicflow ingest benchmark — {workload}: {n} scenes of {size}×{size}, {args.bands} bands uint16, "
        f"EPSG:32633 30 m → {TARGET_CRS} {TARGET_RES:g} m {RESAMPLING}, {args.workers} workers"
    )

    t0 = time.perf_counter()
    scene_dir = WORK / f"scenes-{size}px-{args.bands}b-s{args.seed}"
    scenes = [
        str(p) for p in make_scenes(scene_dir, n=n, size=size, bands=args.bands, seed=args.seed)
    ]
    print(
        f"scenes ready in {time.perf_counter() - t0:.1f} s: {scene_dir} ({baselines.dir_size_mib(scene_dir):.0f} MiB)"
    )

    args.gdal_message = ""
    gdal_fmt = None
    gdal_info: dict[str, Any] = {}
    if "gdalwarp" in args.tools:
        gdal_info = baselines.ensure_gdal(install=not args.no_install)
        args.gdal_message = gdal_info["message"]
        print(f"gdalwarp: {gdal_info['message']}")
        if gdal_info["available"]:
            major, minor, patch = (int(x) for x in gdal_info["version"].split("."))
            gdal_fmt = baselines.gdal_output_format((major, minor, patch))
            extra = f" with {' '.join(gdal_fmt.extra_args)}" if gdal_fmt.extra_args else ""
            print(
                f"gdalwarp writes {gdal_fmt.label}{extra}"
                + (f" — {gdal_fmt.note}" if gdal_fmt.note else "")
            )

    # Tools run round-robin (A B C, A B C, …) so slow drifts of the machine (thermal,
    # page cache, neighbours) spread over all tools; each tool keeps its fastest run.
    runs: dict[str, list[Measurement]] = {t: [] for t in args.tools}
    for rep in range(args.repeat):
        for tool in args.tools:
            out = baselines.reset_dir(WORK / f"out-{tool}")
            label = f"{tool} (run {rep + 1}/{args.repeat})" if args.repeat > 1 else tool
            print(f"running {label} …", flush=True)
            busy = _busy_percent()
            if busy > 10:
                print(f"  warning: machine already {busy:.0f} % busy before this run", flush=True)
            m = _run_tool(tool, scenes, out, args, gdal_fmt)
            m.extra["busy_before_pct"] = busy
            m.extra["out_dir"] = str(out)
            m.extra["out_mib"] = baselines.dir_size_mib(out)
            # Record which inputs produced this output, so --check-pixels never compares
            # outputs of different scene sets.
            (out / "_run.json").write_text(json.dumps({"scenes": scenes, "status": m.status}))
            if m.ok:
                print(f"  {tool}: {m.wall_s:.1f} s, peak RSS {m.peak_rss_mib:.0f} MiB", flush=True)
            else:
                log = f" (log: {m.log_path})" if m.log_path else ""
                print(f"  {tool}: {m.status}: {m.note}{log}", flush=True)
            runs[tool].append(m)
    measurements = [_best(runs[t]) for t in args.tools]

    input_pixels = n * size * size
    rows = _rows(measurements, input_pixels)
    print()
    # Full error notes were printed as each tool finished (and go to the JSON); keep the
    # table readable.
    shown = [
        {**r, "status": r["status"] if len(r["status"]) <= 90 else r["status"][:89] + "…"}
        for r in rows
    ]
    print(format_table(shown, TABLE_COLUMNS))
    print(
        f"\ninput pixels = scenes × size² = {input_pixels / 1e6:.1f} MPix (per band); "
        "ratios are this tool ÷ baseline (below 1: faster / smaller); RSS = peak sum over the process tree"
    )

    checks: dict[str, Any] = {}
    if args.check_pixels:
        checks = _check_pixels(scenes, gdal_fmt)

    results = {
        "benchmark": "ingest",
        "workload": {
            "name": workload,
            "scenes": n,
            "size": size,
            "bands": args.bands,
            "dtype": "uint16",
            "source_crs": "EPSG:32633",
            "source_res_m": 30.0,
            "target_crs": TARGET_CRS,
            "target_res_m": TARGET_RES,
            "resampling": RESAMPLING,
            "workers": args.workers,
            "repeat": args.repeat,
            "input_pixels_per_band": input_pixels,
            "input_mib_on_disk": baselines.dir_size_mib(scene_dir),
        },
        "date": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "machine": _machine(),
        "versions": _versions(),
        "gdal_cli": {
            **gdal_info,
            "output": gdal_fmt.label if gdal_fmt else None,
            "output_note": gdal_fmt.note if gdal_fmt else None,
        },
        "rows": rows,
        "measurements": [m.to_dict() for m in measurements],
        "check_pixels": checks,
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=2, default=str))
    print(f"results: {args.json}")
    failed = [m for m in measurements if m.status in ("failed", "timeout")]
    return 1 if failed else 0


def _same_inputs(out_dir: Path, scenes: list[str]) -> bool:
    """True when ``out_dir`` holds a successful run's output for exactly these scenes."""
    try:
        run = json.loads((out_dir / "_run.json").read_text())
    except (OSError, ValueError):
        return False
    return run.get("scenes") == scenes and run.get("status") == "ok"


def _print_check(label: str, res: dict[str, Any]) -> None:
    """One summary line (plus the first few per-image errors) of a comparison."""
    s = res["summary"]
    if s.get("compared"):
        print(
            f"  {label}: {s['frac_within_1'] * 100:.3f} % within 1 DN, max |diff| {s['max_abs_diff']}, "
            f"mean |diff| {s['mean_abs_diff']:.3f} over {s['compared'] / 1e6:.1f} M values; "
            f"valid only in image: {s['valid_only_in_image']}, only in reference: {s['valid_only_in_ref']}"
        )
    else:
        print(f"  {label}: nothing compared")
    for e in [f"{r['id']}: {r['error']}" for r in res["images"] if "error" in r][:5]:
        print(f"    {e}")


def _grid_of(path: Path) -> tuple[Any, tuple[int, int]]:
    """(affine transform, (height, width)) of a Zarr image, from its x/y coordinates only."""
    import xarray as xr
    from affine import Affine

    ds = xr.open_zarr(str(path), consolidated=False, mask_and_scale=False)
    two_d = [str(v) for v in ds.data_vars if ds[v].ndim == 2]
    ydim, xdim = ds[two_d[0]].dims
    xs, ys = ds[xdim].values, ds[ydim].values
    dx, dy = float(xs[1] - xs[0]), float(ys[1] - ys[0])
    t = Affine(dx, 0.0, float(xs[0]) - dx / 2, 0.0, dy, float(ys[0]) - dy / 2)
    return t, (int(ys.size), int(xs.size))


def _mosaicflow_scales(
    scenes: list[str], ref_dir: Path, suffix: str
) -> list[tuple[str, str]] | str:
    """Per scene, ``XSCALE=…``/``YSCALE=…`` as mosaicflow fixes them for that image.

    mosaicflow fixes GDAL's kernel scale once per image (``engine.plan.resampling_scale``,
    measured at the target grid's centre) so its chunks agree; gdalwarp instead derives
    it from each warp chunk's source window. Passing mosaicflow's value to gdalwarp gives
    the reference a chunked engine with that design must reproduce. Returns the reason as
    a string when the engine function is not available.
    """
    try:
        from engine.grid import Grid
        from engine.plan import resampling_scale
    except ImportError as exc:
        return f"{type(exc).__name__}: {exc}"
    import rasterio

    out = []
    for src in scenes:
        transform, shape = _grid_of(ref_dir / (Path(src).stem + suffix))
        with rasterio.open(src) as ds:
            native = Grid(ds.crs, ds.transform, ds.shape)
        xs, ys = resampling_scale(native, Grid(TARGET_CRS, transform, shape))
        out.append((f"XSCALE={xs!r}", f"YSCALE={ys!r}"))
    return out


def _check_pixels(scenes: list[str], gdal_fmt: Any) -> dict[str, Any]:
    """Compare mosaicflow's and odc-geo's outputs with gdalwarp's; print a summary.

    Three references, because "bilinear" differs in two independent ways:

    ``gdalwarp``
        The timed output: GDAL's bilinear, whose kernel widens with the downsampling
        ratio (an area-weighted average), through GDAL's approximate transformer
        (``-et 0.125``: pixel positions may be off by up to 1/8 pixel). gdalwarp derives
        the kernel scale from each warp chunk's source window.
    ``gdalwarp -et 0, mosaicflow's XSCALE/YSCALE``
        The same kernel with exact pixel positions and the per-image kernel scale that
        mosaicflow fixes (``engine.plan.resampling_scale``): the result mosaicflow's
        chunked warp is designed to reproduce. Skipped if the engine function is missing.
    ``gdalwarp -et 0 -wo XSCALE=1 -wo YSCALE=1``
        Exact positions and *point* bilinear (the weighted average of the four nearest
        source pixel centres): ArcGIS's documented BILINEAR, and what odc-geo's Dask path
        computes (it pins XSCALE/YSCALE to 1 so its chunks agree).

    On this realistic, noisy content a 1/8-pixel position error, or a kernel scale a few
    per cent off, alone moves values by several DN, so "within 1 DN" is only expected
    against the reference with the same kernel, scale *and* coordinate accuracy.
    """
    ref = WORK / "out-gdalwarp"
    if not _same_inputs(ref, scenes) or gdal_fmt is None:
        print(
            "\n--check-pixels: no gdalwarp output for these scenes (run with gdalwarp in --tools)"
        )
        return {"error": "no gdalwarp reference for these scenes"}
    refs = {"gdalwarp": ref}
    extra: list[tuple[str, str, tuple[str, ...], list[tuple[str, str]] | None]] = []
    scales = (
        _mosaicflow_scales(scenes, ref, gdal_fmt.suffix)
        if gdal_fmt.driver == "Zarr"
        else "GeoTIFF reference"
    )
    if isinstance(scales, str):
        print(f"\npixel check: no mosaicflow-scale reference ({scales})")
    else:
        extra.append(
            ("gdalwarp -et 0, mosaicflow's XSCALE/YSCALE", "out-gdalwarp-mfscale", (), scales)
        )
    extra.append(
        (
            "gdalwarp -et 0 -wo XSCALE=1 -wo YSCALE=1",
            "out-gdalwarp-point",
            ("XSCALE=1", "YSCALE=1"),
            None,
        )
    )
    for label, dirname, warp_options, per_scene in extra:
        out = baselines.reset_dir(WORK / dirname)
        cmd = baselines.gdalwarp_command(
            scenes,
            out,
            gdal_fmt,
            crs=TARGET_CRS,
            res=TARGET_RES,
            resampling=RESAMPLING,
            warp_options=warp_options,
            error_threshold=0.0,
            per_scene_warp_options=per_scene,
        )
        print(f"\npixel check: making the reference `{label}` (untimed) …", flush=True)
        m = run_command(cmd, name=dirname, log_path=WORK / "logs" / f"{dirname}.log")
        if m.ok:
            (out / "_run.json").write_text(json.dumps({"scenes": scenes, "status": "ok"}))
            refs[label] = out
        else:
            print(f"  reference `{label}` failed: {m.note}")
    candidates = {
        "mosaicflow": WORK / "out-mosaicflow" / "collection.zarr",
        "odc-geo": WORK / "out-odc-geo",
    }
    checks: dict[str, Any] = {}
    print("pixel check (pixels valid in both; DN = stored integer value):")
    for tool, path in candidates.items():
        if not path.exists() or not _same_inputs(WORK / f"out-{tool}", scenes):
            print(f"  {tool}: no output from this run")
            continue
        for ref_label, ref_dir in refs.items():
            res = compare_to_reference(path, ref_dir)
            checks[f"{tool} vs {ref_label}"] = res
            _print_check(f"{tool} vs {ref_label}", res)
    return checks


if __name__ == "__main__":
    sys.exit(main())
