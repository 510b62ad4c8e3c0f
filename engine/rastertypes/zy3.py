"""The ``ZY3-SASMAC`` and ``ZY3-CRESDA`` raster types: ZY-3 Level-1 scenes orthorectified
through their RPCs onto the collection grid.

A ZY-3 product is ``<base>.tif`` + ``<base>.rpb`` (or ``<base>_rpc.txt``) + ``<base>.xml``
sharing the base name ``ZY3_NAD|FWD|BWD|MUX_E<lon>_N<lat>_<yyyymmdd>_L1A<id>``. The
``.tif``, the ``.xml``, a directory holding products, a local .zip/.tar(.gz) of one product
or a member of one (``a.tar.gz!/dir/ZY3_...tif``, read in place) may be given. The types differ in
the XML layout of whoever distributed the product (no real product is public, so both are
inferred from the code of readers that parse them: a GDAL fork's ZiYuan reader and ZY-3
archiving tools):

* SASMAC (the surveying and mapping centre): root ``<sensor_corrected_metadata>``, the scene
  facts under ``<productInfo>`` (``SatelliteID``, ``SensorID``, ``OrbitID``, ``SceneID``,
  ``ProductLevel``, ``CloudPercent``, ``SunAltitude``/``SunElevation``, ``SunAzimuth``,
  ``TimeStamp/StartTime|CenterTime|EndTime``), the product id in ``processInfo/ProduceID``;
* CRESDA (the resources satellite data centre, the GaoFen/ZiYuan layout): root
  ``<ProductMetaData>`` with flat children ``SatelliteID``, ``SensorID``, ``ProductID``,
  ``SceneID``, ``OrbitID``, ``ProductLevel``, ``StartTime``/``CenterTime``/``EndTime``,
  ``CloudPercent``, ``SolarAzimuth``, ``SolarZenith`` (sun elevation = 90° − zenith).

Tag names are matched case-insensitively (readers disagree on ``productInfo`` /
``ProductInfo``), a missing element leaves its column empty, and times carry no zone in
the XML: they are read as UTC.

Pixels are placed by GDAL's RPC transformer on the ``dem`` raster-type parameter (bilinear
heights) or a constant height: ``constantZ``, else the RPC's own ``HEIGHT_OFF``, the mean
height of the ground the vendor fitted the model over. The footprint the planner uses is the
image outline located on that terrain through the RPC model (64 points per edge).
"""

from __future__ import annotations

import os
import re
import tarfile
import types
import warnings
import xml.etree.ElementTree as ET
import zipfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np
import rasterio
import shapely
from affine import Affine
from pyproj import CRS, Transformer
from rasterio.errors import NotGeoreferencedWarning, RasterioIOError
from rasterio.rpc import RPC

from engine.dem import Terrain, terrain_from_params
from engine.errors import ImageError
from engine.grid import Grid
from engine.rastertypes import rpc as rpcmod
from engine.rastertypes.base import ImageSource, SourcePart, image_id_for
from engine.rastertypes.raster_dataset import SUPPORTED_DTYPES

SASMAC = "ZY3-SASMAC"
CRESDA = "ZY3-CRESDA"
LAYOUTS = {"sensor_corrected_metadata": SASMAC, "productmetadata": CRESDA}
PATTERNS = ("zy3*.tif", "zy3*.tiff", "zy3*.tar.gz", "zy3*.tgz", "zy3*.tar", "zy3*.zip")
PRODUCT_NAME = re.compile(
    r"ZY3_(NAD|FWD|BWD|MUX)_E(-?[\d.]+)_N(-?[\d.]+)_(\d{8})_L1A(\d+)", re.IGNORECASE
)
SENSORS = ("NAD", "FWD", "BWD", "MUX")
_FOOTPRINT_POINTS = 64  # per image edge


# -- finding the product's files ----------------------------------------------------------

