"""The one validated CreateImageCollection request, shared by Python, CLI and REST.

Every entry point builds a :class:`CreateRequest` here and nowhere else:

* REST and ``mosaicflow create --request`` call :func:`parse_request` with the seed's
  parameter names (``inputRasters``, ``rasterType``, ``imageCollection``, ``context``,
  ``outputName``, ``overwrite``), each a dict or JSON text (form posts send strings);
* Python users and the CLI call :func:`build_request` with friendlier values (a path, a
  list of paths, a raster type name, a store path).

Validation is complete before any work starts: every refusal is a
:class:`~engine.errors.RequestError` naming the parameter as the request spells it, the
value, and the fix. Parameters of a particular raster type (GPS rows, camera properties)
are checked by that raster type; this module only guarantees they form an object whose
keys match case-insensitively. Keys are matched ignoring case everywhere (clients differ);
keys CreateImageCollection does not use are ignored, as ArcGIS does, and listed in
``CreateRequest.warnings``.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from pyproj import CRS
from rasterio.enums import Resampling

from engine.errors import RequestError
from engine.geometry import Region, parse_clipping_geometry, parse_extent
from engine.spatialref import parse_spatial_reference, to_esri_spatial_reference

InputKind = Literal["uris", "urls", "itemIds", "folderId"]
CellSize = float | Literal["MinOf", "MaxOf"]

RASTER_TYPES = ("Raster Dataset", "UAV/UAS", "Aerial", "ScannedAerial", "Landsat 7 ETM+",
                "Landsat 8", "Sentinel-2", "ZY3-SASMAC", "ZY3-CRESDA")  # fmt: skip
SATELLITE_TYPES = frozenset(RASTER_TYPES[4:])
COLLECTION_TYPES = ("UAV/UAS", "Aerial", "ScannedAerial", "Satellite")
_RASTER_TYPE_ALIASES = {"Landsat 9": "Landsat 8", "Landsat 8/9": "Landsat 8",
                        "Landsat 7": "Landsat 7 ETM+", "Landsat 7 ETM": "Landsat 7 ETM+",
                        "UAV": "UAV/UAS", "UAS": "UAV/UAS"}  # fmt: skip

# GDAL's methods rasterio names, except Gaussian (not a resampling ArcGIS clients send).
RESAMPLING_METHODS = {m.name.upper(): m for m in Resampling if m.name != "gauss"}
# ArcGIS spellings of the same methods.
_RESAMPLING_ALIASES = {"majority": "MODE", "median": "MED", "nearestneighbor": "NEAREST"}

_SERVICE_NAME = re.compile(r"^[A-Za-z0-9_-]{1,128}$")
_HTTP = re.compile(r"^https?://", re.IGNORECASE)
_TRANSPORT_KEYS = frozenset({"f", "token", "callback", "returnmessages"})

_INPUT_FIX = 'Give {"uris": [...]}, {"urls": [...]}, {"itemIds": [...]} or {"folderId": "..."}'
_TYPE_FIX = 'Give {"rasterTypeName": "UAV/UAS", "rasterTypeParameters": {...}} or a type name'
_PARAMS_FIX = 'Give an object such as {"gps": [...], "cameraProperties": {...}}'
_PROPS_FIX = 'Give {"imageCollectionType": "Satellite"}'
_TARGET_FIX = (
    'Give {"serviceProperties": {"name": "my_collection"}}, {"uri": "/path/out.zarr"}, '
    '{"url": "https://.../ImageServer"} or {"itemId": "..."}'
)
_NAME_FIX = "Use 1 to 128 letters, digits, '_' or '-', e.g. \"uav_collection\""
_CONTEXT_FIX = 'Give an object such as {"outSR": {"wkid": 3857}, "cellSize": 10}'
_CELL_FIX = 'Give a positive number in output units, "MinOf" (finest input) or "MaxOf"'
_PPF_FIX = 'Give a number of workers such as "4", or a share of the cores such as "50%"'


def _squash(text: str) -> str:
    """Case-, space-, hyphen- and underscore-insensitive key for name matching."""
    return re.sub(r"[\s_\-]+", "", text.casefold())


_RASTER_TYPE_LOOKUP = {_squash(n): n for n in RASTER_TYPES} | {
    _squash(alias): name for alias, name in _RASTER_TYPE_ALIASES.items()
}
_COLLECTION_TYPE_LOOKUP = {_squash(n): n for n in COLLECTION_TYPES}


# -- small helpers ----------------------------------------------------------------------
def _decode_json(value: Any, parameter: str, fix: str) -> Any:
    """Decode JSON text (REST and form posts); any other value is returned as is."""
    if isinstance(value, bytes):
        value = value.decode("utf-8", errors="replace")
    if not isinstance(value, str) or not value.strip() or value.strip()[0] not in '{["':
        return value
    try:
        return json.loads(value)
    except json.JSONDecodeError as exc:
        if any(q in value for q in "“”‘’"):
            fix = 'Replace the typographic quotes “ ” with plain " quotes. ' + fix
        problem = (
            f"is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno} (char {exc.pos})"
        )
        raise RequestError(parameter, value, problem, fix) from None


def _is_blank(value: Any) -> bool:
    return value is None or (isinstance(value, str) and not value.strip())


def _parse_bool(value: Any, parameter: str) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().casefold() if isinstance(value, (str, int)) else None
    if text in ("true", "yes", "1"):
        return True
    if text in ("false", "no", "0"):
        return False
    raise RequestError(parameter, value, "is not a boolean", "Use true or false")


class _Fields:
    """Case-insensitive reads of one request object, remembering which keys were used."""

    def __init__(self, obj: Mapping[str, Any], parameter: str) -> None:
        self.obj, self.parameter = obj, parameter
        self.used: set[Any] = set()
        self._keys = {str(k).casefold(): k for k in obj}

    def has(self, name: str) -> bool:
        return name.casefold() in self._keys

    def get(self, *names: str) -> tuple[str, Any]:
        """(parameter path, value) of the first of ``names`` present, else (path, None)."""
        for name in names:
            key = self._keys.get(name.casefold())
            if key is not None:
                self.used.add(key)
                return f"{self.parameter}.{key}", self.obj[key]
        return f"{self.parameter}.{names[0]}", None

    def warn_unused(self, warnings: list[str] | None, what: str) -> None:
        if warnings is not None:
            for key in self.obj:
                if key not in self.used:
                    warnings.append(f"{self.parameter}.{key} is not {what} and was ignored")


def _object(value: Any, parameter: str, fix: str) -> Mapping[str, Any]:
    value = _decode_json(value, parameter, fix)
    if not isinstance(value, Mapping):
        raise RequestError(parameter, value, "must be an object", fix)
    return value


# -- case-insensitive parameters ------------------------------------------------------
class CaseInsensitiveMapping(Mapping[str, Any]):
    """A read-only mapping whose keys match regardless of case; nested objects too.

    Keys keep their original spelling when iterated. Two keys differing only in case
    are refused (RequestError): they would be ambiguous. Nested dicts (also inside lists)
    become CaseInsensitiveMappings; lists stay lists.

    Examples
    --------
    >>> p = CaseInsensitiveMapping({"cameraProperties": {"FocalLength": 20}})
    >>> p["CAMERAPROPERTIES"]["focallength"]
    20
    """

    __slots__ = ("_items",)

    def __init__(
        self, data: Mapping[str, Any] | None = None, parameter: str = "rasterTypeParameters"
    ) -> None:
        items: dict[str, tuple[str, Any]] = {}
        for key, value in (data or {}).items():
            if not isinstance(key, str):
                raise RequestError(parameter, data, f"has a non-text key {key!r}", "Use text keys")
            if key.casefold() in items:
                first = items[key.casefold()][0]
                problem = f"has the keys {first!r} and {key!r}, which differ only in case"
                raise RequestError(parameter, data, problem, "Keep one of them")
            items[key.casefold()] = (key, _wrap(value, f"{parameter}.{key}"))
        self._items = items

    def __getitem__(self, key: str) -> Any:
        if not isinstance(key, str):
            raise KeyError(key)
        return self._items[key.casefold()][1]

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and key.casefold() in self._items

    def __iter__(self) -> Iterator[str]:
        return (k for k, _ in self._items.values())

    def __len__(self) -> int:
        return len(self._items)

    def __repr__(self) -> str:
        return f"CaseInsensitiveMapping({self.to_dict()!r})"

    def to_dict(self) -> dict[str, Any]:
        """A plain (JSON-ready) dict with the original key spellings."""
        return {k: _unwrap(v) for k, v in self._items.values()}


def _wrap(value: Any, parameter: str) -> Any:
    if isinstance(value, Mapping) and not isinstance(value, CaseInsensitiveMapping):
        return CaseInsensitiveMapping(value, parameter)
    if isinstance(value, (list, tuple)):
        return [_wrap(v, f"{parameter}[{i}]") for i, v in enumerate(value)]
    return value


def _unwrap(value: Any) -> Any:
    if isinstance(value, CaseInsensitiveMapping):
        return value.to_dict()
    return [_unwrap(v) for v in value] if isinstance(value, list) else value


# -- the model --------------------------------------------------------------------------
@dataclass(frozen=True)
class InputRasters:
    """Which inputs to add: one kind of reference and its values.

    ``kind`` is ``"uris"`` (paths, globs, directories, cloud uris), ``"urls"``,
    ``"itemIds"`` or ``"folderId"``; ``byref`` keeps pixels at the source.
    """

    kind: InputKind
    values: tuple[str, ...]
    byref: bool = False

    def to_json_dict(self) -> dict[str, Any]:
        return {self.kind: list(self.values), "byref": self.byref}


@dataclass(frozen=True)
class RasterType:
    """The raster type: canonical ``name``, its ``parameters`` and the collection type."""

    name: str = "Raster Dataset"
    parameters: CaseInsensitiveMapping = field(default_factory=CaseInsensitiveMapping)
    collection_type: str = "UAV/UAS"

    @property
    def is_satellite(self) -> bool:
        return self.name in SATELLITE_TYPES

    def to_json_dict(self) -> dict[str, Any]:
        return {
            "rasterTypeName": self.name,
            "rasterTypeParameters": self.parameters.to_dict(),
            "imageCollectionProps": {"imageCollectionType": self.collection_type},
        }


@dataclass(frozen=True)
class ImageCollectionTarget:
    """The output: a new collection ``name`` and/or an existing one by uri, url or item id."""

    name: str | None = None
    uri: str | None = None
    url: str | None = None
    item_id: str | None = None

    def to_json_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.name is not None:
            out["serviceProperties"] = {"name": self.name}
        for key, value in (("uri", self.uri), ("url", self.url), ("itemId", self.item_id)):
            if value is not None:
                out[key] = value
        return out


@dataclass(frozen=True)
class Context:
    """The ``context`` settings, validated; the defaults are ArcGIS's."""

    out_crs: CRS | None = None
    extent: Region | None = None
    clip: Region | None = None
    cell_size: CellSize = "MinOf"
    resampling: Resampling = Resampling.nearest
    parallel_processing_factor: float | int | None = None
    nodata: float | None = None

    def to_json_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.out_crs is not None:
            out["outSR"] = to_esri_spatial_reference(self.out_crs)
        if self.extent is not None:
            box = dict(zip(("xmin", "ymin", "xmax", "ymax"), self.extent.bounds, strict=True))
            out["extent"] = box | {"spatialReference": to_esri_spatial_reference(self.extent.crs)}
        if self.clip is not None:
            out["clippingGeometry"] = self.clip.to_esri_json()
        out["cellSize"] = self.cell_size
        out["resamplingMethod"] = next(
            k for k, v in RESAMPLING_METHODS.items() if v == self.resampling
        )
        ppf = self.parallel_processing_factor
        if ppf is not None:
            out["parallelProcessingFactor"] = (
                str(ppf) if isinstance(ppf, int) else f"{ppf * 100:g}%"
            )
        if self.nodata is not None:
            out["noData"] = "NaN" if math.isnan(self.nodata) else self.nodata
        return out


