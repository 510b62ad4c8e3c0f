"""Landsat MTL metadata: one parser for the ODL text, JSON and XML encodings.

USGS ships a product's metadata as ``*_MTL.txt`` (ODL: ``GROUP = X`` … ``END_GROUP = X``),
``*_MTL.json`` and ``*_MTL.xml``; all three hold the same groups and keys. Each is read
into one nested mapping of *strings* (JSON numbers and XML text alike), and one
normaliser turns it into :class:`MtlMetadata`, so the three encodings give equal results.

Layouts understood:

* Collection 2 (root ``LANDSAT_METADATA_FILE``): product files in ``PRODUCT_CONTENTS``,
  scene facts in ``IMAGE_ATTRIBUTES``, grid in ``PROJECTION_ATTRIBUTES``; Level-1
  rescaling in ``LEVEL1_RADIOMETRIC_RESCALING``; Level-2 scaling in
  ``LEVEL2_SURFACE_REFLECTANCE_PARAMETERS`` / ``LEVEL2_SURFACE_TEMPERATURE_PARAMETERS``.
  A Level-2 MTL also carries its source Level-1 product's file names
  (``LEVEL1_PROCESSING_RECORD``): those files are not part of the product and are ignored.
* Collection 1 and pre-collection (root ``L1_METADATA_FILE``): ``METADATA_FILE_INFO``,
  ``PRODUCT_METADATA`` (files, corners, scene id ``LANDSAT_SCENE_ID``, level ``DATA_TYPE``),
  ``RADIOMETRIC_RESCALING``, ``PROJECTION_PARAMETERS``.

Band names come from the band file names (``<product id>_<BAND>.TIF``): ``B1`` … ``B11``,
``B6_VCID_1``, ``QA_PIXEL``, ``QA_RADSAT``, ``BQA``, ``SR_B4``, ``ST_B10``, ``ST_QA`` …
"""

from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time
from typing import Any

__all__ = ["MtlError", "MtlMetadata", "parse_mtl", "read_tree"]

Tree = dict[str, Any]  # group name -> Tree | str


class MtlError(ValueError):
    """The text is not Landsat MTL metadata, or lacks a field every product has."""


@dataclass(frozen=True)
class MtlMetadata:
    """What mosaicflow uses from an MTL file, the same whichever encoding it came in.

    Coordinates of ``corners_xy`` are the projection coordinates of the corner pixels'
    centres (USGS convention), so the product's outer edge lies half a cell beyond them.
    Scale/offset maps are band name -> (mult, add): ``radiance`` and ``reflectance`` (TOA,
    Level-1, keyed ``B1`` …), ``surface_reflectance`` (``SR_B1`` …) and
    ``surface_temperature`` (``ST_B10`` / ``ST_B6``, Kelvin).
    """

    product_id: str
    scene_id: str | None
    spacecraft: str  # "LANDSAT_8"
    sensor: str  # "OLI_TIRS", "ETM"
    processing_level: str  # "L2SP", "L1TP", "L1GT", pre-collection "L1T"
    collection_number: int | None  # None: pre-collection
    collection_category: str | None  # "T1", "T2", "RT"; None: pre-collection
    wrs_path: int
    wrs_row: int
    acquisition_time: datetime
    cloud_cover: float | None
    cloud_cover_land: float | None
    sun_elevation: float | None
    sun_azimuth: float | None
    map_projection: str
    datum: str
    utm_zone: int | None
    cell_sizes: dict[str, float]  # "panchromatic", "reflective", "thermal" -> metres
    corners_xy: dict[str, tuple[float, float]]  # "UL", "UR", "LL", "LR"
    corners_lonlat: dict[str, tuple[float, float]]
    band_files: dict[str, str]  # band name -> file name, in MTL order
    band_dtypes: dict[str, str]  # band name -> numpy dtype ("uint16"), when stated
    radiance: dict[str, tuple[float, float]] = field(default_factory=dict)
    reflectance: dict[str, tuple[float, float]] = field(default_factory=dict)
    surface_reflectance: dict[str, tuple[float, float]] = field(default_factory=dict)
    surface_temperature: dict[str, tuple[float, float]] = field(default_factory=dict)

    @property
    def number(self) -> int:
        """The Landsat mission number (7, 8, 9)."""
        return int(re.sub(r"\D", "", self.spacecraft) or 0)

    @property
    def epsg(self) -> int | None:
        """The EPSG code of the product grid: WGS 84 / UTM north (USGS writes southern
        scenes with negative northings in the northern zone), or Antarctic polar
        stereographic."""
        if self.map_projection == "UTM" and self.utm_zone and self.datum == "WGS84":
            return 32600 + self.utm_zone
        if self.map_projection == "PS" and self.datum == "WGS84":
            return 3031
        return None

    def scale_offset(self, band: str) -> tuple[float, float] | None:
        """The physical scaling USGS states for ``band``: surface reflectance or
        temperature (Level-2), else TOA reflectance, else radiance (Level-1)."""
        for table in (
            self.surface_reflectance,
            self.surface_temperature,
            self.reflectance,
            self.radiance,
        ):
            if band in table:
                return table[band]
        return None

    def quantity(self, band: str) -> str:
        """What ``band``'s scaled values are (for the variable's long name)."""
        if band in self.surface_reflectance:
            return "surface reflectance"
        if band in self.surface_temperature:
            return "surface temperature (K)"
        if band in self.reflectance:
            return "TOA reflectance (without sun-angle correction)"
        if band in self.radiance:
            return "TOA spectral radiance (W/(m2 sr um))"
        return ""


