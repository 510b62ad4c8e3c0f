"""A fast chunk warp kernel that reproduces GDAL's warper (nearest, bilinear, cubic).

Why: with GDAL's WarpedVRT the per-chunk cost is dominated by the transformer (PROJ per
pixel, or per row segment with a tight error threshold), and for XSCALE < 1 GDAL runs its
generic kernel. This module computes the same output in two cheap steps.

1. Source coordinates, independent of the chunking. The exact transformation (pyproj,
   destination CRS -> source CRS, then the inverse source geotransform) is evaluated only at
   *nodes*: destination pixel centres whose global lattice row and column are multiples of
   ``NODE_STEP``. Every destination pixel gets its source coordinate by bilinear
   interpolation between the four nodes of its cell. Nodes sit on the global lattice, so a
   pixel gets bit-identical coordinates whichever chunk computes it (no seams). Node cells
   with a failed corner are evaluated exactly, pixel by pixel. For nearest, where an
   interpolation error could flip the choice of source pixel, each cell's interpolation
   error is measured at its centre and every pixel whose coordinate lies within a safety
   margin of a source pixel edge is recomputed exactly; nearest therefore uses exact
   coordinates wherever they matter and equals GDAL's exact transformer.
2. A numba kernel with GDAL's gdalwarpkernel semantics (learnt from its source, written
   here from scratch):

   * a destination pixel whose centre maps outside the source (x < 0, y < 0,
     x + 1e-10 >= width, ...) stays nodata;
   * nearest takes source pixel ``int(x + 1e-10)``;
   * bilinear/cubic with XSCALE and YSCALE >= 0.95 use GDAL's 4-sample formulas (bilinear:
     the 2x2 pixels around ``floor(x - 0.5)``, weights renormalised over valid pixels, the
     left/top edge clamped; cubic: Catmull-Rom (a = -0.5) over 4x4 pixels, falling back to
     the bilinear formula at image borders or when any of the 16 pixels is invalid);
   * otherwise GDAL's general resampler: radius ``ceil(r / scale)`` for a scale below 1,
     taps from ``((r + 1) % 2) - radius`` to ``radius`` around ``floor(x - 0.5)``, weights
     evaluated at ``distance * scale`` (scale < 1), invalid or out-of-image taps skipped and
     the sum renormalised (no normalisation when the weight sum is within 1e-5 of 1);
   * a band is left nodata when the valid weight is below GDAL's thresholds (1e-5 for the
     4-sample bilinear, 1e-6 for the general resampler);
   * integers round as GDAL does (``floor(v + 0.5)``, unsigned as ``(T)(v + 0.5)``), clamp
     to the type range, and a result equal to the destination nodata is nudged off it
     (integers: -1, or +1 at the type's lowest value; floats: next float up).

3. The source window (covering the chunk's coordinates plus the kernel reach, clamped to
   the image) is read once for all bands through rasterio, so GDAL's block cache still
   serves the blocks neighbouring chunks share.

``warp_chunk_fast`` returns None when it does not support a case; the caller then uses
GDAL (graphs.chunk.warp_part).
"""

from __future__ import annotations

import math
import threading
from typing import Any

import numpy as np
import rasterio
from numba import njit
from pyproj import Transformer
from rasterio.windows import Window

from engine.grid import Grid, as_crs

__all__ = ["NODE_STEP", "source_coordinates", "supports", "warp_chunk_fast"]

#: Destination pixels between coordinate nodes (nodes on multiples of this, globally).
NODE_STEP = 16

_METHODS = {"nearest": 0, "bilinear": 1, "cubic": 2}
_DTYPES = {"uint8", "int16", "uint16", "float32"}
_RADIUS = {"nearest": 0, "bilinear": 1, "cubic": 2}

_local = threading.local()


def supports(resampling: str, dtype: Any) -> bool:
    """Whether :func:`warp_chunk_fast` handles this resampling method and output dtype."""
    return resampling in _METHODS and np.dtype(dtype).name in _DTYPES


