"""The ``UAV/UAS`` raster type: drone frames placed from GPS and camera tags, orthorectified.

Each frame gets a frame-camera model (engine.camera.frame_model) in the UTM zone of the
flight (one CRS for every frame of the request):

* position: its ``gps`` row [imageName, latitude, longitude, altitude], else its EXIF GPS
  (DJI's XMP position when present: more digits);
* camera: ``cameraProperties``, else its EXIF/XMP tags (engine.camera.sensors);
* height: with ``isAltitudeFlightHeight`` the altitude is the height above the terrain;
  else it is an altitude on the terrain's datum (``dem`` or ``constantZ``); with neither, a
  DJI frame's XMP RelativeAltitude (height above the take-off point) is its flight height;
  otherwise the frame fails, saying which parameter to give;
* orientation: DJI gimbal yaw/pitch/roll, else the flight yaw (DJI FlightYawDegree,
  senseFly Camera:Yaw) looking straight down, else the heading of the track through the
  neighbouring frames (in gps-row order, else capture time, else input order), else
  north-up. The source is recorded in the catalog (``heading_source``).

Frames are probed as one batch (the track needs its neighbours). A frame that cannot be
placed fails alone, with the reason.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from pyproj import CRS, Geod, Transformer

from engine.camera.exif import FrameTags, read_tags
from engine.camera.frame_model import FrameModel, rotation_from_ypr
from engine.camera.frames import frame_bands, frame_source
from engine.camera.placement import ground_height
from engine.camera.sensors import camera_properties, interior_for
from engine.camera.tables import json_value
from engine.dem import Terrain, terrain_from_params
from engine.errors import ImageError, RequestError
from engine.rastertypes.base import ImageSource, probe_one

NAME = "UAV/UAS"
_P = "rasterType.rasterTypeParameters"
MAX_TRACK_STEP = 2000.0  # metres between neighbouring frames of one flight line


@dataclass(frozen=True)
class GpsRow:
    index: int
    name: str
    latitude: float
    longitude: float
    altitude: float | None


@dataclass
class Settings:
    """The validated rasterTypeParameters of a UAV/UAS request."""

    gps: list[GpsRow]
    camera: dict[str, Any] | None
    terrain: Terrain | None
    altitude_is_flight_height: bool
    minimum_flight_height: float


def _flag(params: Mapping[str, Any], key: str) -> bool:
    v = params.get(key)
    if v in (None, ""):
        return False
    if isinstance(v, bool):
        return v
    text = str(v).strip().lower()
    if text in ("true", "1", "yes"):
        return True
    if text in ("false", "0", "no"):
        return False
    raise RequestError(f"{_P}.{key}", v, "is not a boolean", "give true or false")


def _gps_rows(value: Any) -> list[GpsRow]:
    if value in (None, "", []):
        return []
    fix = 'give rows [imageName, latitude, longitude, altitude], e.g. [["img1.jpg", "10", "2", "300"]]'
    if not isinstance(value, Sequence) or isinstance(value, str):
        raise RequestError(f"{_P}.gps", value, "is not a list of rows", fix)
    rows = []
    for i, row in enumerate(value):
        if isinstance(row, str) or not isinstance(row, Sequence) or len(row) not in (3, 4):
            raise RequestError(
                f"{_P}.gps[{i}]", row, "is not [imageName, latitude, longitude, altitude]", fix
            )
        try:
            lat, lon = float(row[1]), float(row[2])
            alt = float(row[3]) if len(row) == 4 and row[3] not in (None, "") else None
        except (TypeError, ValueError):
            raise RequestError(
                f"{_P}.gps[{i}]", row, "has a value that is not a number", fix
            ) from None
        if not (-90 <= lat <= 90 and -180 <= lon <= 360):
            raise RequestError(f"{_P}.gps[{i}]", row, "has a latitude or longitude out of range",
                               "give decimal degrees, latitude first")  # fmt: skip
        rows.append(GpsRow(i, str(row[0]), lat, lon, alt))
    return rows


def settings(params: Mapping[str, Any]) -> Settings:
    """Validate the request's UAV/UAS parameters (a RequestError names the fault and fix)."""
    lower = {str(k).lower(): v for k, v in params.items()}
    minimum = lower.get("minimumflightheight")
    try:
        min_height = 0.0 if minimum in (None, "") else float(minimum)
    except (TypeError, ValueError):
        raise RequestError(f"{_P}.MinimumFlightHeight", minimum, "is not a number",
                           "give a height in metres") from None  # fmt: skip
    return Settings(
        gps=_gps_rows(json_value(lower.get("gps"))),
        camera=camera_properties(json_value(lower.get("cameraproperties"))),
        terrain=terrain_from_params(params, default_height=None),
        altitude_is_flight_height=_flag(lower, "isaltitudeflightheight"),
        minimum_flight_height=min_height,
    )


def _keys(uri: str) -> tuple[str, str]:
    base = os.path.basename(uri.rstrip("/")).lower()
    return base, os.path.splitext(base)[0]


