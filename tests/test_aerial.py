"""The Aerial and ScannedAerial raster types on the real NGI DMC frames of ../shared/data/aerial.

Checks a photogrammetrist would make: the two overlapping frames, orthorectified on the
DEM, show the same ground at the same place (image matching in the overlap); on a constant
height they do not (relief parallax); the frames' own (approximate) georeferencing agrees
with the model within what that approximation ignores; a simulated film scan with
fiducials orthorectifies like the digital frame it was made from.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import rasterio
from affine import Affine

from engine import create_image_collection, open_collection
from engine.camera.frame_model import FrameModel, rotation_from_opk
from engine.camera.placement import project_to_terrain
from engine.dem import Terrain
from engine.errors import RequestError
from engine.grid import Grid
from engine.rastertypes import aerial, scanned_aerial
from engine.sources import SourceRef
from graphs.camera_warp import resample, warp_camera_part

NAMES = ["3324c_2015_1004_05_0182_RGB", "3324c_2015_1004_05_0184_RGB"]


@pytest.fixture(scope="module")
def ngi(shared_data):
    d = shared_data / "aerial"
    refs = [SourceRef(str(d / f"{n}.tif"), str(d / f"{n}.tif"), n) for n in NAMES]
    params = {"frames": str(d / "ngi_xyz_opk.csv"), "camera": str(d / "ngi_int_param.yaml")}
    return d, refs, params


def overlap_grid(a, b, cell=6.0) -> Grid:
    left, bottom, right, top = a.footprint.intersection(b.footprint).bounds
    shape = (int((top - bottom) / cell), int((right - left) / cell))
    return Grid(a.parts[0].grid.crs, Affine(cell, 0, left, 0, -cell, top), shape)


def gray_ortho(src, grid) -> np.ndarray:
    data, _ = warp_camera_part(src.parts[0], grid, "bilinear", 0.0, "float32")
    gray = data.mean(axis=0)
    gray[(data == 0).all(axis=0)] = np.nan
    return gray


def window_shifts(a, b, win=64, step=48) -> np.ndarray:
    """(row, col) shift of ``b`` against ``a`` in every textured window both cover
    (phase correlation, whole pixels)."""
    out = []
    for r in range(0, a.shape[0] - win, step):
        for c in range(0, a.shape[1] - win, step):
            wa, wb = a[r : r + win, c : c + win], b[r : r + win, c : c + win]
            if np.isnan(wa).any() or np.isnan(wb).any() or wa.std() < 5 or wb.std() < 5:
                continue
            f = np.fft.fft2(wa - wa.mean()) * np.conj(np.fft.fft2(wb - wb.mean()))
            corr = np.real(np.fft.ifft2(f / (np.abs(f) + 1e-12)))
            if corr.max() < 0.15:  # no reliable match in this window
                continue
            i, j = np.unravel_index(corr.argmax(), corr.shape)
            out.append((i - win if i > win // 2 else i, j - win if j > win // 2 else j))
    return np.array(out, dtype=float).reshape(-1, 2)


def test_overlapping_frames_agree_on_the_dem_not_on_a_flat_ground(ngi):
    """Relief parallax: the frames are 2.6 km apart at 4.8 km over terrain spanning
    150-780 m, so on a flat 411 m ground their orthos disagree by ~100 m; on the DEM every
    matched window must agree to within one 6 m cell."""
    d, refs, params = ngi
    dem = aerial.probe_batch(refs, {**params, "dem": {"uri": str(d / "dem.tif")}})
    flat = aerial.probe_batch(refs, {**params, "constantZ": 411})
    on_dem = window_shifts(*(gray_ortho(s, overlap_grid(*dem)) for s in dem)) * 6.0
    on_flat = window_shifts(*(gray_ortho(s, overlap_grid(*flat)) for s in flat)) * 6.0
    rms_dem = float(np.sqrt((on_dem**2).sum(axis=1).mean()))
    rms_flat = float(np.sqrt((on_flat**2).sum(axis=1).mean()))
    print(f"\nNGI overlap: {len(on_dem)} windows matched on the DEM, shift RMS {rms_dem:.1f} m;"
          f" {len(on_flat)} on constantZ 411, shift RMS {rms_flat:.1f} m")  # fmt: skip
    assert len(on_dem) >= 40 and np.abs(on_dem).max() <= 6.0
    assert rms_flat > 40.0


def rmse_against_own_georeferencing(src, model=None) -> float:
    """RMSE (m) between the ground positions of a 13 x 9 grid of frame pixels through the
    model and where the frame's own geotransform puts them."""
    model = model or src.parts[0].model
    with rasterio.open(src.parts[0].path) as ds:
        gt, (h, w) = ds.transform, ds.shape
    rows, cols = np.meshgrid(np.linspace(0, h, 13), np.linspace(0, w, 9), indexing="ij")
    x, y, _ = project_to_terrain(model, cols.ravel(), rows.ravel())
    gx, gy = gt @ (cols.ravel(), rows.ravel())
    return float(np.sqrt(np.mean((x - gx) ** 2 + (y - gy) ** 2)))


