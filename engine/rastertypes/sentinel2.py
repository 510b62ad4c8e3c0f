"""The ``Sentinel-2`` raster type: one L1C or L2A SAFE product → one image of named bands.

Accepted inputs, each read in place: the ``.SAFE`` directory, its product metadata file
(``MTD_MSIL1C.xml`` / ``MTD_MSIL2A.xml``), or a ``.zip`` of the SAFE (also
``a.zip!/<product>.SAFE``); the band files of a zip are read by GDAL through ``/vsizip/``.
A directory of products yields one source per product (:data:`PATTERNS`), and the image id
comes from the product name, so a product named twice (its folder and its MTD file, or its
zip) is ingested once.

Strategy: the metadata (engine/rastertypes/safe.py) names the band files and says what the
pixels mean; the band files themselves are opened (headers only) for their grids, because
GDAL warps them with their own georeferencing. Each band is a :class:`SourcePart` on its
native 10/20/60 m grid (L2A: the file of the band's native resolution among R10m/R20m/R60m;
SCL, AOT and WVP from R20m, where Sen2Cor classifies); the planner brings them onto one
collection grid. TCI (an 8-bit rendering) is left out.
"""

from __future__ import annotations

import os
import re
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import rasterio
from rasterio.errors import RasterioIOError

from engine.errors import ImageError
from engine.grid import Grid, as_crs
from engine.rastertypes import safe
from engine.rastertypes.base import ImageSource, SourcePart, image_id_for

NAME = "Sentinel-2"
# Files a directory walk keeps (.SAFE folders are always kept whole by engine.sources).
PATTERNS = ("MTD_MSIL1C.xml", "MTD_MSIL2A.xml", "S2*_MSIL1C_*.zip", "S2*_MSIL2A_*.zip")

_MTD = re.compile(r"^MTD_MSIL(1C|2A)\.xml$", re.IGNORECASE)
_PRODUCT_NAME = re.compile(r"S2[A-D]_MSIL(1C|2A)_", re.IGNORECASE)
_ZIP = re.compile(r"^(.*?\.zip)(?:/(.*))?$", re.IGNORECASE)
_L2A_EXTRA = ("SCL", "AOT", "WVP")
_L2A_EXTRA_RESOLUTION = 20  # Sen2Cor's scene classification (and its AOT/WVP) resolution
_DESCRIPTIONS = {
    "SCL": "Scene classification (Sen2Cor)",
    "AOT": "Aerosol optical thickness at 550 nm",
    "WVP": "Water vapour (cm)",
}
# The product metadata of the multi-tile SAFE format made until December 2016.
_OLD_MTD = re.compile(r"^S2[A-D]_OPER_MTD_SAFL(1C|2A)_.*\.xml$", re.IGNORECASE)
_OLD_FORMAT = (
    "is a Sentinel-2 product in the multi-tile SAFE format of before December 2016, which is"
    " not supported: download the product again from the Copernicus archive, which serves it"
    " per tile in the current (compact) format"
)
_HOW = "give a .SAFE directory, its MTD_MSIL1C.xml / MTD_MSIL2A.xml, or a .zip of the SAFE"


@dataclass(frozen=True)
class _Product:
    """Where a SAFE product's files are: a local directory, or a folder in a local zip."""

    root: str  # the SAFE directory, or the zip file
    prefix: str  # "" for a directory; "<product>.SAFE/" (or "") inside a zip
    mtd: str  # the product metadata file name
    names: frozenset[str] = frozenset()  # a zip's members

    @property
    def zipped(self) -> bool:
        return self.root.lower().endswith(".zip") and os.path.isfile(self.root)

    def exists(self, rel: str) -> bool:
        if self.zipped:
            return self.prefix + rel in self.names
        return os.path.isfile(os.path.join(self.root, rel))

    def read(self, rel: str) -> bytes:
        if self.zipped:
            with zipfile.ZipFile(self.root) as zf:
                return zf.read(self.prefix + rel)
        with open(os.path.join(self.root, rel), "rb") as fh:
            return fh.read()

    def gdal_path(self, rel: str) -> str:
        if self.zipped:
            return f"/vsizip/{self.root}/{self.prefix}{rel}"
        return os.path.join(self.root, rel)

    def shown(self, rel: str) -> str:
        return f"{self.prefix}{rel}" if self.zipped else rel


