"""The collection store: a Zarr v3 group that plain xarray, rioxarray and GDAL can read.

Layout (SPEC §3)::

    STORE/zarr.json            root attrs "mosaicflow": frame of the collection
    STORE/images/<id>/         one xarray Dataset per image: b1..bn on (y, x), x/y, spatial_ref
    STORE/catalog.parquet      GeoParquet index       (engine/catalog.py)
    STORE/stac/                STAC collection/items  (engine/stac.py)
    STORE/service.json         ImageServer descriptor (engine/service.py)

Writes follow "template first, then chunk-aligned region writes": an image's template task
writes its metadata and coordinates (no pixels); chunk tasks then fill whole chunks, one
task per chunk, so no two writers ever touch one chunk. An image is complete only when its
group attribute ``mosaicflow.status`` says so, which its finish task sets after every chunk
and overview task of the image succeeded: a reader never mistakes a half-written image for
a finished one. The root's metadata is not consolidated (the catalog is the index); each
image's is, in its own group at its commit, so its bands open in band order in one read.

The store is a local directory or an object-store prefix (``s3://bucket/c.zarr``): every
access to its location goes through engine.storage.
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import zarr
from pyproj import CRS
from xarray.backends.zarr import FillValueCoder
from zarr.codecs import ZstdCodec

from engine import storage
from engine.errors import StoreError
from engine.grid import Grid
from engine.records import CollectionInfo

FORMAT_VERSION = 1
_ZSTD_LEVEL = 1  # ~25 % faster to write than 3 for a few % more bytes

_CONVENTIONS = [
    {
        "uuid": "f17cb550-5864-4468-aeb7-f3180cfb622f",
        "name": "proj:",
        "schema_url": "https://raw.githubusercontent.com/zarr-experimental/geo-proj/refs/tags/v1/schema.json",
        "spec_url": "https://github.com/zarr-experimental/geo-proj/blob/v1/README.md",
        "description": "Coordinate reference system information for geospatial data",
    },
    {
        "uuid": "689b58e2-cf7b-45e0-9fff-9cfc0883d6b4",
        "name": "spatial",
        "schema_url": "https://raw.githubusercontent.com/zarr-conventions/spatial/refs/tags/v1/schema.json",
        "spec_url": "https://github.com/zarr-conventions/spatial/blob/v1/README.md",
        "description": "Spatial coordinate information",
    },
]
_MULTISCALES = {
    "uuid": "d35379db-88df-4056-af3a-620245f8e347",
    "name": "multiscales",
    "schema_url": "https://raw.githubusercontent.com/zarr-conventions/multiscales/refs/tags/v1/schema.json",
    "spec_url": "https://github.com/zarr-conventions/multiscales/blob/v1/README.md",
    "description": "Multiscale layout of zarr datasets",
}


def store_path(store: str | os.PathLike[str]) -> str:
    """The store location as a string (local path or URL) without a trailing slash."""
    return str(store).rstrip("/")


def is_store(store: str | os.PathLike[str]) -> bool:
    """Whether a collection's root group is at ``store`` (http(s):// never holds one)."""
    return storage.supported(store) and storage.exists(storage.join(store_path(store), "zarr.json"))


def read_info(store: str | os.PathLike[str]) -> CollectionInfo:
    """The collection frame from the root group attributes."""
    if not is_store(store):
        raise StoreError(
            f"{store} is not a mosaicflow collection (no zarr.json); create it with `mosaicflow create`"
        )
    attrs = zarr.open_group(storage.zarr_store(store_path(store)), mode="r").attrs.asdict()
    meta = attrs.get("mosaicflow")
    if not isinstance(meta, dict):
        raise StoreError(
            f"{store} is a Zarr group but not a mosaicflow collection (no 'mosaicflow' attributes)"
        )
    origin = meta.get("lattice_origin") or (0.0, 0.0)
    return CollectionInfo(
        name=meta["name"],
        crs_wkt=meta["crs"],
        cell_size=float(meta["cell_size"]),
        tile_size=int(meta["tile_size"]),
        origin=(float(origin[0]), float(origin[1])),
        collection_type=meta.get("collection_type", "UAV/UAS"),
        raster_type=meta.get("raster_type", "Raster Dataset"),
    )


