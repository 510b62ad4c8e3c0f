"""A create killed with SIGKILL at any point resumes to the result of an uninterrupted run
(issue 6, item 3; SPEC §6).

Each case runs the real ``mosaicflow create`` in a child process that SIGKILLs itself at
one point of the run (a wrapper around one engine function, installed before the CLI
starts: the engine itself is unchanged): while probing, once one image is finished and
chunks of the others are still to come, after the chunks but before the catalog, and
halfway through writing the catalog file (publishing). Right after the kill the store must
be consistent — a catalog, if any, is whole and every image it lists as complete verifies;
every group marked complete holds exactly the pixels its checksum says — and the same
command then finishes the job: exit 0, the same per-image checksums as a clean run, one
row per image, ObjectIDs 1..n, no temporary files left, ``mosaicflow verify`` clean — and
the images finished before the kill are kept, not computed again.
"""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from affine import Affine

from engine import create_image_collection
from engine.cli import main as cli_main
from engine.store import image_meta, list_image_ids
from engine.update import add_images
from engine.verify import image_checksum
from tests.conftest import write_raster

TILE = 128
CONTEXT = {"outSR": 3857, "cellSize": 20, "resamplingMethod": "BILINEAR"}
ARGS = ["--out-sr", "3857", "--cell-size", "20", "--resampling", "BILINEAR"]

# The child: wrap one engine function so that the process SIGKILLs itself there, then run
# the CLI. argv: point, then the CLI arguments.
DRIVER = r"""
import os, signal, sys
point, argv = sys.argv[1], sys.argv[2:]

def die():
    os.kill(os.getpid(), signal.SIGKILL)

if point == "probing":
    import engine.rastertypes.raster_dataset as rd
    probe, calls = rd.probe, []
    def killing_probe(*a, **k):
        calls.append(1)
        if len(calls) == 3:
            die()
        return probe(*a, **k)
    rd.probe = killing_probe
elif point == "mid-chunks":
    # the second image's finish task kills the run once the first image is committed:
    # one image complete, one written but not committed, the others not finished
    import threading
    import engine.compute as compute
    finish, calls, first_done = compute.finish_task, [], threading.Event()
    def killing_finish(*a, **k):
        calls.append(1)
        if len(calls) >= 2:
            first_done.wait(60)
            die()
        rec = finish(*a, **k)
        first_done.set()
        return rec
    # named as what it replaces, so that Dask hashes and pickles it by that reference
    killing_finish.__module__, killing_finish.__qualname__ = "engine.compute", "finish_task"
    compute.finish_task = killing_finish
elif point == "before-catalog":
    import engine.update as update
    update.commit = lambda *a, **k: die()
elif point == "mid-catalog-write":
    import engine.catalog as catalog
    def half_written(path, write):
        import io
        buf = io.BytesIO()
        write(buf)
        tmp = os.path.join(os.path.dirname(path), "." + os.path.basename(path) + ".x.tmp")
        with open(tmp, "wb") as fh:
            fh.write(buf.getvalue()[: len(buf.getvalue()) // 2])
        die()
    catalog.atomic_write = half_written

from engine.cli import main
sys.exit(main(argv))
"""


def _scenes(d: Path) -> list[str]:
    return [
        str(
            write_raster(
                d / f"k{k}.tif",
                crs="EPSG:32633",
                transform=Affine(15, 0, 500_000 + k * 1100, 0, -15, 5_200_000 - k * 500),
                shape=(200, 230),
                dtype="uint16",
                nodata=0,
                bands=2,
                seed=50 + k,
            )
        )
        for k in range(4)
    ]


@pytest.fixture(scope="module")
def clean(client, tmp_path_factory) -> tuple[list[str], dict[str, dict]]:
    """The inputs and the catalog rows of an uninterrupted run."""
    d = tmp_path_factory.mktemp("kill-inputs")
    scenes = _scenes(d)
    result = create_image_collection(
        scenes,
        image_collection=str(d / "clean.zarr"),
        context=CONTEXT,
        client=client,
        tile_size=TILE,
    )
    assert result.exit_code == 0
    return scenes, _rows(d / "clean.zarr")