@dataclass(frozen=True)
class CreateRequest:
    """A complete, validated CreateImageCollection request."""

    input_rasters: InputRasters
    raster_type: RasterType
    image_collection: ImageCollectionTarget
    context: Context = field(default_factory=Context)
    overwrite: bool = False
    warnings: tuple[str, ...] = ()

    def to_json_dict(self) -> dict[str, Any]:
        """The request in the seed's parameter names; :func:`parse_request` reads it back."""
        return {
            "inputRasters": self.input_rasters.to_json_dict(),
            "rasterType": self.raster_type.to_json_dict(),
            "imageCollection": self.image_collection.to_json_dict(),
            "context": self.context.to_json_dict(),
            "overwrite": self.overwrite,
        }


# -- inputRasters ---------------------------------------------------------------------
# (kind, its request keys), in priority order: item ids win (the seed), then the folder,
# then uris, then urls; the kinds given but not used are reported as warnings.
_INPUT_KINDS = (
    ("itemIds", ("itemIds", "itemId")),
    ("folderId", ("folderId",)),
    ("uris", ("uris", "uri")),
    ("urls", ("urls", "url")),
)


def parse_input_rasters(
    value: Any, parameter: str = "inputRasters", warnings: list[str] | None = None
) -> InputRasters:
    """Parse ``inputRasters``.

    Parameters
    ----------
    value
        ``{"uris": [...]}``, ``{"uri": ...}``, ``{"urls": [...]}``, ``{"url": ...}``,
        ``{"itemIds": [...]}``, ``{"itemId": ...}``, ``{"folderId": ...}`` with optional
        ``"byref"`` (bool or "true"/"false"); JSON text of these; a path or a list of
        paths (taken as uris); or an :class:`InputRasters`.
    parameter, warnings
        The field name used in errors; a list receiving a note per ignored key.

    Returns
    -------
    InputRasters

    Examples
    --------
    >>> parse_input_rasters('{"uris": ["a.tif"], "itemIds": ["x1"]}').kind
    'itemIds'
    """
    if isinstance(value, InputRasters):
        return value
    value = _decode_json(value, parameter, _INPUT_FIX)
    if isinstance(value, (str, os.PathLike)):
        value = {"uris": [value]}
    elif isinstance(value, (list, tuple)):
        value = {"uris": list(value)}
    fields = _Fields(_object(value, parameter, _INPUT_FIX), parameter)
    given: dict[str, list[str]] = {}
    for kind, keys in _INPUT_KINDS:
        for key in keys:
            if fields.has(key):
                given.setdefault(kind, []).extend(_string_list(*fields.get(key)))
    pname, raw = fields.get("byref")
    byref = False if raw is None else _parse_bool(raw, pname)
    if not given:
        raise RequestError(parameter, value, "names no input", _INPUT_FIX)
    kind = next(k for k, _ in _INPUT_KINDS if k in given)
    if warnings is not None:
        for other in given:
            if other != kind:
                warnings.append(f"{parameter}.{other} was ignored: {kind} take priority")
    fields.warn_unused(warnings, "an inputRasters key")
    return InputRasters(kind, tuple(given[kind]), byref)  # type: ignore[arg-type]