def _mosaicflow_attrs(attrs: dict[str, Any]) -> dict[str, Any]:
    value = attrs.get("mosaicflow")
    return dict(value) if isinstance(value, dict) else {}


def read_root_attrs(store: str | os.PathLike[str]) -> dict[str, Any]:
    root = zarr.open_group(storage.zarr_store(store_path(store)), mode="r")
    return _mosaicflow_attrs(root.attrs.asdict())


def init_store(
    store: str | os.PathLike[str],
    info: CollectionInfo,
    *,
    request_token: str = "",
    overwrite: bool = False,
) -> None:
    """Create the root group (or replace it when ``overwrite``) with the collection frame."""
    path = store_path(store)
    if overwrite and storage.is_empty(path) is not None:
        if not is_store(path) and storage.children(path):
            raise StoreError(
                f"{path} exists and is not a mosaicflow collection; refusing to delete it"
            )
        storage.delete_tree(path)
    crs = CRS.from_wkt(info.crs_wkt)
    root = zarr.open_group(storage.zarr_store(path), mode="a", zarr_format=3)
    root.attrs.update(
        {
            "mosaicflow": {
                "format_version": FORMAT_VERSION,
                "name": info.name,
                "crs": info.crs_wkt,
                "crs_code": _crs_code(crs),
                "cell_size": info.cell_size,
                "tile_size": info.tile_size,
                "lattice_origin": list(info.origin),
                "collection_type": info.collection_type,
                "raster_type": info.raster_type,
                "request_token": request_token,
            },
            "zarr_conventions": _CONVENTIONS[:1],
            **_proj_attrs(crs),
        }
    )
    root.require_group("images")


def _crs_code(crs: CRS) -> str | None:
    auth = crs.to_authority(min_confidence=90)
    return f"{auth[0]}:{auth[1]}" if auth else None


def _proj_attrs(crs: CRS) -> dict[str, Any]:
    code = _crs_code(crs)
    return {"proj:code": code} if code else {"proj:wkt2": crs.to_wkt()}


def drop_consolidated(store: str | os.PathLike[str]) -> None:
    """Rewrite the root group's metadata without consolidated metadata, when a store
    written by an earlier version has it (see engine.ingest.publish)."""
    path = store_path(store)
    if b'"consolidated_metadata"' not in storage.read_bytes(storage.join(path, "zarr.json")):
        return
    root = zarr.open_group(storage.zarr_store(path), mode="r+", use_consolidated=False)
    root.update_attributes({})  # writes the root's own metadata, nothing consolidated


def image_group_path(store: str | os.PathLike[str], image_id: str) -> str:
    return f"{store_path(store)}/images/{image_id}"


def grid_attrs(grid: Grid) -> dict[str, Any]:
    """zarr-conventions ``proj:`` + ``spatial:`` attributes of an image grid."""
    return {
        "zarr_conventions": _CONVENTIONS,
        **_proj_attrs(grid.crs),
        "spatial:dimensions": ["y", "x"],
        "spatial:transform": list(grid.transform)[:6],
        "spatial:shape": list(grid.shape),
        "spatial:bbox": list(grid.bounds),
        "spatial:registration": "pixel",
    }


