"""Where a frame lands: its outline projected onto the terrain, its planning grid, its GSD.

The outline of the frame (densified along each edge) is cast as rays from the perspective
centre and intersected with the terrain: a plane for a constant height (exact: a plane
maps straight frame edges to straight lines), or the DEM by fixed-point iteration along
each ray (Z → ground X, Y at Z → DEM height there → ...), which converges wherever the
terrain is less steep than the ray. The projected outline is the image's footprint; the
planning grid is north-up at the frame's ground sample distance (GSD) over that outline.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
import rasterio
import shapely
from affine import Affine
from pyproj import CRS, Transformer
from rasterio.windows import Window

from engine.camera.frame_model import FrameModel
from engine.dem import Terrain
from engine.grid import Grid

# Rays further than this from the nadir make unusable orthos (a pixel's ground footprint
# grows as 1/cos²): a frame reaching it (an oblique or horizon view) is refused.
MAX_OFF_NADIR_DEG = 75.0
_EDGE_POINTS = 32


class PlacementError(ValueError):
    """The frame cannot be projected onto the terrain (the message says why)."""


@lru_cache(maxsize=32)
def _transformer(src: str, dst: str) -> Transformer:
    return Transformer.from_crs(CRS.from_user_input(src), CRS.from_user_input(dst), always_xy=True)


def _horizontal(crs: CRS) -> CRS:
    """The horizontal part of a compound CRS (a DEM in 'projected + vertical')."""
    if crs.is_compound:
        return crs.sub_crs_list[0]
    return crs


class DemSampler:
    """Bilinear heights from a DEM at points of any CRS (planning only; the ortho kernel
    warps the DEM with GDAL instead). NaN outside the DEM and on its nodata."""

    def __init__(self, gdal_path: str) -> None:
        self.path = gdal_path
        with rasterio.open(gdal_path) as ds:
            if ds.crs is None:
                raise PlacementError(f"the DEM {gdal_path} has no CRS")
            self.crs_wkt = _horizontal(CRS.from_wkt(ds.crs.to_wkt())).to_wkt()
            self.transform = ds.transform
            self.shape = (ds.height, ds.width)
            self.nodata = ds.nodata

    def __call__(self, x: np.ndarray, y: np.ndarray, crs_wkt: str) -> np.ndarray:
        x = np.asarray(x, dtype="float64")
        y = np.asarray(y, dtype="float64")
        if crs_wkt != self.crs_wkt:
            x, y = _transformer(crs_wkt, self.crs_wkt).transform(x, y)
        col, row = ~self.transform @ (x, y)
        col, row = np.asarray(col) - 0.5, np.asarray(row) - 0.5
        ok = np.isfinite(col) & np.isfinite(row)
        out = np.full(np.shape(x), np.nan)
        if not ok.any():
            return out
        h, w = self.shape
        c0 = int(max(0, math.floor(col[ok].min())))
        r0 = int(max(0, math.floor(row[ok].min())))
        c1 = int(min(w - 1, math.floor(col[ok].max()) + 1))
        r1 = int(min(h - 1, math.floor(row[ok].max()) + 1))
        if c1 < c0 or r1 < r0:
            return out
        with rasterio.open(self.path) as ds:
            z = ds.read(1, window=Window(c0, r0, c1 - c0 + 1, r1 - r0 + 1)).astype("float64")
        if self.nodata is not None and not math.isnan(self.nodata):
            z[z == self.nodata] = np.nan
        inside = ok & (col >= -0.5) & (col <= w - 0.5) & (row >= -0.5) & (row <= h - 0.5)
        cc = np.clip(col[inside], 0, w - 1) - c0
        rr = np.clip(row[inside], 0, h - 1) - r0
        i0 = np.clip(np.floor(cc).astype(int), 0, z.shape[1] - 1)
        j0 = np.clip(np.floor(rr).astype(int), 0, z.shape[0] - 1)
        i1 = np.minimum(i0 + 1, z.shape[1] - 1)
        j1 = np.minimum(j0 + 1, z.shape[0] - 1)
        fx, fy = cc - i0, rr - j0
        top = z[j0, i0] * (1 - fx) + z[j0, i1] * fx
        bottom = z[j1, i0] * (1 - fx) + z[j1, i1] * fx
        out[inside] = top * (1 - fy) + bottom * fy
        return out


def ground_height(terrain: Terrain, x: np.ndarray, y: np.ndarray, crs_wkt: str) -> np.ndarray:
    """Terrain heights at points (x, y) of ``crs_wkt``."""
    if terrain.constant is not None:
        return np.full(np.shape(x), float(terrain.constant))
    return _sampler(str(terrain.gdal_path))(x, y, crs_wkt)


@lru_cache(maxsize=8)
def _sampler(path: str) -> DemSampler:
    return DemSampler(path)


def project_to_terrain(
    model: FrameModel, col: np.ndarray, row: np.ndarray, iterations: int = 50
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Ground (X, Y, Z) where the rays of stored-image (col, row) meet the terrain."""
    terrain = model.terrain
    if terrain.constant is not None:
        z = np.full(np.shape(col), float(terrain.constant))
        x, y = model.ground_at_height(col, row, z)
        return x, y, z
    nadir = ground_height(
        terrain, np.array([model.centre[0]]), np.array([model.centre[1]]), model.crs_wkt
    )
    z = np.full(np.shape(col), nadir[0] if np.isfinite(nadir[0]) else 0.0)
    x, y = model.ground_at_height(col, row, z)
    for _ in range(iterations):
        znew = ground_height(terrain, x, y, model.crs_wkt)
        znew = np.where(np.isfinite(znew), znew, z)  # off the DEM: keep the last height
        if np.nanmax(np.abs(znew - z), initial=0.0) < 1e-3:
            z = znew
            break
        z = znew
        x, y = model.ground_at_height(col, row, z)
    x, y = model.ground_at_height(col, row, z)  # the rays' points at the final heights
    return x, y, z


