"""The UAV/UAS raster type on the real drone frames of ../shared/data/uav, and the seed's
request shape end to end on synthetic frames rendered from a known ground pattern."""

from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pyarrow.parquet as pq
import pytest
import rasterio
import shapely
from pyproj import Geod, Transformer

from engine import create_image_collection, open_collection
from engine.errors import RequestError
from engine.rastertypes import uav
from engine.sources import SourceRef
from tests.camera_synth import checker, render_frame

FRAMES = [
    "100_0005_0018.tif",
    "DJI_H20N_0006_R.JPG",
    "DJI_H20T.jpg",
    "DJI_XT2.jpg",
    "DJI_XTS.jpg",
    "DSCN0010_nikon_gps.jpg",
    "tiny_drone_image.jpg",
    "tiny_drone_image_2.jpg",
    "tiny_drone_image_multispec.tif",
]


def refs_for(folder, names):
    return [SourceRef(str(folder / n), str(folder / n), n.rsplit(".", 1)[0]) for n in names]


def probe(folder, names, params):
    out = uav.probe_batch(refs_for(folder, names), params)
    return dict(zip(names, out, strict=True))


def nadir_point(src):
    """The GPS position of a placed frame in its model's CRS."""
    lon, lat = src.extra["longitude"], src.extra["latitude"]
    tr = Transformer.from_crs("EPSG:4326", src.parts[0].model.crs_wkt, always_xy=True)
    return shapely.Point(*tr.transform(lon, lat))


@pytest.fixture(scope="module")
def uav_dir(shared_data):
    return shared_data / "uav"


def test_exif_only_each_frame_is_placed_or_fails_with_its_reason(uav_dir):
    out = probe(uav_dir, FRAMES, {})
    reasons = {n: getattr(r, "reason", None) for n, r in out.items()}
    assert "below sea level" in reasons["DJI_XTS.jpg"]
    assert "above the horizon" in reasons["DJI_H20T.jpg"]  # gimbal pitch -10.5°
    assert "above the horizon" in reasons["DJI_XT2.jpg"]  # gimbal pitch 0°
    assert "from the nadir" in reasons["DJI_H20N_0006_R.JPG"]  # gimbal pitch -32.9°
    assert "no altitude" in reasons["DSCN0010_nikon_gps.jpg"]
    for n in ("tiny_drone_image.jpg", "tiny_drone_image_2.jpg", "tiny_drone_image_multispec.tif"):
        assert "give constantZ or dem" in reasons[n]  # above sea level, ground unknown
    assert reasons["100_0005_0018.tif"] is None


def test_dji_phantom_tilted_frame_lands_along_its_gimbal_yaw(uav_dir):
    """The Phantom 4 Pro frame: 99.96 m above take-off (XMP), gimbal pitch -60° (30° off
    nadir), yaw 92.9°. Its principal ray meets the ground H·tan 30° east of the GPS point;
    its near edge (30° - 26.57° half field of view) lies H·tan 3.43° beyond the nadir."""
    src = probe(uav_dir, ["100_0005_0018.tif"], {})["100_0005_0018.tif"]
    e = src.extra
    assert (e["flight_height"], e["heading"], e["heading_source"]) == (99.96, 92.9, "gimbal")
    assert e["camera"] == "DJI FC6310R"
    h = 99.96
    geod = Geod(ellps="WGS84")
    lon, lat, _ = geod.fwd(e["longitude"], e["latitude"], 92.9, h * math.tan(math.radians(30)))
    tr = Transformer.from_crs("EPSG:4326", src.parts[0].model.crs_wkt, always_xy=True)
    principal = shapely.Point(*tr.transform(lon, lat))
    fp = src.footprint
    assert fp.contains(principal.buffer(10))
    near = h * math.tan(math.radians(30 - math.degrees(math.atan(4.4 / 8.8))))
    assert fp.distance(nadir_point(src)) == pytest.approx(near, abs=0.3)
    # GSD at the principal point of a camera tilted by t: (1/cos t + 1/cos² t)/2 × H·p/f
    nadir_gsd = h * (2.41e-3 * 4) / 8.8  # 2.41 µm pixels, frame stored at 1/4 size
    t = math.radians(30)
    assert e["gsd"] == pytest.approx(
        nadir_gsd * (1 / math.cos(t) + 1 / math.cos(t) ** 2) / 2, rel=2e-3
    )