def create_image_template(
    store: str | os.PathLike[str],
    image_id: str,
    grid: Grid,
    variables: list[str],
    dtype: str,
    nodata: float | None,
    tile: int,
    attrs: dict[str, Any] | None = None,
    band_attrs: list[dict[str, Any]] | None = None,
    group_attrs: dict[str, Any] | None = None,
) -> None:
    """Write one image's metadata and coordinates, and no pixels (chunk tasks fill them).
    ``group_attrs``: more group attributes (its ``multiscales``, :func:`multiscales_attrs`).

    The group is an xarray Dataset: one variable per band on (y, x) with ``_FillValue`` =
    nodata and ``grid_mapping`` → a CF ``spatial_ref`` variable (crs_wkt, GeoTransform),
    pixel-centre x/y coordinates, and zarr-conventions attributes on the group.

    It is written with zarr directly, node for node what xarray's ``to_zarr`` writes for
    that Dataset (tests/test_store_layout.py compares them): ~3× faster than going through
    xarray, which matters at one template per image.
    """
    x, y = grid.coords()
    # GDAL's Zarr driver reads an array's CRS from its own "_CRS" attribute (GDAL >= 3.11
    # reads zarr-python 3 arrays; the CF spatial_ref serves xarray and rioxarray)
    code = _crs_code(grid.crs)
    gdal_crs: dict[str, str] = {"wkt": grid.crs_wkt}
    if code and code.startswith("EPSG:"):
        gdal_crs["url"] = f"http://www.opengis.net/def/crs/EPSG/0/{code[5:]}"
    group = zarr.open_group(
        storage.zarr_store(image_group_path(store, image_id)), mode="w", zarr_format=3,
        attributes={
            **grid_attrs(grid), **(group_attrs or {}),
            "mosaicflow": {"status": "writing", **(attrs or {})},
        },
    )  # fmt: skip
    units = _units(grid.crs)
    nan = FillValueCoder.encode(np.nan, np.dtype("float64"))
    for dim, values in (("x", x), ("y", y)):
        axis = {
            "units": units,
            "standard_name": f"projection_{dim}_coordinate",
            "axis": dim.upper(),
        }
        group.create_array(
            dim, data=values.astype("float64"), chunks=values.shape, fill_value=np.nan,
            dimension_names=[dim], attributes={**axis, "_FillValue": nan},
        )  # fmt: skip
    group.create_array(
        "spatial_ref", shape=(), dtype="int32", fill_value=0, attributes=_cf_grid_mapping(grid)
    )
    fill = np.array(0 if nodata is None else nodata, dtype=dtype)
    for k, name in enumerate(variables):
        vattrs: dict[str, Any] = {
            "grid_mapping": "spatial_ref",
            "_CRS": gdal_crs,
            **((band_attrs or [{}] * len(variables))[k]),
            "coordinates": "spatial_ref",
        }
        if nodata is not None:  # no nodata: no _FillValue (every value is data)
            vattrs["_FillValue"] = FillValueCoder.encode(fill.item(), fill.dtype)
        group.create_array(
            name, shape=grid.shape, dtype=dtype, chunks=(tile, tile), fill_value=fill.item(),
            compressors=[ZstdCodec(level=_ZSTD_LEVEL)], dimension_names=["y", "x"],
            attributes=vattrs,
        )  # fmt: skip


def multiscales_attrs(
    grids: list[Grid], variables: list[str], methods: list[str]
) -> dict[str, Any]:
    """An image group's ``multiscales`` attribute (and its convention) for its levels
    ``grids`` (``grids[0]`` is the image itself).

    Level 0 stays the group's own arrays (``asset: "."``); level k is the child group
    ``overviews/<k>``, derived from level 0 with ``scale`` 2**k. Each band's overview
    resampling is recorded per level (``mosaicflow:resampling``); a level's
    ``resampling_method`` is set when all bands agree.
    """
    band_resampling = dict(zip(variables, methods, strict=True))
    uniform = methods[0] if methods and len(set(methods)) == 1 else None
    layout: list[dict[str, Any]] = []
    for k, grid in enumerate(grids):
        entry: dict[str, Any] = {"asset": "." if k == 0 else f"overviews/{k}"}
        if k:
            entry["derived_from"] = "."
        entry["transform"] = {"scale": [float(2**k)] * 2, "translation": [0.0, 0.0]}
        if k:
            entry.update({"resampling_method": uniform} if uniform else {})
            entry["mosaicflow:resampling"] = band_resampling
        entry["spatial:transform"] = list(grid.transform)[:6]
        entry["spatial:shape"] = list(grid.shape)
        layout.append(entry)
    multiscales: dict[str, Any] = {"layout": layout}
    if uniform:
        multiscales["resampling_method"] = uniform
    return {"zarr_conventions": [*_CONVENTIONS, _MULTISCALES], "multiscales": multiscales}


