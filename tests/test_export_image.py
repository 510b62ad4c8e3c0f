"""exportImage beyond the store's own grid: imageSR reprojection, interpolation, pixel types
and the display formats, checked against GDAL warping the stored images itself."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio
import rioxarray  # noqa: F401  (the .rio accessor)
from affine import Affine
from fastapi import FastAPI
from rasterio.crs import CRS as RioCRS
from rasterio.enums import Resampling
from rasterio.io import MemoryFile
from rasterio.warp import reproject, transform_bounds

from engine import create_image_collection, open_collection
from engine.server import imageserver
from tests.conftest import write_raster
from tests.loopback import serve

BASE = "/arcgis/rest/services/Hosted/rgb/ImageServer"
X0, Y0 = 500_000.0, 5_200_000.0  # UTM 33N, about 15°E 47°N
NODATA = 0


@pytest.fixture(scope="module")
def root(client, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("export")
    sources = [
        str(
            write_raster(
                root / f"scene{i}.tif",
                crs="EPSG:32633",
                transform=Affine(20, 0, X0 + i * 1200, 0, -20, Y0 - i * 400),
                shape=(90, 100),
                dtype="uint16",
                nodata=NODATA,
                bands=3,
                seed=10 * i,
            )
        )
        for i in range(2)
    ]
    create_image_collection(sources, image_collection=str(root / "rgb.zarr"), client=client)
    return root


@pytest.fixture(scope="module")
def http(root):
    imageserver.configure(root)
    app = FastAPI()
    app.include_router(imageserver.router)
    with serve(app) as c:
        yield c


def export(http, **params) -> rasterio.io.DatasetReader:
    r = http.get(f"{BASE}/exportImage", params={"f": "image", **params})
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("image/"), r.text[:300]
    mem = MemoryFile(r.content)
    return mem.open()


def gdal_mosaic(root: Path, crs: str, bounds, size, resampling: str) -> np.ndarray:
    """GDAL's warp of each stored image onto the request grid, first valid pixel wins."""
    coll = open_collection(root / "rgb.zarr")
    w, h = size
    dst_t = Affine(
        (bounds[2] - bounds[0]) / w, 0, bounds[0], 0, -(bounds[3] - bounds[1]) / h, bounds[3]
    )
    out = np.full((3, h, w), np.nan)
    for image_id in coll.image_ids:  # catalog (ObjectID) order
        ds = coll.image(image_id)
        src = np.stack([ds[b].values for b in ("b1", "b2", "b3")]).astype("float64")
        src = np.where(np.isnan(src), NODATA, src)  # xarray decoded the _FillValue as NaN
        one = np.full((3, h, w), np.nan)
        reproject(
            src,
            one,
            src_transform=ds.rio.transform(),
            src_crs=RioCRS.from_wkt(ds.rio.crs.to_wkt()),
            src_nodata=NODATA,
            dst_transform=dst_t,
            dst_crs=RioCRS.from_user_input(crs),
            dst_nodata=np.nan,
            resampling=Resampling[resampling],
        )
        take = np.isfinite(one[0]) & ~np.isfinite(out[0])
        out[:, take] = one[:, take]
    return out


WGS84_BOX = (15.0, 46.9, 15.06, 46.95)


@pytest.mark.parametrize("resampling", ["nearest", "bilinear", "cubic"])
def test_export_in_another_crs_equals_gdal(http, root, resampling):
    """imageSR 4326 with bboxSR 4326: the stored images reprojected like GDAL does (at about
    their own resolution, so level 0 is read; tests/test_overviews.py covers coarser)."""
    name = {
        "nearest": "RSP_NearestNeighbor",
        "bilinear": "RSP_BilinearInterpolation",
        "cubic": "RSP_CubicConvolution",
    }
    with export(
        http,
        bbox=",".join(map(str, WGS84_BOX)),
        bboxSR="4326",
        imageSR="4326",
        size="240,260",
        format="tiff",
        interpolation=name[resampling],
    ) as ds:
        assert ds.crs.to_epsg() == 4326
        assert ds.bounds == pytest.approx(WGS84_BOX)
        got = ds.read().astype("float64")
        nodata = ds.nodata
    ref = gdal_mosaic(root, "EPSG:4326", WGS84_BOX, (240, 260), resampling)
    valid = np.isfinite(ref[0])
    assert 0.2 < valid.mean() < 0.95  # the request covers images and empty ground
    np.testing.assert_array_equal(got[0][~valid], nodata)
    diff = np.abs(got[:, valid] - np.rint(ref[:, valid]))
    if resampling == "nearest":
        assert (diff == 0).mean() > 0.999  # GDAL's approximate transformer may tip a pixel
    else:
        # interpolated values from a window instead of the whole image: within 1 DN, but
        # for a pixel or two on an image's edge where GDAL's approximate transformer puts
        # the kernel one source pixel apart (measured: 1 of 13,080 for cubic)
        assert (diff.max(axis=0) <= 1).mean() > 0.999


