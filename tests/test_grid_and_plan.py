"""The grid type, the lattice rule and the planner (no pixels)."""

from __future__ import annotations

import math

import numpy as np
import shapely
from affine import Affine
from hypothesis import given, settings
from hypothesis import strategies as st
from pyproj import CRS

from engine.grid import Grid, Lattice, chunk_grid
from engine.plan import chunk_boxes, plan_collection, resampling_scale
from engine.rastertypes.base import ImageSource, SourcePart

UTM = CRS.from_epsg(32633)


def fake_source(grid: Grid, name: str = "img", dtype: str = "uint8") -> ImageSource:
    part = SourcePart("/nowhere.tif", (1,), ("b1",), grid, dtype, 0.0)
    return ImageSource(f"{name}-id", name, [f"/{name}.tif"], "Raster Dataset", [part])


@settings(max_examples=200, deadline=None)
@given(
    left=st.floats(-1e6, 1e6),
    top=st.floats(-1e6, 1e6),
    width=st.floats(0.5, 5e4),
    height=st.floats(0.5, 5e4),
    cell=st.sampled_from([0.5, 1.0, 10.0, 30.0, 60.0, 0.000277777777778]),
    tile=st.sampled_from([16, 64, 256, 512]),
)
def test_lattice_grid_covers_bounds_on_pixel_and_tile_corners(left, top, width, height, cell, tile):
    lat = Lattice(UTM, cell, tile)
    g = lat.grid_for((left, top - height, left + width, top))
    gl, gb, gr, gt = g.bounds
    tol = cell * 1e-5
    # covers the requested bounds, by less than one extra pixel on the far sides
    assert (
        gl <= left + tol
        and gt >= top - tol
        and gr >= left + width - tol
        and gb <= top - height + tol
    )
    assert gr - (left + width) < cell * (1 + 1e-5) and (top - height) - gb < cell * (1 + 1e-5)
    # pixel corners on multiples of the cell size; origin on a tile corner
    assert lat.is_on_lattice(g)
    col0 = g.transform.c / cell
    row0 = -g.transform.f / cell
    assert math.isclose(col0 / tile, round(col0 / tile), abs_tol=1e-6)
    assert math.isclose(row0 / tile, round(row0 / tile), abs_tol=1e-6)


def test_chunks_of_two_images_cover_the_same_ground():
    lat = Lattice(UTM, 10.0, 64)
    a = lat.grid_for((1000, 5000, 3000, 7000))
    b = lat.grid_for((1700, 4300, 4000, 6900))
    ra, ca = lat.tile_offset(a)
    rb, cb = lat.tile_offset(b)
    # tile (R, C) of the collection, seen from either image
    R, C = max(ra, rb), max(ca, cb)
    ga = chunk_grid(a, R - ra, C - ca, 64)
    gb = chunk_grid(b, R - rb, C - cb, 64)
    assert ga.transform == gb.transform


def test_grid_basics():
    g = Grid(UTM, Affine(10, 0, 500_000, 0, -10, 4_000_000), (100, 200))
    assert g.bounds == (500_000, 3_999_000, 502_000, 4_000_000)
    x, y = g.coords()
    assert x[0] == 500_005 and y[0] == 3_999_995
    assert g == Grid(CRS.from_wkt(UTM.to_wkt()), g.transform, (100, 200))
    fp = g.footprint_in(4326)
    assert fp.is_valid and fp.contains(shapely.Point(15.0, 36.14))


def test_only_chunks_holding_data_are_planned():
    # a long thin diagonal image: its bounding box holds many tiles, its footprint few
    rot = Affine.rotation(45)
    t = Affine.translation(500_000, 4_000_000) @ rot @ Affine.scale(10, -10)
    g = Grid(UTM, t, (40, 3000))
    plan = plan_collection([fake_source(g)], out_crs=None, cell_size=10.0, tile=64)
    p = plan.images[0]
    n_all = math.ceil(p.grid.height / 64) * math.ceil(p.grid.width / 64)
    assert len(p.chunks) < n_all / 5, (len(p.chunks), n_all)
    index, boxes = chunk_boxes(p.grid, 64)
    hit = set(p.chunks)
    fp = g.footprint()
    for ij, box in zip(index, boxes, strict=True):
        if box.intersection(fp).area > 0:
            assert ij in hit, f"chunk {ij} holds data but was not planned"


def test_cell_size_rules():
    fine = Grid(UTM, Affine(10, 0, 500_000, 0, -10, 4_000_000), (10, 10))
    coarse = Grid(UTM, Affine(30, 0, 600_000, 0, -30, 4_000_000), (10, 10))
    srcs = [fake_source(fine, "a"), fake_source(coarse, "b")]
    assert plan_collection(srcs, out_crs=None, cell_size="MinOf").lattice.cell_size == 10
    assert plan_collection(srcs, out_crs=None, cell_size="MaxOf").lattice.cell_size == 30
    assert plan_collection(srcs, out_crs=None, cell_size=25.0).lattice.cell_size == 25
    # outSR absent: the first image's CRS
    assert plan_collection(srcs, out_crs=None).lattice.crs == UTM


def test_clip_outside_fails_that_image_only():
    a = Grid(UTM, Affine(10, 0, 500_000, 0, -10, 4_000_000), (100, 100))
    b = Grid(UTM, Affine(10, 0, 700_000, 0, -10, 4_000_000), (100, 100))
    clip = shapely.box(500_000, 3_999_500, 500_500, 4_000_000)
    plan = plan_collection(
        [fake_source(a, "a"), fake_source(b, "b")], out_crs=None, clip=clip, clip_crs=UTM
    )
    assert [p.source.name for p in plan.images] == ["a"]
    assert plan.images[0].grid.bounds[2] <= 500_500 + 10
    ((src, _uri, reason),) = plan.failed
    assert src.name == "b" and "outside the clip" in reason


def test_resampling_scale():
    src = Grid(UTM, Affine(30, 0, 500_000, 0, -30, 4_000_000), (100, 100))
    same = Grid(UTM, Affine(60, 0, 500_000, 0, -60, 4_000_000), (50, 50))
    assert resampling_scale(src, same) == (0.5, 0.5)
    up = Grid(UTM, Affine(10, 0, 500_000, 0, -10, 4_000_000), (300, 300))
    assert np.allclose(resampling_scale(src, up), (3.0, 3.0))
