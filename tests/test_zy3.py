"""ZY-3 (ZY3-SASMAC, ZY3-CRESDA): RPC sidecars, the RPC model, orthorectified ingests.

No ZY-3 product is public, so the products are made here from real RPC material in
../shared/data/zy3: the pixels and RPCs of ``qb2_basic1b.tif`` (a real QuickBird-2 Level-1
scene, RPC-only like ZY-3 L1A) written as ``ZY3_<sensor>_E24.4_N-33.7_20150101_L1A<id>.tif``
without RPC tags, the RPCs beside it in md_dg.RPB's syntax (``.rpb``) or GDAL's RPC text
syntax (``_rpc.txt``), and an XML in each of the two inferred layouts.

Two ingests (module fixtures) carry most checks: a SASMAC folder at a constant height
(constantZ) with a panchromatic product, a 4-band product whose bands hold their own
source column and row, and two products that must fail alone; and a CRESDA product given
by its XML, orthorectified on a DEM.
"""

from __future__ import annotations

import json
import re
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import rasterio
import shapely
import zarr
from affine import Affine
from pyproj import CRS, Transformer
from rasterio.rpc import RPC
from rasterio.transform import RPCTransformer
from rasterio.warp import Resampling, reproject

from engine import create_image_collection
from engine.errors import ImageError, RequestError
from engine.grid import Grid
from engine.rastertypes import raster_dataset, zy3
from engine.rastertypes.rpc import (
    RPCParseError,
    parse_rpb,
    parse_rpc_txt,
    rpc_locate,
    rpc_project,
    warp_rpc,
)

STEM = "E24.4_N-33.7_20150101_L1A"
CONSTANT_Z = 230.0  # about the height of the QuickBird scene's ground control points
FIELDS = [
    "line_off", "samp_off", "lat_off", "long_off", "height_off",
    "line_scale", "samp_scale", "lat_scale", "long_scale", "height_scale",
]  # fmt: skip
COEFFS = ["line_num_coeff", "line_den_coeff", "samp_num_coeff", "samp_den_coeff"]


# -- fixture writers ----------------------------------------------------------------------


def write_rpb(path: Path, rpc: RPC) -> None:
    """``rpc`` in md_dg.RPB's syntax (the DigitalGlobe .rpb that ZY-3 ships)."""
    names = {
        "lineOffset": "line_off", "sampOffset": "samp_off", "latOffset": "lat_off",
        "longOffset": "long_off", "heightOffset": "height_off", "lineScale": "line_scale",
        "sampScale": "samp_scale", "latScale": "lat_scale", "longScale": "long_scale",
        "heightScale": "height_scale",
    }  # fmt: skip
    lines = ['satId = "ZY3";', 'bandId = "P";', 'SpecId = "RPC00B";', "BEGIN_GROUP = IMAGE"]
    lines += [f"\terrBias = {rpc.err_bias};", f"\terrRand = {rpc.err_rand};"]
    lines += [f"\t{k} = {getattr(rpc, v)!r};" for k, v in names.items()]
    for key, field in zip(
        ["lineNumCoef", "lineDenCoef", "sampNumCoef", "sampDenCoef"], COEFFS, strict=True
    ):
        values = ",\n\t\t\t".join(f"{v:+.15E}" for v in getattr(rpc, field))
        lines.append(f"\t{key} = (\n\t\t\t{values});")
    lines += ["END_GROUP = IMAGE", "END;"]
    path.write_text("\n".join(lines))


def write_rpc_txt(path: Path, rpc: RPC) -> None:
    """``rpc`` in GDAL's RPC text syntax, with units as vendors write them."""
    units = {"line": "pixels", "samp": "pixels", "lat": "degrees", "long": "degrees"}
    lines = []
    for f in FIELDS:
        unit = units.get(f.split("_")[0], "meters")
        lines.append(f"{f.upper()}: {getattr(rpc, f):+.10f} {unit}")
    for f in COEFFS:
        lines += [f"{f.upper()}_{i}: {v:+.15E}" for i, v in enumerate(getattr(rpc, f), 1)]
    path.write_text("\n".join(lines) + "\n")


def sasmac_xml(sensor: str, produce_id: str, info_tag: str = "productInfo") -> str:
    return f"""<?xml version="1.0" encoding="UTF-8"?>
<sensor_corrected_metadata>
  <productComponents><file><Filename>ZY3_{sensor}_{STEM}{produce_id}.tif</Filename></file></productComponents>
  <{info_tag}>
    <ProductLevel>SC</ProductLevel><SatelliteID>ZY3</SatelliteID><SensorID>{sensor}</SensorID>
    <OrbitID>2731</OrbitID><SceneID>8907312</SceneID>
    <SunAltitude>61.25</SunAltitude><SunAzimuth>78.5</SunAzimuth>
    <TimeStamp><StartTime>2015-01-01 08:31:10.250</StartTime>
      <CenterTime>2015-01-01 08:31:12.500</CenterTime><EndTime>2015-01-01 08:31:14.750</EndTime></TimeStamp>
    <CloudPercent>7</CloudPercent>
  </{info_tag}>
  <processInfo><ProduceID>{produce_id}</ProduceID></processInfo>
</sensor_corrected_metadata>
"""