# -- coordinates --------------------------------------------------------------------------


def _transformer(dst_wkt: str, src_wkt: str) -> Transformer:
    """A per-thread pyproj Transformer destination CRS -> source CRS (x/y order)."""
    cache: dict[tuple[str, str], Transformer] = getattr(_local, "transformers", None) or {}
    _local.transformers = cache
    key = (dst_wkt, src_wkt)
    tr = cache.get(key)
    if tr is None:
        if len(cache) > 16:
            cache.clear()
        tr = cache[key] = Transformer.from_crs(as_crs(dst_wkt), as_crs(src_wkt), always_xy=True)
    return tr


def _inverse_geotransform(t: Any) -> tuple[float, float, float, float, float, float]:
    """GDAL's inverse geotransform (GDALInvGeoTransform), as (a, b, c, d, e, f) with
    col = a*X + b*Y + c and row = d*X + e*Y + f."""
    a, b, c, d, e, f = t.a, t.b, t.c, t.d, t.e, t.f
    if b == 0.0 and d == 0.0 and a != 0.0 and e != 0.0:  # north-up: no determinant
        return (1.0 / a, 0.0, -c / a, 0.0, 1.0 / e, -f / e)
    det = a * e - b * d
    inv = 1.0 / det
    return (e * inv, -b * inv, (b * f - c * e) * inv, -d * inv, a * inv, (c * d - a * f) * inv)


