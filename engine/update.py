"""Living collections: add images to an existing collection, remove images from it.

Strategy: an add is a create run against the existing collection (engine.ingest.run_request
with ``on_existing="add"``): the collection's frame — CRS, cell size, tile size, lattice
origin — is fixed at creation and reused, so added images overlay the others chunk for
chunk; a request asking for another CRS or cell size is refused before anything is written.
Every writer (create, resume, add, remove) holds the store's writer lock (engine.lock) from
reading what is there to publishing, so two processes adding to one store take turns and
lose nothing.

Publishing (:func:`commit`) rewrites catalog, STAC and descriptor, each atomically, from the
catalog as it is *under the lock*: images of the collection not touched by this writer are
kept, its own records replace earlier rows of the same image ids, removed ones are dropped.
ObjectIDs never change: an image keeps its number, a new image gets the next unused one
(the catalog remembers it, so numbers of removed images are not reused). Only after the
catalog stops listing an image is its group deleted; a crash in between leaves an unlisted
group, which the next commit deletes (a group is never listed without its pixels, and never
deleted while listed).
"""

from __future__ import annotations

import contextlib
import math
import os
import shutil
from collections.abc import Collection, Iterable, Sequence
from pathlib import Path
from typing import Any

import zarr
from pyproj import CRS

from engine import catalog, storage, store
from engine.errors import RequestError
from engine.ingest import IngestResult, Progress, publish, run_request
from engine.lock import LOCK_NAME, store_lock
from engine.probe import failed_record, probe_all
from engine.rastertypes.base import ImageSource, SourcePart
from engine.records import CollectionInfo, ImageRecord
from engine.request import CreateRequest, build_request


def add_images(
    collection: str | os.PathLike[str],
    inputs: Any,
    *,
    byref: bool = False,
    raster_type: Any = None,
    context: Any = None,
    client: Any = None,
    scheduler: str | None = None,
    workers: int | None = None,
    progress: Progress | None = None,
    sources: list[Any] | None = None,
) -> IngestResult:
    """Add images to an existing collection (``mosaicflow add``).

    Parameters
    ----------
    collection:
        The collection store.
    inputs:
        Paths, globs, directories or uris (or an ``inputRasters`` dict).
    byref:
        Keep the pixels at the source (engine.byref) instead of copying them.
    raster_type, context:
        As for :func:`engine.create_image_collection`; ``outSR`` and ``cellSize``, if
        given, must be the collection's; ``resamplingMethod`` defaults to the one the
        collection was created with.

    Returns
    -------
    IngestResult
        This run's images (skipped complete ones included); the catalog lists the others too.

    Raises
    ------
    RequestError
        The store is not a collection, or the request conflicts with its frame.

    Examples
    --------
    >>> add_images("out.zarr", ["new/*.tif"])  # doctest: +SKIP
    """
    if isinstance(inputs, str | os.PathLike):
        inputs = [inputs]
    if not isinstance(inputs, dict):
        inputs = {"uris": [os.fspath(i) for i in inputs], "byref": byref}
    elif byref:
        inputs = {**inputs, "byref": True}
    target = storage.normalize(collection)
    context = _with_defaults(target, context)
    request = build_request(inputs, raster_type, {"uri": target}, context)
    return run_request(
        request,
        client=client,
        scheduler=scheduler,
        workers=workers,
        progress=progress,
        sources=sources,
        on_existing="add",
    )


def remember_defaults(path: str, request: CreateRequest) -> None:
    """Record the creating request's resampling method in the root attributes: an add
    that names none uses it, so added images are resampled like the first ones."""
    method = request.context.to_json_dict()["resamplingMethod"]
    root = zarr.open_group(storage.zarr_store(path), mode="r+")
    root.attrs["mosaicflow"] = {**store.read_root_attrs(path), "resampling": method}


def _with_defaults(path: str, context: Any) -> Any:
    """``context`` with the collection's resampling method when it names none."""
    method = store.read_root_attrs(path).get("resampling") if store.is_store(path) else None
    if method is None or (isinstance(context, dict) and "resamplingMethod" in context):
        return context
    if context is None or isinstance(context, dict):
        return {**(context or {}), "resamplingMethod": method}
    return context  # JSON text or a parsed Context: taken as given


