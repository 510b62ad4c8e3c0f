"""The frame-camera model and its ortho kernel (graphs/camera_warp.py).

What a user would check: a pixel sent to the ground and back lands where it started; a
nadir frame's GSD is flight height × pixel / focal; a chunked ortho equals the whole-frame
ortho exactly; where the camera model is affine (a nadir frame over flat ground) the kernel
gives GDAL's warp of the same frame with the equivalent geotransform; nodata and coverage
are carried; and the ortho of a frame rendered from a known ground pattern gives it back.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import rasterio
from affine import Affine
from pyproj import CRS

from engine.camera.frame_model import (
    FrameModel,
    Interior,
    fit_film_to_pixel,
    rotation_from_opk,
    rotation_from_ypr,
)
from engine.camera.placement import (
    PlacementError,
    centre_gsd,
    ground_footprint,
    project_to_terrain,
)
from engine.dem import Terrain
from engine.grid import Grid, chunk_grid
from engine.rastertypes.base import SourcePart
from graphs.camera_warp import warp_camera_part
from graphs.chunk import gdal_warp
from tests.camera_synth import checker, render_frame

UTM = CRS.from_epsg(32633)
CENTRE = (500_000.0, 4_000_000.0)


def model_for(
    *,
    shape=(90, 120),
    heading=30.0,
    pitch=-90.0,
    roll=0.0,
    height=300.0,
    ground=100.0,
    terrain=None,
    orientation=1,
    focal=20.0,
    pixel=0.05,
) -> FrameModel:
    rot = rotation_from_ypr(heading, pitch, roll)
    h, w = shape
    disp = (w, h) if orientation in (5, 6, 7, 8) else (h, w)
    return FrameModel(
        interior=Interior(focal, (pixel, pixel), disp, (0.01, -0.02)),
        centre=(*CENTRE, ground + height),
        rotation=tuple(rot.ravel()),
        crs_wkt=UTM.to_wkt(),
        image_shape=shape,
        terrain=terrain or Terrain(constant=ground),
        orientation=orientation,
    )


def grid_over(model: FrameModel, cell: float, crs=UTM, pad: int = 3) -> Grid:
    fp = ground_footprint(model)
    if crs != UTM:
        from pyproj import Transformer

        tr = Transformer.from_crs(UTM, crs, always_xy=True)
        xs, ys = tr.transform(*np.asarray(fp.exterior.coords).T)
        left, bottom, right, top = min(xs), min(ys), max(xs), max(ys)
    else:
        left, bottom, right, top = fp.bounds
    left, top = (
        math.floor(left / cell) * cell - pad * cell,
        math.ceil(top / cell) * cell + pad * cell,
    )
    w = math.ceil((right - left) / cell) + pad
    h = math.ceil((top - bottom) / cell) + pad
    return Grid(crs, Affine(cell, 0, left, 0, -cell, top), (h, w))


def part_for(model: FrameModel, path, nodata=None, bands=3) -> SourcePart:
    g = Grid(UTM, Affine.identity(), (1, 1))  # the kernel does not use the planning grid
    names = tuple(f"b{i}" for i in range(1, bands + 1))
    return SourcePart(str(path), tuple(range(1, bands + 1)), names, g, "uint8", nodata,
                      georef="camera", model=model)  # fmt: skip


def chunked(part, grid, resampling, nodata, tile):
    out = np.zeros((len(part.band_indexes), *grid.shape), "uint8")
    cov = np.zeros(grid.shape, bool)
    for i in range(math.ceil(grid.height / tile)):
        for j in range(math.ceil(grid.width / tile)):
            g = chunk_grid(grid, i, j, tile)
            data, covered = warp_camera_part(part, g, resampling, nodata, "uint8")
            out[:, i * tile : i * tile + g.height, j * tile : j * tile + g.width] = data
            if covered is not None:
                cov[i * tile : i * tile + g.height, j * tile : j * tile + g.width] = covered
    return out, cov


@pytest.fixture()
def dem_path(tmp_path):
    """A DEM with a slope and a hill under the frames (UTM, 10 m, float32, NaN nodata)."""
    h = w = 120
    t = Affine(10, 0, CENTRE[0] - 600, 0, -10, CENTRE[1] + 600)
    yy, xx = np.mgrid[0:h, 0:w]
    z = 100 + 0.4 * xx + 35 * np.exp(-((xx - 70) ** 2 + (yy - 50) ** 2) / 300.0)
    path = tmp_path / "dem.tif"
    with rasterio.open(path, "w", driver="GTiff", width=w, height=h, count=1, dtype="float32",
                       crs=UTM, transform=t, nodata=float("nan")) as d:  # fmt: skip
        d.write(z.astype("float32"), 1)
    return path


# -- the model ----------------------------------------------------------------------------


@pytest.mark.parametrize("orientation", range(1, 9))
def test_pixel_to_ground_and_back(orientation):
    m = model_for(heading=123.0, pitch=-75.0, roll=4.0, orientation=orientation)
    rng = np.random.default_rng(orientation)
    h, w = m.image_shape
    col, row = rng.uniform(0, w, 200), rng.uniform(0, h, 200)
    x, y = m.ground_at_height(col, row, 100.0)
    c2, r2, front = m.image_from_ground(x, y, 100.0)
    assert front.all()
    np.testing.assert_allclose(c2, col, atol=1e-6)
    np.testing.assert_allclose(r2, row, atol=1e-6)


def test_exif_orientation_turns_the_stored_image():
    """Orientation 6 (rotate 90° clockwise to display): the stored top-left pixel is the
    displayed top-right one, which a north-up nadir camera sees at the north-east."""
    upright = model_for(shape=(90, 120), heading=0.0)
    turned = model_for(shape=(120, 90), heading=0.0, orientation=6)
    assert turned.displayed_shape == upright.image_shape
    x6, y6 = turned.ground_at_height(np.array([0.5]), np.array([0.5]), 100.0)
    x1, y1 = upright.ground_at_height(np.array([119.5]), np.array([0.5]), 100.0)
    np.testing.assert_allclose([x6[0], y6[0]], [x1[0], y1[0]], atol=1e-6)
    assert x6[0] > CENTRE[0] and y6[0] > CENTRE[1]


def test_nadir_gsd_is_height_times_pixel_over_focal():
    m = model_for(height=250.0, focal=35.0, pixel=0.0064)
    # (the principal point is 0.02 mm off the centre: a hair off the nadir)
    assert centre_gsd(m) == pytest.approx(250.0 * 0.0064 / 35.0, rel=1e-6)
    fp = ground_footprint(m)
    gsd = 250.0 * 0.0064 / 35.0
    assert fp.area == pytest.approx(120 * 90 * gsd * gsd, rel=1e-6)


def test_image_top_points_to_the_heading():
    """Heading 90°: the top edge of a nadir frame is its east edge."""
    m = model_for(heading=90.0)
    x_top, _ = m.ground_at_height(np.array([60.0]), np.array([0.0]), 100.0)
    x_bottom, _ = m.ground_at_height(np.array([60.0]), np.array([90.0]), 100.0)
    assert x_top[0] > CENTRE[0] > x_bottom[0]


def test_opk_and_heading_conventions_agree():
    """A level camera with kappa = -heading is the heading-rotated nadir camera."""
    for heading in (0.0, 35.0, 179.1, -120.0):
        np.testing.assert_allclose(
            rotation_from_opk(0.0, 0.0, -heading), rotation_from_ypr(heading), atol=1e-12
        )
    r = rotation_from_opk(2.0, -1.5, 77.0)
    np.testing.assert_allclose(r @ r.T, np.eye(3), atol=1e-12)


def test_oblique_frame_is_refused():
    with pytest.raises(PlacementError, match="horizon"):
        ground_footprint(model_for(pitch=0.0))
    with pytest.raises(PlacementError, match="from the nadir"):
        ground_footprint(model_for(pitch=-10.0))
    assert ground_footprint(model_for(pitch=-70.0)).area > 0  # 20° off nadir is fine


def test_fiducial_affine_fit_recovers_the_scan():
    film = np.array([[-106, -106], [106, 106], [-106, 106], [106, -106], [0, 110], [110, 0]], float)
    true = (40.1, 0.3, 4500.0, 0.25, -39.9, 4510.0)  # 25 µm scan, slightly rotated
    pix = np.column_stack([true[0] * film[:, 0] + true[1] * film[:, 1] + true[2],
                           true[3] * film[:, 0] + true[4] * film[:, 1] + true[5]])  # fmt: skip
    pix[0] += [0.4, -0.3]  # one mis-measured mark
    fit, residuals = fit_film_to_pixel(film, pix)
    np.testing.assert_allclose(fit, true, atol=0.01 * 40)
    # the 0.5 px error spreads over the marks but shows in the residuals; exact marks fit to 0
    assert 0.05 < residuals.max() < 0.5
    _, exact = fit_film_to_pixel(film[1:], pix[1:])
    assert exact.max() < 1e-9


def test_dem_projection_lands_on_the_dem(dem_path):
    m = model_for(pitch=-80.0, terrain=Terrain(gdal_path=str(dem_path)))
    from engine.camera.placement import ground_height

    col, row = np.array([0.0, 60.0, 120.0]), np.array([0.0, 45.0, 90.0])
    x, y, z = project_to_terrain(m, col, row)
    np.testing.assert_allclose(z, ground_height(m.terrain, x, y, m.crs_wkt), atol=2e-3)
    c2, r2, _ = m.image_from_ground(x, y, z)
    np.testing.assert_allclose(c2, col, atol=1e-6)
    np.testing.assert_allclose(r2, row, atol=1e-6)


# -- the kernel ---------------------------------------------------------------------------


@pytest.mark.parametrize("resampling", ["nearest", "bilinear", "cubic"])
@pytest.mark.parametrize("use_dem", [False, True])
def test_chunked_ortho_equals_whole_frame(tmp_path, dem_path, resampling, use_dem):
    terrain = Terrain(gdal_path=str(dem_path)) if use_dem else None
    m = model_for(heading=200.0, pitch=-78.0, roll=3.0, terrain=terrain)
    render_frame(m, tmp_path / "f.tif", block=9.0)
    part = part_for(m, tmp_path / "f.tif", nodata=None)
    for crs in (UTM, CRS.from_epsg(3857)):
        grid = grid_over(m, 0.6, crs)
        whole, wcov = warp_camera_part(part, grid, resampling, None, "uint8")
        parts, pcov = chunked(part, grid, resampling, None, 37)
        assert wcov is not None and wcov.sum() > 0.3 * wcov.size
        np.testing.assert_array_equal(parts, whole)
        np.testing.assert_array_equal(pcov, wcov)


def test_ortho_gives_the_ground_pattern_back(tmp_path, dem_path):
    m = model_for(heading=65.0, pitch=-82.0, terrain=Terrain(gdal_path=str(dem_path)))
    block = 12.0
    render_frame(m, tmp_path / "f.tif", block=block)
    grid = grid_over(m, 0.5)
    data, cov = warp_camera_part(part_for(m, tmp_path / "f.tif"), grid, "nearest", None, "uint8")
    rows, cols = np.meshgrid(
        np.arange(grid.height) + 0.5, np.arange(grid.width) + 0.5, indexing="ij"
    )
    x, y = grid.xy(rows, cols)
    gsd = centre_gsd(m)
    # pixels further than two frame pixels from a block edge must hold the pattern exactly
    fx, fy = np.mod(x, block), np.mod(y, block)
    interior = np.minimum(np.minimum(fx, block - fx), np.minimum(fy, block - fy)) > 2.5 * gsd
    for b in range(3):
        fxb = np.mod(x + b * block / 3, block)
        inner = interior & (np.minimum(fxb, block - fxb) > 2.5 * gsd) & cov
        assert inner.sum() > 0.3 * cov.sum()
        np.testing.assert_array_equal(data[b][inner], checker(x, y, block, b)[inner])


@pytest.mark.parametrize("resampling", ["nearest", "bilinear"])
def test_nadir_frame_matches_gdal_warp(tmp_path, resampling):
    """Over flat ground a nadir frame maps to the ground by an affine transform: the kernel
    must then give what GDAL's warper gives for the frame with that geotransform."""
    m = model_for(heading=17.0)
    data = render_frame(m, tmp_path / "f.tif", block=7.0)
    x, y = m.ground_at_height(np.array([0.0, 1.0, 0.0]), np.array([0.0, 0.0, 1.0]), 100.0)
    gt = Affine(x[1] - x[0], x[2] - x[0], x[0], y[1] - y[0], y[2] - y[0], y[0])
    h, w = m.image_shape
    with rasterio.open(tmp_path / "geo.tif", "w", driver="GTiff", width=w, height=h, count=3,
                       dtype="uint8", crs=UTM, transform=gt) as d:  # fmt: skip
        d.write(data)
    grid = grid_over(m, 0.37)
    ours, cov = warp_camera_part(part_for(m, tmp_path / "f.tif"), grid, resampling, None, "uint8")
    with rasterio.open(tmp_path / "geo.tif") as ds:
        ref, ref_cov = gdal_warp(ds, grid, resampling, dst_nodata=None)
    assert ref_cov is not None
    interior = cov & ref_cov
    assert (cov != ref_cov).sum() <= 0.002 * cov.sum()  # edge pixels on a tie at most
    diff = np.abs(ours.astype(int) - ref.astype(int))[:, interior]
    if resampling == "nearest":
        assert (diff == 0).mean() > 0.999
    else:
        assert diff.max() <= 1


