"""Deterministic, realistic synthetic satellite scenes (the benchmark workload "W8").

Each scene looks like one Landsat-style acquisition along a descending orbit path:

* a square UTM grid (default EPSG:32633, 30 m pixels) whose valid data is a *tilted*
  rectangle (the orbit track is rotated ~12° from grid north), so every scene carries a
  nodata collar (value 0) in its four corners, exactly like a rotated WRS-2 scene;
* consecutive scenes step down the path (south-south-west), so their bounding boxes
  overlap by ~20 % and their valid footprints by ~9 %;
* pixel content is a smooth, spatially correlated "landscape" (fractal value noise
  defined in *world* coordinates, so overlapping scenes show the same ground), sharp-edged
  water bodies, band-to-band correlation like real reflectance, plus per-scene sensor
  noise. That makes DEFLATE compression ratios and bilinear resampling behave as on real
  imagery, unlike white noise (incompressible) or constants (trivially compressible);
* tiled GeoTIFF (512 × 512 blocks), DEFLATE with horizontal predictor, nodata=0.

Strategy for speed and memory: values are computed strip by strip (one tile row, all
columns) with vectorised numpy only. The landscape is *separable* value noise: lattice
values come from a counter-based integer hash (no global random state, any window can be
evaluated independently) and are interpolated first along x for the few lattice rows a
strip touches, then along y, which costs O(pixels) per octave. A W8 scene (4096², 3
bands) takes a couple of seconds; a 512² test scene a few tens of milliseconds.

Files are cached: a scene whose GeoTIFF already exists with identical parameters
(recorded in a ``MOSAICFLOW_SYNTH`` metadata tag) is not rewritten. Writing goes to a
temporary name and is renamed on success, so an interrupted run never leaves a
half-written file that a later run would trust.

Importing this module has no side effects.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import rasterio
from affine import Affine
from rasterio.crs import CRS
from rasterio.errors import RasterioError
from rasterio.windows import Window

__all__ = [
    "GENERATOR_VERSION",
    "NODATA",
    "make_scenes",
    "scene_params",
    "scene_transform",
]

#: Bump when the generated pixels change, so cached scenes are regenerated.
GENERATOR_VERSION = 1

#: The nodata value of every generated scene (the collar).
NODATA = 0

# Orbit-path geometry, in units of the scene size: the path heads SSW at _TILT from grid
# south; each scene is _STEP scene heights further down the path. The valid footprint is a
# rectangle of half-widths _HALF_CROSS (across track) × _HALF_ALONG (along track) rotated
# by _TILT about the scene centre; these values keep it inside the square grid.
_TILT_DEG = 12.0
_STEP = 0.75
_HALF_CROSS = 0.40
_HALF_ALONG = 0.42

# Default upper-left corner of scene 0 (metres; plausible for UTM 33N at ~54°N).
_DEFAULT_ORIGIN = (300_000.0, 6_000_000.0)

# Landscape octaves: (cell size in metres, amplitude). Defined in metres, not pixels, so
# the same ground looks the same at any resolution and across overlapping scenes.
_TERRAIN_OCTAVES = ((15_360.0, 1.0), (3_840.0, 0.5), (960.0, 0.25), (240.0, 0.125))
_VEG_OCTAVES = ((7_680.0, 1.0), (480.0, 0.35), (120.0, 0.15))
_WATER_LEVEL = 0.30  # terrain below this (on a 0..1 scale) is open water
_SENSOR_NOISE_DN = 35.0  # per-pixel Gaussian noise, in uint16 DN (about 0.1 % reflectance)

# Landsat Collection-2 surface-reflectance scaling: reflectance = DN * 2.75e-5 - 0.2.
_SR_SCALE = 2.75e-5
_SR_OFFSET = -0.2

_MASK64 = (1 << 64) - 1


# --------------------------------------------------------------------------------------
# Geometry
# --------------------------------------------------------------------------------------
def scene_transform(
    index: int,
    size: int = 4096,
    res: float = 30.0,
    origin: tuple[float, float] = _DEFAULT_ORIGIN,
) -> Affine:
    """The north-up affine transform of scene ``index`` along the synthetic orbit path.

    Parameters
    ----------
    index : int
        Position of the scene along the path (0 is the northernmost).
    size : int, optional
        Scene width and height in pixels.
    res : float, optional
        Pixel size in CRS units (metres).
    origin : tuple of float, optional
        Upper-left corner ``(x, y)`` of scene 0.

    Returns
    -------
    affine.Affine
        Pixel-corner transform; corners stay on multiples of ``res`` from ``origin``.
    """
    step_rows = round(_STEP * size)
    step_cols = -round(_STEP * size * math.tan(math.radians(_TILT_DEG)))
    x0 = origin[0] + index * step_cols * res
    y0 = origin[1] - index * step_rows * res
    return Affine(res, 0.0, x0, 0.0, -res, y0)


def _footprint_mask(rows: np.ndarray, size: int) -> np.ndarray:
    """Valid-data mask (True inside the tilted footprint) for the given pixel rows."""
    theta = math.radians(_TILT_DEG)
    c = (size - 1) / 2.0
    dr = (rows.astype(np.float32) - c)[:, None]
    dc = (np.arange(size, dtype=np.float32) - c)[None, :]
    cross = dc * math.cos(theta) + dr * math.sin(theta)
    along = -dc * math.sin(theta) + dr * math.cos(theta)
    return (np.abs(cross) <= _HALF_CROSS * size) & (np.abs(along) <= _HALF_ALONG * size)


# --------------------------------------------------------------------------------------
# Landscape: separable value noise on a hashed lattice
# --------------------------------------------------------------------------------------
def _mix64(v: int) -> int:
    """A 64-bit integer finaliser (MurmurHash3 ``fmix64`` constants) on a Python int."""
    v &= _MASK64
    v ^= v >> 33
    v = (v * 0xFF51AFD7ED558CCD) & _MASK64
    v ^= v >> 33
    v = (v * 0xC4CEB9FE1A85EC53) & _MASK64
    v ^= v >> 33
    return v


def _lattice_values(cols: np.ndarray, rows: np.ndarray, salt: int) -> np.ndarray:
    """Uniform [0, 1) float32 values for lattice nodes ``rows × cols`` (counter-based hash).

    Every node's value depends only on its integer coordinates and ``salt``, so any window
    of the infinite lattice can be evaluated on its own, in any order, and always agrees.
    """
    with np.errstate(over="ignore"):
        cx = cols.astype(np.int64).astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15)
        cy = rows.astype(np.int64).astype(np.uint64) * np.uint64(0xC2B2AE3D27D4EB4F)
        h = cy[:, None] ^ cx[None, :] ^ np.uint64(salt)
        h ^= h >> np.uint64(33)
        h *= np.uint64(0xFF51AFD7ED558CCD)
        h ^= h >> np.uint64(33)
        h *= np.uint64(0xC4CEB9FE1A85EC53)
        h ^= h >> np.uint64(33)
    return (h >> np.uint64(40)).astype(np.float32) * np.float32(1.0 / (1 << 24))


def _axis_weights(coords: np.ndarray, cell: float) -> tuple[np.ndarray, np.ndarray]:
    """Lower lattice index and smoothstep weight of each coordinate along one axis."""
    g = coords / cell
    i0 = np.floor(g).astype(np.int64)
    f = (g - i0).astype(np.float32)
    return i0, f * f * (3.0 - 2.0 * f)  # smoothstep: no visible creases at cell edges


def _value_noise(xs: np.ndarray, ys: np.ndarray, cell: float, salt: int) -> np.ndarray:
    """Smooth noise in [0, 1) at world coordinates ``ys × xs`` for one lattice ``cell`` size.

    Interpolation is separable: first along x for only the lattice rows this window
    touches, then along y by gathering two of those rows per output row.
    """
    ix, wx = _axis_weights(xs, cell)
    iy, wy = _axis_weights(ys, cell)
    cols = np.arange(ix.min(), ix.max() + 2)
    rows = np.arange(iy.min(), iy.max() + 2)
    lat = _lattice_values(cols, rows, salt)
    jx = ix - cols[0]
    along_x = lat[:, jx] * (1.0 - wx) + lat[:, jx + 1] * wx  # (lattice rows, W)
    jy = iy - rows[0]
    wy = wy[:, None]
    return along_x[jy] * (1.0 - wy) + along_x[jy + 1] * wy


def _fractal(xs: np.ndarray, ys: np.ndarray, octaves, seed: int, field: int) -> np.ndarray:
    """Sum of value-noise octaves, normalised to roughly [0, 1]."""
    total = np.zeros((ys.size, xs.size), dtype=np.float32)
    norm = 0.0
    for k, (cell, amp) in enumerate(octaves):
        salt = _mix64(seed * 1_000_003 + field * 101 + k + 1)
        total += np.float32(amp) * _value_noise(xs, ys, cell, salt)
        norm += amp
    total *= np.float32(1.0 / norm)
    # A sum of octaves concentrates around 0.5; stretch it back towards [0, 1].
    return np.clip((total - 0.5) * 1.8 + 0.5, 0.0, 1.0)


def _band_coefficients(band: int) -> tuple[float, float, float]:
    """(base, terrain gain, vegetation gain) in reflectance units for a 0-based band.

    The first three mimic red, near-infrared and short-wave infrared: vegetation darkens
    red, brightens NIR strongly and SWIR mildly; brightness rises with terrain for all.
    Further bands get distinct but similar coefficients.
    """
    table = ((0.04, 0.10, -0.03), (0.12, 0.08, 0.22), (0.08, 0.14, 0.05))
    if band < len(table):
        return table[band]
    return (0.05 + 0.01 * (band % 5), 0.08 + 0.02 * (band % 3), 0.04 * ((band % 4) - 1))


def _to_dtype(refl: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """Reflectance → stored values; valid pixels never equal the nodata value 0."""
    if np.issubdtype(dtype, np.floating):
        return np.maximum(refl, 1e-4).astype(dtype)
    # uint8: 0..0.6 reflectance over 1..255; wider integers: Landsat C2 SR scaling.
    dn = refl * (254.0 / 0.6) + 1.0 if dtype == np.uint8 else (refl - _SR_OFFSET) / _SR_SCALE
    info = np.iinfo(dtype)
    return np.clip(np.rint(dn), max(1, info.min), info.max).astype(dtype)


def _render_strip(
    index: int,
    row0: int,
    nrows: int,
    size: int,
    bands: int,
    dtype: np.dtype,
    transform: Affine,
    seed: int,
) -> np.ndarray:
    """Pixel values ``(bands, nrows, size)`` of rows ``row0 .. row0 + nrows`` of a scene."""
    rows = np.arange(row0, row0 + nrows)
    xs = transform.c + (np.arange(size) + 0.5) * transform.a
    ys = transform.f + (rows + 0.5) * transform.e
    terrain = _fractal(xs, ys, _TERRAIN_OCTAVES, seed, field=1)
    veg = _fractal(xs, ys, _VEG_OCTAVES, seed, field=2)
    water = terrain < _WATER_LEVEL
    valid = _footprint_mask(rows, size)
    # Sensor noise is per scene (not per ground location), seeded per strip so strips can
    # be rendered in any order with identical results.
    rng = np.random.default_rng([seed, index, row0, 7])
    out = np.empty((bands, nrows, size), dtype=dtype)
    noise_refl = np.float32(_SENSOR_NOISE_DN * _SR_SCALE)
    for b in range(bands):
        base, g_terrain, g_veg = _band_coefficients(b)
        refl = base + g_terrain * terrain + g_veg * veg
        # Water: dark, smooth, slightly brighter in the visible band.
        refl = np.where(water, 0.02 + 0.01 * (b == 0) + 0.01 * veg, refl)
        refl += noise_refl * rng.standard_normal(refl.shape, dtype=np.float32)
        vals = _to_dtype(refl, dtype)
        vals[~valid] = NODATA
        out[b] = vals
    return out


# --------------------------------------------------------------------------------------
# Files
# --------------------------------------------------------------------------------------
def scene_params(
    index: int, size: int, bands: int, dtype: str, crs: str, res: float, seed: int
) -> dict[str, object]:
    """The parameters that fully determine one scene's file (its cache key).

    Parameters
    ----------
    index, size, bands, dtype, crs, res, seed
        See :func:`make_scenes`.

    Returns
    -------
    dict
        JSON-serialisable; stored in the GeoTIFF's ``MOSAICFLOW_SYNTH`` tag.
    """
    return {
        "generator": GENERATOR_VERSION,
        "index": int(index),
        "size": int(size),
        "bands": int(bands),
        "dtype": str(np.dtype(dtype)),
        "crs": str(crs),
        "res": float(res),
        "seed": int(seed),
    }


def _is_cached(path: Path, tag: str) -> bool:
    """True when ``path`` is a readable GeoTIFF written with exactly these parameters."""
    if not path.is_file():
        return False
    try:
        with rasterio.open(path) as ds:
            return ds.tags().get("MOSAICFLOW_SYNTH") == tag
    except RasterioError:
        return False


def _write_scene(
    path: Path,
    index: int,
    size: int,
    bands: int,
    dtype: np.dtype,
    crs: str,
    res: float,
    seed: int,
    tag: str,
) -> None:
    """Render and write one scene strip by strip, then move it into place."""
    transform = scene_transform(index, size, res)
    # 512-pixel tiles; tiny test scenes get the smallest legal tile covering them.
    block = 512 if size >= 512 else max(16, -(-size // 16) * 16)
    profile = {
        "driver": "GTiff",
        "width": size,
        "height": size,
        "count": bands,
        "dtype": dtype.name,
        "crs": CRS.from_user_input(crs),
        "transform": transform,
        "nodata": NODATA,
        "tiled": True,
        "blockxsize": block,
        "blockysize": block,
        "compress": "deflate",
        "predictor": 3 if np.issubdtype(dtype, np.floating) else 2,
        "interleave": "pixel",
        "num_threads": "ALL_CPUS",  # GDAL compresses tiles on worker threads
        "bigtiff": "IF_SAFER",
    }
    tmp = path.with_name(path.name + ".partial")
    tmp.unlink(missing_ok=True)
    try:
        with rasterio.open(tmp, "w", **profile) as dst:
            dst.update_tags(MOSAICFLOW_SYNTH=tag)
            for row0 in range(0, size, block):
                nrows = min(block, size - row0)
                strip = _render_strip(index, row0, nrows, size, bands, dtype, transform, seed)
                dst.write(strip, window=Window(0, row0, size, nrows))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def make_scenes(
    out_dir: str | os.PathLike[str],
    n: int = 8,
    size: int = 4096,
    bands: int = 3,
    dtype: str = "uint16",
    crs: str = "EPSG:32633",
    res: float = 30.0,
    seed: int = 0,
) -> list[Path]:
    """Create (or reuse) ``n`` synthetic scenes along one orbit path in ``out_dir``.

    Parameters
    ----------
    out_dir : str or os.PathLike
        Directory for the GeoTIFFs (created if missing). Files are named
        ``scene_00.tif``, ``scene_01.tif``, …; use one directory per parameter set to
        keep several sets cached side by side.
    n : int, optional
        Number of scenes. Scene ``i`` does not depend on ``n``, so a smaller ``n``
        reuses a prefix of a larger set.
    size : int, optional
        Width and height in pixels (4096 for the W8 benchmark, e.g. 512 for tests).
    bands : int, optional
        Number of bands.
    dtype : str, optional
        Pixel type: ``uint16`` (Landsat C2 surface-reflectance scaling), ``uint8``,
        ``int16`` or a float type (reflectance).
    crs : str, optional
        A projected CRS in metres (anything ``rasterio.crs.CRS.from_user_input`` takes).
    res : float, optional
        Pixel size in metres.
    seed : int, optional
        Seed of the landscape and of the sensor noise.

    Returns
    -------
    list of pathlib.Path
        The scene files, in path order.

    Notes
    -----
    Deterministic: the same parameters always give byte-identical pixels. Existing files
    written with the same parameters (and generator version) are kept as they are.

    Examples
    --------
    >>> paths = make_scenes(tmp_path, n=2, size=512)  # doctest: +SKIP
    >>> [p.name for p in paths]  # doctest: +SKIP
    ['scene_00.tif', 'scene_01.tif']
    """
    if n < 1 or size < 16 or bands < 1:
        raise ValueError(f"need n >= 1, size >= 16, bands >= 1 (got {n}, {size}, {bands})")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths: list[Path] = []
    for i in range(n):
        params = scene_params(i, size, bands, dtype, crs, res, seed)
        tag = json.dumps(params, sort_keys=True)
        path = out / f"scene_{i:02d}.tif"
        if not _is_cached(path, tag):
            _write_scene(path, i, size, bands, np.dtype(dtype), crs, res, seed, tag)
        paths.append(path)
    return paths


def _main(argv: Sequence[str] | None = None) -> int:
    """Command line: ``python -m engine.synth OUT_DIR [--n N] [--size S] ...``."""
    import argparse
    import time

    p = argparse.ArgumentParser(description=_main.__doc__)
    p.add_argument("out_dir")
    p.add_argument("--n", type=int, default=8)
    p.add_argument("--size", type=int, default=4096)
    p.add_argument("--bands", type=int, default=3)
    p.add_argument("--dtype", default="uint16")
    p.add_argument("--crs", default="EPSG:32633")
    p.add_argument("--res", type=float, default=30.0)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    t0 = time.perf_counter()
    paths = make_scenes(a.out_dir, a.n, a.size, a.bands, a.dtype, a.crs, a.res, a.seed)
    print(f"{len(paths)} scenes in {a.out_dir} ({time.perf_counter() - t0:.1f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(_main())
