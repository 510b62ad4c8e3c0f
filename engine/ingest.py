"""CreateImageCollection: request → sources → probe → plan → chunk graph → store → catalog.

This module orchestrates; it holds no geometry and no pixel code. The client side does
only metadata work (probe, plan, templates, catalog); pixels move only between the
sources, the workers and the store.

Failure policy: one bad image never sinks the others. Probing, planning and chunk tasks
each turn an image's failure into a ``failed`` catalog row with the reason; the image's
partial group is removed, and only images whose every chunk task succeeded are marked
``complete`` (the status attribute is written last, after the pixels).
"""

from __future__ import annotations

import os
import time
import traceback
import warnings
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import shapely
import zarr
from affine import Affine
from dask.base import tokenize
from distributed import Client, as_completed
from pyproj import CRS

from cluster import apply_gdal_env, dashboard_link, dask_client
from engine import catalog, footprint, service, stac, store
from engine.byref import chunk_bitmap
from engine.byref import create_group as create_byref_group
from engine.errors import ImageError, RequestError
from engine.grid import Grid, Lattice
from engine.lock import store_lock
from engine.plan import ImagePlan, Plan, plan_collection
from engine.rastertypes import ImageSource, describe, get_raster_type, source_patterns
from engine.records import BandStats, CollectionInfo, ImageRecord
from engine.request import CreateRequest, build_request
from engine.sources import resolve_sources
from graphs.chunk import ChunkReadError, ImageJob, default_tolerance
from graphs.ingest import add_overview_tasks, build_ingest_graph
from graphs.overviews import PyramidJob, level_grid, pyramid_job

COARSE = 16  # footprint mask cells per chunk side
Progress = Callable[[dict[str, Any]], None]


@dataclass
class IngestResult:
    """What a run produced: the store and one record per image (complete or failed)."""

    store: str
    name: str
    records: list[ImageRecord]
    warnings: list[str] = field(default_factory=list)
    dashboard: str | None = None
    elapsed: float = 0.0

    @property
    def complete(self) -> list[ImageRecord]:
        return [r for r in self.records if r.status == "complete"]

    @property
    def failed(self) -> list[ImageRecord]:
        return [r for r in self.records if r.status != "complete"]

    @property
    def exit_code(self) -> int:
        """SPEC §2: 0 all ingested, 3 some failed, 1 nothing usable."""
        if not self.complete:
            return 1
        return 3 if self.failed else 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "store": self.store,
            "name": self.name,
            "images": len(self.records),
            "complete": len(self.complete),
            "failed": [
                {"image_id": r.image_id, "source": r.source_uris, "message": r.message}
                for r in self.failed
            ],
            "image_ids": [r.image_id for r in self.complete],
            "warnings": self.warnings,
            "elapsed_s": round(self.elapsed, 3),
            "exit_code": self.exit_code,
        }


def default_raster_store() -> Path:
    """Where ``serviceProperties.name`` collections go: $MOSAICFLOW_RASTER_STORE or cwd."""
    return Path(os.environ.get("MOSAICFLOW_RASTER_STORE", ".")).resolve()


def create_image_collection(
    input_rasters: Any,
    raster_type: Any = None,
    image_collection: Any = None,
    context: Any = None,
    client: Client | None = None,
    *,
    overwrite: bool = False,
    scheduler: str | None = None,
    workers: int | None = None,
    processes: bool = False,
    tile_size: int = 512,
    progress: Progress | None = None,
    warp_tolerance: float | None = None,
) -> IngestResult:
    """Create (or resume) an image collection: the CreateImageCollection task.

    Parameters
    ----------
    input_rasters, raster_type, image_collection, context:
        As in the seed (SPEC §1); plain paths and names are accepted too.
    client:
        A Dask client to run on; else ``scheduler``/``DASK_SCHEDULER_ADDRESS``; else a
        LocalCluster of ``workers`` threads (``processes=True``: single-threaded worker
        processes) started for this call.
    warp_tolerance:
        GDAL transformer error threshold in source pixels; default exact for nearest-like
        methods and 1e-4 for interpolating ones (see graphs/chunk.py).

    Examples
    --------
    >>> result = create_image_collection(["a.tif", "b.tif"], image_collection="out.zarr",
    ...                                  context={"outSR": 3857, "cellSize": 60})  # doctest: +SKIP
    >>> result.exit_code  # doctest: +SKIP
    0
    """
    request = build_request(
        input_rasters, raster_type, image_collection, context, overwrite=overwrite
    )
    return run_request(
        request,
        client=client,
        scheduler=scheduler,
        workers=workers,
        processes=processes,
        tile_size=tile_size,
        progress=progress,
        warp_tolerance=warp_tolerance,
    )


