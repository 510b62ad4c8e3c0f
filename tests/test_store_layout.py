"""The store as plain tools see it (SPEC §3, §4): xarray/rioxarray, zarr, geopandas, pystac.

One small collection (two images in different UTM zones, one uint16 with nodata 0 and
one float32 with NaN nodata, plus a file that fails) is written once, then read back the
way a user would, without mosaicflow: the georeferencing must come out right, chunks
must be the collection tiles, the catalog must be GeoParquet with every SPEC §4 column,
STAC must load, and ``mosaicflow verify`` must catch a damaged chunk.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import dask.array as da
import geopandas as gpd
import numpy as np
import pyarrow.parquet as pq
import pystac
import pytest
import rioxarray  # noqa: F401  (registers the .rio accessor)
import xarray as xr
import zarr
from affine import Affine
from pyproj import CRS

from engine import create_image_collection, open_collection
from engine.cli import main as cli_main
from engine.verify import verify_collection
from tests.conftest import write_raster

TILE = 64
CELL = 30.0
PROJ_UUID = "f17cb550-5864-4468-aeb7-f3180cfb622f"
SPATIAL_UUID = "689b58e2-cf7b-45e0-9fff-9cfc0883d6b4"
SPEC_COLUMNS = [
    "ObjectID",
    "image_id",
    "Name",
    "group",
    "raster_type",
    "product_name",
    "sensor",
    "acquisition_time",
    "source_uris",
    "byref",
    "crs",
    "LowPS",
    "HighPS",
    "MinPS",
    "MaxPS",
    "width",
    "height",
    "band_names",
    "dtype",
    "nodata",
    "xmin",
    "ymin",
    "xmax",
    "ymax",
    "CenterX",
    "CenterY",
    "ZOrder",
    "Category",
    "cloud_cover",
    "sun_elevation",
    "sun_azimuth",
    "status",
    "message",
    "checksum",
    "ingested_at",
]


@pytest.fixture(scope="module")
def coll(client, tmp_path_factory):
    d = tmp_path_factory.mktemp("layout")
    u16 = write_raster(
        d / "u16.tif",
        crs="EPSG:32633",
        transform=Affine(30, 0, 500_000, 0, -30, 4_650_000),
        shape=(150, 170),
        dtype="uint16",
        nodata=0,
        bands=11,  # b1..b11: neither a directory listing nor sorting gives band order
        seed=1,
    )
    f32 = write_raster(
        d / "f32.tif",
        crs="EPSG:32632",
        transform=Affine(25, 0, 650_000, 0, -25, 4_700_000),
        shape=(140, 120),
        dtype="float32",
        nodata=float("nan"),
        seed=2,
    )
    (d / "broken.tif").write_text("not a raster")
    result = create_image_collection(
        [str(u16), str(f32), str(d / "broken.tif")],
        image_collection=str(d / "layout.zarr"),
        context={"outSR": 3857, "cellSize": CELL, "resamplingMethod": "BILINEAR"},
        client=client,
        tile_size=TILE,
    )
    assert result.exit_code == 3 and len(result.complete) == 2
    return result


def _node(store: str, image_id: str, **kw) -> xr.Dataset:
    tree = xr.open_datatree(store, engine="zarr", decode_coords="all", **kw)
    return tree[f"images/{image_id}"].to_dataset()


def _rows(store: str) -> dict[str, dict]:
    return {r["image_id"]: r for r in pq.read_table(Path(store) / "catalog.parquet").to_pylist()}


def _collection_crs(store: str) -> CRS:
    return CRS.from_wkt(zarr.open_group(store, mode="r").attrs["mosaicflow"]["crs"])


def test_root_group_describes_the_collection(coll):
    attrs = zarr.open_group(coll.store, mode="r").attrs.asdict()
    meta = attrs["mosaicflow"]
    for key in ("format_version", "name", "crs", "cell_size", "tile_size", "lattice_origin"):
        assert key in meta, key
    assert meta["name"] == "layout"
    assert CRS.from_wkt(meta["crs"]).to_epsg() == 3857
    assert (meta["cell_size"], meta["tile_size"]) == (CELL, TILE)
    assert list(meta["lattice_origin"]) == [0.0, 0.0]


def test_root_metadata_does_not_grow_with_the_images(coll, tmp_path):
    """The catalog is the index: the root zarr.json holds the frame, not every image's
    nodes (consolidated, it was ~20 kB per image, parsed at every open of the root)."""
    root = json.loads((Path(coll.store) / "zarr.json").read_text())
    assert "consolidated_metadata" not in root
    assert (Path(coll.store) / "zarr.json").stat().st_size < 8_000
    # a store consolidated by an earlier version loses it at its next commit, and reads
    old = tmp_path / "old.zarr"
    shutil.copytree(coll.store, old)
    zarr.consolidate_metadata(str(old))
    assert "consolidated_metadata" in json.loads((old / "zarr.json").read_text())
    complete = sorted(i for i, r in _rows(str(old)).items() if r["status"] == "complete")
    assert cli_main(["remove", str(old), complete[0]]) == 0
    assert "consolidated_metadata" not in json.loads((old / "zarr.json").read_text())
    tree = open_collection(old).datatree()
    assert len(tree["images"].children) == 1


def test_image_groups_open_in_band_order_from_their_own_metadata(coll, recwarn):
    """Each image group carries its members' metadata (consolidated at its commit, bands in
    band order at every level): xarray lists b1..b11 in order, opening it reads one
    document and warns about nothing, and it holds what zarr's own consolidation holds."""
    for rec in coll.complete:
        group = Path(coll.store) / "images" / rec.image_id
        doc = json.loads((group / "zarr.json").read_text())
        assert doc["attributes"]["mosaicflow"]["status"] == "complete"
        inline = doc["consolidated_metadata"]["metadata"]
        assert [k for k in inline if k in rec.band_names] == rec.band_names
        for level in ("overviews/1", "overviews/2"):
            names = [k.rsplit("/", 1)[1] for k in inline if k.startswith(level + "/")]
            assert [n for n in names if n in rec.band_names] == rec.band_names
        copy = Path(coll.store).parent / f"zarr-consolidated-{rec.image_id}"
        shutil.copytree(group, copy)
        zarr.consolidate_metadata(str(copy))
        theirs = json.loads((copy / "zarr.json").read_text())["consolidated_metadata"]
        assert dict(sorted(theirs["metadata"].items())) == dict(sorted(inline.items()))
        ds = xr.open_zarr(group)
        assert list(ds.data_vars) == rec.band_names
        assert not [w for w in recwarn if "consolidated" in str(w.message)]
    assert any(len(rec.band_names) == 11 for rec in coll.complete)


