"""mosaicflow: image collections on open tools (rioxarray, Dask, Zarr, GeoParquet, STAC).

Public API::

    from engine import create_image_collection, open_collection

Names are imported lazily: Dask workers unpickling a chunk task import only the modules
that task needs (graphs.chunk → engine.grid), never the whole orchestration stack.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "Collection": "engine.collection",
    "open_collection": "engine.collection",
    "IngestResult": "engine.ingest",
    "create_image_collection": "engine.ingest",
    "ImageError": "engine.errors",
    "MosaicflowError": "engine.errors",
    "RequestError": "engine.errors",
    "StoreError": "engine.errors",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'engine' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
