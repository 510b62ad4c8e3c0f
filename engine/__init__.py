"""mosaicflow: image collections on open tools (rioxarray, Dask, Zarr, GeoParquet, STAC).

Public API::

    from engine import create_image_collection, open_collection
"""

from engine.collection import Collection, open_collection
from engine.errors import ImageError, MosaicflowError, RequestError, StoreError
from engine.ingest import IngestResult, create_image_collection

__all__ = [
    "Collection",
    "ImageError",
    "IngestResult",
    "MosaicflowError",
    "RequestError",
    "StoreError",
    "create_image_collection",
    "open_collection",
]
