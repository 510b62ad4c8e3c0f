"""The ImageServer service descriptor (SPEC §5): what ``ImageServer?f=json`` returns.

:func:`build_descriptor` derives everything from the same records as the catalog, so the
descriptor's extents, pixel sizes and fields always match ``catalog.parquet``:

* extents: the union of the *complete* images' catalog bounds (``xmin``..``ymax``, the
  valid-data bounds in the collection CRS); ``initialExtent`` = ``fullExtent`` = ``extent``.
  A collection without any complete image gets a zero extent at the lattice origin.
* statistics: per band, the sum of every complete image's :class:`BandStats` (exact pooled
  count/min/max/mean/stddev over all ingested pixels, not a mean of means).
* ``pixelType``: from the widest dtype of the complete images (numpy type promotion, so
  mixed integer/float gives F32 or F64; 64-bit integers, which ArcGIS lacks, give F64).
* ``serviceDataType``: ``esriImageServiceDataTypeRGB`` for 3 or 4 band U8 collections,
  ``esriImageServiceDataTypeGeneric`` otherwise.
* ``fields``: ArcGIS field JSON for the scalar catalog columns (list/struct columns are
  not queryable ArcGIS fields and are left out; the footprint is the geometry field).
* ``spatialReference``: ``engine.spatialref.to_esri_spatial_reference``.
* ``noDataValue``: the images' common nodata (null when they differ, have none, or it
  is NaN, which JSON cannot carry).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pyproj import CRS

from engine.catalog import (
    COVERING_COLUMN,
    GEOMETRY_COLUMN,
    build_table,
    pixel_sizes,
    record_bounds,
)
from engine.records import BandStats, CollectionInfo, ImageRecord
from engine.spatialref import to_esri_spatial_reference
from engine.storage import write_bytes

CURRENT_VERSION = 11.3
DESCRIPTOR_FORMAT_VERSION = 1
MOSAIC_METHODS = "NorthWest,Center,LockRaster,ByAttribute,Nadir,Viewpoint,Seamline,None"
MOSAIC_OPERATORS = "First,Last,Min,Max,Mean,Blend,Sum"

_PIXEL_TYPES = {
    "bool": "U1",
    "uint8": "U8",
    "int8": "S8",
    "uint16": "U16",
    "int16": "S16",
    "uint32": "U32",
    "int32": "S32",
    "float16": "F32",
    "float32": "F32",
    "float64": "F64",
    "int64": "F64",
    "uint64": "F64",
    "complex64": "C64",
    "complex128": "C128",
}


# -- spatial references ---------------------------------------------------------------------
# -- pieces -----------------------------------------------------------------------------------
def pixel_type(dtypes: list[str]) -> str:
    """ArcGIS pixel type of the widest of ``dtypes`` (``["uint8", "float32"]`` → ``"F32"``)."""
    known = [np.dtype(d) for d in dtypes if d]
    if not known:
        return "UNKNOWN"
    widest = np.result_type(*known)
    return _PIXEL_TYPES.get(widest.name, "F64")


def pooled_stats(records: list[ImageRecord]) -> list[BandStats]:
    """Per-band statistics summed over the complete images (band i with band i)."""
    pooled: list[BandStats] = []
    for rec in records:
        if rec.status != "complete":
            continue
        for i, stats in enumerate(rec.stats):
            if i == len(pooled):
                pooled.append(BandStats())
            pooled[i] = pooled[i] + stats
    return pooled


def _extent(bounds: list[tuple[float, float, float, float]], sr: dict, info: CollectionInfo):
    if bounds:
        box = (
            min(b[0] for b in bounds),
            min(b[1] for b in bounds),
            max(b[2] for b in bounds),
            max(b[3] for b in bounds),
        )
    else:
        box = (info.origin[0], info.origin[1], info.origin[0], info.origin[1])
    return dict(zip(("xmin", "ymin", "xmax", "ymax"), map(float, box), strict=True)) | {
        "spatialReference": sr
    }


def _field_type(name: str, t: pa.DataType) -> str | None:
    if name == "ObjectID":
        return "esriFieldTypeOID"
    if name == GEOMETRY_COLUMN:
        return "esriFieldTypeGeometry"
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        return "esriFieldTypeString"
    if pa.types.is_timestamp(t) or pa.types.is_date(t):
        return "esriFieldTypeDate"
    if pa.types.is_boolean(t) or pa.types.is_int8(t) or pa.types.is_int16(t):
        return "esriFieldTypeSmallInteger"
    if pa.types.is_int32(t) or pa.types.is_uint8(t) or pa.types.is_uint16(t):
        return "esriFieldTypeInteger"
    if pa.types.is_integer(t):
        return "esriFieldTypeBigInteger"
    if pa.types.is_floating(t):
        return "esriFieldTypeDouble" if t.bit_width == 64 else "esriFieldTypeSingle"
    return None  # lists, structs, binary: not an ArcGIS attribute field


def catalog_fields(schema: pa.Schema, table: pa.Table | None = None) -> list[dict[str, Any]]:
    """ArcGIS field JSON of the catalog's attribute columns, in catalog order."""
    fields = []
    for f in schema:
        if f.name == COVERING_COLUMN:
            continue
        ftype = _field_type(f.name, f.type)
        if ftype is None:
            continue
        field: dict[str, Any] = {
            "name": f.name,
            "type": ftype,
            "alias": "Shape" if f.name == GEOMETRY_COLUMN else f.name,
            "domain": None,
            "editable": False,
            "nullable": f.name != "ObjectID",
        }
        if ftype == "esriFieldTypeString":
            longest = 0
            if table is not None and table.num_rows:
                lengths = pc.utf8_length(table[f.name])
                longest = int(pc.max(lengths).as_py() or 0)
            field["length"] = max(256, longest)
        fields.append(field)
    return fields


