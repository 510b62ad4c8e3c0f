"""Reference tools that mosaicflow is measured against, each run the way a user would.

gdalwarp
    The real ``gdalwarp`` command-line tool (Debian's ``gdal-bin``), one process per scene
    in sequence, as a shell loop would run it: ``-multi -wo NUM_THREADS=ALL_CPUS -tap
    -tr 60 60 -t_srs EPSG:3857 -r bilinear``, writing Zarr. :func:`ensure_gdal` installs
    it with apt when missing. :func:`gdal_output_format` picks the output: Zarr v3 only
    from GDAL 3.11 on (the first release writing final-spec v3, with the ``bytes`` codec);
    older GDAL writes Zarr v2 (GDAL 3.4–3.10 do have a ``ZARR_V3`` option, but it writes a
    pre-final draft of v3 that current readers reject), and GDAL < 3.4 writes GeoTIFF.
odc-geo
    ``rioxarray.open_rasterio`` (Dask chunks, lock-free reads) →
    ``odc.geo.xr.xr_reproject`` onto a GeoBox in EPSG:3857 at 60 m whose pixel edges sit
    on multiples of 60 m (what ``-tap`` does) → ``to_zarr``, all scenes in one
    ``dask.compute`` on the threaded scheduler with ``threads`` workers.
io
    The I/O floor: read every scene strip by strip (one row of 512² tiles) and write the
    same pixels, unchanged, to Zarr with the same chunking and codec as the others, on
    ``threads`` threads. Note it writes the *input* resolution (4× the pixels of a 60 m
    output from 30 m input), so it bounds read + encode + write cost from above.
read
    Decode every input pixel and discard it: the pure input floor.

Every writer uses the same output encoding as mosaicflow: 512 × 512 chunks, Zstandard
level 1 (as mosaicflow), one 2-D variable per band named ``b1 … bn`` on ``(y, x)`` with pixel-centre
``x``/``y`` coordinates and a CF ``spatial_ref`` variable (GDAL names its bands ``Band1
…`` and its coordinates ``X``/``Y``, but stores them the same way).

The ``run_*`` functions are meant to run inside a measured subprocess (see
``benchmarks.measure.run_callable``); they take and return JSON-serialisable values.
"""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import shutil
import subprocess
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "ZSTD_LEVEL",
    "GdalOutput",
    "dir_size_mib",
    "ensure_gdal",
    "gdal_cli_version",
    "gdal_output_format",
    "gdalwarp_command",
    "reset_dir",
    "run_io",
    "run_odc_geo",
    "run_read",
]

#: Output codec level shared by every writer (mosaicflow's store uses the same).
ZSTD_LEVEL = 1  # the level mosaicflow writes (engine/store.py), so every tool encodes alike
#: Output chunk edge in pixels (mosaicflow's default tile size).
CHUNK = 512


# --------------------------------------------------------------------------------------
# Small helpers
# --------------------------------------------------------------------------------------
def reset_dir(path: str | os.PathLike[str]) -> Path:
    """Delete ``path`` if it exists and create it empty; return it as a Path."""
    p = Path(path)
    if p.exists():
        shutil.rmtree(p)
    p.mkdir(parents=True)
    return p


def dir_size_mib(path: str | os.PathLike[str]) -> float:
    """Total size in MiB of the regular files below ``path`` (0 when missing)."""
    total = 0
    for root, _, files in os.walk(path):
        for f in files:
            with contextlib.suppress(OSError):  # a file may vanish while we walk
                total += os.lstat(os.path.join(root, f)).st_size
    return total / (1024.0 * 1024.0)


