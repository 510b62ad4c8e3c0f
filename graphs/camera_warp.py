"""The frame-camera ortho kernel: one destination chunk from one camera frame.

Strategy: work from the ground side. For every destination pixel centre, take its ground
X, Y (moved into the frame model's CRS when the collection has another), its height Z from
the terrain (a constant, or the DEM warped onto the chunk grid by GDAL's bilinear warper
with the resampling scale fixed at 1, so a pixel's height does not depend on the chunk
around it), project (X, Y, Z) into the frame through the collinearity model and resample
the frame there. Each output pixel depends only on its own position, so there is no
iteration and chunks are independent: a chunked ortho equals a whole-frame one exactly.

Resampling follows GDAL's semantics: a destination pixel is covered when its source
position falls inside the frame (and in front of the camera); ``nearest`` takes the pixel
containing the position; ``bilinear`` and ``cubic`` (Keys, a = -0.5, as GDAL) weight the
pixel centres around it, taps beyond the frame edge and nodata taps are dropped and the
weights renormalised, and a pixel whose nearest source pixel is nodata stays nodata.
When the destination is coarser than the frame, bilinear and cubic widen by the inverse
scale as GDAL does, with one scale per frame (measured at its centre) so that chunks
agree; other GDAL methods map to the nearest of these three.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
from pyproj import CRS, Transformer
from rasterio.crs import CRS as RioCRS
from rasterio.enums import Resampling
from rasterio.vrt import WarpedVRT
from rasterio.windows import Window

from engine.camera.frame_model import FrameModel
from engine.grid import Grid
from engine.rastertypes.base import SourcePart

_NEAREST_LIKE = {"nearest", "mode", "min", "max", "med", "q1", "q3"}
_CUBIC_LIKE = {"cubic", "cubic_spline", "lanczos"}


def kernel_for(resampling: str) -> str:
    """The kernel this module uses for a GDAL resampling name."""
    r = resampling.lower()
    if r in _NEAREST_LIKE:
        return "nearest"
    return "cubic" if r in _CUBIC_LIKE else "bilinear"


@lru_cache(maxsize=32)
def _transformer(src_wkt: str, dst_wkt: str) -> Transformer:
    return Transformer.from_crs(CRS.from_wkt(src_wkt), CRS.from_wkt(dst_wkt), always_xy=True)


def terrain_on_grid(model: FrameModel, dst: Grid) -> np.ndarray:
    """Terrain height at every pixel centre of ``dst`` (NaN where the DEM has none)."""
    terrain = model.terrain
    if terrain.constant is not None:
        return np.full(dst.shape, float(terrain.constant))
    from graphs.chunk import _dataset  # the per-thread GDAL handle cache

    dem = _dataset(str(terrain.gdal_path))
    with WarpedVRT(
        dem,
        crs=RioCRS.from_wkt(dst.crs_wkt),
        transform=dst.transform,
        width=dst.width,
        height=dst.height,
        resampling=Resampling.bilinear,
        tolerance=1e-9,  # the exact transformer: no per-chunk interpolation of positions
        src_nodata=dem.nodata,
        nodata=float("nan"),
        dtype="float64",
        XSCALE="1",
        YSCALE="1",
    ) as vrt:
        return np.asarray(vrt.read(1), dtype="float64")


def source_positions(model: FrameModel, dst: Grid) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Stored-frame (col, row) of each ``dst`` pixel centre, and where that is in the frame."""
    h, w = dst.shape
    rows, cols = np.meshgrid(np.arange(h) + 0.5, np.arange(w) + 0.5, indexing="ij")
    x, y = dst.xy(rows, cols)
    z = terrain_on_grid(model, dst)
    if dst.crs_wkt != model.crs_wkt:
        x, y = _transformer(dst.crs_wkt, model.crs_wkt).transform(x, y)
    col, row, front = model.image_from_ground(x, y, z)
    ih, iw = model.image_shape
    with np.errstate(invalid="ignore"):
        inside = front & (col >= 0) & (col < iw) & (row >= 0) & (row < ih) & np.isfinite(z)
    return col, row, inside


_RADIUS = {"bilinear": 1.0, "cubic": 2.0}


def _weights(kernel: str, d: np.ndarray) -> np.ndarray:
    """Kernel weights at distances ``d`` (in kernel units: source pixels at scale 1)."""
    d = np.abs(d)
    if kernel == "bilinear":
        return np.maximum(0.0, 1.0 - d)
    a = -0.5  # Keys cubic convolution, as GDAL's "cubic"
    return np.where(
        d <= 1,
        (a + 2) * d**3 - (a + 3) * d**2 + 1,
        np.where(d < 2, a * d**3 - 5 * a * d**2 + 8 * a * d - 4 * a, 0.0),
    )


