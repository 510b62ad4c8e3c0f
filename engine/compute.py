"""Running a plan on a Dask cluster: template, chunk and overview tasks, in windows.

Strategy:
- Images are submitted in **windows** of whole images, each of at most ``window_chunks``
  chunk tasks, never as one graph: the scheduler and the client hold only the windows in
  flight (their tasks, futures and image jobs), so their memory stays flat however many
  images the request has. The next window goes in when fewer tasks than a window are left
  in flight, so the workers never wait at a window's end.
- Each image's group template is written by a task on a worker (graphs/templates.py),
  its chunk tasks after it; the client writes nothing per image but the commit.
- An image is committed (``status: complete`` in its group, with its record) as soon as
  its chunks and overviews are done: a run killed later loses no finished image.
- Failures stay with their image: the first error of any of its tasks becomes its
  catalog row's reason, and its partial group is removed.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np
import shapely
from affine import Affine
from dask.base import tokenize
from distributed import Client, as_completed

from engine import catalog, footprint, store
from engine.byref import chunk_bitmap
from engine.grid import Grid, Lattice
from engine.plan import ImagePlan, Plan
from engine.probe import failed_record
from engine.rastertypes import ImageSource
from engine.records import BandStats, CollectionInfo, ImageRecord
from engine.request import CreateRequest
from graphs.chunk import ImageJob, default_tolerance, failure_reason
from graphs.ingest import add_overview_tasks, build_ingest_graph
from graphs.overviews import level_grid, pyramid_job
from graphs.templates import ImageTemplate

COARSE = 16  # footprint mask cells per chunk side
WINDOW_TASKS_PER_THREAD = 64  # chunk tasks per window, per worker thread of the cluster
MIN_WINDOW = 256
Progress = Callable[[dict[str, Any]], None]
Report = Callable[..., None]


def image_job(
    p: ImagePlan,
    path: str,
    plan: Plan,
    resampling: str,
    tolerance: float | None = None,
    byref: bool = False,
) -> ImageJob:
    return ImageJob(
        image_id=p.source.image_id,
        parts=tuple(p.source.parts),
        grid=p.grid,
        tile=plan.lattice.tile_size,
        dtype=p.dtype,
        nodata=p.nodata,
        resampling=resampling,
        variables=tuple(p.source.band_names),
        store=path,
        # Pixels outside the image's coverage are nodata: this applies the clip, and stops
        # GDAL from filling pixels a CRS wraps around (an image at the edge of Web Mercator)
        clip_wkb=None if p.coverage is None else shapely.to_wkb(p.coverage),
        coarse=COARSE,
        scales=tuple(p.scales),
        tolerance=default_tolerance(resampling) if tolerance is None else tolerance,
        origin=plan.lattice.origin,
        write=not byref,
    )


def window_size(client: Client) -> int:
    """Chunk tasks per window: enough to keep every worker thread busy many times over."""
    threads = sum(w.get("nthreads", 1) for w in client.scheduler_info()["workers"].values())
    return max(MIN_WINDOW, WINDOW_TASKS_PER_THREAD * max(threads, 1))


def windows(todo: list[ImagePlan], limit: int) -> Iterator[list[ImagePlan]]:
    """``todo`` cut into runs of whole images of at most ``limit`` chunks (an image with
    more chunks than that is a window of its own)."""
    window: list[ImagePlan] = []
    n = 0
    for p in todo:
        if window and n + len(p.chunks) > limit:
            yield window
            window, n = [], 0
        window.append(p)
        n += len(p.chunks)
    if window:
        yield window


@dataclass(frozen=True)
class ImageFinish:
    """What an image's finish task needs besides its chunk summaries."""

    plan: ImagePlan
    lattice: Lattice
    byref: bool
    levels: int  # overview levels (0: none)

    @property
    def frame(self) -> CollectionInfo:
        """The collection frame the catalog record is written in."""
        lat = self.lattice
        return CollectionInfo("", lat.crs.to_wkt(), lat.cell_size, lat.tile_size, lat.origin)


def finish_task(
    path: str, fin: ImageFinish, summaries: list[dict[str, Any]], *after: Any
) -> ImageRecord:
    """An image's last task, after its chunks (``summaries``) and its top overview
    (``after``): fold the summaries into its record and commit its group, on the worker.
    A chunk's failure (its summary's ``error``) fails the image and removes its group, now
    that nothing of it runs any more."""
    error = next((s["error"] for s in summaries if "error" in s), None)
    rec = finish_image(path, fin.plan, summaries, error, fin.lattice, fin.byref)
    if rec.status != "complete":
        return rec
    if fin.levels and rec.grid is not None:
        rec.extra["HighPS"] = max(level_grid(rec.grid, fin.levels).resolution)
    attrs: dict[str, Any] = {
        "checksum": rec.checksum,
        "stats": [s.to_dict() for s in rec.stats],
        "completed_at": rec.ingested_at.isoformat() if rec.ingested_at else None,
    }
    if fin.byref:  # the chunks a byvalue ingestion would have written: the others read as fill
        held = [(s["i"], s["j"]) for s in summaries if s["valid"]]
        attrs["written"] = chunk_bitmap(held, fin.plan.grid, fin.lattice.tile_size)
    attrs["record"] = catalog.record_to_json(rec, fin.frame)  # engine.update reads it back
    store.commit_image(path, rec.image_id, rec.band_names, **attrs)
    return rec