def _string_list(parameter: str, raw: Any) -> list[str]:
    listed = isinstance(raw, (list, tuple))
    items = list(raw) if listed else [raw]
    if not items or raw is None:
        raise RequestError(parameter, raw, "is empty", "List at least one input")
    out = []
    for i, item in enumerate(items):
        pname = f"{parameter}[{i}]" if listed else parameter
        item = os.fspath(item) if isinstance(item, os.PathLike) else item
        if not isinstance(item, str):
            problem = f"is a {type(item).__name__}, not a text value"
            raise RequestError(pname, item, problem, "Quote it as a string")
        if not item.strip():
            raise RequestError(pname, item, "is empty", "Remove it or give a path, url or id")
        out.append(item.strip())
    return out


# -- rasterType -----------------------------------------------------------------------
def _raster_type_name(name: Any, parameter: str) -> str:
    canonical = _RASTER_TYPE_LOOKUP.get(_squash(name)) if isinstance(name, str) else None
    if canonical is None:
        fix = f"Use one of: {', '.join(RASTER_TYPES)}"
        raise RequestError(parameter, name, "is not a supported raster type", fix)
    return canonical


def _default_collection_type(name: str) -> str:
    if name in SATELLITE_TYPES:
        return "Satellite"
    if name in ("Aerial", "ScannedAerial"):
        return name
    return "UAV/UAS"  # the seed's default, also for Raster Dataset


