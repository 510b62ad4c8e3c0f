"""Spatial references and request geometries (engine/spatialref.py, engine/geometry.py)."""

from __future__ import annotations

import json

import pytest
import shapely
from pyproj import CRS

from engine.errors import RequestError
from engine.geometry import Region, combine_regions, parse_clipping_geometry, parse_extent
from engine.spatialref import parse_spatial_reference, to_esri_spatial_reference

WEB_MERCATOR = CRS.from_epsg(3857)


# -- spatial references ---------------------------------------------------------------
@pytest.mark.parametrize(
    "value, epsg",
    [
        ({"wkid": 4326}, 4326),
        ({"wkid": 102100}, 3857),
        ({"wkid": 102100, "latestWkid": 3857}, 3857),
        ({"latestWkid": 32633}, 32633),
        ({"wkid": "32633"}, 32633),
        ("EPSG:32633", 32633),
        ("epsg:4326", 4326),
        ("ESRI:102100", 3857),
        (3857, 3857),
        (102100, 3857),
        ("3857", 3857),
        (" 4326 ", 4326),
        ('{"wkid": 102100, "latestWkid": 3857}', 3857),
        ('"EPSG:32618"', 32618),
        ("+proj=utm +zone=33 +datum=WGS84 +units=m +no_defs", 32633),
        (CRS.from_epsg(2056), 2056),
    ],
)
def test_accepted_forms_give_the_right_crs(value, epsg):
    crs = parse_spatial_reference(value)
    assert crs.equals(CRS.from_epsg(epsg), ignore_axis_order=True)


def test_wkid_102100_is_web_mercator():
    assert parse_spatial_reference({"wkid": 102100}) == WEB_MERCATOR
    assert parse_spatial_reference(102100).to_epsg() == 3857


def test_latest_wkid_preferred_and_bad_wkid_tolerated():
    # latestWkid is the current code: it wins when both resolve ...
    assert parse_spatial_reference({"wkid": 4326, "latestWkid": 3857}).to_epsg() == 3857
    # ... and an unknown wkid does not matter when latestWkid is good, or the reverse.
    assert parse_spatial_reference({"wkid": 999999, "latestWkid": 3857}).to_epsg() == 3857
    assert parse_spatial_reference({"wkid": 3857, "latestWkid": 999999}).to_epsg() == 3857


def test_esri_only_codes_resolve():
    robinson = parse_spatial_reference(54030)
    assert robinson.to_authority() == ("ESRI", "54030")
    assert parse_spatial_reference({"wkid": 102113}).to_authority() == ("ESRI", "102113")


@pytest.mark.parametrize("flavour", ["WKT1_ESRI", "WKT1_GDAL", "WKT2_2019"])
def test_wkt_in_every_flavour(flavour):
    wkt = CRS.from_epsg(32633).to_wkt(version=flavour)
    for value in ({"wkt": wkt}, wkt, json.dumps({"wkt": wkt})):
        crs = parse_spatial_reference(value)
        assert crs.equals(CRS.from_epsg(32633), ignore_axis_order=True)


def test_legacy_geojson_crs_member_and_rasterio_crs():
    from rasterio.crs import CRS as RioCRS

    named = {"type": "name", "properties": {"name": "urn:ogc:def:crs:EPSG::3857"}}
    assert parse_spatial_reference(named).to_epsg() == 3857
    assert parse_spatial_reference(RioCRS.from_epsg(32618)).to_epsg() == 32618


@pytest.mark.parametrize(
    "value, words",
    [
        (None, "not a spatial reference"),
        ("", "empty"),
        ("   ", "empty"),
        ({}, "no wkid"),
        ([3857], "list"),
        (True, "not a spatial reference"),
        (0, "must be positive"),
        (-4326, "must be positive"),
        (3857.5, "whole-number"),
        (999999, "not a known WKID"),
        ("EPSG:999999", "not a known CRS code"),
        ({"wkid": "abc"}, "not a WKID"),
        ({"wkid": 1, "latestWkid": 2}, "not known WKIDs"),
        ({"wkt": 'PROJCS["broken'}, "not a known spatial reference"),
        ("not a crs at all", "not a known spatial reference"),
        ('{"wkid": 3857', "not valid JSON"),
    ],
)
def test_refusals_name_parameter_value_and_fix(value, words):
    with pytest.raises(RequestError) as info:
        parse_spatial_reference(value, "context.outSR")
    err = info.value
    assert str(err).startswith("context.outSR")
    assert words in str(err)
    assert "WKID" in err.fix
    assert err.value == value or err.parameter.startswith("context.outSR.")


