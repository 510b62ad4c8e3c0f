"""The Landsat raster types on real USGS metadata (../shared/data/landsat).

* MTL parsing: every value is checked against the file's own text (looked up with a plain
  ``KEY = VALUE`` scan, independent of the parser), and the .txt, .json and .xml of one
  product parse to equal results.
* The real Landsat 8 Level-2 product (downsampled real bands) ingests end to end: band
  names, time, cloud cover, CF scale/offset, a footprint inside the MTL's corners, and
  stored pixels equal to GDAL's warp of each band file onto the image's grid.
* Products shipped as metadata only get synthetic band files made in tmp_path on the
  MTL's own grid (corners, UTM zone; a coarser cell so the test stays fast): Landsat 7
  (B6_VCID, pan in its own image), an archive read in place, mixed band types.
* Wrong picks say what the input is and which rasterTypeName reads it; a bad productType
  is a request error.
"""

from __future__ import annotations

import re
import shutil
import tarfile
from datetime import UTC, date, datetime, time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import rasterio
import shapely
import shapely.ops
import xarray as xr
import zarr
from affine import Affine
from pyproj import Transformer

from engine import create_image_collection
from engine.errors import ImageError, RequestError
from engine.grid import Grid
from engine.plan import resampling_scale
from engine.probe import probe_all
from engine.rastertypes import describe, landsat7, landsat8
from engine.rastertypes.mtl import parse_mtl
from engine.request import InputRasters
from engine.sources import resolve_sources
from graphs.chunk import gdal_warp

L8_L2 = "LC08_L2SP_005009_20150710_20200908_02_T2"
PRODUCTS = [
    "LC08_L1GT_089074_20220506_20220512_02_T2",
    L8_L2,
    "LC09_L1TP_112081_20220209_20220209_02_T1",
    "LC09_L2SP_010065_20220129_20220131_02_T1",
    "LE07_L1TP_107068_20220310_20220405_02_T1",
    "LE07_L2SP_090084_20210331_20210426_02_T1",
    "LE07_L1TP_104078_20130429_20161124_01_T1",  # Collection 1
    "LC81060712016134LGN00",  # pre-collection
]
# USGS Landsat product guides: QA_PIXEL, BQA and SR_QA_AEROSOL mark fill with bit 0 alone
# (the value 1); QA_RADSAT and SR_CLOUD_QA have no fill value, QA_PIXEL's fill bit says.
LANDSAT_QA_FILL = 1
FILL_ONE = ("QA_PIXEL", "BQA", "SR_QA_AEROSOL")
FILL_FROM_QA_PIXEL = ("QA_RADSAT", "SR_CLOUD_QA")


def _product(shared_data: Path, product: str) -> Path:
    return shared_data / "landsat" / product


def _raw(text: str, key: str) -> str | None:
    """The first ``KEY = VALUE`` of ODL text, quotes removed: what a user reads in the file."""
    m = re.search(rf"^\s*{key}\s*=\s*\"?([^\"\n]*?)\"?\s*$", text, re.MULTILINE)
    return m.group(1) if m else None


def _product_block(text: str) -> str:
    """The group listing the product's own files (a Level-2 MTL also lists its Level-1
    source's files, in LEVEL1_PROCESSING_RECORD, which are not part of the product)."""
    for group in ("PRODUCT_CONTENTS", "PRODUCT_METADATA"):
        m = re.search(rf"GROUP = {group}\n(.*?)END_GROUP = {group}", text, re.DOTALL)
        if m:
            return m.group(1)
    raise AssertionError("no product group")


# -- MTL parsing ----------------------------------------------------------------------------