def cresda_xml(sensor: str, product_id: str) -> str:
    return f"""<?xml version="1.0" encoding="UTF-8"?>
<ProductMetaData>
  <SatelliteID>ZY3</SatelliteID><SensorID>{sensor}</SensorID><ReceiveTime>2015-01-01 08:40:00</ReceiveTime>
  <OrbitID>2731</OrbitID><SceneID>8907313</SceneID><ProductID>{product_id}</ProductID><ProductLevel>LEVEL1A</ProductLevel>
  <StartTime>2015-01-01 08:31:20</StartTime><EndTime>2015-01-01 08:31:24</EndTime>
  <CloudPercent>12</CloudPercent><SolarAzimuth>80.25</SolarAzimuth><SolarZenith>30.5</SolarZenith>
</ProductMetaData>
"""


def make_product(
    folder: Path, sensor: str, pid: str, data: np.ndarray, rpc: RPC | None, rpc_syntax: str,
    xml: str | None,
) -> Path:  # fmt: skip
    """A ZY-3 product: the .tif (no RPC tags, no georeferencing), RPC sidecar, XML."""
    base = folder / f"ZY3_{sensor}_{STEM}{pid}"
    profile = dict(driver="GTiff", width=data.shape[2], height=data.shape[1], count=data.shape[0])
    profile.update(dtype=data.dtype.name, tiled=True, blockxsize=256, blockysize=256)
    with rasterio.open(f"{base}.tif", "w", **profile) as dst:
        dst.write(data)
    if rpc is not None and rpc_syntax == "rpb":
        write_rpb(Path(f"{base}.rpb"), rpc)
    elif rpc is not None:
        write_rpc_txt(Path(f"{base}_rpc.txt"), rpc)
    if xml is not None:
        Path(f"{base}.xml").write_text(xml)
    return Path(f"{base}.tif")


@pytest.fixture(scope="module")
def qb2(shared_data: Path) -> tuple[np.ndarray, RPC]:
    with rasterio.open(shared_data / "zy3" / "qb2_basic1b.tif") as ds:
        return ds.read(), ds.rpcs


@pytest.fixture(scope="module")
def gcps(shared_data: Path) -> list[tuple[float, float, float, float, float]]:
    """(col, row, lon, lat, height) of the QuickBird scene's surveyed points."""
    doc = json.loads((shared_data / "zy3" / "qb2_basic1b_gcps.geojson").read_text())
    return [(*f["properties"]["ji"], *f["geometry"]["coordinates"]) for f in doc["features"]]


def sidecars_visible() -> rasterio.Env:
    """GDAL looking for sidecar files (the engine's workers set GDAL_DISABLE_READDIR_ON_OPEN
    =EMPTY_DIR, under which GDAL never finds an .rpb: the warp passes the RPCs itself)."""
    return rasterio.Env(GDAL_DISABLE_READDIR_ON_OPEN="FALSE")


def _catalog(store: str) -> dict[str, dict]:
    rows = pq.read_table(Path(store) / "catalog.parquet").to_pylist()
    return {r["product_name"] or Path(r["source_uris"][0]).stem: r for r in rows}


def _grid(row: dict) -> Grid:
    return Grid(CRS.from_wkt(row["crs"]), Affine(*row["grid_transform"]), tuple(row["grid_shape"]))


def _stored(store: str, row: dict) -> np.ndarray:
    group = f"{store}/images/{row['image_id']}"
    return np.stack([zarr.open_array(f"{group}/{b}", mode="r")[:] for b in row["band_names"]])


@pytest.fixture(scope="module")
def sasmac_run(client, qb2, tmp_path_factory):
    """A SASMAC folder at constantZ: pan (.rpb), index MUX (_rpc.txt), two bad products."""
    pixels, rpc = qb2
    folder = tmp_path_factory.mktemp("zy3_sasmac")
    h, w = pixels.shape[1:]
    rows, cols = np.mgrid[0:h, 0:w].astype("uint16")
    index = np.stack([cols, rows, pixels[0].astype("uint16"), np.full((h, w), 1000, "uint16")])
    make_product(folder, "NAD", "0001234567", pixels, rpc, "rpb", sasmac_xml("NAD", "1234567"))
    make_product(folder, "MUX", "0001234568", index, rpc, "txt", sasmac_xml("MUX", "1234568", "ProductInfo"))  # fmt: skip
    make_product(folder, "FWD", "0001234569", pixels, None, "rpb", sasmac_xml("FWD", "1234569"))
    make_product(folder, "BWD", "0001234570", pixels, rpc, "rpb", cresda_xml("BWD", "1234570"))
    (folder / "notes.txt").write_text("not a product")
    result = create_image_collection(
        [str(folder)],
        {"rasterTypeName": "ZY3-SASMAC", "rasterTypeParameters": {"constantZ": CONSTANT_Z}},
        image_collection=str(folder / "out.zarr"),
        context={"resamplingMethod": "NEAREST"},
        client=client,
        tile_size=256,
    )
    return result, _catalog(result.store)


