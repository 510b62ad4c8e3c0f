"""Living collections: add and remove images, one writer at a time (issue 6, item 2).

What a user checks: after an add the catalog, STAC and descriptor list the new images next
to the old ones, whose rows and ObjectIDs did not change, and an added image holds the very
pixels it would have had if it had been there from the start (the lattice is the
collection's); a remove gives back the catalog as it was; an ObjectID is never reused; an
add asking for another cell size or CRS is refused and changes nothing; two ``mosaicflow
add`` processes at once keep every image; the store lock admits one holder at a time and
takes over a lock whose holder died.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import socket
import subprocess
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from affine import Affine

from engine import create_image_collection, open_collection
from engine.cli import main as cli_main
from engine.errors import RequestError
from engine.ingest import run_request
from engine.items import ItemRegistry
from engine.lock import LOCK_NAME, store_lock
from engine.request import parse_request
from engine.server.gp import adds_to_existing
from engine.store import image_meta, list_image_ids
from engine.update import add_images, remove_images
from tests.conftest import write_raster
from tests.test_cli import _script

TILE = 64
CONTEXT = {"outSR": 3857, "cellSize": 30, "resamplingMethod": "BILINEAR"}


def _scene(d: Path, k: int) -> str:
    return str(
        write_raster(
            d / f"s{k}.tif",
            crs="EPSG:32633",
            transform=Affine(25, 0, 500_000 + k * 1700, 0, -25, 5_200_000 - (k % 3) * 900),
            shape=(80, 100),
            dtype="uint16",
            nodata=0,
            seed=30 + k,
        )
    )


def _catalog(store: Path) -> dict[str, dict]:
    return {r["image_id"]: r for r in pq.read_table(store / "catalog.parquet").to_pylist()}


def _stac_items(store: Path) -> set[str]:
    return {p.stem for p in (store / "stac" / "items").glob("*.json")}


def _descriptor(store: Path) -> dict:
    return json.loads((store / "service.json").read_text())


def _snapshot(store: Path) -> dict[str, bytes]:
    return {str(p.relative_to(store)): p.read_bytes() for p in store.rglob("*") if p.is_file()}


def test_add_then_remove_round_trips_the_catalog(client, tmp_path):
    a, b, c = (_scene(tmp_path, k) for k in range(3))
    store = tmp_path / "live.zarr"
    kw = {"context": CONTEXT, "client": client, "tile_size": TILE}
    first = create_image_collection([a, b], image_collection=str(store), **kw)
    assert first.exit_code == 0
    before = _catalog(store)
    stac_before, desc_before = _stac_items(store), _descriptor(store)
    assert sorted(r["ObjectID"] for r in before.values()) == [1, 2]

    added = add_images(store, [c], client=client)  # resampled as the collection was made
    assert added.exit_code == 0 and len(added.records) == 1
    new_id = added.records[0].image_id
    after = _catalog(store)
    assert set(after) == set(before) | {new_id}
    for image_id, row in before.items():  # the old rows, ObjectIDs included, are untouched
        assert {k: v for k, v in after[image_id].items() if k != "ingested_at"} == {
            k: v for k, v in row.items() if k != "ingested_at"
        }
    assert after[new_id]["ObjectID"] == 3
    assert _stac_items(store) == stac_before | {new_id}
    desc = _descriptor(store)
    assert desc["mosaicflow"]["image_count"] == 3
    assert desc["extent"]["xmax"] > desc_before["extent"]["xmax"]  # scene 2 lies east

    # the added image is what it would have been in the collection from the start
    whole = create_image_collection([a, b, c], image_collection=str(tmp_path / "w.zarr"), **kw)
    assert {r.image_id: r.checksum for r in whole.records} == {
        i: r["checksum"] for i, r in after.items()
    }

    assert cli_main(["remove", str(store), new_id]) == 0
    assert _catalog(store) == {
        i: r for i, r in after.items() if i != new_id
    }  # rows and ObjectIDs as before the add
    assert _stac_items(store) == stac_before
    desc = _descriptor(store)
    assert desc["extent"] == desc_before["extent"]
    assert desc["mosaicflow"]["image_count"] == 2
    assert not (store / "images" / new_id).exists()
    assert cli_main(["verify", str(store)]) == 0

    again = add_images(store, [c], client=client)  # a removed ObjectID is not reused
    assert again.exit_code == 0 and _catalog(store)[new_id]["ObjectID"] == 4
    with pytest.raises(RequestError) as err:
        remove_images(store, ["no-such-image"])
    assert err.value.parameter == "IMAGE_ID" and "info" in err.value.fix


def test_an_add_conflicting_with_the_collection_frame_is_refused(client, tmp_path):
    store = tmp_path / "frame.zarr"
    create_image_collection(
        [_scene(tmp_path, 0)], image_collection=str(store), context=CONTEXT, client=client
    )
    before = _snapshot(store)
    new = _scene(tmp_path, 1)
    with pytest.raises(RequestError) as err:
        add_images(store, [new], context={"cellSize": 10}, client=client)
    assert err.value.parameter == "context.cellSize" and "(30)" in str(err.value)
    with pytest.raises(RequestError) as err:
        add_images(store, [new], context={"outSR": 32633}, client=client)
    assert err.value.parameter == "context.outSR" and "EPSG:3857" in str(err.value)
    with pytest.raises(RequestError) as err:
        add_images(tmp_path / "none.zarr", [new], client=client)
    assert "mosaicflow create" in err.value.fix
    assert _snapshot(store) == before, "a refused add must change nothing"
    assert not (tmp_path / "none.zarr").exists()


def test_two_concurrent_add_processes_keep_every_image(client, tmp_path):
    store = tmp_path / "busy.zarr"
    create_image_collection(
        [_scene(tmp_path, 0)], image_collection=str(store), context=CONTEXT, client=client
    )
    scheduler = client.scheduler.address
    batches = [[_scene(tmp_path, k) for k in (1, 2, 3)], [_scene(tmp_path, k) for k in (4, 5, 6)]]
    env = {k: v for k, v in os.environ.items() if k != "DASK_SCHEDULER_ADDRESS"}
    procs = [
        subprocess.Popen(
            [_script(), "add", str(store), *batch, "--scheduler", scheduler],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for batch in batches
    ]
    outs = [p.communicate(timeout=180) for p in procs]
    for p, (_, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0, err
    rows = _catalog(store)
    assert len(rows) == 7 and {r["status"] for r in rows.values()} == {"complete"}
    assert sorted(r["ObjectID"] for r in rows.values()) == list(range(1, 8))
    assert {Path(r["source_uris"][0]).name for r in rows.values()} == {
        f"s{k}.tif" for k in range(7)
    }
    assert len(_stac_items(store)) == 7 and _descriptor(store)["mosaicflow"]["image_count"] == 7
    assert not (store / LOCK_NAME).exists()
    assert cli_main(["verify", str(store)]) == 0


def _count_under_lock(store: str, counter: str, n: int) -> None:
    for _ in range(n):
        with store_lock(store, "test", poll=0.01):
            value = int(Path(counter).read_text())
            time.sleep(0.01)  # a read-modify-write that loses updates without the lock
            Path(counter).write_text(str(value + 1))


def test_the_store_lock_admits_one_holder_and_takes_over_a_dead_ones(tmp_path):
    counter = tmp_path / "counter"
    counter.write_text("0")
    ctx = multiprocessing.get_context("fork")  # three real processes, no re-import
    procs = [
        ctx.Process(target=_count_under_lock, args=(str(tmp_path), str(counter), 10))
        for _ in range(3)
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    assert counter.read_text() == "30"

    # a holder SIGKILLed while holding the lock: the next writer takes over at once
    dead = subprocess.Popen(["true"])
    dead.wait()
    lock_file = tmp_path / LOCK_NAME
    lock_file.write_text(
        json.dumps(
            {
                "token": "gone",
                "host": socket.gethostname(),
                "pid": dead.pid,
                "heartbeat": time.time(),
            }
        )
    )
    t0 = time.monotonic()
    with store_lock(tmp_path, "after a crash", timeout=5):
        assert json.loads(lock_file.read_text())["purpose"] == "after a crash"
    assert time.monotonic() - t0 < 2 and not lock_file.exists()

    # a live holder is waited for, and the wait ends with a clear error at the timeout
    with store_lock(tmp_path, "long add"), pytest.raises(Exception) as err:
        store_lock(tmp_path, "second", timeout=0.5).acquire()
    assert "long add" in str(err.value) and LOCK_NAME in str(err.value)


def test_a_collection_given_as_input_adds_its_images_byvalue_or_byref(client, tmp_path):
    kw = {"context": {**CONTEXT, "resamplingMethod": "NEAREST"}, "client": client}
    src = tmp_path / "src.zarr"
    made = create_image_collection(
        [_scene(tmp_path, 0), _scene(tmp_path, 1)], image_collection=str(src), tile_size=TILE, **kw
    )
    assert made.exit_code == 0
    original = {r.image_id: r.checksum for r in made.records}
    for byref in (False, True):
        dst = tmp_path / f"dst-{byref}.zarr"
        create_image_collection(
            [_scene(tmp_path, 2)], image_collection=str(dst), tile_size=TILE, **kw
        )
        added = add_images(dst, [src], byref=byref, client=client)
        assert added.exit_code == 0 and len(added.records) == 2
        rows = _catalog(dst)
        # the same images (ids, names), the same pixels (checksums) on the same lattice
        assert {i: rows[i]["checksum"] for i in original} == original
        assert all(rows[i]["byref"] is byref for i in original)
        assert all(
            rows[i]["source_uris"] == [str(src / "images" / i)] for i in original
        )  # where the pixels came from
        chunks = {i: list((dst / "images" / i).rglob("c/*/*")) for i in original}
        assert all(bool(c) is not byref for c in chunks.values())
        coll, back = open_collection(dst), open_collection(src)
        for i in original:
            np.testing.assert_array_equal(coll.image(i).b1.values, back.image(i).b1.values)
        assert cli_main(["verify", str(dst)]) == 0
    with pytest.raises(RequestError) as err:
        add_images(src, [src], client=client)
    assert "collection the images are added to" in str(err.value)


def test_a_create_request_naming_an_existing_collection_adds_to_it(client, tmp_path):
    """The seed's imageCollection {"itemId"} (through the portal) or {"uri"} (a request
    file) of an existing collection: the images are added, the others kept."""
    store = tmp_path / "named.zarr"
    create_image_collection(
        [_scene(tmp_path, 0)], image_collection=str(store), context=CONTEXT, client=client
    )
    registry = ItemRegistry(tmp_path / "items.sqlite")
    item = registry.add_collection("named", store, "http://x/Hosted/named/ImageServer")
    request = parse_request(
        {
            "inputRasters": {"uris": [_scene(tmp_path, 1)]},
            "imageCollection": {"itemId": item["id"]},
        }
    )
    result = run_request(request, client=client, resolver=registry)
    assert result.exit_code == 0 and result.store == str(store)
    assert len(_catalog(store)) == 2

    req_file = tmp_path / "request.json"
    req_file.write_text(
        json.dumps(
            {
                "inputRasters": {"uris": [_scene(tmp_path, 2)]},
                "imageCollection": {"uri": str(store)},
                "context": {"resamplingMethod": "NEAREST"},
            }
        )
    )
    argv = ["create", "--request", str(req_file), "--scheduler", client.scheduler.address]
    assert cli_main(argv) == 0
    rows = _catalog(store)
    assert len(rows) == 3 and sorted(r["ObjectID"] for r in rows.values()) == [1, 2, 3]


def test_a_rerun_add_skips_complete_images_and_retries_failed_ones(client, tmp_path):
    store = tmp_path / "retry.zarr"
    create_image_collection(
        [_scene(tmp_path, 0)], image_collection=str(store), context=CONTEXT, client=client
    )
    good, late = _scene(tmp_path, 1), str(tmp_path / "late" / "s2.tif")
    first = add_images(store, [good, late], client=client)
    assert first.exit_code == 3
    rows = _catalog(store)
    failed = next(r for r in rows.values() if r["status"] == "failed")
    assert failed["source_uris"] == [late] and failed["Category"] == 254
    done = {i: image_meta(store, i)["completed_at"] for i in list_image_ids(store)}

    (tmp_path / "late").mkdir()
    _scene(tmp_path / "late", 2)  # the missing input arrives
    again = add_images(store, [good, late], client=client)
    assert again.exit_code == 0
    after = _catalog(store)
    assert after[failed["image_id"]]["status"] == "complete"
    assert after[failed["image_id"]]["ObjectID"] == failed["ObjectID"]
    assert len(after) == 3
    # the images complete before were skipped, not written again
    assert {i: image_meta(store, i)["completed_at"] for i in done} == done


def test_a_remove_cut_short_never_brings_the_image_back(client, tmp_path, monkeypatch):
    """A crash after the catalog stopped listing a removed image but before its group was
    deleted: the next writer deletes the group and does not list the image again."""
    store = tmp_path / "cut.zarr"
    made = create_image_collection(
        [_scene(tmp_path, 0), _scene(tmp_path, 1)],
        image_collection=str(store),
        context=CONTEXT,
        client=client,
    )
    gone = made.records[0].image_id

    def crash(*args, **kwargs):
        raise KeyboardInterrupt  # the process dies right after publishing the catalog

    with monkeypatch.context() as m:
        m.setattr("engine.store.remove_image", crash)
        with pytest.raises(KeyboardInterrupt):
            remove_images(store, [gone])
    assert gone not in _catalog(store) and (store / "images" / gone).exists()
    assert image_meta(store, gone)["status"] == "removed"

    add_images(
        store, [_scene(tmp_path, 2)], context={"resamplingMethod": "BILINEAR"}, client=client
    )
    rows = _catalog(store)
    assert gone not in rows and len(rows) == 2
    assert not (store / "images" / gone).exists()
    assert not (store / LOCK_NAME).exists()
    assert cli_main(["verify", str(store)]) == 0


def test_which_gp_requests_add(tmp_path):
    """GP jobs: {itemId} or {uri} of an existing collection add; a name creates/resumes."""
    existing = tmp_path / "have.zarr"
    (existing).mkdir()
    (existing / "zarr.json").write_text("{}")

    def req(target, overwrite=False):
        return parse_request(
            {"inputRasters": {"uris": ["a.tif"]}, "imageCollection": target, "overwrite": overwrite}
        )

    assert adds_to_existing(req({"itemId": "abc123"})) == "add"
    assert adds_to_existing(req({"uri": str(existing)})) == "add"
    assert adds_to_existing(req({"uri": str(tmp_path / "new.zarr")})) == "resume"
    assert adds_to_existing(req({"serviceProperties": {"name": "have"}})) == "resume"
    assert adds_to_existing(req({"uri": str(existing)}, overwrite=True)) == "resume"