@pytest.mark.parametrize("product", PRODUCTS)
def test_mtl_encodings_parse_alike_and_match_the_file(shared_data, product):
    folder = _product(shared_data, product)
    files = sorted(folder.glob("*_MTL.*"))
    parsed = {f.suffix: parse_mtl(f.read_text()) for f in files}
    assert ".txt" in parsed
    for suffix, meta in parsed.items():
        assert meta == parsed[".txt"], f"{suffix} differs from .txt"
        assert list(meta.band_files) == list(parsed[".txt"].band_files), "band order"
    meta, text = parsed[".txt"], (folder / f"{product}_MTL.txt").read_text()

    assert meta.product_id == (_raw(text, "LANDSAT_PRODUCT_ID") or _raw(text, "LANDSAT_SCENE_ID"))
    assert meta.product_id == product
    assert meta.spacecraft == _raw(text, "SPACECRAFT_ID")
    assert meta.sensor == _raw(text, "SENSOR_ID")
    assert meta.processing_level == (_raw(text, "PROCESSING_LEVEL") or _raw(text, "DATA_TYPE"))
    number = _raw(text, "COLLECTION_NUMBER")
    assert meta.collection_number == (int(number) if number else None)
    assert meta.collection_category == (_raw(text, "COLLECTION_CATEGORY") if number else None)
    assert meta.wrs_path == int(_raw(text, "WRS_PATH"))
    assert meta.wrs_row == int(_raw(text, "WRS_ROW"))
    clock = _raw(text, "SCENE_CENTER_TIME")
    hh, mm, ss = clock.rstrip("Z").split(":")
    whole, frac = ss.split(".")
    expected = datetime.combine(
        date.fromisoformat(_raw(text, "DATE_ACQUIRED")),
        time(int(hh), int(mm), int(whole), int(frac[:6])),
        UTC,
    )
    assert meta.acquisition_time == expected and meta.acquisition_time.tzinfo is UTC
    assert meta.cloud_cover == float(_raw(text, "CLOUD_COVER"))
    assert meta.cloud_cover_land == float(_raw(text, "CLOUD_COVER_LAND"))
    assert meta.sun_elevation == float(_raw(text, "SUN_ELEVATION"))
    assert meta.sun_azimuth == float(_raw(text, "SUN_AZIMUTH"))
    assert meta.utm_zone == int(_raw(text, "UTM_ZONE"))
    assert meta.epsg == 32600 + int(_raw(text, "UTM_ZONE"))
    for kind in ("panchromatic", "reflective", "thermal"):
        raw = _raw(text, f"GRID_CELL_SIZE_{kind.upper()}")
        assert meta.cell_sizes.get(kind) == (float(raw) if raw else None)
    for c in ("UL", "UR", "LL", "LR"):
        assert meta.corners_xy[c] == (
            float(_raw(text, f"CORNER_{c}_PROJECTION_X_PRODUCT")),
            float(_raw(text, f"CORNER_{c}_PROJECTION_Y_PRODUCT")),
        )
        assert meta.corners_lonlat[c] == (
            float(_raw(text, f"CORNER_{c}_LON_PRODUCT")),
            float(_raw(text, f"CORNER_{c}_LAT_PRODUCT")),
        )
    # band files: every .TIF the product group names, angle rasters apart
    block = _product_block(text)
    tifs = {
        v for k, v in re.findall(r"(FILE_NAME_\w+) = \"([^\"]+\.TIF)\"", block) if "ANGLE" not in k
    }
    assert set(meta.band_files.values()) == tifs
    for band, file_name in meta.band_files.items():
        assert file_name == f"{product}_{band}.TIF"
    # scale/offset: Level-2 from the LEVEL2 groups, Level-1 TOA reflectance, else radiance
    for band in meta.band_files:
        got = meta.scale_offset(band)
        m = re.fullmatch(r"(SR_|ST_)?B(\d\w*)", band)
        if m is None:
            assert got is None, band  # QA and auxiliary layers: the MTL states no scaling
            continue
        prefix, n = m.groups()
        quantity = {"SR_": "REFLECTANCE", "ST_": "TEMPERATURE"}.get(prefix or "")
        key = f"ST_B{n}" if prefix == "ST_" else n
        if quantity is None:  # Level-1: reflectance where given, radiance for thermal bands
            quantity = "REFLECTANCE" if _raw(text, f"REFLECTANCE_MULT_BAND_{n}") else "RADIANCE"
        assert got == (
            float(_raw(text, f"{quantity}_MULT_BAND_{key}")),
            float(_raw(text, f"{quantity}_ADD_BAND_{key}")),
        ), band