@pytest.fixture(scope="module")
def dem_path(tmp_path_factory) -> Path:
    """A DEM with 600 m of relief over the scene (EPSG:4326, 0.001°)."""
    path = tmp_path_factory.mktemp("zy3_dem") / "dem.tif"
    n = 240
    lat, lon = np.mgrid[0:n, 0:n] / n
    z = (150 + 600 * lon * (1 - lat) + 80 * np.sin(lat * 9)).astype("float32")
    with rasterio.open(
        path, "w", driver="GTiff", width=n, height=n, count=1, dtype="float32",
        crs="EPSG:4326", transform=Affine(0.001, 0, 24.27, 0, -0.001, -33.57),
    ) as dst:  # fmt: skip
        dst.write(z, 1)
    return path


@pytest.fixture(scope="module")
def cresda_run(client, qb2, dem_path, tmp_path_factory):
    """A CRESDA pan product given by its XML, and the same scene as a .tar.gz product,
    orthorectified on the DEM."""
    pixels, rpc = qb2
    folder = tmp_path_factory.mktemp("zy3_cresda")
    tif = make_product(
        folder, "NAD", "0007654321", pixels, rpc, "rpb", cresda_xml("NAD", "7654321")
    )
    # the same scene as a second product, delivered as a .tar.gz (read in place)
    packed = folder / "packed"
    packed.mkdir()
    make_product(packed, "NAD", "0007654322", pixels, rpc, "txt", cresda_xml("NAD", "7654322"))
    archive = folder / f"ZY3_NAD_{STEM}0007654322.tar.gz"
    with tarfile.open(archive, "w:gz") as tf:
        tf.add(packed, arcname=f"ZY3_NAD_{STEM}0007654322")
    result = create_image_collection(
        [str(tif.with_suffix(".xml")), str(archive)],
        {"rasterTypeName": "ZY3-CRESDA", "rasterTypeParameters": {"dem": {"uri": str(dem_path)}}},
        image_collection=str(folder / "out.zarr"),
        context={"resamplingMethod": "NEAREST"},
        client=client,
        tile_size=256,
    )
    return result, _catalog(result.store), tif


# -- RPC files and model ------------------------------------------------------------------


def test_rpb_parser_reads_every_value_of_md_dg(shared_data, tmp_path):
    text = (shared_data / "zy3" / "md_dg.RPB").read_text()
    rpc = parse_rpb(text)
    scalars = dict(re.findall(r"(\w+) = +([-+.\dE]+);", text))
    assert rpc.line_off == float(scalars["lineOffset"]) == 812
    assert rpc.samp_off == 850 and rpc.lat_off == 41.8791 and rpc.long_off == 12.5798
    assert rpc.height_off == 95 and rpc.line_scale == 938 and rpc.samp_scale == 1152
    assert rpc.lat_scale == 0.0150 and rpc.long_scale == 0.0225 and rpc.height_scale == 501
    assert (rpc.err_bias, rpc.err_rand) == (1.49, 0.58)
    keys = ["lineNumCoef", "lineDenCoef", "sampNumCoef", "sampDenCoef"]
    for key, field in zip(keys, COEFFS, strict=True):
        body = re.search(key + r" = \((.*?)\);", text, re.S).group(1)
        assert getattr(rpc, field) == [float(v) for v in body.split(",")]
    assert rpc.line_num_coeff[2] == -1.109763 and rpc.samp_den_coeff[4] == 4.849114e-08
    # GDAL reads the same file as the sidecar of an image: the same 90 values
    with rasterio.open(tmp_path / "img.tif", "w", driver="GTiff", width=8, height=8, count=1,
                       dtype="uint8") as dst:  # fmt: skip
        dst.write(np.ones((1, 8, 8), "uint8"))
    (tmp_path / "img.RPB").write_text(text)
    with sidecars_visible(), rasterio.open(tmp_path / "img.tif") as ds:
        gdal = ds.rpcs
    for f in FIELDS + COEFFS:
        assert getattr(gdal, f) == getattr(rpc, f), f


