"""The collection catalog: one GeoParquet 1.1 row per image (SPEC §4).

The catalog is the index every reader starts from (the ImageServer ``query`` endpoint, the
STAC export, ``add``/resume). It is built from :class:`engine.records.ImageRecord` objects
in one pass (:func:`build_table`), written atomically (:func:`write_catalog`: temp file in
the same directory, fsync, ``os.replace``; one PUT on an object store) and read back either as an Arrow table
(:func:`read_catalog`) or as records (:func:`read_records`, the exact inverse used when
images are added to an existing collection).

Column rules worth knowing:

* ``footprint`` (WKB, EPSG:4326, antimeridian-split) is the GeoParquet primary geometry,
  with a ``footprint_bbox`` struct column declared as its 1.1 bbox *covering*; the covering
  holds plain min/max bounds (a split footprint gives -180..180), which is what row-group
  filters compare against.
* a complete image given without a footprint gets its grid outline (reprojected and
  antimeridian-split like any footprint); failed images have a null footprint.
* ``xmin``..``ymax`` are in the collection CRS: the valid-data bounds when known, else the
  image grid's bounds. ``CenterX``/``CenterY`` are the centre of that box.
* Pixel-size ranges (ArcGIS mosaic dataset semantics): ``LowPS`` is the finest native
  pixel size of the image and ``HighPS`` its coarsest level; without overviews both come
  from the image grid's cell size. ``MinPS`` is 0 (visible however far one zooms in) and
  ``MaxPS`` is ``HighPS * tile_size``, the display pixel size at which one collection tile
  shrinks to a single pixel. Raster types or the overview builder may override
  ``LowPS``/``HighPS``/``MinPS``/``MaxPS``/``ZOrder`` through ``ImageRecord.extra``.
* ``Category`` is 1 for a complete image (ArcGIS "primary") and 254 otherwise.
* ``extra`` entries become their own columns (the union over records, typed by pyarrow
  inference, null where missing); a key clashing with a core column is stored as
  ``extra_<key>``. Values pyarrow cannot type consistently are stored as JSON strings.
* ``grid_transform`` (6 floats, rasterio/affine order a, b, c, d, e, f) and ``grid_shape``
  (height, width) keep the image grid for the round trip; ``band_stats`` keeps per-band
  count/min/max/mean/stddev plus the running sum and sum of squares, so statistics of
  several images can still be pooled exactly.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import shapely
from affine import Affine
from pyproj import CRS

from engine import storage
from engine.footprint import to_wgs84_footprint
from engine.grid import Grid
from engine.records import BandStats, CollectionInfo, ImageRecord
from engine.storage import atomic_write

CATALOG_FORMAT_VERSION = "1"
GEOMETRY_COLUMN = "footprint"
COVERING_COLUMN = "footprint_bbox"
# Keys of ImageRecord.extra that replace a computed column instead of adding one.
OVERRIDABLE = ("LowPS", "HighPS", "MinPS", "MaxPS", "ZOrder")
CATEGORY_PRIMARY = 1
CATEGORY_INCOMPLETE = 254

_TS = pa.timestamp("us", tz="UTC")
_BBOX = pa.struct([(k, pa.float64()) for k in ("xmin", "ymin", "xmax", "ymax")])
_STATS = pa.list_(
    pa.struct(
        [
            ("count", pa.int64()),
            ("min", pa.float64()),
            ("max", pa.float64()),
            ("mean", pa.float64()),
            ("stddev", pa.float64()),
            ("sum", pa.float64()),
            ("sumsq", pa.float64()),
        ]
    )
)

# The core columns, in file order, with their Arrow types (SPEC §4 plus round-trip columns).
CORE_SCHEMA = pa.schema(
    [
        ("ObjectID", pa.int64()),
        ("image_id", pa.string()),
        ("Name", pa.string()),
        ("group", pa.string()),
        ("raster_type", pa.string()),
        ("product_name", pa.string()),
        ("sensor", pa.string()),
        ("acquisition_time", _TS),
        ("source_uris", pa.list_(pa.string())),
        ("byref", pa.bool_()),
        ("crs", pa.string()),
        ("LowPS", pa.float64()),
        ("HighPS", pa.float64()),
        ("MinPS", pa.float64()),
        ("MaxPS", pa.float64()),
        ("width", pa.int32()),
        ("height", pa.int32()),
        ("band_names", pa.list_(pa.string())),
        ("dtype", pa.string()),
        ("nodata", pa.float64()),
        ("xmin", pa.float64()),
        ("ymin", pa.float64()),
        ("xmax", pa.float64()),
        ("ymax", pa.float64()),
        ("CenterX", pa.float64()),
        ("CenterY", pa.float64()),
        ("ZOrder", pa.int32()),
        ("Category", pa.int32()),
        ("cloud_cover", pa.float64()),
        ("sun_elevation", pa.float64()),
        ("sun_azimuth", pa.float64()),
        ("status", pa.string()),
        ("message", pa.string()),
        ("checksum", pa.string()),
        ("ingested_at", _TS),
        ("native_crs", pa.string()),
        ("native_resolution", pa.list_(pa.float64())),
        ("grid_transform", pa.list_(pa.float64())),
        ("grid_shape", pa.list_(pa.int64())),
        ("band_stats", _STATS),
        (COVERING_COLUMN, _BBOX),
        (GEOMETRY_COLUMN, pa.binary()),
    ]
)


# -- row building -------------------------------------------------------------------------
def record_bounds(rec: ImageRecord) -> tuple[float, float, float, float] | None:
    """Bounds of an image in the collection CRS: valid-data bounds, else its grid's bounds."""
    if rec.data_bounds is not None:
        return tuple(float(v) for v in rec.data_bounds)  # type: ignore[return-value]
    if rec.grid is not None and rec.grid.width and rec.grid.height:
        return rec.grid.bounds
    return None


