"""What the engine knows about a collection and each of its images once ingestion ran.

These plain records flow from the ingestion (engine/ingest.py) into the catalog
(engine/catalog.py), the STAC export (engine/stac.py) and the service descriptor
(engine/service.py). They hold no pixels.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import numpy as np
import shapely

from engine.grid import Grid


@dataclass
class BandStats:
    """Running statistics of one band's valid pixels; merge chunk results with ``+``."""

    count: int = 0
    min: float = math.inf
    max: float = -math.inf
    sum: float = 0.0
    sumsq: float = 0.0

    def __add__(self, other: BandStats) -> BandStats:
        return BandStats(
            self.count + other.count,
            min(self.min, other.min),
            max(self.max, other.max),
            self.sum + other.sum,
            self.sumsq + other.sumsq,
        )

    @classmethod
    def of(cls, values: np.ndarray) -> BandStats:
        """Statistics of a 1-D array of valid values."""
        if values.size == 0:
            return cls()
        v = values.astype("float64", copy=False)
        return cls(int(v.size), float(v.min()), float(v.max()), float(v.sum()), float(np.dot(v, v)))

    @property
    def mean(self) -> float | None:
        return self.sum / self.count if self.count else None

    @property
    def std(self) -> float | None:
        if not self.count:
            return None
        m = self.sum / self.count
        return math.sqrt(max(self.sumsq / self.count - m * m, 0.0))

    def to_dict(self) -> dict[str, Any]:
        return {
            "count": self.count,
            "min": self.min if self.count else None,
            "max": self.max if self.count else None,
            "mean": self.mean,
            "stddev": self.std,
            "sum": self.sum,
            "sumsq": self.sumsq,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> BandStats:
        if not d.get("count"):
            return cls()
        return cls(
            int(d["count"]), float(d["min"]), float(d["max"]), float(d["sum"]), float(d["sumsq"])
        )


@dataclass
class CollectionInfo:
    """The fixed frame of a collection, as stored in the root group's ``mosaicflow`` attrs."""

    name: str
    crs_wkt: str
    cell_size: float
    tile_size: int
    origin: tuple[float, float] = (0.0, 0.0)
    collection_type: str = "UAV/UAS"
    raster_type: str = "Raster Dataset"


@dataclass
class ImageRecord:
    """One image of the collection: a catalog row, a STAC item, a descriptor contribution."""

    image_id: str
    name: str
    source_uris: list[str]
    raster_type: str
    status: str  # "complete" | "failed"
    message: str = ""
    group: str = ""
    product_name: str = ""
    sensor: str = ""
    acquisition_time: datetime | None = None  # timezone-aware UTC
    byref: bool = False
    grid: Grid | None = None  # target grid in the collection CRS (None when failed early)
    native_crs_wkt: str = ""
    native_resolution: tuple[float, float] | None = None  # source pixel size, source units
    band_names: list[str] = field(default_factory=list)
    dtype: str = ""
    nodata: float | None = None
    footprint: shapely.Geometry | None = None  # valid data, EPSG:4326, antimeridian-split
    data_bounds: tuple[float, float, float, float] | None = None  # valid data, collection CRS
    stats: list[BandStats] = field(default_factory=list)
    checksum: str = ""
    cloud_cover: float | None = None
    sun_elevation: float | None = None
    sun_azimuth: float | None = None
    ingested_at: datetime | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # raster-type specific columns
