"""Sentinel-2 SAFE metadata: pure functions over the product and granule XML.

Two documents describe a SAFE product (ESA's "compact" naming, every product since
December 2016 and the reprocessed archive):

* the product metadata ``MTD_MSIL1C.xml`` / ``MTD_MSIL2A.xml``: product type, processing
  baseline, spacecraft, times, relative orbit, cloud cover, quantification values, the
  radiometric offsets of baseline 04.00 and later (``RADIO_ADD_OFFSET`` for L1C,
  ``BOA_ADD_OFFSET`` for L2A), the native resolution of each band and the list of band
  files (``IMAGE_FILE``, SAFE-relative and without extension);
* the granule metadata ``GRANULE/<granule>/MTD_TL.xml``: tile id, CRS (EPSG code), the
  geoposition and size of each resolution's grid and the mean sun angles.

Elements are found by local name whatever their namespace prefix: the layouts of
baselines 02.xx to 05.xx differ in nesting and indentation, not in element names.
Nothing here touches files or GDAL; :mod:`engine.rastertypes.sentinel2` reads the bytes.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from datetime import UTC, datetime

__all__ = [
    "BAND_ORDER",
    "Geoposition",
    "ProductMetadata",
    "SafeError",
    "TileMetadata",
    "band_of_file",
    "parse_product",
    "parse_tile",
]

# The 13 MSI bands in the order of their bandId (0..12) in the metadata.
BAND_ORDER = ("B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A",
              "B09", "B10", "B11", "B12")  # fmt: skip
# Native resolutions (m), used when the metadata lists no Spectral_Information.
NATIVE_RESOLUTION = {"B01": 60, "B02": 10, "B03": 10, "B04": 10, "B05": 20, "B06": 20,
                     "B07": 20, "B08": 10, "B8A": 20, "B09": 60, "B10": 60, "B11": 20,
                     "B12": 20}  # fmt: skip
# "T56JMM_20180629T000241_B01" (L1C) or "T01KAB_20230821T221941_SCL_20m" (L2A).
_FILE_BAND = re.compile(r"_(B\d\d|B8A|TCI|SCL|AOT|WVP)(?:_(\d+)m)?$", re.IGNORECASE)
_MGRS = re.compile(r"_T(\d\d[A-Z]{3})(?:_|$)")


class SafeError(ValueError):
    """The XML is not the Sentinel-2 metadata it should be (the message says what is missing)."""


@dataclass(frozen=True)
class ProductMetadata:
    """What the product metadata file says (one L1C or L2A product)."""

    product_uri: str  # "S2A_MSIL1C_..._20180629T012042.SAFE"
    product_type: str  # "S2MSI1C" | "S2MSI2A"
    level: str  # "L1C" | "L2A"
    processing_baseline: str  # "02.06"
    spacecraft: str  # "Sentinel-2A"
    start_time: datetime  # PRODUCT_START_TIME (UTC)
    datatake_sensing_start: datetime | None
    relative_orbit: int | None  # SENSING_ORBIT_NUMBER
    orbit_direction: str
    cloud_cover: float | None  # Cloud_Coverage_Assessment, percent
    quantification: dict[str, float]  # "reflectance" (TOA or BOA), "AOT", "WVP"
    offsets: dict[str, float]  # band → RADIO_/BOA_ADD_OFFSET (baseline >= 04.00)
    resolutions: dict[str, int]  # band → native resolution (m)
    wavelengths: dict[str, float]  # band → central wavelength (nm)
    image_files: tuple[str, ...]  # SAFE-relative, without extension
    image_format: str  # "JPEG2000" | "GeoTIFF"
    granules: tuple[str, ...]  # granuleIdentifier of each granule

    @property
    def name(self) -> str:
        """The product name without ``.SAFE``."""
        return self.product_uri.removesuffix(".SAFE")


@dataclass(frozen=True)
class Geoposition:
    """One resolution's grid as MTD_TL declares it (pixel-corner origin)."""

    resolution: int
    ulx: float
    uly: float
    xdim: float
    ydim: float
    nrows: int
    ncols: int

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        """(left, bottom, right, top) of the declared grid."""
        right = self.ulx + self.ncols * self.xdim
        bottom = self.uly + self.nrows * self.ydim
        return (self.ulx, min(bottom, self.uly), right, max(bottom, self.uly))