def test_bbox_in_one_crs_image_in_another(http, root):
    """bboxSR 4326 and the default imageSR (the service's UTM): the bbox is reprojected."""
    with export(
        http, bbox=",".join(map(str, WGS84_BOX)), bboxSR="4326", size="60,60", format="tiff"
    ) as ds:
        assert ds.crs.to_epsg() == 32633
        # the densified envelope of the bbox in UTM, as GDAL computes it
        expected = transform_bounds("EPSG:4326", "EPSG:32633", *WGS84_BOX, densify_pts=21)
        assert ds.bounds == pytest.approx(expected, abs=1.0)


def test_pixel_type_conversion_and_nodata(http):
    bbox = f"{X0},{Y0 - 1800},{X0 + 2000},{Y0}"
    with export(http, bbox=bbox, size="100,90", format="tiff") as ds:
        raw = ds.read()
        assert ds.dtypes[0] == "uint16"
    with export(http, bbox=bbox, size="100,90", format="tiff", pixelType="F32") as ds:
        assert ds.dtypes[0] == "float32"
        np.testing.assert_array_equal(ds.read(), raw.astype("float32"))
    with export(http, bbox=bbox, size="100,90", format="tiff", pixelType="U8", noData="7") as ds:
        got = ds.read()
        assert ds.dtypes[0] == "uint8" and ds.nodata == 7
    valid = raw[0] != NODATA
    np.testing.assert_array_equal(got[:, valid], np.minimum(raw[:, valid], 255))  # clipped
    assert (got[:, ~valid] == 7).all()


def test_display_formats(http):
    bbox = f"{X0},{Y0 - 1800},{X0 + 2000},{Y0}"
    with export(http, bbox=bbox, size="100,90", format="tiff") as ds:
        raw = ds.read().astype("float64")
    valid = raw[0] != NODATA
    with export(http, bbox=bbox, size="100,90", format="png32") as ds:
        assert ds.driver == "PNG" and ds.count == 4 and ds.dtypes[0] == "uint8"
        rgba = ds.read()
    np.testing.assert_array_equal(rgba[3] == 255, valid)  # no-data is transparent
    # a linear stretch of the service's statistics: brighter data stays brighter
    r = rgba[0][valid].astype("float64")
    assert np.corrcoef(r, raw[0][valid])[0, 1] > 0.99
    with export(http, bbox=bbox, size="100,90", format="jpg") as ds:
        assert ds.driver == "JPEG" and ds.count == 3
    with export(http, bbox=bbox, size="100,90") as ds:  # jpgpng: PNG when there is no-data
        assert ds.driver == "PNG" and ds.count == 4
    inside = f"{X0 + 400},{Y0 - 1400},{X0 + 1400},{Y0 - 400}"  # fully inside image 1
    with export(http, bbox=inside, size="50,50") as ds:  # ... and JPEG when there is none
        assert ds.driver == "JPEG"
    with export(http, bbox=bbox, size="100,90", format="png", bandIds="2") as ds:
        assert ds.count == 1 and ds.dtypes[0] == "uint16"
        np.testing.assert_array_equal(ds.read(1), raw[2])


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"interpolation": "RSP_Sharpest"}, "Invalid interpolation"),
        ({"pixelType": "C128"}, "Invalid pixelType"),
        ({"format": "lerc"}, "Unsupported format"),
        ({"imageSR": "999999"}, "imageSR"),
        ({"format": "png", "pixelType": "F32"}, "Unsupported format"),
    ],
)
def test_export_refusals(http, params, message):
    r = http.get(
        f"{BASE}/exportImage",
        params={"bbox": f"{X0},{Y0 - 1800},{X0 + 2000},{Y0}", "f": "json", **params},
    )
    body = r.json()
    assert r.status_code == 200 and body["error"]["code"] == 400, body
    assert message in body["error"]["message"] + " ".join(body["error"]["details"]), body


def test_tiff_compression(http):
    bbox = f"{X0},{Y0 - 1800},{X0 + 2000},{Y0}"
    with export(http, bbox=bbox, size="100,90", format="tiff") as ds:
        raw = ds.read()
        assert ds.compression is None  # the default sends the pixels as they are
    for name, gdal in (("LZ77", "deflate"), ("LZW", "lzw")):
        with export(http, bbox=bbox, size="100,90", format="tiff", compression=name) as ds:
            assert ds.compression.value.lower() == gdal
            np.testing.assert_array_equal(ds.read(), raw)  # lossless
    body = http.get(
        f"{BASE}/exportImage",
        params={"bbox": bbox, "format": "tiff", "compression": "JPEG", "f": "json"},
    ).json()
    assert body["error"]["code"] == 400 and "pixelType=U8" in body["error"]["details"][0]