def _finite(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None


def _nodata(records: list[ImageRecord]) -> float | None:
    values = {r.nodata for r in records}
    if len(values) != 1:
        return None
    (value,) = values
    return _finite(value)


# -- the descriptor ----------------------------------------------------------------------------
def build_descriptor(
    records: list[ImageRecord],
    info: CollectionInfo,
    store_uri: str,
    *,
    description: str = "",
    catalog_uri: str | None = None,
    stac_uri: str | None = None,
    format_version: int | str = DESCRIPTOR_FORMAT_VERSION,
) -> dict[str, Any]:
    """The ImageServer JSON of a collection (see the module docstring for the rules).

    Parameters
    ----------
    records:
        Every image of the collection (failed ones only count in ``failed_count``).
    info:
        The collection frame.
    store_uri:
        Where the store lives (path or uri), reported in the ``mosaicflow`` block.
    description:
        Service description.
    catalog_uri, stac_uri:
        Catalog and STAC locations; default ``<store>/catalog.parquet`` and
        ``<store>/stac/collection.json``.
    format_version:
        The store format version reported in the ``mosaicflow`` block.

    Returns
    -------
    dict
        JSON-serialisable descriptor.

    Examples
    --------
    >>> d = build_descriptor(records, info, "/data/c.zarr")  # doctest: +SKIP
    >>> d["fullExtent"]["spatialReference"]  # doctest: +SKIP
    {'wkid': 32633, 'latestWkid': 32633}
    """
    complete = [r for r in records if r.status == "complete"]
    sr = to_esri_spatial_reference(CRS.from_wkt(info.crs_wkt))
    bounds = [b for b in (record_bounds(r) for r in complete) if b is not None]
    extent = _extent(bounds, sr, info)

    band_count = max((len(r.band_names) or len(r.stats) for r in complete), default=0)
    widest = max(complete, key=lambda r: len(r.band_names), default=None)
    band_names = list(widest.band_names) if widest is not None else []
    band_names += [f"Band_{i + 1}" for i in range(len(band_names), band_count)]
    stats = pooled_stats(records)
    stats += [BandStats()] * (band_count - len(stats))
    ptype = pixel_type([r.dtype for r in complete])
    sizes = [pixel_sizes(r, info) for r in complete]
    nodata = _nodata(complete)

    data_type = "esriImageServiceDataTypeGeneric"
    if ptype == "U8" and band_count in (3, 4):
        data_type = "esriImageServiceDataTypeRGB"

    table = build_table(records, info)
    fields = catalog_fields(table.schema, table)
    raster_types = list(dict.fromkeys([info.raster_type, *(r.raster_type for r in records)]))
    store = store_uri.rstrip("/")

    descriptor: dict[str, Any] = {
        "currentVersion": CURRENT_VERSION,
        "serviceDescription": description,
        "name": info.name,
        "description": description,
        "extent": extent,
        "initialExtent": dict(extent),
        "fullExtent": dict(extent),
        "hasMultidimensions": False,
        "timeInfo": _time_info(complete),
        "pixelSizeX": float(info.cell_size),
        "pixelSizeY": float(info.cell_size),
        "datasetFormat": "AMD",
        "uncompressedSize": None,
        "blockWidth": info.tile_size,
        "blockHeight": info.tile_size,
        "compressionType": "None",
        "bandNames": band_names,
        "allowCopy": True,
        "allowAnalysis": True,
        "bandCount": band_count,
        "pixelType": ptype,
        "minPixelSize": min((s["LowPS"] for s in sizes), default=float(info.cell_size)),
        "maxPixelSize": max((s["MaxPS"] for s in sizes), default=float(info.cell_size)),
        "copyrightText": "",
        "serviceDataType": data_type,
        "serviceSourceType": "esriImageServiceSourceTypeMosaicDataset",
        "minValues": [_finite(s.min) if s.count else None for s in stats],
        "maxValues": [_finite(s.max) if s.count else None for s in stats],
        "meanValues": [s.mean for s in stats],
        "stdvValues": [s.std for s in stats],
        "objectIdField": "ObjectID",
        "fields": fields,
        "capabilities": "Image,Metadata,Catalog,Mensuration",
        "defaultMosaicMethod": "Northwest",
        "allowedMosaicMethods": MOSAIC_METHODS,
        "sortField": "",
        "sortValue": None,
        "sortAscending": True,
        "mosaicOperator": "First",
        "allowedMosaicOperators": MOSAIC_OPERATORS,
        "maxDownloadSizeLimit": 2048,
        "defaultCompressionQuality": 75,
        "defaultResamplingMethod": "Bilinear",
        "maxImageHeight": 4100,
        "maxImageWidth": 15000,
        "maxRecordCount": 1000,
        "maxDownloadImageCount": 20,
        "maxMosaicImageCount": 20,
        "allowRasterFunction": True,
        "rasterFunctionInfos": [{"name": "None", "description": "", "help": ""}],
        "rasterTypeInfos": [{"name": n, "description": n, "help": ""} for n in raster_types],
        "mensurationCapabilities": "Basic",
        "hasHistograms": False,
        "hasColormap": False,
        "hasRasterAttributeTable": False,
        "supportsStatistics": True,
        "supportsAdvancedQueries": True,
        "useStandardizedQueries": True,
        "supportedImageFormatTypes": "PNG,JPG,TIFF",
        "spatialReference": sr,
        "noDataValue": nodata,
        "noDataValues": [nodata] * band_count if nodata is not None else None,
        "imageCollectionType": info.collection_type,
        "mosaicflow": {
            "store": store,
            "catalog": catalog_uri or f"{store}/catalog.parquet",
            "stac": stac_uri or f"{store}/stac/collection.json",
            "format_version": format_version,
            "crs_wkt": info.crs_wkt,
            "cell_size": float(info.cell_size),
            "tile_size": info.tile_size,
            "lattice_origin": [float(v) for v in info.origin],
            "image_count": len(complete),
            "failed_count": sum(1 for r in records if r.status != "complete"),
        },
    }
    return descriptor


def _time_info(records: list[ImageRecord]) -> dict[str, Any] | None:
    """ArcGIS timeInfo (epoch milliseconds) over the known acquisition times, else None."""
    times = [r.acquisition_time for r in records if r.acquisition_time is not None]
    if not times:
        return None
    ms = [int(t.timestamp() * 1000) for t in times]
    return {
        "startTimeField": "acquisition_time",
        "endTimeField": None,
        "timeExtent": [min(ms), max(ms)],
        "timeReference": None,
    }


def write_descriptor(path: str | Path, descriptor: dict[str, Any]) -> None:
    """Write ``descriptor`` as JSON, atomically (temp file, fsync, rename; one PUT on an
    object store).

    Raises ``ValueError`` on NaN or infinite numbers, which JSON cannot carry.
    """
    data = json.dumps(descriptor, indent=2, allow_nan=False).encode()
    write_bytes(path, data)
