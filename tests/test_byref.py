"""byref collections (SPEC §1, §3): pixels stay at the source, reads equal a byvalue copy.

The same three reprojected, bilinear-resampled images are ingested twice, byvalue and
byref. The byref store holds no chunk file; its catalog points at the sources with the
same grids, checksums and footprints; its images read (lazily, through
``open_collection().image()``) and export (through the real exportImage endpoint) the
very pixels the byvalue store holds; a deleted source fails that image's read with a
message naming the image, the path and the fix, while the other images still read.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import rioxarray  # noqa: F401  (the .rio accessor)
from affine import Affine
from fastapi import FastAPI
from rasterio.io import MemoryFile

from engine import create_image_collection, open_collection
from engine.byref import ByrefSourceError
from engine.cli import main as cli_main
from engine.server import imageserver
from tests.conftest import write_raster
from tests.loopback import serve

TILE = 64
CONTEXT = {"outSR": 3857, "cellSize": 25, "resamplingMethod": "BILINEAR"}


def _sources(d: Path) -> list[str]:
    return [
        str(
            write_raster(
                d / f"scene{i}.tif",
                crs="EPSG:32633",
                transform=Affine(20, 0, 500_000 + i * 1500, 0, -20, 5_200_000 - i * 700),
                shape=(130, 150),
                dtype="uint16",
                nodata=0,
                bands=2,
                seed=5 + i,
            )
        )
        for i in range(3)
    ]


@pytest.fixture(scope="module")
def pair(client, tmp_path_factory) -> tuple[Path, Path, list[str]]:
    """(byvalue store, byref store, sources): both collections of the same sources."""
    root = tmp_path_factory.mktemp("byref")
    src = _sources(root)
    val = create_image_collection(
        src, image_collection=str(root / "val.zarr"), context=CONTEXT, client=client, tile_size=TILE
    )
    ref = create_image_collection(
        {"uris": src, "byref": True},
        image_collection=str(root / "ref.zarr"),
        context=CONTEXT,
        client=client,
        tile_size=TILE,
    )
    assert val.exit_code == 0 and ref.exit_code == 0, (val.failed, ref.failed)
    return root / "val.zarr", root / "ref.zarr", src


def _rows(store: Path) -> dict[str, dict]:
    t = pq.read_table(store / "catalog.parquet").to_pylist()
    return {r["image_id"]: r for r in t}


def _size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def test_a_byref_store_holds_no_pixels_and_a_catalog_pointing_at_the_sources(pair):
    val, ref, src = pair
    assert list((val / "images").rglob("c/*/*")), "the byvalue store has chunk files"
    assert not list((ref / "images").rglob("c")), "a byref store must write no chunk"
    assert _size(ref / "images") < _size(val / "images") / 3
    a, b = _rows(val), _rows(ref)
    assert sorted(a) == sorted(b) and len(b) == 3
    for image_id, row in b.items():
        assert row["byref"] is True and a[image_id]["byref"] is False
        assert row["source_uris"] == a[image_id]["source_uris"]
        assert row["source_uris"][0] in src
        for col in ("grid_transform", "grid_shape", "checksum", "footprint", "band_stats"):
            assert row[col] == a[image_id][col], col
    assert cli_main(["verify", str(ref)]) == 0  # checksums recomputed from the sources
    for image_id, row in b.items():  # STAC items point at the sources too
        item = json.loads((ref / "stac" / "items" / f"{image_id}.json").read_text())
        assert item["properties"]["mosaicflow:byref"] is True
        assert item["assets"]["source-1"]["href"] == row["source_uris"][0]


def test_a_byref_image_reads_the_pixels_a_byvalue_store_holds(pair):
    val, ref, _ = pair
    cv, cr = open_collection(val), open_collection(ref)
    assert cr.image_ids == cv.image_ids
    for image_id in cr.image_ids:
        dv, dr = cv.image(image_id), cr.image(image_id)
        assert dr.b1.chunks == dv.b1.chunks  # one task per store chunk
        assert dr.rio.crs == dv.rio.crs and dr.rio.transform() == dv.rio.transform()
        for band in ("b1", "b2"):
            assert dr[band].dtype == dv[band].dtype
            np.testing.assert_array_equal(dr[band].values, dv[band].values)
            assert np.isfinite(dr[band].values).sum() > 1000


def _export(http, name: str, bbox: str, size: str, interpolation: str) -> np.ndarray:
    r = http.get(
        f"/arcgis/rest/services/Hosted/{name}/ImageServer/exportImage",
        params={
            "f": "image",
            "bbox": bbox,
            "bboxSR": "4326",
            "size": size,
            "format": "tiff",
            "interpolation": interpolation,
        },
    )
    assert r.status_code == 200, r.text[:300]
    with MemoryFile(r.content) as mem, mem.open() as ds:
        return ds.read()


def test_export_image_serves_byref_images_like_byvalue_ones(pair):
    """At full resolution (byref images have no overviews: a coarser request warps their
    level 0, where a byvalue image's overview is read)."""
    val, _, _ = pair
    imageserver.configure(val.parent)
    app = FastAPI()
    app.include_router(imageserver.router)
    with serve(app) as http:
        for bbox, size, interp in (
            ("15.0,46.9,15.06,46.95", "200,180", "RSP_NearestNeighbor"),
            ("15.005,46.91,15.05,46.94", "200,170", "RSP_BilinearInterpolation"),
        ):
            a = _export(http, "val", bbox, size, interp)
            b = _export(http, "ref", bbox, size, interp)
            assert (a != 0).sum() > 1000, "the request must cover data"
            np.testing.assert_array_equal(b, a)


def test_a_deleted_source_is_a_clear_error_for_that_image_only(pair, tmp_path):
    _, ref, src = pair
    moved = shutil.copytree(ref, tmp_path / "ref.zarr")
    gone = Path(src[1])
    kept = gone.with_suffix(".bak")
    gone.rename(kept)
    try:
        coll = open_collection(moved)
        rows = _rows(moved)
        bad = next(i for i, r in rows.items() if r["source_uris"] == [str(gone)])
        with pytest.raises(ByrefSourceError) as err:
            coll.image(bad).b1.load()
        msg = str(err.value)
        assert bad in msg and str(gone) in msg and "missing" in msg and "remove" in msg
        for other in coll.image_ids:
            if other != bad:
                assert np.isfinite(coll.image(other).b1.values).any()
        assert cli_main(["verify", str(moved)]) == 1
        imageserver.configure(tmp_path)  # exportImage over it: ArcGIS error JSON naming it
        app = FastAPI()
        app.include_router(imageserver.router)
        with serve(app) as http:
            r = http.get(
                "/arcgis/rest/services/Hosted/ref/ImageServer/exportImage",
                params={"f": "json", "bbox": "15.0,46.9,15.06,46.95", "bboxSR": "4326"},
            )
        details = " ".join(r.json()["error"]["details"])
        assert r.json()["error"]["code"] == 500 and bad in details and str(gone) in details
    finally:
        kept.rename(gone)


def test_a_real_multi_resolution_product_byref_reads_like_byvalue(client, shared_data, tmp_path):
    """A real Sentinel-2 SAFE (10/20/60 m JP2 bands, scale and offset): byref equals byvalue
    band by band, decoded the same way."""
    safe = (
        shared_data
        / "sentinel2"
        / "S2A_MSIL1C_20180629T000241_N0206_R030_T56JMM_20180629T012042.SAFE"
    )
    stores = {}
    for byref in (False, True):
        stores[byref] = tmp_path / f"s2-{byref}.zarr"
        result = create_image_collection(
            {"uris": [str(safe)], "byref": byref},
            raster_type="Sentinel-2",
            image_collection=str(stores[byref]),
            client=client,
            tile_size=256,
        )
        assert result.exit_code == 0, result.failed
    a, b = open_collection(stores[False]), open_collection(stores[True])
    assert a.image_ids == b.image_ids and len(a.image_ids) == 1
    va, vb = a.image(a.image_ids[0]), b.image(b.image_ids[0])
    assert sorted(va.data_vars) == sorted(vb.data_vars) and len(va.data_vars) == 13
    for band in va.data_vars:
        assert vb[band].encoding["scale_factor"] == va[band].encoding["scale_factor"]
        assert vb[band].dtype == va[band].dtype
        np.testing.assert_array_equal(vb[band].values, va[band].values)
    assert not list((stores[True] / "images").rglob("c"))