def test_rpc_text_parser_and_gdal_agree(qb2, tmp_path):
    rpc = qb2[1]
    write_rpc_txt(tmp_path / "img_rpc.txt", rpc)
    parsed = parse_rpc_txt((tmp_path / "img_rpc.txt").read_text())
    for f in FIELDS + COEFFS:
        assert getattr(parsed, f) == getattr(rpc, f), f
    # a one-line coefficient list is read too
    one_line = "\n".join(
        [f"{f.upper()}: {getattr(rpc, f)}" for f in FIELDS]
        + [f"{f.upper()}: " + " ".join(map(str, getattr(rpc, f))) for f in COEFFS]
    )
    assert parse_rpc_txt(one_line).samp_num_coeff == rpc.samp_num_coeff
    with rasterio.open(tmp_path / "img.tif", "w", driver="GTiff", width=8, height=8, count=1,
                       dtype="uint8") as dst:  # fmt: skip
        dst.write(np.ones((1, 8, 8), "uint8"))
    with sidecars_visible(), rasterio.open(tmp_path / "img.tif") as ds:
        assert ds.rpcs.line_den_coeff == parsed.line_den_coeff
        assert ds.rpcs.lat_off == parsed.lat_off


def test_incomplete_rpc_files_are_refused(shared_data):
    text = (shared_data / "zy3" / "md_dg.RPB").read_text()
    with pytest.raises(RPCParseError, match="height_scale"):
        parse_rpb(text.replace("heightScale = 501;", ""))
    with pytest.raises(RPCParseError, match="19 coefficients"):
        parse_rpb(text.replace("-9.876127E-08", ""))
    with pytest.raises(RPCParseError, match=r"samp_den_coeff_1\.\.20 incomplete"):
        parse_rpc_txt("\n".join(f"SAMP_DEN_COEFF_{i}: 1" for i in range(1, 20)))


def test_rpc_model_is_gdals(qb2, shared_data):
    """Ground → image within 1e-6 px of GDAL's RPC transformer; image → ground inverts it."""
    rng = np.random.default_rng(4)
    for rpc in (qb2[1], parse_rpb((shared_data / "zy3" / "md_dg.RPB").read_text())):
        lon = rpc.long_off + rng.uniform(-1, 1, 500) * rpc.long_scale
        lat = rpc.lat_off + rng.uniform(-1, 1, 500) * rpc.lat_scale
        z = rpc.height_off + rng.uniform(-1, 1, 500) * rpc.height_scale
        col, row = rpc_project(rpc, lon, lat, z)
        with RPCTransformer(rpc) as t:
            g_row, g_col = t.rowcol(lon, lat, zs=z, op=lambda v: v)
        assert np.abs(col - np.asarray(g_col)).max() < 1e-6
        assert np.abs(row - np.asarray(g_row)).max() < 1e-6
        cols, rows = rng.uniform(0, 800, 50), rng.uniform(0, 800, 50)
        lo, la = rpc_locate(rpc, cols, rows, 300.0)
        back_c, back_r = rpc_project(rpc, lo, la, 300.0)
        assert np.abs(back_c - cols).max() < 1e-6 and np.abs(back_r - rows).max() < 1e-6
        with RPCTransformer(rpc, RPC_HEIGHT=300) as t:  # GDAL iterates to 0.1 px
            gx, gy = t.xy(rows, cols, offset="ul")
        gc, gr = rpc_project(rpc, np.asarray(gx), np.asarray(gy), 300.0)
        assert np.abs(gc - cols).max() < 0.15 and np.abs(gr - rows).max() < 0.15


def test_quickbird_rpcs_hit_the_surveyed_points_up_to_a_constant_bias(qb2, gcps):
    """The real scene's RPCs put its 5 surveyed points at a common offset from where they
    are in the image ((3.5, 2.6) px, the RPC's bias); around it, within a fifth of a pixel."""
    rpc = qb2[1]
    ji = np.array([g[:2] for g in gcps])
    col, row = rpc_project(rpc, *np.array([g[2:] for g in gcps]).T)
    miss = np.column_stack([col, row]) - ji
    bias = miss.mean(axis=0)
    assert 3 < bias[0] < 4 and 2 < bias[1] < 3
    assert np.abs(miss - bias).max() < 0.2


def test_xml_layouts(tmp_path):
    root = zy3.ET.fromstring(sasmac_xml("FWD", "42", "ProductInfo"))
    meta = zy3.parse_metadata(root, zy3.SASMAC)
    assert (meta.satellite, meta.sensor, meta.product_id, meta.orbit_id) == (
        "ZY3",
        "FWD",
        "42",
        "2731",
    )
    assert meta.acquisition_time.isoformat() == "2015-01-01T08:31:12.500000+00:00"
    assert (meta.cloud_cover, meta.sun_elevation, meta.sun_azimuth) == (7, 61.25, 78.5)
    # the GDAL fork's compact time, SunElevation, and missing elements
    bare = zy3.ET.fromstring(
        "<sensor_corrected_metadata><productInfo><SunElevation>40</SunElevation>"
        "<TimeStamp><CenterTime>20150826022412.3</CenterTime></TimeStamp>"
        "</productInfo></sensor_corrected_metadata>"
    )
    meta = zy3.parse_metadata(bare, zy3.SASMAC)
    assert meta.acquisition_time.isoformat() == "2015-08-26T02:24:12.300000+00:00"
    assert meta.sun_elevation == 40 and meta.cloud_cover is None and meta.sensor is None
    meta = zy3.parse_metadata(zy3.ET.fromstring(cresda_xml("MUX", "9")), zy3.CRESDA)
    assert meta.acquisition_time.isoformat() == "2015-01-01T08:31:22+00:00"  # start/end mid
    assert (meta.sun_elevation, meta.sun_azimuth, meta.cloud_cover) == (59.5, 80.25, 12)
    assert (meta.product_id, meta.product_level) == ("9", "LEVEL1A")