def record_footprint(rec: ImageRecord) -> shapely.Geometry | None:
    """The image's lon/lat footprint; for a complete image without one, its grid outline.

    Failed images (and images without a grid) have none.
    """
    if rec.footprint is not None and not rec.footprint.is_empty:
        return rec.footprint
    if rec.status == "complete" and rec.grid is not None and rec.grid.width and rec.grid.height:
        geom = to_wgs84_footprint(rec.grid.footprint(), rec.grid.crs)
        return None if geom.is_empty else geom
    return None


def pixel_sizes(rec: ImageRecord, info: CollectionInfo) -> dict[str, float]:
    """``LowPS``, ``HighPS``, ``MinPS``, ``MaxPS`` of an image (see the module docstring)."""
    if rec.grid is not None:
        res = rec.grid.resolution
        low, high = float(min(res)), float(max(res))
    else:
        low = high = float(info.cell_size)
    low = _num(rec.extra.get("LowPS"), low)
    high = _num(rec.extra.get("HighPS"), high)
    return {
        "LowPS": low,
        "HighPS": high,
        "MinPS": _num(rec.extra.get("MinPS"), 0.0),
        "MaxPS": _num(rec.extra.get("MaxPS"), high * info.tile_size),
    }


def _num(value: Any, default: float) -> float:
    return default if value is None else float(value)


def _utc(value: datetime | None) -> datetime | None:
    """A timezone-aware UTC datetime (naive datetimes are taken as UTC)."""
    if value is None:
        return None
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value.astimezone(UTC)


def _extra_name(key: str) -> str:
    return f"extra_{key}" if key in CORE_SCHEMA.names else key


