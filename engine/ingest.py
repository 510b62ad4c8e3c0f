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

import functools
import os
import time
import traceback
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import Any

import shapely
from dask.base import tokenize
from distributed import Client
from pyproj import CRS

from cluster import apply_gdal_env, dashboard_link, dask_client
from engine import catalog, service, stac, storage, store
from engine.compute import compute_images
from engine.errors import RequestError, StoreError
from engine.grid import Lattice
from engine.lock import store_lock
from engine.plan import plan_collection
from engine.probe import failed_record
from engine.rastertypes import get_raster_type, source_patterns
from engine.records import CollectionInfo, ImageRecord
from engine.request import CreateRequest, build_request
from engine.sources import resolve_sources

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


def default_raster_store() -> str:
    """Where ``serviceProperties.name`` collections go: $MOSAICFLOW_RASTER_STORE (a folder,
    or an object-store prefix such as ``s3://bucket/collections``) or the cwd."""
    return storage.normalize(os.environ.get("MOSAICFLOW_RASTER_STORE", "."))


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
    window_chunks: int | None = None,
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
    window_chunks:
        Chunk tasks per submitted window of images (engine/compute.py); default 64 per
        worker thread of the cluster.

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
        window_chunks=window_chunks,
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
    window_chunks: int | None = None,
) -> IngestResult:
    """Run a validated request. Request errors are raised before anything is written.

    ``on_existing``: an existing collection at the target is resumed by the same request
    (another one is refused) with ``"resume"``, added to with ``"add"`` (engine.update).
    ``resolver`` (engine.items) resolves ``imageCollection.itemId``. The run holds the
    store's writer lock (engine.lock) from deciding what is done to publishing; images
    already complete (by checksum) are skipped.
    """
    with ExitStack() as stack:
        cluster = _Cluster(
            stack, client, scheduler=scheduler, workers=workers,
            parallel_processing_factor=request.context.parallel_processing_factor,
            processes=processes,
        )  # fmt: skip
        return _run(
            request, cluster, tile_size, progress, sources, warp_tolerance, on_existing, resolver,
            window_chunks,
        )  # fmt: skip


class _Cluster:
    """The run's Dask client, started on first use: a request whose images are all done
    starts no cluster, and small requests are probed before one is needed."""

    def __init__(self, stack: ExitStack, client: Client | None, **options: Any) -> None:
        self._stack, self._given, self._options = stack, client, options
        self._client: Client | None = None

    def __call__(self) -> Client:
        if self._client is None:
            self._client = self._stack.enter_context(dask_client(self._given, **self._options))
        return self._client


def _run(
    request: CreateRequest,
    cluster: _Cluster,
    tile_size: int,
    progress: Progress | None,
    sources: list[Any] | None,
    warp_tolerance: float | None,
    on_existing: str,
    resolver: Any,
    window_chunks: int | None,
) -> IngestResult:
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

    probed, failed = gather_images(refs, request, path, cluster)  # + stored collections'
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
        failed_record(src, uri, reason, request.raster_type.name)
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
        dashboard, computed = None, []
        if todo:
            c = cluster()
            dashboard = dashboard_link(c)
            _report(progress, stage="compute", dashboard=dashboard)
            report = functools.partial(_report, progress)
            computed = compute_images(
                c, path, plan, todo, request, report, warp_tolerance, byref, window_chunks
            )
        records += computed + failed
        records.sort(key=lambda r: r.image_id)
        recorded = {r.image_id for r in computed}  # their finish tasks committed the record
        commit(path, info, records, replace_all=on_existing != "add", recorded=recorded)
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
    storage.apply_gdal_s3_env()  # an endpoint given as AWS_ENDPOINT_URL serves GDAL too
    if target.uri:
        try:
            path = storage.normalize(target.uri)
        except StoreError as exc:
            raise RequestError(
                "imageCollection.uri",
                target.uri,
                "is not a place a collection can be written",
                "give a local path, s3://BUCKET/PREFIX or gs://BUCKET/PREFIX",
            ) from exc
        name = target.name or path.rsplit("/", 1)[-1].removesuffix(".zarr")
        return path, name
    if target.name:
        return storage.join(default_raster_store(), f"{target.name}.zarr"), target.name
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
    empty = storage.is_empty(path)  # None: nothing there
    if empty is None:
        return None
    if request.overwrite:
        if not store.is_store(path) and not empty:
            raise RequestError(
                "imageCollection",
                path,
                "exists and is not a mosaicflow collection",
                "choose another output path; mosaicflow never deletes what it did not write",
            )
        return None
    if not store.is_store(path):
        if empty:
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


# -- publish -----------------------------------------------------------------------------


def publish(
    path: str,
    records: list[ImageRecord],
    info: CollectionInfo,
    object_ids: list[int] | None = None,
    next_object_id: int = 1,
) -> None:
    """Write catalog, STAC and descriptor (each atomically).

    Writers call it through :func:`engine.update.commit`, which holds the store lock, keeps
    the other images of the collection and every image's ObjectID.

    The store's Zarr metadata is not consolidated: the catalog is the collection's index.
    Consolidating put every node of every image into the root ``zarr.json`` (20 MB for
    1,000 images, parsed by every open of the root: ~1 s) and rewrote it all at each
    commit, so it grew with the collection; stores written that way lose it here.
    """
    catalog.write_catalog(
        storage.join(path, "catalog.parquet"), records, info, object_ids, next_object_id
    )
    stac_dir = storage.join(path, "stac")
    stac.write_stac(stac_dir, records, info, store_href="..", catalog_href="../catalog.parquet")
    descriptor = service.build_descriptor(records, info, path)
    service.write_descriptor(storage.join(path, "service.json"), descriptor)
    store.drop_consolidated(path)


def _report(progress: Progress | None, **event: Any) -> None:
    if progress is not None:
        try:
            progress(event)
        except Exception:  # a broken progress display must never fail the ingestion
            traceback.print_exc()
