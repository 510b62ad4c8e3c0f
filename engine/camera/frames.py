"""Shared steps of the camera raster types: frame bands, placement, and the ImageSource.

A camera type decides each frame's model (interior, pose, terrain); this module turns
that model into what the planner and the chunk tasks need: the frame's bands as one
``georef="camera"`` part, the exact ground footprint and a planning grid at its GSD.
"""

from __future__ import annotations

import os
from datetime import datetime
from typing import Any

import rasterio
from rasterio.errors import RasterioIOError

from engine.camera.frame_model import FrameModel
from engine.camera.placement import PlacementError, centre_gsd, ground_footprint, planning_grid
from engine.errors import ImageError
from engine.rastertypes.base import ImageSource, SourcePart, image_id_for
from engine.rastertypes.raster_dataset import SUPPORTED_DTYPES, band_names


def frame_bands(uri: str, gdal_path: str) -> tuple[int, str, float | None]:
    """(band count, dtype, nodata) of a frame, or an ImageError."""
    if not gdal_path.startswith("/vsi") and not os.path.exists(gdal_path):
        raise ImageError(uri, "file not found; check the path")
    try:
        with rasterio.open(gdal_path) as ds:
            dtypes = set(ds.dtypes)
            if len(dtypes) != 1 or ds.dtypes[0] not in SUPPORTED_DTYPES:
                raise ImageError(
                    uri, f"has band types {sorted(dtypes)}; give one supported type per frame"
                )
            nodata = None if ds.nodata is None else float(ds.nodata)
            return ds.count, ds.dtypes[0], nodata
    except RasterioIOError as exc:
        raise ImageError(uri, f"GDAL cannot read it as an image ({exc})") from None


def frame_source(
    *,
    raster_type: str,
    uri: str,
    gdal_path: str,
    name: str,
    model: FrameModel,
    count: int,
    dtype: str,
    nodata: float | None,
    sensor: str,
    time: datetime | None,
    extra: dict[str, Any],
) -> ImageSource:
    """The ImageSource of a placed frame; an ImageError when it cannot be placed."""
    try:
        footprint = ground_footprint(model)
        gsd = centre_gsd(model)
    except PlacementError as exc:
        raise ImageError(uri, str(exc)) from None
    if footprint.is_empty or not gsd > 0:
        raise ImageError(uri, "its projection onto the terrain is empty")
    part = SourcePart(
        path=gdal_path,
        band_indexes=tuple(range(1, count + 1)),
        band_names=band_names(count),
        grid=planning_grid(footprint, gsd, model.crs_wkt),
        dtype=dtype,
        nodata=nodata,
        georef="camera",
        model=model,
    )
    return ImageSource(
        image_id=image_id_for(raster_type, [uri], name),
        name=name,
        source_uris=[uri],
        raster_type=raster_type,
        parts=[part],
        product_name=raster_type,
        sensor=sensor,
        acquisition_time=time,
        extra={**extra, "gsd": round(gsd, 4)},
        footprint=footprint,
    )