def recognise(uri: str, gdal_path: str) -> str | None:
    """What Sentinel-2 input ``uri`` looks like ("a Sentinel-2 L2A product"), else None.

    Decided from names alone (the product name, the MTD file, or a SAFE folder's MTD file),
    so it is cheap enough for telling users they picked the wrong raster type.
    """
    for text in (gdal_path.rstrip("/"), uri.rstrip("/")):
        base = os.path.basename(text)
        m = _MTD.match(base) or _PRODUCT_NAME.search(base)
        if m:
            return f"a Sentinel-2 L{m.group(1).upper()} product"
    if os.path.isdir(gdal_path):
        for level in ("1C", "2A"):
            if os.path.isfile(os.path.join(gdal_path, f"MTD_MSIL{level}.xml")):
                return f"a Sentinel-2 L{level} product"
    return None


def probe(
    uri: str, gdal_path: str, name: str, params: Mapping[str, Any] | None = None
) -> ImageSource:
    """Describe one Sentinel-2 product as an :class:`ImageSource` (metadata and headers only).

    Parameters
    ----------
    uri, gdal_path, name
        The source reference (engine.sources.SourceRef).
    params
        rasterTypeParameters (none are used by this type).

    Returns
    -------
    ImageSource
        One part per band file; scale/offset turning DN into reflectance (AOT and WVP into
        their physical values); the product's time, cloud cover, sun angles and tile.

    Raises
    ------
    ImageError
        The input is not a readable Sentinel-2 L1C/L2A product; the reason names the file.
    """
    product = _locate(uri, gdal_path)
    meta = _parse(uri, product, product.mtd, safe.parse_product)
    if len(meta.granules) > 1:
        raise ImageError(uri, f"holds {len(meta.granules)} granules: it {_OLD_FORMAT}")
    granule = _granule_dir(uri, meta)
    tile = _parse(uri, product, f"{granule}/MTD_TL.xml", safe.parse_tile)
    parts, scales, descriptions = _band_parts(uri, product, meta, tile)
    image_name = meta.name
    return ImageSource(
        image_id=image_id_for(NAME, [meta.product_uri], image_name),
        name=image_name,
        source_uris=[uri],
        raster_type=NAME,
        parts=parts,
        product_name=meta.level,
        sensor="MSI",
        acquisition_time=meta.start_time,
        cloud_cover=meta.cloud_cover,
        sun_elevation=tile.sun_elevation,
        sun_azimuth=tile.sun_azimuth,
        scale_offsets=scales,
        extra={
            "tile_id": tile.mgrs_tile,
            "processing_baseline": meta.processing_baseline,
            "relative_orbit": meta.relative_orbit,
            "spacecraft": meta.spacecraft,
            "orbit_direction": meta.orbit_direction,
            "granule_id": tile.tile_id,
            "sensing_time": tile.sensing_time,
            "band_descriptions": descriptions,
        },
    )


# -- locating the product ------------------------------------------------------------


def _not_sentinel2(uri: str, what: str) -> ImageError:
    return ImageError(uri, f"is not a Sentinel-2 product ({what}); {_HOW}")