def frame_outline(model: FrameModel, points_per_edge: int = _EDGE_POINTS) -> np.ndarray:
    """Stored-image (col, row) ring around the frame's outer pixel edges, shape (n, 2)."""
    h, w = model.image_shape
    t = np.linspace(0.0, 1.0, points_per_edge + 1)[:-1]
    cols = np.concatenate([t * w, np.full_like(t, w), (1 - t) * w, np.zeros_like(t)])
    rows = np.concatenate([np.zeros_like(t), t * h, np.full_like(t, h), (1 - t) * h])
    return np.column_stack([cols, rows])


def off_nadir_deg(model: FrameModel, col: np.ndarray, row: np.ndarray) -> np.ndarray:
    """Angle between each ray and the downward vertical, degrees."""
    d = model.rays(col, row)
    return np.degrees(np.arccos(np.clip(-d[..., 2] / np.linalg.norm(d, axis=-1), -1, 1)))


def ground_footprint(model: FrameModel) -> shapely.Polygon:
    """The frame's exact outline on the terrain, in the model's CRS.

    Raises
    ------
    PlacementError
        When part of the frame looks further than :data:`MAX_OFF_NADIR_DEG` from the nadir
        (above the horizon, or so oblique that an ortho is meaningless).
    """
    ring = frame_outline(model)
    angles = off_nadir_deg(model, ring[:, 0], ring[:, 1])
    worst = float(angles.max())
    if worst > MAX_OFF_NADIR_DEG:
        where = "above the horizon" if worst >= 90 else f"{worst:.0f}° from the nadir"
        raise PlacementError(
            f"part of the frame looks {where} (limit {MAX_OFF_NADIR_DEG:.0f}°): an oblique"
            " view cannot be orthorectified; keep near-nadir frames (gimbal pitch close to -90°)"
        )
    x, y, _ = project_to_terrain(model, ring[:, 0], ring[:, 1])
    if not (np.isfinite(x).all() and np.isfinite(y).all()):
        raise PlacementError("part of the frame does not reach the terrain")
    poly = shapely.Polygon(np.column_stack([x, y]))
    return poly if poly.is_valid else shapely.make_valid(poly)


def centre_gsd(model: FrameModel) -> float:
    """Ground sample distance at the image centre: the mean ground size of one pixel."""
    h, w = model.image_shape
    c, r = w / 2.0, h / 2.0
    x, y, _ = project_to_terrain(
        model, np.array([c - 0.5, c + 0.5, c, c]), np.array([r, r, r - 0.5, r + 0.5])
    )
    return float((math.hypot(x[1] - x[0], y[1] - y[0]) + math.hypot(x[3] - x[2], y[3] - y[2])) / 2)


def planning_grid(footprint: shapely.Geometry, gsd: float, crs_wkt: str) -> Grid:
    """A north-up grid at ``gsd`` over the footprint's bounds (the planner's native grid).

    The planner measures an input's cell size from its grid and takes its footprint from
    ``ImageSource.footprint``; north-up keeps that measure true in any collection CRS.
    """
    left, bottom, right, top = footprint.bounds
    w = max(1, math.ceil((right - left) / gsd))
    h = max(1, math.ceil((top - bottom) / gsd))
    return Grid(CRS.from_wkt(crs_wkt), Affine(gsd, 0, left, 0, -gsd, top), (h, w))
