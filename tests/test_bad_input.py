"""Bad input (SPEC §6): one bad image never sinks the others; a bad request writes nothing.

Image errors are exercised together in ONE request with one good image: every bad image
must become a ``failed`` catalog row (Category 254) whose message says what is wrong in
words a user understands, its partial group must be gone from the store, the good image
must be complete, the exit code must be 3 and ``mosaicflow verify`` must pass.

Request errors must raise :class:`engine.errors.RequestError` naming the parameter and a
fix before anything is written. Re-running a finished request must be a no-op.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import rasterio
import zarr
from affine import Affine

from engine import create_image_collection
from engine.cli import main as cli_main
from engine.errors import RequestError
from engine.store import image_meta, list_image_ids
from tests.conftest import write_raster

UTM33 = "EPSG:32633"
GOOD_T = Affine(30, 0, 500_000, 0, -30, 4_650_000)  # ≈ 15.0°E 42.0°N, 4.5 × 3.6 km
# The clip box (lon/lat) holds every image of the mixed request except `outside_clip`.
EXTENT_4326 = {
    "xmin": 14.5,
    "ymin": 41.5,
    "xmax": 15.5,
    "ymax": 42.5,
    "spatialReference": {"wkid": 4326},
}
CONTEXT = {"outSR": 3857, "cellSize": 30, "resamplingMethod": "NEAREST", "extent": EXTENT_4326}
TILE = 64


def _good(path: Path) -> Path:
    return write_raster(
        path, crs=UTM33, transform=GOOD_T, shape=(120, 150), dtype="uint8", nodata=0, seed=1
    )


def _truncated(path: Path) -> Path:
    """A tiled deflate GeoTIFF cut in half: its header opens, its pixels do not read."""
    rng = np.random.default_rng(3)
    data = rng.integers(1, 255, (3, 256, 256), dtype="uint8")  # incompressible: big tiles
    with rasterio.open(
        path,
        "w",
        driver="GTiff",
        width=256,
        height=256,
        count=3,
        dtype="uint8",
        crs=UTM33,
        transform=Affine(30, 0, 503_000, 0, -30, 4_652_000),
        nodata=0,
        tiled=True,
        blockxsize=128,
        blockysize=128,
        compress="deflate",
    ) as dst:
        dst.write(data)
    os.truncate(path, path.stat().st_size // 2)
    return path


def _make_bad_inputs(d: Path) -> dict[str, Path]:
    not_raster = d / "notes.tif"
    not_raster.write_text("field notes, 14 June: flight 3 aborted because of wind\n")
    all_nodata = np.zeros((1, 64, 64), dtype="uint8")
    return {
        "missing": d / "never_written.tif",
        "not_raster": not_raster,
        "truncated": _truncated(d / "truncated.tif"),
        "no_crs": write_raster(
            d / "no_crs.tif", crs=None, transform=GOOD_T, shape=(40, 40), nodata=0, seed=2
        ),
        "all_nodata": write_raster(
            d / "all_nodata.tif",
            crs=UTM33,
            transform=GOOD_T,
            shape=(64, 64),
            nodata=0,
            data=all_nodata,
        ),
        "outside_clip": write_raster(  # ≈ 15°E 49.6°N: far north of the clip box
            d / "outside_clip.tif",
            crs=UTM33,
            transform=Affine(30, 0, 500_000, 0, -30, 5_500_000),
            shape=(50, 50),
            nodata=0,
            seed=4,
        ),
        "complex64": write_raster(
            d / "complex.tif", crs=UTM33, transform=GOOD_T, shape=(32, 32), dtype="complex64"
        ),
        "int64": write_raster(
            d / "int64.tif", crs=UTM33, transform=GOOD_T, shape=(32, 32), dtype="int64"
        ),
    }


# What each failure message must say, in a user's words.
EXPECTED_REASON = {
    "missing": r"not found",
    "not_raster": r"cannot read it as a raster",
    "truncated": r"corrupt|truncated",
    "no_crs": r"no CRS",
    "all_nodata": r"no valid pixels",
    "outside_clip": r"outside the clip",
    "complex64": r"unsupported data type complex64",
    "int64": r"unsupported data type int64",
}


@pytest.fixture(scope="module")
def mixed(client, tmp_path_factory):
    """One request: the good image and every kind of bad image."""
    d = tmp_path_factory.mktemp("bad_inputs")
    good = _good(d / "good.tif")
    bad = _make_bad_inputs(d)
    with rasterio.open(bad["truncated"]) as ds:  # the scenario: opening works
        assert ds.count == 3
    result = create_image_collection(
        [str(good), *map(str, bad.values())],
        image_collection=str(d / "mixed.zarr"),
        context=CONTEXT,
        client=client,
        tile_size=TILE,
    )
    return result, good, bad


def _record_of(result, path: Path):
    hits = [r for r in result.records if any(Path(u).name == path.name for u in r.source_uris)]
    assert len(hits) == 1, f"{path.name}: {len(hits)} records"
    return hits[0]


def _catalog(store: str) -> dict[str, dict]:
    rows = pq.read_table(Path(store) / "catalog.parquet").to_pylist()
    ids = [r["image_id"] for r in rows]
    assert len(ids) == len(set(ids)), f"duplicate catalog rows: {ids}"
    return {r["image_id"]: r for r in rows}


@pytest.mark.parametrize(
    "kind",
    list(EXPECTED_REASON),
)
def test_each_bad_image_fails_alone_with_a_clear_reason(mixed, kind):
    result, _, bad = mixed
    rec = _record_of(result, bad[kind])
    assert rec.status == "failed"
    assert re.search(EXPECTED_REASON[kind], rec.message, re.IGNORECASE), rec.message
    assert "Traceback" not in rec.message
    # the catalog has the failure, as ArcGIS shows it: Category 254 "incomplete"
    row = _catalog(result.store)[rec.image_id]
    assert (row["status"], row["Category"], row["message"]) == ("failed", 254, rec.message)
    assert row["footprint"] is None
    # nothing half-written remains in the store
    assert image_meta(result.store, rec.image_id) is None
    assert not (Path(result.store) / "images" / rec.image_id).exists()


def test_good_image_completes_beside_the_bad_ones(mixed):
    result, good, bad = mixed
    assert result.exit_code == 3
    rec = _record_of(result, good)
    assert rec.status == "complete", rec.message
    assert [r.image_id for r in result.complete] == [rec.image_id]
    assert len(result.failed) == len(bad)
    listed = {Path(f["source"][0]).name for f in result.to_dict()["failed"]}
    assert listed == {p.name for p in bad.values()}
    assert list_image_ids(result.store) == [rec.image_id]
    row = _catalog(result.store)[rec.image_id]
    assert (row["status"], row["Category"]) == ("complete", 1)
    assert len(_catalog(result.store)) == 1 + len(bad)
    assert (image_meta(result.store, rec.image_id) or {}).get("status") == "complete"
    # its statistics are those of the pixels in the store
    stored = zarr.open_array(f"{result.store}/images/{rec.image_id}/b1", mode="r")[:]
    valid = stored[stored != rec.nodata]
    assert rec.stats[0].count == valid.size > 0
    assert (rec.stats[0].min, rec.stats[0].max) == (valid.min(), valid.max())
    assert cli_main(["verify", result.store]) == 0


def test_zero_successes_is_exit_1(client, tmp_path):
    bad = _make_bad_inputs(tmp_path)
    inputs = [bad["not_raster"], bad["no_crs"], bad["all_nodata"], bad["complex64"]]
    result = create_image_collection(
        [str(p) for p in inputs],
        image_collection=str(tmp_path / "none.zarr"),
        context={"outSR": 3857, "cellSize": 30},
        client=client,
        tile_size=TILE,
    )
    assert result.exit_code == 1
    assert result.complete == []
    assert len(result.failed) == len(inputs)
    assert all(r.message for r in result.failed)


# -- request errors: refused before anything is written ----------------------------------


def _kwargs(good: Path, tmp: Path, **change):
    kw = {
        "input_rasters": [str(good)],
        "raster_type": "Raster Dataset",
        "context": {"outSR": 3857, "cellSize": 30},
    }
    for key, value in change.items():
        if key.startswith("context_"):
            kw["context"] = {**kw["context"], key.removeprefix("context_"): value}
        else:
            kw[key] = value
    return kw


REQUEST_ERRORS = {
    # case: (change to a valid request, parameter named in the message)
    "unknown raster type": ({"raster_type": "Landsat 12"}, "rasterType"),
    "bad outSR": ({"context_outSR": {"wkid": 999999}}, "outSR"),
    "malformed JSON": ({"context": '{"outSR": {"wkid": 3857}, "cellSize": 30'}, "context"),
    "no inputs": ({"input_rasters": []}, "inputRasters"),
    "glob matching nothing": ({"input_rasters": ["{tmp}/nowhere/*.tif"]}, "inputRasters"),
    "negative cellSize": ({"context_cellSize": -30}, "cellSize"),
    "zero cellSize": ({"context_cellSize": 0}, "cellSize"),
    "unknown resamplingMethod": ({"context_resamplingMethod": "SUPERSMOOTH"}, "resamplingMethod"),
    "extent xmin > xmax": (
        {"context_extent": {**EXTENT_4326, "xmin": 15.5, "xmax": 14.5}},
        "extent",
    ),
}


@pytest.mark.parametrize("case", list(REQUEST_ERRORS))
def test_request_errors_are_refused_before_anything_is_written(client, tmp_path, case):
    change, parameter = REQUEST_ERRORS[case]
    good = _good(tmp_path / "good.tif")
    change = {
        k: [v.format(tmp=tmp_path) for v in v] if k == "input_rasters" and v else v
        for k, v in change.items()
    }
    out = tmp_path / "out.zarr"
    with pytest.raises(RequestError) as info:
        create_image_collection(
            image_collection=str(out), client=client, **_kwargs(good, tmp_path, **change)
        )
    exc = info.value
    assert parameter in exc.parameter, (exc.parameter, str(exc))
    assert parameter in str(exc)
    assert exc.problem and exc.fix, f"no problem/fix in {exc}"
    assert not out.exists(), "a refused request must write nothing"


def test_existing_output_made_by_another_request_is_refused(client, tmp_path):
    good = _good(tmp_path / "good.tif")
    out = tmp_path / "out.zarr"
    first = create_image_collection(
        **_kwargs(good, tmp_path), image_collection=str(out), client=client, tile_size=TILE
    )
    assert first.exit_code == 0
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    with pytest.raises(RequestError) as info:
        create_image_collection(
            **_kwargs(good, tmp_path, context_resamplingMethod="BILINEAR"),
            image_collection=str(out),
            client=client,
            tile_size=TILE,
        )
    assert info.value.parameter == "imageCollection"
    assert "overwrite" in info.value.fix
    after = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert after == before, "the existing collection must be left untouched"


def test_rerunning_the_same_request_is_idempotent(client, tmp_path):
    a = _good(tmp_path / "a.tif")
    b = write_raster(
        tmp_path / "b.tif",
        crs=UTM33,
        transform=GOOD_T @ Affine.translation(100, 0),
        shape=(90, 110),
        dtype="uint16",
        nodata=0,
        seed=9,
    )
    kw = {
        "input_rasters": [str(a), str(b)],
        "image_collection": str(tmp_path / "c.zarr"),
        "context": CONTEXT,
        "client": client,
        "tile_size": TILE,
    }
    first = create_image_collection(**kw)
    assert first.exit_code == 0
    chunks = {p: p.stat().st_mtime_ns for p in (tmp_path / "c.zarr" / "images").rglob("c/*/*")}
    assert chunks, "the images must have chunk files"
    done = {r.image_id: image_meta(first.store, r.image_id)["completed_at"] for r in first.records}

    second = create_image_collection(**kw)
    assert second.exit_code == 0
    assert {r.image_id: r.checksum for r in second.records} == {
        r.image_id: r.checksum for r in first.records
    }
    assert {
        r.image_id: image_meta(second.store, r.image_id)["completed_at"] for r in second.records
    } == done
    rows = _catalog(second.store)
    assert sorted(rows) == sorted(done)
    assert {k: v["checksum"] for k, v in rows.items()} == {
        r.image_id: r.checksum for r in first.records
    }
    now = {p: p.stat().st_mtime_ns for p in (tmp_path / "c.zarr" / "images").rglob("c/*/*")}
    assert now == chunks, "no chunk may be rewritten by a re-run"
    assert cli_main(["verify", second.store]) == 0


def test_raster_type_not_built_yet_is_a_request_error(tmp_path, monkeypatch):
    from engine.rastertypes import REGISTRY

    monkeypatch.delitem(REGISTRY, "Landsat 8")  # every SPEC type is built now: pretend one is not
    out = tmp_path / "l8.zarr"
    with pytest.raises(RequestError) as err:
        create_image_collection([str(tmp_path)], raster_type="Landsat 8", image_collection=str(out))
    assert "rasterTypeName" in str(err.value) and "Raster Dataset" in str(err.value)
    assert not out.exists()
