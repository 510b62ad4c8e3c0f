"""The real ``mosaicflow`` console script, run in subprocesses (SPEC §2).

Exit codes: 0 every image ingested, 3 some failed (each listed on stderr), 1 nothing
usable, 2 a bad request (nothing written). Each ``create`` that computes starts its own
one-worker LocalCluster, so these tests are few.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import zarr
from affine import Affine
from pyproj import CRS

from tests.conftest import write_raster


def _script() -> str:
    beside = Path(sys.executable).with_name("mosaicflow")
    found = str(beside) if beside.exists() else shutil.which("mosaicflow")
    if not found:
        pytest.skip("the mosaicflow console script is not installed (pip install -e .)")
    return found


def run(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    full_env = {k: v for k, v in os.environ.items() if k != "DASK_SCHEDULER_ADDRESS"}
    full_env.update(env or {})
    return subprocess.run(
        [_script(), *args],
        cwd=cwd,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=180,
    )


def _pair(d: Path) -> tuple[Path, Path]:
    a = write_raster(
        d / "a.tif",
        crs="EPSG:32633",
        transform=Affine(30, 0, 500_000, 0, -30, 4_650_000),
        shape=(120, 140),
        nodata=0,
        seed=1,
    )
    b = write_raster(
        d / "b.tif",
        crs="EPSG:32633",
        transform=Affine(30, 0, 503_000, 0, -30, 4_648_000),
        shape=(100, 130),
        dtype="uint16",
        nodata=0,
        seed=2,
    )
    return a, b


def test_create_info_verify_and_refuse_to_overwrite(tmp_path):
    a, b = _pair(tmp_path)
    store = tmp_path / "out.zarr"
    args = ["create", str(store), str(a), str(b), "--out-sr", "3857", "--workers", "1"]
    r = run(*args, "--resampling", "BILINEAR", "--json", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["exit_code"] == 0 and out["complete"] == 2 and out["failed"] == []
    assert len(out["image_ids"]) == 2
    groups = [p.name for p in (store / "images").iterdir() if p.is_dir()]
    assert sorted(groups) == sorted(out["image_ids"])
    assert "Dask dashboard: http" in r.stderr
    assert "chunks" in r.stderr and "images 2/2" in r.stderr, r.stderr

    info = run("info", str(store), "--json", cwd=tmp_path)
    assert info.returncode == 0, info.stderr
    described = json.loads(info.stdout)
    assert (described["images"], described["complete"], described["failed"]) == (2, 2, 0)
    assert sorted(described["image_ids"]) == sorted(out["image_ids"])

    verify = run("verify", str(store), cwd=tmp_path)
    assert verify.returncode == 0, verify.stderr
    assert "verified 2 images: 0 bad" in verify.stderr

    # another request onto the same output, without --overwrite: refused, store untouched
    before = (store / "catalog.parquet").read_bytes()
    again = run(*args, "--resampling", "NEAREST", cwd=tmp_path)
    assert again.returncode == 2, again.stderr
    assert "imageCollection" in again.stderr and "--overwrite" in again.stderr
    assert (store / "catalog.parquet").read_bytes() == before


def test_a_missing_file_beside_a_good_one_is_exit_3(tmp_path):
    a, _ = _pair(tmp_path)
    missing = tmp_path / "gone.tif"
    store = tmp_path / "out.zarr"
    r = run("create", str(store), str(a), str(missing), "--workers", "1", cwd=tmp_path)
    assert r.returncode == 3, r.stderr
    failed = [line for line in r.stderr.splitlines() if "image failed" in line]
    assert len(failed) == 1 and "gone.tif" in failed[0] and "not found" in failed[0], r.stderr
    assert "1 of 2 images ingested" in r.stderr
    assert (store / "catalog.parquet").exists()


def test_only_bad_files_is_exit_1(tmp_path):
    text = tmp_path / "readme.tif"
    text.write_text("not an image")
    no_crs = write_raster(
        tmp_path / "no_crs.tif", crs=None, transform=Affine(1, 0, 0, 0, -1, 0), shape=(20, 20)
    )
    r = run("create", str(tmp_path / "out.zarr"), str(text), str(no_crs), cwd=tmp_path)
    assert r.returncode == 1, r.stderr
    failed = [line for line in r.stderr.splitlines() if "image failed" in line]
    assert len(failed) == 2, r.stderr
    assert any("readme.tif" in f and "raster" in f for f in failed)
    assert any("no_crs.tif" in f and "no CRS" in f for f in failed)


def test_a_bad_out_sr_is_exit_2_and_writes_nothing(tmp_path):
    a, _ = _pair(tmp_path)
    store = tmp_path / "out.zarr"
    r = run("create", str(store), str(a), "--out-sr", "foo", "--workers", "1", cwd=tmp_path)
    assert r.returncode == 2, r.stderr
    assert "outSR" in r.stderr and "'foo'" in r.stderr, r.stderr
    assert r.stdout == ""
    assert not store.exists()


def test_request_file_with_the_seed_parameters(tmp_path):
    a, b = _pair(tmp_path)
    request = {
        "inputRasters": {"uris": [str(a), str(b)]},
        "rasterType": {"rasterTypeName": "Raster Dataset"},
        "imageCollection": {"serviceProperties": {"name": "seedcollection"}},
        "context": {"outSR": {"wkid": 102100}, "cellSize": 60, "resamplingMethod": "BILINEAR"},
    }
    path = tmp_path / "REQUEST.json"
    path.write_text(json.dumps(request))
    raster_store = tmp_path / "rasterstore"
    raster_store.mkdir()
    r = run(
        "create",
        "--request",
        str(path),
        "--workers",
        "1",
        "--json",
        cwd=tmp_path,
        env={"MOSAICFLOW_RASTER_STORE": str(raster_store)},
    )
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["complete"] == 2 and out["name"] == "seedcollection"
    store = raster_store / "seedcollection.zarr"
    assert Path(out["store"]) == store
    meta = zarr.open_group(str(store), mode="r").attrs["mosaicflow"]
    assert CRS.from_wkt(meta["crs"]).to_epsg() == 3857 and meta["cell_size"] == 60
