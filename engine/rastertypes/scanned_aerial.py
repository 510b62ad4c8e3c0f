"""The ``ScannedAerial`` raster type: scanned film frames, as Aerial plus the scan geometry.

A film frame is scanned into pixels by a scanner that shifts, rotates and scales it a
little differently each time; fiducial marks printed on the film fix that map. Beyond
the Aerial parameters:

* ``camera.fiducials``: the calibrated film coordinates of the marks, [[x, y], ...] (mm);
* ``fiducialPixels``: where the marks are in each scan, {frameName: [[col, row], ...]}, or
  one list for every frame; the film → pixel affine is a least-squares fit (residuals in
  the catalog: ``fiducial_rmse_px``, ``fiducial_max_px``);
* ``scanningResolution``: the scan's pixel size (µm). Without fiducials the scan is taken as
  centred on the principal point and axis-aligned at this resolution; with them, a fitted
  scale more than 2 % off it fails the frame (mis-measured marks or a wrong resolution).
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from engine.camera.frame_model import Interior, fit_film_to_pixel
from engine.camera.tables import Camera, P, json_value
from engine.errors import ImageError, RequestError
from engine.rastertypes.aerial import probe_frames
from engine.rastertypes.base import ImageSource, probe_one

NAME = "ScannedAerial"
SCALE_TOLERANCE = 0.02


def _scan_resolution(params: Mapping[str, Any]) -> float:
    low = {str(k).lower(): v for k, v in params.items()}
    value: Any = low.get("scanningresolution")
    try:
        res = float(value)
    except (TypeError, ValueError):
        raise RequestError(f"{P}.scanningResolution", value, "is required and must be a number",
                           "give the scan's pixel size in µm, e.g. 21") from None  # fmt: skip
    if not 1 <= res <= 200:
        raise RequestError(f"{P}.scanningResolution", value, "is implausible in micrometres",
                           "give the scan's pixel size in µm, e.g. 21 (not dpi or mm)")  # fmt: skip
    return res


def _fiducial_pixels(params: Mapping[str, Any]) -> dict[str, Any] | list[Any] | None:
    low = {str(k).lower(): v for k, v in params.items()}
    value = json_value(low.get("fiducialpixels"))
    if value in (None, "", [], {}):
        return None
    if isinstance(value, Mapping):
        return {os.path.splitext(str(k).lower())[0]: v for k, v in value.items()}
    if isinstance(value, Sequence) and not isinstance(value, str):
        return list(value)
    raise RequestError(f"{P}.fiducialPixels", value, "is not a list or an object",
                       "give {frameName: [[col, row], ...]} or one [[col, row], ...] list")  # fmt: skip


def probe_batch(refs: list[Any], params: Mapping[str, Any]) -> list[ImageSource | Exception]:
    """One ImageSource or ImageError per scanned frame."""
    res_um = _scan_resolution(params)
    marks = _fiducial_pixels(params)

    def interior_for(
        camera: Camera, ref: Any, height: int, width: int
    ) -> tuple[Interior, dict[str, Any]]:
        pixel_mm = res_um / 1000.0
        if marks is None:
            io = Interior(
                camera.focal_mm, (pixel_mm, pixel_mm), (height, width), camera.principal_mm
            )
            return io, {"scanning_resolution_um": res_um}
        stem = os.path.splitext(os.path.basename(ref.uri))[0].lower()
        measured = marks.get(stem) if isinstance(marks, dict) else marks
        if measured is None:
            raise ImageError(
                ref.uri, "fiducialPixels has no entry for it; add its marks' pixel positions"
            )
        film = np.asarray(camera.film_fiducials, dtype="float64")
        try:
            pix = np.asarray(measured, dtype="float64")
        except (TypeError, ValueError):
            raise ImageError(
                ref.uri, "its fiducialPixels are not [[col, row], ...] numbers"
            ) from None
        if film.shape[0] < 3 or pix.shape != film.shape:
            raise ImageError(ref.uri, f"{pix.shape[0] if pix.ndim else 0} fiducial pixel positions for"
                             f" {film.shape[0]} film marks; give one [col, row] per mark, at least 3")  # fmt: skip
        affine, residuals = fit_film_to_pixel(film, pix)
        a, b, _, d, e, _ = affine
        scale = math.sqrt(abs(a * e - b * d))  # pixels per mm
        if abs(scale * pixel_mm - 1) > SCALE_TOLERANCE:
            raise ImageError(ref.uri, f"its fiducials give {1000 / scale:.2f} µm pixels, not the"
                             f" scanningResolution {res_um:g} µm; check both")  # fmt: skip
        io = Interior(camera.focal_mm, (pixel_mm, pixel_mm), (height, width), camera.principal_mm,
                      film_to_pixel=affine)  # fmt: skip
        return io, {
            "scanning_resolution_um": res_um,
            "fiducial_rmse_px": round(float(np.sqrt((residuals**2).mean())), 4),
            "fiducial_max_px": round(float(residuals.max()), 4),
        }

    return probe_frames(refs, params, NAME, interior_for=interior_for)


def probe(
    uri: str, gdal_path: str, name: str, params: Mapping[str, Any] | None = None
) -> ImageSource:
    """Place one scanned frame; see :func:`probe_batch`."""
    return probe_one(probe_batch, uri, gdal_path, name, params)