def create_overview_templates(
    store: str | os.PathLike[str],
    image_id: str,
    grids: list[Grid],
    variables: list[str],
    dtype: str,
    nodata: float | None,
    tile: int,
    methods: list[str],
) -> None:
    """Write the templates of an image's overview levels 1.. (``grids[k]`` is level k; the
    image's own template, with its :func:`multiscales_attrs`, is written already).

    Level k is an xarray Dataset like level 0 (bands, pixel-centre coordinates, CF
    ``spatial_ref``, zarr-conventions attributes; the same chunks, codecs, ``_FillValue``
    and ``_CRS``) on dimensions ``y_<k>``/``x_<k>``, since an xarray DataTree child may not
    reuse its parent's dimension names with other sizes; each array records its band's
    ``resampling_method``. Written with zarr directly, copying level 0's encoded attributes.
    """
    if len(grids) < 2:
        return
    group = zarr.open_group(
        storage.zarr_store(image_group_path(store, image_id)), mode="r+", zarr_format=3
    )
    for k, grid in enumerate(grids[1:], start=1):
        _level_template(group, k, grid, variables, dtype, nodata, tile, methods)


def _level_template(
    group: zarr.Group,
    k: int,
    grid: Grid,
    variables: list[str],
    dtype: str,
    nodata: float | None,
    tile: int,
    methods: list[str],
) -> None:
    """Overview group ``overviews/<k>`` of an image group: metadata and coordinates only."""
    ydim, xdim = f"y_{k}", f"x_{k}"
    attrs = {**grid_attrs(grid), "spatial:dimensions": [ydim, xdim]}
    level = group.require_group("overviews").create_group(
        str(k), overwrite=True, attributes={**attrs, "mosaicflow": {"level": k, "scale": 2**k}}
    )
    x, y = grid.coords()
    for dim, base, values in ((xdim, "x", x), (ydim, "y", y)):
        arr = level.create_array(
            dim, shape=values.shape, dtype="float64", chunks=values.shape,
            dimension_names=[dim], attributes=dict(group[base].attrs),
        )  # fmt: skip
        arr[:] = values
    level.create_array(
        "spatial_ref", shape=(), dtype="int32", fill_value=0, attributes=_cf_grid_mapping(grid)
    )
    fill = np.array(0 if nodata is None else nodata, dtype=dtype).item()
    for name, method in zip(variables, methods, strict=True):
        level.create_array(
            name, shape=grid.shape, dtype=dtype, chunks=(tile, tile), fill_value=fill,
            compressors=[ZstdCodec(level=_ZSTD_LEVEL)], dimension_names=[ydim, xdim],
            attributes={**group[name].attrs, "resampling_method": method},
        )  # fmt: skip


def overview_levels(group: zarr.Group) -> list[str]:
    """The overview groups of an image group, finest first, from its ``multiscales``."""
    ms = group.attrs.get("multiscales")
    layout = ms.get("layout", []) if isinstance(ms, dict) else []
    return [e["asset"] for e in layout if isinstance(e, dict) and e.get("asset") not in (None, ".")]


def _units(crs: CRS) -> str:
    unit = crs.axis_info[0].unit_name if crs.axis_info else "metre"
    return "degrees" if crs.is_geographic else unit


def _cf_grid_mapping(grid: Grid) -> dict[str, Any]:
    t = grid.transform
    try:
        cf = grid.crs.to_cf()
    except Exception:  # a CRS CF cannot name still has its WKT below
        cf = {}
    cf.update(
        {
            "crs_wkt": grid.crs_wkt,
            "spatial_ref": grid.crs_wkt,
            "GeoTransform": f"{t.c!r} {t.a!r} {t.b!r} {t.f!r} {t.d!r} {t.e!r}",
        }
    )
    return cf