def test_images_open_with_rioxarray_georeferenced(coll):
    rows = _rows(coll.store)
    crs = _collection_crs(coll.store)
    for rec in coll.complete:
        ds = _node(coll.store, rec.image_id)
        row = rows[rec.image_id]
        assert ds.rio.crs is not None and CRS.from_user_input(ds.rio.crs) == crs
        assert ds.rio.transform().almost_equals(Affine(*row["grid_transform"]), precision=1e-6)
        assert ds.rio.shape == tuple(row["grid_shape"])
        assert list(ds.data_vars) == row["band_names"]
        for name in row["band_names"]:
            band = ds[name]
            # CF decoding: nodata is masked to NaN, the stored value is the encoded nodata
            enc = band.rio.encoded_nodata
            if math.isnan(row["nodata"]):
                assert enc is None or math.isnan(enc)
            else:
                assert enc == row["nodata"]
            assert math.isnan(band.rio.nodata)
        # undecoded, the bands keep their dtype and the nodata value itself
        raw = _node(coll.store, rec.image_id, mask_and_scale=False)
        for name in row["band_names"]:
            assert raw[name].dtype == np.dtype(row["dtype"])
            nodata = raw[name].rio.nodata
            assert nodata == row["nodata"] or (math.isnan(nodata) and math.isnan(row["nodata"]))


