"""The Sentinel-2 raster type on the real SAFE samples of ../shared/data/sentinel2.

* every value parsed from MTD_MSIL1C/2A.xml and MTD_TL.xml is checked against what the
  files say (the expected values below were read off the XML by eye);
* the L1C 02.06 product ships real (downsampled) JP2 bands: it is ingested end to end, as a
  directory, as its MTD file and as a zip, and its pixels must equal GDAL's warp of each band
  file onto the image's grid;
* the other products ship metadata only: their band files are written here as lossless
  JP2s on the geometry MTD_TL.xml declares (downsampled, like the real sample), so the
  L2A band choice (R10m/R20m/R60m), SCL's nearest resampling and the BOA offsets of
  baseline 04.00+ are checked end to end too.
"""

from __future__ import annotations

import json
import re
import shutil
import warnings
import zipfile
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import rasterio
import shapely
import zarr
from affine import Affine
from pyproj import Transformer
from rasterio.errors import NotGeoreferencedWarning

from engine import create_image_collection
from engine.errors import ImageError
from engine.grid import Grid
from engine.plan import resampling_scale
from engine.probe import probe_all
from engine.rastertypes import REGISTRY, get_raster_type, safe, sentinel2, source_patterns
from engine.request import InputRasters
from engine.sources import resolve_sources
from graphs.chunk import EXACT_TOLERANCE, gdal_warp

from .conftest import smooth_field

L1C_206 = "S2A_MSIL1C_20180629T000241_N0206_R030_T56JMM_20180629T012042.SAFE"
L1C_301 = "S2A_MSIL1C_20210908T042701_N0301_R133_T46RER_20210908T070248.SAFE"
L2A_212 = "S2B_MSIL2A_20191228T210519_N0212_R071_T01CCV_20201003T104658.SAFE"
L2A_400 = "S2B_MSIL2A_20220413T150759_N0400_R025_T33XWJ_20220414T082126.SAFE"
L2A_509 = "S2A_MSIL2A_20230821T221941_N0509_R029_T01KAB_20230822T021825.SAFE"

# product → what its MTD_MSIL*.xml says
PRODUCT = {
    L1C_206: dict(type="S2MSI1C", level="L1C", baseline="02.06", craft="Sentinel-2A",
                  start="2018-06-29T00:02:41.024", orbit=30, direction="DESCENDING",
                  cloud=0.0, offset=None),
    L1C_301: dict(type="S2MSI1C", level="L1C", baseline="03.01", craft="Sentinel-2A",
                  start="2021-09-08T04:27:01.024", orbit=133, direction="DESCENDING",
                  cloud=88.2972, offset=None),
    L2A_212: dict(type="S2MSI2A", level="L2A", baseline="02.12", craft="Sentinel-2B",
                  start="2019-12-28T21:05:19.024", orbit=71, direction="DESCENDING",
                  cloud=99.998890, offset=None),
    L2A_400: dict(type="S2MSI2A", level="L2A", baseline="04.00", craft="Sentinel-2B",
                  start="2022-04-13T15:07:59.024", orbit=25, direction="ASCENDING",
                  cloud=98.944211, offset=-1000.0),
    L2A_509: dict(type="S2MSI2A", level="L2A", baseline="05.09", craft="Sentinel-2A",
                  start="2023-08-21T22:19:41.024", orbit=29, direction="DESCENDING",
                  cloud=59.050727, offset=-1000.0),
}  # fmt: skip
# product → what its granule's MTD_TL.xml says
TILE = {
    L1C_206: dict(mgrs="56JMM", epsg=32756, ul=(399960, 6700000), zenith=59.5161129280706,
                  azimuth=28.9784209875988, sensing="2018-06-29T00:02:41.461"),
    L1C_301: dict(mgrs="46RER", epsg=32646, ul=(499980, 3100020), zenith=26.4931642669439,
                  azimuth=142.987598836457, sensing="2021-09-08T04:40:48.758475"),
    L2A_212: dict(mgrs="01CCV", epsg=32701, ul=(300000, 2000020), zenith=55.201271439448,
                  azimuth=52.614268815742, sensing="2019-12-28T21:05:52.062315"),
    L2A_400: dict(mgrs="33XWJ", epsg=32633, ul=(499980, 8900040), zenith=76.5286190227361,
                  azimuth=246.540424743604, sensing="2022-04-13T15:08:07.846358"),
    L2A_509: dict(mgrs="01KAB", epsg=32701, ul=(99960, 8200000), zenith=38.4174390061789,
                  azimuth=43.3009058473725, sensing="2023-08-21T22:20:45.625508"),
}  # fmt: skip
BANDS_13 = ["B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B10",
            "B11", "B12"]  # fmt: skip