def _core_row(rec: ImageRecord, object_id: int, info: CollectionInfo) -> dict[str, Any]:
    bounds = record_bounds(rec)
    grid = rec.grid
    fp = record_footprint(rec)
    zorder = rec.extra.get("ZOrder")
    return {
        "ObjectID": object_id,
        "image_id": rec.image_id,
        "Name": rec.name,
        "group": rec.group,
        "raster_type": rec.raster_type,
        "product_name": rec.product_name,
        "sensor": rec.sensor,
        "acquisition_time": _utc(rec.acquisition_time),
        "source_uris": list(rec.source_uris),
        "byref": bool(rec.byref),
        "crs": info.crs_wkt,
        **pixel_sizes(rec, info),
        "width": grid.width if grid is not None else None,
        "height": grid.height if grid is not None else None,
        "band_names": list(rec.band_names),
        "dtype": rec.dtype,
        "nodata": None if rec.nodata is None else float(rec.nodata),
        "xmin": bounds[0] if bounds else None,
        "ymin": bounds[1] if bounds else None,
        "xmax": bounds[2] if bounds else None,
        "ymax": bounds[3] if bounds else None,
        "CenterX": (bounds[0] + bounds[2]) / 2 if bounds else None,
        "CenterY": (bounds[1] + bounds[3]) / 2 if bounds else None,
        "ZOrder": None if zorder is None else int(zorder),
        "Category": CATEGORY_PRIMARY if rec.status == "complete" else CATEGORY_INCOMPLETE,
        "cloud_cover": rec.cloud_cover,
        "sun_elevation": rec.sun_elevation,
        "sun_azimuth": rec.sun_azimuth,
        "status": rec.status,
        "message": rec.message,
        "checksum": rec.checksum,
        "ingested_at": _utc(rec.ingested_at),
        "native_crs": rec.native_crs_wkt,
        "native_resolution": (
            [float(v) for v in rec.native_resolution] if rec.native_resolution else None
        ),
        "grid_transform": [float(v) for v in tuple(grid.transform)[:6]] if grid else None,
        "grid_shape": list(grid.shape) if grid is not None else None,
        "band_stats": [s.to_dict() for s in rec.stats],
        COVERING_COLUMN: dict(zip(("xmin", "ymin", "xmax", "ymax"), fp.bounds, strict=True))
        if fp is not None
        else None,
        GEOMETRY_COLUMN: shapely.to_wkb(fp, output_dimension=2) if fp is not None else None,
    }


def _extra_array(values: list[Any]) -> pa.Array:
    """An Arrow array of one extra column; JSON strings when pyarrow cannot type it."""
    try:
        arr = pa.array(values)
        if pa.types.is_null(arr.type):
            return arr.cast(pa.string())
        return arr
    except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, ValueError, OverflowError):
        return pa.array(
            [None if v is None else json.dumps(v, default=str) for v in values], pa.string()
        )


def build_table(
    records: list[ImageRecord],
    info: CollectionInfo,
    object_ids: list[int] | None = None,
    next_object_id: int = 1,
) -> pa.Table:
    """The catalog as an Arrow table with the GeoParquet ``geo`` metadata attached.

    Parameters
    ----------
    records:
        The collection's images, in ObjectID order.
    info:
        The collection frame (CRS, cell size, tile size).
    object_ids:
        Each record's ObjectID (default: position + 1). A collection that images are
        added to and removed from keeps each image's ObjectID (see :func:`assign_object_ids`).
    next_object_id:
        The lowest ObjectID a later image may get (recorded so removed numbers stay unused).

    Returns
    -------
    pyarrow.Table
        Core columns (:data:`CORE_SCHEMA`) then the ``extra`` columns.
    """
    ids = object_ids if object_ids is not None else list(range(1, len(records) + 1))
    rows = [_core_row(r, oid, info) for r, oid in zip(records, ids, strict=True)]
    columns = {f.name: pa.array([row[f.name] for row in rows], type=f.type) for f in CORE_SCHEMA}
    extra_keys: list[str] = []
    for rec in records:
        for key in rec.extra:
            if key not in OVERRIDABLE and key not in extra_keys:
                extra_keys.append(key)
    extra_names = {}
    for key in extra_keys:
        name = _extra_name(key)
        extra_names[name] = key
        columns[name] = _extra_array([rec.extra.get(key) for rec in records])
    table = pa.table(columns)
    meta = {
        b"geo": json.dumps(_geo_metadata(rows)).encode(),
        b"mosaicflow": json.dumps(
            {
                "format_version": CATALOG_FORMAT_VERSION,
                "name": info.name,
                "cell_size": info.cell_size,
                "tile_size": info.tile_size,
                "origin": list(info.origin),
                "collection_type": info.collection_type,
                "raster_type": info.raster_type,
                "extra_columns": extra_names,
                "next_object_id": max(next_object_id, max(ids, default=0) + 1),
            }
        ).encode(),
    }
    return table.replace_schema_metadata(meta)


