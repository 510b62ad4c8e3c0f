"""The ``Raster Dataset`` raster type: any georeferenced raster GDAL reads, one image per file.

Probing reads only metadata (no pixels). Georeferencing may be an affine geotransform
(rotated ones included) or ground control points; RPC-only images belong to the satellite
types, frames without any to the camera types.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import rasterio
from affine import Affine
from rasterio.errors import RasterioIOError
from rasterio.transform import from_gcps

from engine.errors import ImageError, remote_read_reason
from engine.grid import Grid, as_crs
from engine.rastertypes.base import ImageSource, SourcePart, image_id_for

NAME = "Raster Dataset"

# GDAL can warp these, zarr stores them, and ArcGIS has a pixelType for each.
SUPPORTED_DTYPES = {"uint8", "int8", "uint16", "int16", "uint32", "int32", "float32", "float64"}


def band_names(count: int) -> tuple[str, ...]:
    """Variable names of an image's bands: ``b1 … bn`` (descriptions are kept as metadata)."""
    return tuple(f"b{i}" for i in range(1, count + 1))


def open_dataset(uri: str, gdal_path: str) -> rasterio.DatasetReader:
    """Open a raster for probing, translating GDAL's failures into an image error."""
    local = not gdal_path.startswith("/vsi")
    if local and not os.path.exists(gdal_path):
        raise ImageError(
            uri, "file not found; check the path and that it is reachable from the workers"
        )
    try:
        return rasterio.open(gdal_path)
    except RasterioIOError as exc:
        remote = remote_read_reason(str(exc)) if not local else None
        if remote is not None:
            raise ImageError(uri, remote) from None
        raise ImageError(
            uri, f"GDAL cannot read it as a raster ({exc}); give a raster file GDAL supports"
        ) from None


def probe(
    uri: str, gdal_path: str, name: str, params: Mapping[str, Any] | None = None
) -> ImageSource:
    """Describe one raster file as an :class:`ImageSource` without reading pixels."""
    with open_dataset(uri, gdal_path) as ds:
        if ds.count == 0:
            subs = ds.subdatasets
            hint = (
                f"; it has {len(subs)} subdatasets, give one of them, e.g. {subs[0]}"
                if subs
                else ""
            )
            raise ImageError(uri, f"has no raster bands{hint}")
        dtypes = set(ds.dtypes)
        if len(dtypes) > 1:
            raise ImageError(
                uri, f"mixes band data types {sorted(dtypes)}; split it into one file per type"
            )
        dtype = ds.dtypes[0]
        if dtype not in SUPPORTED_DTYPES:
            raise ImageError(
                uri,
                f"has unsupported data type {dtype}; supported: {', '.join(sorted(SUPPORTED_DTYPES))}"
                " (convert it with gdal_translate -ot)",
            )
        grid, georef = _native_grid(uri, ds)
        nodatas = {v for v in ds.nodatavals if v is not None}
        nodata = (
            ds.nodata if ds.nodata is not None else (nodatas.pop() if len(nodatas) == 1 else None)
        )
        names = band_names(ds.count)
        part = SourcePart(
            path=gdal_path,
            band_indexes=tuple(range(1, ds.count + 1)),
            band_names=names,
            grid=grid,
            dtype=dtype,
            nodata=None if nodata is None else float(nodata),
            georef=georef,
        )
        scales = [
            (float(s), float(o)) if (s, o) != (1.0, 0.0) else None
            for s, o in zip(ds.scales, ds.offsets, strict=True)
        ]
        extra = {"band_descriptions": [d or "" for d in ds.descriptions], "driver": ds.driver}
    return ImageSource(
        image_id=image_id_for(NAME, [uri], name),
        name=name,
        source_uris=[uri],
        raster_type=NAME,
        parts=[part],
        product_name=extra["driver"],
        scale_offsets=scales if any(scales) else [],
        extra=extra,
    )


def _native_grid(uri: str, ds: rasterio.DatasetReader) -> tuple[Grid, str]:
    """The image's native grid; GCP-georeferenced images get a best-fit affine grid."""
    if ds.crs is not None and ds.transform != Affine.identity():
        return Grid(as_crs(ds.crs), ds.transform, (ds.height, ds.width)), "transform"
    gcps, gcp_crs = ds.gcps
    if gcps and gcp_crs is not None:
        return Grid(as_crs(gcp_crs), from_gcps(gcps), (ds.height, ds.width)), "gcps"
    if ds.rpcs is not None:
        raise ImageError(
            uri,
            "is georeferenced only by RPCs; use a satellite raster type (ZY3-SASMAC, ZY3-CRESDA) that orthorectifies it",
        )
    if ds.crs is None and ds.transform != Affine.identity():
        raise ImageError(
            uri, "has a geotransform but no CRS; add one (gdal_edit.py -a_srs EPSG:n) and retry"
        )
    raise ImageError(
        uri,
        "has no georeferencing (no CRS, geotransform or GCPs); the Raster Dataset type needs"
        " georeferenced rasters: georeference it, or use the UAV/UAS or Aerial type for camera frames",
    )


def recognise(uri: str, gdal_path: str) -> str | None:
    """``a plain georeferenced raster (GTiff, 3 bands of uint8)`` when GDAL reads the input
    as one with a CRS and a geotransform or GCPs; else None (the wrong-pick message)."""
    try:
        with rasterio.open(gdal_path) as ds:
            georeferenced = ds.crs is not None and ds.transform != Affine.identity()
            if ds.count == 0 or not (georeferenced or ds.gcps[0]):
                return None
            return (
                f"a plain georeferenced raster ({ds.driver}, {ds.count} band"
                f"{'s' if ds.count > 1 else ''} of {ds.dtypes[0]})"
            )
    except Exception:  # not a raster GDAL reads
        return None
