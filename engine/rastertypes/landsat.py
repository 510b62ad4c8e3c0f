"""The Landsat raster types: ``Landsat 8`` (Landsat 8 and 9 OLI/TIRS) and ``Landsat 7 ETM+``.

A product is given as its folder, its MTL file (``*_MTL.txt``, ``.json`` or ``.xml``) or
its archive (``.tar``, ``.tar.gz``, read in place through GDAL's ``/vsitar/``). The MTL
(see :mod:`engine.rastertypes.mtl`) names the band files; each band file present becomes
one :class:`SourcePart` named after the band (``B4``, ``SR_B4``, ``QA_PIXEL`` ...), and the
image id comes from the product id, so the three MTL encodings of one product, or its
folder and its archive, are one image.

``rasterTypeParameters.productType`` (or ``processingTemplate``) picks the bands:
"Multispectral" (default: every band but the 15 m panchromatic B8), "Panchromatic" (B8
alone) or "All" (both, the pan band as a second image of group "panchromatic": it has its
own grid). Metadata only, no pixels, is read here.
"""

from __future__ import annotations

import os
import re
import tarfile
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import lru_cache
from pathlib import PurePosixPath
from typing import Any
from xml.sax.saxutils import escape

import rasterio
from rasterio.errors import RasterioIOError

from engine.errors import ImageError, RequestError
from engine.grid import Grid, as_crs
from engine.rastertypes.base import ImageSource, SourcePart, image_id_for
from engine.rastertypes.mtl import MtlError, MtlMetadata, parse_mtl

LANDSAT_8 = "Landsat 8"
LANDSAT_7 = "Landsat 7 ETM+"
# What a directory walk keeps for these types: the metadata files and product archives.
PATTERNS = ("*_MTL.txt", "*_MTL.json", "*_MTL.xml", "L*.tar", "L*.tar.gz", "L*.tgz")
PRODUCT_TYPES = ("Multispectral", "Panchromatic", "All")
PAN_BAND = "B8"
PAN_GROUP = "panchromatic"
MS_GROUP = "multispectral"
# QA_PIXEL, BQA and SR_QA_AEROSOL mark fill with the value 1 (bit 0 alone), untagged.
QA_FILL = 1.0

_MTL_NAME = re.compile(r"_MTL\.(txt|json|xml)$", re.IGNORECASE)
_ARCHIVE = re.compile(r"\.(tar|tar\.gz|tgz)$", re.IGNORECASE)
_MTL_ORDER = {"txt": 0, "json": 1, "xml": 2}
# Landsat file names: LC08_L2SP_... (collections) and LC81060712016134LGN00 (pre-collection)
_LANDSAT_STEM = re.compile(r"^L[COTEM](0[4-9]|[4-9])", re.IGNORECASE)


# -- where the product's files are -----------------------------------------------------------


@dataclass(frozen=True)
class _Product:
    """A product folder or archive: its file names and how to read them.

    ``root`` is a local folder, or a local ``.tar``/``.tar.gz`` archive with ``prefix`` the
    member folder of the product inside it.
    """

    root: str
    prefix: str = ""
    archive: bool = False

    def names(self) -> list[str]:
        """The file names (no folders) of the product."""
        if not self.archive:
            return sorted(os.listdir(self.root)) if os.path.isdir(self.root) else []
        return sorted(_members(self.root).get(self.prefix, {}))

    def read_text(self, name: str) -> str:
        if not self.archive:
            with open(os.path.join(self.root, name), encoding="utf-8", errors="replace") as fh:
                return fh.read()
        member = _members(self.root)[self.prefix][name]
        with tarfile.open(self.root) as tar:
            data = tar.extractfile(member)
            if data is None:
                raise OSError(f"{member} is not a regular file")
            return data.read().decode("utf-8", errors="replace")

    def gdal_path(self, name: str) -> str:
        if not self.archive:
            return os.path.join(self.root, name)
        return f"/vsitar/{self.root}/{_members(self.root)[self.prefix][name]}"