def remove_images(collection: str | os.PathLike[str], image_ids: Iterable[str]) -> list[str]:
    """Remove images from a collection (``mosaicflow remove``); returns the ids removed.

    Raises
    ------
    RequestError
        An id the catalog does not list (nothing is removed then).
    """
    path = store.store_path(collection)
    info = store.read_info(path)
    wanted = list(dict.fromkeys(image_ids))
    with store_lock(path, "remove"):
        cat = storage.join(path, "catalog.parquet")
        listed = {r.image_id for r in catalog.read_records(cat)} if storage.exists(cat) else set()
        unknown = [i for i in wanted if i not in listed]
        if unknown:
            raise RequestError(
                "IMAGE_ID",
                unknown[0] if len(unknown) == 1 else unknown,
                "is not an image of the collection",
                f"list the image ids with `mosaicflow info {path} --json`",
            )
        for image_id in wanted:  # never adopted back by a later commit (see commit)
            if store.image_meta(path, image_id) is not None:
                store.mark_image(path, image_id, status="removed")
        commit(path, info, [], replace_all=False, remove=wanted)
    return wanted


def item_store(item_id: str, resolver: Any) -> tuple[str, str]:
    """The store path and name of the collection a portal item (engine.items) names."""
    found = resolver.resolve_item(item_id)
    if not found or not store.is_store(found[0]):
        raise RequestError(
            "imageCollection.itemId",
            item_id,
            "is not an image collection item",
            "give the item id of a collection created by mosaicflow",
        )
    return store.store_path(found[0]), store.read_info(found[0]).name


def gather_images(
    refs: list[Any], request: CreateRequest, target: str, client: Any = None
) -> tuple[list[ImageSource], list[ImageRecord]]:
    """The request's images: each source probed by its raster type (large requests on the
    ``client``'s cluster, see engine.probe), and the complete images of every input that is
    itself a collection (read through engine.byref.warp_stored_part: byvalue copies their
    pixels, byref points at their stored arrays)."""
    from engine.byref import BYREF_MODEL, storable

    collections = [r for r in refs if _is_collection(r.uri)]
    others = [r for r in refs if r not in collections]
    rtype = request.raster_type
    probed, failed = probe_all(others, rtype.name, rtype.parameters, client) if others else ([], [])
    for ref in collections:
        if storage.same_location(ref.uri, target):
            raise RequestError(
                "inputRasters",
                ref.uri,
                "is the collection the images are added to",
                "name another collection, or the rasters to add",
            )
        probed += stored_images(ref.uri)
    if request.input_rasters.byref:  # re-read from attributes alone: no in-memory model
        failed += [
            failed_record(s, s.source_uris[0], BYREF_MODEL, s.raster_type)
            for s in probed
            if not storable(s)
        ]
        probed = [s for s in probed if storable(s)]
    return probed, failed


def _is_collection(uri: str) -> bool:
    """Whether an input is a collection; an object the store client cannot check (other
    credentials than GDAL's, say) is taken for a raster, and GDAL reports on it."""
    try:
        return store.is_store(uri)
    except Exception:
        return False


def stored_images(collection: str) -> list[ImageSource]:
    """The complete images of another collection as sources: one part per image, georef
    ``"collection"``, its path the image's group; ids, names and metadata carried over."""
    path = store.store_path(collection)
    cat = storage.join(path, "catalog.parquet")
    if not storage.exists(cat):
        raise RequestError(
            "inputRasters", path, "is a collection without a catalog", "finish it first"
        )
    out = []
    for rec in catalog.read_records(cat):
        if rec.status != "complete" or rec.grid is None:
            continue
        group = store.image_group_path(path, rec.image_id)
        part = SourcePart(
            path=group,
            band_indexes=tuple(range(1, len(rec.band_names) + 1)),
            band_names=tuple(rec.band_names),
            grid=rec.grid,
            dtype=rec.dtype,
            nodata=rec.nodata,
            georef="collection",
        )
        extra = {k: v for k, v in rec.extra.items() if k not in catalog.OVERRIDABLE}
        out.append(
            ImageSource(
                image_id=rec.image_id,
                name=rec.name,
                source_uris=[group],
                raster_type=rec.raster_type,
                parts=[part],
                product_name=rec.product_name,
                sensor=rec.sensor,
                group=rec.group,
                acquisition_time=rec.acquisition_time,
                cloud_cover=rec.cloud_cover,
                sun_elevation=rec.sun_elevation,
                sun_azimuth=rec.sun_azimuth,
                extra=extra,
            )
        )
    return out