def _geo_metadata(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """GeoParquet 1.1 file metadata for the ``footprint`` column."""
    types = set()
    boxes = []
    for row in rows:
        if row[GEOMETRY_COLUMN] is not None:
            types.add(shapely.from_wkb(row[GEOMETRY_COLUMN]).geom_type)
            boxes.append(row[COVERING_COLUMN])
    column: dict[str, Any] = {
        "encoding": "WKB",
        "geometry_types": sorted(types),
        "crs": CRS.from_epsg(4326).to_json_dict(),
        "edges": "planar",
        "orientation": "counterclockwise",
        "covering": {"bbox": {k: [COVERING_COLUMN, k] for k in ("xmin", "ymin", "xmax", "ymax")}},
    }
    if boxes:
        column["bbox"] = [
            min(b["xmin"] for b in boxes),
            min(b["ymin"] for b in boxes),
            max(b["xmax"] for b in boxes),
            max(b["ymax"] for b in boxes),
        ]
    return {
        "version": "1.1.0",
        "primary_column": GEOMETRY_COLUMN,
        "columns": {GEOMETRY_COLUMN: column},
    }


# -- writing and reading --------------------------------------------------------------------


def write_catalog(
    path: str | Path,
    records: list[ImageRecord],
    info: CollectionInfo,
    object_ids: list[int] | None = None,
    next_object_id: int = 1,
) -> None:
    """Write the collection catalog as GeoParquet 1.1, atomically.

    Parameters
    ----------
    path:
        Target file, usually ``STORE/catalog.parquet``.
    records:
        Every image of the collection, failed ones included (status ``failed``, null
        footprint), in ObjectID order.
    info:
        The collection frame.
    object_ids, next_object_id:
        The records' ObjectIDs (default: position + 1) and the next unused one.

    Examples
    --------
    >>> write_catalog(tmp_path / "catalog.parquet", records, info)  # doctest: +SKIP
    """
    table = build_table(records, info, object_ids, next_object_id)
    atomic_write(path, lambda fh: pq.write_table(table, fh, compression="zstd"))


def read_catalog(path: str | Path, columns: list[str] | None = None) -> pa.Table:
    """The catalog as an Arrow table (schema metadata, ``geo`` included, preserved);
    from an object store it is fetched whole (one GET) and parsed from memory."""
    if storage.is_remote(path):
        return pq.read_table(pa.BufferReader(storage.read_bytes(path)), columns=columns)
    return pq.read_table(path, columns=columns)


def read_object_ids(path: str | Path) -> tuple[dict[str, int], int]:
    """Each image's ObjectID in the catalog at ``path``, and the next unused ObjectID."""
    table = read_catalog(path, columns=["ObjectID", "image_id"])
    meta = json.loads((table.schema.metadata or {}).get(b"mosaicflow", b"{}"))
    ids = dict(zip(table["image_id"].to_pylist(), table["ObjectID"].to_pylist(), strict=True))
    return ids, max(int(meta.get("next_object_id", 1)), max(ids.values(), default=0) + 1)


def assign_object_ids(
    image_ids: list[str], previous: dict[str, int], next_id: int = 1
) -> tuple[list[int], int]:
    """ObjectIDs of ``image_ids``, and the next unused one: an image listed before keeps
    its ObjectID; a new one gets the next unused number (removed numbers are not reused)."""
    out = []
    for image_id in image_ids:
        oid = previous.get(image_id)
        if oid is None:
            oid, next_id = next_id, next_id + 1
        out.append(oid)
    return out, next_id


def record_to_json(rec: ImageRecord, info: CollectionInfo) -> dict[str, Any]:
    """One image's catalog row as JSON-able values (kept in its group: resume rebuilds
    the record of an image finished by a run that died before writing the catalog)."""
    table = build_table([rec], info)
    meta = json.loads(table.schema.metadata[b"mosaicflow"])
    row = {k: _jsonable(v) for k, v in table.to_pylist()[0].items()}
    return {"row": row, "extra_columns": meta["extra_columns"]}


def record_from_json(value: dict[str, Any], info: CollectionInfo) -> ImageRecord:
    """The inverse of :func:`record_to_json`."""
    row = {k: _from_jsonable(v) for k, v in value["row"].items()}
    return _record_from_row(row, value["extra_columns"], info.tile_size)


def _jsonable(v: Any) -> Any:
    if isinstance(v, datetime):
        return {"$datetime": v.isoformat()}
    if isinstance(v, bytes):
        return {"$bytes": v.hex()}
    return v


def _from_jsonable(v: Any) -> Any:
    if isinstance(v, dict) and "$datetime" in v:
        return datetime.fromisoformat(v["$datetime"])
    if isinstance(v, dict) and "$bytes" in v:
        return bytes.fromhex(v["$bytes"])
    return v


def read_records(path: str | Path) -> list[ImageRecord]:
    """The catalog back as :class:`ImageRecord` objects, in ObjectID order.

    The inverse of :func:`write_catalog` except that ``data_bounds`` is always set from the
    row's bounds (a record written without data bounds comes back with its grid bounds).
    """
    table = read_catalog(path)
    meta = json.loads((table.schema.metadata or {}).get(b"mosaicflow", b"{}"))
    extra_names: dict[str, str] = meta.get("extra_columns", {})
    table = table.sort_by("ObjectID")
    rows = table.to_pylist()
    records = []
    for row in rows:
        records.append(_record_from_row(row, extra_names, meta.get("tile_size")))
    return records


def _record_from_row(
    row: dict[str, Any], extra_names: dict[str, str], tile_size: int | None
) -> ImageRecord:
    grid = None
    if row["grid_transform"] is not None and row["grid_shape"] is not None:
        grid = Grid(
            CRS.from_wkt(row["crs"]), Affine(*row["grid_transform"]), tuple(row["grid_shape"])
        )
    bounds = (row["xmin"], row["ymin"], row["xmax"], row["ymax"])
    footprint = shapely.from_wkb(row[GEOMETRY_COLUMN]) if row[GEOMETRY_COLUMN] else None
    extra = {key: row[name] for name, key in extra_names.items() if row.get(name) is not None}
    # Overridable pixel-size columns go back to ``extra`` only when they differ from the
    # values the catalog would compute by itself.
    if grid is not None:
        res = grid.resolution
        defaults: dict[str, float | None] = {"LowPS": min(res), "HighPS": max(res), "MinPS": 0.0}
    else:
        defaults = {"LowPS": row["LowPS"], "HighPS": row["HighPS"], "MinPS": 0.0}
    if tile_size is not None and row["HighPS"] is not None:
        defaults["MaxPS"] = row["HighPS"] * tile_size
    defaults["ZOrder"] = None
    for key in OVERRIDABLE:
        value = row[key]
        if value is not None and (defaults.get(key) is None or value != defaults[key]):
            extra[key] = value
    return ImageRecord(
        image_id=row["image_id"],
        name=row["Name"],
        source_uris=list(row["source_uris"] or []),
        raster_type=row["raster_type"],
        status=row["status"],
        message=row["message"] or "",
        group=row["group"] or "",
        product_name=row["product_name"] or "",
        sensor=row["sensor"] or "",
        acquisition_time=row["acquisition_time"],
        byref=bool(row["byref"]),
        grid=grid,
        native_crs_wkt=row["native_crs"] or "",
        native_resolution=tuple(row["native_resolution"]) if row["native_resolution"] else None,
        band_names=list(row["band_names"] or []),
        dtype=row["dtype"] or "",
        nodata=row["nodata"],
        footprint=footprint,
        data_bounds=None if None in bounds else bounds,
        stats=[BandStats.from_dict(s) for s in row["band_stats"] or []],
        checksum=row["checksum"] or "",
        cloud_cover=row["cloud_cover"],
        sun_elevation=row["sun_elevation"],
        sun_azimuth=row["sun_azimuth"],
        ingested_at=row["ingested_at"],
        extra=extra,
    )