def _members(archive: str) -> dict[str, dict[str, str]]:
    """Member folder -> {file name: member path} of a tar archive.

    Listing a .tar.gz decompresses all of it, so a listing is kept while the archive's size
    and modification time stay the same.
    """
    st = os.stat(archive)
    return _listing(archive, st.st_size, st.st_mtime_ns)


@lru_cache(maxsize=64)
def _listing(archive: str, size: int, mtime_ns: int) -> dict[str, dict[str, str]]:
    out: dict[str, dict[str, str]] = {}
    with tarfile.open(archive) as tar:
        for m in tar.getmembers():
            if m.isfile():
                p = PurePosixPath(m.name)
                out.setdefault(_folder(p), {})[p.name] = m.name
    return out


def _folder(member: PurePosixPath) -> str:
    """The folder of an archive member, "" at the top."""
    parent = str(member.parent)
    return "" if parent == "." else parent


def _locate(uri: str, gdal_path: str) -> tuple[_Product, str]:
    """The product holding the input and the name of its MTL file."""
    if gdal_path.startswith("/vsitar/"):
        inner = gdal_path[len("/vsitar/") :]
        m = re.search(r"\.(tar\.gz|tgz|tar)(/|$)", inner, re.IGNORECASE)
        if m is None or inner.startswith("/vsi"):
            raise ImageError(uri, "Landsat products are read from local folders and archives")
        archive, member = inner[: m.end(1)], inner[m.end() :]
        if not os.path.isfile(archive):
            raise ImageError(uri, "archive not found; check the path")
        folder = _folder(PurePosixPath(member)) if member else ""
        product = _Product(archive, folder, archive=True)
        if member and _MTL_NAME.search(member):
            return product, PurePosixPath(member).name
        return _with_mtl(uri, product) if member == "" else _not_mtl(uri, member)
    if gdal_path.startswith("/vsi"):
        raise ImageError(
            uri,
            "Landsat products are read from local folders and .tar/.tar.gz archives;"
            " copy the product to a local or mounted folder",
        )
    if os.path.isdir(gdal_path):
        return _with_mtl(uri, _Product(gdal_path))
    if not os.path.exists(gdal_path):
        raise ImageError(uri, "file not found; check the path")
    if _ARCHIVE.search(gdal_path):
        try:
            members = _members(gdal_path)
        except (tarfile.TarError, OSError) as exc:
            raise ImageError(uri, f"cannot be read as a tar archive ({exc})") from None
        mtl_dirs = [d for d, files in members.items() if any(_MTL_NAME.search(f) for f in files)]
        if len(mtl_dirs) != 1:
            what = "no *_MTL.txt/.json/.xml" if not mtl_dirs else "several products"
            raise ImageError(uri, f"the archive holds {what}; give one Landsat product archive")
        return _with_mtl(uri, _Product(gdal_path, mtl_dirs[0], archive=True))
    if _MTL_NAME.search(gdal_path):
        return _Product(os.path.dirname(gdal_path)), os.path.basename(gdal_path)
    return _not_mtl(uri, gdal_path)


def _with_mtl(uri: str, product: _Product) -> tuple[_Product, str]:
    mtls = [n for n in product.names() if _MTL_NAME.search(n)]
    if not mtls:
        raise ImageError(
            uri, "holds no Landsat metadata (*_MTL.txt, .json or .xml); give a Landsat product"
        )
    mtls.sort(key=lambda n: _MTL_ORDER[_MTL_NAME.search(n).group(1).lower()])  # type: ignore[union-attr]
    return product, mtls[0]


def _not_mtl(uri: str, path: str) -> tuple[_Product, str]:
    name = PurePosixPath(path).name
    if _LANDSAT_STEM.match(name) and re.search(r"\.tiff?$", name, re.IGNORECASE):
        raise ImageError(
            uri,
            "is one band file of a Landsat product; give the product's *_MTL.txt, its folder"
            " or its archive",
        )
    raise ImageError(
        uri,
        "is not a Landsat product (give a *_MTL.txt/.json/.xml file, a product folder or archive)",
    )