def test_nodata_is_carried(tmp_path):
    m = model_for(heading=0.0)
    data = render_frame(m, tmp_path / "f.tif", block=8.0)
    data[:, 30:60, 40:80] = 0  # a hole in the frame
    with rasterio.open(tmp_path / "f.tif", "r+") as d:
        d.write(data)
        d.nodata = 0
    grid = grid_over(m, 0.5)
    part = part_for(m, tmp_path / "f.tif", nodata=0.0)
    out, cov = warp_camera_part(part, grid, "bilinear", 255.0, "uint8")
    assert cov is None
    # the hole's centre on the ground is nodata, the frame centre's neighbourhood away from it data
    x, y = m.ground_at_height(np.array([60.0, 20.0]), np.array([45.0, 10.0]), 100.0)
    c, r = ~grid.transform @ (x, y)
    hole = out[:, int(r[0]), int(c[0])]
    kept = out[:, int(r[1]), int(c[1])]
    assert (hole == 255).all() and (kept != 255).all()
    # outside the frame: nodata too
    assert (out[:, 0, 0] == 255).all()


@pytest.mark.parametrize("resampling", ["bilinear", "cubic"])
def test_downsampling_widens_the_kernel_like_gdal(tmp_path, resampling):
    """Cells 2.3 times the GSD: GDAL widens bilinear/cubic by the scale (XSCALE/YSCALE);
    the kernel must give GDAL's values, and chunks must still equal the whole frame."""
    m = model_for(heading=17.0)
    data = render_frame(m, tmp_path / "f.tif", block=3.0)
    x, y = m.ground_at_height(np.array([0.0, 1.0, 0.0]), np.array([0.0, 0.0, 1.0]), 100.0)
    gt = Affine(x[1] - x[0], x[2] - x[0], x[0], y[1] - y[0], y[2] - y[0], y[0])
    h, w = m.image_shape
    with rasterio.open(tmp_path / "geo.tif", "w", driver="GTiff", width=w, height=h, count=3,
                       dtype="uint8", crs=UTM, transform=gt) as d:  # fmt: skip
        d.write(data)
    gsd = centre_gsd(m)
    grid = grid_over(m, 2.3 * gsd)
    part = part_for(m, tmp_path / "f.tif")
    ours, cov = warp_camera_part(part, grid, resampling, None, "uint8")
    with rasterio.open(tmp_path / "geo.tif") as ds:
        s = 1 / 2.3
        ref, ref_cov = gdal_warp(ds, grid, resampling, dst_nodata=None, scale=(s, s))
    sharp, _ = warp_camera_part(part, grid, "nearest", None, "uint8")
    inner = cov & ref_cov
    diff = np.abs(ours.astype(int) - ref.astype(int))[:, inner]
    assert diff.max() <= 1 and diff.mean() < 0.01
    # widening matters here: point sampling is far from GDAL's values
    assert np.abs(sharp.astype(int) - ref.astype(int))[:, inner].mean() > 5
    parts, _ = chunked(part, grid, resampling, None, 7)
    np.testing.assert_array_equal(parts, ours)