def test_band_names_per_generation(shared_data):
    names = {p: list(parse_mtl(_mtl_text(shared_data, p)).band_files) for p in PRODUCTS}
    assert names["LE07_L1TP_107068_20220310_20220405_02_T1"] == [
        "B1", "B2", "B3", "B4", "B5", "B6_VCID_1", "B6_VCID_2", "B7", "B8", "QA_PIXEL", "QA_RADSAT",
    ]  # fmt: skip
    assert names["LE07_L1TP_104078_20130429_20161124_01_T1"][-1] == "BQA"
    assert names["LC81060712016134LGN00"] == [f"B{i}" for i in range(1, 12)] + ["BQA"]
    assert "ST_B6" in names["LE07_L2SP_090084_20210331_20210426_02_T1"]
    l2 = names[L8_L2]
    assert l2[:8] == [f"SR_B{i}" for i in range(1, 8)] + ["ST_B10"]
    assert {"ST_QA", "QA_PIXEL", "QA_RADSAT", "ST_TRAD"} <= set(l2)
    assert not any(re.fullmatch(r"B\d+", b) for b in l2), "the L1 source's files leaked in"


def _mtl_text(shared_data: Path, product: str) -> str:
    return (_product(shared_data, product) / f"{product}_MTL.txt").read_text()


def test_not_mtl_text_is_refused():
    from engine.rastertypes.mtl import MtlError

    with pytest.raises(MtlError, match="not Landsat MTL"):
        parse_mtl('{"PRODUCT": {"ID": "x"}}')
    with pytest.raises(MtlError):
        parse_mtl("GROUP = LANDSAT_METADATA_FILE\nEND_GROUP = LANDSAT_METADATA_FILE\nEND\n")


# -- synthetic band files for products shipped as metadata only ------------------------------


def _cell(meta, band: str) -> float:
    kind = "panchromatic" if band == "B8" else "thermal" if "6" in band[:4] or band in (
        "B10", "B11", "ST_B10"
    ) else "reflective"  # fmt: skip
    return meta.cell_sizes[kind]


def _fill(band: str, dtype: str) -> tuple[float | None, float]:
    """(declared nodata, fill value) of a band file, as USGS writes them."""
    if band in FILL_ONE:
        return None, LANDSAT_QA_FILL  # fill flagged in the QA bits, no nodata tag
    if band in FILL_FROM_QA_PIXEL:
        return None, 0  # 0 is data too (no saturation)
    return (-9999, -9999) if dtype == "int16" else (0, 0)


