"""Synthetic frames for the camera tests: a known ground pattern seen through a frame model.

A frame is rendered by casting the ray of every frame pixel centre onto the terrain and
reading the ground pattern there, so an ortho of it must give the pattern back.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import rasterio

from engine.camera.frame_model import FrameModel
from engine.camera.placement import project_to_terrain


def checker(x: np.ndarray, y: np.ndarray, block: float, band: int = 0) -> np.ndarray:
    """A ground checkerboard of ``block`` metres; each band is shifted so bands differ."""
    i = np.floor((x + band * block / 3) / block).astype(int)
    j = np.floor(y / block).astype(int)
    return np.where((i + j) % 2 == 0, 40 + 60 * band, 200 - 30 * band).astype("uint8")


def render_frame(
    model: FrameModel, path: Path, block: float, bands: int = 3, nodata: float | None = None
) -> np.ndarray:
    """Write the frame ``model`` sees of the checkerboard as a plain (non-georeferenced)
    TIFF in stored orientation, and return its pixels (bands, rows, cols)."""
    h, w = model.image_shape
    rows, cols = np.meshgrid(np.arange(h) + 0.5, np.arange(w) + 0.5, indexing="ij")
    x, y, _ = project_to_terrain(model, cols.ravel(), rows.ravel())
    data = np.stack([checker(x, y, block, b).reshape(h, w) for b in range(bands)])
    profile = {"driver": "GTiff", "width": w, "height": h, "count": bands, "dtype": "uint8"}
    if nodata is not None:
        profile["nodata"] = nodata
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data)
    return data