# -- the three encodings -> one tree of strings ------------------------------------------

_ODL_LINE = re.compile(r"^\s*([A-Za-z0-9_]+)\s*=\s*(.*?)\s*$")


def read_tree(text: str) -> Tree:
    """Parse MTL text of any encoding (told apart by its first character) into a tree."""
    head = text.lstrip("\ufeff \t\r\n")[:1]
    try:
        if head == "{":
            return _stringify(json.loads(text))
        if head == "<":
            return _xml_tree(ET.fromstring(text.encode()))
    except (ValueError, ET.ParseError) as exc:
        raise MtlError(f"is not valid MTL {'JSON' if head == '{' else 'XML'} ({exc})") from None
    return _odl_tree(text)


def _odl_tree(text: str) -> Tree:
    root: Tree = {}
    stack = [root]
    for line in text.splitlines():
        m = _ODL_LINE.match(line)
        if not m:
            continue
        key, value = m.group(1), m.group(2)
        if key == "GROUP":
            child: Tree = {}
            stack[-1][value] = child
            stack.append(child)
        elif key == "END_GROUP":
            if len(stack) == 1:
                raise MtlError(f"has an END_GROUP = {value} without its GROUP")
            stack.pop()
        else:
            stack[-1][key] = value[1:-1] if value[:1] == value[-1:] == '"' else value
    if not root:
        raise MtlError("holds no GROUP = ... / KEY = VALUE lines")
    return root


def _xml_tree(elem: ET.Element) -> Tree:
    def node(e: ET.Element) -> Any:
        children = list(e)
        if not children:
            return (e.text or "").strip()
        return {c.tag.rsplit("}", 1)[-1]: node(c) for c in children}

    return {elem.tag.rsplit("}", 1)[-1]: node(elem)}


def _stringify(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _stringify(v) for k, v in value.items()}
    if isinstance(value, float):
        return repr(value)
    return "" if value is None else str(value)


# -- normalising ---------------------------------------------------------------------------


def parse_mtl(text: str) -> MtlMetadata:
    """Parse Landsat MTL text (ODL, JSON or XML) into :class:`MtlMetadata`.

    Raises
    ------
    MtlError
        When the text is not MTL metadata or lacks a field every product has.
    """
    tree = read_tree(text)
    if "LANDSAT_METADATA_FILE" in tree:
        return _collection2(tree["LANDSAT_METADATA_FILE"])
    if "L1_METADATA_FILE" in tree:
        return _legacy(tree["L1_METADATA_FILE"])
    raise MtlError(
        "is not Landsat MTL metadata (no LANDSAT_METADATA_FILE or L1_METADATA_FILE group)"
    )


def _group(tree: Tree, *names: str) -> dict[str, str]:
    for name in names:
        g = tree.get(name)
        if isinstance(g, dict):
            return {k: v for k, v in g.items() if isinstance(v, str)}
    return {}


