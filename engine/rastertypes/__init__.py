"""Raster types: how a source reference becomes an :class:`ImageSource`.

Each type module exposes ``NAME`` and ``probe(uri, gdal_path, name, params) -> ImageSource``
(``params`` the request's rasterTypeParameters, a case-insensitive mapping); a type that needs
the whole batch at once (camera tracks, GPS tables) exposes instead
``probe_batch(refs, params) -> list[ImageSource | ImageError]``, one result per source ref
(a product holding images of several groups may answer a list of ImageSource instead).
A type may expose ``recognise(uri, gdal_path) -> str | None`` ("a Landsat 8 Collection 2
Level-2 product"): :func:`describe` asks them when a probe fails, for the wrong-pick message.
A type whose products are found in directories by file name (``*_MTL.txt``) sets
``PATTERNS``, the globs :func:`engine.sources.resolve_sources` keeps from a directory walk.
The registry maps the canonical ``rasterTypeName`` of SPEC §1 to its module; the satellite
and camera types register here as they are built.
"""

from __future__ import annotations

from types import ModuleType

from engine.errors import RequestError
from engine.rastertypes import (
    aerial,
    landsat7,
    landsat8,
    raster_dataset,
    scanned_aerial,
    sentinel2,
    uav,
    zy3,
)
from engine.rastertypes.base import ImageSource, SourcePart, image_id_for

REGISTRY: dict[str, ModuleType] = {
    raster_dataset.NAME: raster_dataset,
    sentinel2.NAME: sentinel2,
}

REGISTRY.update({m.NAME: m for m in (uav, aerial, scanned_aerial)})  # camera types (issue 5)

REGISTRY.update({landsat8.NAME: landsat8, landsat7.NAME: landsat7})  # satellite (issue 4)

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


def describe(uri: str, gdal_path: str, *, exclude: str | None = None) -> str | None:
    """What the input looks like to the raster types, for a wrong ``rasterTypeName`` pick.

    Every registered module exposing ``recognise(uri, gdal_path) -> str | None`` is asked,
    the specific types first and the generic Raster Dataset last; the first answer wins:
    ``'this looks like a Landsat 8 Collection 2 Level-2 product (...); use rasterTypeName
    "Landsat 8"'``.
    ``exclude`` skips the type that was picked (and failed). None: nobody recognises it.
    """
    mods = [m for n, m in REGISTRY.items() if n != exclude and hasattr(m, "recognise")]
    mods.sort(key=lambda m: m is raster_dataset)
    for mod in mods:
        try:
            found = mod.recognise(uri, gdal_path)
        except Exception:  # a hint must never turn one failure into another
            continue
        if found:
            return f'this looks like {found}; use rasterTypeName "{mod.NAME}"'
    return None


def source_patterns(name: str) -> tuple[str, ...] | None:
    """The file-name globs raster type ``name`` wants from directories (None: any raster)."""
    patterns = getattr(REGISTRY.get(name), "PATTERNS", None)
    return tuple(patterns) if patterns else None


__all__ = [
    "REGISTRY",
    "ImageSource",
    "SourcePart",
    "describe",
    "get_raster_type",
    "image_id_for",
    "source_patterns",
]