def test_coordinates_are_pixel_centres(coll):
    for rec in coll.complete:
        ds = _node(coll.store, rec.image_id)
        t = rec.grid.transform
        h, w = rec.grid.shape
        np.testing.assert_allclose(ds.x.values, t.c + (np.arange(w) + 0.5) * t.a, rtol=0, atol=1e-6)
        np.testing.assert_allclose(ds.y.values, t.f + (np.arange(h) + 0.5) * t.e, rtol=0, atol=1e-6)


def test_image_groups_carry_zarr_conventions_and_cf_grid_mapping(coll):
    for rec in coll.complete:
        ds = _node(coll.store, rec.image_id)
        attrs = ds.attrs
        assert attrs["proj:code"] == "EPSG:3857"
        assert attrs["spatial:transform"] == pytest.approx(list(rec.grid.transform)[:6])
        assert attrs["spatial:shape"] == list(rec.grid.shape)
        conventions = attrs["zarr_conventions"]
        assert isinstance(conventions, list)
        assert {c["uuid"] for c in conventions} >= {PROJ_UUID, SPATIAL_UUID}
        ref = ds["spatial_ref"].attrs
        assert CRS.from_wkt(ref["crs_wkt"]) == _collection_crs(coll.store)
        gt = [float(v) for v in ref["GeoTransform"].split()]
        assert Affine.from_gdal(*gt).almost_equals(rec.grid.transform, precision=1e-6)
        for name in rec.band_names:
            assert ds[name].attrs.get("grid_mapping", ds[name].encoding.get("grid_mapping")) == (
                "spatial_ref"
            )


def test_chunks_are_collection_tiles(coll):
    meta = zarr.open_group(coll.store, mode="r").attrs["mosaicflow"]
    ox, oy = meta["lattice_origin"]
    span = meta["cell_size"] * meta["tile_size"]
    for rec in coll.complete:
        for name in rec.band_names:
            arr = zarr.open_array(f"{coll.store}/images/{rec.image_id}/{name}", mode="r")
            assert arr.chunks == (TILE, TILE)
        t = rec.grid.transform
        assert (t.a, t.e) == (CELL, -CELL)
        col_tiles, row_tiles = (t.c - ox) / span, (oy - t.f) / span
        assert col_tiles == pytest.approx(round(col_tiles), abs=1e-9), "origin off a tile corner"
        assert row_tiles == pytest.approx(round(row_tiles), abs=1e-9), "origin off a tile corner"


def test_catalog_is_geoparquet_with_the_spec_columns(coll):
    gdf = gpd.read_parquet(Path(coll.store) / "catalog.parquet")
    assert gdf.crs is not None and gdf.crs.to_epsg() == 4326
    assert gdf.geometry.name == "footprint"
    missing = [c for c in SPEC_COLUMNS if c not in gdf.columns]
    assert not missing, f"catalog lacks SPEC §4 columns {missing}"
    assert len(gdf) == 3 and gdf["image_id"].is_unique
    assert sorted(gdf["ObjectID"]) == [1, 2, 3]
    assert str(gdf["ingested_at"].dt.tz) == "UTC"
    complete = gdf[gdf["status"] == "complete"]
    failed = gdf[gdf["status"] == "failed"]
    assert sorted(complete["image_id"]) == sorted(r.image_id for r in coll.complete)
    assert (complete["Category"] == 1).all() and (failed["Category"] == 254).all()
    assert complete.geometry.notna().all() and failed.geometry.isna().all()
    minx, miny, maxx, maxy = complete.total_bounds
    assert 7 < minx < maxx < 16 and 41 < miny < maxy < 43  # the images lie in Italy


