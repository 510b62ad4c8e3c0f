"""The one grid type of mosaicflow, and the collection lattice it snaps to.

A :class:`Grid` is an immutable (crs, affine transform, shape) triple: a raster's pixel
grid. Everything geometric in the engine (native image grids, the collection lattice,
each image's target grid, each output chunk) is a Grid, and every operation returns a new
one. Grids tokenize deterministically so Dask keys built from them are stable.

A :class:`Lattice` is the collection's fixed frame: one CRS, one square cell size, pixel
corners on multiples of the cell size (like ``gdalwarp -tap``) and one collection-wide tile
size, so tile (row, col) covers the same ground in every image of the collection.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cached_property, lru_cache

import numpy as np
import shapely
from affine import Affine
from pyproj import CRS, Transformer

# Snapping tolerance, in cells: coordinates within this of a lattice line count as on it,
# so float noise (0.30000000000000004) never grows a grid by a whole pixel.
_SNAP_EPS = 1e-6


def as_crs(value: object) -> CRS:
    """Any CRS-like (pyproj CRS, rasterio CRS, WKT, 'EPSG:n', int) as a pyproj CRS.

    Parsed CRSs are cached by their text: a request of 10,000 images in one CRS parses it
    once, and equal CRSs are then one object (see :func:`same_crs`).
    """
    if isinstance(value, CRS):
        return value
    if hasattr(value, "to_wkt"):
        return _crs_from_text(value.to_wkt())
    if isinstance(value, str | int):
        return _crs_from_text(value)
    return CRS.from_user_input(value)


@lru_cache(maxsize=512)
def _crs_from_text(text: str | int) -> CRS:
    return CRS.from_user_input(text)


def same_crs(a: CRS, b: CRS) -> bool:
    """``a == b`` for pyproj CRSs, without PROJ's comparison when they are one object or
    were made from the same text (the comparison costs ~35 µs, planning does it per image)."""
    return a is b or a.srs == b.srs or _crs_equal(a.srs, b.srs)


@lru_cache(maxsize=1024)
def _crs_equal(a: str, b: str) -> bool:
    return bool(_crs_from_text(a) == _crs_from_text(b))


def transformer(src: CRS, dst: CRS) -> Transformer:
    """The always-xy transformer from ``src`` to ``dst``, cached: building one costs ~2 ms,
    planning and footprints need one per image (Transformers are thread-safe, pyproj >= 3.1)."""
    return _transformer(src.srs, dst.srs)


@lru_cache(maxsize=256)
def _transformer(src: str, dst: str) -> Transformer:
    return Transformer.from_crs(_crs_from_text(src), _crs_from_text(dst), always_xy=True)


@dataclass(frozen=True, eq=False)
class Grid:
    """An immutable raster grid: ``crs``, ``transform`` (pixel corner → CRS) and ``shape``.

    Examples
    --------
    >>> g = Grid(CRS.from_epsg(32633), Affine(10, 0, 500000, 0, -10, 4000000), (100, 200))
    >>> g.bounds
    (500000.0, 3999000.0, 502000.0, 4000000.0)
    >>> g.window(10, 20, 5, 5).transform.c
    500200.0
    """

    crs: CRS
    transform: Affine
    shape: tuple[int, int]

    def __post_init__(self) -> None:
        object.__setattr__(self, "crs", as_crs(self.crs))
        h, w = (int(v) for v in self.shape)
        if h < 0 or w < 0:
            raise ValueError(f"grid shape must be non-negative, got {self.shape}")
        object.__setattr__(self, "shape", (h, w))

    # -- identity ---------------------------------------------------------------------
    @cached_property
    def crs_wkt(self) -> str:
        return self.crs.to_wkt()

    def _key(self) -> tuple:
        return (self.crs_wkt, tuple(self.transform)[:6], self.shape)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Grid) and self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def __dask_tokenize__(self) -> tuple:
        return ("mosaicflow.Grid", *self._key())

    def __repr__(self) -> str:
        epsg = self.crs.to_epsg()
        name = f"EPSG:{epsg}" if epsg else self.crs.name
        return f"Grid({name}, res={self.resolution}, shape={self.shape}, bounds={self.bounds})"

    # -- shape and extent -------------------------------------------------------------
    @property
    def height(self) -> int:
        return self.shape[0]

    @property
    def width(self) -> int:
        return self.shape[1]

    @property
    def is_axis_aligned(self) -> bool:
        t = self.transform
        return t.b == 0 and t.d == 0

    @property
    def resolution(self) -> tuple[float, float]:
        """(x, y) pixel size, both positive."""
        t = self.transform
        return (math.hypot(t.a, t.d), math.hypot(t.b, t.e))

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        """(left, bottom, right, top) of the pixel corners, in ``crs`` units."""
        xs, ys = self.corners()
        return (float(xs.min()), float(ys.min()), float(xs.max()), float(ys.max()))

    def corners(self) -> tuple[np.ndarray, np.ndarray]:
        h, w = self.shape
        cols = np.array([0, w, w, 0], dtype="float64")
        rows = np.array([0, 0, h, h], dtype="float64")
        return self.xy(rows, cols)

    def xy(self, rows: np.ndarray, cols: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """CRS coordinates of fractional pixel positions (row, col); 0.5 is a pixel centre."""
        t = self.transform
        rows = np.asarray(rows, dtype="float64")
        cols = np.asarray(cols, dtype="float64")
        return (t.a * cols + t.b * rows + t.c, t.d * cols + t.e * rows + t.f)

    def coords(self) -> tuple[np.ndarray, np.ndarray]:
        """Pixel-centre coordinates (x of each column, y of each row); axis-aligned grids only."""
        if not self.is_axis_aligned:
            raise ValueError("pixel-centre 1-D coordinates need an axis-aligned grid")
        t = self.transform
        x = t.c + t.a * (np.arange(self.width) + 0.5)
        y = t.f + t.e * (np.arange(self.height) + 0.5)
        return x, y

    # -- derived grids ----------------------------------------------------------------
    def window(self, row_off: int, col_off: int, height: int, width: int) -> Grid:
        """The sub-grid starting at (row_off, col_off); may extend past this grid."""
        return Grid(
            self.crs, self.transform @ Affine.translation(col_off, row_off), (height, width)
        )

    def outline(self, points_per_edge: int = 21) -> np.ndarray:
        """Densified ring of the grid's outer pixel edges, shape (n, 2), in ``crs``."""
        h, w = self.shape
        n = max(2, points_per_edge)
        t = np.linspace(0.0, 1.0, n)[:-1]
        cols = np.concatenate([t * w, np.full_like(t, w), (1 - t) * w, np.zeros_like(t)])
        rows = np.concatenate([np.zeros_like(t), t * h, np.full_like(t, h), (1 - t) * h])
        xs, ys = self.xy(rows, cols)
        return np.column_stack([xs, ys])

    def footprint(self, points_per_edge: int = 2) -> shapely.Polygon:
        """The grid's outline as a polygon in its own CRS."""
        return shapely.Polygon(self.outline(points_per_edge))

    def outline_has_position_in(self, crs: object, points_per_edge: int = 21) -> bool:
        """Whether every point of the outline has a position in ``crs`` (not so for a
        geostationary full disk, whose corners look into space)."""
        target = as_crs(crs)
        if same_crs(target, self.crs):
            return True
        ring = self.outline(points_per_edge)
        tr = transformer(self.crs, target)
        xs, ys = tr.transform(ring[:, 0], ring[:, 1], errcheck=False)
        return bool(np.isfinite(xs).all() and np.isfinite(ys).all())

    def footprint_in(self, crs: object, points_per_edge: int = 21) -> shapely.Geometry:
        """The densified outline transformed to ``crs``.

        When part of the outline has no position in ``crs`` (a geostationary full disk,
        whose corners look into space), the footprint is the hull of a grid of points
        sampled across the whole image instead, as GDAL does for its default warp output.
        """
        target = as_crs(crs)
        ring = self.outline(points_per_edge)
        if same_crs(target, self.crs):
            return shapely.Polygon(ring)
        tr = transformer(self.crs, target)
        xs, ys = tr.transform(ring[:, 0], ring[:, 1], errcheck=False)
        ok = np.isfinite(xs) & np.isfinite(ys)
        if ok.all():
            poly = shapely.Polygon(np.column_stack([xs, ys]))
            return poly if poly.is_valid else shapely.make_valid(poly)
        # every pixel corner (up to 1024 per axis): the hull then reaches the last pixel
        # that has a position, e.g. the limb of a full disk
        ny, nx = min(self.height, 1024) + 1, min(self.width, 1024) + 1
        rows, cols = np.meshgrid(
            np.linspace(0, self.height, ny), np.linspace(0, self.width, nx), indexing="ij"
        )
        gx, gy = self.xy(rows.ravel(), cols.ravel())
        xs, ys = tr.transform(gx, gy, errcheck=False)
        ok = np.isfinite(xs) & np.isfinite(ys)
        if ok.sum() < 3:
            return shapely.Polygon()
        return shapely.MultiPoint(np.column_stack([xs[ok], ys[ok]])).convex_hull