def test_refusal_of_a_bad_member_names_the_member():
    with pytest.raises(RequestError) as info:
        parse_spatial_reference({"wkid": "EPSG:abc"}, "context.outSR")
    assert info.value.parameter == "context.outSR.wkid"
    assert "EPSG:abc" in str(info.value)


def test_to_esri_spatial_reference_as_arcgis_writes_it():
    assert to_esri_spatial_reference(WEB_MERCATOR) == {"wkid": 102100, "latestWkid": 3857}
    assert to_esri_spatial_reference("EPSG:32633") == {"wkid": 32633, "latestWkid": 32633}
    assert to_esri_spatial_reference("OGC:CRS84") == {"wkid": 4326, "latestWkid": 4326}
    assert to_esri_spatial_reference("ESRI:54030") == {"wkid": 54030, "latestWkid": 54030}
    custom = CRS.from_proj4("+proj=merc +lon_0=10 +datum=WGS84 +units=m")
    out = to_esri_spatial_reference(custom)
    assert set(out) == {"wkt"} and out["wkt"].startswith("PROJCS[")
    assert 'PROJECTION["Mercator' in out["wkt"]  # the ESRI WKT flavour
    # and it reads back as the same CRS
    assert parse_spatial_reference(out).equals(custom, ignore_axis_order=True)


def test_round_trip_through_esri_json():
    for code in (4326, 3857, 32633, 2056, 3035):
        crs = CRS.from_epsg(code)
        assert parse_spatial_reference(to_esri_spatial_reference(crs)) == crs


# -- extents --------------------------------------------------------------------------
def test_esri_envelope_with_spatial_reference():
    env = {
        "xmin": 500000,
        "ymin": 4000000,
        "xmax": 510000,
        "ymax": 4010000,
        "spatialReference": {"wkid": 32633},
    }
    region = parse_extent(env)
    assert region.crs.to_epsg() == 32633
    assert region.bounds == (500000.0, 4000000.0, 510000.0, 4010000.0)
    assert parse_extent(json.dumps(env)) == region


def test_extent_cli_string_list_and_default_lonlat():
    assert parse_extent("10,50,11,51").crs.to_epsg() == 4326
    assert parse_extent([10, 50, 11, 51]).bounds == (10.0, 50.0, 11.0, 51.0)
    r = parse_extent("500000, 4000000, 510000, 4010000, EPSG:32633")
    assert r.crs.to_epsg() == 32633 and r.bounds[2] == 510000.0
    assert parse_extent("-1e6,-1e6,1e6,1e6,102100").crs == WEB_MERCATOR
    assert parse_extent({"xmin": "1", "ymin": "2", "xmax": "3", "ymax": "4"}).bounds == (
        1.0,
        2.0,
        3.0,
        4.0,
    )


@pytest.mark.parametrize(
    "value, words",
    [
        ("500000,4000000,510000,4010000", "no spatialReference"),
        ({"xmin": 0, "ymin": 0, "xmax": 1000, "ymax": 1000}, "no spatialReference"),
        ("10,50,9,51", "inverted"),
        ("10,50,10,51", "inverted"),
        ({"xmin": 1, "ymin": 2}, "lacks xmax, ymax"),
        ({"xmin": "a", "ymin": 0, "xmax": 1, "ymax": 1}, "not a number"),
        ({"xmin": "NaN", "ymin": 0, "xmax": 1, "ymax": 1}, "not a finite number"),
        ([1, 2, 3], "not 4"),
        ("1,2,3", "four numbers"),
        ("", "empty"),
        ("{oops", "not valid JSON"),
        ({"rings": [[[0, 0], [0, 1], [1, 1], [0, 0]]]}, "polygon, not an envelope"),
        (42, "not an envelope"),
    ],
)
def test_extent_refusals(value, words):
    with pytest.raises(RequestError) as info:
        parse_extent(value)
    assert info.value.parameter.startswith("context.extent")
    assert words in str(info.value)


