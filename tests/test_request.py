"""The one request model (engine/request.py): every accepted form, every refusal."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from pyproj import CRS
from rasterio.enums import Resampling

from engine.errors import RequestError
from engine.request import (
    CaseInsensitiveMapping,
    Context,
    InputRasters,
    build_request,
    parse_context,
    parse_image_collection,
    parse_input_rasters,
    parse_raster_type,
    parse_request,
)

SEED_REQUEST = {
    # the seed's example, with its parameters JSON-encoded as a REST form post sends them
    "inputRasters": json.dumps({"itemIds": ["1780d648db3545bba8661ad98df824a4"]}),
    "rasterType": json.dumps(
        {
            "rasterTypeName": "UAV/UAS",
            "rasterTypeParameters": {
                "GPS": [["image1.jpg", "10", "2", "300"], ["image2.jpg", "10", "3", "300"]],
                "cameraProperties": {"Maker": "Canon", "FocalLength": 20, "PixelSize": 10},
                "constantZ": 300,
                "isAltitudeFlightHeight": True,
                "dem": {"url": "https://example.com/dem/ImageServer"},
            },
        }
    ),
    "imageCollection": json.dumps({"serviceProperties": {"name": "uavcollection"}}),
    "context": json.dumps({"outSR": {"wkid": 102100, "latestWkid": 3857}}),
    "f": "json",
}


def _refused(func, *args, **kwargs) -> RequestError:
    with pytest.raises(RequestError) as info:
        func(*args, **kwargs)
    return info.value


# -- whole requests -------------------------------------------------------------------
def test_seed_request_parses():
    req = parse_request(SEED_REQUEST)
    assert req.input_rasters == InputRasters(
        "itemIds", ("1780d648db3545bba8661ad98df824a4",), False
    )
    assert req.raster_type.name == "UAV/UAS"
    assert req.raster_type.collection_type == "UAV/UAS"
    params = req.raster_type.parameters
    assert params["gps"][1] == ["image2.jpg", "10", "3", "300"]
    assert params["CAMERAPROPERTIES"]["focallength"] == 20
    assert params["Dem"]["URL"].startswith("https://")
    assert req.image_collection.name == "uavcollection"
    assert req.context.out_crs == CRS.from_epsg(3857)
    assert req.context.cell_size == "MinOf"
    assert req.context.resampling is Resampling.nearest
    assert req.overwrite is False
    assert req.warnings == ()  # "f" is a transport key, not a warning


def test_whole_request_as_json_text_and_dicts_agree():
    as_dicts = {k: json.loads(v) if k != "f" else v for k, v in SEED_REQUEST.items()}
    assert parse_request(json.dumps(as_dicts)) == parse_request(SEED_REQUEST)


def test_python_build_request_defaults(tmp_path):
    req = build_request(str(tmp_path / "a.tif"), image_collection=str(tmp_path / "out.zarr"))
    assert req.input_rasters.kind == "uris"
    assert req.input_rasters.values == (str(tmp_path / "a.tif"),)
    assert req.raster_type.name == "Raster Dataset"
    assert req.image_collection.uri == str(tmp_path / "out.zarr")
    assert req.context == Context()


def test_build_request_takes_paths_names_and_dicts(tmp_path):
    req = build_request(
        [tmp_path / "a.tif", "b.tif"],
        raster_type="landsat 9",
        image_collection=tmp_path / "out.zarr",
        context={"cellSize": 30, "resamplingMethod": "bilinear"},
        overwrite="true",
    )
    assert req.input_rasters.values == (str(tmp_path / "a.tif"), "b.tif")
    assert req.raster_type.name == "Landsat 8" and req.raster_type.collection_type == "Satellite"
    assert req.image_collection.uri == str(tmp_path / "out.zarr")
    assert req.context.cell_size == 30.0 and req.context.resampling is Resampling.bilinear
    assert req.overwrite is True


def test_request_round_trips_through_json():
    req = parse_request(
        {
            "inputRasters": {"uris": ["/data/a.tif", "/data/b.tif"], "byref": True},
            "rasterType": {
                "rasterTypeName": "Sentinel-2",
                "rasterTypeParameters": {"Dem": {"uri": "/d.tif"}},
            },
            "imageCollection": {"uri": "/stores/s2.zarr"},
            "context": {
                "outSR": "EPSG:32633",
                "extent": "500000,4000000,510000,4010000,EPSG:32633",
                "clippingGeometry": {"rings": [[[0, 0], [0, 1], [1, 1], [1, 0], [0, 0]]]},
                "cellSize": "10",
                "resamplingMethod": "CubicSpline",
                "parallelProcessingFactor": "50%",
                "noData": "NaN",
            },
            "overwrite": "false",
        }
    )
    text = json.dumps(req.to_json_dict())  # JSON-serialisable
    back = parse_request(text)
    assert back.input_rasters == req.input_rasters
    assert back.raster_type.name == req.raster_type.name
    assert back.raster_type.parameters.to_dict() == {"Dem": {"uri": "/d.tif"}}
    assert back.image_collection == req.image_collection
    c, b = req.context, back.context
    assert b.out_crs == c.out_crs and b.cell_size == c.cell_size and b.resampling == c.resampling
    assert b.parallel_processing_factor == 0.5 and math.isnan(b.nodata)
    assert b.extent.geometry.equals(c.extent.geometry) and b.extent.crs == c.extent.crs
    assert b.clip.geometry.equals(c.clip.geometry) and b.clip.crs == c.clip.crs


def test_missing_and_malformed_top_level():
    assert (
        _refused(parse_request, {"imageCollection": {"uri": "x.zarr"}}).parameter == "inputRasters"
    )
    err = _refused(parse_request, {"inputRasters": {"uris": ["a.tif"]}})
    assert err.parameter == "imageCollection" and "is required" in str(err)
    err = _refused(parse_request, '{"inputRasters": ')
    assert err.parameter == "request" and "not valid JSON" in str(err)
    assert _refused(parse_request, [1, 2]).parameter == "request"


def test_malformed_json_parameter_reports_position():
    err = _refused(parse_request, {"inputRasters": '{"uris": ["a.tif",]}', "imageCollection": "c"})
    assert err.parameter == "inputRasters"
    assert "not valid JSON" in str(err) and "line 1 column 19" in str(err)
    assert err.value == '{"uris": ["a.tif",]}'


def test_typographic_quotes_from_the_seed_doc_get_a_hint():
    err = _refused(parse_request, {"inputRasters": "{“itemIds”: [“abc”]}", "imageCollection": "c"})
    assert "typographic quotes" in err.fix


def test_output_name_and_unknown_parameters():
    req = parse_request({"inputRasters": {"uri": "a.tif"}, "outputName": "my_coll", "foo": 1})
    assert req.image_collection.name == "my_coll"
    assert any("foo is not a CreateImageCollection parameter" in w for w in req.warnings)
    req = parse_request(
        {
            "inputRasters": {"uri": "a.tif"},
            "imageCollection": {"uri": "/s/c.zarr"},
            "outputName": {"serviceProperties": {"name": "other"}},
        }
    )
    assert req.image_collection.uri == "/s/c.zarr" and req.image_collection.name is None
    assert any("outputName was ignored" in w for w in req.warnings)


def test_overwrite_must_be_boolean():
    err = _refused(
        parse_request, {"inputRasters": {"uri": "a"}, "imageCollection": "c", "overwrite": "maybe"}
    )
    assert err.parameter == "overwrite" and "'maybe'" in str(err)


# -- inputRasters ---------------------------------------------------------------------
@pytest.mark.parametrize(
    "value, kind, values",
    [
        ({"uris": ["a.tif", "b.tif"]}, "uris", ("a.tif", "b.tif")),
        ({"uri": "/fileshare/a/a.tif"}, "uris", ("/fileshare/a/a.tif",)),
        ({"urls": ["https://h/a.tif"]}, "urls", ("https://h/a.tif",)),
        ({"url": "https://h/a.tif"}, "urls", ("https://h/a.tif",)),
        ({"itemIds": ["x1", "x2"]}, "itemIds", ("x1", "x2")),
        ({"itemId": "x1"}, "itemIds", ("x1",)),
        ({"folderId": "f1"}, "folderId", ("f1",)),
        ({"ITEMIDS": ["x1"]}, "itemIds", ("x1",)),
        ('{"uris": ["a.tif"]}', "uris", ("a.tif",)),
        ("a.tif", "uris", ("a.tif",)),
        (["a.tif", Path("b.tif")], "uris", ("a.tif", "b.tif")),
    ],
)
def test_input_forms(value, kind, values):
    inputs = parse_input_rasters(value)
    assert (inputs.kind, inputs.values, inputs.byref) == (kind, values, False)


def test_item_ids_win_and_byref():
    warnings: list[str] = []
    inputs = parse_input_rasters(
        {"uris": ["a.tif"], "folderId": "f", "itemIds": ["x"], "byref": "true"}, warnings=warnings
    )
    assert inputs == InputRasters("itemIds", ("x",), True)
    assert any("uris was ignored" in w for w in warnings)
    assert any("folderId was ignored" in w for w in warnings)
    assert parse_input_rasters({"uri": "a", "byref": True}).byref is True
    assert parse_input_rasters({"uri": "a", "byRef": "False"}).byref is False


@pytest.mark.parametrize(
    "value, parameter, words",
    [
        ({"uris": []}, "inputRasters.uris", "is empty"),
        ({"uris": None}, "inputRasters.uris", "is empty"),
        ({"uris": ["a.tif", 3]}, "inputRasters.uris[1]", "int, not a text value"),
        ({"uris": ["a.tif", "  "]}, "inputRasters.uris[1]", "is empty"),
        ({"itemIds": [{"id": 1}]}, "inputRasters.itemIds[0]", "dict"),
        ({"paths": ["a.tif"]}, "inputRasters", "names no input"),
        ({}, "inputRasters", "names no input"),
        ({"uri": "a", "byref": "maybe"}, "inputRasters.byref", "not a boolean"),
        (42, "inputRasters", "must be an object"),
    ],
)
def test_input_refusals(value, parameter, words):
    err = _refused(parse_input_rasters, value)
    assert err.parameter == parameter
    assert words in str(err)


# -- rasterType -----------------------------------------------------------------------
@pytest.mark.parametrize(
    "name, canonical, collection_type",
    [
        (None, "Raster Dataset", "UAV/UAS"),
        ("raster dataset", "Raster Dataset", "UAV/UAS"),
        ("uav/uas", "UAV/UAS", "UAV/UAS"),
        ("Aerial", "Aerial", "Aerial"),
        ("Scanned Aerial", "ScannedAerial", "ScannedAerial"),
        ("Landsat 7", "Landsat 7 ETM+", "Satellite"),
        ("landsat 7 etm+", "Landsat 7 ETM+", "Satellite"),
        ("Landsat 8", "Landsat 8", "Satellite"),
        ("Landsat 9", "Landsat 8", "Satellite"),
        ("Landsat 8/9", "Landsat 8", "Satellite"),
        ("sentinel2", "Sentinel-2", "Satellite"),
        ("zy3-sasmac", "ZY3-SASMAC", "Satellite"),
        ("ZY3 CRESDA", "ZY3-CRESDA", "Satellite"),
    ],
)
def test_raster_type_names(name, canonical, collection_type):
    for value in (name, {"rasterTypeName": name}):
        rt = parse_raster_type(value)
        assert (rt.name, rt.collection_type) == (canonical, collection_type)


def test_image_collection_type_overrides_default():
    rt = parse_raster_type(
        {"rasterTypeName": "Landsat 7", "imageCollectionProps": {"imageCollectionType": "aerial"}}
    )
    assert rt.collection_type == "Aerial"
    rt = parse_raster_type(
        '{"rasterTypeName": "Raster Dataset", "imageCollectionProps": "{\\"imageCollectionType\\": \\"satellite\\"}"}'
    )
    assert rt.collection_type == "Satellite"


def test_raster_type_parameters_case_insensitive_and_json_text():
    rt = parse_raster_type(
        {
            "rasterTypeName": "UAV/UAS",
            "rasterTypeParameters": '{"CameraProperties": {"focalLength": 8.8}}',
        }
    )
    assert rt.parameters["cameraproperties"]["FocalLength"] == 8.8
    assert "CAMERAPROPERTIES" in rt.parameters and "gps" not in rt.parameters
    assert list(rt.parameters) == ["CameraProperties"]  # spelling kept
    assert rt.parameters.get("nothing", 1) == 1


@pytest.mark.parametrize(
    "value, parameter, words",
    [
        ("Landsat 5", "rasterType", "not a supported raster type"),
        ({"rasterTypeName": "Drone"}, "rasterType.rasterTypeName", "not a supported raster type"),
        ({"rasterTypeName": 8}, "rasterType.rasterTypeName", "not a supported raster type"),
        ({"rasterTypeParameters": [1, 2]}, "rasterType.rasterTypeParameters", "must be an object"),
        ({"rasterTypeParameters": "gps"}, "rasterType.rasterTypeParameters", "must be an object"),
        (
            {"rasterTypeParameters": '{"gps": [}'},
            "rasterType.rasterTypeParameters",
            "not valid JSON",
        ),
        (
            {"imageCollectionProps": {"imageCollectionType": "Drone"}},
            "rasterType.imageCollectionProps.imageCollectionType",
            "not an image collection type",
        ),
        ({"imageCollectionProps": 3}, "rasterType.imageCollectionProps", "must be an object"),
        (
            {"rasterTypeParameters": {"gps": [], "GPS": []}},
            "rasterType.rasterTypeParameters",
            "differ only in case",
        ),
    ],
)
def test_raster_type_refusals(value, parameter, words):
    err = _refused(parse_raster_type, value)
    assert err.parameter == parameter
    assert words in str(err)


def test_unknown_raster_type_lists_the_valid_names():
    err = _refused(parse_raster_type, "Pleiades")
    assert "'Pleiades'" in str(err)
    for name in ("Raster Dataset", "UAV/UAS", "Landsat 8", "Sentinel-2", "ZY3-CRESDA"):
        assert name in err.fix


def test_case_insensitive_mapping_is_read_only():
    m = CaseInsensitiveMapping({"FocalLength": 20, "nested": [{"PixelSize": 4.4}]})
    assert m["focallength"] == 20 and m["NESTED"][0]["pixelsize"] == 4.4
    with pytest.raises(TypeError):
        m["x"] = 1  # type: ignore[index]
    assert m.to_dict() == {"FocalLength": 20, "nested": [{"PixelSize": 4.4}]}
    assert len(m) == 2 and dict(m)["FocalLength"] == 20


# -- imageCollection ------------------------------------------------------------------
def test_image_collection_forms():
    assert (
        parse_image_collection({"serviceProperties": {"name": "uav_2024-06"}}).name == "uav_2024-06"
    )
    assert parse_image_collection('{"uri": "/s/c.zarr"}').uri == "/s/c.zarr"
    url = "https://h/arcgis/rest/services/Hosted/c/ImageServer"
    assert parse_image_collection({"url": url}).url == url
    assert parse_image_collection({"itemId": "f121390b85ef"}).item_id == "f121390b85ef"
    assert parse_image_collection({"itemProperties": {"itemId": "abc"}}).item_id == "abc"
    # plain strings: REST outputName habit vs Python store paths
    assert parse_image_collection("coll").name == "coll"
    assert parse_image_collection("data/coll.zarr").uri == "data/coll.zarr"
    assert parse_image_collection("coll", plain_string="uri").uri == "coll"
    assert parse_image_collection(url, plain_string="uri").url == url


@pytest.mark.parametrize(
    "value, parameter, words",
    [
        (
            {"serviceProperties": {"name": "bad name!"}},
            "imageCollection.serviceProperties.name",
            "not a valid service name",
        ),
        (
            {"serviceProperties": {"name": "x" * 129}},
            "imageCollection.serviceProperties.name",
            "not a valid service name",
        ),
        (
            {"serviceProperties": {"name": "../etc"}},
            "imageCollection.serviceProperties.name",
            "not a valid service name",
        ),
        (
            {"serviceProperties": {}},
            "imageCollection.serviceProperties.name",
            "not a valid service name",
        ),
        ({"serviceProperties": "x"}, "imageCollection.serviceProperties", "must be an object"),
        ({"url": "/local/path"}, "imageCollection.url", "not an http(s) URL"),
        ({"uri": ""}, "imageCollection.uri", "is not a path"),
        ({"itemId": "a b"}, "imageCollection.itemId", "has spaces"),
        ({"foo": 1}, "imageCollection", "names no collection"),
        (None, "imageCollection", "is required"),
        ("my collection", "imageCollection.serviceProperties.name", "not a valid service name"),
    ],
)
def test_image_collection_refusals(value, parameter, words):
    err = _refused(parse_image_collection, value)
    assert err.parameter == parameter
    assert words in str(err)
    assert err.fix


# -- context --------------------------------------------------------------------------
def test_context_values():
    ctx = parse_context(
        {
            "outSR": "EPSG:32633",
            "cellSize": "2.5",
            "resamplingMethod": "cubic_spline",
            "parallelProcessingFactor": "4",
            "noData": "-9999",
        }
    )
    assert ctx.out_crs.to_epsg() == 32633
    assert ctx.cell_size == 2.5
    assert ctx.resampling is Resampling.cubic_spline
    assert ctx.parallel_processing_factor == 4 and isinstance(ctx.parallel_processing_factor, int)
    assert ctx.nodata == -9999.0
    assert parse_context({"parallelProcessingFactor": "50%"}).parallel_processing_factor == 0.5
    assert parse_context({"parallelProcessingFactor": 8}).parallel_processing_factor == 8
    assert parse_context({"cellSize": "maxof"}).cell_size == "MaxOf"
    assert parse_context({"cellSize": "MINOF"}).cell_size == "MinOf"
    assert parse_context(None) == Context() == parse_context("") == parse_context("{}")


@pytest.mark.parametrize(
    "name, method",
    [
        ("NEAREST", Resampling.nearest),
        ("bilinear", Resampling.bilinear),
        ("Cubic", Resampling.cubic),
        ("CUBIC_SPLINE", Resampling.cubic_spline),
        ("CubicSpline", Resampling.cubic_spline),
        ("lanczos", Resampling.lanczos),
        ("AVERAGE", Resampling.average),
        ("MODE", Resampling.mode),
        ("MAJORITY", Resampling.mode),
        ("min", Resampling.min),
        ("MAX", Resampling.max),
        ("med", Resampling.med),
        ("Q1", Resampling.q1),
        ("q3", Resampling.q3),
        ("SUM", Resampling.sum),
        ("rms", Resampling.rms),
    ],
)
def test_resampling_methods(name, method):
    assert parse_context({"resamplingMethod": name}).resampling is method


def test_context_geometry_and_ignored_keys():
    warnings: list[str] = []
    ctx = parse_context(
        {
            "extent": {
                "xmin": 10,
                "ymin": 50,
                "xmax": 11,
                "ymax": 51,
                "spatialReference": {"wkid": 4326},
            },
            "clippingGeometry": {
                "type": "Polygon",
                "coordinates": [[[10, 50], [11, 50], [11, 51], [10, 50]]],
            },
            "processorType": "GPU",
            "snapRaster": "x",
            "outSR": None,
            "noData": "",
        },
        warnings=warnings,
    )
    assert ctx.extent.bounds == (10.0, 50.0, 11.0, 51.0)
    assert ctx.clip.geometry.area == pytest.approx(0.5)
    assert ctx.out_crs is None and ctx.nodata is None
    assert len(warnings) == 2 and "context.processorType" in warnings[0]


def test_unknown_context_keys_reach_request_warnings():
    req = parse_request(
        {"inputRasters": {"uri": "a"}, "imageCollection": "c", "context": {"compression": "LZ77"}}
    )
    assert req.warnings == (
        "context.compression is not used by CreateImageCollection and was ignored",
    )


@pytest.mark.parametrize(
    "context, parameter, words",
    [
        ({"outSR": {"wkid": 123456789}}, "context.outSR.wkid", "not a known WKID"),
        ({"outSR": []}, "context.outSR", "not a spatial reference"),
        ({"cellSize": 0}, "context.cellSize", "positive finite"),
        ({"cellSize": -5}, "context.cellSize", "positive finite"),
        ({"cellSize": "inf"}, "context.cellSize", "positive finite"),
        ({"cellSize": "fine"}, "context.cellSize", "not a positive finite cell size"),
        ({"cellSize": True}, "context.cellSize", "not a positive finite cell size"),
        ({"resamplingMethod": "SMOOTH"}, "context.resamplingMethod", "not a resampling method"),
        ({"resamplingMethod": 1}, "context.resamplingMethod", "not a resampling method"),
        ({"parallelProcessingFactor": "half"}, "context.parallelProcessingFactor", "whole number"),
        ({"parallelProcessingFactor": "1.5"}, "context.parallelProcessingFactor", "whole number"),
        ({"parallelProcessingFactor": "-2"}, "context.parallelProcessingFactor", "whole number"),
        (
            {"parallelProcessingFactor": "0%"},
            "context.parallelProcessingFactor",
            "positive percentage",
        ),
        (
            {"parallelProcessingFactor": "x%"},
            "context.parallelProcessingFactor",
            "positive percentage",
        ),
        ({"noData": "none"}, "context.noData", "not a number"),
        ({"extent": "1,2,3"}, "context.extent", "four numbers"),
        (
            {"clippingGeometry": {"type": "Point", "coordinates": [0, 0]}},
            "context.clippingGeometry",
            "not an area",
        ),
    ],
)
def test_context_refusals(context, parameter, words):
    err = _refused(parse_context, context)
    assert err.parameter == parameter
    assert words in str(err)
    assert err.fix
    assert str(err).startswith(f"{parameter}=")


def test_resampling_refusal_lists_the_methods():
    err = _refused(parse_context, {"resamplingMethod": "SMOOTH"})
    for name in ("NEAREST", "BILINEAR", "CUBIC_SPLINE", "Q3", "RMS"):
        assert name in err.fix


def test_context_keys_match_ignoring_case():
    ctx = parse_context({"outsr": 3857, "CELLSIZE": 10, "resamplingmethod": "bilinear"})
    assert ctx.out_crs.to_epsg() == 3857 and ctx.cell_size == 10.0
    assert ctx.resampling is Resampling.bilinear