# the synthetic band files: 10 m bands → 366 px (300 m), 20 m → 183 px, 60 m → 61 px
SYNTH_PIXELS = {10: 366, 20: 183, 60: 61}


def _utc(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


@pytest.fixture(scope="module")
def s2_data(shared_data: Path) -> Path:
    folder = shared_data / "sentinel2"
    if not (folder / L1C_206).is_dir():
        pytest.skip(f"{folder / L1C_206} is absent")
    return folder


def _mtd(product: Path) -> Path:
    return next(product.glob("MTD_MSIL*.xml"))


def _granule_mtd(product: Path) -> Path:
    return next(product.glob("GRANULE/*/MTD_TL.xml"))


# -- metadata --------------------------------------------------------------------------


@pytest.mark.parametrize("product", list(PRODUCT))
def test_product_metadata_matches_the_xml(s2_data, product):
    want = PRODUCT[product]
    meta = safe.parse_product(_mtd(s2_data / product).read_bytes())
    assert meta.product_uri == product
    assert meta.product_type == want["type"] and meta.level == want["level"]
    assert meta.processing_baseline == want["baseline"]
    assert meta.spacecraft == want["craft"]
    assert meta.start_time == _utc(want["start"])
    assert meta.datatake_sensing_start == _utc(want["start"])
    assert meta.relative_orbit == want["orbit"]
    assert meta.orbit_direction == want["direction"]
    assert meta.cloud_cover == pytest.approx(want["cloud"])
    assert meta.quantification["reflectance"] == 10000
    if want["level"] == "L2A":
        assert meta.quantification["AOT"] == 1000 and meta.quantification["WVP"] == 1000
    # BOA_ADD_OFFSET from baseline 04.00 on, for each of the 13 bands; none before
    if want["offset"] is None:
        assert meta.offsets == {}
    else:
        assert meta.offsets == {b: want["offset"] for b in BANDS_13}
    assert meta.resolutions == {b: safe.NATIVE_RESOLUTION[b] for b in BANDS_13}
    assert meta.wavelengths["B04"] in (664.6, 665.0) and meta.wavelengths["B8A"] in (864.7, 864.0)
    assert len(meta.granules) == 1 and TILE[product]["mgrs"] in meta.granules[0]


@pytest.mark.parametrize("product", list(PRODUCT))
def test_parsed_values_agree_with_gdals_sentinel2_driver(s2_data, product):
    """GDAL's own reader of the same file (its SENTINEL2 driver) says the same."""
    mtd = _mtd(s2_data / product)
    meta = safe.parse_product(mtd.read_bytes())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)  # the product-level dataset
        with rasterio.open(mtd) as ds:
            tags, subdatasets = ds.tags(), ds.subdatasets
    assert ds.driver == "SENTINEL2"
    assert meta.cloud_cover == float(tags["CLOUD_COVERAGE_ASSESSMENT"])
    assert meta.processing_baseline == tags["PROCESSING_BASELINE"]
    assert meta.product_type == tags["PRODUCT_TYPE"]
    assert meta.start_time == _utc(tags["PRODUCT_START_TIME"].rstrip("Z"))
    assert meta.spacecraft == tags["DATATAKE_1_SPACECRAFT_NAME"]
    assert meta.relative_orbit == int(tags["DATATAKE_1_SENSING_ORBIT_NUMBER"])
    q = tags.get("BOA_QUANTIFICATION_VALUE") or tags["QUANTIFICATION_VALUE"]
    assert meta.quantification["reflectance"] == float(q)
    twenty = next(s for s in subdatasets if ":20m:" in s)
    with rasterio.open(twenty) as ds:
        band_tags = [ds.tags(b) for b in range(1, ds.count + 1)]
    for t in band_tags:
        if t.get("BANDNAME", "").startswith("B"):
            band = safe.band_name(t["BANDNAME"])
            gdal_offset = t.get("BOA_ADD_OFFSET") or t.get("RADIO_ADD_OFFSET")
            assert meta.offsets.get(band) == (None if gdal_offset is None else float(gdal_offset))


