"""How mosaicflow obtains a Dask client: a given one, a scheduler address, or a LocalCluster."""

from cluster.allocator import AllocatorPlugin, tune_allocator
from cluster.client import (
    GDAL_WORKER_ENV,
    GDALEnvPlugin,
    apply_gdal_env,
    dashboard_link,
    dask_client,
    local_cluster_size,
)

__all__ = [
    "GDAL_WORKER_ENV",
    "AllocatorPlugin",
    "GDALEnvPlugin",
    "apply_gdal_env",
    "dashboard_link",
    "dask_client",
    "local_cluster_size",
    "tune_allocator",
]
