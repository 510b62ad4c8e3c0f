"""Planning: the collection lattice, each image's target grid, and the chunks that hold data.

No pixels are read here. The plan is a pure function of the probed images and the
request's context, so the same request always yields the same plan (and the same Dask keys).

Rules (SPEC §1, output grid rule):
- collection CRS: ``outSR``, else the first image's CRS;
- cell size: a number, or ``MinOf`` (finest input, default) / ``MaxOf``, each input's pixel
  size measured in the collection CRS the way gdalwarp does for a default output grid;
- an image's grid is its densified footprint in the collection CRS, intersected with the
  clip (extent ∩ clipping geometry), snapped outward to the lattice, origin on a tile corner;
- only chunks whose box meets that footprint get a task.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import rasterio.warp
import shapely
from pyproj import CRS

from engine.errors import ImageError, RequestError
from engine.grid import Grid, Lattice, as_crs, same_crs, transformer
from engine.rastertypes.base import ImageSource

DEFAULT_TILE = 512
_FOOTPRINT_POINTS = 64  # per edge when densifying an image outline into the collection CRS


@dataclass
class ImagePlan:
    """One image's target: grid on the lattice, the chunks to compute, output dtype/nodata."""

    source: ImageSource
    grid: Grid
    chunks: list[tuple[int, int]]
    footprint: shapely.Geometry  # planned coverage in the collection CRS (clip applied)
    dtype: str
    nodata: float | None
    scales: list[tuple[float, float]] = field(default_factory=list)  # per source part
    coverage: shapely.Geometry | None = (
        None  # footprint + one cell, ∩ clip: pixels outside are nodata
    )


@dataclass
class Plan:
    lattice: Lattice
    images: list[ImagePlan]
    failed: list[tuple[ImageSource | None, str, str]] = field(
        default_factory=list
    )  # (src, uri, reason)
    clip: shapely.Geometry | None = None  # in the collection CRS

    @property
    def chunk_count(self) -> int:
        return sum(len(p.chunks) for p in self.images)


def collection_crs(sources: list[ImageSource], out_crs: CRS | None) -> CRS:
    if out_crs is not None:
        return as_crs(out_crs)
    return sources[0].finest_part.grid.crs


def native_cell_size(src: ImageSource, crs: CRS) -> float:
    """The image's finest pixel size expressed in ``crs`` units (gdalwarp's default choice)."""
    g = src.finest_part.grid
    if same_crs(g.crs, crs):
        return min(g.resolution)
    left, bottom, right, top = g.bounds
    try:
        transform, _, _ = rasterio.warp.calculate_default_transform(
            g.crs.to_wkt(), crs.to_wkt(), g.width, g.height, left, bottom, right, top
        )
    except Exception as exc:  # GDAL cannot transform this footprint into the collection CRS
        raise ImageError(
            src.source_uris[0], f"cannot be projected to the collection CRS ({exc})"
        ) from None
    return float(min(abs(transform.a), abs(transform.e)))


def resolve_cell_size(sources: list[ImageSource], crs: CRS, cell_size: object) -> float:
    if isinstance(cell_size, int | float):
        return float(cell_size)
    sizes = []
    for src in sources:
        try:
            sizes.append(native_cell_size(src, crs))
        except ImageError:
            continue
    if not sizes:
        raise RequestError(
            "context.cellSize",
            cell_size,
            "no input could be measured in the collection CRS",
            "give a numeric cellSize in outSR units",
        )
    return min(sizes) if str(cell_size).lower() != "maxof" else max(sizes)


def image_footprint(src: ImageSource, crs: CRS) -> shapely.Geometry:
    """The image's outline in the collection CRS, densified, buffered by a hair against
    densification error so no chunk that holds data is dropped."""
    if src.footprint is not None:  # an exact outline (camera frames), densified then moved
        fp = _outline_in(src.footprint, src.finest_part.grid.crs, crs)
    else:
        fp = src.finest_part.grid.footprint_in(crs, _FOOTPRINT_POINTS)
    if fp.is_empty:
        raise ImageError(
            src.source_uris[0],
            f"its footprint cannot be expressed in the collection CRS {crs.name}",
        )
    return fp