def test_frames_land_where_their_own_georeferencing_puts_them(ngi):
    """The frames' geotransforms are a nadir, flat-ground approximation (their centres sit
    within 4 m of the camera X, Y; they ignore the 0.3-0.5° omega/phi, i.e. 25-40 m at 4.8
    km, and relief of ±300 m, up to ~200 m at the frame edges). The model with omega = phi
    = 0 on the plane their 5.64 m scale implies (Z = 559 m) reproduces 0184's to a pixel;
    the full model differs from them by what they ignore: under 150 m (26 px)."""
    d, refs, params = ngi
    results = {}
    for label, terrain in (
        ("DEM", {"dem": {"uri": str(d / "dem.tif")}}),
        ("Z 411", {"constantZ": 411}),
    ):
        for src in aerial.probe_batch(refs, {**params, **terrain}):
            results[(label, src.name[-8:])] = rmse_against_own_georeferencing(src)
    print("\nRMSE against the frames' own georeferencing (m): "
          + ", ".join(f"{k[1]} {k[0]}: {v:.1f}" for k, v in results.items()))  # fmt: skip
    assert all(v < 150.0 for v in results.values())
    src = aerial.probe_batch(refs[1:], {**params, "constantZ": 559})[0]
    m = src.parts[0].model
    level = FrameModel(m.interior, m.centre, tuple(rotation_from_opk(0, 0, src.extra["kappa"]).ravel()),
                       m.crs_wkt, m.image_shape, Terrain(constant=559.0))  # fmt: skip
    assert rmse_against_own_georeferencing(src, level) < 10.0


def test_catalog_columns_and_grid(ngi):
    d, refs, params = ngi
    src = aerial.probe_batch(refs, {**params, "dem": {"uri": str(d / "dem.tif")}})[0]
    e = src.extra
    assert (e["x"], e["z"], e["kappa"]) == (-55094.504, 5258.308, -179.087)
    assert e["camera"] == "Integraph DMC" and e["focal_length_mm"] == 120.0
    # GSD ≈ flight height × pixel / focal (0.144 mm pixels, 120 mm lens; tilt ~0.4°)
    assert e["gsd"] == pytest.approx(e["flight_height"] * 0.144 / 120.0, rel=0.03)
    assert src.parts[0].band_names == ("b1", "b2", "b3") and src.nodata == 0


def test_tables_in_other_forms_give_the_same_poses(ngi):
    """camera_pos_ori.txt (legacy, no header), the orthority GeoJSON (radians, world_crs)
    and inline rows with framesSR all give the CSV's placement."""
    d, refs, params = ngi
    base = aerial.probe_batch(refs[:1], {**params, "constantZ": 411})[0]
    prj = (d / "ngi_xyz_opk.prj").read_text().replace("=True", "")
    row = [NAMES[0], -55094.504, -3727407.037, 5258.308, -0.349, 0.298, -179.087]
    for frames, extra in (
        (str(d / "camera_pos_ori.txt"), {"framesSR": prj}),
        (str(d / "ngi_ext_param.geojson"), {}),
        ([row], {"framesSR": prj}),
    ):
        src = aerial.probe_batch(refs[:1], {**params, "frames": frames, "constantZ": 411, **extra})[
            0
        ]
        assert not isinstance(src, Exception), src
        assert src.footprint.symmetric_difference(base.footprint).area < 1e-3 * base.footprint.area


def test_aerial_request_errors_and_unknown_frame(ngi, tmp_path):
    _, refs, params = ngi
    with pytest.raises(RequestError, match="ground height"):
        aerial.probe_batch(refs, params)
    with pytest.raises(RequestError, match="CRS is unknown"):
        aerial.probe_batch(refs, {**params, "frames": [["a", 1, 2, 3, 0, 0, 0]], "constantZ": 0})
    with pytest.raises(RequestError, match="micrometres"):
        cam = {"focalLength": 120, "pixelSize": 0.012, "columns": 640, "rows": 1152}
        aerial.probe_batch(refs, {**params, "camera": cam, "constantZ": 411})
    other = SourceRef(str(tmp_path / "stray.tif"), str(tmp_path / "stray.tif"), "stray")
    out = aerial.probe_batch([refs[0], other], {**params, "constantZ": 411})
    assert not isinstance(out[0], Exception)
    assert "no row of the frames table names it" in out[1].reason


def test_aerial_ingest_end_to_end(ngi, tmp_path, client):
    d, refs, params = ngi
    result = create_image_collection(
        {"uris": [r.uri for r in refs]},
        {
            "rasterTypeName": "Aerial",
            "rasterTypeParameters": {**params, "dem": {"uri": str(d / "dem.tif")}},
        },
        str(tmp_path / "aerial.zarr"),
        {"cellSize": 12},
        client=client,
    )
    assert result.exit_code == 0, result.to_dict()
    coll = open_collection(str(tmp_path / "aerial.zarr"))
    assert coll.info.cell_size == 12 and len(coll.image_ids) == 2
    for image_id in coll.image_ids:
        ds = coll.image(image_id)
        covered = np.isfinite(ds["b1"].values)  # nodata 0 reads back masked (NaN)
        # a 640 x 1152 frame of ~6 m pixels covers ~26 km²; at 12 m cells ~180 000 cells
        assert 150_000 < covered.sum() < 210_000


