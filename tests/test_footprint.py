"""Footprints: mask tracing, reprojection to lon/lat, antimeridian and poles."""

from __future__ import annotations

import numpy as np
import pytest
import shapely
from affine import Affine
from pyproj import Transformer

from engine.footprint import lon_extent, lon_lat_bbox, mask_to_footprint, to_wgs84_footprint
from engine.grid import Grid


def _grid(crs: str, x0: float, y0: float, cell: float, shape: tuple[int, int]) -> Grid:
    return Grid(crs, Affine(cell, 0, x0, 0, -cell, y0), shape)


def _assert_rfc7946(geom: shapely.Geometry) -> None:
    assert geom.is_valid and not geom.is_empty
    assert geom.geom_type in ("Polygon", "MultiPolygon")
    xmin, ymin, xmax, ymax = geom.bounds
    assert -180 <= xmin <= xmax <= 180 and -90 <= ymin <= ymax <= 90
    for part in shapely.get_parts(geom):
        assert part.exterior.is_ccw
        assert all(not ring.is_ccw for ring in part.interiors)


# -- mask_to_footprint --------------------------------------------------------------------
def test_mask_with_hole_gives_polygon_with_hole():
    grid = _grid("EPSG:32633", 500000, 4000000, 100, (20, 30))
    mask = np.ones(grid.shape, bool)
    mask[5:10, 10:20] = False
    fp = mask_to_footprint(mask, grid)
    assert fp.geom_type == "Polygon" and fp.is_valid
    assert len(fp.interiors) == 1
    assert fp.bounds == grid.bounds
    assert fp.area == pytest.approx((20 * 30 - 5 * 10) * 100 * 100)
    hole = shapely.Polygon(fp.interiors[0])
    assert hole.bounds == (501000.0, 3999000.0, 502000.0, 3999500.0)


def test_mask_two_blobs_and_simplification():
    grid = _grid("EPSG:3857", 0, 0, 10, (40, 40))
    yy, xx = np.mgrid[:40, :40]
    mask = (xx - 10) ** 2 + (yy - 10) ** 2 < 64  # a disc: staircase edges
    mask[30:38, 30:38] = True  # a second, separate square
    fp = mask_to_footprint(mask, grid)
    assert fp.geom_type == "MultiPolygon" and len(fp.geoms) == 2
    rows, cols = np.nonzero(mask)
    raw = shapely.union_all(shapely.box(cols * 10, -rows * 10 - 10, cols * 10 + 10, -rows * 10))
    # simplified by at most half a cell: fewer vertices, same area within a cell-width band
    assert shapely.get_num_coordinates(fp) < shapely.get_num_coordinates(raw)
    assert fp.symmetric_difference(raw).area < raw.length * 5
    assert shapely.hausdorff_distance(fp, raw) <= 5 + 1e-9


def test_mask_empty_and_shape_mismatch():
    grid = _grid("EPSG:32633", 0, 0, 1, (4, 4))
    assert mask_to_footprint(np.zeros((4, 4), bool), grid).is_empty
    with pytest.raises(ValueError, match="mask shape"):
        mask_to_footprint(np.ones((3, 4), bool), grid)


# -- to_wgs84_footprint -----------------------------------------------------------------------
def test_utm_footprint_matches_direct_transform():
    grid = _grid("EPSG:32633", 500000, 4000000, 100, (100, 100))
    wgs = to_wgs84_footprint(grid.footprint(), grid.crs)
    _assert_rfc7946(wgs)
    assert wgs.geom_type == "Polygon"
    direct = grid.footprint_in("EPSG:4326", points_per_edge=50)
    assert wgs.symmetric_difference(direct).area < 1e-6 * direct.area
    assert 14.9 < wgs.bounds[0] < 15.1  # central meridian 15°E