def _locate(uri: str, gdal_path: str) -> _Product:
    """The product behind a source reference: its directory or zip, and its MTD file."""
    if gdal_path.lower().startswith("/vsizip/"):
        m = _ZIP.match(gdal_path[len("/vsizip/") :])
        if m and os.path.isfile(m.group(1)):
            return _in_zip(uri, m.group(1), (m.group(2) or "").strip("/"))
    if gdal_path.startswith("/vsi"):
        raise ImageError(
            uri,
            "is a remote or archived path; Sentinel-2 products are read from a local .SAFE"
            " directory, MTD file or .zip: download the product (or mount its bucket) first",
        )
    if not os.path.exists(gdal_path):
        raise ImageError(
            uri, "file not found; check the path and that it is reachable from the workers"
        )
    if os.path.isdir(gdal_path):
        found = [
            f
            for f in ("MTD_MSIL1C.xml", "MTD_MSIL2A.xml")
            if os.path.isfile(os.path.join(gdal_path, f))
        ]
        if not found and any(_OLD_MTD.match(f) for f in os.listdir(gdal_path)):
            raise ImageError(uri, _OLD_FORMAT)
        if not found:
            raise _not_sentinel2(uri, "a directory without MTD_MSIL1C.xml or MTD_MSIL2A.xml")
        return _Product(gdal_path, "", found[0])
    base = os.path.basename(gdal_path)
    if base.lower().endswith(".zip"):
        return _in_zip(uri, gdal_path, "")
    if _OLD_MTD.match(base):
        raise ImageError(uri, _OLD_FORMAT)
    if base.lower().endswith(".xml"):
        return _Product(os.path.dirname(gdal_path), "", base)
    kind = os.path.splitext(base)[1] or "a file without extension"
    raise _not_sentinel2(uri, f"a {kind} file" if kind.startswith(".") else kind)


def _in_zip(uri: str, archive: str, member: str) -> _Product:
    try:
        with zipfile.ZipFile(archive) as zf:
            names = frozenset(zf.namelist())
    except (zipfile.BadZipFile, OSError) as exc:
        raise ImageError(uri, f"cannot be read as a zip archive ({exc})") from None
    if member.lower().endswith(".xml"):
        folder, _, mtd = member.rpartition("/")
        return _Product(archive, f"{folder}/" if folder else "", mtd, names)
    start = f"{member}/" if member else ""
    found = sorted(
        n
        for n in names
        if n.startswith(start)
        and n.count("/") - start.count("/") <= 1
        and _MTD.match(n.rsplit("/", 1)[-1])
    )
    if not found:
        raise _not_sentinel2(uri, "a zip holding no MTD_MSIL1C.xml or MTD_MSIL2A.xml")
    if len(found) > 1:
        folders = ", ".join(n.rsplit("/", 1)[0] for n in found[:3])
        raise ImageError(
            uri,
            f"holds {len(found)} Sentinel-2 products ({folders}); give each one as"
            " archive.zip!/<product>.SAFE",
        )
    folder, _, mtd = found[0].rpartition("/")
    return _Product(archive, f"{folder}/" if folder else "", mtd, names)


def _parse(uri: str, product: _Product, rel: str, parser: Any) -> Any:
    if not product.exists(rel):
        raise ImageError(uri, f"has no {product.shown(rel)}; is the product complete?")
    try:
        return parser(product.read(rel))
    except safe.SafeError as exc:
        raise ImageError(uri, f"{product.shown(rel)}: {exc}; {_HOW}") from None


def _granule_dir(uri: str, meta: safe.ProductMetadata) -> str:
    """The granule folder (``GRANULE/<id>``) the band files of the product live in."""
    folders = {f.split("/IMG_DATA/", 1)[0] for f in meta.image_files if "/IMG_DATA/" in f}
    if len(folders) != 1:
        raise ImageError(
            uri,
            "its product metadata does not name band files as GRANULE/<granule>/IMG_DATA/...:"
            f" it {_OLD_FORMAT}",
        )
    return folders.pop()


# -- bands ---------------------------------------------------------------------------


def _choose_files(meta: safe.ProductMetadata) -> dict[str, tuple[str, int]]:
    """Each band's file (SAFE-relative, no extension) at its native resolution, in order."""
    available: dict[str, dict[int, str]] = {}
    for rel in meta.image_files:
        found = safe.band_of_file(rel)
        if found is None or found[0] == "TCI":
            continue
        band, res = found
        res = res if res is not None else meta.resolutions.get(band, 0)
        available.setdefault(band, {})[res] = rel
    chosen = {}
    for band in (*safe.BAND_ORDER, *_L2A_EXTRA):
        files = available.get(band)
        if not files:
            continue
        want = _L2A_EXTRA_RESOLUTION if band in _L2A_EXTRA else meta.resolutions.get(band, 0)
        res = want if want in files else min(files)  # else the finest one offered
        chosen[band] = (files[res], res)
    return chosen