def parse_raster_type(
    value: Any, parameter: str = "rasterType", warnings: list[str] | None = None
) -> RasterType:
    """Parse ``rasterType``.

    Parameters
    ----------
    value
        A raster type name, ``{"rasterTypeName", "rasterTypeParameters",
        "imageCollectionProps"}`` or its JSON text; None gives ``Raster Dataset``. Names
        match ignoring case, spaces and hyphens; "Landsat 9" and "Landsat 8/9" are
        "Landsat 8", "Landsat 7" is "Landsat 7 ETM+".
    parameter, warnings
        The field name used in errors; a list receiving a note per ignored key.

    Returns
    -------
    RasterType
        ``collection_type`` defaults to "Satellite" for satellite types, the type's own
        name for Aerial and ScannedAerial, else "UAV/UAS" (the seed's default).

    Examples
    --------
    >>> rt = parse_raster_type({"rasterTypeName": "landsat 9"})
    >>> (rt.name, rt.collection_type)
    ('Landsat 8', 'Satellite')
    """
    if isinstance(value, RasterType):
        return value
    if _is_blank(value):
        return RasterType()
    value = _decode_json(value, parameter, _TYPE_FIX)
    if isinstance(value, str):
        name = _raster_type_name(value, parameter)
        return RasterType(name, collection_type=_default_collection_type(name))
    fields = _Fields(_object(value, parameter, _TYPE_FIX), parameter)

    pname, raw = fields.get("rasterTypeName", "name")
    name = "Raster Dataset" if _is_blank(raw) else _raster_type_name(raw, pname)
    pname, raw = fields.get("rasterTypeParameters")
    raw = {} if _is_blank(raw) else _object(raw, pname, _PARAMS_FIX)
    params = CaseInsensitiveMapping(raw, pname)

    collection_type = _default_collection_type(name)
    pname, props = fields.get("imageCollectionProps")
    if not _is_blank(props):
        tname, raw = _Fields(_object(props, pname, _PROPS_FIX), pname).get("imageCollectionType")
        if not _is_blank(raw):
            found = _COLLECTION_TYPE_LOOKUP.get(_squash(raw)) if isinstance(raw, str) else None
            if found is None:
                fix = f"Use one of: {', '.join(COLLECTION_TYPES)}"
                raise RequestError(tname, raw, "is not an image collection type", fix)
            collection_type = found
    fields.warn_unused(warnings, "a rasterType key")
    return RasterType(name, params, collection_type)


