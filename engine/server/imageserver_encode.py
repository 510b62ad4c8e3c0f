"""Encoding an exported image: GeoTIFF and PNG keep the data, the display formats
(jpg, jpgpng, png8/24/32) carry 8-bit pictures.

Display formats follow ArcGIS's default rendering: the first three bands as RGB (one band
as grey), pixels of other types stretched linearly from the service's band statistics
(min..max) to 0..255, and no-data made transparent where the format has an alpha channel
(png32, and jpgpng, which sends PNG when the picture has no-data pixels and JPEG otherwise).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from rasterio.io import MemoryFile

from engine.server.imageserver_export import _Export

_MEDIA = {"PNG": "image/png", "JPEG": "image/jpeg", "GTiff": "image/tiff"}


def encode(img: _Export, quality: int = 75) -> tuple[bytes, str]:
    """The image's bytes and media type, per ``img.fmt``."""
    if img.fmt == "tiff":
        options = {"compress": img.compression} if img.compression else {}
        return _write(img.data, img, "GTiff", nodata=img.nodata, **options)
    if img.fmt == "png":
        return _write(img.data, img, "PNG", nodata=img.nodata)
    rgb = _display(img)
    alpha = np.where(img.valid, 255, 0).astype("uint8")[None]
    if img.fmt == "png32" or (img.fmt == "jpgpng" and not img.valid.all()):
        return _write(np.concatenate([rgb, alpha]), img, "PNG")
    if img.fmt in ("png8", "png24"):
        return _write(rgb, img, "PNG")
    return _write(rgb, img, "JPEG", quality=str(quality))


def _display(img: _Export) -> np.ndarray:
    """Up to three bands as an 8-bit picture (one band as grey)."""
    data = (
        img.data if img.data.shape[0] in (1, 3) else img.data[: 3 if img.data.shape[0] > 3 else 1]
    )
    if data.dtype == np.uint8:
        out = data.copy()
    else:
        out = np.empty(data.shape, dtype="uint8")
        for k, band in enumerate(data):
            lo, hi = img.stretch[k]
            scale = 255.0 / (hi - lo) if hi > lo else 0.0
            out[k] = np.clip(np.rint((band.astype("float64") - lo) * scale), 0, 255)
    out[:, ~img.valid] = 0
    return out


def _write(data: np.ndarray, img: _Export, driver: str, **options: Any) -> tuple[bytes, str]:
    bands, h, w = data.shape
    profile: dict[str, Any] = {
        "driver": driver,
        "width": w,
        "height": h,
        "count": bands,
        "dtype": str(data.dtype),
        "transform": img.grid.transform,
        "crs": img.grid.crs_wkt,
        **options,
    }
    with MemoryFile() as mem:
        with mem.open(**profile) as dst:
            dst.write(data)
        return mem.read(), _MEDIA[driver]
