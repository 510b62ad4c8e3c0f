"""Request geometries: the ``extent`` clip box and the ``clippingGeometry`` polygon.

ArcGIS clients send Esri JSON (envelopes ``{xmin, ymin, xmax, ymax, spatialReference}``,
polygons ``{"rings": [...], "spatialReference": ...}``); Python users and web tools send
GeoJSON; the CLI sends ``"xmin,ymin,xmax,ymax[,SR]"``. Each becomes a :class:`Region`: a
valid, non-empty polygonal shapely geometry and the CRS its coordinates are in.

Esri polygons carry no explicit shell/hole structure: the ring orientation says which is
which (clockwise outer rings, counter-clockwise holes, in y-up coordinates). Each hole goes
to the smallest outer ring that contains it. When every ring has the same orientation (a
client that ignored the rule) the nesting depth decides instead: rings inside an odd
number of others are holes.

A spatial reference is only assumed (EPSG:4326) when none is given *and* every
coordinate fits longitude/latitude; otherwise the request must say.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import shapely
from pyproj import CRS, Transformer
from shapely.geometry.polygon import orient

from engine.errors import RequestError
from engine.grid import as_crs
from engine.spatialref import parse_spatial_reference, to_esri_spatial_reference

__all__ = ["Region", "combine_regions", "parse_clipping_geometry", "parse_extent"]

WGS84 = CRS.from_epsg(4326)

_SR_FIX = 'Add "spatialReference": {"wkid": <code>} (coordinates without one are read as longitude/latitude, EPSG:4326)'
_EXTENT_FIX = (
    'Give {"xmin": .., "ymin": .., "xmax": .., "ymax": .., "spatialReference": {"wkid": 4326}}'
    ' or "xmin,ymin,xmax,ymax[,EPSG:n]"'
)
_CLIP_FIX = (
    'Give an Esri polygon {"rings": [[[x, y], ...]], "spatialReference": {"wkid": n}}, '
    "an Esri envelope, or a GeoJSON Polygon/MultiPolygon/Feature/FeatureCollection"
)


@dataclass(frozen=True)
class Region:
    """A polygonal area and the CRS of its coordinates.

    Parameters
    ----------
    geometry
        A Polygon or MultiPolygon (valid, non-empty when built by the parsers).
    crs
        Anything CRS-like; stored as a pyproj CRS.

    Examples
    --------
    >>> r = Region(shapely.box(10, 50, 11, 51), CRS.from_epsg(4326))
    >>> round(r.to_crs("EPSG:32632").geometry.area / 1e6)  # km²
    7888
    """

    geometry: shapely.Geometry
    crs: CRS

    def __post_init__(self) -> None:
        object.__setattr__(self, "crs", as_crs(self.crs))

    @classmethod
    def from_bounds(cls, bounds: Sequence[float], crs: Any) -> Region:
        """A box region from (xmin, ymin, xmax, ymax)."""
        return cls(shapely.box(*(float(v) for v in bounds)), crs)

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        """(xmin, ymin, xmax, ymax) in ``crs`` units."""
        b = self.geometry.bounds
        return (float(b[0]), float(b[1]), float(b[2]), float(b[3]))

    def to_crs(self, crs: Any, densify_points: int = 21) -> Region:
        """This region in another CRS, edges densified first so curved edges stay curved.

        Parameters
        ----------
        crs
            Target CRS (anything CRS-like).
        densify_points
            Edges are split so no segment is longer than 1/(densify_points + 1) of the
            region's larger side: a box gains ``densify_points`` points per edge, as with
            rasterio's ``densify_pts``; short edges of detailed polygons gain none.

        Returns
        -------
        Region
            Points the target CRS cannot represent are dropped and the result is repaired
            to a valid (possibly empty) polygonal geometry.
        """
        target = as_crs(crs)
        if target == self.crs:
            return self
        geom = self.geometry
        if densify_points > 0 and not geom.is_empty:
            xmin, ymin, xmax, ymax = geom.bounds
            step = max(xmax - xmin, ymax - ymin) / (densify_points + 1)
            if step > 0:
                geom = shapely.segmentize(geom, step * (1 + 1e-9))
        tr = Transformer.from_crs(self.crs, target, always_xy=True)

        def project(xy: np.ndarray) -> np.ndarray:
            xs, ys = tr.transform(xy[:, 0], xy[:, 1], errcheck=False)
            return np.column_stack([xs, ys])

        coords = project(shapely.get_coordinates(geom))
        if np.isfinite(coords).all():
            out = shapely.transform(geom, project)
        else:
            out = _drop_nonfinite(shapely.transform(geom, project))
        return Region(_polygonal(out if out.is_valid else shapely.make_valid(out)), target)

    def to_esri_json(self) -> dict[str, Any]:
        """Esri polygon JSON (clockwise outer rings) with its ``spatialReference``."""
        rings: list[list[list[float]]] = []
        for poly in _polygons(self.geometry):
            p = orient(poly, sign=-1.0)  # clockwise shell, counter-clockwise holes
            for ring in (p.exterior, *p.interiors):
                rings.append([[float(x), float(y)] for x, y in ring.coords])
        return {"rings": rings, "spatialReference": to_esri_spatial_reference(self.crs)}


# -- parsing helpers ------------------------------------------------------------------
def _load_json(value: str, parameter: str, fix: str) -> Any:
    try:
        return json.loads(value)
    except json.JSONDecodeError as exc:
        raise RequestError(
            parameter,
            value,
            f"is not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno})",
            fix,
        ) from None


def _number(value: Any, parameter: str) -> float:
    if isinstance(value, bool) or value is None:
        raise RequestError(parameter, value, "is not a number", _EXTENT_FIX)
    try:
        out = float(value.strip() if isinstance(value, str) else value)
    except (TypeError, ValueError):
        raise RequestError(parameter, value, "is not a number", _EXTENT_FIX) from None
    if not math.isfinite(out):
        raise RequestError(parameter, value, "is not a finite number", _EXTENT_FIX)
    return out


def _fits_lonlat(bounds: Sequence[float]) -> bool:
    xmin, ymin, xmax, ymax = bounds
    return -180.0 <= xmin <= 180.0 and -180.0 <= xmax <= 180.0 and -90.0 <= ymin <= ymax <= 90.0


def _crs_or_default(sr: Any, bounds: Sequence[float], parameter: str, shown: Any) -> CRS:
    """The given spatial reference, else EPSG:4326 when the coordinates fit it."""
    if sr is not None:
        return parse_spatial_reference(sr, f"{parameter}.spatialReference")
    if _fits_lonlat(bounds):
        return WGS84
    raise RequestError(
        parameter,
        shown,
        "has no spatialReference and its coordinates are not longitude/latitude",
        _SR_FIX,
    )


def _ci_get(obj: Mapping[str, Any], key: str) -> Any:
    if key in obj:
        return obj[key]
    low = key.lower()
    for k, v in obj.items():
        if str(k).lower() == low:
            return v
    return None


def _polygons(geom: shapely.Geometry) -> list[shapely.Polygon]:
    """The non-empty polygons inside any geometry (collections flattened)."""
    if geom is None or geom.is_empty:
        return []
    if isinstance(geom, shapely.Polygon):
        return [geom]
    if isinstance(geom, (shapely.MultiPolygon, shapely.GeometryCollection)):
        out: list[shapely.Polygon] = []
        for part in geom.geoms:
            out.extend(_polygons(part))
        return out
    return []


def _polygonal(geom: shapely.Geometry) -> shapely.Geometry:
    """Polygon, MultiPolygon or an empty Polygon: lines and points left by repair dropped."""
    polys = [p for p in _polygons(geom) if p.area > 0]
    if not polys:
        return shapely.Polygon()
    return polys[0] if len(polys) == 1 else shapely.MultiPolygon(polys)


def _drop_nonfinite(geom: shapely.Geometry) -> shapely.Geometry:
    """Rebuild polygons without the points a transform could not project."""

    def clean(ring: Any) -> np.ndarray | None:
        xy = np.asarray(ring.coords)[:, :2]
        xy = xy[np.isfinite(xy).all(axis=1)]
        return xy if len(xy) >= 3 else None

    out = []
    for poly in _polygons(geom):
        shell = clean(poly.exterior)
        if shell is None:
            continue
        holes = [h for h in (clean(r) for r in poly.interiors) if h is not None]
        out.append(shapely.make_valid(shapely.Polygon(shell, holes)))
    return shapely.union_all(out) if out else shapely.Polygon()


def _finish(geom: shapely.Geometry, crs: CRS, parameter: str, shown: Any) -> Region:
    """Repair, keep the polygonal part, refuse what is left empty."""
    geom = shapely.force_2d(geom)
    if not geom.is_valid:
        geom = shapely.make_valid(geom)
    geom = _polygonal(geom)
    if geom.is_empty or geom.area <= 0:
        raise RequestError(
            parameter, shown, "encloses no area (empty or degenerate after repair)", _CLIP_FIX
        )
    return Region(geom, crs)


# -- extent ---------------------------------------------------------------------------
def parse_extent(value: Any, parameter: str = "context.extent") -> Region:
    """Parse the ``extent`` clip box.

    Parameters
    ----------
    value
        An Esri envelope ``{"xmin", "ymin", "xmax", "ymax", "spatialReference"}``, a
        4-sequence ``[xmin, ymin, xmax, ymax]``, a string ``"xmin,ymin,xmax,ymax[,SR]"``
        (as the CLI takes it), a JSON string of either, or a :class:`Region`.
    parameter
        The request field named in errors.

    Returns
    -------
    Region
        A box. Without a spatial reference the box is EPSG:4326 when its values fit
        longitude/latitude; otherwise a RequestError asks for one.

    Examples
    --------
    >>> parse_extent("500000,4000000,510000,4010000,EPSG:32633").crs.to_epsg()
    32633
    >>> parse_extent([10, 50, 11, 51]).bounds
    (10.0, 50.0, 11.0, 51.0)
    """
    if isinstance(value, Region):
        return value
    if isinstance(value, str):
        s = value.strip()
        if not s:
            raise RequestError(parameter, value, "is empty", _EXTENT_FIX)
        if s[0] in "{[":
            return _extent_from(_load_json(s, parameter, _EXTENT_FIX), parameter, value)
        parts = [p.strip() for p in s.split(",")] if "," in s else s.split()
        if len(parts) < 4:
            raise RequestError(parameter, value, "needs four numbers", _EXTENT_FIX)
        nums = [_number(p, parameter) for p in parts[:4]]
        sr = ",".join(parts[4:]).strip() or None
        return _box(nums, sr, parameter, value)
    return _extent_from(value, parameter, value)


def _extent_from(obj: Any, parameter: str, shown: Any) -> Region:
    if isinstance(obj, Mapping):
        if "rings" in obj or (_ci_get(obj, "type") is not None and _ci_get(obj, "xmin") is None):
            raise RequestError(
                parameter,
                shown,
                "is a polygon, not an envelope",
                "Give polygons as context.clippingGeometry, or an envelope here",
            )
        names = ("xmin", "ymin", "xmax", "ymax")
        raw = [_ci_get(obj, k) for k in names]
        missing = [k for k, v in zip(names, raw, strict=True) if v is None]
        if missing:
            raise RequestError(parameter, shown, f"lacks {', '.join(missing)}", _EXTENT_FIX)
        nums = [_number(v, f"{parameter}.{k}") for k, v in zip(names, raw, strict=True)]
        return _box(nums, _ci_get(obj, "spatialReference"), parameter, shown)
    if isinstance(obj, Sequence) and not isinstance(obj, (str, bytes)):
        if len(obj) != 4:
            raise RequestError(
                parameter,
                shown,
                f"has {len(obj)} values, not 4 (xmin, ymin, xmax, ymax)",
                _EXTENT_FIX,
            )
        return _box([_number(v, parameter) for v in obj], None, parameter, shown)
    raise RequestError(parameter, shown, "is not an envelope", _EXTENT_FIX)


def _box(nums: list[float], sr: Any, parameter: str, shown: Any) -> Region:
    xmin, ymin, xmax, ymax = nums
    if not (xmin < xmax and ymin < ymax):
        raise RequestError(
            parameter,
            shown,
            "is empty or inverted (needs xmin < xmax and ymin < ymax)",
            "Give the lower-left corner first: xmin,ymin,xmax,ymax",
        )
    crs = _crs_or_default(sr, nums, parameter, shown)
    return Region(shapely.box(xmin, ymin, xmax, ymax), crs)


# -- clipping geometry ----------------------------------------------------------------
def parse_clipping_geometry(value: Any, parameter: str = "context.clippingGeometry") -> Region:
    """Parse the ``clippingGeometry`` polygon.

    Parameters
    ----------
    value
        An Esri polygon ``{"rings": [...], "spatialReference": ...}`` (clockwise outer
        rings, counter-clockwise holes), an Esri envelope, an Esri feature or feature set,
        a GeoJSON Polygon, MultiPolygon, GeometryCollection, Feature or FeatureCollection
        (EPSG:4326 unless a legacy ``"crs"`` member says otherwise), a JSON string of any of
        these, or a :class:`Region`.
    parameter
        The request field named in errors.

    Returns
    -------
    Region
        Valid (repaired with ``shapely.make_valid``), non-empty, polygonal.

    Examples
    --------
    >>> ring = [[0, 0], [0, 10], [10, 10], [10, 0], [0, 0]]        # clockwise: outer
    >>> hole = [[2, 2], [4, 2], [4, 4], [2, 4], [2, 2]]            # counter-clockwise
    >>> parse_clipping_geometry({"rings": [ring, hole]}).geometry.area
    96.0
    """
    if isinstance(value, Region):
        return value
    obj: Any = value
    if isinstance(value, str):
        s = value.strip()
        if not s:
            raise RequestError(parameter, value, "is empty", _CLIP_FIX)
        if s[0] not in "{[":
            raise RequestError(parameter, value, "is not JSON", _CLIP_FIX)
        obj = _load_json(s, parameter, _CLIP_FIX)
    if not isinstance(obj, Mapping):
        raise RequestError(parameter, value, "is not a polygon object", _CLIP_FIX)
    return _clip_from(obj, parameter, value, None)


def _clip_from(obj: Mapping[str, Any], parameter: str, shown: Any, default_sr: Any) -> Region:
    # Esri JSON first: some clients add a "type" member ("polygon", "extent") to it.
    if "rings" in obj:
        return _from_esri_rings(obj, parameter, shown, default_sr)
    if _ci_get(obj, "xmin") is not None:
        if "spatialReference" not in obj and default_sr is not None:
            obj = {**obj, "spatialReference": default_sr}
        return parse_extent({k: v for k, v in obj.items() if str(k).lower() != "type"}, parameter)
    if isinstance(_ci_get(obj, "type"), str):
        return _from_geojson(obj, parameter, shown)
    if "features" in obj:  # Esri FeatureSet
        sr = obj.get("spatialReference", default_sr)
        parts = []
        for i, feat in enumerate(obj["features"] or []):
            geom = feat.get("geometry") if isinstance(feat, Mapping) else None
            if not isinstance(geom, Mapping):
                raise RequestError(f"{parameter}.features[{i}]", feat, "has no geometry", _CLIP_FIX)
            parts.append(_clip_from(geom, f"{parameter}.features[{i}]", feat, sr))
        return _union_regions(parts, parameter, shown)
    if isinstance(obj.get("geometry"), Mapping):  # Esri feature
        return _clip_from(obj["geometry"], f"{parameter}.geometry", shown, default_sr)
    for key, kind in (("paths", "a polyline"), ("points", "a multipoint"), ("x", "a point")):
        if key in obj:
            raise RequestError(parameter, shown, f"is {kind}, not an area", _CLIP_FIX)
    raise RequestError(
        parameter, shown, "is not a polygon, envelope or GeoJSON geometry", _CLIP_FIX
    )


def _union_regions(parts: list[Region], parameter: str, shown: Any) -> Region:
    if not parts:
        raise RequestError(parameter, shown, "has no features", _CLIP_FIX)
    crs = parts[0].crs
    geoms = [p.to_crs(crs).geometry for p in parts]
    return _finish(shapely.union_all(geoms), crs, parameter, shown)


def _ring_coords(ring: Any, parameter: str, shown: Any) -> np.ndarray:
    try:
        xy = np.array([[float(p[0]), float(p[1])] for p in ring], dtype="float64")
    except (TypeError, ValueError, IndexError, KeyError):
        raise RequestError(
            parameter, shown, "has a ring that is not a list of [x, y] points", _CLIP_FIX
        ) from None
    if len(xy) and not np.isfinite(xy).all():
        raise RequestError(parameter, shown, "has non-finite coordinates", _CLIP_FIX)
    if len(xy) and not np.array_equal(xy[0], xy[-1]):
        xy = np.vstack([xy, xy[:1]])  # close the ring
    return xy


def _signed_area(xy: np.ndarray) -> float:
    x, y = xy[:, 0], xy[:, 1]
    return 0.5 * float(np.dot(x[:-1], y[1:]) - np.dot(x[1:], y[:-1]))


def _from_esri_rings(obj: Mapping[str, Any], parameter: str, shown: Any, default_sr: Any) -> Region:
    rings_in = obj["rings"]
    if not isinstance(rings_in, Sequence) or isinstance(rings_in, str) or not rings_in:
        raise RequestError(parameter, shown, "has no rings", _CLIP_FIX)
    rings = [_ring_coords(r, parameter, shown) for r in rings_in]
    rings = [r for r in rings if len(r) >= 4 and _signed_area(r) != 0.0]
    if not rings:
        raise RequestError(
            parameter, shown, "encloses no area (every ring is degenerate)", _CLIP_FIX
        )
    allxy = np.vstack(rings)
    bounds = (allxy[:, 0].min(), allxy[:, 1].min(), allxy[:, 0].max(), allxy[:, 1].max())
    sr = obj.get("spatialReference", default_sr)
    crs = _crs_or_default(sr, bounds, parameter, shown)

    areas = [_signed_area(r) for r in rings]
    polys = [shapely.Polygon(r) for r in rings]
    # Esri rule: clockwise (negative signed area) = outer ring, counter-clockwise = hole.
    groups = _assign_holes(polys, [a < 0 for a in areas])
    if groups is None:
        # One orientation throughout, or holes outside every outer ring (rings written
        # the GeoJSON way): nesting depth decides, even = outer, odd = hole.
        depth = [
            sum(1 for j, q in enumerate(polys) if j != i and q.covers(polys[i]))
            for i in range(len(polys))
        ]
        groups = _assign_holes(polys, [d % 2 == 0 for d in depth]) or {}
    parts = [
        shapely.make_valid(shapely.Polygon(rings[s], [rings[h] for h in holes]))
        for s, holes in groups.items()
    ]
    return _finish(shapely.union_all(parts), crs, parameter, shown)


def _assign_holes(
    polys: list[shapely.Polygon], is_shell: list[bool]
) -> dict[int, list[int]] | None:
    """{outer ring: [its holes]}, each hole in the smallest outer ring covering it.

    None when there is no outer ring or some hole lies in none.
    """
    shells = sorted((i for i, s in enumerate(is_shell) if s), key=lambda i: polys[i].area)
    if not shells:
        return None
    groups: dict[int, list[int]] = {i: [] for i in shells}
    for i, shell in enumerate(is_shell):
        if shell:
            continue
        owner = next((s for s in shells if polys[s].covers(polys[i])), None)
        if owner is None:
            return None
        groups[owner].append(i)
    return groups


_GEOJSON_AREAS = {"Polygon", "MultiPolygon", "GeometryCollection"}


def _from_geojson(obj: Mapping[str, Any], parameter: str, shown: Any) -> Region:
    geom = _geojson_geometry(obj, parameter, shown)
    crs_member = obj.get("crs")
    if crs_member is not None:
        crs = parse_spatial_reference(crs_member, f"{parameter}.crs")
    elif geom.is_empty or _fits_lonlat(geom.bounds):
        crs = WGS84  # RFC 7946: GeoJSON is longitude/latitude
    else:
        fix = 'Add "crs": {"type": "name", "properties": {"name": "EPSG:<code>"}}, or send Esri JSON with a spatialReference'
        raise RequestError(
            parameter, shown, "is GeoJSON whose coordinates are not longitude/latitude", fix
        )
    return _finish(geom, crs, parameter, shown)


def _geojson_geometry(obj: Mapping[str, Any], parameter: str, shown: Any) -> shapely.Geometry:
    gtype = obj.get("type")
    if gtype == "FeatureCollection":
        feats = obj.get("features")
        if not isinstance(feats, Sequence) or not feats:
            raise RequestError(parameter, shown, "has no features", _CLIP_FIX)
        geoms = [
            _geojson_geometry(f, f"{parameter}.features[{i}]", f)
            if isinstance(f, Mapping)
            else None
            for i, f in enumerate(feats)
        ]
        if any(g is None for g in geoms):
            raise RequestError(parameter, shown, "has a feature that is not an object", _CLIP_FIX)
        return shapely.union_all([shapely.make_valid(g) for g in geoms])
    if gtype == "Feature":
        geom = obj.get("geometry")
        if not isinstance(geom, Mapping):
            raise RequestError(parameter, shown, "is a Feature without geometry", _CLIP_FIX)
        return _geojson_geometry(geom, f"{parameter}.geometry", shown)
    if gtype not in _GEOJSON_AREAS:
        raise RequestError(parameter, shown, f"is a GeoJSON {gtype}, not an area", _CLIP_FIX)
    try:
        geom = shapely.geometry.shape(obj)
    except (
        TypeError,
        ValueError,
        KeyError,
        IndexError,
        AttributeError,
        shapely.errors.ShapelyError,
    ) as exc:
        raise RequestError(parameter, shown, f"is not valid GeoJSON ({exc})", _CLIP_FIX) from None
    if gtype == "GeometryCollection" and not _polygons(geom):
        raise RequestError(parameter, shown, "holds no polygon", _CLIP_FIX)
    coords = shapely.get_coordinates(geom)
    if len(coords) and not np.isfinite(coords).all():
        raise RequestError(parameter, shown, "has non-finite coordinates", _CLIP_FIX)
    return geom


# -- combination ----------------------------------------------------------------------
def combine_regions(
    extent: Region | None, clip: Region | None, crs: Any, densify_points: int = 21
) -> shapely.Geometry | None:
    """The area to keep, in ``crs``: the intersection of the extent and the clip.

    Parameters
    ----------
    extent, clip
        The parsed ``context.extent`` and ``context.clippingGeometry`` (either may be None).
    crs
        The collection CRS.
    densify_points
        Passed to :meth:`Region.to_crs`.

    Returns
    -------
    shapely.Geometry or None
        None when neither is given (keep everything).

    Raises
    ------
    RequestError
        When the two do not overlap, or a region vanishes in ``crs``: the request could
        ingest nothing.
    """
    target = as_crs(crs)
    if extent is None and clip is None:
        return None
    geoms = {}
    for name, region in (("context.extent", extent), ("context.clippingGeometry", clip)):
        if region is None:
            continue
        g = region.to_crs(target, densify_points).geometry
        if g.is_empty:
            raise RequestError(
                name,
                region.bounds,
                "lies outside the area the output spatial reference can represent",
                "Check context.outSR and the region's spatialReference",
            )
        geoms[name] = g
    if len(geoms) == 1:
        return next(iter(geoms.values()))
    out = _polygonal(
        shapely.intersection(geoms["context.extent"], geoms["context.clippingGeometry"])
    )
    if out.is_empty:
        raise RequestError(
            "context.clippingGeometry",
            clip.bounds if clip is not None else None,
            f"does not overlap context.extent {extent.bounds if extent else ''}",
            "Give an extent and a clipping geometry that overlap, or only one of them",
        )
    return out