# -- ingest at a constant height ----------------------------------------------------------


def test_sasmac_folder_ingests_with_its_metadata(sasmac_run):
    result, cat = sasmac_run
    assert result.exit_code == 3 and len(result.records) == 4  # notes.txt is not taken
    nad = cat[f"ZY3_NAD_{STEM}0001234567"]
    mux = cat[f"ZY3_MUX_{STEM}0001234568"]
    for row in (nad, mux):
        assert row["status"] == "complete", row["message"]
        assert row["raster_type"] == "ZY3-SASMAC"
        assert str(row["acquisition_time"]) == "2015-01-01 08:31:12.500000+00:00"
        assert (row["cloud_cover"], row["sun_elevation"], row["sun_azimuth"]) == (7, 61.25, 78.5)
        assert row["satellite"] == "ZY3" and row["metadata_layout"] == "ZY3-SASMAC"
        assert row["terrain"] == "height 230 m"
        assert CRS.from_wkt(row["crs"]).to_epsg() == 32735  # the scene's UTM zone
    assert nad["sensor"] == "ZY-3 NAD" and nad["band_names"] == ["PAN"]
    assert nad["rpc_source"].endswith(".rpb") and mux["rpc_source"].endswith("_rpc.txt")
    assert mux["sensor"] == "ZY-3 MUX" and mux["band_names"] == ["B1", "B2", "B3", "B4"]
    assert (nad["product_id"], mux["product_id"]) == ("1234567", "1234568")


def test_a_product_without_rpcs_or_of_the_other_layout_fails_alone(sasmac_run):
    _, cat = sasmac_run
    fwd = cat[f"ZY3_FWD_{STEM}0001234569"]
    assert fwd["status"] == "failed"
    assert "has no RPCs" in fwd["message"] and ".rpb" in fwd["message"]
    bwd = cat[f"ZY3_BWD_{STEM}0001234570"]
    assert bwd["status"] == "failed"
    assert "looks like a ZY3-CRESDA product" in bwd["message"] and "ZY3-CRESDA" in bwd["message"]


def test_chunks_equal_gdals_whole_image_rpc_warp(sasmac_run, qb2):
    """Every stored pixel is GDAL's whole-image RPC orthorectification on the same grid, and
    that equals gdalwarp (rasterio.warp.reproject with rpcs=) on a DEM flat at constantZ."""
    result, cat = sasmac_run
    for key in (f"ZY3_NAD_{STEM}0001234567", f"ZY3_MUX_{STEM}0001234568"):
        row = cat[key]
        grid = _grid(row)
        assert grid.height > 256 and grid.width > 256  # several chunks per axis
        stored = _stored(result.store, row)
        tif = row["source_uris"][0]
        whole, covered = warp_rpc(
            tif, qb2[1], grid, "nearest", bands=list(range(1, len(row["band_names"]) + 1)),
            dtype=row["dtype"], options={"RPC_HEIGHT": str(CONSTANT_Z)},
        )  # fmt: skip
        assert covered.mean() > 0.5
        np.testing.assert_array_equal(stored, whole)
    row = cat[f"ZY3_NAD_{STEM}0001234567"]
    grid = _grid(row)
    flat = Path(result.store).parent / "flat.tif"
    with rasterio.open(flat, "w", driver="GTiff", width=400, height=400, count=1, dtype="float32",
                       crs="EPSG:4326", transform=Affine(0.001, 0, 24.2, 0, -0.001, -33.5)) as d:  # fmt: skip
        d.write(np.full((1, 400, 400), CONSTANT_Z, "float32"))
    gdalwarp = np.zeros(grid.shape, "uint8")
    with rasterio.open(row["source_uris"][0]) as src:
        reproject(
            src.read(1), gdalwarp, rpcs=qb2[1], src_crs="EPSG:4326",
            dst_crs=grid.crs.to_wkt(), dst_transform=grid.transform, dst_nodata=0,
            resampling=Resampling.nearest, RPC_DEM=str(flat),
        )  # fmt: skip
    np.testing.assert_array_equal(_stored(result.store, row)[0], gdalwarp)