@dataclass(frozen=True)
class TileMetadata:
    """What the granule metadata MTD_TL.xml says."""

    tile_id: str  # the granule's TILE_ID ("S2A_OPER_MSI_L1C_TL_..._T56JMM_N02.06")
    mgrs_tile: str  # "56JMM"
    epsg: int
    cs_name: str  # "WGS84 / UTM zone 56S"
    sensing_time: datetime | None
    geopositions: dict[int, Geoposition]
    sun_zenith: float | None
    sun_azimuth: float | None

    @property
    def sun_elevation(self) -> float | None:
        """Mean sun elevation (degrees) = 90 − mean sun zenith."""
        return None if self.sun_zenith is None else 90.0 - self.sun_zenith


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1].rsplit(":", 1)[-1]


def _all(root: ET.Element, name: str) -> list[ET.Element]:
    return [e for e in root.iter() if _local(e.tag) == name]


def _first(root: ET.Element, name: str) -> ET.Element | None:
    return next((e for e in root.iter() if _local(e.tag) == name), None)


def _text(root: ET.Element, name: str, what: str | None = None) -> str:
    """The text of the first element ``name``; a SafeError naming it when absent."""
    e = _first(root, name)
    if e is None or not (e.text or "").strip():
        raise SafeError(f"it has no {what or name} element")
    return (e.text or "").strip()


def _opt_text(root: ET.Element, name: str) -> str | None:
    e = _first(root, name)
    text = (e.text or "").strip() if e is not None else ""
    return text or None


def _time(text: str | None) -> datetime | None:
    """An ISO time of the metadata ("2018-06-29T00:02:41.024Z") as an aware UTC datetime."""
    if not text:
        return None
    t = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return t.astimezone(UTC) if t.tzinfo else t.replace(tzinfo=UTC)


def _float(text: str | None) -> float | None:
    try:
        return float(text) if text is not None else None
    except ValueError:
        return None


def _parse(xml: bytes | str, what: str) -> ET.Element:
    try:
        return ET.fromstring(xml)
    except ET.ParseError as exc:
        raise SafeError(f"its {what} is not well-formed XML ({exc})") from None


def band_name(physical: str) -> str:
    """The file-name spelling of a band ("B1" → "B01", "B8A" stays)."""
    m = re.fullmatch(r"B(\d+)(A?)", physical.strip().upper())
    if not m:
        return physical.strip().upper()
    return f"B{int(m.group(1)):02d}{m.group(2)}" if not m.group(2) else f"B{int(m.group(1))}A"


def band_of_file(image_file: str) -> tuple[str, int | None] | None:
    """(band, resolution in m or None) of an IMAGE_FILE entry; None for other files."""
    m = _FILE_BAND.search(image_file.rsplit("/", 1)[-1])
    if not m:
        return None
    return m.group(1).upper(), (int(m.group(2)) if m.group(2) else None)


def parse_product(xml: bytes | str) -> ProductMetadata:
    """Parse ``MTD_MSIL1C.xml`` or ``MTD_MSIL2A.xml``.

    Parameters
    ----------
    xml
        The file's bytes (or text).

    Returns
    -------
    ProductMetadata

    Raises
    ------
    SafeError
        Not a Sentinel-2 L1C/L2A product metadata file, or a required element is missing.
    """
    root = _parse(xml, "product metadata")
    if not re.search(r"Level-(1C|2A)_User_Product", _local(root.tag)):
        raise SafeError(
            f"its product metadata root is <{_local(root.tag)}>, not a Sentinel-2 "
            "Level-1C/Level-2A user product"
        )
    product_type = _text(root, "PRODUCT_TYPE")
    level = "L2A" if "2A" in product_type.upper() else "L1C"
    baseline = _text(root, "PROCESSING_BASELINE")
    start = _time(_text(root, "PRODUCT_START_TIME"))
    assert start is not None  # _text never returns an empty string
    orbit = _opt_text(root, "SENSING_ORBIT_NUMBER")

    quant: dict[str, float] = {}
    reflectance = _opt_text(root, "BOA_QUANTIFICATION_VALUE") or _opt_text(
        root, "QUANTIFICATION_VALUE"
    )
    if reflectance is None:
        raise SafeError("it has no QUANTIFICATION_VALUE (L1C) or BOA_QUANTIFICATION_VALUE (L2A)")
    quant["reflectance"] = float(reflectance)
    for kind in ("AOT", "WVP"):
        value = _float(_opt_text(root, f"{kind}_QUANTIFICATION_VALUE"))
        if value is not None:
            quant[kind] = value

    # band ids 0..12 in the metadata are the bands of BAND_ORDER (Spectral_Information
    # confirms it with physicalBand="B1" ... "B8A" ...)
    by_id = dict(enumerate(BAND_ORDER))
    resolutions: dict[str, int] = {}
    wavelengths: dict[str, float] = {}
    for info in _all(root, "Spectral_Information"):
        band = band_name(info.get("physicalBand", ""))
        if info.get("bandId", "").isdigit():
            by_id[int(info.get("bandId", "0"))] = band
        res = _float(_opt_text(info, "RESOLUTION"))
        if res is not None:
            resolutions[band] = int(res)
        central = _float(_opt_text(info, "CENTRAL"))
        if central is not None:
            wavelengths[band] = central
    offsets: dict[str, float] = {}
    for tag in ("RADIO_ADD_OFFSET", "BOA_ADD_OFFSET"):
        for e in _all(root, tag):
            ident = e.get("band_id", e.get("bandId", ""))
            if ident.isdigit() and int(ident) in by_id and (e.text or "").strip():
                offsets[by_id[int(ident)]] = float((e.text or "").strip())

    granule_elems = _all(root, "Granule") or _all(root, "Granules")
    image_files = tuple((e.text or "").strip() for e in _all(root, "IMAGE_FILE") if e.text)
    if not image_files:
        raise SafeError("its product metadata lists no IMAGE_FILE")
    return ProductMetadata(
        product_uri=_text(root, "PRODUCT_URI"),
        product_type=product_type,
        level=level,
        processing_baseline=baseline,
        spacecraft=_text(root, "SPACECRAFT_NAME"),
        start_time=start,
        datatake_sensing_start=_time(_opt_text(root, "DATATAKE_SENSING_START")),
        relative_orbit=int(orbit) if orbit and orbit.isdigit() else None,
        orbit_direction=_opt_text(root, "SENSING_ORBIT_DIRECTION") or "",
        cloud_cover=_float(_opt_text(root, "Cloud_Coverage_Assessment")),
        quantification=quant,
        offsets=offsets,
        resolutions=resolutions or dict(NATIVE_RESOLUTION),
        wavelengths=wavelengths,
        image_files=image_files,
        image_format=(granule_elems[0].get("imageFormat", "") if granule_elems else "")
        or "JPEG2000",
        granules=tuple(g.get("granuleIdentifier", "") for g in granule_elems),
    )