# -- imageCollection ------------------------------------------------------------------
def _text(value: Any, parameter: str, what: str) -> str:
    if not isinstance(value, (str, os.PathLike)) or not os.fspath(value).strip():
        raise RequestError(parameter, value, f"is not {what}", f"Give {what} as a string")
    return os.fspath(value).strip()


def _looks_like_path(text: str) -> bool:
    return "/" in text or "\\" in text or text.casefold().endswith(".zarr")


def _service_name(value: Any, parameter: str) -> str:
    if not isinstance(value, str) or not _SERVICE_NAME.match(value.strip()):
        raise RequestError(parameter, value, "is not a valid service name", _NAME_FIX)
    return value.strip()


def parse_image_collection(
    value: Any,
    parameter: str = "imageCollection",
    warnings: list[str] | None = None,
    plain_string: Literal["name", "uri"] = "name",
) -> ImageCollectionTarget:
    """Parse ``imageCollection`` (or ``outputName``).

    Parameters
    ----------
    value
        ``{"serviceProperties": {"name": NAME}}`` (a new collection in the raster store),
        ``{"uri": PATH}``, ``{"url": URL}``, ``{"itemId": ID}`` (an existing one; also
        ``{"itemProperties": {"itemId": ID}}`` as ``outputName`` has it), their JSON text,
        or a plain string (see ``plain_string``).
    parameter, warnings
        The field name used in errors; a list receiving a note per ignored key.
    plain_string
        How a plain string is read. An http(s) URL is always a url. With ``"name"`` (REST
        ``outputName`` habit) it is a service name unless it looks like a path (has a
        slash or ends in ``.zarr``); with ``"uri"`` (Python, CLI) it is a store path.

    Returns
    -------
    ImageCollectionTarget
    """
    if isinstance(value, ImageCollectionTarget):
        return value
    if _is_blank(value):
        raise RequestError(parameter, value, "is required", _TARGET_FIX)
    value = _decode_json(value, parameter, _TARGET_FIX)
    if isinstance(value, (str, os.PathLike)):
        s = os.fspath(value).strip()
        if _HTTP.match(s):
            value = {"url": s}
        elif plain_string == "uri" or not isinstance(value, str) or _looks_like_path(s):
            value = {"uri": s}
        else:
            value = {"serviceProperties": {"name": s}}
    fields = _Fields(_object(value, parameter, _TARGET_FIX), parameter)

    name = uri = url = item_id = None
    pname, props = fields.get("serviceProperties")
    if props is not None:
        nname, raw = _Fields(_object(props, pname, _TARGET_FIX), pname).get("name")
        name = _service_name(raw, nname)
    pname, raw = fields.get("name")
    if raw is not None and name is None:
        name = _service_name(raw, pname)
    pname, raw = fields.get("uri")
    if raw is not None:
        uri = _text(raw, pname, "a path or uri")
    pname, raw = fields.get("url")
    if raw is not None:
        url = _text(raw, pname, "a URL")
        if not _HTTP.match(url):
            fix = "Give the ImageServer URL, or use uri for a path"
            raise RequestError(pname, raw, "is not an http(s) URL", fix)
    pname, raw = fields.get("itemId")
    if raw is None:
        ipname, iprops = fields.get("itemProperties")  # ArcGIS outputName style
        if isinstance(iprops, Mapping):
            pname, raw = _Fields(iprops, ipname).get("itemId")
    if raw is not None:
        item_id = _text(raw, pname, "an item id")
        if any(c.isspace() for c in item_id):
            raise RequestError(pname, raw, "is not an item id (has spaces)", "Give the item id")
    if name is None and uri is None and url is None and item_id is None:
        raise RequestError(parameter, value, "names no collection", _TARGET_FIX)
    fields.warn_unused(warnings, "an imageCollection key")
    return ImageCollectionTarget(name, uri, url, item_id)


