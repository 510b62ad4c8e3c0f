"""Structure of the ingestion graph: deterministic keys, one task per planned chunk."""

from __future__ import annotations

from affine import Affine
from pyproj import CRS

from engine.grid import Grid
from engine.plan import plan_collection
from engine.rastertypes.base import ImageSource, SourcePart
from graphs.chunk import ImageJob, ingest_chunk
from graphs.ingest import build_ingest_graph
from graphs.templates import ImageTemplate, write_template

UTM = CRS.from_epsg(32633)


def job_for(n_images: int, size: int = 1000, tile: int = 128):
    work = []
    srcs = []
    for k in range(n_images):
        g = Grid(UTM, Affine(10, 0, 500_000 + k * 5_000, 0, -10, 4_000_000), (size, size))
        part = SourcePart(f"/data/{k}.tif", (1, 2), ("b1", "b2"), g, "uint16", 0.0)
        srcs.append(ImageSource(f"img{k}", f"img{k}", [f"/data/{k}.tif"], "Raster Dataset", [part]))
    plan = plan_collection(srcs, out_crs=CRS.from_epsg(3857), cell_size=12.0, tile=tile)
    for p in plan.images:
        job = ImageJob(
            p.source.image_id,
            tuple(p.source.parts),
            p.grid,
            tile,
            p.dtype,
            p.nodata,
            "bilinear",
            ("b1", "b2"),
            "/out.zarr",
            scales=tuple(p.scales),
        )
        work.append((job, p.chunks, ImageTemplate({"image_id": job.image_id}, ())))
    return work


def test_same_request_same_keys():
    a, _ = build_ingest_graph(job_for(3))
    b, _ = build_ingest_graph(job_for(3))
    assert set(a) == set(b)
    assert all("uuid" not in str(k) for k in a)


def test_one_task_per_planned_chunk_and_linear_size():
    work = job_for(4)
    dsk, outputs = build_ingest_graph(work)
    n_chunks = sum(len(c) for _, c, _ in work)
    tasks = [v for v in dsk.values() if isinstance(v, tuple) and v and v[0] is ingest_chunk]
    assert len(tasks) == n_chunks
    # per image: its job and template data nodes and its template task
    assert len(dsk) == n_chunks + 3 * len(work)
    assert sum(len(v) for v in outputs.values()) == n_chunks
    # doubling the images doubles the graph (no N^2 terms)
    dsk8, _ = build_ingest_graph(job_for(8))
    assert abs(len(dsk8) - 2 * len(dsk)) <= len(dsk) * 0.1


def test_chunk_tasks_reference_the_image_node_not_a_copy():
    dsk, _ = build_ingest_graph(job_for(1))
    job_keys = [k for k, v in dsk.items() if isinstance(v, ImageJob)]
    assert len(job_keys) == 1
    for v in dsk.values():
        if isinstance(v, tuple):
            assert v[1] == job_keys[0]


def test_every_chunk_task_runs_after_its_image_template():
    dsk, outputs = build_ingest_graph(job_for(2))
    templates = {k: v for k, v in dsk.items() if isinstance(v, tuple) and v[0] is write_template}
    assert len(templates) == 2  # one per image
    for image_id, keys in outputs.items():
        (tk,) = [k for k, v in templates.items() if dsk[v[1]].image_id == image_id]
        assert all(dsk[key][-1] == tk for key in keys)


def _ancestors(dsk: dict, key) -> set:
    """Every key ``key``'s task depends on, directly or not."""
    from dask.core import get_dependencies

    seen: set = set()
    todo = [key]
    while todo:
        for dep in get_dependencies(dsk, todo.pop()):
            if dep not in seen:
                seen.add(dep)
                todo.append(dep)
    return seen


def test_an_image_is_finished_after_every_task_of_it():
    """The finish task commits the image, or removes its group when a chunk failed: no task
    of the image may still run then (a removed group would get chunks written into it)."""
    from engine.compute import _window_graph

    srcs = []
    for k in range(2):
        g = Grid(UTM, Affine(10, 0, 500_000 + k * 9_000, 0, -10, 4_000_000), (1500, 1500))
        part = SourcePart(f"/data/{k}.tif", (1,), ("b1",), g, "uint16", 0.0)
        srcs.append(ImageSource(f"img{k}", f"img{k}", [f"/data/{k}.tif"], "Raster Dataset", [part]))
    plan = plan_collection(srcs, out_crs=UTM, cell_size=10.0, tile=256)
    jobs = []
    for p in plan.images:
        job = ImageJob(p.source.image_id, tuple(p.source.parts), p.grid, 256, p.dtype,
                       p.nodata, "nearest", ("b1",), "/out.zarr")  # fmt: skip
        jobs.append((job, p))
    dsk, chunks, finishes = _window_graph("/out.zarr", jobs, plan.lattice, "run-1")
    assert len(finishes) == 2
    for fk, image_id in finishes.items():
        before = _ancestors(dsk, fk)
        (template,) = [k for k in before if str(k).startswith("mosaicflow-template-")
                       and not str(k).endswith("-data") and not str(k).endswith("-attrs")]  # fmt: skip
        # every task that runs after the image's template: its chunks, its overview levels
        after = {k for k in dsk if template in _ancestors(dsk, k)} - {fk}
        assert {k for k, i in chunks.items() if i == image_id} <= after
        assert any("mosaicflow-overview" in str(k) for k in after)
        assert after <= before  # the finish task runs after all of them


def test_a_failed_chunk_reports_to_the_finish_task_instead_of_raising(tmp_path):
    """Raised, the error would fail the image's finish task while sibling chunks still
    run; returned, the finish task sees it after every task of the image (test above)."""
    g = Grid(UTM, Affine(10, 0, 500_000, 0, -10, 4_000_000), (300, 300))
    missing = str(tmp_path / "gone.tif")
    part = SourcePart(missing, (1,), ("b1",), g, "uint16", 0.0)
    job = ImageJob("gone", (part,), g, 256, "uint16", 0.0, "nearest", ("b1",), str(tmp_path))
    summary = ingest_chunk(job, 0, 0)
    assert summary["valid"] == 0 and "gone.tif" in summary["error"]
    assert "Traceback" not in summary["error"]