# -- ScannedAerial ----------------------------------------------------------------------

FILM = [[-44, -80], [44, -80], [44, 80], [-44, 80], [0, -80], [0, 80], [-44, 0], [44, 0]]


def test_scanned_frame_orthorectifies_like_the_digital_one(ngi, tmp_path):
    """Simulate a film scan of frame 0184: film (0.144 mm DMC pixels) scanned at 150 µm,
    rotated 0.8°, shifted; fiducials measured with 0.2 px noise. Orthorectified through
    the fitted film → pixel affine it must match the digital frame's ortho."""
    d, refs, params = ngi
    terrain = {"dem": {"uri": str(d / "dem.tif")}}
    digital = aerial.probe_batch(refs[1:], {**params, **terrain})[0]
    with rasterio.open(refs[1].gdal_path) as ds:
        frame = ds.read().astype("float64")
    scan_mm = 0.150
    ang = math.radians(0.8)
    a, b = math.cos(ang) / scan_mm, -math.sin(ang) / scan_mm
    aff = (a, b, 340.2, -b * 1, -a * 1, 598.7)  # film (x right, y up) → scan (col, row)
    h, w = 1200, 680
    rows, cols = np.meshgrid(np.arange(h) + 0.5, np.arange(w) + 0.5, indexing="ij")
    det = aff[0] * aff[4] - aff[1] * aff[3]
    u, v = cols.ravel() - aff[2], rows.ravel() - aff[5]
    fx, fy = (aff[4] * u - aff[1] * v) / det, (aff[0] * v - aff[3] * u) / det
    src_col, src_row = fx / 0.144 + 320, 576 - fy / 0.144
    inside = (src_col >= 0) & (src_col < 640) & (src_row >= 0) & (src_row < 1152)
    values, ok = resample(
        frame, src_col[inside], src_row[inside], "bilinear", frame.all(axis=0) != 0
    )
    scan = np.zeros((3, h * w))
    scan[:, np.flatnonzero(inside)[ok]] = np.clip(np.rint(values[:, ok]), 1, 255)
    path = tmp_path / f"{NAMES[1]}.tif"
    with rasterio.open(
        path, "w", driver="GTiff", width=w, height=h, count=3, dtype="uint8", nodata=0
    ) as out:
        out.write(scan.reshape(3, h, w).astype("uint8"))
    film = np.array(FILM, float)
    marks = np.column_stack([aff[0] * film[:, 0] + aff[1] * film[:, 1] + aff[2],
                             aff[3] * film[:, 0] + aff[4] * film[:, 1] + aff[5]])  # fmt: skip
    marks += np.random.default_rng(5).normal(0, 0.2, marks.shape)
    camera = {"focalLength": 120, "sensorSize": [92.16, 165.888], "imageSize": [640, 1152],
              "fiducials": FILM}  # fmt: skip
    sparams = {**params, **terrain, "camera": camera, "scanningResolution": 150,
               "fiducialPixels": {NAMES[1]: marks.tolist()}}  # fmt: skip
    ref = SourceRef(str(path), str(path), NAMES[1])
    scanned = scanned_aerial.probe_batch([ref], sparams)[0]
    assert not isinstance(scanned, Exception), scanned
    assert 0.05 < scanned.extra["fiducial_rmse_px"] < 0.4
    grid = overlap_grid(digital, digital, cell=6.0)
    one, two = gray_ortho(digital, grid), gray_ortho(scanned, grid)
    both = ~np.isnan(one) & ~np.isnan(two)
    assert both.mean() > 0.9
    assert np.abs(one - two)[both].mean() < 4.0  # grey levels, after two resamplings
    assert np.abs(window_shifts(one, two)).max() == 0
    # a resolution the fiducials contradict fails the frame, with the reason
    wrong = scanned_aerial.probe_batch([ref], {**sparams, "scanningResolution": 100})[0]
    assert "fiducials give 149.99" in wrong.reason and "scanningResolution 100" in wrong.reason


def test_scan_without_fiducials_is_centred_at_the_scanning_resolution(ngi):
    """Without fiducials a scan is taken as centred and axis-aligned at
    scanningResolution: the digital DMC frame (0.144 mm pixels) given as a 144 µm scan
    lands exactly where the Aerial type puts it."""
    _, refs, params = ngi
    terrain = {"constantZ": 411}
    digital = aerial.probe_batch(refs[:1], {**params, **terrain})[0]
    scan = scanned_aerial.probe_batch(refs[:1], {**params, **terrain, "scanningResolution": 144})[0]
    assert scan.extra["scanning_resolution_um"] == 144
    assert (
        scan.footprint.symmetric_difference(digital.footprint).area < 1e-6 * digital.footprint.area
    )
    with pytest.raises(RequestError, match="scanningResolution"):
        scanned_aerial.probe_batch(refs[:1], {**params, **terrain})