def run_request(
    request: CreateRequest,
    *,
    client: Client | None = None,
    scheduler: str | None = None,
    workers: int | None = None,
    processes: bool = False,
    tile_size: int = 512,
    progress: Progress | None = None,
    sources: list[Any] | None = None,
    warp_tolerance: float | None = None,
    on_existing: str = "resume",
    resolver: Any = None,
) -> IngestResult:
    """Run a validated request. Request errors are raised before anything is written.

    ``on_existing``: an existing collection at the target is resumed by the same request
    (another one is refused) with ``"resume"``, added to with ``"add"`` (engine.update).
    ``resolver`` (engine.items) resolves ``imageCollection.itemId``. The run holds the
    store's writer lock (engine.lock) from deciding what is done to publishing; images
    already complete (by checksum) are skipped.
    """
    t0 = time.perf_counter()
    get_raster_type(request.raster_type.name)  # refuse a raster type not built yet, first
    apply_gdal_env()
    path, name = resolve_store(request, resolver)
    if request.image_collection.item_id and not request.image_collection.uri:
        on_existing = "add"  # an item id always names an existing collection
    existing = _existing_collection(path, request, on_existing)
    byref = request.input_rasters.byref
    refs = (
        sources
        if sources is not None
        else resolve_sources(
            request.input_rasters, patterns=source_patterns(request.raster_type.name)
        )
    )
    from engine.update import commit, complete_images, gather_images, remember_defaults

    probed, failed = gather_images(refs, request, path)  # probe; stored collections' images
    _report(progress, stage="probed", images=len(probed), failed=len(failed))

    ctx = request.context
    clip, clip_crs = _clip(request)
    if not probed:
        return IngestResult(
            path, name, failed, list(request.warnings), elapsed=time.perf_counter() - t0
        )
    lattice = None
    if existing is not None:
        lattice = Lattice(
            CRS.from_wkt(existing.crs_wkt), existing.cell_size, existing.tile_size, existing.origin
        )
    plan = plan_collection(
        probed,
        out_crs=ctx.out_crs,
        cell_size=ctx.cell_size,
        clip=clip,
        clip_crs=clip_crs,
        nodata=ctx.nodata,
        tile=tile_size,
        lattice=lattice,
    )
    failed += [
        _failed_record(src, uri, reason, request.raster_type.name)
        for src, uri, reason in plan.failed
    ]
    info = existing or CollectionInfo(
        name=name,
        crs_wkt=plan.lattice.crs.to_wkt(),
        cell_size=plan.lattice.cell_size,
        tile_size=plan.lattice.tile_size,
        origin=plan.lattice.origin,
        collection_type=request.raster_type.collection_type,
        raster_type=request.raster_type.name,
    )
    if existing is None:
        store.init_store(
            path, info, request_token=request_fingerprint(request), overwrite=request.overwrite
        )
        remember_defaults(path, request)  # what a later add defaults to
    with store_lock(path, "add" if on_existing == "add" else "create"):
        done = complete_images(path, info) if existing is not None else {}
        todo = [p for p in plan.images if p.source.image_id not in done]
        _report(
            progress,
            stage="planned",
            images=len(plan.images),
            skipped=len(plan.images) - len(todo),
            chunks=sum(len(p.chunks) for p in todo),
        )
        records = list(done.values())
        if on_existing == "add":  # this run's images; the collection's others stay as listed
            planned = {p.source.image_id for p in plan.images}
            records = [r for r in records if r.image_id in planned]
        failed = [f for f in failed if f.image_id not in done]  # complete ones stay complete
        dashboard = None
        if todo:
            with dask_client(
                client,
                scheduler=scheduler,
                workers=workers,
                parallel_processing_factor=ctx.parallel_processing_factor,
                processes=processes,
            ) as c:
                dashboard = dashboard_link(c)
                _report(progress, stage="compute", dashboard=dashboard)
                records += compute_images(
                    c, path, plan, todo, request, progress, warp_tolerance, byref
                )
        records += failed
        records.sort(key=lambda r: r.image_id)
        commit(path, info, records, replace_all=on_existing != "add")
    return IngestResult(
        path, name, records, list(request.warnings), dashboard, time.perf_counter() - t0
    )