def read_metadata(uri: str, gdal_path: str) -> tuple[_Product, MtlMetadata]:
    """Find and parse the MTL of the product at ``uri``; ImageError when there is none."""
    product, mtl_name = _locate(uri, gdal_path)
    try:
        text = product.read_text(mtl_name)
    except (OSError, KeyError, tarfile.TarError) as exc:
        raise ImageError(uri, f"cannot read {mtl_name} ({exc})") from None
    try:
        return product, parse_mtl(text)
    except MtlError as exc:
        raise ImageError(uri, f"{mtl_name} {exc}") from None


# -- parameters --------------------------------------------------------------------------------


def product_type(params: Mapping[str, Any] | None) -> str:
    """``productType`` (or ``processingTemplate``), canonical; RequestError when unknown."""
    params = params or {}
    key = "productType" if params.get("productType") is not None else "processingTemplate"
    raw = params.get(key)
    if raw is None or raw == "":
        return "Multispectral"
    found = {p.lower(): p for p in PRODUCT_TYPES}.get(str(raw).strip().lower())
    if found is None:
        raise RequestError(
            f"rasterType.rasterTypeParameters.{key}",
            raw,
            "is not a Landsat product type",
            f"use one of: {', '.join(PRODUCT_TYPES)}",
        )
    return found


# -- probing -------------------------------------------------------------------------------------


def family(meta: MtlMetadata) -> str | None:
    """The raster type that reads this product, or None (TM, MSS: not supported)."""
    if meta.number in (8, 9):
        return LANDSAT_8
    if meta.number == 7:
        return LANDSAT_7
    return None


def describe(meta: MtlMetadata) -> str:
    """``a Landsat 8 Collection 2 Level-2 product (L2SP, LC08_L2SP_...)``."""
    mission = f"Landsat {meta.number}" + (" ETM+" if meta.number == 7 else "")
    collection = (
        f"Collection {meta.collection_number}" if meta.collection_number else "pre-collection"
    )
    digit = meta.processing_level[1:2]
    level = f" Level-{digit}" if digit.isdigit() else ""
    return f"a {mission} {collection}{level} product ({meta.processing_level}, {meta.product_id})"


def probe_product(
    raster_type: str,
    uri: str,
    gdal_path: str,
    name: str,
    params: Mapping[str, Any] | None = None,
) -> list[ImageSource]:
    """The image(s) of one Landsat product: one, or two for productType "All"."""
    kind = product_type(params)
    product, meta = read_metadata(uri, gdal_path)
    return _images(raster_type, uri, product, meta, kind)


def probe_products(
    raster_type: str, refs: Sequence[Any], params: Mapping[str, Any] | None = None
) -> list[list[ImageSource] | Exception]:
    """Every source ref's images, each product probed once: a folder holding the .txt,
    .json and .xml of a product (or the folder and its MTL) gives its images, or its
    failure, for its first ref and nothing for the others. Metadata reads run in threads."""
    kind = product_type(params)  # a bad value is a request error, before any work

    def located(ref: Any) -> tuple[_Product, MtlMetadata] | Exception:
        try:
            return read_metadata(ref.uri, ref.gdal_path)
        except Exception as exc:  # this product fails alone (ingest words the unexpected)
            return exc

    with ThreadPoolExecutor(max_workers=8) as pool:
        found = list(pool.map(located, refs))
    first: dict[tuple[str, str, str], int] = {}
    for i, f in enumerate(found):
        if not isinstance(f, Exception):
            first.setdefault((f[0].root, f[0].prefix, f[1].product_id), i)

    def one(i: int) -> list[ImageSource] | Exception:
        f = found[i]
        if isinstance(f, Exception):
            return f
        if first[(f[0].root, f[0].prefix, f[1].product_id)] != i:
            return []  # another ref of this product answers for it
        try:
            return _images(raster_type, refs[i].uri, f[0], f[1], kind)
        except Exception as exc:  # this product fails alone
            return exc

    with ThreadPoolExecutor(max_workers=8) as pool:
        return list(pool.map(one, range(len(refs))))


