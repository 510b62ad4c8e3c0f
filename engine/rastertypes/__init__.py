"""Raster types: how a source reference becomes an :class:`ImageSource`.

Each type module exposes ``NAME`` and ``probe(uri, gdal_path, name, params) -> ImageSource``
(``params`` the request's rasterTypeParameters, a case-insensitive mapping); a type that needs
the whole batch at once (camera tracks, GPS tables) exposes instead
``probe_batch(refs, params) -> list[ImageSource | ImageError]``, one result per source ref.
A type whose products are found in directories by file name (``*_MTL.txt``) sets
``PATTERNS``, the globs :func:`engine.sources.resolve_sources` keeps from a directory walk.
The registry maps the canonical ``rasterTypeName`` of SPEC §1 to its module; the satellite
and camera types register here as they are built.
"""

from __future__ import annotations

from types import ModuleType

from engine.errors import RequestError
from engine.rastertypes import raster_dataset, sentinel2, uav, zy3
from engine.rastertypes.base import ImageSource, SourcePart, image_id_for

REGISTRY: dict[str, ModuleType] = {
    raster_dataset.NAME: raster_dataset,
    sentinel2.NAME: sentinel2,
}

REGISTRY.update({uav.NAME: uav})  # camera types (issue 5)

REGISTRY.update({zy3.sasmac.NAME: zy3.sasmac, zy3.cresda.NAME: zy3.cresda})  # RPC (issue 4)


def get_raster_type(name: str) -> ModuleType:
    """The module implementing ``name``; a known name not built yet is a request error."""
    try:
        return REGISTRY[name]
    except KeyError:
        raise RequestError(
            "rasterType.rasterTypeName",
            name,
            "this raster type is not available in this version",
            f"use one of: {', '.join(REGISTRY)}",
        ) from None


def source_patterns(name: str) -> tuple[str, ...] | None:
    """The file-name globs raster type ``name`` wants from directories (None: any raster)."""
    patterns = getattr(REGISTRY.get(name), "PATTERNS", None)
    return tuple(patterns) if patterns else None


__all__ = [
    "REGISTRY",
    "ImageSource",
    "SourcePart",
    "get_raster_type",
    "image_id_for",
    "source_patterns",
]
