"""Terrain for orthorectification: the ``dem`` raster-type parameter or a constant height.

The satellite (RPC) and camera types project pixels onto the ground; the ground is a DEM
given as ``{"url" | "uri" | "itemId": ...}`` in ``rasterTypeParameters.dem``, or a constant
height (``constantZ``, or the types' own defaults). The DEM reference is resolved here, once
per request, into a path GDAL opens on the workers.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from engine.errors import RequestError

_DEM_FIX = 'Give {"uri": "/path/to/dem.tif"}, {"url": "https://..."} or {"itemId": "..."}'


@dataclass(frozen=True)
class Terrain:
    """Where the ground is: a DEM GDAL reads (``gdal_path``) or a ``constant`` height in metres."""

    gdal_path: str | None = None
    constant: float | None = None

    def __post_init__(self) -> None:
        if (self.gdal_path is None) == (self.constant is None):
            raise ValueError("a Terrain is either a DEM path or a constant height")


def terrain_from_params(
    params: Mapping[str, Any],
    *,
    default_height: float | None = 0.0,
    items: Any = None,
) -> Terrain | None:
    """The terrain a request asks for: its ``dem``, else ``constantZ``, else ``default_height``.

    Parameters
    ----------
    params
        ``rasterTypeParameters`` (case-insensitive keys).
    default_height
        The height used without ``dem`` and ``constantZ``; None returns None instead.
    items
        An :class:`engine.sources.ItemResolver` for ``{"itemId": ...}``.

    Raises
    ------
    RequestError
        A ``dem`` that is not an object with one of url/uri/itemId, that names nothing, or a
        ``constantZ`` that is not a number.

    Examples
    --------
    >>> terrain_from_params({"constantZ": "300"})
    Terrain(gdal_path=None, constant=300.0)
    """
    lower = {str(k).lower(): v for k, v in params.items()}
    dem = lower.get("dem")
    if dem not in (None, "", {}):
        return Terrain(gdal_path=_dem_path(dem, items))
    z = lower.get("constantz")
    if z not in (None, ""):
        try:
            return Terrain(constant=float(z))
        except (TypeError, ValueError):
            raise RequestError(
                "rasterType.rasterTypeParameters.constantZ",
                z,
                "is not a number",
                "Give the ground height in metres, e.g. 300",
            ) from None
    return None if default_height is None else Terrain(constant=float(default_height))


def _dem_path(dem: Any, items: Any) -> str:
    from engine.request import InputKind, InputRasters
    from engine.sources import resolve_sources

    param = "rasterType.rasterTypeParameters.dem"
    if isinstance(dem, str):
        dem = {"uri": dem}
    if not isinstance(dem, Mapping):
        raise RequestError(param, dem, "is not a DEM reference", _DEM_FIX)
    keys = {str(k).lower(): v for k, v in dem.items()}
    kinds: tuple[tuple[str, InputKind], ...] = (
        ("uri", "uris"),
        ("url", "urls"),
        ("itemid", "itemIds"),
    )
    for key, kind in kinds:
        if keys.get(key):
            try:
                refs = resolve_sources(InputRasters(kind, (str(keys[key]),)), items=items)
            except RequestError as exc:
                raise RequestError(param, dem, exc.problem, exc.fix) from None
            if len(refs) != 1:
                raise RequestError(
                    param, dem, f"names {len(refs)} rasters", "Give exactly one DEM raster"
                )
            path = refs[0].gdal_path
            if not path.startswith("/vsi") and not os.path.exists(path):
                raise RequestError(param, dem, "names no existing file", "Check the DEM path")
            return path
    raise RequestError(param, dem, "has none of url, uri, itemId", _DEM_FIX)