def _collection2(root: Tree) -> MtlMetadata:
    contents = _group(root, "PRODUCT_CONTENTS")
    image = _group(root, "IMAGE_ATTRIBUTES")
    proj = _group(root, "PROJECTION_ATTRIBUTES")
    l1_proj = _group(root, "LEVEL1_PROJECTION_PARAMETERS")
    l1_rescale = _group(root, "LEVEL1_RADIOMETRIC_RESCALING")
    product_id = _required(contents, "LANDSAT_PRODUCT_ID")
    files, dtypes = _band_files(contents, product_id)
    sr = _group(root, "LEVEL2_SURFACE_REFLECTANCE_PARAMETERS")
    st = _group(root, "LEVEL2_SURFACE_TEMPERATURE_PARAMETERS")
    return MtlMetadata(
        product_id=product_id,
        scene_id=_group(root, "LEVEL1_PROCESSING_RECORD").get("LANDSAT_SCENE_ID"),
        spacecraft=_required(image, "SPACECRAFT_ID"),
        sensor=_required(image, "SENSOR_ID"),
        processing_level=_required(contents, "PROCESSING_LEVEL"),
        collection_number=_int(contents.get("COLLECTION_NUMBER")),
        collection_category=contents.get("COLLECTION_CATEGORY"),
        wrs_path=_int_required(image, "WRS_PATH"),
        wrs_row=_int_required(image, "WRS_ROW"),
        acquisition_time=_acquired(image),
        cloud_cover=_float(image.get("CLOUD_COVER")),
        cloud_cover_land=_float(image.get("CLOUD_COVER_LAND")),
        sun_elevation=_float(image.get("SUN_ELEVATION")),
        sun_azimuth=_float(image.get("SUN_AZIMUTH")),
        **_projection({**l1_proj, **proj}),
        band_files=files,
        band_dtypes=dtypes,
        radiance=_rescaling(l1_rescale, "RADIANCE", "B"),
        reflectance=_rescaling(l1_rescale, "REFLECTANCE", "B"),
        surface_reflectance=_rescaling(sr, "REFLECTANCE", "SR_B"),
        surface_temperature=_rescaling(st, "TEMPERATURE", ""),
    )


def _legacy(root: Tree) -> MtlMetadata:
    """Collection 1 and pre-collection MTL (``L1_METADATA_FILE``)."""
    info = _group(root, "METADATA_FILE_INFO")
    product = _group(root, "PRODUCT_METADATA")
    image = _group(root, "IMAGE_ATTRIBUTES")
    proj = _group(root, "PROJECTION_PARAMETERS")
    rescale = _group(root, "RADIOMETRIC_RESCALING")
    scene_id = info.get("LANDSAT_SCENE_ID")
    product_id = info.get("LANDSAT_PRODUCT_ID") or scene_id
    if not product_id:
        raise MtlError("names neither LANDSAT_PRODUCT_ID nor LANDSAT_SCENE_ID")
    files, dtypes = _band_files(product, product_id)
    collection = _int(info.get("COLLECTION_NUMBER"))
    return MtlMetadata(
        product_id=product_id,
        scene_id=scene_id,
        spacecraft=_required(product, "SPACECRAFT_ID"),
        sensor=_required(product, "SENSOR_ID"),
        processing_level=_required(product, "DATA_TYPE"),
        collection_number=collection,
        collection_category=product.get("COLLECTION_CATEGORY") if collection else None,
        wrs_path=_int_required(product, "WRS_PATH"),
        wrs_row=_int_required(product, "WRS_ROW"),
        acquisition_time=_acquired(product),
        cloud_cover=_float(image.get("CLOUD_COVER")),
        cloud_cover_land=_float(image.get("CLOUD_COVER_LAND")),
        sun_elevation=_float(image.get("SUN_ELEVATION")),
        sun_azimuth=_float(image.get("SUN_AZIMUTH")),
        **_projection({**product, **proj}),
        band_files=files,
        band_dtypes=dtypes,
        radiance=_rescaling(rescale, "RADIANCE", "B"),
        reflectance=_rescaling(rescale, "REFLECTANCE", "B"),
    )


_TIFF = re.compile(r"\.tiff?$", re.IGNORECASE)
_DTYPES = {"UINT8": "uint8", "INT8": "int8", "UINT16": "uint16", "INT16": "int16",
           "UINT32": "uint32", "INT32": "int32", "FLOAT32": "float32"}  # fmt: skip


def _band_files(group: dict[str, str], product_id: str) -> tuple[dict[str, str], dict[str, str]]:
    """Band name -> file name of the product's rasters, and their stated data types.

    Per-pixel angle rasters (``FILE_NAME_ANGLE_*``) are auxiliary geometry, not bands.
    """
    files: dict[str, str] = {}
    dtypes: dict[str, str] = {}
    for key, value in group.items():
        if not key.startswith("FILE_NAME_") or not _TIFF.search(value):
            continue
        suffix = key.removeprefix("FILE_NAME_")
        if suffix.startswith("ANGLE_"):
            continue
        name = _band_name(value, product_id, suffix)
        files[name] = value
        dtype = _DTYPES.get(group.get(f"DATA_TYPE_{suffix}", "").upper())
        if dtype:
            dtypes[name] = dtype
    order = sorted(files, key=_band_order)  # JSON may list keys in any order
    return {b: files[b] for b in order}, {b: dtypes[b] for b in order if b in dtypes}