# -- request → store location ------------------------------------------------------------


def resolve_store(request: CreateRequest, resolver: Any = None) -> tuple[str, str]:
    """The store path and collection name of the request's ``imageCollection``.

    An ``itemId`` is resolved by ``resolver`` (engine.items.ItemRegistry) to its store.
    """
    target = request.image_collection
    if target.item_id and not target.uri and resolver is not None:
        from engine.update import item_store

        return item_store(target.item_id, resolver)
    if target.uri:
        path = (
            str(Path(target.uri).expanduser().resolve()) if "://" not in target.uri else target.uri
        )
        name = target.name or Path(path.rstrip("/")).name.removesuffix(".zarr")
        return path, name
    if target.name:
        return str(default_raster_store() / f"{target.name}.zarr"), target.name
    if target.url or target.item_id:
        raise RequestError(
            "imageCollection",
            target.url or target.item_id,
            "an image service url or item id needs the portal of `mosaicflow serve`",
            'give {"uri": PATH} or {"serviceProperties": {"name": NAME}}',
        )
    raise RequestError(
        "imageCollection",
        None,
        "no output collection given",
        'give {"uri": "out.zarr"} or {"serviceProperties": {"name": NAME}}',
    )


def request_fingerprint(request: CreateRequest) -> str:
    """A token of everything that decides the pixels: same token, same collection."""
    ctx = request.context
    return tokenize(
        request.input_rasters.values,
        request.raster_type.name,
        sorted((str(k).lower(), repr(v)) for k, v in request.raster_type.parameters.items()),
        ctx.out_crs.to_wkt() if ctx.out_crs is not None else None,
        repr(ctx.cell_size),
        str(ctx.resampling),
        None if ctx.extent is None else (ctx.extent.geometry.wkb, ctx.extent.crs.to_wkt()),
        None if ctx.clip is None else (ctx.clip.geometry.wkb, ctx.clip.crs.to_wkt()),
        repr(ctx.nodata),
    )


def _existing_collection(
    path: str, request: CreateRequest, on_existing: str = "resume"
) -> CollectionInfo | None:
    """The collection at ``path`` this request resumes or adds to; None for a new one.

    ``"resume"``: only the request that made the store (same fingerprint) resumes it;
    another is refused unless ``overwrite`` replaces it. ``"add"``: engine.update.add_target.
    """
    if on_existing == "add":
        from engine.update import add_target

        return add_target(path, request)
    if not os.path.exists(path):
        return None
    if request.overwrite:
        if not store.is_store(path) and os.path.isdir(path) and any(Path(path).iterdir()):
            raise RequestError(
                "imageCollection",
                path,
                "exists and is not a mosaicflow collection",
                "choose another output path; mosaicflow never deletes what it did not write",
            )
        return None
    if not store.is_store(path):
        if os.path.isdir(path) and not any(Path(path).iterdir()):
            return None
        raise RequestError(
            "imageCollection",
            path,
            "exists and is not a mosaicflow collection",
            "choose another output path",
        )
    attrs = store.read_root_attrs(path)
    if not attrs and not store.list_image_ids(path):
        return None  # a run killed while creating the root group: start it again
    if attrs.get("request_token") != request_fingerprint(request):
        raise RequestError(
            "imageCollection",
            path,
            "already exists (made by another request)",
            "add the images with `mosaicflow add` (engine.update.add_images), pass "
            "--overwrite (overwrite=True) to replace it, or choose another output path",
        )
    return store.read_info(path)