def utm_crs(lon: float, lat: float) -> CRS:
    """The WGS 84 UTM zone CRS of a position."""
    zone = int((lon + 180) // 6) % 60 + 1
    return CRS.from_epsg((32600 if lat >= 0 else 32700) + zone)


def _north_azimuth(tr: Transformer, lon: float, lat: float) -> float:
    """Grid azimuth (degrees clockwise from grid north) of true north at a position."""
    x0, y0 = tr.transform(lon, lat)
    x1, y1 = tr.transform(lon, lat + 1e-4)
    return math.degrees(math.atan2(x1 - x0, y1 - y0))


def probe(
    uri: str, gdal_path: str, name: str, params: Mapping[str, Any] | None = None
) -> ImageSource:
    """Place one frame alone (no track heading); see :func:`probe_batch`."""
    return probe_one(probe_batch, uri, gdal_path, name, params)


def probe_batch(refs: list[Any], params: Mapping[str, Any]) -> list[ImageSource | Exception]:
    """Place every frame of the request: one ImageSource or one ImageError per ref.

    Raises
    ------
    RequestError
        Invalid parameters, or gps rows none of which names an input frame.
    """
    cfg = settings(params)
    rows: dict[str, GpsRow] = {}
    for g in cfg.gps:
        rows.setdefault(g.name.lower(), g)
        rows.setdefault(os.path.splitext(g.name.lower())[0], g)
    known = {k for ref in refs for k in _keys(ref.uri)}
    unknown = [r.name for r in cfg.gps if r.name.lower() not in known]
    if cfg.gps and len(unknown) == len(cfg.gps):
        raise RequestError(f"{_P}.gps", [r.name for r in cfg.gps][:5], "no row names an input image",
                           "name each image by its file name, e.g. DJI_0001.JPG")  # fmt: skip
    results: list[ImageSource | Exception | None] = [None] * len(refs)
    frames: list[tuple[int, FrameTags, GpsRow | None]] = []
    for i, ref in enumerate(refs):
        try:
            tags = read_tags(ref.gdal_path)
        except Exception as exc:
            results[i] = ImageError(ref.uri, f"GDAL cannot read it as an image ({exc})")
            continue
        base, stem = _keys(ref.uri)
        row = rows.get(base) or rows.get(stem)
        if row is None and tags.latitude is None:
            hint = f" (gps rows naming no input image: {', '.join(unknown[:5])})" if unknown else ""
            results[i] = ImageError(ref.uri, "has no position: no gps row names it and it has no"
                                    f" EXIF GPS; add a gps row [name, lat, lon, alt]{hint}")  # fmt: skip
            continue
        frames.append((i, tags, row))
    if frames:
        lats = [float(r.latitude if r else t.latitude) for _, t, r in frames]  # type: ignore[arg-type]
        lons = [float(r.longitude if r else t.longitude) for _, t, r in frames]  # type: ignore[arg-type]
        track = _track_headings(frames, lons, lats)
        for k, (i, tags, row) in enumerate(frames):
            try:
                results[i] = _place(refs[i], tags, row, cfg, track[k])
            except ImageError as exc:
                results[i] = exc
    return [
        r if r is not None else ImageError(ref.uri, "not placed")
        for r, ref in zip(results, refs, strict=True)
    ]


def _track_headings(
    frames: list[tuple[int, FrameTags, GpsRow | None]], lons: list[float], lats: list[float]
) -> list[float | None]:
    """True azimuth of the track through each frame's neighbours (None: no track).

    Frames are taken in gps-row order, else capture-time order, else input order; a
    neighbour further than :data:`MAX_TRACK_STEP` metres is not on the same flight line.
    """
    n = len(frames)
    if all(r is not None for _, _, r in frames):
        order = sorted(range(n), key=lambda k: frames[k][2].index)  # type: ignore[union-attr]
    elif all(t.time is not None for _, t, _ in frames):
        order = sorted(range(n), key=lambda k: (frames[k][1].time, frames[k][0]))
    else:
        order = list(range(n))
    geod = Geod(ellps="WGS84")
    out: list[float | None] = [None] * n
    for pos, k in enumerate(order):
        ends = []
        for nb in (order[max(pos - 1, 0)], order[min(pos + 1, n - 1)]):
            _, _, dist = geod.inv(lons[k], lats[k], lons[nb], lats[nb])
            ends.append(nb if dist <= MAX_TRACK_STEP else k)
        a, b = ends
        az, _, dist = geod.inv(lons[a], lats[a], lons[b], lats[b])
        if dist > 0.5:
            out[k] = az % 360
    return out


def _place(
    ref: Any, tags: FrameTags, row: GpsRow | None, cfg: Settings, track: float | None
) -> ImageSource:
    uri = ref.uri
    lat: float | None
    lon: float | None
    alt: float | None
    if row is not None:
        lat, lon, alt = row.latitude, row.longitude, row.altitude
    else:
        lat, lon, alt = tags.latitude, tags.longitude, tags.altitude
        assert lat is not None and lon is not None  # frames without a position were set aside
        if alt is not None and tags.altitude_below_sea:
            raise ImageError(uri, f"its EXIF GPS altitude is marked below sea level (GPSAltitudeRef=1:"
                             f" {alt} m), most likely a mis-tagged altitude; give its altitude in a gps row")  # fmt: skip
    if alt is None:
        raise ImageError(
            uri,
            "has a GPS position but no altitude; give it in a gps row [name, lat, lon, altitude]",
        )
    try:
        interior, camera_source = interior_for(tags, cfg.camera)
    except ValueError as exc:
        raise ImageError(uri, str(exc)) from None
    crs = utm_crs(lon, lat)
    to_utm = Transformer.from_crs("EPSG:4326", crs, always_xy=True)
    xy = to_utm.transform(lon, lat)
    wkt = crs.to_wkt()
    relative = tags.first("RelativeAltitude")
    if cfg.altitude_is_flight_height or cfg.terrain is not None:
        terrain = cfg.terrain or Terrain(constant=0.0)
        ground = float(ground_height(terrain, np.array([xy[0]]), np.array([xy[1]]), wkt)[0])
        if not math.isfinite(ground):
            raise ImageError(uri, "the DEM has no height under the frame; give a DEM covering it")
        flight, z = (alt, ground + alt) if cfg.altitude_is_flight_height else (alt - ground, alt)
    elif relative is not None:
        flight, z = relative, alt
        terrain = Terrain(constant=alt - relative)
    else:
        raise ImageError(uri, "no ground height: its altitude is above sea level and nothing gives"
                         " the terrain; give constantZ or dem, or isAltitudeFlightHeight=true"
                         " with altitudes above the ground")  # fmt: skip
    if flight <= 0:
        raise ImageError(uri, f"the camera would be {-flight:.1f} m below the terrain (altitude {alt:g} m,"
                         f" ground {z - flight:g} m); check constantZ/dem, and isAltitudeFlightHeight"
                         " for altitudes above the ground")  # fmt: skip
    if flight <= cfg.minimum_flight_height:
        raise ImageError(uri, f"its flight height {flight:.1f} m is not above MinimumFlightHeight"
                         f" ({cfg.minimum_flight_height:g} m): a frame taken at take-off or landing")  # fmt: skip
    heading, pitch, roll, source = _orientation(tags, track)
    tr = _north_azimuth(to_utm, lon, lat)  # headings are true azimuths; the model is on the grid
    model = FrameModel(
        interior=interior,
        centre=(xy[0], xy[1], z),
        rotation=tuple(rotation_from_ypr(heading + tr, pitch, roll).ravel()),
        crs_wkt=wkt,
        image_shape=(tags.height, tags.width),
        terrain=terrain,
        orientation=tags.orientation,
    )
    count, dtype, nodata = frame_bands(uri, ref.gdal_path)
    props = cfg.camera or {}
    camera = " ".join(
        s for s in (props.get("maker") or tags.make, props.get("model") or tags.model) if s
    )
    extra = {
        "latitude": lat, "longitude": lon, "altitude": alt, "flight_height": round(flight, 3),
        "heading": round(heading % 360, 3), "heading_source": source, "pitch": pitch,
        "camera": camera, "focal_length_mm": interior.focal_mm,
        "pixel_size_um": round(interior.pixel_mm[0] * 1000, 4), "camera_source": camera_source,
    }  # fmt: skip
    return frame_source(
        raster_type=NAME, uri=uri, gdal_path=ref.gdal_path, name=ref.name, model=model,
        count=count, dtype=dtype, nodata=nodata, sensor=camera, time=tags.time, extra=extra,
    )  # fmt: skip


def _orientation(tags: FrameTags, track: float | None) -> tuple[float, float, float, str]:
    """(heading, pitch, roll, source): heading in degrees from true north (grid north for
    a track), pitch as a gimbal records it (-90: nadir)."""
    yaw = tags.first("GimbalYawDegree")
    if yaw is not None:
        pitch = tags.first("GimbalPitchDegree")
        roll = tags.first("GimbalRollDegree")
        return yaw, -90.0 if pitch is None else pitch, roll or 0.0, "gimbal"
    yaw = tags.first("FlightYawDegree", "Yaw")
    if yaw is not None:
        return yaw, -90.0, 0.0, "flight"
    if track is not None:
        return track, -90.0, 0.0, "track"
    return 0.0, -90.0, 0.0, "north-up"


def recognise(uri: str, gdal_path: str) -> str | None:
    """What makes this file look like a drone frame ("a DJI drone frame with EXIF GPS"), or
    None (no EXIF GPS, or georeferenced already)."""
    import rasterio

    try:
        with rasterio.open(gdal_path) as ds:
            if ds.crs is not None or ds.gcps[0] or ds.rpcs is not None:
                return None
        tags = read_tags(gdal_path)
    except Exception:
        return None
    if tags.latitude is None:
        return None
    dji = "dji" in tags.make.lower() or tags.first("RelativeAltitude") is not None
    camera = " ".join(s for s in (tags.make, tags.model) if s) or "unknown camera"
    kind = "a DJI drone frame" if dji else "a camera frame"
    return f"{kind} with EXIF GPS and no georeferencing ({camera})"