def _rows(store: Path) -> dict[str, dict]:
    """Catalog rows by image id, without the ingestion time."""
    rows = pq.read_table(store / "catalog.parquet").to_pylist()
    assert len({r["image_id"] for r in rows}) == len(rows), "one row per image"
    return {r["image_id"]: {k: v for k, v in r.items() if k != "ingested_at"} for r in rows}


def _create(store: Path, scenes: list[str], point: str | None) -> subprocess.CompletedProcess:
    argv = ["create", str(store), *scenes, *ARGS, "--tile-size", str(TILE), "--workers", "2"]
    cmd = [sys.executable, "-c", DRIVER, point or "none", *argv]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


def _assert_consistent(store: Path) -> None:
    """What a reader may rely on at any moment, even right after a crash."""
    for image_id in list_image_ids(store):
        meta = image_meta(store, image_id) or {}
        if meta.get("status") == "complete":  # the commit mark: every chunk is there
            assert image_checksum(str(store), image_id, meta["band_names"]) == meta["checksum"]
    cat = store / "catalog.parquet"
    if cat.exists():
        rows = pq.read_table(cat).to_pylist()  # whole, never half-written
        assert len({r["image_id"] for r in rows}) == len(rows)
        assert cli_main(["verify", str(store)]) == 0


@pytest.mark.parametrize("point", ["probing", "mid-chunks", "before-catalog", "mid-catalog-write"])
def test_a_killed_create_resumes_to_the_clean_result(client, clean, tmp_path, point):
    scenes, expected = clean
    store = tmp_path / "k.zarr"
    killed = _create(store, scenes, point)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    if store.exists():
        _assert_consistent(store)
    status = {i: (image_meta(store, i) or {}).get("status") for i in list_image_ids(store)}
    if point == "probing":
        assert not status, "killed before any image was planned"
    elif point == "mid-chunks":
        assert "writing" in status.values(), "killed with images half-written"
        assert "complete" in status.values(), "and some finished"
    else:
        assert set(status.values()) == {"complete"} and len(status) == len(expected)
        assert not (store / "catalog.parquet").exists()
    if point == "mid-catalog-write":
        assert list(store.glob(".catalog.parquet.*.tmp")), "the half-written temp file"
    finished = [i for i, v in status.items() if v == "complete"]
    chunks = {
        p: p.stat().st_mtime_ns for i in finished for p in (store / "images" / i).rglob("c/*/*")
    }

    # the next run of the same request (the flags make the same request as these values)
    again = create_image_collection(
        scenes, image_collection=str(store), context=CONTEXT, client=client, tile_size=TILE
    )
    assert again.exit_code == 0, again.failed
    rows = _rows(store)
    assert rows == expected  # the clean run's rows: checksums, ObjectIDs, footprints, ...
    if point in ("mid-chunks", "mid-catalog-write"):  # finished images kept, not recomputed
        assert chunks and chunks == {p: p.stat().st_mtime_ns for p in chunks}
    assert not list(store.glob(".*.tmp*")), "temporary files of the killed run are gone"
    assert sorted(p.stem for p in (store / "stac" / "items").glob("*.json")) == sorted(expected)
    assert (store / "service.json").exists()
    _assert_consistent(store)


def test_a_killed_add_keeps_its_finished_images_for_the_next_writer(client, clean, tmp_path):
    """An add killed before its catalog: the next add, of other images, lists them too."""
    scenes, expected = clean
    store = tmp_path / "a.zarr"
    first = create_image_collection(
        scenes[:1], image_collection=str(store), context=CONTEXT, client=client, tile_size=TILE
    )
    assert first.exit_code == 0
    cmd = [sys.executable, "-c", DRIVER, "before-catalog", "add", str(store), *scenes[1:3]]
    cmd += ["--resampling", "BILINEAR", "--workers", "2"]
    killed = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert len(pq.read_table(store / "catalog.parquet")) == 1  # the killed add listed nothing
    _assert_consistent(store)

    later = add_images(store, scenes[3:], context={"resamplingMethod": "BILINEAR"}, client=client)
    assert later.exit_code == 0 and len(later.records) == 1
    rows = _rows(store)
    assert sorted(rows) == sorted(expected)
    assert {i: r["checksum"] for i, r in rows.items()} == {
        i: r["checksum"] for i, r in expected.items()
    }
    _assert_consistent(store)