def _band_order(band: str) -> tuple[int, int, str]:
    """Spectral bands by number (B1, SR_B1 … B11, ST_B10), then products, then QA, each in
    MTL order (the sort is stable)."""
    m = re.fullmatch(r"(?:SR_|ST_)?B(\d+)(.*)", band)
    if m:
        return (0, int(m.group(1)), m.group(2))
    return (2 if band == "BQA" or band.startswith("QA_") or "_QA" in band else 1, 0, "")


def _band_name(file_name: str, product_id: str, key_suffix: str) -> str:
    """``LC08_..._T2_SR_B4.TIF`` -> ``SR_B4``; from the MTL key when the file is unusual."""
    stem = _TIFF.sub("", file_name)
    if stem.upper().startswith(product_id.upper() + "_"):
        return stem[len(product_id) + 1 :].upper()
    m = re.fullmatch(r"BAND_(\w+)", key_suffix)
    return f"B{m.group(1)}" if m else key_suffix


def _rescaling(group: dict[str, str], quantity: str, prefix: str) -> dict[str, tuple[float, float]]:
    """``{QUANTITY}_MULT_BAND_x`` / ``_ADD_BAND_x`` pairs, keyed ``prefix + x``."""
    out: dict[str, tuple[float, float]] = {}
    for key, value in group.items():
        m = re.fullmatch(rf"{quantity}_MULT_BAND_(\w+)", key)
        if not m:
            continue
        add = group.get(f"{quantity}_ADD_BAND_{m.group(1)}")
        mult, offset = _float(value), _float(add)
        if mult is not None and offset is not None:
            out[prefix + m.group(1)] = (mult, offset)
    return out


def _projection(g: dict[str, str]) -> dict[str, Any]:
    corners_xy, corners_ll = {}, {}
    for c in ("UL", "UR", "LL", "LR"):
        x, y = (
            _float(g.get(f"CORNER_{c}_PROJECTION_X_PRODUCT")),
            _float(g.get(f"CORNER_{c}_PROJECTION_Y_PRODUCT")),
        )
        if x is not None and y is not None:
            corners_xy[c] = (x, y)
        lon, lat = (
            _float(g.get(f"CORNER_{c}_LON_PRODUCT")),
            _float(g.get(f"CORNER_{c}_LAT_PRODUCT")),
        )
        if lon is not None and lat is not None:
            corners_ll[c] = (lon, lat)
    sizes = {
        kind: v
        for kind in ("panchromatic", "reflective", "thermal")
        if (v := _float(g.get(f"GRID_CELL_SIZE_{kind.upper()}"))) is not None
    }
    return {
        "map_projection": g.get("MAP_PROJECTION", ""),
        "datum": g.get("DATUM", ""),
        "utm_zone": _int(g.get("UTM_ZONE")),
        "cell_sizes": sizes,
        "corners_xy": corners_xy,
        "corners_lonlat": corners_ll,
    }


def _acquired(g: dict[str, str]) -> datetime:
    """DATE_ACQUIRED + SCENE_CENTER_TIME as UTC; the 7th fractional digit is dropped
    (Python keeps microseconds), as is the trailing ``Z``."""
    day = g.get("DATE_ACQUIRED") or g.get("ACQUISITION_DATE")
    if not day:
        raise MtlError("has no DATE_ACQUIRED")
    try:
        d = date.fromisoformat(day.strip())
    except ValueError:
        raise MtlError(f"has an unreadable DATE_ACQUIRED {day!r}") from None
    clock = (g.get("SCENE_CENTER_TIME") or g.get("SCENE_CENTER_SCAN_TIME") or "").strip()
    m = re.fullmatch(r"(\d{1,2}):(\d{2}):(\d{2})(?:\.(\d+))?Z?", clock.strip('"'))
    if not m:
        return datetime.combine(d, time(), UTC)
    micro = int((m.group(4) or "0")[:6].ljust(6, "0"))
    return datetime.combine(d, time(int(m.group(1)), int(m.group(2)), int(m.group(3)), micro), UTC)


def _required(g: dict[str, str], key: str) -> str:
    value = g.get(key, "").strip()
    if not value:
        raise MtlError(f"has no {key}")
    return value


def _int_required(g: dict[str, str], key: str) -> int:
    value = _int(g.get(key))
    if value is None:
        raise MtlError(f"has no readable {key}")
    return value


def _int(text: str | None) -> int | None:
    try:
        return int(float(text)) if text not in (None, "") else None  # "078", "02", "71"
    except ValueError:
        return None


def _float(text: str | None) -> float | None:
    try:
        return float(text) if text not in (None, "") else None
    except ValueError:
        return None