def test_gps_rows_from_the_odm_table_place_the_frame_like_its_exif(uav_dir):
    """odm_lla_rpy.csv holds the frame's position; with the take-off height as constantZ
    (186.57 - 99.96 m) the gps row reproduces the EXIF/XMP placement."""
    lines = (uav_dir / "odm_lla_rpy.csv").read_text().splitlines()[1:]
    rows = [line.split()[:4] for line in lines]  # strings, as the seed sends them
    exif = probe(uav_dir, ["100_0005_0018.tif"], {})["100_0005_0018.tif"]
    for gps_value in (rows, json.dumps(rows)):  # a list, or JSON text as a REST form sends it
        gps = probe(uav_dir, ["100_0005_0018.tif"], {"GPS": gps_value, "constantz": 186.57 - 99.96})
        src = gps["100_0005_0018.tif"]
        assert src.extra["flight_height"] == pytest.approx(99.96, abs=1e-6)
        assert src.footprint.symmetric_difference(exif.footprint).area < 0.01 * exif.footprint.area


def test_ebee_and_micasense_with_constant_ground(uav_dir):
    names = ["tiny_drone_image.jpg", "tiny_drone_image_2.jpg", "tiny_drone_image_multispec.tif"]
    out = probe(uav_dir, names, {"constantZ": 300})
    for n in names[:2]:  # Canon S110: 1.86 µm pixels at 4000 px, frames stored 48 px wide
        src = out[n]
        assert src.extra["heading_source"] == "flight"  # senseFly XMP Camera:Yaw
        assert src.footprint.contains(nadir_point(src))
        pixel_mm = 1.86e-3 * 4000 / 48
        fh = src.extra["altitude"] - 300
        assert src.extra["gsd"] == pytest.approx(fh * pixel_mm / 5.2, rel=1e-4)
        assert src.extra["camera"] == "Canon Canon PowerShot S110"
        assert src.parts[0].band_names == ("b1", "b2", "b3")  # RGB kept as three bands
    # MicaSense: ground at 300 m puts the camera below it
    assert "below the terrain" in out[names[2]].reason
    ms = probe(uav_dir, names[2:], {"constantZ": 200})[names[2]]
    fh = 294.816 - 200
    assert ms.extra["gsd"] == pytest.approx(fh * (2 * 2.42131 / 48) / 5.5, rel=1e-4)
    assert ms.footprint.contains(nadir_point(ms))
    assert ms.dtype == "uint16" and ms.extra["heading_source"] == "north-up"


def test_request_errors_name_the_fix(uav_dir):
    names = ["tiny_drone_image.jpg"]
    cam = {"FocalLength": 20, "PixelSize": 0.0064, "columns": 48, "rows": 36}
    with pytest.raises(RequestError, match="micrometres"):
        probe(uav_dir, names, {"cameraProperties": cam, "constantZ": 300})
    with pytest.raises(RequestError, match="millimetres"):
        probe(uav_dir, names, {"cameraProperties": {"focallength": 0.02}})
    with pytest.raises(RequestError, match="no row names an input image"):
        probe(uav_dir, names, {"gps": [["nothere.jpg", "41", "-81", "400"]]})
    with pytest.raises(RequestError, match="not a number"):
        probe(uav_dir, names, {"gps": [["tiny_drone_image.jpg", "N41", "-81", "400"]]})


# -- the seed's request shape, end to end --------------------------------------------------

CANON = {"Maker": "Canon", "Model": "5D Mark II", "FocalLength": 20, "PixelSize": 10,
         "x0": 0, "y0": 0, "columns": 4000, "rows": 3000}  # fmt: skip
BLOCK = 40.0  # metres, checkerboard on the ground