def _clip(request: CreateRequest) -> tuple[shapely.Geometry | None, Any]:
    """The request's clip (extent ∩ clippingGeometry) as one geometry and its CRS."""
    ctx = request.context
    regions = [r for r in (ctx.extent, ctx.clip) if r is not None]
    if not regions:
        return None, None
    crs = regions[0].crs
    geom = regions[0].geometry
    for r in regions[1:]:
        geom = geom.intersection(r.to_crs(crs).geometry)
    return geom, crs


# -- probing -----------------------------------------------------------------------------


def probe_all(
    refs: list[Any], raster_type: str, params: Mapping[str, Any] | None = None
) -> tuple[list[ImageSource], list[ImageRecord]]:
    """Probe every source (metadata only, in a small thread pool: it is I/O bound)."""
    rtype = get_raster_type(raster_type)
    params = params if params is not None else {}

    def failure(ref: Any, exc: Exception) -> ImageRecord:
        if isinstance(exc, RequestError):  # a bad rasterTypeParameters value: nothing written
            raise exc
        if isinstance(exc, ImageError):
            # a wrong rasterTypeName pick: say what the input looks like, and which type reads it
            said = "rasterTypeName" in exc.reason  # the type named the right one itself
            hint = None if said else describe(ref.uri, ref.gdal_path, exclude=raster_type)
            reason = f"{exc.reason}; {hint}" if hint else exc.reason
            return _failed_record(None, ref.uri, reason, raster_type, ref.name)
        # an unexpected failure still fails this image alone
        return _failed_record(None, ref.uri, f"could not be read: {exc!r}", raster_type, ref.name)

    def images(ref: Any, found: Any) -> list[ImageSource | ImageRecord]:
        """A probe's answer for one source: an image, several (one product holding images
        of several groups), or an exception."""
        if isinstance(found, Exception):
            return [failure(ref, found)]
        return list(found) if isinstance(found, list) else [found]

    def one(ref: Any) -> list[ImageSource | ImageRecord]:
        try:
            return images(ref, rtype.probe(ref.uri, ref.gdal_path, ref.name, params))
        except Exception as exc:
            return [failure(ref, exc)]

    results: list[ImageSource | ImageRecord]
    if hasattr(rtype, "probe_batch"):  # types that need every frame at once (tracks, tables)
        batch = rtype.probe_batch(refs, params)
        results = [r for ref, f in zip(refs, batch, strict=True) for r in images(ref, f)]
    else:
        with ThreadPoolExecutor(max_workers=8) as pool:
            results = [r for found in pool.map(one, refs) for r in found]
    probed = [r for r in results if isinstance(r, ImageSource)]
    failed = [r for r in results if isinstance(r, ImageRecord)]
    # Two inputs naming the same image (e.g. a path and its file:// url) ingest once.
    unique: dict[str, ImageSource] = {}
    for src in probed:
        unique.setdefault(src.image_id, src)
    return list(unique.values()), failed


def _failed_record(
    src: ImageSource | None, uri: str, reason: str, raster_type: str, name: str | None = None
) -> ImageRecord:
    from engine.rastertypes.base import image_id_for

    display = src.name if src else (name or Path(uri).stem)
    return ImageRecord(
        image_id=src.image_id if src else image_id_for(raster_type, [uri], display),
        name=display,
        source_uris=src.source_uris if src else [uri],
        raster_type=raster_type,
        status="failed",
        message=reason,
        ingested_at=datetime.now(UTC),
    )


# -- compute -----------------------------------------------------------------------------


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


