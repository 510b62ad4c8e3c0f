"""Camera tags of a frame: EXIF GPS and camera tags, and drone XMP (DJI, senseFly, MicaSense).

GDAL already parses EXIF in JPEG and TIFF files (``EXIF_*`` items in the default or the
``EXIF`` metadata domain) and hands over the XMP packet (domain ``xml:XMP``), so no extra
library is needed: EXIF values are GDAL's strings (rationals as ``(40) (33) (49.6)``), and
XMP properties are read as text, in both the attribute form ``drone-dji:GimbalYawDegree="+32.5"``
and the element form ``<Camera:Yaw>274.9</Camera:Yaw>``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime

import rasterio


@dataclass
class FrameTags:
    """What a frame's own metadata says about its camera and pose (None: not recorded)."""

    width: int
    height: int
    make: str = ""
    model: str = ""
    focal_mm: float | None = None
    focal_35mm: float | None = None
    # the image size the camera recorded (a downscaled copy keeps the original's)
    exif_width: int | None = None
    exif_height: int | None = None
    focal_plane_res: tuple[float, float] | None = None  # pixels per unit
    focal_plane_unit_mm: float | None = None
    latitude: float | None = None
    longitude: float | None = None
    altitude: float | None = None
    altitude_below_sea: bool = False  # GPSAltitudeRef = 1
    orientation: int = 1
    time: datetime | None = None
    xmp: dict[str, float] = field(default_factory=dict)  # numeric drone XMP properties

    def first(self, *names: str) -> float | None:
        """The first of the XMP properties ``names`` (local names, case-insensitive)."""
        for n in names:
            v = self.xmp.get(n.lower())
            if v is not None:
                return v
        return None


_NUMBER = re.compile(r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?")
_ATTR = re.compile(r"\b([A-Za-z][\w-]*):(\w+)\s*=\s*\"([^\"]*)\"")
_ELEM = re.compile(r"<([A-Za-z][\w-]*):(\w+)>\s*([^<]*?)\s*</\1:\2>")
# XMP namespaces whose numeric properties describe the camera pose or altitude
_POSE_NAMESPACES = {"drone-dji", "dji", "camera", "crs", "flir"}
_UNIT_MM = {"2": 25.4, "3": 10.0, "4": 1.0, "5": 0.001}  # EXIF FocalPlaneResolutionUnit


def numbers(text: str | None) -> list[float]:
    """The numbers in a GDAL EXIF value (``(40) (33) (49.6119)`` → [40, 33, 49.6119])."""
    return [float(m) for m in _NUMBER.findall(text or "")]


def _one(text: str | None) -> float | None:
    vals = numbers(text)
    return vals[0] if vals else None


def dms(text: str | None, ref: str | None, negative: str) -> float | None:
    """Decimal degrees of an EXIF degrees/minutes/seconds value and its N/S/E/W ref."""
    vals = numbers(text)
    if not vals:
        return None
    deg = (
        vals[0] + (vals[1] / 60 if len(vals) > 1 else 0) + (vals[2] / 3600 if len(vals) > 2 else 0)
    )
    return -deg if (ref or "").strip().upper().startswith(negative) else deg


def parse_xmp(packet: str) -> dict[str, float]:
    """Numeric pose/altitude properties of an XMP packet, keyed by lower-case local name
    (the first occurrence wins: the drone's own namespace before repeats)."""
    out: dict[str, float] = {}
    for pattern in (_ATTR, _ELEM):
        for ns, name, value in pattern.findall(packet):
            if ns.lower() not in _POSE_NAMESPACES:
                continue
            vals = value.split(",")  # "x,y" pairs (MicaSense PrincipalPoint): first value
            try:
                out.setdefault(name.lower(), float(vals[0].strip()))
            except ValueError:
                continue
    return out


def read_tags(gdal_path: str) -> FrameTags:
    """The camera tags of one frame (JPEG or TIFF), from the metadata GDAL reads."""
    with rasterio.open(gdal_path) as ds:
        tags = dict(ds.tags())
        if "EXIF" in (ds.tag_namespaces() or []):
            tags.update(ds.tags(ns="EXIF"))
        xmp = (
            "\n".join(ds.tags(ns="xml:XMP").values())
            if "xml:XMP" in (ds.tag_namespaces() or [])
            else ""
        )
        width, height = ds.width, ds.height
    t = FrameTags(width=width, height=height)
    t.make = (tags.get("EXIF_Make") or "").strip()
    t.model = (tags.get("EXIF_Model") or "").strip()
    t.focal_mm = _one(tags.get("EXIF_FocalLength"))
    t.focal_35mm = _one(tags.get("EXIF_FocalLengthIn35mmFilm"))
    w, h = _one(tags.get("EXIF_PixelXDimension")), _one(tags.get("EXIF_PixelYDimension"))
    t.exif_width, t.exif_height = (int(w), int(h)) if w and h else (None, None)
    fx, fy = (
        _one(tags.get("EXIF_FocalPlaneXResolution")),
        _one(tags.get("EXIF_FocalPlaneYResolution")),
    )
    unit = _UNIT_MM.get(str(tags.get("EXIF_FocalPlaneResolutionUnit", "2")).strip())
    if fx and fy and unit:
        t.focal_plane_res, t.focal_plane_unit_mm = (fx, fy), unit
    t.latitude = dms(tags.get("EXIF_GPSLatitude"), tags.get("EXIF_GPSLatitudeRef"), "S")
    t.longitude = dms(tags.get("EXIF_GPSLongitude"), tags.get("EXIF_GPSLongitudeRef"), "W")
    t.altitude = _one(tags.get("EXIF_GPSAltitude"))
    ref = (tags.get("EXIF_GPSAltitudeRef") or "").strip().lower()
    t.altitude_below_sea = ref in ("1", "0x01", "01")
    if t.altitude is not None and t.altitude_below_sea:
        t.altitude = -t.altitude
    o = _one(tags.get("EXIF_Orientation"))
    t.orientation = int(o) if o and 1 <= o <= 8 else 1
    stamp = (tags.get("EXIF_DateTimeOriginal") or tags.get("EXIF_DateTime") or "").strip()
    try:
        t.time = datetime.strptime(stamp[:19], "%Y:%m:%d %H:%M:%S") if stamp else None
    except ValueError:
        t.time = None
    t.xmp = parse_xmp(xmp)
    # DJI's XMP position has more digits than EXIF's rationals (and DJI spells it two ways)
    lat = t.first("GpsLatitude")
    lon = t.first("GpsLongitude", "GpsLongtitude")
    if lat is not None and lon is not None and t.latitude is not None:
        t.latitude, t.longitude = lat, lon
    return t