def test_pixels_land_where_the_rpcs_put_the_surveyed_points(sasmac_run, qb2, gcps):
    """The MUX product's bands hold each pixel's own source column and row: at the ground
    position of each surveyed point inside the image, the stored pixel came from within a
    pixel of where the RPC model puts that point on the terrain used."""
    result, cat = sasmac_run
    row = cat[f"ZY3_MUX_{STEM}0001234568"]
    grid = _grid(row)
    stored = _stored(result.store, row)
    to_grid = Transformer.from_crs("EPSG:4326", grid.crs, always_xy=True)
    footprint = shapely.from_wkb(row["footprint"])
    inside = [g for g in gcps if 0 <= g[0] < 850 and 0 <= g[1] < 1450]
    assert len(inside) == 3
    for _, _, lon, lat, _ in inside:
        assert footprint.contains(shapely.Point(lon, lat))
        x, y = to_grid.transform(lon, lat)
        c, r = ~grid.transform @ (x, y)
        src_col, src_row = stored[0, int(r), int(c)], stored[1, int(r), int(c)]
        exp_c, exp_r = rpc_project(qb2[1], lon, lat, CONSTANT_Z)
        # the output cell (≈ a source pixel) plus nearest's half pixel
        assert abs(src_col + 0.5 - exp_c) < 1.5 and abs(src_row + 0.5 - exp_r) < 1.5


def test_footprint_lies_where_gdal_puts_the_corners(sasmac_run, qb2):
    _, cat = sasmac_run
    row = cat[f"ZY3_NAD_{STEM}0001234567"]
    footprint = shapely.from_wkb(row["footprint"])
    with RPCTransformer(qb2[1], RPC_HEIGHT=CONSTANT_Z) as t:
        lon, lat = t.xy([0.5, 0.5, 1449.5, 1449.5], [0.5, 849.5, 849.5, 0.5])
    # the catalog footprint is traced from the stored pixels (a coarse mask): the corner
    # pixels are inside it, and it is the RPC outline within a few cells
    corners = shapely.points(np.column_stack([lon, lat]))
    assert shapely.contains(footprint, corners).all()
    grid = _grid(row)
    to_grid = Transformer.from_crs("EPSG:4326", grid.crs, always_xy=True)
    with RPCTransformer(qb2[1], RPC_HEIGHT=CONSTANT_Z) as t:
        ol, oa = t.xy([0, 0, 1450, 1450], [0, 850, 850, 0], offset="ul")
    rpc_outline = shapely.Polygon(np.column_stack(to_grid.transform(ol, oa)))
    fp = shapely.transform(footprint, lambda xy: np.column_stack(to_grid.transform(*xy.T)))
    assert fp.symmetric_difference(rpc_outline).area < 0.03 * rpc_outline.area


def test_the_planned_footprint_is_the_rpc_outline_on_the_terrain(tmp_path, qb2, dem_path):
    pixels, rpc = qb2
    tif = make_product(tmp_path, "NAD", "0000000001", pixels, rpc, "rpb", sasmac_xml("NAD", "1"))
    src = zy3.sasmac.probe(str(tif), str(tif), tif.stem, {"constantZ": 500})
    part = src.parts[0]
    assert part.georef == "rpcs" and dict(part.warp_options) == {"RPC_HEIGHT": "500.0"}
    to_utm = Transformer.from_crs("EPSG:4326", part.grid.crs, always_xy=True)
    with RPCTransformer(rpc, RPC_HEIGHT=500) as t:
        lon, lat = t.xy([0, 0, 1450, 1450], [0, 850, 850, 0], offset="ul")
    gx, gy = to_utm.transform(lon, lat)
    ring = np.asarray(src.footprint.exterior.coords)
    for x, y in zip(gx, gy, strict=True):  # GDAL's corners (its 0.1 px inversion) are ours
        assert np.hypot(*(ring - (x, y)).T).min() < 0.15 * part.grid.resolution[0]
    # on a DEM: GDAL's transformer (RPC_DEM, bilinear) puts the corners on our outline too
    src = zy3.sasmac.probe(str(tif), str(tif), tif.stem, {"dem": {"uri": str(dem_path)}})
    with RPCTransformer(rpc, RPC_DEM=str(dem_path), RPC_DEMINTERPOLATION="bilinear") as t:
        lon, lat = t.xy([0, 0, 1450, 1450], [0, 850, 850, 0], offset="ul")
    gx, gy = to_utm.transform(lon, lat)
    ring = np.asarray(src.footprint.exterior.coords)
    for x, y in zip(gx, gy, strict=True):
        assert np.hypot(*(ring - (x, y)).T).min() < 0.15 * part.grid.resolution[0]
    assert dict(src.parts[0].warp_options) == {
        "RPC_DEM": str(dem_path),
        "RPC_DEMINTERPOLATION": "bilinear",
    }
    # the default height is the RPC's HEIGHT_OFF
    src = zy3.sasmac.probe(str(tif), str(tif), tif.stem, {})
    assert dict(src.parts[0].warp_options) == {"RPC_HEIGHT": repr(rpc.height_off)}