# -- context --------------------------------------------------------------------------
def _float(value: Any) -> float | None:
    """A number or numeric string as float; None for anything else (bools included)."""
    if isinstance(value, (str, int, float)) and not isinstance(value, bool):
        try:
            return float(value)
        except ValueError:
            return None
    return None


def _cell_size(value: Any, parameter: str) -> CellSize:
    if isinstance(value, str) and value.strip().casefold() in ("minof", "maxof"):
        return "MinOf" if value.strip().casefold() == "minof" else "MaxOf"
    number = _float(value)
    if number is None or not (math.isfinite(number) and number > 0):
        raise RequestError(parameter, value, "is not a positive finite cell size", _CELL_FIX)
    return number


def _resampling(value: Any, parameter: str) -> Resampling:
    if isinstance(value, Resampling):
        return value
    if isinstance(value, str):
        key = _squash(value)
        key = _squash(_RESAMPLING_ALIASES.get(key, key))
        for name, method in RESAMPLING_METHODS.items():
            if key == _squash(name):
                return method
    fix = f"Use one of: {', '.join(RESAMPLING_METHODS)}"
    raise RequestError(parameter, value, "is not a resampling method", fix)


def _parallel_factor(value: Any, parameter: str) -> float | int:
    if isinstance(value, str) and value.strip().endswith("%"):
        pct = _float(value.strip()[:-1])
        if pct is None or not (math.isfinite(pct) and pct > 0):
            raise RequestError(parameter, value, "must be a positive percentage", _PPF_FIX)
        return pct / 100.0
    number = _float(value)
    if number is not None and math.isfinite(number) and number.is_integer() and number >= 0:
        return int(number)
    problem = "must be a whole number of workers (0 turns parallelism off) or a percentage"
    raise RequestError(parameter, value, problem, _PPF_FIX)


