"""What a raster type hands to the planner: an image as bands on a native grid, plus metadata.

A raster type turns one source reference (a file, a product directory, a metadata file)
into an :class:`ImageSource`. The source may be split into :class:`SourcePart` s: each part is
one GDAL dataset and a set of its bands on one native grid (a GeoTIFF is one part; a
Landsat product is one part per band file). The chunk kernels read parts through GDAL, so
a part carries only picklable facts: a path, band indexes and georeferencing.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from engine.grid import Grid


@dataclass(frozen=True)
class SourcePart:
    """Some bands of one GDAL dataset, warped together.

    ``georef`` is "transform" (an affine geotransform), "gcps" or "rpcs": the kernel hands
    GDAL the dataset itself, and GDAL's transformer follows the dataset's own georeferencing
    (with ``warp_options``); "camera" frames carry their projection model in ``model``.
    """

    path: str
    band_indexes: tuple[int, ...]
    band_names: tuple[str, ...]
    grid: Grid
    dtype: str
    nodata: float | None
    georef: str = "transform"
    resampling: str | None = None  # per-part override (e.g. "nearest" for QA bands)
    # extra GDAL warp/transformer options (e.g. RPC_HEIGHT, RPC_DEM for georef "rpcs")
    warp_options: tuple[tuple[str, str], ...] = ()
    # a picklable geometric model for georef "camera" (frame cameras), see graphs.chunk.warp_part
    model: Any = None


@dataclass
class ImageSource:
    """One image of the collection before warping: its parts and its metadata row."""

    image_id: str
    name: str
    source_uris: list[str]
    raster_type: str
    parts: list[SourcePart]
    product_name: str = ""
    sensor: str = ""
    group: str = ""
    acquisition_time: datetime | None = None
    cloud_cover: float | None = None
    sun_elevation: float | None = None
    sun_azimuth: float | None = None
    scale_offsets: list[tuple[float, float] | None] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)
    # the exact ground outline (shapely, in finest_part.grid.crs) when the grid's own
    # outline is not it (camera frames); the planner uses it for the image's footprint
    footprint: Any = None

    @property
    def band_names(self) -> list[str]:
        return [n for p in self.parts for n in p.band_names]

    @property
    def dtype(self) -> str:
        return self.parts[0].dtype

    @property
    def nodata(self) -> float | None:
        return self.parts[0].nodata

    @property
    def finest_part(self) -> SourcePart:
        return min(self.parts, key=lambda p: p.grid.resolution[0])


def image_id_for(raster_type: str, uris: list[str], name: str) -> str:
    """A deterministic, readable image id: the sanitised name plus a digest of the sources.

    The same source always gets the same id, so re-running a request resumes it.
    """
    digest = hashlib.blake2b(
        "\n".join([raster_type, *sorted(uris)]).encode(), digest_size=5
    ).hexdigest()
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("._-")[:60] or "image"
    return f"{stem}-{digest}"


def probe_one(probe_batch: Any, uri: str, gdal_path: str, name: str, params: Any) -> ImageSource:
    """``probe`` for a type built on ``probe_batch``: the batch of one source."""
    from engine.sources import SourceRef

    result = probe_batch([SourceRef(uri, gdal_path, name)], params or {})[0]
    if isinstance(result, Exception):
        raise result
    assert isinstance(result, ImageSource)
    return result