def _outline_in(geom: shapely.Geometry, src_crs: CRS, crs: CRS) -> shapely.Geometry:
    """``geom`` (in ``src_crs``) in ``crs``, its edges densified first so they bend right."""
    if same_crs(src_crs, crs):
        return geom

    left, bottom, right, top = geom.bounds
    step = max(right - left, top - bottom) / _FOOTPRINT_POINTS
    dense = shapely.segmentize(geom, step) if step > 0 else geom
    tr = transformer(src_crs, crs)
    moved = shapely.transform(dense, lambda xy: np.column_stack(tr.transform(xy[:, 0], xy[:, 1])))
    return moved if moved.is_valid else shapely.make_valid(moved)


def chunk_boxes(grid: Grid, tile: int) -> tuple[list[tuple[int, int]], np.ndarray]:
    """Every chunk index of ``grid`` and its box as a shapely array."""
    nr, nc = math.ceil(grid.height / tile), math.ceil(grid.width / tile)
    rows, cols = np.meshgrid(np.arange(nr), np.arange(nc), indexing="ij")
    ii, jj = rows.ravel(), cols.ravel()
    t = grid.transform
    x0 = t.c + jj * tile * t.a
    x1 = t.c + np.minimum((jj + 1) * tile, grid.width) * t.a
    y0 = t.f + ii * tile * t.e
    y1 = t.f + np.minimum((ii + 1) * tile, grid.height) * t.e
    boxes = shapely.box(x0, np.minimum(y0, y1), x1, np.maximum(y0, y1))
    return [(int(i), int(j)) for i, j in zip(ii, jj, strict=True)], boxes


def resampling_scale(source: Grid, target: Grid) -> tuple[float, float]:
    """GDAL's resampling scale (destination pixels per source pixel, along x and y) of
    warping ``source`` onto ``target``, measured once at the target's centre.

    GDAL recomputes this ratio for every processing chunk from that chunk's source window,
    and it decides how far the kernel reaches when downsampling; chunks at an image edge
    would then resample differently from their neighbours (visible seams). Fixing it per
    image (GDAL's XSCALE/YSCALE warp options) makes every chunk resample like the
    whole-image warp.
    """

    r, c = target.height / 2.0, target.width / 2.0
    xs, ys = target.xy(np.array([r, r, r + 1.0]), np.array([c, c + 1.0, c]))
    if target.crs != source.crs:
        tr = transformer(target.crs, source.crs)
        xs, ys = tr.transform(xs, ys)
    cols, rows = ~source.transform @ (np.asarray(xs), np.asarray(ys))
    step_x = math.hypot(cols[1] - cols[0], rows[1] - rows[0])
    step_y = math.hypot(cols[2] - cols[0], rows[2] - rows[0])
    if not (step_x > 0 and step_y > 0 and math.isfinite(step_x) and math.isfinite(step_y)):
        return (1.0, 1.0)
    return (round(1.0 / step_x, 9), round(1.0 / step_y, 9))