def test_stac_collection_and_items_load_with_pystac(coll):
    stac = Path(coll.store) / "stac"
    collection = pystac.Collection.from_file(str(stac / "collection.json"))
    items = {item.id: item for item in collection.get_items()}
    assert sorted(items) == sorted(r.image_id for r in coll.complete), "items = complete images"
    assert len(list(stac.rglob("*.json"))) == 1 + len(coll.complete)
    for rec in coll.complete:
        item = items[rec.image_id]
        assert any("projection/v2" in e for e in item.stac_extensions)
        assert any("/raster/" in e for e in item.stac_extensions)
        assert item.properties["proj:code"] == "EPSG:3857"
        assert item.geometry is not None and item.bbox is not None


def test_open_collection_gives_lazy_dask_datasets(coll):
    c = open_collection(coll.store)
    assert sorted(c.image_ids) == sorted(r.image_id for r in coll.complete)
    for rec in coll.complete:
        ds = c.image(rec.image_id)
        for name in rec.band_names:
            data = ds[name].data
            assert isinstance(data, da.Array), "bands must be lazy dask arrays"
            assert data.chunksize == (min(TILE, rec.grid.height), min(TILE, rec.grid.width))
        assert ds.rio.crs is not None and CRS.from_user_input(ds.rio.crs).to_epsg() == 3857
        values = ds[rec.band_names[0]].compute(scheduler="synchronous").values
        assert np.isfinite(values).sum() == rec.stats[0].count


def _a_data_chunk(store: Path, image_id: str) -> tuple[Path, int, int]:
    for path in sorted((store / "images" / image_id / "b1" / "c").glob("*/*")):
        return path, int(path.parent.name), int(path.name)
    raise AssertionError("no chunk file written")