# -- ingest on a DEM ----------------------------------------------------------------------


def test_cresda_on_a_dem_is_gdalwarp_and_differs_from_a_constant_height(cresda_run, qb2, dem_path):
    result, cat, tif = cresda_run
    assert result.exit_code == 0
    row = cat[f"ZY3_NAD_{STEM}0007654321"]
    assert row["raster_type"] == "ZY3-CRESDA" and row["metadata_layout"] == "ZY3-CRESDA"
    assert str(row["acquisition_time"]) == "2015-01-01 08:31:22+00:00"
    assert (row["cloud_cover"], row["sun_elevation"], row["sun_azimuth"]) == (12, 59.5, 80.25)
    assert row["terrain"] == "dem" and row["sensor"] == "ZY-3 NAD"
    assert row["source_uris"] == [str(tif.with_suffix(".xml"))]
    grid = _grid(row)
    stored = _stored(result.store, row)[0]
    gdalwarp = np.zeros(grid.shape, "uint8")  # with RPC_DEM gdalwarp's transformer is exact
    with rasterio.open(tif) as src:
        reproject(
            src.read(1), gdalwarp, rpcs=qb2[1], src_crs="EPSG:4326",
            dst_crs=grid.crs.to_wkt(), dst_transform=grid.transform, dst_nodata=0,
            resampling=Resampling.nearest, RPC_DEM=str(dem_path), RPC_DEMINTERPOLATION="bilinear",
        )  # fmt: skip
    assert (gdalwarp > 0).mean() > 0.5
    np.testing.assert_array_equal(stored, gdalwarp)
    flat, _ = warp_rpc(
        str(tif), qb2[1], grid, "nearest", bands=[1], dtype="uint8",
        options={"RPC_HEIGHT": repr(qb2[1].height_off)},
    )  # fmt: skip
    both = (flat[0] > 0) & (stored > 0)
    assert (flat[0] != stored)[both].mean() > 0.5  # the relief moves most pixels


def test_an_archive_is_read_in_place(cresda_run):
    result, cat, _ = cresda_run
    plain, packed = cat[f"ZY3_NAD_{STEM}0007654321"], cat[f"ZY3_NAD_{STEM}0007654322"]
    assert packed["status"] == "complete", packed["message"]
    assert packed["source_uris"][0].endswith(".tar.gz") and packed["product_id"] == "7654322"
    assert packed["rpc_source"].endswith("_rpc.txt")
    assert packed["grid_transform"] == plain["grid_transform"]
    np.testing.assert_array_equal(_stored(result.store, packed), _stored(result.store, plain))


def test_an_archive_of_several_products_names_them(qb2, tmp_path):
    from engine.request import InputRasters
    from engine.sources import resolve_sources

    pixels, rpc = qb2
    make_product(tmp_path, "NAD", "0000000011", pixels, rpc, "rpb", sasmac_xml("NAD", "11"))
    b = make_product(tmp_path, "FWD", "0000000012", pixels, rpc, "rpb", sasmac_xml("FWD", "12"))
    zipped = tmp_path / "scenes.zip"
    with zipfile.ZipFile(zipped, "w") as zf:
        for p in tmp_path.glob("ZY3_*"):
            zf.write(p, f"delivery/{p.name}")
    with pytest.raises(ImageError, match=r"holds 2 ZY-3 images .*name one as .*scenes.zip!/"):
        zy3.sasmac.probe(str(zipped), str(zipped), "scenes", {})
    (ref,) = resolve_sources(InputRasters("uris", (f"{zipped}!/delivery/{b.name}",)))
    src = zy3.sasmac.probe(ref.uri, ref.gdal_path, ref.name, {})
    assert src.parts[0].path == f"/vsizip/{zipped}/delivery/{b.name}"
    assert src.sensor == "ZY-3 FWD" and src.extra["product_id"] == "12"


def test_bad_dem_is_a_request_error_before_anything_is_written(client, qb2, tmp_path):
    pixels, rpc = qb2
    tif = make_product(tmp_path, "NAD", "0000000002", pixels, rpc, "rpb", cresda_xml("NAD", "2"))
    with pytest.raises(RequestError, match="dem"):
        create_image_collection(
            [str(tif)],
            {
                "rasterTypeName": "ZY3-CRESDA",
                "rasterTypeParameters": {"dem": {"uri": str(tmp_path / "no.tif")}},
            },
            image_collection=str(tmp_path / "out.zarr"),
            client=client,
        )
    assert not (tmp_path / "out.zarr").exists()