def add_target(path: str, request: CreateRequest) -> CollectionInfo:
    """The collection images are added to; refuses a request that conflicts with its frame."""
    if not store.is_store(path):
        raise RequestError(
            "imageCollection",
            path,
            "is not an existing mosaicflow collection to add to",
            "create it first with `mosaicflow create` (create_image_collection)",
        )
    if request.overwrite:
        raise RequestError(
            "overwrite", True, "cannot be combined with adding images", "omit overwrite"
        )
    info = store.read_info(path)
    crs = CRS.from_wkt(info.crs_wkt)
    ctx = request.context
    if ctx.out_crs is not None and not ctx.out_crs.equals(crs, ignore_axis_order=True):
        code = crs.to_authority()
        given = ctx.out_crs.to_authority()
        raise RequestError(
            "context.outSR",
            ":".join(given) if given else ctx.out_crs.name,
            f"differs from the collection's CRS ({':'.join(code) if code else crs.name}), "
            "fixed at its creation",
            "omit outSR (the images are warped to the collection's CRS) or give that CRS",
        )
    cell = ctx.cell_size
    if isinstance(cell, int | float) and not math.isclose(cell, info.cell_size, rel_tol=1e-9):
        raise RequestError(
            "context.cellSize",
            cell,
            f"differs from the collection's cell size ({info.cell_size:g}), fixed at its creation",
            "omit cellSize (the images are resampled to the collection's) or give that size",
        )
    return info


def complete_images(path: str, info: CollectionInfo) -> dict[str, ImageRecord]:
    """Records of the images a previous run finished (a re-run skips them).

    An image counts when its group is committed (status ``complete``, written last with
    its checksum) and its record — the catalog's row, or the copy kept in the group when
    the run died before writing the catalog — carries that same checksum.
    """
    cat = storage.join(path, "catalog.parquet")
    listed = {r.image_id: r for r in catalog.read_records(cat)} if storage.exists(cat) else {}
    done = {}
    for image_id in store.list_image_ids(path):
        meta = store.image_meta(path, image_id) or {}
        if meta.get("status") != "complete":
            continue
        rec = listed.get(image_id)
        if rec is None and isinstance(meta.get("record"), dict):
            rec = catalog.record_from_json(meta["record"], info)
        if rec is not None and rec.status == "complete" and rec.checksum == meta.get("checksum"):
            done[image_id] = rec
    return done


def commit(
    path: str,
    info: CollectionInfo,
    records: Sequence[ImageRecord],
    *,
    replace_all: bool,
    remove: Iterable[str] = (),
    recorded: Collection[str] = (),
) -> list[ImageRecord]:
    """Publish ``records`` into the collection's catalog, STAC and descriptor.

    The caller holds the store lock. ``replace_all`` (a create or its resume): the catalog
    becomes ``records``; else (add, remove) the catalog's other rows are kept, rows of the
    same image ids replaced and ``remove`` dropped, and images a killed writer committed
    but never listed are adopted (its finished work is not lost). Groups the new catalog
    does not list are deleted afterwards, as are temporary files a killed writer left.
    ``recorded``: image ids whose groups hold their record already (this run's finish
    tasks wrote it with the commit); every other complete image gets it here.

    Returns
    -------
    list of ImageRecord
        The whole catalog as written, in ObjectID order.
    """
    if not storage.is_remote(path):  # an object store's single PUTs leave no temporaries
        _sweep_temporaries(Path(path))
    for rec in records:  # each finished image keeps its record: a crash below loses none
        if rec.status != "complete" or rec.image_id in recorded:
            continue
        if "record" not in (store.image_meta(path, rec.image_id) or {}):
            store.mark_image(path, rec.image_id, record=catalog.record_to_json(rec, info))
    cat = storage.join(path, "catalog.parquet")
    has_catalog = storage.exists(cat)
    previous: list[ImageRecord] = catalog.read_records(cat) if has_catalog else []
    ids, next_id = catalog.read_object_ids(cat) if has_catalog else ({}, 1)
    mine = {r.image_id for r in records}
    dropped = set(remove)
    kept = [] if replace_all else [r for r in previous if r.image_id not in mine | dropped]
    known = {r.image_id for r in previous} | mine | dropped
    adopted = (
        [] if replace_all else [r for i, r in complete_images(path, info).items() if i not in known]
    )
    merged = kept + sorted([*records, *adopted], key=lambda r: r.image_id)
    object_ids, next_id = catalog.assign_object_ids([r.image_id for r in merged], ids, next_id)
    order = sorted(range(len(merged)), key=object_ids.__getitem__)
    merged = [merged[k] for k in order]
    publish(path, merged, info, [object_ids[k] for k in order], next_id)
    listed = {r.image_id for r in merged if r.status == "complete"}
    orphans = [i for i in store.list_image_ids(path) if i not in listed]
    for image_id in orphans:  # unlisted first (above), deleted second
        store.remove_image(path, image_id)
    return merged


def _sweep_temporaries(root: Path) -> None:
    """Temp files and directories of atomic writes a killed writer left behind."""
    for p in root.glob(".*.tmp*"):
        if p.name.startswith(LOCK_NAME):  # the lock's own heartbeat rewrite
            continue
        if p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
        else:
            with contextlib.suppress(OSError):
                p.unlink()