def _nodata(value: Any, parameter: str) -> float:
    number = _float(value)
    if number is not None:
        return number
    raise RequestError(parameter, value, "is not a number", 'Give a number such as -9999 or "NaN"')


# context key -> (Context field, parser)
_CONTEXT_FIELDS: dict[str, tuple[str, Any]] = {
    "outSR": ("out_crs", parse_spatial_reference),
    "extent": ("extent", parse_extent),
    "clippingGeometry": ("clip", parse_clipping_geometry),
    "cellSize": ("cell_size", _cell_size),
    "resamplingMethod": ("resampling", _resampling),
    "parallelProcessingFactor": ("parallel_processing_factor", _parallel_factor),
    "noData": ("nodata", _nodata),
}


def parse_context(
    value: Any, parameter: str = "context", warnings: list[str] | None = None
) -> Context:
    """Parse ``context``.

    Parameters
    ----------
    value
        A dict or its JSON text with any of ``outSR``, ``extent``, ``clippingGeometry``,
        ``cellSize``, ``resamplingMethod``, ``parallelProcessingFactor``, ``noData``.
        Null or empty-string values mean "not set" (ArcGIS clients send unset
        environments so). Other keys are ignored with a warning.
    parameter, warnings
        The field name used in errors; a list receiving a note per ignored key.

    Returns
    -------
    Context

    Examples
    --------
    >>> c = parse_context({"outSR": {"wkid": 102100}, "parallelProcessingFactor": "50%"})
    >>> (c.out_crs.to_epsg(), c.cell_size, c.parallel_processing_factor)
    (3857, 'MinOf', 0.5)
    """
    if isinstance(value, Context):
        return value
    if _is_blank(value):
        return Context()
    fields = _Fields(_object(value, parameter, _CONTEXT_FIX), parameter)
    kwargs = {}
    for key, (attr, parse) in _CONTEXT_FIELDS.items():
        pname, raw = fields.get(key)
        if not _is_blank(raw):
            kwargs[attr] = parse(raw, pname)
    fields.warn_unused(warnings, "used by CreateImageCollection")
    return Context(**kwargs)