def _images(
    raster_type: str, uri: str, product: _Product, meta: MtlMetadata, kind: str
) -> list[ImageSource]:
    found = family(meta)
    if found != raster_type:
        fix = f'use rasterTypeName "{found}"' if found else "no raster type reads it yet"
        raise ImageError(uri, f"is {describe(meta)}, not a {raster_type} product; {fix}")
    bands = list(meta.band_files)
    present = set(product.names())
    missing = [b for b in bands if meta.band_files[b] not in present]
    if len(missing) == len(bands):
        raise ImageError(
            uri, _absent(meta, bands) + "; give the complete product folder or archive"
        )
    wanted = {
        "Multispectral": [(MS_GROUP, [b for b in bands if b != PAN_BAND])],
        "Panchromatic": [(PAN_GROUP, [PAN_BAND] if PAN_BAND in bands else [])],
        "All": [(MS_GROUP, [b for b in bands if b != PAN_BAND]), (PAN_GROUP, [PAN_BAND])],
    }[kind]
    images = []
    for group, names in wanted:
        names = [b for b in names if b in meta.band_files]
        if not names:
            if kind == "All":
                continue
            raise ImageError(
                uri,
                f"has no {group} band ({meta.processing_level} products have none);"
                " use productType Multispectral",
            )
        here = [b for b in names if b not in missing]
        if not here:
            raise ImageError(uri, _absent(meta, names))
        images.append(_image(raster_type, uri, product, meta, group, here, names, kind))
    return images


def _absent(meta: MtlMetadata, bands: list[str]) -> str:
    return (
        f"the MTL names band files that are not there: {', '.join(bands)}"
        f" ({meta.band_files[bands[0]]}{', ...' if len(bands) > 1 else ''})"
    )


def _image(
    raster_type: str,
    uri: str,
    product: _Product,
    meta: MtlMetadata,
    group: str,
    bands: list[str],
    named: list[str],
    kind: str,
) -> ImageSource:
    parts = [_part(uri, product, meta, band) for band in bands]
    image_name = meta.product_id if group == MS_GROUP else f"{meta.product_id}_{group}"
    key = f"landsat:{meta.product_id}:{group}"  # the product, not the file, names the image
    missing = [b for b in named if b not in bands]
    extra: dict[str, Any] = {
        "spacecraft": meta.spacecraft,
        "wrs_path": meta.wrs_path,
        "wrs_row": meta.wrs_row,
        "processing_level": meta.processing_level,
        "collection_number": meta.collection_number,
        "collection_category": meta.collection_category,
        "cloud_cover_land": meta.cloud_cover_land,
        "landsat_product_id": meta.product_id,
        "landsat_scene_id": meta.scene_id,
        "missing_bands": ",".join(missing),
        "band_descriptions": [f"{b}: {meta.quantity(b)}" if meta.quantity(b) else b for b in bands],
    }
    return ImageSource(
        image_id=image_id_for(raster_type, [key], image_name),
        name=image_name,
        source_uris=[product.root],  # the product folder or archive, whichever MTL was named
        raster_type=raster_type,
        parts=parts,
        product_name=meta.processing_level,
        sensor=f"{meta.spacecraft.replace('_', ' ').title()} {meta.sensor}",
        group=group,
        acquisition_time=meta.acquisition_time,
        cloud_cover=meta.cloud_cover,
        sun_elevation=meta.sun_elevation,
        sun_azimuth=meta.sun_azimuth,
        scale_offsets=[meta.scale_offset(b) for b in bands],
        extra=extra,
    )


def _is_qa(band: str) -> bool:
    return band == "BQA" or band.startswith("QA_") or "_QA" in band