def test_seed_uav_request_end_to_end(tmp_path, client):
    """gps rows (strings), Canon 5D Mark II cameraProperties, constantZ 300,
    isAltitudeFlightHeight: three frames 300 m above a flat ground at 300 m, rendered from
    a checkerboard; the collection must hold the checkerboard where it is on the ground."""
    frames = tmp_path / "frames"
    frames.mkdir()
    names = ["image1.jpg", "image2.jpg", "image3.jpg"]
    gps = [[n, "10", f"{2 + 0.0025 * k:.4f}", "300"] for k, n in enumerate(names)]
    gps.append(["ghost.jpg", "10", "2.01", "300"])  # names no input
    params = {"gps": gps, "cameraProperties": CANON, "constantZ": 300,
              "isAltitudeFlightHeight": "true"}  # fmt: skip
    # frames stored at 1/20 of the sensor size (200 x 150), as TIFF to keep pixels exact
    for n in [*names, "lost.jpg"]:
        with rasterio.open(frames / n, "w", driver="GTiff", width=200, height=150, count=3,
                           dtype="uint8") as d:  # fmt: skip
            d.write(np.zeros((3, 150, 200), "uint8"))
    refs = refs_for(frames, [*names, "lost.jpg"])
    placed = uav.probe_batch(refs, params)
    assert "no gps row names it" in placed[3].reason and "ghost.jpg" in placed[3].reason
    for k, src in enumerate(placed[:3]):
        model = src.parts[0].model
        e = src.extra
        assert (e["heading"], e["heading_source"]) == (pytest.approx(90, abs=0.01), "track")
        assert (e["flight_height"], model.centre[2]) == (300, 600)
        assert e["gsd"] == pytest.approx(300 * 0.2 / 20, rel=1e-9)  # 200 µm pixels once stored
        assert e["camera"] == "Canon 5D Mark II"
        render_frame(model, frames / names[k], block=BLOCK)
    result = create_image_collection(
        {"uris": [str(frames)]},
        {"rasterTypeName": "UAV/UAS", "rasterTypeParameters": params},
        str(tmp_path / "uav.zarr"),
        {"resamplingMethod": "NEAREST"},
        client=client,
    )
    assert len(result.complete) == 3 and result.exit_code == 3
    [bad] = result.failed
    assert bad.name == "lost" and "ghost.jpg" in bad.message
    coll = open_collection(str(tmp_path / "uav.zarr"))
    table = pq.read_table(tmp_path / "uav.zarr" / "catalog.parquet").to_pylist()
    rows = {r["Name"]: r for r in table}
    assert rows["image2"]["flight_height"] == 300 and rows["image2"]["heading_source"] == "track"
    assert rows["image1"]["latitude"] == 10 and rows["image3"]["longitude"] == pytest.approx(2.005)
    assert coll.info.cell_size == pytest.approx(3.0)
    for image_id in coll.image_ids:
        ds = coll.image(image_id)
        x, y = np.meshgrid(ds.x.values, ds.y.values)
        gsd = 3.0
        for b, var in enumerate(("b1", "b2", "b3")):
            band = ds[var].values
            covered = band > 0  # every checkerboard value is > 0
            fx = np.mod(x + b * BLOCK / 3, BLOCK)
            fy = np.mod(y, BLOCK)
            away = (np.minimum(fx, BLOCK - fx) > 2.5 * gsd) & (
                np.minimum(fy, BLOCK - fy) > 2.5 * gsd
            )
            sel = covered & away
            assert sel.sum() > 0.3 * covered.sum() > 1000
            np.testing.assert_array_equal(band[sel], checker(x, y, BLOCK, b)[sel])
    shutil.rmtree(tmp_path / "uav.zarr")


def test_ebee_yaw_turns_the_frames_so_their_overlap_agrees(uav_dir):
    """The two consecutive eBee frames (4 s apart) overlap; orthorectified with their
    recorded yaw their overlap correlates clearly better than with the yaw turned by 90°,
    180° or 270°: the yaw is the direction of the image top."""
    import dataclasses

    from affine import Affine

    from engine.camera.frame_model import rotation_from_ypr
    from engine.camera.placement import ground_footprint
    from engine.grid import Grid
    from graphs.camera_warp import warp_camera_part

    names = ["tiny_drone_image.jpg", "tiny_drone_image_2.jpg"]
    srcs = list(probe(uav_dir, names, {"constantZ": 300}).values())
    corr = {}
    for turn in (0, 90, 180, 270):
        parts = []
        for s in srcs:
            m = s.parts[0].model
            turned = rotation_from_ypr(s.extra["heading"] + turn)
            m = dataclasses.replace(m, rotation=tuple(turned.ravel()))
            parts.append(dataclasses.replace(s.parts[0], model=m))
        left, bottom, right, top = (
            ground_footprint(parts[0].model).intersection(ground_footprint(parts[1].model)).bounds
        )
        g = Grid(srcs[0].parts[0].grid.crs, Affine(2, 0, left, 0, -2, top),
                 (int((top - bottom) / 2), int((right - left) / 2)))  # fmt: skip
        (a, ca), (b, cb) = (warp_camera_part(p, g, "bilinear", None, "float32") for p in parts)
        both = ca & cb
        corr[turn] = np.corrcoef(a.mean(0)[both], b.mean(0)[both])[0, 1]
    assert corr[0] > 0.5 and corr[0] > max(corr[90], corr[180], corr[270]) + 0.1, corr