def image_meta(store: str | os.PathLike[str], image_id: str) -> dict[str, Any] | None:
    """The ``mosaicflow`` attributes of an image group, or None when it does not exist.
    Read from its ``zarr.json`` alone: zarr would parse every member's consolidated
    metadata first (3 ms against 0.3 ms an image, at every resume and commit)."""
    try:
        doc = json.loads(storage.read_bytes(_group_doc(store, image_id)))
    except (FileNotFoundError, NotADirectoryError):
        return None
    return _mosaicflow_attrs(doc.get("attributes", {}))


def mark_image(store: str | os.PathLike[str], image_id: str, **meta: Any) -> None:
    """Update an image group's ``mosaicflow`` attributes (status last: it is the commit).
    One rewrite of its ``zarr.json`` that keeps the rest of the document as it is (zarr
    would re-sort the members :func:`commit_image` put in band order)."""
    key = _group_doc(store, image_id)
    _write_group_doc(key, json.loads(storage.read_bytes(key)), meta)


def _group_doc(store: str | os.PathLike[str], image_id: str) -> str:
    """The location of an image group's ``zarr.json``."""
    return storage.join(image_group_path(store, image_id), "zarr.json")


def _write_group_doc(key: str, doc: dict[str, Any], meta: dict[str, Any]) -> None:
    attrs = doc.setdefault("attributes", {})
    attrs["mosaicflow"] = {**_mosaicflow_attrs(attrs), **meta}
    storage.write_bytes(key, json.dumps(doc, indent=2).encode())


def commit_image(
    store: str | os.PathLike[str], image_id: str, order: Sequence[str], **meta: Any
) -> None:
    """Commit a written image group: its ``mosaicflow`` attributes with ``status``
    complete, and its members' metadata consolidated inline in its ``zarr.json`` with the
    names in ``order`` (its bands) first at every level, so xarray lists the bands in band
    order (a directory listing has no order) and opens the image in one read.

    zarr consolidates first (the group still says ``writing``); the commit is the one
    rewrite of that document that reorders it and sets the status.
    """
    group = image_group_path(store, image_id)
    _sweep_partial_chunks(group)
    with warnings.catch_warnings():  # "not part of the Zarr v3 spec": known, and inline
        warnings.simplefilter("ignore", zarr.errors.ZarrUserWarning)
        zarr.consolidate_metadata(storage.zarr_store(group), zarr_format=3)
    key = _group_doc(store, image_id)
    doc = json.loads(storage.read_bytes(key))
    rank = {name: k for k, name in enumerate(order)}

    def position(path: str) -> tuple[tuple[int, int, str], ...]:
        return tuple((0, rank[c], "") if c in rank else (1, 0, c) for c in path.split("/"))

    members = doc["consolidated_metadata"]["metadata"]
    doc["consolidated_metadata"]["metadata"] = {
        p: members[p] for p in sorted(members, key=position)
    }
    _write_group_doc(key, doc, {**meta, "status": "complete"})


def _sweep_partial_chunks(group: str) -> None:
    """Delete the temporary files of chunk writes a killed worker left in a local group.

    zarr writes a local chunk to ``<key>.<uuid>.partial`` and renames it into place; a
    worker killed in between leaves that file, and Dask's re-run writes the chunk anew.
    An object store's PUT leaves nothing behind."""
    if storage.is_remote(group):
        return
    for leftover in Path(group).rglob("*.partial"):
        leftover.unlink(missing_ok=True)


def remove_image(store: str | os.PathLike[str], image_id: str) -> None:
    storage.delete_tree(image_group_path(store, image_id))


def list_image_ids(store: str | os.PathLike[str]) -> list[str]:
    """Ids of the image groups in the store (a group exists once its zarr.json does).
    On an object store that is one HEAD per group, 16 at a time (a listing would also
    return every chunk)."""
    images = storage.join(store_path(store), "images")
    names = [i for i in storage.children(images) if i != "zarr.json"]

    def has_group(name: str) -> bool:
        return storage.exists(storage.join(images, name, "zarr.json"))

    if not storage.is_remote(images):
        return [i for i in names if has_group(i)]
    with ThreadPoolExecutor(16) as pool:
        return [i for i, ok in zip(names, pool.map(has_group, names), strict=True) if ok]
