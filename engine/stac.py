"""The STAC 1.1 export of a collection: ``stac/collection.json`` + ``stac/items/<id>.json``.

Built with pystac from the same :class:`engine.records.ImageRecord` objects as the catalog,
so the two always agree. One item per *complete* image (failed images have a catalog row
but no item). The catalog is self-contained: every link and asset href is relative, so the
store can be moved or copied to object storage as a whole.

Item content:

* ``geometry`` / ``bbox``: the valid-data footprint in EPSG:4326 (antimeridian-split;
  the bbox has ``west > east`` when it crosses ±180°, as RFC 7946 says); the grid outline
  when the record has no footprint, exactly as in the catalog.
* ``datetime``: the acquisition time; when unknown, the ingestion time, else the time
  of writing (STAC requires a datetime). ``created`` is the ingestion time.
* projection v2 (``proj:code`` or ``proj:wkt2`` when the CRS has no authority code,
  ``proj:shape``, ``proj:transform``, ``proj:bbox`` of the image grid, collection CRS).
* ``eo:cloud_cover``, ``view:sun_elevation``, ``view:sun_azimuth`` when known.
* one ``data`` asset, the image's Zarr group, carrying ``raster:bands`` (raster extension
  v1.1 defines ``raster:bands`` on assets: nodata, data_type, statistics).

Atomicity: the new tree is written to a temp directory beside ``stac_dir`` and swapped in
with two renames (old tree aside, new tree in, old tree removed); a reader sees the old
catalog, the new one or (for the instant between the renames) none, never half of one.
On an object store (no rename) the items are written first and ``collection.json`` last,
then stale items are deleted: the collection a reader opens always has its items.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import posixpath
import shutil
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pystac
import pystac.utils
from pyproj import CRS
from pystac.extensions.eo import EOExtension
from pystac.extensions.projection import ProjectionExtension
from pystac.extensions.raster import DataType, RasterBand, RasterExtension, Statistics
from pystac.extensions.view import ViewExtension
from shapely.geometry import mapping

from engine import storage
from engine.catalog import record_footprint
from engine.footprint import lon_extent, lon_lat_bbox
from engine.records import BandStats, CollectionInfo, ImageRecord

ZARR_MEDIA_TYPE = "application/vnd+zarr"
PARQUET_MEDIA_TYPE = "application/vnd.apache.parquet"
_DATA_TYPES = {t.value for t in DataType}


def _is_absolute(href: str) -> bool:
    return "://" in href or href.startswith("/")


def _from_items_dir(href: str) -> str:
    """An href given relative to ``stac_dir`` as seen from ``stac_dir/items/``."""
    return href if _is_absolute(href) else posixpath.normpath(posixpath.join("..", href))


def proj_code(crs: CRS) -> str | None:
    """``AUTHORITY:CODE`` of a CRS when it has one (``EPSG:3857``), else None."""
    auth = crs.to_authority(min_confidence=90)
    return f"{auth[0]}:{auth[1]}" if auth else None


def _nodata(value: float | None) -> float | str | None:
    """Raster-extension nodata: a number, or "nan"/"inf"/"-inf" (JSON has no NaN)."""
    if value is None:
        return None
    if math.isnan(value):
        return "nan"
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    return value


def _raster_band(rec: ImageRecord, i: int) -> RasterBand:
    stats: BandStats | None = rec.stats[i] if i < len(rec.stats) else None
    statistics = None
    if stats is not None and stats.count:
        total = rec.grid.width * rec.grid.height if rec.grid is not None else 0
        statistics = Statistics.create(
            minimum=stats.min,
            maximum=stats.max,
            mean=stats.mean,
            stddev=stats.std,
            valid_percent=100.0 * stats.count / total if total else None,
        )
    dtype = rec.dtype if rec.dtype in _DATA_TYPES else "other"
    return RasterBand.create(
        nodata=_nodata(rec.nodata),  # type: ignore[arg-type]
        data_type=DataType(dtype) if rec.dtype else None,
        statistics=statistics,
    )


def item_datetime(rec: ImageRecord) -> datetime:
    """The item datetime: acquisition time, else ingestion time, else now (all UTC)."""
    value = rec.acquisition_time or rec.ingested_at or datetime.now(UTC)
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def build_item(rec: ImageRecord, info: CollectionInfo, store_href: str) -> pystac.Item:
    """The STAC item of one complete image (see the module docstring for its content).

    ``store_href`` is the store root, absolute or relative to the STAC directory.
    """
    geom = record_footprint(rec)
    bbox = lon_lat_bbox(geom) if geom is not None else None
    props: dict[str, Any] = {"title": rec.name}
    if rec.ingested_at is not None:
        props["created"] = pystac.utils.datetime_to_str(rec.ingested_at.astimezone(UTC))
    for key, value in (
        ("platform", rec.product_name),
        ("instruments", [rec.sensor] if rec.sensor else None),
    ):
        if value:
            props[key] = value
    props["mosaicflow:raster_type"] = rec.raster_type
    if rec.group:
        props["mosaicflow:group"] = rec.group
    item = pystac.Item(
        id=rec.image_id,
        geometry=mapping(geom) if geom is not None else None,
        bbox=list(bbox) if bbox is not None else None,
        datetime=item_datetime(rec),
        properties=props,
    )

    grid = rec.grid
    proj = ProjectionExtension.ext(item, add_if_missing=True)
    crs = grid.crs if grid is not None else CRS.from_wkt(info.crs_wkt)
    code = proj_code(crs)
    if code:
        proj.code = code
    else:
        proj.wkt2 = crs.to_wkt()
    if grid is not None:
        proj.shape = list(grid.shape)
        proj.transform = [float(v) for v in tuple(grid.transform)[:6]]
        proj.bbox = list(grid.bounds)

    if rec.cloud_cover is not None:
        EOExtension.ext(item, add_if_missing=True).cloud_cover = float(rec.cloud_cover)
    if rec.sun_elevation is not None or rec.sun_azimuth is not None:
        view = ViewExtension.ext(item, add_if_missing=True)
        if rec.sun_elevation is not None:
            view.sun_elevation = float(rec.sun_elevation)
        if rec.sun_azimuth is not None:
            view.sun_azimuth = float(rec.sun_azimuth)

    href = _from_items_dir(posixpath.join(store_href.rstrip("/") or ".", "images", rec.image_id))
    asset = pystac.Asset(href=href, media_type=ZARR_MEDIA_TYPE, roles=["data"], title=rec.name)
    item.add_asset("data", asset)
    if rec.byref:  # the group holds the grid and warp recipe; the pixels stay at the source
        props["mosaicflow:byref"] = True
        for k, uri in enumerate(rec.source_uris):
            item.add_asset(f"source-{k + 1}", pystac.Asset(href=uri, roles=["source"]))
    nbands = max(len(rec.band_names), len(rec.stats))
    if nbands:
        bands = [_raster_band(rec, i) for i in range(nbands)]
        RasterExtension.ext(asset, add_if_missing=True).bands = bands
    if rec.band_names:
        asset.extra_fields["mosaicflow:band_names"] = list(rec.band_names)
    return item


def build_collection(
    records: list[ImageRecord],
    info: CollectionInfo,
    store_href: str,
    catalog_href: str,
    *,
    description: str | None = None,
    license: str = "other",
) -> tuple[pystac.Collection, list[pystac.Item]]:
    """The STAC collection and its items, one per complete image (no links yet)."""
    items = [
        build_item(r, info, store_href)
        for r in records
        if r.status == "complete" and record_footprint(r) is not None
    ]
    spatial = _spatial_extent(items)
    times = [i.datetime for i in items if i.datetime is not None]
    now = datetime.now(UTC)
    temporal = [[min(times), max(times)]] if times else [[now, None]]
    coll = pystac.Collection(
        id=info.name,
        description=description or f"Image collection {info.name} ({info.collection_type})",
        extent=pystac.Extent(pystac.SpatialExtent([spatial]), pystac.TemporalExtent(temporal)),
        license=license,
        title=info.name,
    )
    coll.add_asset(
        "catalog",
        pystac.Asset(
            href=catalog_href,
            media_type=PARQUET_MEDIA_TYPE,
            roles=["metadata"],
            title="GeoParquet catalog (one row per image)",
        ),
    )
    coll.add_asset(
        "store",
        pystac.Asset(
            href=store_href.rstrip("/") or ".",
            media_type=ZARR_MEDIA_TYPE,
            roles=["data"],
            title="Zarr store of the collection",
        ),
    )
    crs = CRS.from_wkt(info.crs_wkt)
    code = proj_code(crs)
    if code:
        coll.summaries.add("proj:code", [code])
        coll.stac_extensions.append(ProjectionExtension.get_schema_uri())
    coll.summaries.add("gsd", [info.cell_size])
    coll.extra_fields["mosaicflow:collection_type"] = info.collection_type
    coll.extra_fields["mosaicflow:tile_size"] = info.tile_size
    return coll, items


def stac_documents(
    coll: pystac.Collection, items: list[pystac.Item]
) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """The JSON of ``collection.json`` and of each ``items/<id>.json`` (by file name),
    every link relative: a self-contained catalog, as pystac saves one.

    pystac builds every object; the links are set here, not by ``normalize_hrefs`` and
    ``save``: those look up the root's self link through its item links once per item,
    O(n²) in the items (83 s for 10,000 items).
    """
    name = coll.id
    item_docs: dict[str, dict[str, Any]] = {}
    for item in items:
        item.clear_links()
        for rel in ("root", "collection", "parent"):
            item.add_link(pystac.Link(rel, "../collection.json", pystac.MediaType.JSON, name))
        item.collection_id = name
        item_docs[f"{item.id}.json"] = item.to_dict(include_self_link=False, transform_hrefs=False)
    coll.clear_links()
    coll.add_link(pystac.Link("root", "./collection.json", pystac.MediaType.JSON, name))
    for file_name in item_docs:
        coll.add_link(pystac.Link("item", f"./items/{file_name}", pystac.MediaType.GEOJSON))
    return coll.to_dict(include_self_link=False, transform_hrefs=False), item_docs


def _spatial_extent(items: list[pystac.Item]) -> list[float]:
    """Union of the items' bboxes, crossing the antimeridian when that is smaller."""
    boxes = [i.bbox for i in items if i.bbox]
    if not boxes:
        return [-180.0, -90.0, 180.0, 90.0]
    west, south, east, north = lon_extent(
        [[b[0], b[2]] for b in boxes], min(b[1] for b in boxes), max(b[3] for b in boxes)
    )
    return [west, south, east, north]


