"""Valid-data footprints: from a coarse mask to a polygon, and from any CRS to GeoJSON lon/lat.

Two steps, used once per image after ingestion:

1. :func:`mask_to_footprint` turns a coarse boolean "has data" mask laid on a grid into the
   valid-data (multi)polygon in the grid's CRS (holes kept), lightly simplified.
2. :func:`to_wgs84_footprint` densifies that polygon, reprojects it to EPSG:4326 and makes it
   a valid RFC 7946 geometry: split at the antimeridian, closed over a pole when the image
   covers one, counter-clockwise exteriors.

The antimeridian strategy: after reprojection every ring is *unwrapped* (a longitude jump of
more than 180° between consecutive vertices is undone by shifting the rest of the ring by
±360°), so the ring is continuous on an extended longitude axis. A ring that winds around a
pole ends 360° away from where it started; it is closed through that pole (up to ±90°). The
unwrapped polygon is then cut by the three 360°-wide frames centred on -360°, 0° and 360°,
and each piece is shifted back into [-180°, 180°]. Holes are subtracted in unwrapped space
together with copies shifted by ±360°, so a hole unwrapped in another frame than its
exterior is still removed.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import rasterio.features
import shapely
from pyproj import CRS, Transformer
from shapely import affinity
from shapely.geometry import shape as geojson_shape

from engine.grid import Grid, as_crs, transformer

_WGS84 = CRS.from_epsg(4326)
# Snap reprojected coordinates to this grid (degrees, ~0.1 mm) when re-assembling pieces,
# so the float noise of the ±360° shifts leaves no slivers between pieces that should merge.
_GRID_SIZE = 1e-9
_SIMPLIFY_DEG = 1e-8
# Default densification: this many segments along the longer side of the geometry's bounds.
_DENSIFY_SEGMENTS = 64


def mask_to_footprint(mask: np.ndarray, grid: Grid) -> shapely.Geometry:
    """The valid-data polygon of a boolean mask laid on ``grid``, in ``grid.crs``.

    Parameters
    ----------
    mask:
        2-D boolean array, True where the image has data; ``mask.shape == grid.shape``.
        Usually a coarse mask (one cell per block of pixels) on a coarse grid.
    grid:
        The grid the mask is laid on (its transform maps mask cells to the CRS).

    Returns
    -------
    shapely.Geometry
        A valid Polygon or MultiPolygon (holes kept), simplified by half a mask cell;
        an empty Polygon when the mask holds no True cell.

    Examples
    --------
    >>> from affine import Affine
    >>> g = Grid("EPSG:32633", Affine(10, 0, 0, 0, -10, 100), (10, 10))
    >>> m = np.ones((10, 10), bool)
    >>> mask_to_footprint(m, g).bounds
    (0.0, 0.0, 100.0, 100.0)
    """
    mask = np.asarray(mask, dtype=bool)
    if mask.shape != grid.shape:
        raise ValueError(f"mask shape {mask.shape} differs from the grid shape {grid.shape}")
    if not mask.any():
        return shapely.Polygon()
    # rasterio traces the outlines of connected True regions (holes included) as GeoJSON
    # polygons in CRS coordinates; pixel-edge staircases are then removed by a light
    # simplification of half a cell, which never moves an edge by more than that.
    parts = [
        geojson_shape(geom)
        for geom, _ in rasterio.features.shapes(
            mask.astype("uint8"), mask=mask, transform=grid.transform, connectivity=4
        )
    ]
    geom = shapely.union_all(parts)
    tolerance = 0.5 * max(grid.resolution)
    geom = shapely.simplify(geom, tolerance, preserve_topology=True)
    return _polygonal(shapely.make_valid(geom))


def to_wgs84_footprint(
    geom: shapely.Geometry, crs: object, densify: float | None = None
) -> shapely.Geometry:
    """``geom`` (in ``crs``) as a valid RFC 7946 lon/lat (multi)polygon.

    Parameters
    ----------
    geom:
        A Polygon or MultiPolygon in ``crs`` (e.g. from :func:`mask_to_footprint`).
    crs:
        Anything :func:`engine.grid.as_crs` accepts.
    densify:
        Longest segment kept before reprojection, in ``crs`` units, so straight edges follow
        the curvature of the projection. ``None`` (default): 1/64 of the longer side of the
        geometry's bounds. ``0`` disables densification.

    Returns
    -------
    shapely.Geometry
        Polygon or MultiPolygon in EPSG:4326 with longitudes in [-180, 180]: split into parts
        on both sides when it crosses the antimeridian, closed up to ±90° latitude when it
        contains a pole, valid, exteriors counter-clockwise and holes clockwise. Empty
        Polygon when nothing could be reprojected.

    Examples
    --------
    >>> sq = shapely.box(-1000, -1000, 1000, 1000)
    >>> to_wgs84_footprint(sq, "EPSG:3031").bounds[1]
    -90.0
    """
    if geom is None or geom.is_empty:
        return shapely.Polygon()
    src = as_crs(crs)
    geom = _polygonal(geom if geom.is_valid else shapely.make_valid(geom))
    if geom.is_empty:
        return shapely.Polygon()
    if densify is None:
        xmin, ymin, xmax, ymax = geom.bounds
        densify = max(xmax - xmin, ymax - ymin) / _DENSIFY_SEGMENTS
    if densify and densify > 0:
        geom = shapely.segmentize(geom, densify)

    to_ll = transformer(src, _WGS84)
    poles = _poles_inside(geom, src)
    pieces = []
    for poly in shapely.get_parts(geom):
        piece = _polygon_to_wgs84(poly, to_ll, poles)
        if piece is not None and not piece.is_empty:
            pieces.append(piece)
    if not pieces:
        return shapely.Polygon()
    out = shapely.union_all(pieces, grid_size=_GRID_SIZE)
    # Drop the collinear vertices densification left where the projection is linear
    # (Mercator edges stay straight in lon/lat); 1e-8° is about a millimetre.
    out = shapely.simplify(out, _SIMPLIFY_DEG, preserve_topology=True)
    out = _polygonal(shapely.make_valid(out))
    return shapely.orient_polygons(out, exterior_cw=False)


# -- helpers ----------------------------------------------------------------------------
def _polygonal(geom: shapely.Geometry) -> shapely.Geometry:
    """Only the polygonal parts of ``geom`` (make_valid may leave lines and points)."""
    if geom.is_empty:
        return shapely.Polygon()
    if geom.geom_type in ("Polygon", "MultiPolygon"):
        return geom
    polys = [p for p in shapely.get_parts(geom) if p.geom_type in ("Polygon", "MultiPolygon")]
    if not polys:
        return shapely.Polygon()
    return shapely.union_all(polys)


def _poles_inside(geom: shapely.Geometry, src: CRS) -> dict[int, bool]:
    """Which poles (+1 north, -1 south) lie inside ``geom``, tested in its own CRS."""
    from_ll = transformer(_WGS84, src)
    found = {}
    for sign in (1, -1):
        x, y = from_ll.transform(0.0, 90.0 * sign, errcheck=False)
        found[sign] = bool(
            math.isfinite(x) and math.isfinite(y) and geom.covers(shapely.Point(x, y))
        )
    return found


def _unwrap(lon: np.ndarray) -> np.ndarray:
    """Longitudes made continuous: every jump beyond 180° is undone with a ±360° shift."""
    d = np.diff(lon)
    steps = np.where(d > 180.0, -360.0, np.where(d < -180.0, 360.0, 0.0))
    return lon + np.concatenate([[0.0], np.cumsum(steps)])


def _ring_to_unwrapped(
    ring: shapely.LinearRing, to_ll: Transformer, poles: dict[int, bool]
) -> shapely.Geometry | None:
    """One ring reprojected and unwrapped, as a polygon on the extended longitude axis.

    A ring winding around a pole (its unwrapped end is 360° from its start) is closed
    through that pole so the polygon covers the cap.
    """
    xy = np.asarray(ring.coords)
    lon, lat = to_ll.transform(xy[:, 0], xy[:, 1], errcheck=False)
    lon = np.asarray(lon, dtype="float64")
    lat = np.asarray(lat, dtype="float64")
    ok = np.isfinite(lon) & np.isfinite(lat)
    lon, lat = lon[ok], np.clip(lat[ok], -90.0, 90.0)
    if lon.size < 3:
        return None
    lon = _unwrap(lon)
    winding = lon[-1] - lon[0]
    if abs(winding) > 180.0:
        # Around a pole: which one is decided by the source geometry (a polar stereographic
        # image contains its pole); fall back to the hemisphere of the ring itself.
        if poles[1] != poles[-1]:
            pole = 90.0 if poles[1] else -90.0
        else:
            pole = 90.0 if float(np.mean(lat)) >= 0 else -90.0
        end = lon[0] + math.copysign(360.0, winding)
        lon = np.concatenate([lon[:-1], [end, end, lon[0]]])
        lat = np.concatenate([lat[:-1], [lat[0], pole, pole]])
    poly = shapely.Polygon(np.column_stack([lon, lat]))
    if not poly.is_valid:
        poly = _polygonal(shapely.make_valid(poly))
    return poly


def _polygon_to_wgs84(
    poly: shapely.Polygon, to_ll: Transformer, poles: dict[int, bool]
) -> shapely.Geometry | None:
    """One source polygon in lon/lat, cut at the antimeridian (see the module docstring)."""
    shell = _ring_to_unwrapped(poly.exterior, to_ll, poles)
    if shell is None or shell.is_empty:
        return None
    holes = [_ring_to_unwrapped(r, to_ll, poles) for r in poly.interiors]
    holes = [h for h in holes if h is not None and not h.is_empty]
    if holes:
        hole = shapely.union_all(holes)
        # A hole may have been unwrapped in a neighbouring frame; subtract all three copies.
        hole = shapely.union_all(
            [hole, affinity.translate(hole, 360.0), affinity.translate(hole, -360.0)]
        )
        shell = _polygonal(shapely.make_valid(shell.difference(hole)))
    pieces = []
    for k in (-1, 0, 1):
        frame = shapely.box(-180.0 + 360.0 * k, -90.0, 180.0 + 360.0 * k, 90.0)
        part = _polygonal(shell.intersection(frame))
        if not part.is_empty:
            pieces.append(affinity.translate(part, -360.0 * k) if k else part)
    if not pieces:
        return None
    return shapely.union_all(pieces, grid_size=_GRID_SIZE)


def lon_lat_bbox(geom: shapely.Geometry) -> tuple[float, float, float, float] | None:
    """RFC 7946 bbox of a lon/lat geometry, ``west > east`` when it crosses the antimeridian.

    The bbox keeps the largest longitude gap outside: parts split at ±180° (east and west
    of the antimeridian) give ``west`` on the eastern part and ``east`` on the western one.

    Examples
    --------
    >>> g = shapely.MultiPolygon([shapely.box(170, 0, 180, 1), shapely.box(-180, 0, -170, 1)])
    >>> lon_lat_bbox(g)
    (170.0, 0.0, -170.0, 1.0)
    """
    if geom is None or geom.is_empty:
        return None
    parts = shapely.get_parts(geom)
    bounds = np.array([p.bounds for p in parts])
    return lon_extent(
        bounds[:, [0, 2]].tolist(), float(bounds[:, 1].min()), float(bounds[:, 3].max())
    )


def lon_extent(
    intervals: list[list[float]], south: float, north: float
) -> tuple[float, float, float, float]:
    """Smallest longitude span covering ``intervals`` ([west, east] pairs, west > east wraps).

    Returns ``(west, south, east, north)``; ``west > east`` when the span crosses ±180°.
    """
    spans: list[tuple[float, float]] = []
    for w, e in intervals:
        if w > e:  # already crossing: split into the two sides
            spans += [(w, 180.0), (-180.0, e)]
        else:
            spans.append((w, e))
    spans.sort()
    merged: list[list[float]] = []
    for w, e in spans:
        if merged and w <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], e)
        else:
            merged.append([w, e])
    # The largest uncovered gap on the circle, the wrap-around gap included.
    best_gap = merged[0][0] + 360.0 - merged[-1][1]
    west, east = merged[0][0], merged[-1][1]
    for (_, e0), (w1, _) in itertools.pairwise(merged):
        if w1 - e0 > best_gap:
            best_gap, west, east = w1 - e0, w1, e0
    if best_gap <= 0.0:
        west, east = -180.0, 180.0
    return (float(west), float(south), float(east), float(north))