def parse_tile(xml: bytes | str) -> TileMetadata:
    """Parse a granule's ``MTD_TL.xml``.

    Parameters
    ----------
    xml
        The file's bytes (or text).

    Returns
    -------
    TileMetadata

    Raises
    ------
    SafeError
        Not a Sentinel-2 tile metadata file, or its CRS or geoposition is missing.
    """
    root = _parse(xml, "granule metadata MTD_TL.xml")
    if not re.search(r"Level-(1C|2A)_Tile_ID", _local(root.tag)):
        raise SafeError(
            f"its granule metadata root is <{_local(root.tag)}>, not a Sentinel-2 tile "
            "(Level-1C_Tile_ID / Level-2A_Tile_ID)"
        )
    tile_id = _text(root, "TILE_ID")
    code = _text(root, "HORIZONTAL_CS_CODE", "HORIZONTAL_CS_CODE (the tile's CRS)")
    m = re.fullmatch(r"EPSG:(\d+)", code.strip(), re.IGNORECASE)
    if not m:
        raise SafeError(f"its HORIZONTAL_CS_CODE {code!r} is not an EPSG code")
    sizes: dict[int, tuple[int, int]] = {}
    for e in _all(root, "Size"):
        nrows, ncols = _opt_text(e, "NROWS"), _opt_text(e, "NCOLS")
        if e.get("resolution") and nrows and ncols:
            sizes[int(float(e.get("resolution", "0")))] = (int(nrows), int(ncols))
    geopositions: dict[int, Geoposition] = {}
    for e in _all(root, "Geoposition"):
        res = int(float(e.get("resolution", "0")))
        values = [_float(_opt_text(e, k)) for k in ("ULX", "ULY", "XDIM", "YDIM")]
        if res in sizes and all(v is not None for v in values):
            ulx, uly, xdim, ydim = (float(v) for v in values if v is not None)
            geopositions[res] = Geoposition(res, ulx, uly, xdim, ydim, *sizes[res])
    if not geopositions:
        raise SafeError("its granule metadata has no Geoposition/Size of any resolution")
    sun = _first(root, "Mean_Sun_Angle")
    mgrs = _MGRS.search(tile_id)
    return TileMetadata(
        tile_id=tile_id,
        mgrs_tile=mgrs.group(1) if mgrs else "",
        epsg=int(m.group(1)),
        cs_name=_opt_text(root, "HORIZONTAL_CS_NAME") or "",
        sensing_time=_time(_opt_text(root, "SENSING_TIME")),
        geopositions=geopositions,
        sun_zenith=None if sun is None else _float(_opt_text(sun, "ZENITH_ANGLE")),
        sun_azimuth=None if sun is None else _float(_opt_text(sun, "AZIMUTH_ANGLE")),
    )