def compute_images(
    client: Client,
    path: str,
    plan: Plan,
    todo: list[ImagePlan],
    request: CreateRequest,
    progress: Progress | None,
    warp_tolerance: float | None = None,
    byref: bool = False,
) -> list[ImageRecord]:
    """Write templates, run every chunk task, and turn chunk summaries into records.

    A byref image gets a metadata-only group (engine.byref) instead of a template, and its
    chunk tasks compute summaries without writing pixels.
    """
    resampling = request.context.resampling.name
    jobs = []
    for p in todo:
        job = image_job(p, path, plan, resampling, warp_tolerance, byref)
        if byref:
            create_byref_group(path, p.source.image_id, job, _image_attrs(p), _band_attrs(p.source))
            jobs.append((job, p.chunks))
            continue
        store.create_image_template(
            path,
            p.source.image_id,
            p.grid,
            p.source.band_names,
            p.dtype,
            p.nodata,
            plan.lattice.tile_size,
            attrs=_image_attrs(p),
            band_attrs=_band_attrs(p.source),
        )
        jobs.append((job, p.chunks))
    dsk, outputs = build_ingest_graph(jobs)
    tops = _add_overviews(path, dsk, jobs)  # each image's top overview task
    key_image = {k: image_id for image_id, keys in outputs.items() for k in keys}
    all_keys = list(key_image)
    # uncompressed output bytes of each chunk task: the progress line's MB/s and ETA
    tile = plan.lattice.tile_size
    key_bytes = {
        k: _chunk_nbytes(p, tile, k[1], k[2]) for p in todo for k in outputs[p.source.image_id]
    }
    total_bytes, bytes_done = sum(key_bytes.values()), 0
    futures = client.get(dsk, all_keys + list(tops), sync=False) if all_keys else []
    summaries: dict[str, list[dict[str, Any]]] = {p.source.image_id: [] for p in todo}
    errors: dict[str, str] = {}
    # An image is committed as soon as its chunks and its overviews are done, and its record
    # kept in its group: a run killed later loses no finished image (engine.update).
    remaining = {image_id: len(keys) for image_id, keys in outputs.items()}
    for top in tops.values():
        remaining[top.image_id] += 1
    plans = {p.source.image_id: p for p in todo}
    lat = plan.lattice
    frame = CollectionInfo("", lat.crs.to_wkt(), lat.cell_size, lat.tile_size, lat.origin)
    finished: dict[str, ImageRecord] = {}

    def finish(image_id: str) -> None:
        rec = finish_image(
            path, plans[image_id], summaries[image_id], errors.get(image_id), lat, request, byref
        )
        finished[image_id] = rec = _overview_sizes([rec], tops)[0]
        if rec.status == "complete":
            store.mark_image(path, image_id, record=catalog.record_to_json(rec, frame))

    done_chunks, done_images, t0 = 0, 0, time.perf_counter()
    for fut in as_completed(futures):
        pyr = tops.get(fut.key)  # an image's top overview task, else a level-0 chunk
        image_id = pyr.image_id if pyr is not None else key_image[fut.key]
        if fut.status == "error":  # the first error of an image is kept
            errors.setdefault(image_id, _describe(fut.exception()))
        elif pyr is None:
            summaries[image_id].append(fut.result())
        remaining[image_id] -= 1
        if remaining[image_id] == 0:
            done_images += 1
            finish(image_id)
        if pyr is None:
            done_chunks += 1
            bytes_done += key_bytes[fut.key]
        _report(
            progress,
            stage="chunks",
            chunks_done=done_chunks,
            chunks=len(all_keys),
            images_done=done_images,
            images=len(todo),
            bytes_done=bytes_done,
            bytes=total_bytes,
            elapsed=time.perf_counter() - t0,
        )
    for image_id in plans.keys() - finished.keys():  # images without chunk tasks
        finish(image_id)
    return [finished[p.source.image_id] for p in todo]


def _chunk_nbytes(p: ImagePlan, tile: int, i: int, j: int) -> int:
    """Bytes of chunk (i, j) of an image once decoded (all bands; edge chunks are smaller)."""
    h = min(tile, p.grid.height - i * tile)
    w = min(tile, p.grid.width - j * tile)
    return h * w * len(p.source.band_names) * np.dtype(p.dtype).itemsize