def storage_type(src: ImageSource) -> tuple[str, float | None]:
    """The data type and source nodata an image is stored with, from its parts.

    Parts that agree keep their type and nodata. Parts that differ only in type (one
    shared nodata, or none) take numpy's promoted type: lossless (uint8 + uint16 ->
    uint16), fills unchanged. Parts whose nodata differ (a fill of 0 beside -9999, or
    beside a band that has none) cannot share one integer fill unambiguously: they are
    stored as float32 (float64 for 32-bit parts), which holds every value of every part
    exactly, with NaN as the one nodata each part's own fill is mapped to by the warp.
    Never a narrowing or silent cast.
    """
    parts = src.parts
    dtypes = [np.dtype(p.dtype) for p in parts]
    fills = {"nan" if p.nodata is not None and math.isnan(p.nodata) else p.nodata for p in parts}
    if len(set(dtypes)) == 1 and len(fills) == 1:
        return parts[0].dtype, parts[0].nodata
    promoted = np.result_type(*dtypes)
    shared = parts[0].nodata
    if len(fills) == 1 and (shared is None or _holds(promoted, shared)):
        return str(promoted), shared
    for wide in ("float32", "float64"):  # exact: floats up to its size, ints up to half
        size = np.dtype(wide).itemsize
        if all(d.itemsize <= (size if d.kind == "f" else size // 2) for d in dtypes):
            return wide, float("nan")
    raise ImageError(
        src.source_uris[0],
        f"mixes band types {sorted({str(d) for d in dtypes})} with different nodata values"
        " that no common type holds exactly; give the bands separately",
    )


def _holds(dtype: np.dtype, value: float) -> bool:
    """True when ``dtype`` represents ``value`` exactly."""
    if dtype.kind == "f":
        return True
    info = np.iinfo(dtype)
    return float(value).is_integer() and info.min <= value <= info.max


def output_nodata(src: ImageSource, requested: float | None) -> float | None:
    """Requested noData, else the source's, else NaN for floats and none for integers.

    An integer image without nodata gets none: all its values are data (a 0 in an 8-bit
    ortho is black, not a hole); coverage is tracked separately (GDAL's alpha)."""
    dtype, native = storage_type(src)
    if requested is not None:
        info = np.finfo(dtype) if np.dtype(dtype).kind == "f" else np.iinfo(dtype)
        if not (math.isnan(requested) and np.dtype(dtype).kind == "f") and not (
            info.min <= requested <= info.max
        ):
            raise ImageError(
                src.source_uris[0], f"noData {requested} does not fit its data type {dtype}"
            )
        return float(requested)
    if native is not None:
        return float(native)
    return float("nan") if np.dtype(dtype).kind == "f" else None


def plan_collection(
    sources: list[ImageSource],
    *,
    out_crs: CRS | None,
    cell_size: object = "MinOf",
    clip: shapely.Geometry | None = None,
    clip_crs: CRS | None = None,
    nodata: float | None = None,
    tile: int = DEFAULT_TILE,
    lattice: Lattice | None = None,
) -> Plan:
    """Plan the collection: lattice (given for an existing collection, else derived),
    each image's grid and the chunks that hold data. Images that cannot be placed are
    reported in ``Plan.failed`` and do not stop the others."""
    if lattice is None:
        crs = collection_crs(sources, out_crs)
        lattice = Lattice(crs, resolve_cell_size(sources, crs, cell_size), tile)
    crs = lattice.crs
    clip_c = None
    if clip is not None:
        from engine.geometry import Region

        clip_c = Region(clip, clip_crs or crs).to_crs(crs).geometry
        shapely.prepare(clip_c)
    plan = Plan(lattice, [], clip=clip_c)
    for src in sources:
        try:
            plan.images.append(_plan_image(src, lattice, clip_c, nodata))
        except ImageError as exc:
            plan.failed.append((src, exc.source, exc.reason))
    return plan


def _plan_image(
    src: ImageSource, lattice: Lattice, clip: shapely.Geometry | None, nodata: float | None
) -> ImagePlan:
    fp = image_footprint(src, lattice.crs)
    # Chunks are selected with a one-cell margin: densification error must never drop a
    # chunk that holds data (an extra chunk costs one empty warp, a missing one a seam).
    reach = fp.buffer(lattice.cell_size, join_style="mitre")
    if clip is not None:
        fp = fp.intersection(clip)
        reach = reach.intersection(clip)
        if fp.is_empty:
            raise ImageError(
                src.source_uris[0], "lies wholly outside the clip (extent/clippingGeometry)"
            )
    grid = lattice.grid_for(fp.bounds)
    if grid.height == 0 or grid.width == 0:
        raise ImageError(src.source_uris[0], "covers no whole pixel of the collection grid")
    index, boxes = chunk_boxes(grid, lattice.tile_size)
    shapely.prepare(reach)
    hit = shapely.intersects(reach, boxes)
    chunks = [ij for ij, h in zip(index, hit, strict=True) if h]
    scales = [resampling_scale(part.grid, grid) for part in src.parts]
    # Coverage masking needs an outline that is the image's true edge; a hull sampled
    # inside the image (full disk) undercuts its limb, so there GDAL's validity alone rules.
    exact = src.finest_part.grid.outline_has_position_in(lattice.crs, _FOOTPRINT_POINTS)
    coverage = reach if exact else clip
    dtype = storage_type(src)[0]
    return ImagePlan(src, grid, chunks, fp, dtype, output_nodata(src, nodata), scales, coverage)