def _taps(kernel: str, pos: np.ndarray, scale: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Tap indexes (k, n) and weights (k, n) of a 1-D kernel at positions ``pos``
    (pixel-corner coordinates); ``scale`` < 1 widens the kernel by 1/scale (downsampling,
    as GDAL's XSCALE/YSCALE)."""
    if kernel == "nearest":
        return np.floor(pos)[None].astype(np.int64), np.ones((1, pos.size))
    centre = pos - 0.5
    reach = _RADIUS[kernel] / scale
    first = np.floor(centre - reach) + 1
    n = math.ceil(2 * reach) + 1
    taps = first[None, :] + np.arange(n)[:, None]
    return taps.astype(np.int64), _weights(kernel, (taps - centre[None, :]) * scale)


def resample(
    window: np.ndarray,
    col: np.ndarray,
    row: np.ndarray,
    kernel: str,
    valid: np.ndarray | None,
    scale: float = 1.0,
) -> tuple[np.ndarray, np.ndarray]:
    """Sample ``window`` (bands, h, w) at fractional (col, row) of the window: values
    (bands, n) as float64, and whether each result is data.

    ``valid`` marks the window's data pixels (None: all are data); ``scale`` (destination
    pixels per source pixel, at most 1) widens the kernel when downsampling.
    """
    bands, h, w = window.shape
    ci, cw = _taps(kernel, col, scale)
    ri, rw = _taps(kernel, row, scale)
    in_c = (ci >= 0) & (ci < w)
    in_r = (ri >= 0) & (ri < h)
    ci, ri = np.clip(ci, 0, w - 1), np.clip(ri, 0, h - 1)
    cw, rw = cw * in_c, rw * in_r
    near_c = np.clip(np.floor(col).astype(np.int64), 0, w - 1)
    near_r = np.clip(np.floor(row).astype(np.int64), 0, h - 1)
    ok = np.ones(col.shape, bool) if valid is None else valid[near_r, near_c]
    acc = np.zeros((bands, col.size))
    wsum = np.zeros(col.size)
    for a in range(ri.shape[0]):
        for b in range(ci.shape[0]):
            wt = rw[a] * cw[b]
            if valid is not None:
                wt = wt * valid[ri[a], ci[b]]
            acc += window[:, ri[a], ci[b]] * wt
            wsum += wt
    ok &= np.abs(wsum) > 1e-9
    with np.errstate(invalid="ignore", divide="ignore"):
        out = acc / np.where(ok, wsum, 1.0)
    return out, ok


def downsampling_scale(model: FrameModel, dst: Grid) -> float:
    """Destination pixels per frame pixel (at most 1), one value per frame and grid
    resolution: measured at the frame's centre, so every chunk resamples alike (GDAL's
    XSCALE/YSCALE fixed per image, see engine.plan.resampling_scale)."""
    return _scale_at_centre(model, dst.crs_wkt, dst.resolution)


@lru_cache(maxsize=256)
def _scale_at_centre(model: FrameModel, dst_wkt: str, res: tuple[float, float]) -> float:
    from engine.camera.placement import centre_gsd, project_to_terrain

    h, w = model.image_shape
    x, y, _ = project_to_terrain(model, np.array([w / 2.0]), np.array([h / 2.0]))
    if dst_wkt != model.crs_wkt:  # one destination cell, measured on the ground there
        fwd = _transformer(model.crs_wkt, dst_wkt)
        back = _transformer(dst_wkt, model.crs_wkt)
        dx, dy = fwd.transform(x, y)
        xs, ys = back.transform(dx + np.array([0.0, res[0]]), dy + np.array([0.0, 0.0]))
        cell = float(math.hypot(xs[1] - xs[0], ys[1] - ys[0]))
    else:
        cell = float(res[0])
    if not (cell > 0 and math.isfinite(cell)):
        return 1.0
    return min(1.0, round(centre_gsd(model) / cell, 9))


def _cast(values: np.ndarray, dtype: str) -> np.ndarray:
    dt = np.dtype(dtype)
    if dt.kind in "iu":
        info = np.iinfo(dt)
        return np.clip(np.rint(values), info.min, info.max).astype(dt)
    return values.astype(dt)


def warp_camera_part(
    part: SourcePart, dst: Grid, resampling: str, dst_nodata: float | None, dtype: str
) -> tuple[np.ndarray, np.ndarray | None]:
    """Orthorectify the bands of one camera frame onto ``dst``.

    Returns
    -------
    data
        (bands, h, w) of ``dtype``; uncovered pixels hold ``dst_nodata`` (0 when None).
    covered
        The coverage mask when ``dst_nodata`` is None, else None (as graphs.chunk.warp_part).
    """
    model: FrameModel = part.model
    kernel = kernel_for(resampling)
    col, row, inside = source_positions(model, dst)
    nb = len(part.band_indexes)
    fill = 0 if dst_nodata is None else dst_nodata
    out = np.full((nb, *dst.shape), fill, dtype=np.dtype(dtype))
    covered = np.zeros(dst.shape, bool)
    if inside.any():
        scale = downsampling_scale(model, dst) if kernel != "nearest" else 1.0
        reach = math.ceil(_RADIUS.get(kernel, 1.0) / scale) + 1
        ih, iw = model.image_shape
        c0 = max(0, math.floor(col[inside].min()) - reach)
        r0 = max(0, math.floor(row[inside].min()) - reach)
        c1 = min(iw, math.floor(col[inside].max()) + reach + 1)
        r1 = min(ih, math.floor(row[inside].max()) + reach + 1)
        from graphs.chunk import _dataset

        ds = _dataset(part.path)
        window = ds.read(list(part.band_indexes), window=Window(c0, r0, c1 - c0, r1 - r0))
        valid = None
        if part.nodata is not None:
            nd = part.nodata
            valid = ~(np.isnan(window) if math.isnan(nd) else window == nd).any(axis=0)
        values, ok = resample(
            window.astype("float64"), col[inside] - c0, row[inside] - r0, kernel, valid, scale
        )
        sel = np.flatnonzero(inside.ravel())[ok]
        flat = out.reshape(nb, -1)
        flat[:, sel] = _cast(values[:, ok], dtype)
        covered.ravel()[sel] = True
    return out, (covered if dst_nodata is None else None)