_ARCHIVES = (
    (".tar.gz", "/vsitar/"),
    (".tgz", "/vsitar/"),
    (".tar", "/vsitar/"),
    (".zip", "/vsizip/"),
)


def _read_local(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


@dataclass(frozen=True)
class Product:
    """The files of one ZY-3 product: the image's GDAL path, and where its XML and RPC file
    are (local paths, or member names of the archive ``read`` reads; None if absent)."""

    name: str  # the base name, ZY3_NAD_E..._L1A...
    tif: str
    xml: str | None
    rpc: str | None
    read: Callable[[str], bytes] = _read_local

    def text(self, location: str) -> str:
        return self.read(location).decode("utf-8", errors="replace")


def _match(names: Sequence[str], base: str, suffixes: Sequence[str]) -> str | None:
    """The entry of ``names`` that is ``base`` + one of ``suffixes`` (any letter case)."""
    lower = {n.lower(): n for n in names}
    for suffix in suffixes:
        hit = lower.get((base + suffix).lower())
        if hit:
            return hit
    return None


class _Archive:
    """A local .zip / .tar(.gz) holding products, read in place (GDAL: /vsizip/, /vsitar/)."""

    def __init__(self, path: str, prefix: str) -> None:
        self.path, self.prefix = path, prefix

    def names(self) -> list[str]:
        if self.prefix == "/vsizip/":
            with zipfile.ZipFile(self.path) as zf:
                return [i.filename for i in zf.infolist() if not i.is_dir()]
        with tarfile.open(self.path) as tf:
            return [m.name for m in tf.getmembers() if m.isfile()]

    def read(self, name: str) -> bytes:
        if self.prefix == "/vsizip/":
            with zipfile.ZipFile(self.path) as zf:
                return zf.read(name)
        with tarfile.open(self.path) as tf:
            f = tf.extractfile(name)
            if f is None:
                raise OSError(f"{name} is not a file in {self.path}")
            return f.read()

    def gdal_path(self, name: str) -> str:
        return f"{self.prefix}{self.path}/{name}"


def _archive_of(uri: str, gdal_path: str) -> tuple[_Archive, str | None] | None:
    """(archive, member or None) when the input is a local archive or a member of one."""
    path, member = gdal_path, None
    if gdal_path.startswith(("/vsitar/", "/vsizip/")):
        path = gdal_path[len("/vsitar/") :]
        if path.startswith("/vsi"):
            raise ImageError(
                uri, "is a remote archive; ZY-3 archives are read from local (or mounted) files"
            )
        path = path if path.startswith("/") else "/" + path
        for ext, _ in _ARCHIVES:
            cut = path.lower().find(ext + "/")
            if cut >= 0 and os.path.isfile(path[: cut + len(ext)]):
                path, member = path[: cut + len(ext)], path[cut + len(ext) + 1 :] or None
                break
    elif gdal_path.startswith("/vsi"):
        raise ImageError(
            uri, "is a remote file; ZY-3 products are read from local (or mounted) files"
        )
    for ext, prefix in _ARCHIVES:
        if path.lower().endswith(ext) and os.path.isfile(path):
            return _Archive(path, prefix), member
    return None


def locate(uri: str, gdal_path: str) -> Product:
    """The product an input names: its ``.tif`` or ``.xml`` (sidecars found by base name),
    an archive holding one product, or an archive member (``a.tar.gz!/dir/ZY3_...tif``).

    Raises
    ------
    ImageError
        The input is not a ZY-3 product file, the product has no image, or an archive holds
        none or several products.
    """
    found = _archive_of(uri, gdal_path)
    if found is None:
        if not os.path.exists(gdal_path):
            raise ImageError(
                uri, "file not found; check the path and that it is reachable from the workers"
            )
        folder = os.path.dirname(gdal_path)
        try:
            names = os.listdir(folder or ".")
        except OSError:
            names = []
        name, tif, xml, rpc = _product_files(uri, os.path.basename(gdal_path), names)
        return Product(name, os.path.join(folder, tif), _join(folder, xml), _join(folder, rpc))
    archive, member = found
    members = archive.names()
    if member is None:
        tifs = [
            n
            for n in members
            if n.lower().endswith((".tif", ".tiff")) and PRODUCT_NAME.search(os.path.basename(n))
        ]
        if len(tifs) != 1:
            held = f"holds {len(tifs)} ZY-3 images" + (f" ({', '.join(tifs)})" if tifs else "")
            fix = f"; name one as {uri}!/{tifs[0]}" if tifs else "; check that it is a ZY-3 product"
            raise ImageError(uri, held + fix)
        member = tifs[0]
    folder = os.path.dirname(member)
    here = [os.path.basename(n) for n in members if os.path.dirname(n) == folder]
    name, tif, xml, rpc = _product_files(uri, os.path.basename(member), here)
    inside = [None if p is None else f"{folder}/{p}".lstrip("/") for p in (tif, xml, rpc)]
    return Product(name, archive.gdal_path(inside[0] or tif), inside[1], inside[2], archive.read)


def _join(folder: str, name: str | None) -> str | None:
    return None if name is None else os.path.join(folder, name)


def _product_files(
    uri: str, given: str, names: Sequence[str]
) -> tuple[str, str, str | None, str | None]:
    """(base name, image, xml, rpc file) of the product whose .tif or .xml is ``given``,
    among the file ``names`` beside it."""
    base, ext = os.path.splitext(given)
    if ext.lower() == ".xml":
        tif = _match(names, base, (".tif", ".tiff"))
        if tif is None:
            raise ImageError(
                uri,
                f"is a metadata file without its image: {base}.tif is missing beside it;"
                " a ZY-3 product is <base>.tif + <base>.rpb + <base>.xml",
            )
    elif ext.lower() in (".tif", ".tiff"):
        tif = given
    else:
        raise ImageError(
            uri,
            "is not a ZY-3 product file; give the product's .tif or .xml"
            " (ZY3_NAD|FWD|BWD|MUX_E<lon>_N<lat>_<yyyymmdd>_L1A<id>), its folder or its archive",
        )
    return base, tif, _match(names, base, (".xml",)), _match(names, base, (".rpb", "_rpc.txt"))


# -- metadata -----------------------------------------------------------------------------


@dataclass
class Metadata:
    """What the XML (and the file name) say about the scene; None where nothing does."""

    layout: str | None = None
    satellite: str | None = None
    sensor: str | None = None
    product_id: str | None = None
    scene_id: str | None = None
    orbit_id: str | None = None
    product_level: str | None = None
    acquisition_time: datetime | None = None
    cloud_cover: float | None = None
    sun_elevation: float | None = None
    sun_azimuth: float | None = None


def xml_layout(text: str | bytes) -> tuple[str | None, ET.Element]:
    """The XML's layout (``ZY3-SASMAC``, ``ZY3-CRESDA`` or None) and its root element."""
    root = ET.fromstring(text)
    return LAYOUTS.get(_local(root.tag).lower()), root


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def _text(node: ET.Element | None, *names: str) -> str | None:
    """Text of the first element below ``node`` named one of ``names`` (any case)."""
    if node is None:
        return None
    wanted = {n.lower() for n in names}
    for el in node.iter():
        if _local(el.tag).lower() in wanted and el.text and el.text.strip():
            return el.text.strip()
    return None


def _child(node: ET.Element, name: str) -> ET.Element | None:
    for el in node:
        if _local(el.tag).lower() == name.lower():
            return el
    return None


def _number(text: str | None, lo: float, hi: float) -> float | None:
    try:
        value = float(text) if text is not None else None
    except ValueError:
        return None
    return value if value is not None and lo <= value <= hi else None


def parse_time(text: str | None) -> datetime | None:
    """A ZY-3 XML time as an aware UTC datetime; None if absent or unreadable.

    Accepts ``2015-01-01 02:33:45.123``, ``2015-01-01T02:33:45Z``, ``20150101023345.123``;
    an explicit offset is honoured, a bare time is taken as UTC.
    """
    if not text:
        return None
    s = text.strip().replace("T", " ").rstrip("Zz").strip()
    m = re.fullmatch(r"(\d{4})(\d{2})(\d{2})(\d{2})(\d{2})(\d{2})(\.\d+)?", s)
    if m:
        s = "{}-{}-{} {}:{}:{}{}".format(*m.groups()[:6], m.group(7) or "")
    try:
        t = datetime.fromisoformat(s)
    except ValueError:
        return None
    return t.replace(tzinfo=UTC) if t.tzinfo is None else t.astimezone(UTC)


def _mid(start: datetime | None, end: datetime | None) -> datetime | None:
    if start is None or end is None:
        return start or end
    return start + (end - start) / 2


def parse_metadata(root: ET.Element, layout: str) -> Metadata:
    """The scene facts of a ZY-3 XML in ``layout`` (see the module docstring)."""
    if layout == SASMAC:
        found = _child(root, "productInfo")
        info = root if found is None else found
        center = _text(info, "CenterTime", "AcquisitionTime", "AcquistionTime")
        when = parse_time(center) or _mid(
            parse_time(_text(info, "StartTime")), parse_time(_text(info, "EndTime"))
        )
        elevation = _number(_text(info, "SunElevation", "SunAltitude"), -90, 90)
        product_id = _text(_child(root, "processInfo"), "ProduceID") or _text(info, "ProductID")
    else:
        info = root
        when = parse_time(_text(info, "CenterTime")) or _mid(
            parse_time(_text(info, "StartTime")), parse_time(_text(info, "EndTime"))
        )
        elevation = _number(_text(info, "SunElevation", "SunAltitude"), -90, 90)
        if elevation is None:
            zenith = _number(_text(info, "SolarZenith", "SunZenith"), 0, 180)
            elevation = None if zenith is None else 90.0 - zenith
        product_id = _text(info, "ProductID")
    return Metadata(
        layout=layout,
        satellite=_text(info, "SatelliteID"),
        sensor=(_text(info, "SensorID") or "").upper() or None,
        product_id=product_id,
        scene_id=_text(info, "SceneID"),
        orbit_id=_text(info, "OrbitID"),
        product_level=_text(info, "ProductLevel"),
        acquisition_time=when,
        cloud_cover=_number(_text(info, "CloudPercent"), 0, 100),
        sun_elevation=elevation,
        sun_azimuth=_number(_text(info, "SunAzimuth", "SolarAzimuth"), -360, 360),
    )


def recognise_as(uri: str, gdal_path: str) -> tuple[str, str] | None:
    """(raster type, description) of a ZY-3 input, from its name and its XML's root, or None."""
    path = gdal_path.rstrip("/")
    if os.path.isdir(path):
        return None
    m = PRODUCT_NAME.search(os.path.basename(path))
    if not m:
        return None
    try:
        product = locate(uri, gdal_path)
        layout = xml_layout(product.read(product.xml))[0] if product.xml else None
    except (ImageError, ET.ParseError, OSError):
        layout = None
    sensor = m.group(1).upper()
    if layout is None:
        return SASMAC, f"a ZY-3 {sensor} product"
    return layout, f"a {layout} product (ZY-3 {sensor})"


# -- probing ------------------------------------------------------------------------------


def probe_product(
    uri: str, gdal_path: str, name: str, raster_type: str, terrain: Terrain | None
) -> ImageSource:
    """Describe one ZY-3 product as an :class:`ImageSource` of ``raster_type``.

    Raises
    ------
    ImageError
        Not a ZY-3 product of this type, no RPCs, an unreadable image, or a DEM that does
        not cover it; the reason says which file and how to fix it.
    """
    product = locate(uri, gdal_path)
    meta = _product_metadata(uri, product, raster_type)
    rpc, rpc_source = _rpcs(uri, product)
    try:
        with _open_l1(product.tif) as ds:
            count, dtypes, nodata = ds.count, set(ds.dtypes), ds.nodata
            width, height = ds.width, ds.height
    except RasterioIOError as exc:
        raise ImageError(uri, f"GDAL cannot read {os.path.basename(product.tif)} ({exc})") from None
    if len(dtypes) != 1 or next(iter(dtypes)) not in SUPPORTED_DTYPES:
        raise ImageError(uri, f"has unsupported band data types {sorted(dtypes)}")
    dtype = next(iter(dtypes))
    options, height_used = _terrain_options(rpc, terrain)
    footprint, grid = ground_geometry(uri, rpc, width, height, terrain, height_used)
    sensor = meta.sensor or _name_sensor(product.name)
    part = SourcePart(
        path=product.tif,
        band_indexes=tuple(range(1, count + 1)),
        band_names=band_names(sensor, count),
        grid=grid,
        dtype=dtype,
        nodata=None if nodata is None else float(nodata),
        georef="rpcs",
        warp_options=options,
        model=rpc,
    )
    files = [os.path.basename(p) for p in (product.tif, product.rpc, product.xml) if p]
    extra: dict[str, Any] = {
        "satellite": meta.satellite,
        "product_id": meta.product_id,
        "scene_id": meta.scene_id,
        "orbit_id": meta.orbit_id,
        "product_level": meta.product_level,
        "metadata_layout": meta.layout,
        "rpc_source": rpc_source,
        "product_files": files,
        "terrain": "dem" if terrain and terrain.gdal_path else f"height {height_used:g} m",
    }
    return ImageSource(
        image_id=image_id_for(raster_type, [uri], name),
        name=name,
        source_uris=[uri],
        raster_type=raster_type,
        parts=[part],
        product_name=product.name,
        sensor=f"ZY-3 {sensor}" if sensor else "ZY-3",
        acquisition_time=meta.acquisition_time,
        cloud_cover=meta.cloud_cover,
        sun_elevation=meta.sun_elevation,
        sun_azimuth=meta.sun_azimuth,
        extra=extra,
        footprint=footprint,
    )


def _open_l1(path: str) -> rasterio.DatasetReader:
    """Open a Level-1 image; it has no georeferencing of its own, so GDAL's warning is noise."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        return rasterio.open(path)


def band_names(sensor: str | None, count: int) -> tuple[str, ...]:
    """``PAN`` for the panchromatic cameras, ``B1``..``B4`` (blue, green, red, NIR) for MUX."""
    if sensor in ("NAD", "FWD", "BWD") and count == 1:
        return ("PAN",)
    if sensor == "MUX" and count == 4:
        return ("B1", "B2", "B3", "B4")
    return tuple(f"b{i}" for i in range(1, count + 1))


def _name_sensor(name: str) -> str | None:
    m = PRODUCT_NAME.search(name)
    return m.group(1).upper() if m else None


def _product_metadata(uri: str, product: Product, raster_type: str) -> Metadata:
    if product.xml is None:
        return Metadata()  # the image still orthorectifies; the columns stay empty
    try:
        layout, root = xml_layout(product.read(product.xml))
    except (ET.ParseError, OSError) as exc:
        raise ImageError(
            uri, f"its metadata {os.path.basename(product.xml)} is not valid XML ({exc})"
        ) from None
    if layout is None:
        raise ImageError(
            uri,
            f"its metadata {os.path.basename(product.xml)} (root <{_local(root.tag)}>) is neither"
            " the SASMAC (<sensor_corrected_metadata>) nor the CRESDA (<ProductMetaData>) ZY-3"
            " layout; check that it is the product's XML",
        )
    if layout != raster_type:
        raise ImageError(
            uri,
            f"this looks like a {layout} product (its XML root is <{_local(root.tag)}>);"
            f" use rasterTypeName {layout!r} instead of {raster_type!r}",
        )
    meta = parse_metadata(root, layout)
    sat = (meta.satellite or "").upper().replace("-", "")
    if sat and not sat.startswith("ZY3"):  # ZY3, ZY3-1, ZY302...
        raise ImageError(
            uri,
            f"its XML names satellite {meta.satellite!r}, not ZY-3; pick the raster type"
            " of that satellite",
        )
    return meta


def _rpcs(uri: str, product: Product) -> tuple[RPC, str]:
    """The product's RPCs: its .rpb / _rpc.txt sidecar, else RPC tags in the TIFF."""
    if product.rpc is not None:
        try:
            text = product.text(product.rpc)
            rpb = product.rpc.lower().endswith(".rpb")
            rpc = rpcmod.parse_rpb(text) if rpb else rpcmod.parse_rpc_txt(text)
            return rpc, os.path.basename(product.rpc)
        except (rpcmod.RPCParseError, OSError) as exc:
            raise ImageError(
                uri, f"its RPC file {os.path.basename(product.rpc)} is unusable: {exc}"
            ) from None
    try:
        with _open_l1(product.tif) as ds:
            tags = ds.rpcs
    except RasterioIOError:
        tags = None
    if tags is None:
        raise ImageError(
            uri,
            f"has no RPCs: neither {product.name}.rpb nor {product.name}_rpc.txt is beside it"
            " and the TIFF has no RPC tags; put the product's RPC file next to the image",
        )
    return tags, "tiff tags"


def _terrain_options(
    rpc: RPC, terrain: Terrain | None
) -> tuple[tuple[tuple[str, str], ...], float]:
    """GDAL RPC transformer options for ``terrain``, and the constant height (or HEIGHT_OFF)."""
    if terrain is not None and terrain.gdal_path:
        opts = (("RPC_DEM", terrain.gdal_path), ("RPC_DEMINTERPOLATION", "bilinear"))
        return opts, float(rpc.height_off)
    height = float(rpc.height_off) if terrain is None else float(terrain.constant)  # type: ignore[arg-type]
    return (("RPC_HEIGHT", repr(height)),), height


def ground_geometry(
    uri: str, rpc: RPC, width: int, height: int, terrain: Terrain | None, h0: float
) -> tuple[shapely.Polygon, Grid]:
    """The image outline on the terrain (a polygon in the local UTM zone) and a best-fit
    affine grid there (for the planner's cell size and resampling scale).

    The outline is located through the RPC model at 64 points per edge; on a DEM, heights
    come from the DEM (bilinear) at each ground point, as GDAL's transformer does.
    """
    cols, rows = rpcmod.outline_pixels(width, height, _FOOTPRINT_POINTS)
    gc, gr = np.meshgrid(np.linspace(0, width, 5), np.linspace(0, height, 5))
    cols = np.concatenate([cols, gc.ravel()])
    rows = np.concatenate([rows, gr.ravel()])
    z: float | rpcmod.HeightFn = h0
    if terrain is not None and terrain.gdal_path:
        # the DEM window: the outline at the lowest and highest heights the RPC is fitted for
        lons, lats = [], []
        for h in (rpc.height_off - rpc.height_scale, rpc.height_off + rpc.height_scale):
            lo, la = rpcmod.rpc_locate(rpc, cols, rows, h)
            lons.append(lo)
            lats.append(la)
        lo, la = np.concatenate(lons), np.concatenate(lats)
        pad = 0.01
        try:
            z = rpcmod.dem_sampler(
                terrain.gdal_path, lo.min() - pad, la.min() - pad, lo.max() + pad, la.max() + pad
            )
        except (RasterioIOError, OSError) as exc:
            raise ImageError(uri, f"the DEM {terrain.gdal_path} cannot be read ({exc})") from None
    lon, lat = rpcmod.rpc_locate(rpc, cols, rows, z)
    if not (np.isfinite(lon).all() and np.isfinite(lat).all()):
        raise ImageError(
            uri,
            "its outline cannot be located on the terrain: the DEM does not cover the whole"
            " image (or the RPCs are degenerate); give a DEM that covers the scene, or use a"
            " constant height (constantZ)",
        )
    crs = _utm(float(np.mean(lon)), float(np.mean(lat)))
    x, y = Transformer.from_crs(CRS.from_epsg(4326), crs, always_xy=True).transform(lon, lat)
    n = 4 * (_FOOTPRINT_POINTS - 1)
    ring = shapely.Polygon(np.column_stack([x[:n], y[:n]]))
    ring = ring if ring.is_valid else shapely.make_valid(ring)
    # least-squares affine (col, row) -> (x, y) over the outline and an inner 5 x 5 lattice
    design = np.column_stack([cols, rows, np.ones_like(cols)])
    (a, b, c), *_ = np.linalg.lstsq(design, x, rcond=None)
    (d, e, f), *_ = np.linalg.lstsq(design, y, rcond=None)
    grid = Grid(crs, Affine(a, b, c, d, e, f), (height, width))
    return ring, grid


def _utm(lon: float, lat: float) -> CRS:
    zone = min(int((lon + 180) // 6) + 1, 60)
    return CRS.from_epsg((32600 if lat >= 0 else 32700) + zone)


def probe_batch(
    refs: Sequence[Any], params: Mapping[str, Any], raster_type: str = SASMAC
) -> list[ImageSource | Exception]:
    """Probe every product; the terrain parameters are resolved once, first, so a bad
    ``dem`` or ``constantZ`` is a request error raised before anything is written."""
    terrain = terrain_from_params(params, default_height=None)
    out: list[ImageSource | Exception] = []
    for ref in refs:
        try:
            out.append(probe_product(ref.uri, ref.gdal_path, ref.name, raster_type, terrain))
        except ImageError as exc:
            out.append(exc)
    return out


def _type_module(raster_type: str) -> types.ModuleType:
    """A registry entry for one of the two ZY-3 types (same code, its own XML layout)."""
    mod = types.ModuleType(f"{__name__}:{raster_type}", f"The {raster_type} raster type.")
    mod.NAME = raster_type  # type: ignore[attr-defined]
    mod.PATTERNS = PATTERNS  # type: ignore[attr-defined]

    def probe(
        uri: str, gdal_path: str, name: str, params: Mapping[str, Any] | None = None
    ) -> ImageSource:
        terrain = terrain_from_params(params or {}, default_height=None)
        return probe_product(uri, gdal_path, name, raster_type, terrain)

    def batch(refs: Sequence[Any], params: Mapping[str, Any]) -> list[ImageSource | Exception]:
        return probe_batch(refs, params, raster_type)

    def recognise(uri: str, gdal_path: str) -> str | None:
        """What a ZY-3 input of this type looks like ("a ZY3-CRESDA product (ZY-3 NAD)")."""
        found = recognise_as(uri, gdal_path)
        return found[1] if found and found[0] == raster_type else None

    mod.probe = probe  # type: ignore[attr-defined]
    mod.probe_batch = batch  # type: ignore[attr-defined]
    mod.recognise = recognise  # type: ignore[attr-defined]
    return mod


def recognise(uri: str, gdal_path: str) -> str | None:
    """What a ZY-3 input looks like, whichever of the two types ("a ZY3-SASMAC product
    (ZY-3 NAD)"), else None; decided from the file name and the XML's root element."""
    found = recognise_as(uri, gdal_path)
    return found[1] if found else None


# the two registry entries (engine.rastertypes.REGISTRY)
sasmac = _type_module(SASMAC)
cresda = _type_module(CRESDA)
