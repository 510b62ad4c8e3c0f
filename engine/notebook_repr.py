"""How a collection shows itself: a plain-text summary and a Jupyter HTML card.

The card holds the facts an analyst checks first (images complete/failed, CRS, cell size,
extent, bands, time range), a footprint map drawn as inline SVG from the catalog's
EPSG:4326 footprints (no network, no plotting library: a notebook saved with it shows
the map anywhere) and a table of the first images. Everything comes from the catalog and
the root attributes; no pixel is read.
"""

from __future__ import annotations

import html
import math
from typing import Any

import numpy as np
import pyarrow as pa
import shapely
from pyproj import CRS

MAX_ROWS = 10  # images listed in the HTML table
MAX_SHAPES = 2000  # footprints drawn in the SVG map
SVG_WIDTH = 260


def _crs_label(wkt: str) -> str:
    crs = CRS.from_wkt(wkt)
    epsg = crs.to_epsg()
    return f"EPSG:{epsg} ({crs.name})" if epsg else crs.name


def _units(wkt: str) -> str:
    crs = CRS.from_wkt(wkt)
    try:
        unit = crs.axis_info[0].unit_name
    except (IndexError, AttributeError):
        return ""
    return {"metre": "m", "degree": "°", "US survey foot": "ftUS", "foot": "ft"}.get(unit, unit)


def _num(v: float) -> str:
    return f"{v:.10g}"


def facts(coll: Any) -> dict[str, Any]:
    """The summary facts of a collection, from its catalog and root attributes."""
    t: pa.Table = coll.catalog
    status = t["status"].to_pylist()
    done = [i for i, s in enumerate(status) if s == "complete"]
    ok = t.take(pa.array(done, type=pa.int64()))
    info = coll.info
    out: dict[str, Any] = {
        "name": info.name,
        "path": str(coll.path),
        "complete": len(done),
        "failed": len(status) - len(done),
        "crs": _crs_label(info.crs_wkt),
        "cell": f"{_num(info.cell_size)} {_units(info.crs_wkt)}".strip(),
        "tile": info.tile_size,
        "extent": None,
        "lonlat": None,
        "bands": [],
        "dtype": "",
        "nodata": None,
        "time": None,
    }
    if ok.num_rows:
        b = [np.asarray(ok[k], dtype="float64") for k in ("xmin", "ymin", "xmax", "ymax")]
        out["extent"] = (
            float(np.nanmin(b[0])),
            float(np.nanmin(b[1])),
            float(np.nanmax(b[2])),
            float(np.nanmax(b[3])),
        )
        names: list[str] = next((n for n in ok["band_names"].to_pylist() if n), [])
        out["bands"] = list(names)
        out["dtype"] = ", ".join(sorted({d for d in ok["dtype"].to_pylist() if d}))
        out["nodata"] = next((v for v in ok["nodata"].to_pylist() if v is not None), None)
        times = [v for v in ok["acquisition_time"].to_pylist() if v is not None]
        if times:
            out["time"] = (min(times), max(times))
        geoms = _footprints(ok)
        if geoms:
            out["lonlat"] = tuple(float(v) for v in shapely.total_bounds(geoms))
    return out


def _footprints(t: pa.Table) -> list[shapely.Geometry]:
    wkb = [g for g in t["footprint"].to_pylist() if g is not None]
    return [g for g in shapely.from_wkb(wkb) if g is not None and not g.is_empty] if wkb else []


def _fmt_time(v: Any) -> str:
    return "" if v is None else v.strftime("%Y-%m-%d %H:%M:%S")


def text_summary(coll: Any) -> str:
    """A few lines for ``repr()``: name, images, CRS, cell size, extent, bands, times."""
    f = facts(coll)
    lines = [
        f"<mosaicflow.Collection {f['name']!r}>",
        f"  store:   {f['path']}",
        f"  images:  {f['complete']} complete, {f['failed']} failed",
        f"  crs:     {f['crs']}",
        f"  cell:    {f['cell']} (tiles of {f['tile']} px)",
    ]
    if f["extent"]:
        lines.append("  extent:  " + ", ".join(_num(v) for v in f["extent"]))
    if f["bands"]:
        nd = "" if f["nodata"] is None else f", nodata {_num(f['nodata'])}"
        lines.append(f"  bands:   {', '.join(f['bands'])} ({f['dtype']}{nd})")
    if f["time"]:
        lines.append(f"  time:    {_fmt_time(f['time'][0])} … {_fmt_time(f['time'][1])}")
    return "\n".join(lines)