def _part(uri: str, product: _Product, meta: MtlMetadata, band: str) -> SourcePart:
    """One band file as a part: its own grid, type and nodata, read from the file header.

    Landsat marks fill in the QA bits rather than a nodata tag for some layers: QA_PIXEL,
    BQA and SR_QA_AEROSOL fill is the value 1 (bit 0 alone). QA_RADSAT and SR_CLOUD_QA have no
    fill value at all (0 is data), so they are read through a VRT whose mask is QA_PIXEL's
    fill bit: their fill pixels become nodata, and the footprint stays the scene's data.
    """
    file_name = meta.band_files[band]
    path = product.gdal_path(file_name)
    grid, dtype, nodata = _header(uri, path, file_name)
    if nodata is None and band in _FILL_ONE:
        nodata = QA_FILL
    elif nodata is None and band in _MASKED_BY_QA_PIXEL and "QA_PIXEL" in meta.band_files:
        qa_name = meta.band_files["QA_PIXEL"]
        if qa_name in product.names():
            qa_path = product.gdal_path(qa_name)
            if _header(uri, qa_path, qa_name)[0] == grid:
                path = _masked_vrt(path, qa_path, grid, dtype)
    return SourcePart(
        path=path,
        band_indexes=(1,),
        band_names=(band,),
        grid=grid,
        dtype=dtype,
        nodata=None if nodata is None else float(nodata),
        resampling="nearest" if _is_qa(band) else None,
    )


_FILL_ONE = frozenset({"QA_PIXEL", "BQA", "SR_QA_AEROSOL"})
_MASKED_BY_QA_PIXEL = frozenset({"QA_RADSAT", "SR_CLOUD_QA"})


def _header(uri: str, path: str, file_name: str) -> tuple[Grid, str, float | None]:
    try:
        with rasterio.open(path) as ds:
            if ds.crs is None or ds.transform.is_identity:
                raise ImageError(uri, f"band file {file_name} is not georeferenced")
            return (
                Grid(as_crs(ds.crs), ds.transform, (ds.height, ds.width)),
                ds.dtypes[0],
                ds.nodata,
            )
    except RasterioIOError as exc:
        raise ImageError(uri, f"band file {file_name} cannot be read ({exc})") from None


_GDAL_TYPES = {"uint8": "Byte", "uint16": "UInt16", "int16": "Int16", "uint32": "UInt32",
               "int32": "Int32", "float32": "Float32"}  # fmt: skip


def _masked_vrt(path: str, qa_path: str, grid: Grid, dtype: str) -> str:
    """A VRT (an XML string GDAL opens as a dataset) of the band at ``path`` whose mask is
    "QA_PIXEL is not fill" (the lookup table sends the fill value 1 to 0, all else to 255)."""
    t = grid.transform
    return (
        f'<VRTDataset rasterXSize="{grid.width}" rasterYSize="{grid.height}">'
        f"<SRS>{escape(grid.crs_wkt)}</SRS>"
        f"<GeoTransform>{t.c!r}, {t.a!r}, {t.b!r}, {t.f!r}, {t.d!r}, {t.e!r}</GeoTransform>"
        f'<VRTRasterBand dataType="{_GDAL_TYPES[dtype]}" band="1"><SimpleSource>'
        f'<SourceFilename relativeToVRT="0">{escape(path)}</SourceFilename>'
        "<SourceBand>1</SourceBand></SimpleSource></VRTRasterBand>"
        '<MaskBand><VRTRasterBand dataType="Byte"><ComplexSource>'
        f'<SourceFilename relativeToVRT="0">{escape(qa_path)}</SourceFilename>'
        "<SourceBand>1</SourceBand><LUT>0:255,1:0,2:255</LUT></ComplexSource>"
        "</VRTRasterBand></MaskBand></VRTDataset>"
    )


# -- recognising a product for the wrong-pick message -------------------------------------------


def recognise_for(raster_type: str, uri: str, gdal_path: str) -> str | None:
    """What the input is, when it is a product of ``raster_type``; else None. Cheap: a
    name test first, then the MTL alone is read."""
    name = PurePosixPath(gdal_path.rstrip("/")).name
    local_dir = not gdal_path.startswith("/vsi") and os.path.isdir(gdal_path)
    # an archive is opened only when its name is a Landsat one (listing a .tar.gz reads it all)
    if not (_MTL_NAME.search(name) or _LANDSAT_STEM.match(name) or local_dir):
        return None
    try:
        _, meta = read_metadata(uri, gdal_path)
    except ImageError:
        return None
    return describe(meta) if family(meta) == raster_type else None
