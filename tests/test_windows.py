"""Windowed submission: a large request reaches the scheduler as a run of small graphs of
whole images, never as one graph, and the scheduler forgets each window as it finishes.

Checked on the real session cluster through a scheduler plugin that sees every graph the
scheduler receives (not the engine's own account of what it sent).
"""

from __future__ import annotations

import time
from typing import Any

import pyarrow.parquet as pq
import pytest
from affine import Affine
from distributed.diagnostics.plugin import SchedulerPlugin

from engine import create_image_collection
from engine.compute import windows
from engine.plan import ImagePlan
from tests.conftest import write_raster


class GraphLog(SchedulerPlugin):
    """The task count of every graph the scheduler receives, and the most tasks it held."""

    name = "test-graph-log"

    def __init__(self) -> None:
        self.graphs: list[int] = []
        self.peak_held = 0

    def update_graph(self, scheduler: Any, *, tasks: list[Any], **kwargs: Any) -> None:
        self.graphs.append(len(tasks))
        self.peak_held = max(self.peak_held, len(scheduler.tasks))


def _log(dask_scheduler: Any) -> dict[str, Any]:
    plugin = dask_scheduler.plugins[GraphLog.name]
    return {"graphs": list(plugin.graphs), "peak_held": plugin.peak_held}


def _plan(n_chunks: int) -> ImagePlan:
    return ImagePlan(None, None, [(0, k) for k in range(n_chunks)], None, "uint8", 0, [], None)  # type: ignore[arg-type]


def test_windows_hold_whole_images_up_to_the_limit():
    plans = [_plan(n) for n in (3, 4, 2, 9, 1, 1)]
    cut = list(windows(plans, 6))
    assert [p for w in cut for p in w] == plans  # every image once, in order
    assert [[len(p.chunks) for p in w] for w in cut] == [[3], [4, 2], [9], [1, 1]]
    # a window exceeds the limit only when one image alone does
    assert all(sum(len(p.chunks) for p in w) <= 6 or len(w) == 1 for w in cut)


@pytest.fixture(scope="module")
def rasters(tmp_path_factory) -> list[str]:
    d = tmp_path_factory.mktemp("windows")
    return [
        str(
            write_raster(
                d / f"w{k:02d}.tif",
                crs="EPSG:32633",
                transform=Affine(
                    10, 0, 500_000 + (k % 4) * 3000, 0, -10, 4_650_000 - k // 4 * 3000
                ),
                shape=(300, 700),  # two chunks of 512 across at 10 m
                dtype="uint16",
                nodata=0,
                seed=k,
            )
        )
        for k in range(12)
    ]


def test_a_request_is_submitted_in_windows_and_equals_one_graph(rasters, tmp_path, client):
    whole = create_image_collection(
        rasters, image_collection=str(tmp_path / "whole.zarr"), client=client
    )
    assert whole.exit_code == 0
    client.register_plugin(GraphLog())
    try:
        events: list[dict[str, Any]] = []
        windowed = create_image_collection(
            rasters,
            image_collection=str(tmp_path / "windowed.zarr"),
            client=client,
            window_chunks=4,
            progress=events.append,
        )
        log = client.run_on_scheduler(_log)
    finally:
        client.run_on_scheduler(lambda dask_scheduler: dask_scheduler.plugins.pop(GraphLog.name))
    assert windowed.exit_code == 0 and len(windowed.complete) == 12
    chunks = sum(e["chunks"] for e in events if e.get("stage") == "planned")
    assert chunks >= 24  # at least two chunk tasks per image
    # the scheduler got many small graphs of at most two images (4 chunk tasks) each; an
    # image is about 10 nodes (job, template, 2 chunks, overview level, finish, data nodes),
    # so the whole request would be ~120
    assert len(log["graphs"]) >= 6
    assert max(log["graphs"]) <= 20
    assert log["peak_held"] < sum(log["graphs"])  # finished windows were forgotten
    # and the collection is the same as one submitted whole
    a = pq.read_table(tmp_path / "whole.zarr" / "catalog.parquet").to_pydict()
    b = pq.read_table(tmp_path / "windowed.zarr" / "catalog.parquet").to_pydict()
    assert dict(zip(a["Name"], a["checksum"], strict=True)) == dict(
        zip(b["Name"], b["checksum"], strict=True)
    )
    # nothing of the run is left on the scheduler once it returned
    deadline = time.monotonic() + 10
    while client.run_on_scheduler(lambda dask_scheduler: len(dask_scheduler.tasks)) and (
        time.monotonic() < deadline
    ):
        time.sleep(0.1)
    assert client.run_on_scheduler(lambda dask_scheduler: len(dask_scheduler.tasks)) == 0


def test_a_long_lived_cluster_rewrites_a_recreated_store_right(rasters, tmp_path, client):
    """Workers cache opened arrays; a store re-created at the same path with another cell
    size (other array shapes) must be written through the new metadata, not the cached."""
    from engine.verify import verify_collection

    target = tmp_path / "again.zarr"
    first = create_image_collection(
        rasters[:3], image_collection=str(target), context={"cellSize": 40}, client=client
    )
    assert first.exit_code == 0
    finer = {"cellSize": 10}  # larger arrays than the ones the workers opened first
    again = create_image_collection(
        rasters[:3], image_collection=str(target), context=finer, client=client, overwrite=True
    )
    fresh = create_image_collection(
        rasters[:3], image_collection=str(tmp_path / "fresh.zarr"), context=finer, client=client
    )
    assert again.exit_code == fresh.exit_code == 0
    assert {r.name: r.checksum for r in again.complete} == {
        r.name: r.checksum for r in fresh.complete
    }
    report = verify_collection(str(target))
    assert report["checked"] == 3 and report["bad"] == 0, report


def test_probing_on_the_cluster_equals_probing_here(rasters, tmp_path, client):
    """Large requests are probed by the workers when they are on other machines: the
    same images, grids and failures as probing in the client process."""
    from engine.probe import _cluster_for, probe_all
    from engine.request import build_request
    from engine.sources import resolve_sources

    bad = tmp_path / "bad.tif"
    bad.write_bytes(b"not a raster")
    req = build_request([*rasters, str(bad)], None, str(tmp_path / "x.zarr"), None)
    refs = resolve_sources(req.input_rasters)
    here = probe_all(refs, "Raster Dataset")
    there = probe_all(refs, "Raster Dataset", client=client, on_cluster=True)
    assert [s.image_id for s in there[0]] == [s.image_id for s in here[0]]
    assert [s.finest_part.grid.bounds for s in there[0]] == [
        s.finest_part.grid.bounds for s in here[0]
    ]
    assert [(f.image_id, f.message) for f in there[1]] == [(f.image_id, f.message) for f in here[1]]
    assert len(there[1]) == 1 and "GDAL cannot read it" in there[1][0].message
    # the session cluster's workers are on this machine: by default probing stays here
    assert _cluster_for(refs * 100, client, None) is None