@pytest.mark.parametrize("product", list(TILE))
def test_tile_metadata_matches_the_xml(s2_data, product):
    want = TILE[product]
    tile = safe.parse_tile(_granule_mtd(s2_data / product).read_bytes())
    assert tile.mgrs_tile == want["mgrs"] and f"_T{want['mgrs']}_" in tile.tile_id
    assert tile.epsg == want["epsg"]
    assert tile.sensing_time == _utc(want["sensing"])
    assert sorted(tile.geopositions) == [10, 20, 60]
    for res, geo in tile.geopositions.items():
        assert (geo.ulx, geo.uly) == want["ul"]
        assert (geo.xdim, geo.ydim) == (res, -res)
        assert geo.nrows == geo.ncols == 109800 // res
    assert tile.sun_zenith == pytest.approx(want["zenith"], abs=1e-12)
    assert tile.sun_azimuth == pytest.approx(want["azimuth"], abs=1e-12)
    assert tile.sun_elevation == pytest.approx(90 - want["zenith"], abs=1e-12)


def test_l1c_radio_add_offset_from_baseline_4(s2_data):
    """An L1C of baseline 04.00+ carries RADIO_ADD_OFFSET (no sample ships one: the real
    03.01 metadata gets the list ESA added in 04.00, -1000 for B01, -2000 for B12)."""
    xml = _mtd(s2_data / L1C_301).read_text()
    offsets = "".join(
        f'<RADIO_ADD_OFFSET band_id="{i}">{-2000 if i == 12 else -1000}</RADIO_ADD_OFFSET>'
        for i in range(13)
    )
    xml = xml.replace("<PROCESSING_BASELINE>03.01<", "<PROCESSING_BASELINE>04.00<").replace(
        "</QUANTIFICATION_VALUE>",
        f"</QUANTIFICATION_VALUE><Radiometric_Offset_List>{offsets}</Radiometric_Offset_List>",
    )
    meta = safe.parse_product(xml)
    assert meta.processing_baseline == "04.00"
    assert meta.offsets["B01"] == -1000 and meta.offsets["B12"] == -2000
    assert meta.offsets["B8A"] == -1000 and len(meta.offsets) == 13


def test_bad_xml_is_refused_with_the_reason():
    with pytest.raises(safe.SafeError, match="not well-formed"):
        safe.parse_product(b"<a><b></a>")
    with pytest.raises(safe.SafeError, match="not a Sentinel-2"):
        safe.parse_product(b"<LANDSAT_METADATA_FILE/>")
    with pytest.raises(safe.SafeError, match="HORIZONTAL_CS_CODE"):
        safe.parse_tile(
            b'<n1:Level-2A_Tile_ID xmlns:n1="x"><TILE_ID>T</TILE_ID></n1:Level-2A_Tile_ID>'
        )


# -- synthetic band files for the metadata-only products ------------------------------