def write_stac(
    stac_dir: str | Path,
    records: list[ImageRecord],
    info: CollectionInfo,
    store_href: str,
    catalog_href: str,
    *,
    description: str | None = None,
    license: str = "other",
) -> None:
    """Write the self-contained STAC tree of a collection, atomically.

    Parameters
    ----------
    stac_dir:
        Target directory (``STORE/stac``); replaced as a whole.
    records:
        Every image of the collection; only complete ones get an item.
    info:
        The collection frame.
    store_href:
        The store root, relative to ``stac_dir`` (usually ``".."``) or absolute
        (``s3://bucket/c.zarr``). Asset ``data`` of item X points at
        ``<store_href>/images/X``.
    catalog_href:
        The catalog parquet, relative to ``stac_dir`` (``"../catalog.parquet"``) or absolute.
    description, license:
        Collection description (default derived from the name) and SPDX license id.

    Examples
    --------
    >>> write_stac(store / "stac", records, info, "..", "../catalog.parquet")  # doctest: +SKIP
    """
    collection, items = stac_documents(
        *build_collection(
            records, info, store_href, catalog_href, description=description, license=license
        )
    )
    if storage.is_remote(stac_dir):
        _upload_tree(collection, items, str(stac_dir))
        return
    stac_dir = Path(stac_dir)
    stac_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{stac_dir.name}.", suffix=".tmp", dir=stac_dir.parent))
    try:
        (tmp / "items").mkdir()
        for name, doc in items.items():
            (tmp / "items" / name).write_bytes(_json(doc))
        (tmp / "collection.json").write_bytes(_json(collection))
        _swap_dir(tmp, stac_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _json(doc: dict[str, Any]) -> bytes:
    # one line: an indent makes json fall back from its C encoder (10x slower at 10k items)
    return json.dumps(doc).encode()


def _upload_tree(collection: dict[str, Any], items: dict[str, dict[str, Any]], target: str) -> None:
    """The object-store form of the swap: an object store has no directory rename, so the
    items are PUT first, ``collection.json`` last (one PUT: readers start from it, and
    every item it links is there by then), then the items it no longer links are
    deleted. An item whose object holds its bytes already (its etag is their MD5) is not
    PUT again: adding one image to 10,000 writes two objects, not 10,001."""
    there = storage.etags(storage.join(target, "items"))
    for name, doc in items.items():
        data = _json(doc)
        if there.get(name) != hashlib.md5(data, usedforsecurity=False).hexdigest():
            storage.write_bytes(storage.join(target, "items", name), data)
    storage.write_bytes(storage.join(target, "collection.json"), _json(collection))
    for name in set(storage.children(storage.join(target, "items"))) - set(items):
        storage.delete_file(storage.join(target, "items", name))


def _swap_dir(new: Path, target: Path) -> None:
    """Put directory ``new`` in place of ``target`` with two renames, then drop the old one."""
    old = None
    if target.exists():
        old = new.with_name(f"{new.name}.old")
        target.rename(old)
    try:
        new.rename(target)
    except BaseException:
        if old is not None:
            old.rename(target)
        raise
    if old is not None:
        with contextlib.suppress(OSError):
            shutil.rmtree(old)