@pytest.mark.parametrize("damage", ["garbage bytes", "other valid values"])
def test_verify_detects_a_corrupted_chunk(coll, tmp_path, damage):
    store = tmp_path / "copy.zarr"
    shutil.copytree(coll.store, store)
    assert verify_collection(store)["bad"] == 0
    rec = next(r for r in coll.complete if r.dtype == "uint16")
    path, i, j = _a_data_chunk(store, rec.image_id)
    if damage == "garbage bytes":
        size = path.stat().st_size
        path.write_bytes(np.random.default_rng(0).integers(0, 256, size, dtype="uint8").tobytes())
    else:  # a well-formed zstd chunk holding other pixels
        arr = zarr.open_array(f"{store}/images/{rec.image_id}/b1", mode="r+")
        region = (slice(i * TILE, (i + 1) * TILE), slice(j * TILE, (j + 1) * TILE))
        block = arr[region]
        arr[region] = np.where(block > 0, block // 2 + 1, 7).astype(block.dtype)
    report = verify_collection(store)
    assert report["bad"] == 1 and report["checked"] == 2
    assert not report["images"][rec.image_id]["ok"]
    assert report["images"][rec.image_id]["problem"]
    assert cli_main(["verify", str(store)]) == 1


def _xarray_template(path: str, grid, variables, dtype, nodata, tile, attrs, band_attrs) -> None:
    """The image template as xarray's ``to_zarr`` writes the Dataset engine.store describes
    (the reference engine.store.create_image_template must reproduce node for node)."""
    from engine import store

    x, y = grid.coords()
    code = store._crs_code(grid.crs)
    gdal_crs = {"wkt": grid.crs_wkt}
    if code and code.startswith("EPSG:"):
        gdal_crs["url"] = f"http://www.opengis.net/def/crs/EPSG/0/{code[5:]}"
    data_vars, encoding = {}, {}
    for k, name in enumerate(variables):
        lazy = da.empty(grid.shape, chunks=(tile, tile), dtype=dtype)
        vattrs = {"grid_mapping": "spatial_ref", "_CRS": gdal_crs, **band_attrs[k]}
        data_vars[name] = xr.Variable(("y", "x"), lazy, vattrs)
        encoding[name] = {
            "chunks": (tile, tile),
            "_FillValue": None if nodata is None else np.array(nodata, dtype=dtype).item(),
            "fill_value": np.array(0 if nodata is None else nodata, dtype=dtype).item(),
            "compressors": [zarr.codecs.ZstdCodec(level=1)],
        }
    units = store._units(grid.crs)
    coords = {
        "x": xr.Variable(
            "x", x, {"units": units, "standard_name": "projection_x_coordinate", "axis": "X"}
        ),
        "y": xr.Variable(
            "y", y, {"units": units, "standard_name": "projection_y_coordinate", "axis": "Y"}
        ),
        "spatial_ref": xr.Variable((), np.int32(0), store._cf_grid_mapping(grid)),
    }
    ds = xr.Dataset(
        data_vars,
        coords=coords,
        attrs={**store.grid_attrs(grid), "mosaicflow": {"status": "writing", **attrs}},
    )
    ds.to_zarr(path, mode="w", compute=False, zarr_format=3, consolidated=False, encoding=encoding)


def _nodes(root: Path) -> dict[str, object]:
    """Every node's metadata and every chunk file's bytes under ``root``, by relative path."""
    import json

    out: dict[str, object] = {}
    for f in sorted(root.rglob("*")):
        if f.is_file():
            rel = str(f.relative_to(root))
            out[rel] = json.loads(f.read_text()) if f.name == "zarr.json" else f.read_bytes()
    return out


@pytest.mark.parametrize(
    ("dtype", "nodata", "band_attrs"),
    [
        ("uint16", 0.0, [{}, {"long_name": "near infrared"}]),
        ("float32", math.nan, [{"scale_factor": 0.5, "add_offset": -3.0}, {}]),
        ("uint8", None, [{}, {}]),
        ("int16", -9999.0, [{"long_name": "a"}, {"long_name": "b"}]),
    ],
)
def test_image_template_is_what_xarray_writes(tmp_path, dtype, nodata, band_attrs):
    from engine import store
    from engine.grid import Grid

    grid = Grid(CRS.from_epsg(32633), Affine(10, 0, 500_000, 0, -10, 4_650_000), (700, 1100))
    attrs = {"image_id": "i1", "name": "one", "band_names": ["b1", "b2"]}
    ref = tmp_path / "ref.zarr"
    _xarray_template(str(ref), grid, ["b1", "b2"], dtype, nodata, 512, attrs, band_attrs)
    mine = tmp_path / "mine"
    store.create_image_template(
        mine, "i1", grid, ["b1", "b2"], dtype, nodata, 512, attrs=attrs, band_attrs=band_attrs
    )
    expected, written = _nodes(ref), _nodes(mine / "images" / "i1")
    assert sorted(written) == sorted(expected)
    for key in expected:
        assert written[key] == expected[key], key
    # and it opens in xarray as that Dataset, fill values decoded as nodata
    back = xr.open_zarr(mine / "images" / "i1", consolidated=False)
    assert back["b1"].attrs.get("grid_mapping") == "spatial_ref"
    assert np.array_equal(back.x.values, grid.coords()[0])


def test_commit_sweeps_the_partial_chunk_files_of_a_killed_writer(tmp_path):
    """zarr writes a chunk to ``<key>.<uuid>.partial`` and renames it: a worker killed in
    between leaves that file behind (tests/test_cluster_real.py kills one), and the
    image's commit removes it, keeping the chunks."""
    from engine import store
    from engine.grid import Grid

    grid = Grid(CRS.from_epsg(32633), Affine(10, 0, 500_000, 0, -10, 4_650_000), (600, 600))
    store.create_image_template(tmp_path, "i1", grid, ["b1"], "uint8", 0.0, 512)
    group = tmp_path / "images" / "i1"
    arr = zarr.open_array(str(group / "b1"), mode="r+")
    arr[:512, :512] = 7
    chunk = group / "b1" / "c" / "0" / "0"
    leftover = chunk.with_name("1.9f1c2e.partial")
    leftover.write_bytes(b"half a chunk")
    store.commit_image(tmp_path, "i1", ["b1"], checksum="x")
    assert not leftover.exists() and chunk.exists()
    assert store.image_meta(tmp_path, "i1")["status"] == "complete"
    assert int(zarr.open_array(str(group / "b1"), mode="r")[0, 0]) == 7