def _band_data(name: str, shape: tuple[int, int], seed: int) -> np.ndarray:
    """Plausible DN with a nodata (0) corner, like a tile at the edge of a swath."""
    if name == "SCL":
        data = (smooth_field(shape, seed, 0, 11.99)).astype("uint8")
    elif name in ("AOT", "WVP"):
        data = smooth_field(shape, seed, 50, 3000).astype("uint16")
    else:
        data = smooth_field(shape, seed, 1000, 9000).astype("uint16")
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]]
    data[(xx + yy) < shape[0] // 3] = 0
    return data


def synth_product(source: Path, dest: Path, shift: str | None = None) -> Path:
    """A copy of a metadata-only SAFE with every band file it lists (TCI excepted) written
    as a lossless JP2 on MTD_TL.xml's geometry; ``shift`` moves that band by 5 km."""
    product = dest / source.name
    mtd = _mtd(source)
    meta = safe.parse_product(mtd.read_bytes())
    granule_mtd = _granule_mtd(source)
    tile = safe.parse_tile(granule_mtd.read_bytes())
    (product / granule_mtd.parent.relative_to(source)).mkdir(parents=True)
    shutil.copyfile(mtd, product / mtd.name)
    shutil.copyfile(granule_mtd, product / granule_mtd.relative_to(source))
    for k, rel in enumerate(meta.image_files):
        band, res = safe.band_of_file(rel) or ("", None)
        if band == "TCI":
            continue
        res = res or meta.resolutions[band]
        geo = tile.geopositions[res]
        n = SYNTH_PIXELS[res]
        px = geo.ncols * geo.xdim / n
        x0 = geo.ulx + (5000 if band == shift else 0)
        path = product / f"{rel}.jp2"
        path.parent.mkdir(parents=True, exist_ok=True)
        data = _band_data(band, (n, n), seed=k)
        with rasterio.open(
            path, "w", driver="JP2OpenJPEG", width=n, height=n, count=1, dtype=data.dtype,
            crs=f"EPSG:{tile.epsg}", transform=Affine(px, 0, x0, 0, -px, geo.uly),
            QUALITY="100", REVERSIBLE="YES",
        ) as dst:  # fmt: skip
            dst.write(data, 1)
    return product


@pytest.mark.parametrize("product", [L1C_301, L2A_212, L2A_400, L2A_509])
def test_band_files_at_their_native_resolution(s2_data, tmp_path, product):
    safe_dir = synth_product(s2_data / product, tmp_path)
    src = sentinel2.probe(str(safe_dir), str(safe_dir), safe_dir.stem)
    level = PRODUCT[product]["level"]
    if level == "L1C":
        assert src.band_names == BANDS_13
    else:  # no B10 in L2A; the atmospheric products after the bands; TCI never
        assert src.band_names == [b for b in BANDS_13 if b != "B10"] + ["SCL", "AOT", "WVP"]
    for part in src.parts:
        (band,) = part.band_names
        res = 20 if band in ("SCL", "AOT", "WVP") else safe.NATIVE_RESOLUTION[band]
        if level == "L2A":  # the file of the band's own resolution among R10m/R20m/R60m
            assert f"/IMG_DATA/R{res}m/" in part.path
            assert part.path.endswith(f"_{band}_{res}m.jp2")
        assert part.grid.resolution[0] == pytest.approx(109800 / SYNTH_PIXELS[res])
        assert part.grid.crs.to_epsg() == TILE[product]["epsg"]
        assert part.nodata == 0
        assert part.resampling == ("nearest" if band == "SCL" else None)
    # reflectance = (DN + offset) / 10000 → CF scale 1e-4, add_offset offset / 10000
    offset = PRODUCT[product]["offset"] or 0.0
    scales = dict(zip(src.band_names, src.scale_offsets, strict=True))
    assert scales["B02"] == (1e-4, offset / 10000)
    assert scales["B12"] == (1e-4, offset / 10000)
    if level == "L2A":
        assert scales["AOT"] == (1e-3, 0.0) and scales["WVP"] == (1e-3, 0.0)
        assert scales["SCL"] is None
    assert src.product_name == level and src.sensor == "MSI"
    assert src.extra["tile_id"] == TILE[product]["mgrs"]
    assert src.extra["processing_baseline"] == PRODUCT[product]["baseline"]
    assert src.extra["relative_orbit"] == PRODUCT[product]["orbit"]
    assert src.extra["spacecraft"] == PRODUCT[product]["craft"]


def test_a_band_file_off_its_tile_fails(s2_data, tmp_path):
    safe_dir = synth_product(s2_data / L2A_509, tmp_path, shift="B05")
    with pytest.raises(ImageError, match=r"B05_20m\.jp2 covers .* does not belong"):
        sentinel2.probe(str(safe_dir), str(safe_dir), "x")


def test_a_missing_band_file_fails_naming_it(s2_data, tmp_path):
    # the real 04.00 sample ships metadata only: its band files are missing
    product = s2_data / L2A_400
    with pytest.raises(
        ImageError, match=r"band file GRANULE/.*_B01_60m\.tif \(or \.jp2\) is missing"
    ):
        sentinel2.probe(str(product), str(product), "x")


# -- inputs and recognition -----------------------------------------------------------


@pytest.fixture(scope="module")
def l1c_zip(s2_data, tmp_path_factory) -> Path:
    """The real L1C SAFE zipped as the Copernicus hub serves it (the .SAFE folder inside)."""
    product = s2_data / L1C_206
    out = tmp_path_factory.mktemp("zip") / f"{product.stem}.zip"
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as zf:
        for f in sorted(product.rglob("*")):
            if f.is_file():
                zf.write(f, f"{product.name}/{f.relative_to(product)}")
    return out


def test_directory_mtd_and_zip_are_one_product(s2_data, l1c_zip):
    product = s2_data / L1C_206
    inputs = [
        (str(product), str(product)),
        (str(product / "MTD_MSIL1C.xml"), str(product / "MTD_MSIL1C.xml")),
        (str(l1c_zip), str(l1c_zip)),
        (f"{l1c_zip}!/{product.name}", f"/vsizip/{l1c_zip}/{product.name}"),
    ]
    probed = [sentinel2.probe(uri, path, "x") for uri, path in inputs]
    assert len({p.image_id for p in probed}) == 1
    assert probed[0].image_id.startswith(product.stem)
    assert all(p.band_names == BANDS_13 for p in probed)
    assert probed[2].parts[1].path == (
        f"/vsizip/{l1c_zip}/{product.name}/GRANULE/L1C_T56JMM_A015757_20180629T000241/"
        "IMG_DATA/T56JMM_20180629T000241_B02.jp2"
    )
    for p in probed:
        assert [q.grid for q in p.parts] == [q.grid for q in probed[0].parts]


def test_directory_walk_finds_one_source_per_product(s2_data, l1c_zip, tmp_path):
    patterns = source_patterns(sentinel2.NAME)
    refs = resolve_sources(InputRasters("uris", (str(s2_data),)), patterns=patterns)
    assert sorted(Path(r.uri).name for r in refs) == sorted(PRODUCT)
    # a folder holding the SAFE, its zip and an unrelated GeoTIFF: one image
    shutil.copytree(s2_data / L1C_206, tmp_path / L1C_206)
    shutil.copyfile(l1c_zip, tmp_path / l1c_zip.name)
    (tmp_path / "notes.tif").write_bytes(b"")
    refs = resolve_sources(InputRasters("uris", (str(tmp_path),)), patterns=patterns)
    assert sorted(Path(r.uri).name for r in refs) == sorted([l1c_zip.name, L1C_206])
    probed, failed = probe_all(refs, sentinel2.NAME)
    assert len(probed) == 1 and not failed


def test_inputs_that_are_not_one_product_fail_with_the_fix(s2_data, tmp_path):
    def reason(uri: str, gdal_path: str | None = None) -> str:
        with pytest.raises(ImageError) as info:
            sentinel2.probe(uri, gdal_path or uri, "x")
        return info.value.reason

    assert reason(str(s2_data)) == (
        "is not a Sentinel-2 product (a directory without MTD_MSIL1C.xml or MTD_MSIL2A.xml);"
        " give a .SAFE directory, its MTD_MSIL1C.xml / MTD_MSIL2A.xml, or a .zip of the SAFE"
    )
    old = tmp_path / "S2A_OPER_PRD_MSIL1C_PDMC_20160101T000000_R008_V20151231T000000.SAFE"
    old.mkdir()
    (old / "S2A_OPER_MTD_SAFL1C_PDMC_20160101T000000_R008_V20151231T000000.xml").write_text("<x/>")
    assert "multi-tile SAFE format of before December 2016" in reason(str(old))
    remote = "s3://bucket/S2B_MSIL2A_20220413T150759_N0400_R025_T33XWJ_20220414T082126.SAFE"
    assert "download the product" in reason(remote, "/vsis3/" + remote[5:])
    both = tmp_path / "two.zip"
    with zipfile.ZipFile(both, "w") as zf:
        for product in (L1C_206, L1C_301):
            zf.write(s2_data / product / "MTD_MSIL1C.xml", f"{product}/MTD_MSIL1C.xml")
    assert reason(str(both)).startswith("holds 2 Sentinel-2 products (S2A_MSIL1C_2018")
    broken = tmp_path / "broken" / L1C_206
    broken.mkdir(parents=True)
    (broken / "MTD_MSIL1C.xml").write_text("<n1:Level-1C_User_Product xmlns:n1='x'>")
    assert reason(str(broken)).startswith("MTD_MSIL1C.xml: its product metadata is not well-formed")


def test_recognise(s2_data, l1c_zip, tmp_path):
    assert get_raster_type("Sentinel-2") is sentinel2 and REGISTRY["Sentinel-2"] is sentinel2
    l2a = s2_data / L2A_509
    for path, level in [
        (s2_data / L1C_206, "L1C"),
        (s2_data / L1C_206 / "MTD_MSIL1C.xml", "L1C"),
        (l1c_zip, "L1C"),
        (l2a, "L2A"),
        (l2a / "MTD_MSIL2A.xml", "L2A"),
    ]:
        assert sentinel2.recognise(str(path), str(path)) == f"a Sentinel-2 {level} product"
    renamed = tmp_path / "scene"  # a SAFE folder renamed: told by its MTD file
    shutil.copytree(l2a, renamed)
    assert sentinel2.recognise(str(renamed), str(renamed)) == "a Sentinel-2 L2A product"
    tif = s2_data.parent / "geotiff" / "byte.tif"
    assert sentinel2.recognise(str(tif), str(tif)) is None
    assert sentinel2.recognise(str(s2_data), str(s2_data)) is None


# -- end to end -----------------------------------------------------------------------


def _stored(store: str, image_id: str, band: str) -> np.ndarray:
    return zarr.open_array(f"{store}/images/{image_id}/{band}", mode="r")[:]


def _gdal_reference(part, grid: Grid, resampling: str) -> np.ndarray:
    """GDAL's warp of one band file onto the image's whole grid (exact transformer)."""
    with rasterio.open(part.path) as ds:
        scale = resampling_scale(Grid(ds.crs, ds.transform, ds.shape), grid)
        ref, _ = gdal_warp(
            ds, grid, resampling, src_nodata=0, dst_nodata=0, dtype="uint16", scale=scale,
            tolerance=EXACT_TOLERANCE,
        )  # fmt: skip
    return ref[0]


@pytest.fixture(scope="module")
def l1c_ingested(client, s2_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("l1c") / "s2.zarr"
    result = create_image_collection(
        [str(s2_data / L1C_206)], raster_type="Sentinel-2", image_collection=str(out),
        client=client,
    )  # fmt: skip
    assert result.exit_code == 0, result.to_dict()
    return result


def test_real_l1c_end_to_end(l1c_ingested, s2_data):
    result = l1c_ingested
    (rec,) = result.complete
    assert rec.band_names == BANDS_13 and rec.dtype == "uint16" and rec.nodata == 0
    row = pq.read_table(Path(result.store) / "catalog.parquet").to_pylist()[0]
    assert row["acquisition_time"] == _utc("2018-06-29T00:02:41.024")
    assert row["cloud_cover"] == 0.0
    assert row["sun_elevation"] == pytest.approx(90 - 59.5161129280706)
    assert row["sun_azimuth"] == pytest.approx(28.9784209875988)
    assert (row["sensor"], row["product_name"]) == ("MSI", "L1C")
    assert (row["tile_id"], row["processing_baseline"]) == ("56JMM", "02.06")
    assert (row["relative_orbit"], row["spacecraft"]) == (30, "Sentinel-2A")
    assert row["LowPS"] == pytest.approx(109800 / 439)  # the finest band (B02) sets the cell
    # the footprint lies inside the tile MTD_TL.xml declares and holds ESA's data footprint;
    # the catalog footprint may pass the data by two cells (its coarse mask is trimmed to
    # the planned coverage, footprint + one cell, grown by one cell: engine/ingest.py)
    cell = row["LowPS"]
    to_utm = Transformer.from_crs(4326, 32756, always_xy=True)
    footprint = shapely.transform(
        shapely.from_wkb(row["footprint"]),
        lambda xy: np.column_stack(to_utm.transform(xy[:, 0], xy[:, 1])),
    )
    tile = shapely.box(399960, 6700000 - 109800, 399960 + 109800, 6700000)
    assert footprint.within(tile.buffer(2 * cell + 1, join_style="mitre"))
    assert footprint.area > 0.99 * tile.area  # the downsampled bands hold DN > 0 tile-wide
    xml = (s2_data / L1C_206 / "MTD_MSIL1C.xml").read_text()
    ring = [
        float(v) for v in re.search(r"<EXT_POS_LIST>(.*?)</EXT_POS_LIST>", xml).group(1).split()
    ]
    esa = shapely.Polygon(np.column_stack(to_utm.transform(ring[1::2], ring[0::2])))
    assert footprint.buffer(cell).contains(esa)
    # the collection is a Satellite collection, in the catalog, the STAC and the descriptor
    meta = json.loads(
        pq.read_schema(Path(result.store) / "catalog.parquet").metadata[b"mosaicflow"]
    )
    assert (meta["collection_type"], meta["raster_type"]) == ("Satellite", "Sentinel-2")
    stac = json.loads((Path(result.store) / "stac" / "collection.json").read_text())
    assert stac["mosaicflow:collection_type"] == "Satellite"
    service = json.loads((Path(result.store) / "service.json").read_text())
    assert service["imageCollectionType"] == "Satellite"
    # CF scale/offset: reflectance = DN / 10000 (baseline 02.06 has no offset)
    attrs = zarr.open_array(f"{result.store}/images/{rec.image_id}/B04", mode="r").attrs
    assert (attrs["scale_factor"], attrs["add_offset"]) == (1e-4, 0.0)
    assert attrs["long_name"] == "B04, central wavelength 664.6 nm"
    # the pixels are GDAL's warp of each band file onto the image's grid
    src = sentinel2.probe(str(s2_data / L1C_206), str(s2_data / L1C_206), "x")
    for part in src.parts:
        got = _stored(result.store, rec.image_id, part.band_names[0])
        np.testing.assert_array_equal(got, _gdal_reference(part, rec.grid, "nearest"))


@pytest.mark.parametrize("form", ["mtd", "zip"])
def test_mtd_and_zip_ingest_the_same_pixels(client, l1c_ingested, s2_data, l1c_zip, tmp_path, form):
    given = s2_data / L1C_206 / "MTD_MSIL1C.xml" if form == "mtd" else l1c_zip
    result = create_image_collection(
        [str(given)], raster_type="Sentinel-2", image_collection=str(tmp_path / "c.zarr"),
        client=client,
    )  # fmt: skip
    assert result.exit_code == 0, result.to_dict()
    (rec,) = result.complete
    (ref,) = l1c_ingested.complete
    assert rec.image_id == ref.image_id and rec.grid == ref.grid
    assert rec.checksum == ref.checksum
    for band in ("B01", "B8A", "B12"):
        np.testing.assert_array_equal(
            _stored(result.store, rec.image_id, band),
            _stored(l1c_ingested.store, ref.image_id, band),
        )


def test_synthetic_l2a_end_to_end(client, s2_data, tmp_path):
    """05.09 (BOA offsets, SCL): bilinear for the bands, nearest for SCL, each equal to GDAL."""
    safe_dir = synth_product(s2_data / L2A_509, tmp_path)
    result = create_image_collection(
        [str(safe_dir)], raster_type="Sentinel-2", image_collection=str(tmp_path / "c.zarr"),
        context={"resamplingMethod": "BILINEAR"}, client=client,
    )  # fmt: skip
    assert result.exit_code == 0, result.to_dict()
    (rec,) = result.complete
    assert rec.band_names == [b for b in BANDS_13 if b != "B10"] + ["SCL", "AOT", "WVP"]
    row = pq.read_table(Path(result.store) / "catalog.parquet").to_pylist()[0]
    assert (row["product_name"], row["cloud_cover"]) == ("L2A", pytest.approx(59.050727))
    assert row["acquisition_time"] == _utc("2023-08-21T22:19:41.024")
    assert row["sun_elevation"] == pytest.approx(90 - 38.4174390061789)
    assert row["LowPS"] == pytest.approx(300.0)
    group = f"{result.store}/images/{rec.image_id}"
    b02 = zarr.open_array(f"{group}/B02", mode="r").attrs
    assert (b02["scale_factor"], b02["add_offset"]) == (1e-4, -0.1)
    assert "scale_factor" not in zarr.open_array(f"{group}/SCL", mode="r").attrs
    src = sentinel2.probe(str(safe_dir), str(safe_dir), "x")
    for part in src.parts:
        band = part.band_names[0]
        got = _stored(result.store, rec.image_id, band)
        if band == "SCL":
            np.testing.assert_array_equal(got, _gdal_reference(part, rec.grid, "nearest"))
            continue
        # bilinear: within 1 DN of GDAL on >= 99.9 % of pixels, nodata where GDAL has it
        # (graphs/fastwarp.py's standard; it differs by 1 DN on 0.02 % of B01's pixels)
        ref = _gdal_reference(part, rec.grid, "bilinear").astype("int32")
        np.testing.assert_array_equal(got == 0, ref == 0, err_msg=band)
        diff = np.abs(got.astype("int32") - ref)
        assert diff.max() <= 1 and (diff == 0).mean() >= 0.999, band
    scl = _stored(result.store, rec.image_id, "SCL")
    assert set(np.unique(scl)) <= set(range(12))  # class codes, never blended


def test_a_non_sentinel2_input_fails_alone(client, s2_data, tmp_path):
    tif = s2_data.parent / "geotiff" / "byte.tif"
    result = create_image_collection(
        [str(tif), str(s2_data / L2A_400), str(s2_data / L1C_206)], raster_type="Sentinel-2",
        image_collection=str(tmp_path / "c.zarr"), client=client,
    )  # fmt: skip
    assert result.exit_code == 3
    assert [r.name for r in result.complete] == [L1C_206.removesuffix(".SAFE")]
    reasons = {Path(r.source_uris[0]).name: r.message for r in result.failed}
    assert reasons["byte.tif"].startswith("is not a Sentinel-2 product (a .tif file); give a .SAFE")
    assert "_B01_60m.tif (or .jp2) is missing" in reasons[L2A_400]