def _window_graph(
    path: str,
    jobs: list[tuple[ImageJob, ImagePlan]],
    lattice: Lattice,
    run: str,
) -> tuple[dict[Any, Any], dict[Any, str], dict[Any, str]]:
    """The graph of one window: each image's template, chunk and overview tasks, then its
    finish task. Returns it with the image of each chunk key and of each finish key."""
    dsk, outputs = build_ingest_graph([(job, p.chunks, _template(p, run)) for job, p in jobs])
    chunk_image = {k: image_id for image_id, keys in outputs.items() for k in keys}
    finish_image_of: dict[Any, str] = {}
    for job, p in jobs:
        if not p.chunks:
            continue
        after: list[Any] = []
        levels = 0
        if job.write:  # byref images keep no pixels, so no overviews
            pyr = pyramid_job(job)
            top = add_overview_tasks(dsk, pyr, job, p.chunks)
            after, levels = ([top], pyr.levels) if top is not None else ([], 0)
        fk = f"mosaicflow-finish-{tokenize(job)}"
        dsk[f"{fk}-data"] = ImageFinish(p, lattice, not job.write, levels)
        dsk[fk] = (finish_task, path, f"{fk}-data", list(outputs[job.image_id]), *after)
        finish_image_of[fk] = job.image_id
    return dsk, chunk_image, finish_image_of


def compute_images(
    client: Client,
    path: str,
    plan: Plan,
    todo: list[ImagePlan],
    request: CreateRequest,
    report: Report,
    warp_tolerance: float | None = None,
    byref: bool = False,
    window_chunks: int | None = None,
) -> list[ImageRecord]:
    """Run every image of ``todo`` (windowed, see the module docstring); returns a record
    per image, each complete image committed by its finish task as it finished.

    ``report(**event)`` receives ``submitted`` (window, windows, tasks) and ``chunks``
    (images, chunks and bytes done) events.
    """
    resampling = request.context.resampling.name
    lat = plan.lattice
    tile = lat.tile_size
    limit = window_chunks or window_size(client)
    cut = list(windows(todo, limit))
    plans = {p.source.image_id: p for p in todo}
    # uncompressed output bytes of each chunk task: the progress line's MB/s and ETA
    total_chunks = sum(len(p.chunks) for p in todo)
    total_bytes = sum(_chunk_nbytes(p, tile, i, j) for p in todo for i, j in p.chunks)
    finished: dict[str, ImageRecord] = {}
    run = uuid.uuid4().hex  # marks the templates this run wrote (graphs/templates.py)

    def failed(image_id: str, reason: str | None) -> None:
        finished[image_id] = finish_image(path, plans[image_id], [], reason, lat, byref)

    ac = as_completed(with_results=False)
    chunk_of: dict[Any, str] = {}  # chunk keys in flight → image
    finish_of: dict[Any, str] = {}  # finish keys in flight → image
    in_flight = 0  # chunk tasks submitted and not done
    pending = iter(enumerate(cut))

    def submit_next() -> bool:
        nonlocal in_flight
        nxt = next(pending, None)
        if nxt is None:
            return False
        k, plans_k = nxt
        jobs = [(image_job(p, path, plan, resampling, warp_tolerance, byref), p) for p in plans_k]
        for p in plans_k:
            if not p.chunks:  # no chunk holds data: fails with the reason, nothing to run
                failed(p.source.image_id, None)
        dsk, chunks, finishes = _window_graph(path, jobs, lat, run)
        chunk_of.update(chunks)
        finish_of.update(finishes)
        keys = [*chunks, *finishes]
        if keys:
            ac.update(client.get(dsk, keys, sync=False))
            in_flight += len(chunks)
        report(stage="submitted", window=k + 1, windows=len(cut), tasks=len(dsk))
        return True

    while in_flight < limit and submit_next():
        pass
    done_chunks = bytes_done = 0
    t0 = time.perf_counter()
    for fut in ac:
        image_id = finish_of.pop(fut.key, None)
        if image_id is not None:  # the image's record, or the first error of its tasks
            if fut.status == "error":
                exc = fut.exception()
                failed(image_id, failure_reason(exc) if exc else "task failed")
            else:
                finished[image_id] = fut.result()
        else:  # a chunk done: progress only (its summary goes to the finish task)
            image_id = chunk_of.pop(fut.key)
            in_flight -= 1
            done_chunks += 1
            bytes_done += _chunk_nbytes(plans[image_id], tile, fut.key[1], fut.key[2])
        fut.release()  # the scheduler forgets finished tasks as the run goes
        report(
            stage="chunks", chunks_done=done_chunks, chunks=total_chunks,
            images_done=len(finished), images=len(todo), bytes_done=bytes_done,
            bytes=total_bytes, elapsed=time.perf_counter() - t0,
        )  # fmt: skip
        while in_flight < limit and submit_next():
            pass
    return [finished[p.source.image_id] for p in todo]