def _band_file(uri: str, product: _Product, meta: safe.ProductMetadata, rel: str) -> str:
    """The band file's SAFE-relative path with its extension (JPEG2000, or GeoTIFF)."""
    exts = (".tif", ".jp2") if meta.image_format.lower() == "geotiff" else (".jp2", ".tif")
    for ext in exts:
        if product.exists(rel + ext):
            return rel + ext
    raise ImageError(
        uri,
        f"band file {product.shown(rel)}{exts[0]} (or {exts[1]}) is missing; is the product"
        " complete?",
    )


def _band_parts(
    uri: str, product: _Product, meta: safe.ProductMetadata, tile: safe.TileMetadata
) -> tuple[list[SourcePart], list[tuple[float, float] | None], list[str]]:
    chosen = _choose_files(meta)
    if not any(b in chosen for b in safe.BAND_ORDER):
        raise ImageError(uri, f"its {product.mtd} lists no band file (B01 ... B12)")
    parts, scales, descriptions = [], [], []
    for band, (stem, res) in chosen.items():
        rel = _band_file(uri, product, meta, stem)
        parts.append(_part(uri, product, rel, band, res, tile))
        scales.append(_scale_offset(meta, band))
        wavelength = meta.wavelengths.get(band)
        descriptions.append(
            _DESCRIPTIONS.get(band)
            or (f"{band}, central wavelength {wavelength:g} nm" if wavelength else band)
        )
    return parts, scales, descriptions


def _part(
    uri: str, product: _Product, rel: str, band: str, res: int, tile: safe.TileMetadata
) -> SourcePart:
    """One band file as a part, after checking it lies where MTD_TL says the tile is."""
    path = product.gdal_path(rel)
    shown = product.shown(rel)
    try:
        with rasterio.open(path) as ds:
            crs, transform, shape, dtype = ds.crs, ds.transform, ds.shape, ds.dtypes[0]
    except RasterioIOError as exc:
        raise ImageError(uri, f"band file {shown} cannot be read by GDAL ({exc})") from None
    if crs is None or crs.to_epsg() != tile.epsg:
        raise ImageError(
            uri, f"band file {shown} is in {crs or 'no CRS'}, but MTD_TL.xml says EPSG:{tile.epsg}"
        )
    grid = Grid(as_crs(crs), transform, shape)
    geo = tile.geopositions.get(res)
    if geo is not None:
        # the file may be resampled (smaller than NROWS × NCOLS), never moved
        left, bottom, right, top = grid.bounds
        tol = max(abs(transform.a), abs(transform.e)) / 2
        declared = geo.bounds
        if any(abs(a - b) > tol for a, b in zip((left, bottom, right, top), declared, strict=True)):
            raise ImageError(
                uri,
                f"band file {shown} covers {tuple(round(v, 1) for v in grid.bounds)}, but"
                f" MTD_TL.xml declares the tile at {declared}; the file does not belong to"
                " this granule",
            )
    return SourcePart(
        path=path,
        band_indexes=(1,),
        band_names=(band,),
        grid=grid,
        dtype=dtype,
        nodata=0.0,  # SPECIAL_VALUE NODATA (and SCL's SC_NODATA) is 0
        resampling="nearest" if band == "SCL" else None,
    )


def _scale_offset(meta: safe.ProductMetadata, band: str) -> tuple[float, float] | None:
    """CF (scale_factor, add_offset): value = (DN + offset) / Q = DN / Q + offset / Q."""
    if band == "SCL":
        return None  # class codes
    q = meta.quantification.get(band if band in ("AOT", "WVP") else "reflectance")
    if not q:
        return None
    return (1.0 / q, meta.offsets.get(band, 0.0) / q)
