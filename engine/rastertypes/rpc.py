"""Rational polynomial coefficients (RPC00B): sidecar parsers, a numpy model, GDAL's warp.

Satellite Level-1 products (ZY-3, GaoFen, WorldView...) ship their sensor model as 90 RPC
values in a sidecar: a DigitalGlobe-syntax ``.rpb`` (``lineOffset = 812;`` and
``lineNumCoef = ( ... );`` inside ``BEGIN_GROUP = IMAGE``) or an RPC text file
(``LINE_OFF: 812 pixels``, ``LINE_NUM_COEFF_1: ...``). Both parse to a ``rasterio.rpc.RPC``.

The numpy model evaluates ground → image (the RPC's own direction) and inverts it by Newton
iteration (image → ground at a height or on a DEM); pixel positions follow GDAL's
convention (RPC line/sample 0 is the *centre* of the first pixel, so GDAL's row = line + 0.5).

The warp: rasterio's ``WarpedVRT`` builds its transformer from a geotransform when given a
destination grid, ignoring RPCs (and it upper-cases option values, so ``RPC_DEM`` paths
break). :func:`warp_rpc` therefore writes GDAL's own warped-VRT XML with an RPC transformer
(the 90 values inline, so the sidecar's RPCs are used whatever GDAL's sidecar lookup finds)
and the exact transformer, shaped like the requested grid: chunked output is GDAL's
whole-image warp, pixel for pixel.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping, Sequence
from xml.sax.saxutils import escape, quoteattr

import numpy as np
import rasterio
from pyproj import CRS, Transformer
from rasterio.enums import Resampling
from rasterio.rpc import RPC
from rasterio.windows import Window

from engine.grid import Grid

_SCALARS = (
    "line_off",
    "samp_off",
    "lat_off",
    "long_off",
    "height_off",
    "line_scale",
    "samp_scale",
    "lat_scale",
    "long_scale",
    "height_scale",
)
_COEFFS = ("line_num_coeff", "line_den_coeff", "samp_num_coeff", "samp_den_coeff")

# .rpb keys (DigitalGlobe syntax) → RPC fields
_RPB_KEYS = {
    "errbias": "err_bias",
    "errrand": "err_rand",
    "lineoffset": "line_off",
    "sampoffset": "samp_off",
    "latoffset": "lat_off",
    "longoffset": "long_off",
    "heightoffset": "height_off",
    "linescale": "line_scale",
    "sampscale": "samp_scale",
    "latscale": "lat_scale",
    "longscale": "long_scale",
    "heightscale": "height_scale",
    "linenumcoef": "line_num_coeff",
    "linedencoef": "line_den_coeff",
    "sampnumcoef": "samp_num_coeff",
    "sampdencoef": "samp_den_coeff",
}
_NUMBER = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"


class RPCParseError(ValueError):
    """An RPC sidecar that does not hold the 90 RPC00B values; the message says which."""


def _build(values: Mapping[str, object], what: str) -> RPC:
    missing = [k for k in (*_SCALARS, *_COEFFS) if k not in values]
    if missing:
        raise RPCParseError(f"{what} lacks {', '.join(missing)}")
    for k in _COEFFS:
        n = len(values[k])  # type: ignore[arg-type]
        if n != 20:
            raise RPCParseError(f"{what}: {k} has {n} coefficients, RPC00B needs 20")
    kw = {k: float(values[k]) for k in _SCALARS}  # type: ignore[arg-type]
    for k in _SCALARS[5:]:
        if kw[k] == 0:
            raise RPCParseError(f"{what}: {k} is 0, the model would divide by it")
    return RPC(
        **kw,
        **{k: [float(v) for v in values[k]] for k in _COEFFS},  # type: ignore[attr-defined]
        err_bias=float(values["err_bias"]) if "err_bias" in values else None,  # type: ignore[arg-type]
        err_rand=float(values["err_rand"]) if "err_rand" in values else None,  # type: ignore[arg-type]
    )


def parse_rpb(text: str) -> RPC:
    """Parse an ``.rpb`` file (DigitalGlobe syntax, used by ZY-3, GaoFen, WorldView).

    Parameters
    ----------
    text
        The file's text: ``key = value;`` pairs, the coefficient lists as
        ``lineNumCoef = ( v1, ..., v20 );`` within ``BEGIN_GROUP = IMAGE``.

    Raises
    ------
    RPCParseError
        A value is missing or a coefficient list does not hold 20 numbers.

    Examples
    --------
    >>> parse_rpb(open("md_dg.RPB").read()).line_off  # doctest: +SKIP
    812.0
    """
    values: dict[str, object] = {}
    for key, body in re.findall(r"(\w+)\s*=\s*([^;=]*);", text):
        field = _RPB_KEYS.get(key.lower())
        if field is None:
            continue
        numbers = re.findall(_NUMBER, body)
        if field in _COEFFS:
            values[field] = numbers
        elif numbers:
            values[field] = numbers[0]
    return _build(values, "the .rpb file")


def parse_rpc_txt(text: str) -> RPC:
    """Parse an RPC text file (``<base>_rpc.txt``; GDAL's RPC key syntax).

    Lines are ``KEY: value [unit]`` (``LINE_OFF: +003654.00 pixels``); coefficients are
    ``LINE_NUM_COEFF_1`` … ``LINE_NUM_COEFF_20``, or one line holding the 20 values.

    Raises
    ------
    RPCParseError
        A value is missing or a coefficient list is incomplete.
    """
    values: dict[str, object] = {}
    indexed: dict[str, dict[int, str]] = {k: {} for k in _COEFFS}
    for line in text.splitlines():
        key, sep, rest = line.partition(":")
        if not sep:
            continue
        key = key.strip().lower()
        numbers = re.findall(_NUMBER, rest)
        if not numbers:
            continue
        m = re.fullmatch(r"(line|samp)_(num|den)_coeff_(\d+)", key)
        if m:
            indexed[f"{m.group(1)}_{m.group(2)}_coeff"][int(m.group(3))] = numbers[0]
        elif key in _COEFFS:
            values[key] = numbers
        elif key in (*_SCALARS, "err_bias", "err_rand"):
            values[key] = numbers[0]
    for k, found in indexed.items():
        if found:
            if sorted(found) != list(range(1, 21)):
                raise RPCParseError(f"the RPC text file has {k}_1..20 incomplete: {sorted(found)}")
            values[k] = [found[i] for i in range(1, 21)]
    return _build(values, "the RPC text file")


def read_rpc_file(path: str) -> RPC:
    """The RPCs of a sidecar file, by its name: ``*.rpb`` or an RPC text file."""
    with open(path, encoding="utf-8", errors="replace") as f:
        text = f.read()
    return parse_rpb(text) if path.lower().endswith(".rpb") else parse_rpc_txt(text)


# -- the model ----------------------------------------------------------------------------


def _terms(p: np.ndarray, l: np.ndarray, h: np.ndarray) -> np.ndarray:  # noqa: E741
    """The 20 RPC00B polynomial terms (lat P, lon L, height H normalised), shape (20, n)."""
    one = np.ones_like(p)
    return np.stack(
        [
            one, l, p, h, l * p, l * h, p * h, l * l, p * p, h * h,
            p * l * h, l**3, l * p * p, l * h * h, l * l * p, p**3, p * h * h,
            l * l * h, p * p * h, h**3,
        ]
    )  # fmt: skip


def rpc_project(
    rpc: RPC, lon: np.ndarray, lat: np.ndarray, height: np.ndarray | float
) -> tuple[np.ndarray, np.ndarray]:
    """Ground → image: (col, row) in GDAL's pixel convention (0, 0 = top-left corner).

    Parameters
    ----------
    rpc
        The model.
    lon, lat, height
        Geodetic longitude and latitude (degrees, WGS 84) and ellipsoidal height (metres).
    """
    lon = np.asarray(lon, dtype="float64")
    lat = np.asarray(lat, dtype="float64")
    h = np.broadcast_to(np.asarray(height, dtype="float64"), lon.shape)
    t = _terms(
        (lat - rpc.lat_off) / rpc.lat_scale,
        (lon - rpc.long_off) / rpc.long_scale,
        (h - rpc.height_off) / rpc.height_scale,
    )
    c = {k: np.asarray(getattr(rpc, k), dtype="float64") for k in _COEFFS}
    line = np.tensordot(c["line_num_coeff"], t, 1) / np.tensordot(c["line_den_coeff"], t, 1)
    samp = np.tensordot(c["samp_num_coeff"], t, 1) / np.tensordot(c["samp_den_coeff"], t, 1)
    return samp * rpc.samp_scale + rpc.samp_off + 0.5, line * rpc.line_scale + rpc.line_off + 0.5


HeightFn = Callable[[np.ndarray, np.ndarray], np.ndarray]


def rpc_locate(
    rpc: RPC,
    col: np.ndarray,
    row: np.ndarray,
    height: float | HeightFn,
    *,
    tol: float = 1e-9,
    max_iter: int = 50,
) -> tuple[np.ndarray, np.ndarray]:
    """Image → ground: the (lon, lat) that :func:`rpc_project` maps to (col, row).

    ``height`` is a constant (metres above the ellipsoid) or a function of (lon, lat), e.g.
    a DEM sampler; on a DEM the ground point is found by alternating the inversion at the
    current height with a DEM lookup there, until the height settles (as GDAL does).
    Newton steps use a numerical Jacobian; ``tol`` is in degrees.
    """
    col = np.asarray(col, dtype="float64")
    row = np.asarray(row, dtype="float64")
    lon = np.full(col.shape, rpc.long_off)
    lat = np.full(col.shape, rpc.lat_off)
    h = np.full(col.shape, float(rpc.height_off if callable(height) else height))
    d = 1e-7
    for _ in range(max_iter if callable(height) else 1):
        for _ in range(max_iter):
            c0, r0 = rpc_project(rpc, lon, lat, h)
            c1, r1 = rpc_project(rpc, lon + d, lat, h)
            c2, r2 = rpc_project(rpc, lon, lat + d, h)
            a, b = (c1 - c0) / d, (c2 - c0) / d
            e, f = (r1 - r0) / d, (r2 - r0) / d
            det = a * f - b * e
            dc, dr = col - c0, row - r0
            dlon = (f * dc - b * dr) / det
            dlat = (a * dr - e * dc) / det
            lon, lat = lon + dlon, lat + dlat
            if np.nanmax(np.abs(np.concatenate([dlon.ravel(), dlat.ravel()])), initial=0) < tol:
                break
        if not callable(height):
            break
        new_h = np.asarray(height(lon, lat), dtype="float64")
        off = ~np.isfinite(new_h)
        if off.any():  # no terrain there (off the DEM, or its nodata): no ground position
            return np.where(off, np.nan, lon), np.where(off, np.nan, lat)
        settled = np.abs(new_h - h).max(initial=0) < 1e-4
        h = new_h
        if settled:
            break
    return lon, lat


def dem_sampler(path: str, lon0: float, lat0: float, lon1: float, lat1: float) -> HeightFn:
    """A bilinear height lookup (GDAL's RPC_DEMINTERPOLATION=bilinear) on the DEM at ``path``
    over the lon/lat box given (read once); NaN outside the DEM or on its nodata."""
    with rasterio.open(path) as ds:
        to_dem = Transformer.from_crs(CRS.from_epsg(4326), CRS(ds.crs.to_wkt()), always_xy=True)
        xs, ys = to_dem.transform([lon0, lon1, lon0, lon1], [lat0, lat0, lat1, lat1])
        inv = ~ds.transform
        cs, rs = inv @ (np.asarray(xs), np.asarray(ys))
        c0 = max(math.floor(min(cs)) - 2, 0)
        r0 = max(math.floor(min(rs)) - 2, 0)
        c1 = min(math.ceil(max(cs)) + 2, ds.width)
        r1 = min(math.ceil(max(rs)) + 2, ds.height)
        if c1 <= c0 or r1 <= r0:
            return lambda lon, lat: np.full(np.shape(lon), np.nan)
        z = ds.read(1, window=Window(c0, r0, c1 - c0, r1 - r0)).astype("float64")
        if ds.nodata is not None:
            z[z == ds.nodata] = np.nan

    def sample(lon: np.ndarray, lat: np.ndarray) -> np.ndarray:
        x, y = to_dem.transform(np.asarray(lon), np.asarray(lat))
        c, r = inv @ (np.asarray(x), np.asarray(y))
        c, r = c - 0.5 - c0, r - 0.5 - r0  # pixel-centre based
        i, j = np.floor(r).astype(int), np.floor(c).astype(int)
        fy, fx = r - i, c - j
        ok = (i >= 0) & (j >= 0) & (i + 1 < z.shape[0]) & (j + 1 < z.shape[1])
        i, j = np.where(ok, i, 0), np.where(ok, j, 0)
        v = (
            z[i, j] * (1 - fx) * (1 - fy)
            + z[i, j + 1] * fx * (1 - fy)
            + z[i + 1, j] * (1 - fx) * fy
            + z[i + 1, j + 1] * fx * fy
        )
        return np.where(ok, v, np.nan)

    return sample


def outline_pixels(width: int, height: int, points_per_edge: int) -> tuple[np.ndarray, np.ndarray]:
    """(cols, rows) of the image's outer pixel edges, densified, as a closed ring's vertices."""
    t = np.linspace(0.0, 1.0, max(2, points_per_edge))[:-1]
    cols = np.concatenate([t * width, np.full_like(t, width), (1 - t) * width, np.zeros_like(t)])
    rows = np.concatenate([np.zeros_like(t), t * height, np.full_like(t, height), (1 - t) * height])
    return cols, rows


# -- the warp -----------------------------------------------------------------------------

_GDAL_TYPES = {
    "uint8": "Byte",
    "int8": "Int8",
    "uint16": "UInt16",
    "int16": "Int16",
    "uint32": "UInt32",
    "int32": "Int32",
    "float32": "Float32",
    "float64": "Float64",
}
_GDAL_RESAMPLING = {
    "nearest": "NearestNeighbour",
    "bilinear": "Bilinear",
    "cubic": "Cubic",
    "cubic_spline": "CubicSpline",
    "lanczos": "Lanczos",
    "average": "Average",
    "rms": "RMS",
    "mode": "Mode",
    "max": "Maximum",
    "min": "Minimum",
    "med": "Median",
    "q1": "Quartile1",
    "q3": "Quartile3",
    "sum": "Sum",
}


def rpc_metadata(rpc: RPC) -> dict[str, str]:
    """GDAL's RPC metadata domain for ``rpc`` (full float precision)."""
    out = {k.upper(): repr(float(getattr(rpc, k))) for k in _SCALARS}
    for k in _COEFFS:
        out[k.upper()] = " ".join(repr(float(v)) for v in getattr(rpc, k))
    for k in ("err_bias", "err_rand"):
        if getattr(rpc, k) is not None:
            out[k.upper()] = repr(float(getattr(rpc, k)))
    return out


def warped_vrt_xml(
    src_path: str,
    rpc: RPC,
    dst: Grid,
    resampling: str,
    *,
    bands: Sequence[int],
    dtype: str,
    src_nodata: float | None,
    dst_nodata: float | None,
    options: Mapping[str, str],
    scale: tuple[float, float] | None = None,
    tolerance: float = 0.0,
) -> str:
    """GDAL's warped-VRT document that orthorectifies ``bands`` of ``src_path`` with ``rpc``
    onto ``dst``; an alpha band is added when ``dst_nodata`` is None.

    ``options`` are GDAL's RPC transformer options (RPC_HEIGHT, RPC_HEIGHT_SCALE, RPC_DEM,
    RPC_DEMINTERPOLATION, RPC_DEM_MISSING_VALUE); ``tolerance`` > 0 puts GDAL's approximate
    transformer in front (0: exact, as every chunk of a collection uses for nearest).
    """
    gtype = _GDAL_TYPES[dtype]
    gt = ",".join(repr(float(v)) for v in dst.transform.to_gdal())
    inv = ",".join(repr(float(v)) for v in (~dst.transform).to_gdal())
    wkt = escape(dst.crs_wkt)
    opts = {k.upper(): str(v) for k, v in options.items()}
    md = "".join(f"<MDI key={quoteattr(k)}>{escape(v)}</MDI>" for k, v in rpc_metadata(rpc).items())
    rpc_xml = [f"<HeightOffset>{float(opts.get('RPC_HEIGHT', 0))!r}</HeightOffset>"]
    if "RPC_HEIGHT_SCALE" in opts:
        rpc_xml.append(f"<HeightScale>{float(opts['RPC_HEIGHT_SCALE'])!r}</HeightScale>")
    if opts.get("RPC_DEM"):
        rpc_xml.append(f"<DEMPath>{escape(opts['RPC_DEM'])}</DEMPath>")
        interp = opts.get("RPC_DEMINTERPOLATION", "bilinear").lower()
        rpc_xml.append(f"<DEMInterpolation>{escape(interp)}</DEMInterpolation>")
        if "RPC_DEM_MISSING_VALUE" in opts:
            missing = float(opts["RPC_DEM_MISSING_VALUE"])
            rpc_xml.append(f"<DEMMissingValue>{missing!r}</DEMMissingValue>")
    transformer = (
        "<GenImgProjTransformer><SrcRPCTransformer><RPCTransformer><Reversed>0</Reversed>"
        f"{''.join(rpc_xml)}<Metadata>{md}</Metadata></RPCTransformer></SrcRPCTransformer>"
        f"<DstGeoTransform>{gt}</DstGeoTransform><DstInvGeoTransform>{inv}</DstInvGeoTransform>"
        "<ReprojectTransformer><ReprojectionTransformer><SourceSRS>EPSG:4326</SourceSRS>"
        f"<TargetSRS>{wkt}</TargetSRS></ReprojectionTransformer></ReprojectTransformer>"
        "</GenImgProjTransformer>"
    )
    if tolerance > 0:
        transformer = (
            f"<ApproxTransformer><MaxError>{tolerance!r}</MaxError>"
            f"<BaseTransformer>{transformer}</BaseTransformer></ApproxTransformer>"
        )
    nodata_xml = "" if dst_nodata is None else f"<NoDataValue>{dst_nodata!r}</NoDataValue>"
    vrt_bands = "".join(
        f'<VRTRasterBand dataType="{gtype}" band="{i}" subClass="VRTWarpedRasterBand">'
        f"{nodata_xml}</VRTRasterBand>"
        for i in range(1, len(bands) + 1)
    )
    alpha = len(bands) + 1 if dst_nodata is None else 0
    if alpha:
        vrt_bands += (
            f'<VRTRasterBand dataType="{gtype}" band="{alpha}" subClass="VRTWarpedRasterBand">'
            "<ColorInterp>Alpha</ColorInterp></VRTRasterBand>"
        )
    mapping = ""
    for i, b in enumerate(bands, 1):
        src_nd = "" if src_nodata is None else f"<SrcNoDataReal>{src_nodata!r}</SrcNoDataReal>"
        dst_nd = "" if dst_nodata is None else f"<DstNoDataReal>{dst_nodata!r}</DstNoDataReal>"
        mapping += f'<BandMapping src="{b}" dst="{i}">{src_nd}{dst_nd}</BandMapping>'
    warp_opts = {"INIT_DEST": "NO_DATA" if dst_nodata is not None else "0"}
    if scale:
        warp_opts.update(XSCALE=repr(scale[0]), YSCALE=repr(scale[1]))
    if src_nodata is not None:
        warp_opts["UNIFIED_SRC_NODATA"] = "YES"
    opt_xml = "".join(
        f"<Option name={quoteattr(k)}>{escape(v)}</Option>" for k, v in warp_opts.items()
    )
    return (
        f'<VRTDataset rasterXSize="{dst.width}" rasterYSize="{dst.height}" '
        f'subClass="VRTWarpedDataset"><SRS>{wkt}</SRS><GeoTransform>{gt}</GeoTransform>'
        f"{vrt_bands}<BlockXSize>{min(dst.width, 512)}</BlockXSize>"
        f"<BlockYSize>{min(dst.height, 512)}</BlockYSize><GDALWarpOptions>"
        f"<ResampleAlg>{_GDAL_RESAMPLING[resampling]}</ResampleAlg>"
        f"<WorkingDataType>{gtype}</WorkingDataType>{opt_xml}"
        f'<SourceDataset relativeToVRT="0">{escape(src_path)}</SourceDataset>'
        f"<Transformer>{transformer}</Transformer><BandList>{mapping}</BandList>"
        + (f"<DstAlphaBand>{alpha}</DstAlphaBand>" if alpha else "")
        + "</GDALWarpOptions></VRTDataset>"
    )


def warp_rpc(
    src_path: str,
    rpc: RPC,
    dst: Grid,
    resampling: str,
    *,
    bands: Sequence[int],
    dtype: str,
    src_nodata: float | None = None,
    dst_nodata: float | None = None,
    options: Mapping[str, str] | None = None,
    scale: tuple[float, float] | None = None,
    tolerance: float = 0.0,
) -> tuple[np.ndarray, np.ndarray | None]:
    """GDAL's RPC orthorectification of ``bands`` of ``src_path`` onto ``dst``.

    Returns (bands, h, w) of ``dtype`` and, when ``dst_nodata`` is None, the coverage mask
    (GDAL's alpha), as :func:`graphs.chunk.gdal_warp` does for affine sources.

    Examples
    --------
    >>> data, covered = warp_rpc("img.tif", rpc, grid, "nearest", bands=[1], dtype="uint8",
    ...                          options={"RPC_HEIGHT": "700"})  # doctest: +SKIP
    """
    Resampling[resampling]  # a KeyError names an unknown method early
    xml = warped_vrt_xml(
        src_path, rpc, dst, resampling, bands=bands, dtype=dtype, src_nodata=src_nodata,
        dst_nodata=dst_nodata, options=options or {}, scale=scale, tolerance=tolerance,
    )  # fmt: skip
    with rasterio.open(xml) as vrt:
        data = vrt.read()
    if dst_nodata is not None:
        return data, None
    return data[:-1], data[-1] > 0