def _template(p: ImagePlan, run: str) -> ImageTemplate:
    return ImageTemplate({**_image_attrs(p), "run": run}, tuple(_band_attrs(p.source)))


def _chunk_nbytes(p: ImagePlan, tile: int, i: int, j: int) -> int:
    """Bytes of chunk (i, j) of an image once decoded (all bands; edge chunks are smaller)."""
    h = min(tile, p.grid.height - i * tile)
    w = min(tile, p.grid.width - j * tile)
    return h * w * len(p.source.band_names) * np.dtype(p.dtype).itemsize


def finish_image(
    path: str,
    p: ImagePlan,
    summaries: list[dict[str, Any]],
    error: str | None,
    lattice: Lattice,
    byref: bool = False,
) -> ImageRecord:
    """Fold chunk summaries into the image's record; a failed image's group is removed.
    The caller commits a complete one (:func:`finish_task`)."""
    src = p.source
    now = datetime.now(UTC)
    valid = sum(s["valid"] for s in summaries)
    if error is None and valid == 0:
        error = (
            "contains no valid pixels in the collection grid (all nodata, or only outside the clip)"
        )
    if error is not None:
        store.remove_image(path, src.image_id)
        return failed_record(src, src.source_uris[0], error, src.raster_type)
    n_bands = len(src.band_names)
    stats = [BandStats() for _ in range(n_bands)]
    digests = []
    for s in summaries:
        if s["stats"]:
            for b, t in enumerate(s["stats"]):
                stats[b] = stats[b] + BandStats(*t) if t[0] else stats[b]
        if s["digest"]:
            digests.append((s["i"], s["j"], s["digest"]))
    from graphs.kernels import combine_digests

    checksum = combine_digests(digests, p.grid.shape, p.dtype)
    retries = sum(int(s.get("retries", 0)) for s in summaries)  # transient remote read errors
    mask, mask_grid = _assemble_mask(summaries, p.grid, lattice.tile_size)
    fp_native = footprint.mask_to_footprint(mask, mask_grid)
    if p.coverage is not None and not fp_native.is_empty:
        # the coarse mask overshoots by up to a mask cell: trim it to the coverage
        fp_native = fp_native.intersection(p.coverage.buffer(lattice.cell_size))
    fp_wgs84 = footprint.to_wgs84_footprint(fp_native, lattice.crs)
    return ImageRecord(
        image_id=src.image_id,
        name=src.name,
        source_uris=src.source_uris,
        raster_type=src.raster_type,
        status="complete",
        group=src.group,
        product_name=src.product_name,
        sensor=src.sensor,
        acquisition_time=src.acquisition_time,
        byref=byref,
        grid=p.grid,
        native_crs_wkt=src.finest_part.grid.crs_wkt,
        native_resolution=src.finest_part.grid.resolution,
        band_names=list(src.band_names),
        dtype=p.dtype,
        nodata=p.nodata,
        footprint=fp_wgs84,
        data_bounds=p.grid.bounds if fp_native.is_empty else _bounds(fp_native),
        stats=stats,
        checksum=checksum,
        cloud_cover=src.cloud_cover,
        sun_elevation=src.sun_elevation,
        sun_azimuth=src.sun_azimuth,
        ingested_at=now,
        extra=dict(src.extra) | ({"read_retries": retries} if retries else {}),
    )


def _assemble_mask(
    summaries: list[dict[str, Any]], grid: Grid, tile: int
) -> tuple[np.ndarray, Grid]:
    """The image's coarse validity mask (one cell per COARSE² pixels) and its grid."""
    cells = tile // COARSE
    h, w = -(-grid.height // COARSE), -(-grid.width // COARSE)
    mask = np.zeros((h, w), dtype=bool)
    for s in summaries:
        m = s["coarse"]
        r0, c0 = s["i"] * cells, s["j"] * cells
        mask[r0 : r0 + m.shape[0], c0 : c0 + m.shape[1]] |= m
    return mask, Grid(grid.crs, grid.transform @ Affine.scale(COARSE), (h, w))


def _bounds(geom: shapely.Geometry) -> tuple[float, float, float, float]:
    b = geom.bounds
    return (float(b[0]), float(b[1]), float(b[2]), float(b[3]))


def _image_attrs(p: ImagePlan) -> dict[str, Any]:
    src = p.source
    return {
        "image_id": src.image_id,
        "name": src.name,
        "source_uris": src.source_uris,
        "raster_type": src.raster_type,
        "band_names": list(src.band_names),
    }


def _band_attrs(src: ImageSource) -> list[dict[str, Any]]:
    out = []
    descriptions = src.extra.get("band_descriptions") or []
    for k in range(len(src.band_names)):
        a: dict[str, Any] = {}
        if k < len(descriptions) and descriptions[k]:
            a["long_name"] = descriptions[k]
        if src.scale_offsets and k < len(src.scale_offsets) and src.scale_offsets[k]:
            a["scale_factor"], a["add_offset"] = src.scale_offsets[k]  # type: ignore[misc]
        out.append(a)
    return out