def test_extent_with_bad_spatial_reference_names_it():
    with pytest.raises(RequestError) as info:
        parse_extent({"xmin": 0, "ymin": 0, "xmax": 1, "ymax": 1, "spatialReference": {"wkid": 7}})
    assert info.value.parameter.startswith("context.extent.spatialReference")


def test_geojson_extent_reprojected_to_utm_contains_the_expected_point():
    # a 1°x1° box around (15.5E, 45.5N); in UTM 33N its edges bulge, so the densified
    # reprojection must still contain the point projected on its own.
    region = parse_clipping_geometry(
        {"type": "Polygon", "coordinates": [[[15, 45], [16, 45], [16, 46], [15, 46], [15, 45]]]}
    )
    utm = region.to_crs("EPSG:32633")
    assert utm.crs.to_epsg() == 32633
    from pyproj import Transformer

    x, y = Transformer.from_crs(4326, 32633, always_xy=True).transform(15.5, 45.5)
    assert utm.geometry.contains(shapely.Point(x, y))
    # densified: many more vertices than the 5 of the box
    assert len(utm.geometry.exterior.coords) > 40
    # a point just inside the curved northern edge (near the middle) is kept
    x, y = Transformer.from_crs(4326, 32633, always_xy=True).transform(15.5, 45.999)
    assert utm.geometry.contains(shapely.Point(x, y))
    assert not utm.to_crs(4326).geometry.is_empty


# -- clipping geometries --------------------------------------------------------------
OUTER_CW = [[0, 0], [0, 10], [10, 10], [10, 0], [0, 0]]  # clockwise: an Esri outer ring
HOLE_CCW = [[2, 2], [4, 2], [4, 4], [2, 4], [2, 2]]  # counter-clockwise: an Esri hole


def test_esri_polygon_hole_is_excluded():
    region = parse_clipping_geometry(
        {"rings": [OUTER_CW, HOLE_CCW], "spatialReference": {"wkid": 4326}}
    )
    assert region.geometry.area == pytest.approx(96.0)
    assert not region.geometry.contains(shapely.Point(3, 3))
    assert region.geometry.contains(shapely.Point(5, 5))


def test_esri_ring_orientation_rules():
    # same orientation throughout (a client ignoring the rule): nesting decides
    assert parse_clipping_geometry({"rings": [OUTER_CW[::-1], HOLE_CCW]}).geometry.area == 96.0
    # GeoJSON orientation (ccw outer, cw hole): still a hole
    reversed_rings = {"rings": [OUTER_CW[::-1], HOLE_CCW[::-1]]}
    assert parse_clipping_geometry(reversed_rings).geometry.area == 96.0
    # two separate outer rings make a multipolygon
    far = [[20, 20], [20, 30], [30, 30], [30, 20], [20, 20]]
    multi = parse_clipping_geometry({"rings": [OUTER_CW, far]})
    assert multi.geometry.geom_type == "MultiPolygon" and multi.geometry.area == 200.0
    # an island inside the hole is land again; unclosed rings are closed
    island = [[2.5, 2.5], [2.5, 3.5], [3.5, 3.5], [3.5, 2.5]]
    assert parse_clipping_geometry({"rings": [OUTER_CW, HOLE_CCW, island]}).geometry.area == 97.0


def test_esri_polygon_projected_needs_spatial_reference():
    rings = [[[500000, 0], [500000, 1000], [501000, 1000], [501000, 0], [500000, 0]]]
    with pytest.raises(RequestError, match="no spatialReference"):
        parse_clipping_geometry({"rings": rings})
    r = parse_clipping_geometry({"rings": rings, "spatialReference": {"wkid": 32633}})
    assert r.crs.to_epsg() == 32633 and r.geometry.area == 1e6


def test_geojson_forms_and_crs_member():
    poly = {"type": "Polygon", "coordinates": [OUTER_CW[::-1], HOLE_CCW[::-1]]}
    feature = {"type": "Feature", "properties": {}, "geometry": poly}
    collection = {"type": "FeatureCollection", "features": [feature]}
    for value in (poly, feature, collection, json.dumps(collection)):
        region = parse_clipping_geometry(value)
        assert region.crs.to_epsg() == 4326 and region.geometry.area == 96.0
    legacy = dict(poly, crs={"type": "name", "properties": {"name": "EPSG:3857"}})
    assert parse_clipping_geometry(legacy).crs == WEB_MERCATOR