@dataclass(frozen=True, eq=False)
class Lattice:
    """The collection frame: pixel corners at ``origin + k * cell_size``, tiles of ``tile_size``.

    Row indices grow downwards (north-up, negative y step), so the tile row of a point is
    ``floor((origin_y - y) / (cell_size * tile_size))``.
    """

    crs: CRS
    cell_size: float
    tile_size: int = 512
    origin: tuple[float, float] = (0.0, 0.0)

    def __post_init__(self) -> None:
        object.__setattr__(self, "crs", as_crs(self.crs))
        if not (self.cell_size > 0 and math.isfinite(self.cell_size)):
            raise ValueError(f"cell size must be a positive number, got {self.cell_size}")
        if self.tile_size < 16:
            raise ValueError(f"tile size must be at least 16 pixels, got {self.tile_size}")

    def __dask_tokenize__(self) -> tuple:
        return (
            "mosaicflow.Lattice",
            self.crs.to_wkt(),
            self.cell_size,
            self.tile_size,
            self.origin,
        )

    @property
    def tile_span(self) -> float:
        return self.cell_size * self.tile_size

    def _cell(self, x: float, y: float) -> tuple[float, float]:
        """Fractional (col, row) lattice coordinates of a CRS point."""
        return ((x - self.origin[0]) / self.cell_size, (self.origin[1] - y) / self.cell_size)

    def grid_for(self, bounds: tuple[float, float, float, float]) -> Grid:
        """The image grid covering ``bounds``: corners snapped outward to the pixel lattice,
        and its origin moved up-left onto a tile corner so chunk (i, j) of the image is a
        collection tile. Empty bounds give a (0, 0) grid."""
        left, bottom, right, top = bounds
        c0, r0 = self._cell(left, top)
        c1, r1 = self._cell(right, bottom)
        col1 = math.ceil(c1 - _SNAP_EPS)
        row1 = math.ceil(r1 - _SNAP_EPS)
        col0 = math.floor(c0 + _SNAP_EPS)
        row0 = math.floor(r0 + _SNAP_EPS)
        if col1 <= col0 or row1 <= row0:
            return Grid(self.crs, self._transform_at(0, 0), (0, 0))
        t = self.tile_size
        col0 = (col0 // t) * t
        row0 = (row0 // t) * t
        return Grid(self.crs, self._transform_at(row0, col0), (row1 - row0, col1 - col0))

    def _transform_at(self, row: int, col: int) -> Affine:
        cs = self.cell_size
        return Affine(cs, 0.0, self.origin[0] + col * cs, 0.0, -cs, self.origin[1] - row * cs)

    def tile_offset(self, grid: Grid) -> tuple[int, int]:
        """(tile row, tile col) of a lattice grid's origin in the collection tiling."""
        col, row = self._cell(grid.transform.c, grid.transform.f)
        t = self.tile_size
        return (round(row) // t, round(col) // t)

    def is_on_lattice(self, grid: Grid) -> bool:
        if grid.crs != self.crs or not grid.is_axis_aligned:
            return False
        tr = grid.transform
        if not (math.isclose(tr.a, self.cell_size) and math.isclose(-tr.e, self.cell_size)):
            return False
        col, row = self._cell(tr.c, tr.f)
        return abs(col - round(col)) < 1e-6 and abs(row - round(row)) < 1e-6

    def tiles(self, grid: Grid) -> Iterator[tuple[int, int, Grid]]:
        """Every chunk of ``grid`` as (chunk row, chunk col, chunk grid clipped to ``grid``)."""
        t = self.tile_size
        h, w = grid.shape
        for i in range(math.ceil(h / t)):
            for j in range(math.ceil(w / t)):
                yield i, j, chunk_grid(grid, i, j, t)


def chunk_grid(grid: Grid, i: int, j: int, tile: int) -> Grid:
    """Chunk (i, j) of ``grid`` for square chunks of ``tile`` pixels, clipped at the edges."""
    h, w = grid.shape
    r0, c0 = i * tile, j * tile
    return grid.window(r0, c0, min(tile, h - r0), min(tile, w - c0))