def _describe(exc: BaseException | None) -> str:
    if exc is None:
        return "chunk task failed"
    msg = str(exc).strip() or type(exc).__name__
    if isinstance(exc, ChunkReadError | ImageError):
        return msg if isinstance(exc, ChunkReadError) else exc.reason
    return f"{type(exc).__name__}: {msg}"


def _add_overviews(path: str, dsk: dict[Any, Any], jobs: list[Any]) -> dict[Any, PyramidJob]:
    """Write each image's overview templates and add its level tasks (graphs.overviews)
    to ``dsk``; returns the pyramid of each image's top overview task, by key."""
    tops: dict[Any, PyramidJob] = {}
    for job, chunks in jobs:
        if not getattr(job, "write", True):  # pixels kept at the source: no overviews
            continue
        pyr = pyramid_job(job)
        grids = [level_grid(job.grid, k) for k in range(pyr.levels + 1)]
        store.create_overview_templates(
            path, job.image_id, grids, list(job.variables), job.dtype, job.nodata, job.tile,
            list(pyr.methods),
        )  # fmt: skip
        top = add_overview_tasks(dsk, pyr, job, chunks)
        if top is not None:
            tops[top] = pyr
    return tops


def _overview_sizes(records: list[ImageRecord], tops: dict[Any, PyramidJob]) -> list[ImageRecord]:
    """Record each complete image's coarsest level as ``HighPS`` (catalog: MaxPS follows)."""
    levels = {pyr.image_id: pyr for pyr in tops.values()}
    for rec in records:
        pyr = levels.get(rec.image_id)
        if rec.status == "complete" and pyr is not None and rec.grid is not None:
            rec.extra["HighPS"] = max(level_grid(rec.grid, pyr.levels).resolution)
    return records


def finish_image(
    path: str,
    p: ImagePlan,
    summaries: list[dict[str, Any]],
    error: str | None,
    lattice: Lattice,
    request: CreateRequest,
    byref: bool = False,
) -> ImageRecord:
    """Fold chunk summaries into the image's record and commit (or drop) its group."""
    src = p.source
    now = datetime.now(UTC)
    valid = sum(s["valid"] for s in summaries)
    if error is None and valid == 0:
        error = (
            "contains no valid pixels in the collection grid (all nodata, or only outside the clip)"
        )
    if error is not None:
        store.remove_image(path, src.image_id)
        return _failed_record(src, src.source_uris[0], error, src.raster_type)
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
    if byref:  # the chunks a byvalue ingestion would have written: the others read as fill
        held = [(s["i"], s["j"]) for s in summaries if s["valid"]]
        store.mark_image(path, src.image_id, written=chunk_bitmap(held, p.grid, lattice.tile_size))
    store.mark_image(
        path,
        src.image_id,
        checksum=checksum,
        stats=[s.to_dict() for s in stats],
        status="complete",
        completed_at=now.isoformat(),
    )
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


# -- publish -----------------------------------------------------------------------------


def publish(
    path: str,
    records: list[ImageRecord],
    info: CollectionInfo,
    object_ids: list[int] | None = None,
    next_object_id: int = 1,
) -> None:
    """Write catalog, STAC and descriptor (each atomically), then consolidate metadata.

    Writers call it through :func:`engine.update.commit`, which holds the store lock, keeps
    the other images of the collection and every image's ObjectID.
    """
    root = Path(path)
    catalog.write_catalog(root / "catalog.parquet", records, info, object_ids, next_object_id)
    stac.write_stac(
        root / "stac", records, info, store_href="..", catalog_href="../catalog.parquet"
    )
    service.write_descriptor(root / "service.json", service.build_descriptor(records, info, path))
    with warnings.catch_warnings():
        # zarr warns that consolidated metadata is not in the v3 spec yet, and that the
        # catalog files beside the groups are not Zarr nodes: both are known and intended
        warnings.simplefilter("ignore", category=UserWarning)
        zarr.consolidate_metadata(path)


def _report(progress: Progress | None, **event: Any) -> None:
    if progress is not None:
        try:
            progress(event)
        except Exception:  # a broken progress display must never fail the ingestion
            traceback.print_exc()