def test_dem_not_covering_the_scene_fails_the_image(qb2, tmp_path):
    pixels, rpc = qb2
    tif = make_product(tmp_path, "NAD", "0000000003", pixels, rpc, "rpb", cresda_xml("NAD", "3"))
    dem = tmp_path / "far.tif"
    with rasterio.open(dem, "w", driver="GTiff", width=10, height=10, count=1, dtype="float32",
                       crs="EPSG:4326", transform=Affine(0.01, 0, 10, 0, -0.01, 50)) as d:  # fmt: skip
        d.write(np.zeros((1, 10, 10), "float32"))
    with pytest.raises(ImageError, match="DEM does not cover"):
        zy3.cresda.probe(str(tif), str(tif), tif.stem, {"dem": {"uri": str(dem)}})


def test_recognise_and_raster_dataset_refusal(qb2, tmp_path):
    pixels, rpc = qb2
    tif = make_product(tmp_path, "MUX", "0000000004", pixels, rpc, "rpb", cresda_xml("MUX", "4"))
    assert zy3.cresda.recognise(str(tif), str(tif)) == "a ZY3-CRESDA product (ZY-3 MUX)"
    assert zy3.sasmac.recognise(str(tif), str(tif)) is None
    assert zy3.recognise(str(tif), str(tif)) == "a ZY3-CRESDA product (ZY-3 MUX)"
    assert zy3.recognise(str(tmp_path / "scene.tif"), str(tmp_path / "scene.tif")) is None
    # an image georeferenced only by RPC tags: Raster Dataset points at the ZY-3 types
    tagged = tmp_path / "tagged.tif"
    with rasterio.open(tagged, "w", driver="GTiff", width=850, height=1450, count=1,
                       dtype="uint8") as dst:  # fmt: skip
        dst.write(pixels)
        dst.rpcs = rpc
    with pytest.raises(ImageError, match=r"only by RPCs; use a satellite raster type \(ZY3-SASMAC"):
        raster_dataset.probe(str(tagged), str(tagged), "tagged", {})
    # a ZY-3 product whose RPCs are TIFF tags (no sidecar) ingests from them
    (tmp_path / f"ZY3_MUX_{STEM}0000000005.xml").write_text(cresda_xml("MUX", "5"))
    tagged.rename(tmp_path / f"ZY3_MUX_{STEM}0000000005.tif")
    src = zy3.cresda.probe(
        str(tmp_path / f"ZY3_MUX_{STEM}0000000005.tif"),
        str(tmp_path / f"ZY3_MUX_{STEM}0000000005.tif"),
        "x",
        {},
    )
    assert src.extra["rpc_source"] == "tiff tags" and src.parts[0].model.lat_off == rpc.lat_off


def test_metadata_is_optional_but_must_be_zy3(qb2, tmp_path):
    pixels, rpc = qb2
    tif = make_product(tmp_path, "BWD", "0000000006", pixels, rpc, "txt", None)
    src = zy3.sasmac.probe(str(tif), str(tif), tif.stem, {})  # no XML: the image still ingests
    assert src.acquisition_time is None and src.cloud_cover is None
    assert src.sensor == "ZY-3 BWD" and src.extra["metadata_layout"] is None
    tif.with_suffix(".xml").write_text(cresda_xml("BWD", "6").replace(">ZY3<", ">GF1<"))
    with pytest.raises(ImageError, match="names satellite 'GF1', not ZY-3"):
        zy3.cresda.probe(str(tif), str(tif), tif.stem, {})
    with pytest.raises(ImageError, match="metadata file without its image"):
        tif.unlink()
        zy3.cresda.probe(str(tif.with_suffix(".xml")), str(tif.with_suffix(".xml")), "x", {})


def test_interpolating_methods_chunk_like_the_whole_image(qb2, tmp_path):
    """Downsampling bilinear/cubic onto 9 m cells in 256-pixel chunks, the image's resampling
    scale fixed: identical to the whole-image warp with the exact transformer, within 1 DN
    with the 1e-4 px one the engine uses for interpolating methods."""
    pixels, rpc = qb2
    tif = make_product(tmp_path, "NAD", "0000000007", pixels, rpc, "rpb", None)
    grid = Grid("EPSG:32735", Affine(9, 0, 255084, 0, -9, 6273756), (1066, 671))
    opts = {"RPC_HEIGHT": "230"}
    for method, tol in (("bilinear", 0.0), ("cubic", 0.0), ("bilinear", 1e-4)):
        kw = dict(bands=[1], dtype="uint8", options=opts, scale=(0.72, 0.72), tolerance=tol)
        whole, covered = warp_rpc(str(tif), rpc, grid, method, **kw)
        chunked = np.zeros_like(whole)
        for r in range(0, grid.height, 256):
            for c in range(0, grid.width, 256):
                sub = grid.window(r, c, min(256, grid.height - r), min(256, grid.width - c))
                chunked[:, r : r + sub.height, c : c + sub.width] = warp_rpc(
                    str(tif), rpc, sub, method, **kw
                )[0]
        diff = np.abs(chunked.astype(int) - whole)
        assert covered.mean() > 0.5
        assert diff.max() == 0 if tol == 0 else diff.max() <= 1, (method, tol)