def make_bands(folder: Path, factor: int = 16, seed: int = 0) -> dict[str, Path]:
    """Write every band file the MTL of ``folder`` names, on the MTL's grid (UTM zone,
    corners = centres of the corner pixels) with cells ``factor`` times coarser; a tilted
    data area inside a fill collar, as in a real scene."""
    text = next(folder.glob("*_MTL.txt")).read_text()
    meta = parse_mtl(text)
    ul, lr = meta.corners_xy["UL"], meta.corners_xy["LR"]
    out = {}
    for k, (band, name) in enumerate(meta.band_files.items()):
        native = _cell(meta, band)
        cell = native * factor
        left, top = ul[0] - native / 2, ul[1] + native / 2
        w = int((lr[0] + native / 2 - left) // cell)  # inside the MTL's corners
        h = int((top - (lr[1] - native / 2)) // cell)
        dtype = meta.band_dtypes.get(band) or (
            "uint8" if meta.number == 7 and band != "BQA" else "uint16"
        )
        nodata, fill = _fill(band, dtype)
        rng = np.random.default_rng(seed + k)
        lo, hi = (1, 250) if dtype == "uint8" else (-200, 3000) if dtype == "int16" else (1, 60000)
        if "QA" in band:
            lo, hi = (2, 4095) if band != "QA_RADSAT" else (0, 3)
        data = rng.integers(lo, hi, size=(h, w)).astype(dtype)
        yy, xx = np.mgrid[0:h, 0:w] / np.array([h, w])[:, None, None]
        inside = (
            (yy > 0.15 * xx)
            & (yy < 0.85 + 0.15 * xx)
            & (xx > 0.15 * (1 - yy))
            & (xx < 0.85 + 0.15 * (1 - yy))
        )
        data[~inside] = fill
        path = folder / name
        profile = dict(driver="GTiff", width=w, height=h, count=1, dtype=dtype, nodata=nodata,
                       crs=f"EPSG:{meta.epsg}", transform=Affine(cell, 0, left, 0, -cell, top),
                       tiled=True, blockxsize=64, blockysize=64)  # fmt: skip
        with rasterio.open(path, "w", **profile) as dst:
            dst.write(data, 1)
        out[band] = path
    return out


def _metadata_only(shared_data: Path, tmp_path: Path, product: str) -> Path:
    folder = tmp_path / product
    shutil.copytree(_product(shared_data, product), folder)
    make_bands(folder)
    return folder


def _type_for(product: str):
    return landsat7 if product.startswith("LE07") else landsat8


@pytest.mark.parametrize("product", [p for p in PRODUCTS if p != L8_L2])
def test_every_band_of_each_generation_probes(shared_data, tmp_path, product):
    folder = _metadata_only(shared_data, tmp_path, product)
    meta = parse_mtl(next(folder.glob("*_MTL.txt")).read_text())
    rtype = _type_for(product)
    ids = set()
    for given in [folder, *sorted(folder.glob("*_MTL.*"))]:
        (img,) = rtype.probe(str(given), str(given), given.name, {})
        ids.add(img.image_id)
    assert len(ids) == 1, "one product is one image, whichever MTL or the folder is given"
    assert img.name == meta.product_id and img.group == "multispectral"
    assert img.band_names == [b for b in meta.band_files if b != "B8"]
    assert img.acquisition_time == meta.acquisition_time
    assert img.cloud_cover == meta.cloud_cover
    assert (img.extra["wrs_path"], img.extra["wrs_row"]) == (meta.wrs_path, meta.wrs_row)
    assert img.extra["processing_level"] == meta.processing_level
    assert img.extra["collection_category"] == meta.collection_category
    assert img.extra["missing_bands"] == ""
    for part, scaling in zip(img.parts, img.scale_offsets, strict=True):
        (band,) = part.band_names
        assert scaling == meta.scale_offset(band)
        assert part.resampling == ("nearest" if "QA" in band else None)
        assert part.grid.crs.to_epsg() == meta.epsg
    # "All": the 15 m pan band is its own image, group "panchromatic", on its own grid
    images = rtype.probe(str(folder), str(folder), folder.name, {"productType": "all"})
    if "B8" not in meta.band_files:
        assert [i.group for i in images] == ["multispectral"]
        return
    ms, pan = images
    assert (ms.group, pan.group) == ("multispectral", "panchromatic")
    assert pan.band_names == ["B8"] and pan.image_id != ms.image_id
    assert pan.parts[0].grid.resolution[0] * 2 == pytest.approx(ms.parts[0].grid.resolution[0])
    (only_pan,) = rtype.probe(
        str(folder), str(folder), folder.name, {"processingTemplate": "Panchromatic"}
    )
    assert only_pan.band_names == ["B8"]


def _rows(store: str) -> list[dict]:
    return pq.read_table(f"{store}/catalog.parquet").to_pylist()


def _grid(row: dict) -> Grid:
    from pyproj import CRS

    return Grid(CRS.from_wkt(row["crs"]), Affine(*row["grid_transform"]), tuple(row["grid_shape"]))


def _stored(store: str, row: dict, band: str) -> np.ndarray:
    return zarr.open_array(f"{store}/images/{row['image_id']}/{band}", mode="r")[:]


def _warp(path: str, band: str, grid: Grid, resampling: str, row: dict) -> np.ndarray:
    """GDAL's warp of one band file onto ``grid`` in one call: the exact transformer, the
    image's resampling scale, QA bands nearest, the file's fill mapped to the image's nodata."""
    with rasterio.open(path) as ds:
        qa = "QA" in band
        fill = LANDSAT_QA_FILL if band in FILL_ONE and ds.nodata is None else ds.nodata
        ref, _ = gdal_warp(
            ds, grid, "nearest" if qa else resampling, src_nodata=fill,
            dst_nodata=row["nodata"], dtype=row["dtype"],
            scale=resampling_scale(Grid(ds.crs, ds.transform, ds.shape), grid),
        )  # fmt: skip
    return ref[0]


def assert_pixels_equal_gdal(store: str, row: dict, band_paths: dict[str, str], resampling: str):
    """Each stored band equals GDAL's warp of its band file onto the image's grid (see
    _warp); QA_RADSAT is nodata where QA_PIXEL is fill. Nearest is identical; interpolated
    float32 values agree to float32 rounding (an ulp)."""
    grid = _grid(row)
    for band in row["band_names"]:
        qa = "QA" in band
        ref = _warp(band_paths[band], band, grid, resampling, row)
        if band in FILL_FROM_QA_PIXEL:
            ref[np.isnan(_warp(band_paths["QA_PIXEL"], "QA_PIXEL", grid, "nearest", row))] = np.nan
        got = _stored(store, row, band)
        if qa or resampling == "nearest" or got.dtype.kind != "f":
            np.testing.assert_array_equal(got, ref, err_msg=band)  # NaN positions included
        else:
            np.testing.assert_array_equal(np.isnan(got), np.isnan(ref), err_msg=band)
            np.testing.assert_allclose(got, ref, rtol=2e-7, err_msg=band)


def assert_footprint_inside_corners(row: dict, meta, cell: float) -> None:
    """The footprint lies inside the MTL's product corners (their pixel edges), give or take
    the catalog footprint's precision (its coarse mask is trimmed to the planned outline
    grown by two collection cells; 2.5 allows for the reprojection of that outline), and
    covers most of the product's area."""
    to_utm = Transformer.from_crs("EPSG:4326", f"EPSG:{meta.epsg}", always_xy=True)
    fp = shapely.ops.transform(to_utm.transform, shapely.from_wkb(row["footprint"]))
    (x0, y1), (x1, y0) = meta.corners_xy["UL"], meta.corners_xy["LR"]
    half = meta.cell_sizes["reflective"] / 2
    box = shapely.box(x0 - half, y0 - half, x1 + half, y1 + half)
    assert box.buffer(2.5 * cell, join_style="mitre").contains(fp), (fp.bounds, box.bounds)
    assert fp.area > 0.5 * box.area


def test_real_landsat8_level2_ingests_end_to_end(client, shared_data, tmp_path):
    folder = _product(shared_data, L8_L2)
    text = _mtl_text(shared_data, L8_L2)
    meta = parse_mtl(text)
    result = create_image_collection(
        [str(folder)],
        raster_type={"rasterTypeName": "Landsat 9", "rasterTypeParameters": {"productType": "Multispectral"}},
        image_collection=str(tmp_path / "l8.zarr"),
        context={"resamplingMethod": "BILINEAR", "outSR": 3413},  # polar stereographic: a real warp
        client=client,
        tile_size=256,
    )  # fmt: skip
    assert result.exit_code == 0, result.to_dict()
    (row,) = _rows(result.store)  # txt, json and xml of the product: one image
    present = {p.name for p in folder.glob("*.TIF")}
    expected = [b for b, f in meta.band_files.items() if f in present]
    assert (
        row["band_names"] == expected == ["SR_B2", "SR_B3", "SR_B4", "SR_B5", "ST_B10", "QA_PIXEL"]
    )
    assert row["Name"] == L8_L2 and row["raster_type"] == "Landsat 8"
    assert row["acquisition_time"] == datetime(2015, 7, 10, 14, 34, 35, 978399, tzinfo=UTC)
    assert row["cloud_cover"] == float(_raw(text, "CLOUD_COVER")) == 54.65
    assert row["sun_elevation"] == float(_raw(text, "SUN_ELEVATION"))
    assert row["sun_azimuth"] == float(_raw(text, "SUN_AZIMUTH"))
    assert (row["wrs_path"], row["wrs_row"]) == (5, 9)
    assert (row["processing_level"], row["collection_category"]) == ("L2SP", "T2")
    assert row["sensor"].startswith("Landsat 8")
    missing = [b for b, f in meta.band_files.items() if f not in present]
    assert row["missing_bands"].split(",") == missing
    # mixed fills (SR 0, QA_PIXEL 1): float32 holds every uint16 value, NaN every fill
    assert row["dtype"] == "float32" and np.isnan(row["nodata"])
    # CF scale/offset of each band, as the MTL states them
    ds = xr.open_zarr(result.store, group=f"images/{row['image_id']}", consolidated=False)
    sr4, st10 = ds["SR_B4"], ds["ST_B10"]
    assert sr4.encoding["scale_factor"] == float(_raw(text, "REFLECTANCE_MULT_BAND_4")) == 2.75e-05
    assert sr4.encoding["add_offset"] == float(_raw(text, "REFLECTANCE_ADD_BAND_4")) == -0.2
    assert st10.encoding["scale_factor"] == float(_raw(text, "TEMPERATURE_MULT_BAND_ST_B10"))
    assert st10.encoding["add_offset"] == float(_raw(text, "TEMPERATURE_ADD_BAND_ST_B10"))
    assert "scale_factor" not in ds["QA_PIXEL"].encoding
    raw4 = _stored(result.store, row, "SR_B4")
    valid = ~np.isnan(raw4)
    np.testing.assert_allclose(sr4.values[valid], raw4[valid] * 2.75e-05 - 0.2, rtol=1e-6)
    assert np.isnan(sr4.values[~valid]).all()
    assert_footprint_inside_corners(row, meta, cell=abs(row["grid_transform"][0]))
    paths = {b: str(folder / meta.band_files[b]) for b in row["band_names"]}
    assert_pixels_equal_gdal(result.store, row, paths, "bilinear")


def test_landsat7_archive_with_pan_ingests_as_two_images(client, shared_data, tmp_path):
    """A Landsat 7 ETM+ Collection 2 L1TP product (B6_VCID_1/2) as a .tar.gz read in place;
    productType "All" gives the multispectral image and the pan band's own image."""
    product = "LE07_L1TP_107068_20220310_20220405_02_T1"
    folder = _metadata_only(shared_data, tmp_path, product)
    archive = tmp_path / f"{product}.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        for f in sorted(folder.iterdir()):
            tar.add(f, arcname=f.name)
    meta = parse_mtl(next(folder.glob("*_MTL.txt")).read_text())
    result = create_image_collection(
        [str(archive)],
        raster_type={"rasterTypeName": "Landsat 7", "rasterTypeParameters": {"productType": "All"}},
        image_collection=str(tmp_path / "l7.zarr"),
        client=client,
        tile_size=256,
    )  # fmt: skip
    assert result.exit_code == 0, result.to_dict()
    rows = {r["group"]: r for r in _rows(result.store)}
    ms, pan = rows["multispectral"], rows["panchromatic"]
    assert ms["band_names"] == ["B1", "B2", "B3", "B4", "B5", "B6_VCID_1", "B6_VCID_2", "B7",
                                "QA_PIXEL", "QA_RADSAT"]  # fmt: skip
    assert pan["band_names"] == ["B8"]
    assert ms["source_uris"] == [str(archive)]
    assert pan["dtype"] == "uint8" and pan["nodata"] == 0  # the pan file's own
    assert ms["dtype"] == "float32"  # uint8 bands beside uint16 QA of other fills
    # the collection cell is the finest input's (pan), both images on it
    assert ms["grid_transform"][0] == pan["grid_transform"][0] == pytest.approx(15 * 16)
    for row in (ms, pan):
        assert row["acquisition_time"] == meta.acquisition_time
        assert row["sensor"] == "Landsat 7 ETM"
        paths = {b: f"/vsitar/{archive}/{meta.band_files[b]}" for b in row["band_names"]}
        assert_pixels_equal_gdal(result.store, row, paths, "nearest")
    assert_footprint_inside_corners(ms, meta, cell=240.0)
    # the fill collar (QA_RADSAT's zeros there included) is not in the footprint
    (x0, y0), (x1, y1) = meta.corners_xy["UL"], meta.corners_xy["LR"]
    to_lonlat = Transformer.from_crs(f"EPSG:{meta.epsg}", "EPSG:4326", always_xy=True)
    collar = shapely.Point(to_lonlat.transform(x0 + 0.05 * (x1 - x0), y0 + 0.05 * (y1 - y0)))
    middle = shapely.Point(to_lonlat.transform((x0 + x1) / 2, (y0 + y1) / 2))
    footprint = shapely.from_wkb(ms["footprint"])
    assert footprint.contains(middle) and not footprint.contains(collar)
    # the archive given to the other Landsat type: it says which one reads it
    with pytest.raises(
        ImageError, match=r'Landsat 7 ETM\+ Collection 2 Level-1 .*"Landsat 7 ETM\+"'
    ):
        landsat8.probe(str(archive), str(archive), archive.name, {})
    assert describe(str(archive), str(archive), exclude="Landsat 8").endswith('"Landsat 7 ETM+"')


def test_mixed_band_types_keep_every_value(client, shared_data, tmp_path):
    """Landsat 9 Level-2: uint16 reflectance (fill 0), int16 temperature layers (fill
    -9999), uint8 aerosol QA (fill 1), QA_RADSAT (no fill: QA_PIXEL's says). On the
    product's own grid (a pure shift) every stored value is the file's value, and every
    fill is the image's one nodata: nothing is cast away, no fill passes for data."""
    product = "LC09_L2SP_010065_20220129_20220131_02_T1"
    folder = _metadata_only(shared_data, tmp_path, product)
    meta = parse_mtl(next(folder.glob("*_MTL.txt")).read_text())
    result = create_image_collection(
        [str(folder / f"{product}_MTL.xml")],
        raster_type="Landsat 8",
        image_collection=str(tmp_path / "l9.zarr"),
        context={"cellSize": 480.0},
        client=client,
        tile_size=256,
    )
    assert result.exit_code == 0, result.to_dict()
    (row,) = _rows(result.store)
    assert {"SR_B4", "ST_B10", "ST_QA", "ST_TRAD", "SR_QA_AEROSOL", "QA_RADSAT"} <= set(
        row["band_names"]
    )
    assert row["dtype"] == "float32" and np.isnan(row["nodata"])
    grid = _grid(row)
    for band in ("SR_B4", "ST_QA", "ST_TRAD", "SR_QA_AEROSOL", "QA_RADSAT"):
        with rasterio.open(folder / meta.band_files[band]) as ds:
            src = ds.read(1)
            col, line = ~ds.transform @ (grid.transform.c, grid.transform.f)
            r0, c0 = -round(line), -round(col)  # where the file sits in the grid
            got = _stored(result.store, row, band)[r0 : r0 + ds.height, c0 : c0 + ds.width]
            if band in FILL_ONE:
                fill = src == LANDSAT_QA_FILL
            elif band in FILL_FROM_QA_PIXEL:
                with rasterio.open(folder / meta.band_files["QA_PIXEL"]) as qa:
                    fill = qa.read(1) == LANDSAT_QA_FILL
            else:
                fill = src == ds.nodata
            assert fill.any() and (~fill).any()
            np.testing.assert_array_equal(got[~fill], src[~fill].astype("float32"), err_msg=band)
            assert np.isnan(got[fill]).all(), band


# -- wrong picks and bad parameters ------------------------------------------------------------


def test_wrong_picks_say_what_the_input_is(client, shared_data, tmp_path):
    l8 = _product(shared_data, L8_L2)
    mtl = l8 / f"{L8_L2}_MTL.txt"
    # a Landsat 8 product given to the Landsat 7 type
    with pytest.raises(
        ImageError, match=r'Landsat 8 Collection 2 Level-2 .*rasterTypeName "Landsat 8"'
    ):
        landsat7.probe(str(l8), str(l8), l8.name, {})
    # an MTL given to Raster Dataset, and a plain GeoTIFF to Landsat 8, through a run
    tif = shared_data / "geotiff" / "byte.tif"
    for rtype, src, found, use in [
        ("Raster Dataset", mtl, "a Landsat 8 Collection 2 Level-2 product", "Landsat 8"),
        (
            "Landsat 8",
            tif,
            "a plain georeferenced raster (GTiff, 1 band of uint8)",
            "Raster Dataset",
        ),
    ]:
        result = create_image_collection(
            [str(src), str(shared_data / "geotiff" / "RGB.byte.tif")]
            if rtype == "Raster Dataset" else [str(src), str(l8)],
            raster_type=rtype,
            image_collection=str(tmp_path / f"{use}.zarr".replace(" ", "_")),
            client=client,
        )  # fmt: skip
        assert result.exit_code == 3, result.to_dict()  # the other input still ingests
        (failed,) = result.failed
        assert f"this looks like {found}" in failed.message
        assert f'use rasterTypeName "{use}"' in failed.message
    assert describe(str(mtl), str(mtl)).startswith("this looks like a Landsat 8")
    assert describe(str(tmp_path), str(tmp_path)) is None


def test_metadata_without_band_files_fails_clearly(shared_data, tmp_path):
    product = "LC09_L1TP_112081_20220209_20220209_02_T1"
    folder = tmp_path / product
    shutil.copytree(_product(shared_data, product), folder)
    with pytest.raises(ImageError, match="the MTL names band files that are not there: B1, B2"):
        landsat8.probe(str(folder), str(folder), product, {})
    # through a run: the folder's .txt and .xml are one product, failing once
    refs = resolve_sources(InputRasters("uris", (str(folder),)), patterns=landsat8.PATTERNS)
    assert sorted(r.name for r in refs) == [f"{product}_MTL", f"{product}_MTL"]
    probed, failed = probe_all(refs, "Landsat 8")
    assert probed == [] and len(failed) == 1
    assert failed[0].message.startswith("the MTL names band files that are not there: B1, B2")


def test_bad_product_type_is_a_request_error(shared_data, tmp_path):
    with pytest.raises(RequestError, match="Multispectral, Panchromatic, All") as info:
        create_image_collection(
            [str(_product(shared_data, L8_L2))],
            raster_type={"rasterTypeName": "Landsat 8", "rasterTypeParameters": {"productType": "Pansharpened"}},
            image_collection=str(tmp_path / "never.zarr"),
        )  # fmt: skip
    assert info.value.parameter.endswith("productType")
    assert not (tmp_path / "never.zarr").exists()


def test_a_bad_band_file_fails_its_product_alone(shared_data, tmp_path):
    good = _metadata_only(shared_data, tmp_path, "LC08_L1GT_089074_20220506_20220512_02_T2")
    bad = _metadata_only(shared_data, tmp_path, "LC09_L1TP_112081_20220209_20220209_02_T1")
    broken = bad / f"{bad.name}_B3.TIF"
    broken.write_bytes(b"II*\x00 not a tiff")
    refs = resolve_sources(InputRasters("uris", (str(tmp_path),)), patterns=landsat8.PATTERNS)
    probed, failed = probe_all(refs, "Landsat 8")
    assert [p.name for p in probed] == [good.name]
    (failure,) = failed
    assert f"band file {broken.name} cannot be read" in failure.message
