"""A frame's interior orientation: from ``cameraProperties``, else from its own tags.

``cameraProperties`` (SPEC §1) gives FocalLength (mm), PixelSize (µm), x0/y0 (principal
point offset, mm), columns and rows of the sensor; values in the wrong unit are refused
with the fix. Without it, the pixel size is inferred from the frame's tags, in this order:

1. a short table of common survey cameras (EXIF model → sensor pixel pitch at native width;
   a frame wider than that native width is from another sensor of the camera);
2. FocalLengthIn35mmFilm: sensor diagonal = 43.27 mm × focal / focal35;
3. the XMP principal point of MicaSense cameras (mm from the sensor corner: half the sensor);
4. EXIF FocalPlaneX/YResolution at the recorded image size (PixelXDimension).

The first three stay right for downscaled copies of a frame (they give the sensor's size);
the fourth trusts PixelXDimension, which copies do not always update.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from engine.camera.exif import FrameTags
from engine.camera.frame_model import Interior
from engine.errors import RequestError

PARAM = "rasterType.rasterTypeParameters.cameraProperties"

# (make substring, model substring) → (native image width px, pixel pitch µm)
_KNOWN = {
    ("canon", "powershot s110"): (4000, 1.86),
    ("dji", "fc6310"): (5472, 2.41),
    ("dji", "fc6510"): (5472, 2.41),
    ("dji", "flir"): (640, 17.0),  # Zenmuse XT2 thermal core
    ("dji", "xt s"): (640, 17.0),
    ("dji", "zh20t"): (640, 12.0),  # H20T thermal frames (R-JPEG)
    ("dji", "zh20n"): (640, 12.0),  # H20N infrared frames
    ("micasense", "rededge"): (1280, 3.75),
}
_DIAGONAL_35MM = math.hypot(36.0, 24.0)


def _number(props: Mapping[str, Any], key: str) -> float | None:
    v = props.get(key)
    if v in (None, ""):
        return None
    try:
        out = float(v)
    except (TypeError, ValueError):
        raise RequestError(f"{PARAM}.{key}", v, "is not a number", "give a plain number") from None
    if not math.isfinite(out):
        raise RequestError(f"{PARAM}.{key}", v, "is not finite", "give a plain number")
    return out


def camera_properties(value: Any) -> dict[str, Any] | None:
    """Validated ``cameraProperties`` with lower-case keys (None when not given).

    Raises
    ------
    RequestError
        A non-object, a non-number, or a value in an implausible unit (PixelSize in mm
        instead of µm, FocalLength in metres or µm, ...).
    """
    if value in (None, "", {}):
        return None
    if not isinstance(value, Mapping):
        raise RequestError(
            PARAM, value, "is not an object", 'give {"FocalLength": 20, "PixelSize": 10, ...}'
        )
    props = {str(k).lower(): v for k, v in value.items()}
    out: dict[str, Any] = {"maker": str(props.get("maker") or props.get("make") or ""),
                           "model": str(props.get("model") or "")}  # fmt: skip
    f = _number(props, "focallength")
    if f is not None and not 1.0 <= f <= 1000.0:
        unit = "metres" if f < 1.0 else "µm"
        raise RequestError(
            f"{PARAM}.FocalLength", f, f"is implausible in millimetres (it looks like {unit})",
            "give the focal length in millimetres, e.g. 20 for a 20 mm lens",
        )  # fmt: skip
    p = _number(props, "pixelsize")
    if p is not None and not 0.5 <= p <= 100.0:
        hint = "millimetres: 0.01 mm is 10 µm" if p < 0.5 else "nanometres"
        raise RequestError(
            f"{PARAM}.PixelSize", p, f"is implausible in micrometres (it looks like {hint})",
            "give the sensor pixel size in micrometres (µm), e.g. 6.4",
        )  # fmt: skip
    out.update(focal=f, pixel=p)
    for key in ("x0", "y0"):
        v = _number(props, key) or 0.0
        if abs(v) > 100.0:
            raise RequestError(f"{PARAM}.{key}", v, "is implausible in millimetres",
                               "give the principal point offset in millimetres")  # fmt: skip
        out[key] = v
    for key in ("columns", "rows"):
        n = _number(props, key)
        if n is not None and (n < 1 or n != int(n)):
            raise RequestError(f"{PARAM}.{key}", n, "is not a positive whole number of pixels",
                               "give the sensor size in pixels")  # fmt: skip
        out[key] = None if n is None else int(n)
    return out


def interior_for(tags: FrameTags, props: Mapping[str, Any] | None) -> tuple[Interior, str]:
    """The frame's interior orientation and a description of where it came from.

    Raises
    ------
    ValueError
        With the reason, when the focal length or the pixel size cannot be found.
    """
    props = props or {}
    w, h = tags.width, tags.height
    if tags.orientation in (5, 6, 7, 8):  # the model works on the displayed image
        w, h = h, w
    focal = props.get("focal") or tags.focal_mm
    if not focal:
        raise ValueError(
            "no focal length: the frame has no EXIF FocalLength; give cameraProperties.FocalLength (mm)"
        )
    cols, rows = props.get("columns"), props.get("rows")
    if cols and rows:
        if abs(cols / rows - w / h) > 0.01 * (w / h):
            raise ValueError(
                f"its size {w}x{h} does not match cameraProperties columns x rows {cols}x{rows};"
                " give the sensor size of the camera that took it"
            )
    else:
        cols, rows = w, h
    principal = (float(props.get("x0") or 0.0), float(props.get("y0") or 0.0))
    if props.get("pixel"):
        pitch = float(props["pixel"]) / 1000.0
        return Interior(float(focal), (pitch, pitch), (rows, cols), principal), "cameraProperties"
    pitch, source = _pixel_from_tags(tags, w, h)
    return Interior(float(focal), (pitch, pitch), (h, w), principal), source


def _pixel_from_tags(tags: FrameTags, w: int, h: int) -> tuple[float, str]:
    """Pixel pitch in mm at the frame's own size, and how it was found."""
    make, model = tags.make.lower(), tags.model.lower()
    for (mk, md), (native, pitch_um) in _KNOWN.items():
        if mk in make and md in model and w <= native:  # a wider frame is another sensor
            return pitch_um / 1000.0 * native / w, f"known camera {tags.make} {tags.model}"
    if tags.focal_35mm and tags.focal_mm:
        diagonal = _DIAGONAL_35MM * tags.focal_mm / tags.focal_35mm
        return diagonal / math.hypot(w, h), "EXIF FocalLengthIn35mmFilm"
    ppx = tags.first("PrincipalPoint")  # MicaSense: "x,y" mm from the sensor corner
    if ppx:
        return 2.0 * ppx / w, "XMP principal point (MicaSense)"
    if tags.focal_plane_res and tags.focal_plane_unit_mm:
        recorded = tags.exif_width or w
        pitch = tags.focal_plane_unit_mm / tags.focal_plane_res[0]
        return pitch * recorded / w, "EXIF FocalPlaneXResolution"
    raise ValueError(
        "unknown sensor pixel size (no FocalLengthIn35mmFilm or FocalPlaneResolution tag);"
        " give cameraProperties with PixelSize (µm), columns and rows"
    )