@pytest.mark.parametrize(
    "crs, x0, y0",
    [
        ("EPSG:32660", 700000, 5000000),  # UTM 60N, east edge past 180°
        ("EPSG:3832", 3000000, -1000000),  # PDC Mercator, central meridian 150°E
    ],
)
def test_antimeridian_split(crs, x0, y0):
    grid = _grid(crs, x0, y0, 1000, (200, 500))
    wgs = to_wgs84_footprint(grid.footprint(), crs)
    _assert_rfc7946(wgs)
    assert wgs.geom_type == "MultiPolygon"
    parts = list(wgs.geoms)
    east = [p for p in parts if p.bounds[0] > 0]
    west = [p for p in parts if p.bounds[2] < 0]
    assert east and west and len(east) + len(west) == len(parts)
    assert all(p.bounds[2] - p.bounds[0] < 180 for p in parts)
    assert max(p.bounds[2] for p in east) == 180.0
    assert min(p.bounds[0] for p in west) == -180.0
    # RFC 7946 bbox crosses: west > east
    west_lon, _, east_lon, _ = lon_lat_bbox(wgs)
    assert west_lon > 0 > east_lon
    # the two halves meet on the antimeridian: same latitudes on both sides
    e_edge = shapely.box(179.999, -90, 180, 90).intersection(shapely.union_all(east)).bounds
    w_edge = shapely.box(-180, -90, -179.999, 90).intersection(shapely.union_all(west)).bounds
    assert e_edge[1] == pytest.approx(w_edge[1], abs=1e-4)
    assert e_edge[3] == pytest.approx(w_edge[3], abs=1e-4)


def test_antimeridian_with_hole():
    grid = _grid("EPSG:32660", 700000, 5000000, 10000, (20, 50))
    mask = np.ones(grid.shape, bool)
    mask[5:15, 2:10] = False  # x 720-800 km: a hole straddling the antimeridian (~740 km)
    fp = mask_to_footprint(mask, grid)
    assert len(fp.interiors) == 1
    wgs = to_wgs84_footprint(fp, grid.crs)
    _assert_rfc7946(wgs)
    assert wgs.geom_type == "MultiPolygon"
    full = to_wgs84_footprint(grid.footprint(), grid.crs)
    to_ll = Transformer.from_crs(grid.crs, "EPSG:4326", always_xy=True)
    lon_w, lat_w = to_ll.transform(725000, 4900000)  # inside the hole, west of 180°
    lon_e, lat_e = to_ll.transform(795000, 4900000)  # inside the hole, east of -180°
    assert lon_w > 0 > lon_e
    assert not wgs.contains(shapely.Point(lon_w, lat_w))
    assert not wgs.contains(shapely.Point(lon_e, lat_e))
    assert full.contains(shapely.Point(lon_w, lat_w)) and full.contains(shapely.Point(lon_e, lat_e))
    assert wgs.area < full.area


@pytest.mark.parametrize("crs, pole", [("EPSG:3031", -90.0), ("EPSG:3413", 90.0)])
def test_polar_footprint_covers_pole(crs, pole):
    grid = _grid(crs, -500000, 400000, 1000, (900, 1000))
    wgs = to_wgs84_footprint(grid.footprint(), crs)
    _assert_rfc7946(wgs)
    xmin, ymin, xmax, ymax = wgs.bounds
    assert (xmin, xmax) == (-180.0, 180.0)
    assert (ymin if pole < 0 else ymax) == pole
    near_pole = shapely.Point(123.0, pole - np.sign(pole) * 0.5)
    assert wgs.contains(near_pole)
    # ~4.5e5 km² of ice either way: the cap is not inverted into the rest of the globe
    assert wgs.area < 2000


def test_polar_image_off_pole_is_not_a_cap():
    grid = _grid("EPSG:3031", 1000000, 1500000, 1000, (500, 500))
    wgs = to_wgs84_footprint(grid.footprint(), "EPSG:3031")
    _assert_rfc7946(wgs)
    assert wgs.bounds[1] > -90 + 1
    assert wgs.bounds[2] - wgs.bounds[0] < 180


def test_densify_and_empty():
    assert to_wgs84_footprint(shapely.Polygon(), "EPSG:3857").is_empty
    sq = shapely.box(0, 0, 4_000_000, 4_000_000)
    coarse = to_wgs84_footprint(sq, "EPSG:32633", densify=0)
    fine = to_wgs84_footprint(sq, "EPSG:32633")
    assert shapely.get_num_coordinates(fine) > shapely.get_num_coordinates(coarse) == 5


def test_lon_extent():
    assert lon_extent([[10, 20], [30, 40]], 0, 1) == (10.0, 0.0, 40.0, 1.0)
    assert lon_extent([[170, 180], [-180, -170]], 0, 1) == (170.0, 0.0, -170.0, 1.0)
    assert lon_extent([[170, -170], [-175, -160]], 0, 1) == (170.0, 0.0, -160.0, 1.0)
    assert lon_extent([[-180, 180]], -90, -80) == (-180.0, -90.0, 180.0, -80.0)