def test_envelope_and_esri_featureset_as_clip():
    env = {"xmin": 0, "ymin": 0, "xmax": 2, "ymax": 1, "spatialReference": {"wkid": 4326}}
    assert parse_clipping_geometry(env).geometry.area == 2.0
    # ArcGIS JS API objects may carry a "type" member
    assert parse_clipping_geometry(dict(env, type="extent")).geometry.area == 2.0
    assert parse_extent(dict(env, type="extent")).bounds == (0.0, 0.0, 2.0, 1.0)
    typed = {"type": "polygon", "rings": [OUTER_CW], "spatialReference": {"wkid": 4326}}
    assert parse_clipping_geometry(typed).geometry.area == 100.0
    fs = {
        "spatialReference": {"wkid": 3857},
        "features": [{"geometry": {"rings": [OUTER_CW]}, "attributes": {}}],
    }
    r = parse_clipping_geometry(fs)
    assert r.crs == WEB_MERCATOR and r.geometry.area == 100.0


def test_invalid_polygon_is_repaired():
    bowtie = {"type": "Polygon", "coordinates": [[[0, 0], [10, 10], [10, 0], [0, 10], [0, 0]]]}
    region = parse_clipping_geometry(bowtie)
    assert region.geometry.is_valid and region.geometry.area == pytest.approx(50.0)


@pytest.mark.parametrize(
    "value, words",
    [
        (
            {"type": "Polygon", "coordinates": [[[0, 0], [1, 1], [2, 2], [0, 0]]]},
            "encloses no area",
        ),
        ({"rings": [[[0, 0], [1, 1], [0, 0]]]}, "encloses no area"),
        ({"rings": []}, "no rings"),
        ({"rings": [[["a", 0]]]}, "not a list of [x, y] points"),
        ({"type": "Point", "coordinates": [1, 2]}, "GeoJSON Point, not an area"),
        ({"type": "LineString", "coordinates": [[1, 2], [3, 4]]}, "not an area"),
        ({"paths": [[[0, 0], [1, 1]]]}, "polyline"),
        ({"type": "FeatureCollection", "features": []}, "no features"),
        ({"type": "Feature", "geometry": None}, "without geometry"),
        ({"foo": 1}, "not a polygon"),
        ("POLYGON ((0 0, 1 0, 1 1, 0 0))", "not JSON"),
        ('{"rings": [', "not valid JSON"),
        ([1, 2], "not a polygon object"),
        (
            {"type": "Polygon", "coordinates": [[[5e5, 0], [5e5, 1e3], [6e5, 1e3], [5e5, 0]]]},
            "not longitude/latitude",
        ),
    ],
)
def test_clip_refusals(value, words):
    with pytest.raises(RequestError) as info:
        parse_clipping_geometry(value)
    assert info.value.parameter.startswith("context.clippingGeometry")
    assert words in str(info.value)
    assert info.value.fix


def test_combine_regions():
    extent = parse_extent("10,50,11,51")
    clip = parse_clipping_geometry(
        {
            "type": "Polygon",
            "coordinates": [[[10.5, 50.5], [12, 50.5], [12, 52], [10.5, 52], [10.5, 50.5]]],
        }
    )
    assert combine_regions(None, None, "EPSG:32632") is None
    both = combine_regions(extent, clip, "EPSG:32632")
    quarter = Region.from_bounds((10.5, 50.5, 11, 51), 4326).to_crs(32632).geometry
    # the same quarter box, up to the densification of edges cut at different places
    assert both.symmetric_difference(quarter).area < 1e-4 * quarter.area
    only = combine_regions(extent, None, 4326)
    assert only.equals(extent.geometry)
    far = parse_extent("20,50,21,51")
    with pytest.raises(RequestError, match=r"does not overlap context\.extent"):
        combine_regions(far, clip, 4326)


def test_region_to_esri_json_round_trip():
    region = parse_clipping_geometry(
        {"rings": [OUTER_CW, HOLE_CCW], "spatialReference": {"wkid": 32633}}
    )
    esri = region.to_esri_json()
    assert esri["spatialReference"] == {"wkid": 32633, "latestWkid": 32633}
    back = parse_clipping_geometry(esri)
    assert back.crs == region.crs and back.geometry.equals(region.geometry)