# --------------------------------------------------------------------------------------
# gdalwarp
# --------------------------------------------------------------------------------------
def gdal_cli_version(gdalinfo: str = "gdalinfo") -> tuple[int, int, int] | None:
    """Version of the GDAL command-line tools on PATH, e.g. ``(3, 6, 2)``; None if absent."""
    exe = shutil.which(gdalinfo)
    if exe is None:
        return None
    try:
        out = subprocess.run(
            [exe, "--version"], capture_output=True, text=True, check=True, timeout=60
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    m = re.search(r"GDAL (\d+)\.(\d+)\.(\d+)", out)
    return (int(m[1]), int(m[2]), int(m[3])) if m else None


def ensure_gdal(install: bool = True) -> dict[str, Any]:
    """Make sure ``gdalwarp`` is on PATH, installing Debian's ``gdal-bin`` if needed.

    Parameters
    ----------
    install : bool, optional
        Run ``apt-get update`` and ``apt-get install -y gdal-bin`` when ``gdalwarp`` is
        missing (needs root, as on the project's machines). With False, only report.

    Returns
    -------
    dict
        ``available`` (bool), ``version`` (``"3.6.2"`` or None), ``path`` of gdalwarp,
        ``installed_now`` (bool) and ``message`` (what happened, for the report).
    """
    info: dict[str, Any] = {"available": False, "version": None, "path": None}
    info["installed_now"] = False
    info["message"] = ""
    if shutil.which("gdalwarp") is None and install:
        apt = shutil.which("apt-get")
        if apt is None:
            info["message"] = "gdalwarp missing and apt-get not found"
            return info
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        prefix = [] if os.geteuid() == 0 else ["sudo", "-n"]
        for step in ([apt, "update", "-q"], [apt, "install", "-y", "-q", "gdal-bin"]):
            r = subprocess.run([*prefix, *step], capture_output=True, text=True, env=env)
            if r.returncode != 0:
                tail = (r.stderr or r.stdout).strip().splitlines()[-3:]
                info["message"] = f"`{' '.join(step)}` failed: {' '.join(tail)}"
                return info
        info["installed_now"] = True
    exe = shutil.which("gdalwarp")
    version = gdal_cli_version()
    if exe is None or version is None:
        info["message"] = info["message"] or "gdalwarp not found (install gdal-bin)"
        return info
    info.update(available=True, path=exe, version=".".join(map(str, version)))
    if not info["message"]:
        info["message"] = (
            f"GDAL {info['version']} ({'installed now' if info['installed_now'] else 'present'})"
        )
    return info


@dataclass(frozen=True)
class GdalOutput:
    """How the gdalwarp baseline writes its output for a given GDAL version.

    Attributes
    ----------
    driver : str
        GDAL driver short name (``Zarr`` or ``GTiff``).
    suffix : str
        File or directory suffix (``.zarr`` or ``.tif``).
    creation_options : tuple of str
        ``-co`` values.
    label : str
        Short description for tables (``"Zarr v2"``…).
    note : str
        Why this format was chosen, when it is not Zarr v3.
    extra_args : tuple of str
        Further gdalwarp arguments this output needs (see :data:`ZARR_WARP_MEMORY`).
    """

    driver: str
    suffix: str
    creation_options: tuple[str, ...]
    label: str
    note: str = ""
    extra_args: tuple[str, ...] = ()


#: gdalwarp ``-wm`` (MB) for Zarr output. With the default 64 MB, gdalwarp warps a scene
#: in several chunks and GDAL 3.6's Zarr driver must re-read partially written Zarr
#: chunks, which fails ("Decompressed tile ... has not expected size after filters";
#: seen with every codec, with and without -multi). 1024 MB lets a whole W8 scene (4096²
#: × 3 bands in, ~3550² out) be warped as one chunk, so each Zarr chunk is written once.
ZARR_WARP_MEMORY = ("-wm", "1024")


def gdal_output_format(version: tuple[int, int, int]) -> GdalOutput:
    """Choose gdalwarp's output format for a GDAL version (see the module docstring).

    Parameters
    ----------
    version : tuple of int
        ``(major, minor, patch)`` of the GDAL command-line tools.

    Returns
    -------
    GdalOutput
        Zarr v3 for GDAL >= 3.11, Zarr v2 for 3.4 – 3.10, GeoTIFF before; always
        512 × 512 blocks and Zstandard level ``ZSTD_LEVEL``.
    """
    zstd = ("COMPRESS=ZSTD", f"ZSTD_LEVEL={ZSTD_LEVEL}")
    v = ".".join(map(str, version))
    if version >= (3, 11, 0):
        return GdalOutput(
            "Zarr",
            ".zarr",
            ("FORMAT=ZARR_V3", *zstd, f"BLOCKSIZE={CHUNK},{CHUNK}"),
            "Zarr v3",
            extra_args=ZARR_WARP_MEMORY,
        )
    if version >= (3, 4, 0):
        return GdalOutput(
            "Zarr",
            ".zarr",
            ("FORMAT=ZARR_V2", *zstd, f"BLOCKSIZE={CHUNK},{CHUNK}"),
            "Zarr v2",
            note=(
                f"GDAL {v}: its FORMAT=ZARR_V3 is a pre-final draft of Zarr v3 (final-spec "
                "v3 with the 'bytes' codec arrives in GDAL 3.11), so Zarr v2 is written"
            ),
            extra_args=ZARR_WARP_MEMORY,
        )
    return GdalOutput(
        "GTiff",
        ".tif",
        (
            "TILED=YES",
            f"BLOCKXSIZE={CHUNK}",
            f"BLOCKYSIZE={CHUNK}",
            *zstd,
            "NUM_THREADS=ALL_CPUS",
            "BIGTIFF=IF_SAFER",
        ),
        "GeoTIFF",
        note=f"GDAL {v} has no Zarr driver (added in 3.4): GeoTIFF written instead",
    )


def gdalwarp_command(
    scenes: Sequence[str | os.PathLike[str]],
    out_dir: str | os.PathLike[str],
    fmt: GdalOutput,
    *,
    crs: str = "EPSG:3857",
    res: float = 60.0,
    resampling: str = "bilinear",
    warp_options: Sequence[str] = (),
    error_threshold: float | None = None,
    per_scene_warp_options: Sequence[Sequence[str]] | None = None,
    gdalwarp: str = "gdalwarp",
) -> list[str]:
    """A ``bash -c`` command running gdalwarp once per scene, in sequence.

    Parameters
    ----------
    scenes : sequence of path-like
        Input rasters.
    out_dir : path-like
        Output directory; scene ``name.tif`` becomes ``out_dir/name<fmt.suffix>``.
    fmt : GdalOutput
        Output driver and creation options (from :func:`gdal_output_format`).
    crs, res, resampling : optional
        Target CRS, pixel size (target units) and resampling method.
    warp_options : sequence of str, optional
        Extra ``-wo`` options, e.g. ``("XSCALE=1", "YSCALE=1")`` for point (unscaled)
        kernels; the timed baseline uses none.
    error_threshold : float, optional
        ``-et`` in pixels (0: exact transformation of every pixel); default GDAL's 0.125.
    per_scene_warp_options : sequence of sequence of str, optional
        Further ``-wo`` options for each scene, in scene order.
    gdalwarp : str, optional
        The gdalwarp executable.

    Returns
    -------
    list of str
        ``["bash", "-c", script]``; the script stops at the first failing scene.
    """
    lines = ["set -euo pipefail"]
    for k, src in enumerate(scenes):
        dst = Path(out_dir) / (Path(src).stem + fmt.suffix)
        args = [
            gdalwarp,
            "-q",
            "-overwrite",
            "-multi",
            "-wo",
            "NUM_THREADS=ALL_CPUS",
            "-tap",
            "-tr",
            f"{res:g}",
            f"{res:g}",
            "-t_srs",
            crs,
            "-r",
            resampling,
            "-of",
            fmt.driver,
        ]
        args += list(fmt.extra_args)
        if error_threshold is not None:
            args += ["-et", f"{error_threshold:g}"]
        for wo in (*warp_options, *(per_scene_warp_options[k] if per_scene_warp_options else ())):
            args += ["-wo", wo]
        for co in fmt.creation_options:
            args += ["-co", co]
        args += [str(src), str(dst)]
        lines.append(shlex.join(args))
    return ["bash", "-c", "\n".join(lines)]


# --------------------------------------------------------------------------------------
# Shared Zarr writing helpers (odc-geo, io)
# --------------------------------------------------------------------------------------
def _zstd():
    """The output codec chain's compressor, identical for every Python writer."""
    from zarr.codecs import ZstdCodec

    return ZstdCodec(level=ZSTD_LEVEL)


def _cf_grid_mapping_attrs(crs_wkt: str, transform: Any) -> dict[str, Any]:
    """Attributes of a CF ``spatial_ref`` variable that GDAL and rioxarray both read."""
    gt = (transform.c, transform.a, transform.b, transform.f, transform.d, transform.e)
    return {
        "crs_wkt": crs_wkt,
        "spatial_ref": crs_wkt,
        "GeoTransform": " ".join(repr(float(v)) for v in gt),
    }


def _create_image_group(
    path: Path,
    *,
    crs_wkt: str,
    transform: Any,
    shape: tuple[int, int],
    bands: int,
    dtype: Any,
    nodata: float,
) -> list[Any]:
    """Create an empty image group (``b1..bn``, ``x``, ``y``, ``spatial_ref``); return bands.

    Written with zarr-python directly (no xarray/Dask in the timed path of the I/O floor),
    but laid out the way xarray writes a Dataset, so ``xarray.open_zarr`` reads it back.
    """
    import numpy as np
    import zarr

    h, w = shape
    root = zarr.open_group(str(path), mode="w", zarr_format=3)
    xs = transform.c + (np.arange(w) + 0.5) * transform.a
    ys = transform.f + (np.arange(h) + 0.5) * transform.e
    for name, values in (("x", xs), ("y", ys)):
        arr = root.create_array(
            name, shape=values.shape, dtype="float64", chunks=values.shape, dimension_names=(name,)
        )
        arr[:] = values
    sr = root.create_array("spatial_ref", shape=(), dtype="int32", dimension_names=())
    sr.attrs.update(_cf_grid_mapping_attrs(crs_wkt, transform))
    sr[...] = 0
    out = []
    for b in range(1, bands + 1):
        arr = root.create_array(
            f"b{b}",
            shape=(h, w),
            dtype=dtype,
            chunks=(CHUNK, CHUNK),
            compressors=_zstd(),
            fill_value=nodata,
            dimension_names=("y", "x"),
            attributes={"grid_mapping": "spatial_ref", "_FillValue": nodata},
        )
        out.append(arr)
    return out


# --------------------------------------------------------------------------------------
# odc-geo
# --------------------------------------------------------------------------------------
def run_odc_geo(
    scenes: Sequence[str],
    out_dir: str,
    threads: int = 2,
    crs: str = "EPSG:3857",
    res: float = 60.0,
    resampling: str = "bilinear",
    src_chunk: int = 1024,
) -> dict[str, Any]:
    """Reproject every scene with odc-geo on Dask threads and write one Zarr per scene.

    Parameters
    ----------
    scenes : sequence of str
        Input GeoTIFFs.
    out_dir : str
        Output directory (``<stem>.zarr`` per scene; should be empty).
    threads : int, optional
        Dask threaded-scheduler workers.
    crs, res, resampling : optional
        Target CRS, pixel size and resampling.
    src_chunk : int, optional
        Source chunk edge (a multiple of the 512-pixel GeoTIFF tiles).

    Returns
    -------
    dict
        ``images``: per scene the output path and ``(height, width)``.
    """
    import dask
    import odc.geo.xr  # noqa: F401  (registers the .odc accessor)
    import rioxarray
    from odc.geo.overlap import compute_output_geobox
    from odc.geo.xr import xr_reproject

    writes = []
    images = []
    for path in scenes:
        # lock=False: every chunk read opens its own handle, so reads run in parallel.
        src = rioxarray.open_rasterio(
            path, chunks={"band": -1, "y": src_chunk, "x": src_chunk}, lock=False
        )
        # tight=False + default anchor: pixel edges on multiples of `res`, like -tap.
        gbox = compute_output_geobox(src.odc.geobox, crs, resolution=res)
        out = xr_reproject(src, gbox, resampling=resampling, chunks=(CHUNK, CHUNK))
        ds = out.to_dataset(dim="band")
        ds = ds.rename({k: f"b{int(k)}" for k in ds.data_vars})
        nodata = out.attrs.get("nodata", 0)
        encoding = {}
        for v in ds.data_vars:
            ds[v].attrs = {"grid_mapping": "spatial_ref"}
            encoding[v] = {
                "chunks": (CHUNK, CHUNK),
                "compressors": (_zstd(),),
                "_FillValue": nodata,
            }
        target = str(Path(out_dir) / f"{Path(path).stem}.zarr")
        writes.append(
            ds.to_zarr(
                target,
                mode="w",
                compute=False,
                zarr_format=3,
                consolidated=False,
                encoding=encoding,
            )
        )
        images.append({"path": target, "shape": list(gbox.shape.yx)})
    # One compute for all scenes: the scheduler overlaps one scene's tail with the next.
    with dask.config.set(scheduler="threads", num_workers=threads):
        dask.compute(*writes)
    return {"images": images}


# --------------------------------------------------------------------------------------
# I/O floors
# --------------------------------------------------------------------------------------
class _ThreadLocalDatasets:
    """One open rasterio dataset per (thread, file).

    GDAL dataset handles must not be shared between threads, and reopening a file for
    every strip would add avoidable overhead to a floor measurement.
    """

    def __init__(self) -> None:
        self._local = threading.local()
        self._all: list[Any] = []
        self._lock = threading.Lock()

    def get(self, path: str) -> Any:
        import rasterio

        cache = self._local.__dict__.setdefault("open", {})
        if path not in cache:
            cache[path] = rasterio.open(path)
            with self._lock:
                self._all.append(cache[path])
        return cache[path]

    def close(self) -> None:
        for ds in self._all:
            ds.close()
        self._all.clear()


def _strips(height: int, step: int) -> list[tuple[int, int]]:
    """(row0, nrows) strips covering ``height`` rows in steps of ``step``."""
    return [(r, min(step, height - r)) for r in range(0, height, step)]


def run_io(scenes: Sequence[str], out_dir: str, threads: int = 2) -> dict[str, Any]:
    """Copy every scene's pixels unchanged into Zarr (the read + write floor).

    Parameters
    ----------
    scenes : sequence of str
        Input GeoTIFFs.
    out_dir : str
        Output directory (``<stem>.zarr`` per scene).
    threads : int, optional
        Worker threads; each copies one strip (512 rows × full width, all bands) at a
        time, so every Zarr chunk is written whole, exactly once, by one thread.

    Returns
    -------
    dict
        ``pixels``: input pixels copied per band.
    """
    import rasterio
    from rasterio.windows import Window

    tasks = []
    for path in scenes:
        with rasterio.open(path) as ds:
            arrays = _create_image_group(
                Path(out_dir) / f"{Path(path).stem}.zarr",
                crs_wkt=ds.crs.to_wkt(),
                transform=ds.transform,
                shape=(ds.height, ds.width),
                bands=ds.count,
                dtype=ds.dtypes[0],
                nodata=ds.nodata if ds.nodata is not None else 0,
            )
            tasks += [(path, arrays, r0, n, ds.width) for r0, n in _strips(ds.height, CHUNK)]

    handles = _ThreadLocalDatasets()

    def copy(task: tuple[str, list[Any], int, int, int]) -> int:
        path, arrays, r0, n, width = task
        block = handles.get(path).read(window=Window(0, r0, width, n))
        for b, arr in enumerate(arrays):
            arr[r0 : r0 + n, :] = block[b]
        return n * width

    try:
        with ThreadPoolExecutor(max_workers=threads) as ex:
            pixels = sum(ex.map(copy, tasks))
    finally:
        handles.close()
    return {"pixels": int(pixels)}


def run_read(scenes: Sequence[str], threads: int = 2) -> dict[str, Any]:
    """Decode every pixel of every scene and discard it (the input floor).

    Parameters
    ----------
    scenes : sequence of str
        Input GeoTIFFs.
    threads : int, optional
        Worker threads, one strip (512 rows × full width) per task.

    Returns
    -------
    dict
        ``pixels``: input pixels decoded per band.
    """
    import rasterio
    from rasterio.windows import Window

    tasks = []
    for path in scenes:
        with rasterio.open(path) as ds:
            tasks += [(path, r0, n, ds.width) for r0, n in _strips(ds.height, CHUNK)]
    handles = _ThreadLocalDatasets()

    def read(task: tuple[str, int, int, int]) -> int:
        path, r0, n, width = task
        handles.get(path).read(window=Window(0, r0, width, n))
        return n * width

    try:
        with ThreadPoolExecutor(max_workers=threads) as ex:
            pixels = sum(ex.map(read, tasks))
    finally:
        handles.close()
    return {"pixels": int(pixels)}


def _main(argv: Sequence[str] | None = None) -> int:
    """``python -m benchmarks.baselines setup``: install/check gdalwarp and report."""
    import argparse

    p = argparse.ArgumentParser(prog="python -m benchmarks.baselines")
    p.add_argument("command", choices=["setup"])
    p.parse_args(argv)
    info = ensure_gdal(install=True)
    print(info["message"])
    if info["available"]:
        major, minor, patch = (int(x) for x in info["version"].split("."))
        fmt = gdal_output_format((major, minor, patch))
        print(f"gdalwarp baseline writes {fmt.label}" + (f" ({fmt.note})" if fmt.note else ""))
    return 0 if info["available"] else 1


if __name__ == "__main__":
    raise SystemExit(_main())