# -- entry points ---------------------------------------------------------------------
def parse_request(mapping: Any) -> CreateRequest:
    """Build the request from the seed's parameters, as REST and ``--request`` give them.

    Parameters
    ----------
    mapping
        A dict (or its JSON text) with ``inputRasters`` (required), ``rasterType``,
        ``imageCollection`` (or ``outputName``; one is required), ``context`` and
        ``overwrite``. Each value may be a dict or JSON text. Transport keys (``f``,
        ``token``) are ignored silently, other unknown keys with a warning.

    Returns
    -------
    CreateRequest

    Raises
    ------
    RequestError
        On any invalid parameter; nothing has been done.

    Examples
    --------
    >>> r = parse_request({
    ...     "inputRasters": '{"uris": ["/data/a.tif"]}',
    ...     "imageCollection": '{"serviceProperties": {"name": "uavcollection"}}',
    ... })
    >>> (r.input_rasters.values, r.image_collection.name, r.raster_type.name)
    (('/data/a.tif',), 'uavcollection', 'Raster Dataset')
    """
    fix = 'Give an object such as {"inputRasters": {"uris": [...]}, "imageCollection": {...}}'
    mapping = _object(mapping, "request", fix)
    fields = _Fields(mapping, "request")
    warnings: list[str] = []

    def param(name: str) -> tuple[Any, str]:
        pname, raw = fields.get(name)
        return (None if _is_blank(raw) else raw), pname.removeprefix("request.")

    raw, pname = param("inputRasters")
    if raw is None:
        raise RequestError(pname, raw, "is required", _INPUT_FIX)
    inputs = parse_input_rasters(raw, pname, warnings)
    raster_type = parse_raster_type(*param("rasterType"), warnings)
    target, target_name = param("imageCollection")
    output, out_name = param("outputName")
    if target is not None and output is not None:
        warnings.append("outputName was ignored: imageCollection is given")
    elif target is None and output is not None:
        target_name, target = out_name, output
    image_collection = parse_image_collection(target, target_name, warnings, "name")
    context = parse_context(*param("context"), warnings)
    raw, pname = param("overwrite")
    overwrite = False if raw is None else _parse_bool(raw, pname)
    for key in mapping:
        if key not in fields.used and str(key).casefold() not in _TRANSPORT_KEYS:
            warnings.append(f"{key} is not a CreateImageCollection parameter and was ignored")
    return CreateRequest(inputs, raster_type, image_collection, context, overwrite, tuple(warnings))


def build_request(
    input_rasters: Any,
    raster_type: Any = None,
    image_collection: Any = None,
    context: Any = None,
    overwrite: bool = False,
) -> CreateRequest:
    """Build the request from Python values (what ``create_image_collection`` takes).

    Parameters
    ----------
    input_rasters
        A path (str or os.PathLike), a list of paths (both taken as uris), an
        ``inputRasters`` dict or its JSON text, or an :class:`InputRasters`.
    raster_type
        None (``Raster Dataset``), a raster type name, or a ``rasterType`` dict.
    image_collection
        A store path (a uri), an http(s) ImageServer URL, or an ``imageCollection`` dict.
    context
        A ``context`` dict, or None.
    overwrite
        Replace an existing collection instead of adding to it.

    Returns
    -------
    CreateRequest

    Examples
    --------
    >>> r = build_request(["a.tif", "b.tif"], "UAV/UAS", "out.zarr", {"outSR": 32633})
    >>> (r.input_rasters.kind, r.image_collection.uri, r.context.out_crs.to_epsg())
    ('uris', 'out.zarr', 32633)
    """
    warnings: list[str] = []
    inputs = parse_input_rasters(input_rasters, "inputRasters", warnings)
    rtype = parse_raster_type(raster_type, "rasterType", warnings)
    target = parse_image_collection(image_collection, "imageCollection", warnings, "uri")
    ctx = parse_context(context, "context", warnings)
    overwrite = _parse_bool(overwrite, "overwrite")
    return CreateRequest(inputs, rtype, target, ctx, overwrite, tuple(warnings))
