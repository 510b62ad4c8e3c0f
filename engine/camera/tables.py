"""Exterior and interior orientation tables of the Aerial types.

Frames table (``frames``): a file or inline rows giving each frame's perspective centre and
angles, ``filename, x, y, z, omega, phi, kappa`` (degrees unless ``angleUnits`` says
radians):

* CSV with a header (comma, tab or space delimited; ``ngi_xyz_opk.csv``), or the legacy
  header-less ``name X Y Z omega phi kappa`` text (``camera_pos_ori.txt``);
* JSON: a list of objects with those keys, or an orthority exterior-parameter
  FeatureCollection (``xyz``, ``opk`` in radians, ``world_crs``);
* inline in the request: a list of rows ``[name, x, y, z, omega, phi, kappa]`` or objects.

Its CRS: ``framesSR`` (any spatial reference form of the request), else the table's own
(GeoJSON ``world_crs``, or a ``.prj`` beside the file).

Camera (``camera``): an object, or a YAML/JSON file of one (orthority's interior-parameter
file ``{name: {focal_len, sensor_size, im_size, cx, cy}}`` is read too).
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import yaml
from pyproj import CRS

from engine.errors import RequestError
from engine.spatialref import parse_spatial_reference

P = "rasterType.rasterTypeParameters"
_COLUMNS = ("x", "y", "z", "omega", "phi", "kappa")


@dataclass(frozen=True)
class FramePose:
    name: str
    x: float
    y: float
    z: float
    omega: float  # degrees
    phi: float
    kappa: float


@dataclass(frozen=True)
class Camera:
    """Interior orientation as given: focal length and pixel size in mm, sensor in pixels."""

    name: str
    focal_mm: float
    pixel_mm: tuple[float, float]
    columns: int
    rows: int
    principal_mm: tuple[float, float] = (0.0, 0.0)
    film_fiducials: tuple[tuple[float, float], ...] = ()


def json_value(value: Any) -> Any:
    """A parameter sent as JSON text (form-encoded REST requests) decoded; else as given."""
    if isinstance(value, str) and value.strip()[:1] in ("{", "["):
        try:
            return json.loads(value)
        except ValueError:
            return value
    return value


def _read(uri: str, parameter: str) -> str:
    path = uri[7:] if uri.startswith("file://") else uri
    if not os.path.exists(path):
        raise RequestError(parameter, uri, "names no existing file", "give the path of the table")
    with open(path, encoding="utf-8-sig") as f:
        return f.read()


def _float(value: Any, parameter: str, what: str) -> float:
    try:
        out = float(value)
    except (TypeError, ValueError):
        raise RequestError(
            parameter, value, f"{what} is not a number", "give plain numbers"
        ) from None
    if not math.isfinite(out):
        raise RequestError(parameter, value, f"{what} is not finite", "give plain numbers")
    return out


def _pose(row: Any, parameter: str, radians: bool) -> FramePose:
    if isinstance(row, Mapping):
        low = {str(k).strip().lower(): v for k, v in row.items()}
        name = low.get("filename") or low.get("name") or low.get("image")
        if "xyz" in low and "opk" in low:  # orthority GeoJSON properties
            vals = [*low["xyz"], *low["opk"]]
        else:
            missing = [c for c in _COLUMNS if c not in low]
            if missing or not name:
                raise RequestError(parameter, row, f"lacks {', '.join(missing) or 'filename'}",
                                   "give filename, x, y, z, omega, phi, kappa")  # fmt: skip
            vals = [low[c] for c in _COLUMNS]
    elif isinstance(row, Sequence) and not isinstance(row, str) and len(row) >= 7:
        name, vals = row[0], list(row[1:7])
    else:
        raise RequestError(parameter, row, "is not a frame row",
                           "give [filename, x, y, z, omega, phi, kappa]")  # fmt: skip
    nums = [_float(v, parameter, c) for v, c in zip(vals, _COLUMNS, strict=True)]
    if radians:
        nums[3:] = [math.degrees(a) for a in nums[3:]]
    return FramePose(str(name).strip(), *nums)


def _text_rows(text: str) -> list[Any]:
    lines = [ln for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    if not lines:
        return []
    first = lines[0].lower()
    if any(h in first for h in ("filename", "omega")):
        delim = "," if "," in first else ("\t" if "\t" in first else " ")
        if delim == " ":
            return [dict(zip(lines[0].split(), ln.split(), strict=False)) for ln in lines[1:]]
        return list(csv.DictReader(io.StringIO("\n".join(lines)), delimiter=delim))
    return [ln.replace(",", " ").split() for ln in lines]


def frame_table(params: Mapping[str, Any]) -> tuple[dict[str, FramePose], CRS]:
    """The frames table (keyed by lower-case file stem) and its CRS.

    Raises
    ------
    RequestError
        No table, an unreadable or malformed one, or no CRS for it.
    """
    low = {str(k).lower(): v for k, v in params.items()}
    parameter = f"{P}.frames"
    value = json_value(low.get("frames"))
    radians = str(low.get("angleunits") or "degrees").strip().lower().startswith("rad")
    crs_value = low.get("framessr") or low.get("framesr")
    own_crs: Any = None
    if value in (None, "", []):
        raise RequestError(parameter, value, "is required for aerial frames",
                           "give the exterior orientation table: a CSV/JSON uri or rows"
                           " [filename, x, y, z, omega, phi, kappa]")  # fmt: skip
    rows: list[Any]
    if isinstance(value, str):
        text = _read(value, parameter)
        path = value[7:] if value.startswith("file://") else value
        prj = os.path.splitext(path)[0] + ".prj"
        if os.path.exists(prj):
            with open(prj, encoding="utf-8") as f:
                own_crs = f.read().strip().replace("+no_defs=True", "+no_defs")
        if text.lstrip().startswith(("{", "[")):
            doc = json.loads(text)
            if isinstance(doc, Mapping) and doc.get("type") == "FeatureCollection":
                rows = [f.get("properties", {}) for f in doc.get("features", [])]
                own_crs = doc.get("world_crs") or own_crs
                radians = True  # orthority stores opk in radians
            else:
                rows = doc.get("frames", []) if isinstance(doc, Mapping) else doc
        else:
            rows = _text_rows(text)
    elif isinstance(value, Sequence):
        rows = list(value)
    else:
        raise RequestError(parameter, value, "is neither a uri nor a list of rows",
                           "give a CSV/JSON uri or rows [filename, x, y, z, omega, phi, kappa]")  # fmt: skip
    poses = [_pose(r, f"{parameter}[{i}]", radians) for i, r in enumerate(rows)]
    if not poses:
        raise RequestError(parameter, value, "holds no frames", "give one row per frame")
    if crs_value not in (None, ""):
        crs = parse_spatial_reference(crs_value, f"{P}.framesSR")
    elif own_crs:
        crs = parse_spatial_reference(own_crs, f"{P}.frames (its .prj / world_crs)")
    else:
        raise RequestError(f"{P}.framesSR", None, "the frames' CRS is unknown",
                           'give framesSR (e.g. {"wkid": 32735}) or a .prj beside the table')  # fmt: skip
    if not crs.is_projected:
        raise RequestError(f"{P}.framesSR", crs.name, "is not a projected CRS",
                           "give the perspective centres in a projected CRS (metres)")  # fmt: skip
    return {os.path.splitext(p.name.lower())[0]: p for p in poses}, crs


def _pair(value: Any, parameter: str, what: str) -> tuple[float, float]:
    if not isinstance(value, Sequence) or isinstance(value, str) or len(value) != 2:
        raise RequestError(parameter, value, f"{what} is not a pair", "give [x, y]")
    return _float(value[0], parameter, what), _float(value[1], parameter, what)


def camera_from_params(params: Mapping[str, Any]) -> Camera:
    """The camera of an Aerial request (``camera``: object or YAML/JSON uri).

    Keys (case-insensitive): focalLength (mm); pixelSize (µm) or sensorSize [w, h] (mm);
    columns and rows (or imageSize [w, h]); principalPoint [x0, y0] or x0, y0 (mm);
    fiducials: film coordinates [[x, y], ...] (mm) for ScannedAerial.
    """
    low = {str(k).lower(): v for k, v in params.items()}
    parameter = f"{P}.camera"
    value = json_value(low.get("camera"))
    if isinstance(value, str):
        text = _read(value, parameter)
        value = yaml.safe_load(text)
    if not isinstance(value, Mapping):
        raise RequestError(parameter, value, "is not a camera description",
                           'give {"focalLength": 120, "pixelSize": 12, "columns": ..., "rows": ...}')  # fmt: skip
    name = str(value.get("name", "camera"))
    if len(value) == 1 and isinstance(next(iter(value.values())), Mapping):  # orthority file
        name, value = next(iter(value.items()))
    c = {str(k).lower(): v for k, v in value.items()}
    focal = _float(c.get("focallength", c.get("focal_len")), parameter, "focalLength")
    if "imagesize" in c or "im_size" in c:
        cols, rows = _pair(c.get("imagesize", c.get("im_size")), parameter, "imageSize")
    else:
        cols = _float(c.get("columns"), parameter, "columns")
        rows = _float(c.get("rows"), parameter, "rows")
    if "pixelsize" in c:
        p = _float(c["pixelsize"], parameter, "pixelSize")
        if not 0.5 <= p <= 100:
            raise RequestError(f"{parameter}.pixelSize", p, "is implausible in micrometres",
                               "give the pixel size in µm (e.g. 12), or sensorSize in mm")  # fmt: skip
        pixel = (p / 1000, p / 1000)
    elif "sensorsize" in c or "sensor_size" in c:
        sw, sh = _pair(c.get("sensorsize", c.get("sensor_size")), parameter, "sensorSize")
        pixel = (sw / cols, sh / rows)
    else:
        raise RequestError(parameter, value, "gives neither pixelSize nor sensorSize",
                           "give pixelSize (µm) or sensorSize [w, h] (mm)")  # fmt: skip
    if not 1 <= focal <= 1000:
        raise RequestError(f"{parameter}.focalLength", focal, "is implausible in millimetres",
                           "give the focal length in mm (e.g. 120)")  # fmt: skip
    if "principalpoint" in c:
        principal = _pair(c["principalpoint"], parameter, "principalPoint")
    elif "cx" in c or "cy" in c:  # orthority: normalised by the larger image side, y down
        side = max(cols * pixel[0], rows * pixel[1])
        principal = (float(c.get("cx") or 0) * side, -float(c.get("cy") or 0) * side)
    else:
        principal = (float(c.get("x0") or 0), float(c.get("y0") or 0))
    fiducials = tuple(
        _pair(f, f"{parameter}.fiducials", "a fiducial") for f in (c.get("fiducials") or [])
    )
    return Camera(name, focal, pixel, int(cols), int(rows), principal, fiducials)
