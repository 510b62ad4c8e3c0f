"""The ``Aerial`` raster type: metric frames with known exterior orientation, orthorectified.

Parameters (``rasterTypeParameters``, case-insensitive):

* ``frames``: the exterior orientation table (uri of a CSV/JSON file, or inline rows
  ``[filename, x, y, z, omega, phi, kappa]``), see engine.camera.tables;
* ``framesSR``: its CRS (else the ``.prj`` beside it, or a GeoJSON ``world_crs``);
* ``angleUnits``: ``degrees`` (default) or ``radians``;
* ``camera``: focal length, pixel or sensor size, principal point (object or YAML/JSON uri);
* ``dem`` or ``constantZ``: the terrain (one is required: aerial frames fly kilometres up);

A frame is matched to its table row by file name without extension. Georeferencing the
frame files may carry is ignored: the camera model alone places them.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import numpy as np
import rasterio

from engine.camera.frame_model import FrameModel, Interior, rotation_from_opk
from engine.camera.frames import frame_bands, frame_source
from engine.camera.placement import ground_height
from engine.camera.tables import Camera, FramePose, P, camera_from_params, frame_table
from engine.dem import Terrain, terrain_from_params
from engine.errors import ImageError, RequestError
from engine.rastertypes.base import ImageSource, probe_one

NAME = "Aerial"


def terrain(params: Mapping[str, Any]) -> Terrain:
    """The request's terrain; aerial frames need one (a RequestError says so)."""
    found = terrain_from_params(params, default_height=None)
    if found is None:
        raise RequestError(f"{P}.dem", None, "aerial frames need the ground height",
                           'give dem ({"uri": ...}) or constantZ (metres)')  # fmt: skip
    return found


def probe(
    uri: str, gdal_path: str, name: str, params: Mapping[str, Any] | None = None
) -> ImageSource:
    """Place one frame; see :func:`probe_batch`."""
    return probe_one(probe_batch, uri, gdal_path, name, params)


def probe_batch(refs: list[Any], params: Mapping[str, Any]) -> list[ImageSource | Exception]:
    """One ImageSource or ImageError per frame (the tables are read once)."""
    return probe_frames(refs, params, NAME, interior_for=plain_interior)


def plain_interior(
    camera: Camera, ref: Any, height: int, width: int
) -> tuple[Interior, dict[str, Any]]:
    """A digital frame's interior orientation: the camera's sensor, scaled to the frame."""
    if abs(camera.columns / camera.rows - width / height) > 0.01 * width / height:
        raise ImageError(ref.uri, f"its size {width}x{height} does not match the camera's"
                         f" {camera.columns}x{camera.rows}; give the camera that took it")  # fmt: skip
    io = Interior(
        camera.focal_mm, camera.pixel_mm, (camera.rows, camera.columns), camera.principal_mm
    )
    return io, {}


def probe_frames(
    refs: list[Any], params: Mapping[str, Any], type_name: str, *, interior_for: Any
) -> list[ImageSource | Exception]:
    """Shared by Aerial and ScannedAerial: match frames to poses, build models, place."""
    poses, crs = frame_table(params)
    camera = camera_from_params(params)
    ground = terrain(params)
    wkt = crs.to_wkt()
    out: list[ImageSource | Exception] = []
    for ref in refs:
        try:
            out.append(_one(ref, poses, camera, ground, wkt, type_name, interior_for))
        except ImageError as exc:
            out.append(exc)
    return out


def _one(
    ref: Any,
    poses: dict[str, FramePose],
    camera: Camera,
    ground: Terrain,
    wkt: str,
    type_name: str,
    interior_for: Any,
) -> ImageSource:
    stem = os.path.splitext(os.path.basename(ref.uri.rstrip("/")))[0].lower()
    pose = poses.get(stem)
    if pose is None:
        raise ImageError(ref.uri, f"no row of the frames table names it ({stem}); add its"
                         " exterior orientation to the table")  # fmt: skip
    count, dtype, nodata = frame_bands(ref.uri, ref.gdal_path)
    with rasterio.open(ref.gdal_path) as ds:
        h, w = ds.height, ds.width
    interior, extra = interior_for(camera, ref, h, w)
    nadir = float(ground_height(ground, np.array([pose.x]), np.array([pose.y]), wkt)[0])
    if not np.isfinite(nadir):
        raise ImageError(ref.uri, "the DEM has no height under the frame; give a DEM covering it")
    if pose.z <= nadir:
        raise ImageError(ref.uri, f"its perspective centre (Z {pose.z:g} m) is not above the"
                         f" terrain ({nadir:.1f} m); check z and the DEM's heights")  # fmt: skip
    model = FrameModel(
        interior=interior,
        centre=(pose.x, pose.y, pose.z),
        rotation=tuple(rotation_from_opk(pose.omega, pose.phi, pose.kappa).ravel()),
        crs_wkt=wkt,
        image_shape=(h, w),
        terrain=ground,
    )
    extra = {
        "x": pose.x, "y": pose.y, "z": pose.z, "omega": pose.omega, "phi": pose.phi,
        "kappa": pose.kappa, "flight_height": round(pose.z - nadir, 3), "camera": camera.name,
        "focal_length_mm": camera.focal_mm, **extra,
    }  # fmt: skip
    return frame_source(
        raster_type=type_name, uri=ref.uri, gdal_path=ref.gdal_path, name=ref.name, model=model,
        count=count, dtype=dtype, nodata=nodata, sensor=camera.name, time=None, extra=extra,
    )  # fmt: skip
