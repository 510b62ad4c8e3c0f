"""Spatial references as ArcGIS clients send them, and back.

ArcGIS REST requests carry a spatial reference as an object (``{"wkid": 102100,
"latestWkid": 3857}``, ``{"wkt": "PROJCS[...]"}``), often JSON-encoded inside a form field;
Python and CLI users type ``"EPSG:32633"``, ``3857`` or a PROJ string. Every form ends up
as one :class:`pyproj.CRS` here, and :func:`to_esri_spatial_reference` writes the form
ArcGIS itself uses in service descriptors.

Codes: a bare number is looked up in the EPSG registry first, then in Esri's (pyproj ships
both), so Esri-only wkids such as 102100 or 54030 resolve. An Esri code that has an exact
EPSG twin (102100 and EPSG:3857) is returned as the EPSG CRS, so the collection records the
well-known code.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from typing import Any

from pyproj import CRS
from pyproj.exceptions import CRSError

from engine.errors import RequestError

__all__ = ["parse_spatial_reference", "to_esri_spatial_reference"]

_FIX = 'Use a WKID such as 3857 or 4326, "EPSG:32633", or {"wkt": "PROJCS[...]"}'

# EPSG codes ArcGIS still reports under an older Esri wkid, with the EPSG code as
# latestWkid (ArcGIS Server: {"wkid": 102100, "latestWkid": 3857}).
_LEGACY_ESRI_WKID = {3857: 102100}

_AUTH_CODE = re.compile(r"^\s*(EPSG|ESRI)\s*:+\s*(-?\d+)\s*$", re.IGNORECASE)
_NUMBER = re.compile(r"^\s*[+-]?\d+(\.0*)?\s*$")


def parse_spatial_reference(value: Any, parameter: str = "context.outSR") -> CRS:
    """Parse any spatial-reference form of the request into a pyproj CRS.

    Parameters
    ----------
    value
        ``{"wkid": n}``, ``{"wkid": n, "latestWkid": m}`` (latestWkid preferred when it
        resolves), ``{"latestWkid": m}``, ``{"wkt": ...}`` (OGC or ESRI WKT1, or WKT2),
        ``"EPSG:n"``, ``"ESRI:n"``, a bare int or numeric string, a PROJ string, a WKT
        string, a JSON string encoding any of these, or a CRS object (pyproj or rasterio).
    parameter
        The request field named in errors, as the request spells it.

    Returns
    -------
    pyproj.CRS

    Raises
    ------
    RequestError
        Empty value, wrong type, malformed JSON, or a code/definition that is not known.

    Examples
    --------
    >>> parse_spatial_reference({"wkid": 102100, "latestWkid": 3857}).to_epsg()
    3857
    >>> parse_spatial_reference('{"wkid": 4326}').to_epsg()
    4326
    """
    if isinstance(value, CRS):
        return value
    if hasattr(value, "to_wkt") and not isinstance(value, (str, bytes, Mapping)):
        # rasterio.crs.CRS and friends
        return _from_definition(value.to_wkt(), parameter, value)
    if isinstance(value, bytes):
        value = value.decode("utf-8", errors="replace")
    if isinstance(value, bool) or value is None:
        raise RequestError(parameter, value, "is not a spatial reference", _FIX)
    if isinstance(value, int):
        return _from_code(value, parameter, value)
    if isinstance(value, float):
        if math.isfinite(value) and value.is_integer():
            return _from_code(int(value), parameter, value)
        raise RequestError(parameter, value, "is not a whole-number WKID", _FIX)
    if isinstance(value, str):
        return _from_string(value, parameter)
    if isinstance(value, Mapping):
        return _from_mapping(value, parameter)
    raise RequestError(
        parameter, value, f"has type {type(value).__name__}, not a spatial reference", _FIX
    )


def _from_string(text: str, parameter: str) -> CRS:
    s = text.strip()
    if not s:
        raise RequestError(parameter, text, "is empty", _FIX)
    if s[0] in '{["':
        # REST form fields carry JSON text; a JSON string literal may wrap "EPSG:n".
        try:
            decoded = json.loads(s)
        except json.JSONDecodeError as exc:
            raise RequestError(
                parameter,
                text,
                f"is not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno})",
                _FIX,
            ) from None
        if isinstance(decoded, list):
            raise RequestError(parameter, text, "is a JSON array, not a spatial reference", _FIX)
        return parse_spatial_reference(decoded, parameter)
    if _NUMBER.match(s):
        return _from_code(int(float(s)), parameter, text)
    m = _AUTH_CODE.match(s)
    if m:
        return _from_authority(m.group(1).upper(), int(m.group(2)), parameter, text)
    return _from_definition(s, parameter, text)


def _from_mapping(obj: Mapping[str, Any], parameter: str) -> CRS:
    keys = {str(k).lower(): k for k in obj}
    # A legacy GeoJSON "crs" member: {"type": "name", "properties": {"name": "EPSG:3857"}}
    # or {"type": "EPSG", "properties": {"code": 3857}}.
    props = obj.get("properties")
    if "type" in keys and isinstance(props, Mapping):
        if "name" in props:
            return parse_spatial_reference(props["name"], parameter)
        if "code" in props:
            return parse_spatial_reference(props["code"], parameter)
    # PROJJSON (what pyproj's CRS.to_json() writes).
    if isinstance(obj.get("type"), str) and str(obj["type"]).endswith("CRS"):
        try:
            return CRS.from_json_dict(dict(obj))
        except CRSError as exc:
            raise RequestError(
                parameter, obj, f"is not a valid PROJJSON CRS ({exc})", _FIX
            ) from None

    latest = obj[keys["latestwkid"]] if "latestwkid" in keys else None
    wkid = obj[keys["wkid"]] if "wkid" in keys else None
    wkt = None
    for key in ("wkt", "wkt2"):
        if key in keys and obj[keys[key]] not in (None, ""):
            wkt = obj[keys[key]]
            break

    codes = [(name, c) for name, c in (("latestWkid", latest), ("wkid", wkid)) if c is not None]
    errors: list[RequestError] = []
    for name, code in codes:
        # latestWkid first: ArcGIS keeps the superseded code in wkid.
        try:
            return _code_value(code, f"{parameter}.{name}")
        except RequestError as exc:
            errors.append(exc)
    if wkt is not None:
        if not isinstance(wkt, str):
            raise RequestError(f"{parameter}.wkt", wkt, "must be a WKT string", _FIX)
        return _from_definition(wkt, f"{parameter}.wkt", wkt)
    if len(errors) == 1:
        raise errors[0]
    if errors:
        listed = " and ".join(f"{name} {code!r}" for name, code in codes)
        raise RequestError(parameter, dict(obj), f"{listed} are not known WKIDs", _FIX)
    raise RequestError(
        parameter,
        dict(obj),
        "has no wkid, latestWkid or wkt",
        _FIX,
    )


def _code_value(code: Any, parameter: str) -> CRS:
    if isinstance(code, bool):
        raise RequestError(parameter, code, "is not a WKID", _FIX)
    if isinstance(code, int):
        return _from_code(code, parameter, code)
    if isinstance(code, float) and math.isfinite(code) and code.is_integer():
        return _from_code(int(code), parameter, code)
    if isinstance(code, str) and _NUMBER.match(code):
        return _from_code(int(float(code)), parameter, code)
    if isinstance(code, str) and _AUTH_CODE.match(code):
        m = _AUTH_CODE.match(code)
        assert m is not None
        return _from_authority(m.group(1).upper(), int(m.group(2)), parameter, code)
    raise RequestError(parameter, code, "is not a WKID (a whole number)", _FIX)


def _from_code(code: int, parameter: str, shown: Any) -> CRS:
    """A bare WKID: EPSG first, then Esri."""
    if code <= 0:
        raise RequestError(parameter, shown, "is not a valid WKID (must be positive)", _FIX)
    for auth in ("EPSG", "ESRI"):
        try:
            crs = CRS.from_authority(auth, code)
        except CRSError:
            continue
        return _prefer_epsg(crs)
    raise RequestError(
        parameter, shown, f"is not a known WKID (neither EPSG:{code} nor ESRI:{code})", _FIX
    )


def _from_authority(auth: str, code: int, parameter: str, shown: Any) -> CRS:
    try:
        crs = CRS.from_authority(auth, code)
    except CRSError:
        raise RequestError(
            parameter, shown, f"{auth}:{code} is not a known CRS code", _FIX
        ) from None
    return _prefer_epsg(crs) if auth == "ESRI" else crs


def _prefer_epsg(crs: CRS) -> CRS:
    """The EPSG twin of an Esri-coded CRS when one is exactly equivalent, else ``crs``."""
    auth = crs.to_authority(min_confidence=100)
    if auth is not None and auth[0] == "EPSG":
        return crs
    try:
        epsg = crs.to_epsg(min_confidence=70)
    except CRSError:
        epsg = None
    if epsg is not None:
        twin = CRS.from_epsg(epsg)
        if twin.equals(crs, ignore_axis_order=True):
            return twin
    return crs


def _from_definition(text: str, parameter: str, shown: Any) -> CRS:
    """A WKT (any flavour), PROJ string or other pyproj user input."""
    try:
        crs = CRS.from_user_input(text)
    except CRSError as exc:
        detail = str(exc).split("(Internal Proj Error:")[0].strip().rstrip(":")
        raise RequestError(
            parameter, shown, f"is not a known spatial reference ({detail})", _FIX
        ) from None
    return crs


def _epsg_code(crs: CRS) -> int | None:
    """The EPSG code of ``crs`` if it is that CRS (axis order aside), else None."""
    try:
        code = crs.to_epsg(min_confidence=100)
        if code is not None:
            return code
        code = crs.to_epsg(min_confidence=70)
    except CRSError:
        code = None
    candidates = [code] if code is not None else []
    if crs.is_geographic:
        candidates.append(4326)  # OGC:CRS84 is EPSG:4326 in lon/lat order
    for c in candidates:
        if CRS.from_epsg(c).equals(crs, ignore_axis_order=True):
            return c
    return None


def _esri_code(crs: CRS) -> int | None:
    try:
        auth = crs.to_authority(auth_name="ESRI", min_confidence=100)
    except CRSError:
        auth = None
    return int(auth[1]) if auth else None


def to_esri_spatial_reference(crs: Any) -> dict[str, Any]:
    """The ArcGIS REST ``spatialReference`` object of a CRS.

    Parameters
    ----------
    crs
        Anything :func:`parse_spatial_reference` accepts (typically a pyproj CRS).

    Returns
    -------
    dict
        ``{"wkid": n, "latestWkid": m}`` when the CRS has an EPSG or Esri code (EPSG:3857
        gives ``{"wkid": 102100, "latestWkid": 3857}`` as ArcGIS Server does), else
        ``{"wkt": ...}`` in the ESRI WKT flavour.

    Examples
    --------
    >>> to_esri_spatial_reference(CRS.from_epsg(3857))
    {'wkid': 102100, 'latestWkid': 3857}
    >>> to_esri_spatial_reference("EPSG:32633")
    {'wkid': 32633, 'latestWkid': 32633}
    """
    crs = parse_spatial_reference(crs, "spatialReference")
    epsg = _epsg_code(crs)
    if epsg is not None:
        return {"wkid": _LEGACY_ESRI_WKID.get(epsg, epsg), "latestWkid": epsg}
    esri = _esri_code(crs)
    if esri is not None:
        return {"wkid": esri, "latestWkid": esri}
    for version in ("WKT1_ESRI", "WKT1_GDAL", "WKT2_2019"):
        try:
            text = crs.to_wkt(version=version)
        except CRSError:
            text = None
        if text:
            return {"wkt": text}
    return {"wkt": crs.to_wkt()}