class _Mapper:
    """Destination global pixel centres -> source pixel coordinates, exactly."""

    def __init__(self, src_grid: Grid, dst: Grid, row0: int, col0: int) -> None:
        t = dst.transform
        # The lattice origin, rounded to a fine fixed grid so every chunk derives the same
        # value (dst.transform.c of different chunks carries different float noise).
        q = max(abs(t.a), abs(t.e)) * 2.0**-20
        self.ox = round((t.c - col0 * t.a - row0 * t.b) / q) * q
        self.oy = round((t.f - col0 * t.d - row0 * t.e) / q) * q
        self.t = t
        self.same = src_grid.crs == dst.crs
        self.tr = None if self.same else _transformer(dst.crs_wkt, src_grid.crs_wkt)
        self.inv = _inverse_geotransform(src_grid.transform)

    def __call__(self, grow: np.ndarray, gcol: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        t = self.t
        c = np.asarray(gcol, dtype="float64") + 0.5
        r = np.asarray(grow, dtype="float64") + 0.5
        x = self.ox + c * t.a + r * t.b
        y = self.oy + c * t.d + r * t.e
        if self.tr is not None:
            x, y = self.tr.transform(x, y, errcheck=False)
            x = np.asarray(x, dtype="float64")
            y = np.asarray(y, dtype="float64")
        ia, ib, ic, id_, ie, if_ = self.inv
        sx = ic + x * ia + y * ib
        sy = if_ + x * id_ + y * ie
        bad = ~(np.isfinite(sx) & np.isfinite(sy))
        if bad.any():
            sx = np.where(bad, np.nan, sx)
            sy = np.where(bad, np.nan, sy)
        return sx, sy


def _lagrange_weights(step: int) -> np.ndarray:
    """4-point Lagrange weights (nodes -1, 0, 1, 2) at t = k / step, k = 0 .. step - 1."""
    t = np.arange(step, dtype="float64") / step
    return np.stack(
        [
            -t * (t - 1.0) * (t - 2.0) / 6.0,
            (t + 1.0) * (t - 1.0) * (t - 2.0) / 2.0,
            -(t + 1.0) * t * (t - 2.0) / 2.0,
            (t + 1.0) * t * (t - 1.0) / 6.0,
        ],
        axis=1,
    )


@njit(cache=True, nogil=True)
def _interpolate_nodes(nx, ny, r0, c0, h, w, step, kr0, kc0, wts, out_x, out_y, bad_cell):
    """Cubic (4-point Lagrange) interpolation of node coordinates at every chunk pixel.

    Node (i, j) is global pixel ((kr0 + i) * step, (kc0 + j) * step); cell (i, j) lies
    between nodes i+1..i+2 / j+1..j+2 and its stencil spans nodes i..i+3 / j..j+3.
    Separable: first along columns for the node rows, then along rows; the arithmetic of
    a pixel depends only on its global position, never on the chunk. Cells whose 4x4
    stencil has a non-finite node are flagged in ``bad_cell`` (their pixels get NaN).
    """
    nr = nx.shape[0]
    tx = np.empty((nr, w))
    ty = np.empty((nr, w))
    for c in range(w):
        gc = c0 + c
        kc = gc // step
        j = kc - kc0 - 1  # first node of the stencil (kc - 1)
        f = gc - kc * step
        w0 = wts[f, 0]
        w1 = wts[f, 1]
        w2 = wts[f, 2]
        w3 = wts[f, 3]
        for i in range(nr):
            tx[i, c] = w0 * nx[i, j] + w1 * nx[i, j + 1] + w2 * nx[i, j + 2] + w3 * nx[i, j + 3]
            ty[i, c] = w0 * ny[i, j] + w1 * ny[i, j + 1] + w2 * ny[i, j + 2] + w3 * ny[i, j + 3]
    for r in range(h):
        gr = r0 + r
        kr = gr // step
        i = kr - kr0 - 1
        f = gr - kr * step
        w0 = wts[f, 0]
        w1 = wts[f, 1]
        w2 = wts[f, 2]
        w3 = wts[f, 3]
        for c in range(w):
            x = w0 * tx[i, c] + w1 * tx[i + 1, c] + w2 * tx[i + 2, c] + w3 * tx[i + 3, c]
            y = w0 * ty[i, c] + w1 * ty[i + 1, c] + w2 * ty[i + 2, c] + w3 * ty[i + 3, c]
            if not (np.isfinite(x) and np.isfinite(y)):
                bad_cell[i, (c0 + c) // step - kc0 - 1] = True
                x = np.nan
                y = np.nan
            out_x[r, c] = x
            out_y[r, c] = y


@njit(cache=True, nogil=True)
def _near_edge(sx, sy, margin_x, margin_y, cell_r, cell_c):
    """Pixels whose interpolated coordinate (+1e-10, GDAL's nearest offset) lies within
    its cell's error margin of an integer: nearest could pick another source pixel."""
    h, w = sx.shape
    out = np.zeros((h, w), dtype=np.bool_)
    for r in range(h):
        i = cell_r[r]
        for c in range(w):
            j = cell_c[c]
            x = sx[r, c] + 1e-10
            y = sy[r, c] + 1e-10
            if not (np.isfinite(x) and np.isfinite(y)):
                continue
            mx = margin_x[i, j]
            my = margin_y[i, j]
            dx = x - math.floor(x)
            dy = y - math.floor(y)
            if dx < mx or dx > 1.0 - mx or dy < my or dy > 1.0 - my:
                out[r, c] = True
    return out


def _interpolate_at(nx, ny, grow, gcol, step, kr0, kc0, wts):
    """The interpolated coordinates of single global pixels (same arithmetic as the
    chunk interpolation: along columns first, then along rows)."""
    xs = np.empty(len(grow))
    ys = np.empty(len(grow))
    for n, (gr, gc) in enumerate(zip(grow, gcol, strict=True)):
        ox = np.empty((1, 1))
        oy = np.empty((1, 1))
        bad = np.zeros((nx.shape[0] - 3, nx.shape[1] - 3), dtype=bool)
        _interpolate_nodes(nx, ny, int(gr), int(gc), 1, 1, step, kr0, kc0, wts, ox, oy, bad)
        xs[n] = ox[0, 0]
        ys[n] = oy[0, 0]
    return xs, ys


def source_coordinates(
    src_grid: Grid,
    dst: Grid,
    lattice_origin_rowcol: tuple[int, int],
    exact_edges: bool = False,
    step: int = NODE_STEP,
) -> tuple[np.ndarray, np.ndarray]:
    """Source pixel coordinates (x, y; pixel-corner convention, NaN where the
    transformation fails) of every pixel centre of ``dst``.

    ``exact_edges``: recompute exactly the pixels whose interpolated coordinate is close
    enough to a source pixel edge for the interpolation error to matter (nearest).
    """
    row0, col0 = (int(v) for v in lattice_origin_rowcol)
    h, w = dst.shape
    mapper = _Mapper(src_grid, dst, row0, col0)
    # nodes one cell beyond the chunk on each side: the cubic stencil of a cell
    kr0, kc0 = row0 // step - 1, col0 // step - 1
    kr1, kc1 = (row0 + h - 1) // step + 2, (col0 + w - 1) // step + 2
    gr, gc = np.meshgrid(
        np.arange(kr0, kr1 + 1) * step, np.arange(kc0, kc1 + 1) * step, indexing="ij"
    )
    nx, ny = mapper(gr.ravel(), gc.ravel())
    nx = nx.reshape(gr.shape)
    ny = ny.reshape(gr.shape)
    sx = np.empty((h, w), dtype="float64")
    sy = np.empty((h, w), dtype="float64")
    bad_cell = np.zeros((nx.shape[0] - 3, nx.shape[1] - 3), dtype=bool)
    wts = _lagrange_weights(step)
    _interpolate_nodes(nx, ny, row0, col0, h, w, step, kr0, kc0, wts, sx, sy, bad_cell)
    cell_r = (row0 + np.arange(h)) // step - kr0 - 1
    cell_c = (col0 + np.arange(w)) // step - kc0 - 1
    fix = np.zeros((h, w), dtype=bool)
    if bad_cell.any():
        fix |= bad_cell[cell_r[:, None], cell_c[None, :]]
    if exact_edges:
        # interpolation error of each cell, measured at its centre pixel against the exact
        # transformation, with a generous safety factor
        half = step // 2
        cr = (gr[1:-2, 1:-2] + half).ravel()
        cc = (gc[1:-2, 1:-2] + half).ravel()
        ex, ey = mapper(cr, cc)
        lr = cr - row0
        lc = cc - col0
        inside = (lr >= 0) & (lr < h) & (lc >= 0) & (lc < w)
        ix = np.full(ex.shape, np.nan)
        iy = np.full(ey.shape, np.nan)
        if inside.any():
            ix[inside] = sx[lr[inside], lc[inside]]
            iy[inside] = sy[lr[inside], lc[inside]]
        # cells whose centre is outside the chunk: interpolate the centre alone
        out = ~inside
        if out.any():
            ox, oy = _interpolate_at(nx, ny, cr[out], cc[out], step, kr0, kc0, wts)
            ix[out] = ox
            iy[out] = oy
        with np.errstate(invalid="ignore"):
            mx = np.nan_to_num(np.abs(ex - ix), nan=1.0) * 8.0 + 1e-8
            my = np.nan_to_num(np.abs(ey - iy), nan=1.0) * 8.0 + 1e-8
        shape = bad_cell.shape
        fix |= _near_edge(sx, sy, mx.reshape(shape), my.reshape(shape), cell_r, cell_c)
    if fix.any():
        rr, cc = np.nonzero(fix)
        ex, ey = mapper(rr + row0, cc + col0)
        sx[rr, cc] = ex
        sy[rr, cc] = ey
    return sx, sy


# -- the kernel ---------------------------------------------------------------------------

_SRC_DENSITY_THRESHOLD = 1e-9


@njit(cache=True, nogil=True, inline="always")
def _bilinear_w(x):
    ax = abs(x)
    if ax <= 1.0:
        return 1.0 - ax
    return 0.0


@njit(cache=True, nogil=True, inline="always")
def _cubic_w(x):
    ax = abs(x)
    if ax <= 1.0:
        x2 = x * x
        return x2 * (1.5 * ax - 2.5) + 1.0
    if ax <= 2.0:
        x2 = x * x
        return x2 * (-0.5 * ax + 2.5) - 4.0 * ax + 2.0
    return 0.0


@njit(cache=True, nogil=True, inline="always")
def _is_nodata(v, nd, nd_nan):
    """GDAL's nodata test (NaN nodata: NaN; else equal within 1e-10, absolute or relative)."""
    if nd_nan:
        return v != v
    if v == nd or abs(v - nd) < 1e-10:
        return True
    return nd != 0.0 and abs(1.0 - v / nd) < 1e-10


@njit(cache=True, nogil=True)
def _unified_valid(src, has_nd, nd, nd_nan):
    """GDAL's unified source mask: a pixel is invalid only when every band is nodata.

    (Per-band nodata is not applied: a valid pixel contributes its raw value in every
    band, as GDAL's warper does with its unified source validity mask.)
    """
    nb, hh, ww = src.shape
    valid = np.ones((hh, ww), dtype=np.bool_)
    if not has_nd:
        return valid
    for r in range(hh):
        for c in range(ww):
            ok = False
            for b in range(nb):
                if not _is_nodata(float(src[b, r, c]), nd, nd_nan):
                    ok = True
                    break
            valid[r, c] = ok
    return valid


@njit(cache=True, nogil=True, inline="always")
def _ok(valid, gy, gx, wr0, wc0):
    """Whether image pixel (gy, gx) is valid; outside the read window counts as invalid."""
    ly = gy - wr0
    lx = gx - wc0
    if ly < 0 or lx < 0 or ly >= valid.shape[0] or lx >= valid.shape[1]:
        return False
    return valid[ly, lx]


@njit(cache=True, nogil=True)
def _bilinear4(src, valid, x, y, sw, sh, wr0, wc0, vals, oks):
    """GDAL's 4-sample bilinear for all bands into ``vals``/``oks``."""
    nb = src.shape[0]
    ix = math.floor(x - 0.5)
    iy = math.floor(y - 0.5)
    rx = 1.5 - (x - ix)
    ry = 1.5 - (y - iy)
    if ix == -1:
        ix = 0
        rx = 1.0
    if iy == -1:
        iy = 0
        ry = 1.0
    for b in range(nb):
        vals[b] = 0.0
    div = 0.0
    for k in range(2):
        yy = iy + k
        if yy < 0 or yy >= sh:
            continue
        wy = ry if k == 0 else 1.0 - ry
        for m in range(2):
            xx = ix + m
            if xx < 0 or xx >= sw or not _ok(valid, yy, xx, wr0, wc0):
                continue
            wgt = (rx if m == 0 else 1.0 - rx) * wy
            div += wgt
            for b in range(nb):
                vals[b] += float(src[b, yy - wr0, xx - wc0]) * wgt
    ok = div >= 0.00001
    for b in range(nb):
        oks[b] = ok
        if ok and div != 1.0:
            vals[b] /= div


@njit(cache=True, nogil=True)
def _cubic4(src, valid, x, y, sw, sh, wr0, wc0, vals, oks):
    """GDAL's 4-sample cubic (Catmull-Rom); bilinear at borders and near invalid pixels."""
    nb = src.shape[0]
    ix = int(x - 0.5)
    iy = int(y - 0.5)
    if ix - 1 < 0 or ix + 2 >= sw or iy - 1 < 0 or iy + 2 >= sh:
        _bilinear4(src, valid, x, y, sw, sh, wr0, wc0, vals, oks)
        return
    for k in range(4):
        for m in range(4):
            if not _ok(valid, iy - 1 + k, ix - 1 + m, wr0, wc0):
                _bilinear4(src, valid, x, y, sw, sh, wr0, wc0, vals, oks)
                return
    cx0, cx1, cx2, cx3 = _cubic_coeffs(x - 0.5 - ix)
    cy0, cy1, cy2, cy3 = _cubic_coeffs(y - 0.5 - iy)
    ly = iy - 1 - wr0
    lx = ix - 1 - wc0
    for b in range(nb):
        acc = 0.0
        for k in range(4):
            row = (
                cx0 * float(src[b, ly + k, lx])
                + cx1 * float(src[b, ly + k, lx + 1])
                + cx2 * float(src[b, ly + k, lx + 2])
                + cx3 * float(src[b, ly + k, lx + 3])
            )
            ck = cy0 if k == 0 else (cy1 if k == 1 else (cy2 if k == 2 else cy3))
            acc += ck * row
        vals[b] = acc
        oks[b] = True


@njit(cache=True, nogil=True, inline="always")
def _cubic_coeffs(t):
    t2 = t * t
    t3 = t2 * t
    w0 = -0.5 * t3 + t2 - 0.5 * t
    w1 = 1.5 * t3 - 2.5 * t2 + 1.0
    w2 = -1.5 * t3 + 2.0 * t2 + 0.5 * t
    w3 = 0.5 * t3 - 0.5 * t2
    return w0, w1, w2, w3


@njit(cache=True, nogil=True)
def _general(
    src,
    valid,
    x,
    y,
    sw,
    sh,
    wr0,
    wc0,
    method,
    xscale,
    yscale,
    geom,
    wx,
    wy,
    acc,
    racc,
    vals,
    oks,
    skip_zero,
):
    """GDAL's general resampler (GWKResample semantics) for all bands."""
    nb = src.shape[0]
    xr, yr, x_init, y_init = geom
    ix = math.floor(x - 0.5)
    iy = math.floor(y - 0.5)
    dx = x - 0.5 - ix
    dy = y - 0.5 - iy
    j0 = y_init
    j1 = yr
    if iy + j0 < 0:
        j0 = -iy
    if iy + j1 >= sh:
        j1 = sh - iy - 1
    i0 = x_init
    i1 = xr
    if ix + i0 < 0:
        i0 = -ix
    if ix + i1 >= sw:
        i1 = sw - ix - 1
    for i in range(i0, i1 + 1):
        t = (i - dx) * xscale if xscale < 1.0 else i - dx
        wx[i - x_init] = _bilinear_w(t) if method == 1 else _cubic_w(t)
    for j in range(j0, j1 + 1):
        t = (j - dy) * yscale if yscale < 1.0 else j - dy
        wy[j - y_init] = _bilinear_w(t) if method == 1 else _cubic_w(t)
    if skip_zero:
        # zero-weight taps add exactly nothing to integer data: narrow the loops to the
        # taps that weigh something (the same taps in the same order: the same sums)
        while i0 <= i1 and wx[i0 - x_init] == 0.0:
            i0 += 1
        while i1 >= i0 and wx[i1 - x_init] == 0.0:
            i1 -= 1
        while j0 <= j1 and wy[j0 - y_init] == 0.0:
            j0 += 1
        while j1 >= j0 and wy[j1 - y_init] == 0.0:
            j1 -= 1
    # taps of zero weight add exactly nothing to integer data: skip them (same sums, same
    # order as GDAL's per-band loops; all bands accumulate together so each tap is tested
    # once). Float data keeps them: GDAL multiplies a NaN by 0 and the result is NaN.
    for b in range(nb):
        acc[b] = 0.0
    accw = 0.0
    for j in range(j0, j1 + 1):
        w1 = wy[j - y_init]
        if w1 == 0.0 and skip_zero:
            continue
        for b in range(nb):
            racc[b] = 0.0
        raccw = 0.0
        gy = iy + j
        for i in range(i0, i1 + 1):
            w2 = wx[i - x_init]
            if w2 == 0.0 and skip_zero:
                continue
            gx = ix + i
            if not _ok(valid, gy, gx, wr0, wc0):
                continue
            ly = gy - wr0
            lx = gx - wc0
            for b in range(nb):
                racc[b] += float(src[b, ly, lx]) * w2
            raccw += w2
        for b in range(nb):
            acc[b] += racc[b] * w1
        accw += raccw * w1
    # the density accumulator equals the weight one (valid pixels have density 1)
    ok = accw >= 0.000001
    norm = accw < 0.99999 or accw > 1.00001
    for b in range(nb):
        oks[b] = ok
        vals[b] = acc[b] / accw if (ok and norm) else acc[b]


@njit(cache=True, nogil=True)
def _warp_kernel(
    src,
    valid,
    wr0,
    wc0,
    sw,
    sh,
    sx,
    sy,
    method,
    xscale,
    yscale,
    out,
    has_dnd,
    dnd,
    lo,
    hi,
    is_int,
    is_signed,
    skip_zero,
):
    nb = src.shape[0]
    h, w = sx.shape
    filt = 1 if method == 1 else 2
    four = xscale >= 0.95 and yscale >= 0.95
    xr = math.ceil(filt / xscale) if xscale < 1.0 else filt
    yr = math.ceil(filt / yscale) if yscale < 1.0 else filt
    x_init = ((filt + 1) % 2) - xr
    y_init = ((filt + 1) % 2) - yr
    geom = (xr, yr, x_init, y_init)
    wx = np.empty(xr - x_init + 1)
    wy = np.empty(yr - y_init + 1)
    vals = np.empty(nb)
    acc = np.empty(nb)
    racc = np.empty(nb)
    oks = np.empty(nb, dtype=np.bool_)
    for r in range(h):
        for c in range(w):
            x = sx[r, c]
            y = sy[r, c]
            if not (x == x and y == y):
                continue
            if x < 0.0 or y < 0.0:
                continue
            if x + 1e-10 > sw or y + 1e-10 > sh:
                continue
            jx = int(x + 1e-10)
            jy = int(y + 1e-10)
            if jx == sw or jy == sh:
                continue
            # the destination pixel is skipped when the source pixel under its centre is
            # invalid, whatever the kernel's other taps hold
            if not _ok(valid, jy, jx, wr0, wc0):
                continue
            if method == 0:
                for b in range(nb):
                    out[b, r, c] = src[b, jy - wr0, jx - wc0]
                continue
            if not four:
                _general(
                    src, valid, x, y, sw, sh, wr0, wc0, method, xscale, yscale, geom, wx, wy,
                    acc, racc, vals, oks, skip_zero,
                )  # fmt: skip
            elif method == 1:
                _bilinear4(src, valid, x, y, sw, sh, wr0, wc0, vals, oks)
            else:
                _cubic4(src, valid, x, y, sw, sh, wr0, wc0, vals, oks)
            for b in range(nb):
                if not oks[b]:
                    continue
                v = vals[b]
                if is_int:
                    if v < lo:
                        v = lo
                    elif v > hi:
                        v = hi
                    elif is_signed:
                        v = math.floor(v + 0.5)
                    else:
                        v = float(int(v + 0.5))
                    if has_dnd and v == dnd:  # never write the nodata value itself
                        v = v + 1.0 if v == lo else v - 1.0
                    out[b, r, c] = v
                else:
                    fv = np.float32(v)
                    if has_dnd and float(fv) == dnd:
                        fv = np.nextafter(fv, np.float32(np.inf))
                    out[b, r, c] = fv


# -- the chunk entry point ----------------------------------------------------------------


@njit(cache=True, nogil=True)
def _in_image_bounds(sx, sy, sw, sh):
    """(xmin, ymin, xmax, ymax) of the coordinates inside the image; xmin > xmax if none.
    One pass, no temporaries (the numpy version masked and copied 2 × 2 MB per chunk)."""
    x0, y0, x1, y1 = math.inf, math.inf, -math.inf, -math.inf
    h, w = sx.shape
    for r in range(h):
        for c in range(w):
            x = sx[r, c]
            y = sy[r, c]
            if x >= 0.0 and y >= 0.0 and x < sw and y < sh:  # NaN fails every test
                x0 = min(x0, x)
                x1 = max(x1, x)
                y0 = min(y0, y)
                y1 = max(y1, y)
    return x0, y0, x1, y1


def _source_window(
    sx: np.ndarray, sy: np.ndarray, pad: int, sw: int, sh: int
) -> tuple[int, int, int, int] | None:
    """(row0, col0, height, width) of the image window the kernel reads, or None."""
    xmin, ymin, xmax, ymax = _in_image_bounds(sx, sy, sw, sh)
    if xmin > xmax:
        return None
    c0 = max(0, math.floor(xmin) - pad)
    r0 = max(0, math.floor(ymin) - pad)
    c1 = min(sw, math.floor(xmax) + pad + 1)
    r1 = min(sh, math.floor(ymax) + pad + 1)
    if c1 <= c0 or r1 <= r0:
        return None
    return r0, c0, r1 - r0, c1 - c0


def warp_chunk_fast(
    ds: rasterio.DatasetReader,
    band_indexes: Any,
    src_grid: Grid,
    dst: Grid,
    lattice_origin_rowcol: tuple[int, int],
    resampling: str,
    src_nodata: float | None,
    dst_nodata: float | None,
    dtype: Any,
    scale: tuple[float, float],
) -> np.ndarray | None:
    """Warp bands ``band_indexes`` of ``ds`` onto the chunk ``dst``; (bands, h, w) of ``dtype``.

    ``lattice_origin_rowcol`` is the global lattice (row, col) of ``dst``'s top-left pixel,
    ``scale`` the image's fixed GDAL XSCALE/YSCALE (engine.plan.resampling_scale).
    Returns None when the case is not supported (the caller then uses GDAL).
    """
    dt = np.dtype(dtype)
    if not supports(resampling, dt):
        return None
    if src_nodata is None and resampling != "nearest":
        # without a source mask GDAL runs different (no-mask) kernels; not reproduced here
        return None
    if src_grid.height != ds.height or src_grid.width != ds.width:
        return None
    xscale, yscale = (float(v) for v in scale)
    if not (xscale > 0 and yscale > 0):
        return None
    bands = [int(b) for b in band_indexes]
    h, w = dst.shape
    fill = np.nan if dst_nodata is None and dt.kind == "f" else (dst_nodata or 0)
    out = np.full((len(bands), h, w), fill, dtype=dt)
    if h == 0 or w == 0:
        return out
    # exact coordinates near source pixel edges: nearest picks the pixel under the centre,
    # and the other kernels skip a destination pixel whose centre is on an invalid pixel
    sx, sy = source_coordinates(src_grid, dst, lattice_origin_rowcol, exact_edges=True)
    sh, sw = src_grid.shape
    radius = _RADIUS[resampling]
    pad = 2 + math.ceil(radius / min(xscale, yscale, 1.0))
    win = _source_window(sx, sy, pad, sw, sh)
    if win is None:
        return out
    r0, c0, wh, ww = win
    src = ds.read(bands, window=Window(c0, r0, ww, wh))
    has_nd = src_nodata is not None
    nd = float(src_nodata) if src_nodata is not None and has_nd else 0.0
    valid = _unified_valid(src, has_nd, nd, has_nd and math.isnan(nd))
    if dt.kind in "iu":
        info = np.iinfo(dt)
        lo, hi, is_int, is_signed = float(info.min), float(info.max), True, dt.kind == "i"
    else:
        lo, hi, is_int, is_signed = -math.inf, math.inf, False, True
    has_dnd = dst_nodata is not None and not math.isnan(float(dst_nodata))
    dnd = float(dst_nodata) if dst_nodata is not None and has_dnd else 0.0
    _warp_kernel(
        src,
        valid,
        r0,
        c0,
        sw,
        sh,
        sx,
        sy,
        _METHODS[resampling],
        xscale,
        yscale,
        out,
        has_dnd,
        dnd,
        lo,
        hi,
        is_int,
        is_signed,
        src.dtype.kind != "f",  # integer source: zero-weight taps may be skipped
    )
    return out