def test_exif_only_jpeg_with_orientation(tmp_path):
    """A JPEG whose EXIF carries the GPS position and Orientation 6 (stored turned 90°):
    its ortho must show the ground; read as if upright, it must not."""
    import dataclasses

    from rasterio.io import MemoryFile
    from rasterio.shutil import copy as rio_copy

    from graphs.camera_warp import warp_camera_part

    exif = {"EXIF_Orientation": "6", "EXIF_GPSLatitude": "(10) (0) (0)", "EXIF_GPSLatitudeRef": "N",
            "EXIF_GPSLongitude": "(2) (0) (0)", "EXIF_GPSLongitudeRef": "E",
            "EXIF_GPSAltitude": "(200)", "EXIF_GPSAltitudeRef": "0x00", "EXIF_Make": "Canon",
            "EXIF_Model": "Test", "EXIF_FocalLength": "(20)"}  # fmt: skip
    path = tmp_path / "turned.jpg"

    def write(data):
        with MemoryFile() as mf:
            h, w = data.shape[1:]
            with mf.open(driver="GTiff", width=w, height=h, count=3, dtype="uint8") as ds:
                ds.write(data)
                ds.update_tags(**exif)
            with mf.open() as src:
                rio_copy(src, str(path), driver="JPEG", QUALITY=100)

    write(np.zeros((3, 160, 120), "uint8"))  # stored 120 wide x 160 high: displayed 160 x 120
    cam = {"FocalLength": 20, "PixelSize": 50, "columns": 160, "rows": 120}
    params = {"cameraProperties": cam, "constantZ": 100}
    src = uav.probe(str(path), str(path), "turned", params)
    model = src.parts[0].model
    assert model.orientation == 6 and model.displayed_shape == (120, 160)
    assert src.extra["heading_source"] == "north-up" and src.extra["flight_height"] == 100
    render_frame(model, tmp_path / "tmp.tif", block=30.0)
    with rasterio.open(tmp_path / "tmp.tif") as ds:
        write(ds.read())
    grid = src.parts[0].grid
    x, y = grid.xy(
        *np.meshgrid(np.arange(grid.height) + 0.5, np.arange(grid.width) + 0.5, indexing="ij")
    )
    truth = checker(x, y, 30.0, 0).astype(int)

    def agreement(m):
        part = dataclasses.replace(src.parts[0], model=m)
        data, cov = warp_camera_part(part, grid, "nearest", None, "uint8")
        return (np.abs(data[0].astype(int) - truth)[cov] < 30).mean()

    assert agreement(model) > 0.97
    assert agreement(dataclasses.replace(model, orientation=1, image_shape=(120, 160))) < 0.8


def test_minimum_flight_height_and_dem_heights(uav_dir, tmp_path):
    """MinimumFlightHeight refuses low frames; with a DEM, isAltitudeFlightHeight puts the
    camera that high above the DEM under it, else the altitude is on the DEM's datum."""
    names = ["tiny_drone_image.jpg", "tiny_drone_image_2.jpg"]  # 438.19 / 439.50 m
    out = probe(uav_dir, names, {"constantZ": 300, "MinimumFlightHeight": "139"})
    assert "MinimumFlightHeight" in out[names[0]].reason
    assert out[names[1]].extra["flight_height"] == pytest.approx(139.496)
    from affine import Affine

    dem = tmp_path / "dem.tif"  # geographic DEM under the frames: 250 m + 0.5 m per column
    with rasterio.open(dem, "w", driver="GTiff", width=40, height=40, count=1, dtype="float32",
                       crs="EPSG:4326", transform=Affine(1e-4, 0, -81.708, 0, -1e-4, 41.228)) as d:  # fmt: skip
        d.write((250 + 0.5 * np.arange(40)[None, :] * np.ones((40, 1))).astype("float32"), 1)
    col = (-81.70550108 - -81.708) / 1e-4  # the first frame's column in the DEM
    ground = 250 + 0.5 * (col - 0.5)
    above = probe(uav_dir, names[:1], {"dem": {"uri": str(dem)}, "isAltitudeFlightHeight": True})
    src = above[names[0]]
    assert src.extra["flight_height"] == pytest.approx(438.189)
    assert src.parts[0].model.centre[2] == pytest.approx(ground + 438.189, abs=0.01)
    absolute = probe(uav_dir, names[:1], {"dem": {"uri": str(dem)}})[names[0]]
    assert absolute.extra["flight_height"] == pytest.approx(438.189 - ground, abs=0.01)