def footprint_svg(geoms: list[shapely.Geometry], titles: list[str], width: int = SVG_WIDTH) -> str:
    """Lon/lat footprints as an inline SVG map (x scaled by cos(latitude), north up)."""
    geoms, titles = geoms[:MAX_SHAPES], titles[:MAX_SHAPES]
    if not geoms:
        return ""
    x0, y0, x1, y1 = (float(v) for v in shapely.total_bounds(geoms))
    k = math.cos(math.radians(max(-89.0, min(89.0, (y0 + y1) / 2))))
    w_geo, h_geo = max((x1 - x0) * k, 1e-9), max(y1 - y0, 1e-9)
    scale = (width - 10) / max(w_geo, h_geo)
    height = round(h_geo * scale) + 10
    svg_w = round(w_geo * scale) + 10

    def ring(coords: np.ndarray) -> str:
        xs = 5 + (coords[:, 0] - x0) * k * scale
        ys = 5 + (y1 - coords[:, 1]) * scale
        pts = " ".join(f"{x:.1f},{y:.1f}" for x, y in zip(xs, ys, strict=True))
        return f"M{pts}Z"

    paths = []
    for geom, title in zip(geoms, titles, strict=True):
        polys = getattr(geom, "geoms", [geom])
        d = "".join(
            ring(np.asarray(r.coords))
            for p in polys
            if isinstance(p, shapely.Polygon)
            for r in (p.exterior, *p.interiors)
        )
        paths.append(
            f'<path class="mf-fp" d="{d}" fill="#3b82f6" fill-opacity="0.15" stroke="#1d4ed8" '
            f'stroke-width="1"><title>{html.escape(title)}</title></path>'
        )
    return (
        f'<svg class="mf-footprints" xmlns="http://www.w3.org/2000/svg" width="{svg_w}" '
        f'height="{height}" viewBox="0 0 {svg_w} {height}" '
        f'style="background:#f8fafc;border:1px solid #cbd5e1">{"".join(paths)}</svg>'
    )


def html_summary(coll: Any) -> str:
    """The Jupyter card: facts, the footprint map and the first images."""
    f = facts(coll)
    e = html.escape
    rows = [
        ("store", e(f["path"])),
        ("images", f"{f['complete']} complete, {f['failed']} failed"),
        ("CRS", e(f["crs"])),
        ("cell size", e(f"{f['cell']} (tiles of {f['tile']} px)")),
    ]
    if f["extent"]:
        rows.append(("extent", e(", ".join(_num(v) for v in f["extent"]))))
    if f["lonlat"]:
        rows.append(("lon/lat", e(", ".join(f"{v:.4f}" for v in f["lonlat"]))))
    if f["bands"]:
        nd = "" if f["nodata"] is None else f", nodata {_num(f['nodata'])}"
        rows.append(("bands", e(f"{', '.join(f['bands'])} ({f['dtype']}{nd})")))
    if f["time"]:
        rows.append(("time", e(f"{_fmt_time(f['time'][0])} … {_fmt_time(f['time'][1])}")))
    facts_html = "".join(
        f'<tr><th style="text-align:left;padding-right:1em">{k}</th><td style="text-align:left">{v}</td></tr>'
        for k, v in rows
    )
    t = coll.catalog
    done = t.filter(pa.array([s == "complete" for s in t["status"].to_pylist()], pa.bool_()))
    geoms = _footprints(done)
    titles = [
        str(n)
        for n, g in zip(done["Name"].to_pylist(), done["footprint"].to_pylist(), strict=True)
        if g
    ]
    svg = footprint_svg(geoms, titles)
    head = "".join(
        f'<th style="text-align:left;padding-right:1.5em">{h}</th>'
        for h in ("name", "time", "cloud cover", "status")
    )
    body = []
    for r in t.slice(0, MAX_ROWS).to_pylist():
        cc = r.get("cloud_cover")
        status = r["status"] if r["status"] == "complete" else f"{r['status']}: {r['message']}"
        cells = (
            r["Name"],
            _fmt_time(r.get("acquisition_time")),
            "" if cc is None else f"{cc:.1f} %",
            status,
        )
        body.append(
            "<tr>"
            + "".join(
                f'<td style="text-align:left;padding-right:1.5em">{e(str(c))}</td>' for c in cells
            )
            + "</tr>"
        )
    more = t.num_rows - MAX_ROWS
    tail = f"<div>… and {more} more</div>" if more > 0 else ""
    return (
        f'<div class="mosaicflow-collection"><b>mosaicflow.Collection</b> '
        f"<code>{e(f['name'])}</code>"
        f'<div style="display:flex;gap:1.5em;align-items:flex-start">'
        f"<table>{facts_html}</table>{svg}</div>"
        f'<table class="mf-images"><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table>'
        f"{tail}</div>"
    )
