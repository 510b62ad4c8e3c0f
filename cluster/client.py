"""Obtain a Dask client for an ingestion.

Order of precedence: a ``client`` passed in (used as is, never closed), a scheduler
address (``--scheduler`` or ``DASK_SCHEDULER_ADDRESS``), else a ``LocalCluster`` started
for the run and closed after it.

The local cluster uses worker *processes*, one thread each: GDAL's warper holds the GIL
only briefly, but zarr encoding, numpy statistics and Python glue in the chunk task do
not, and separate processes also keep GDAL's block cache per worker bounded and
predictable. Workers get GDAL settings through :class:`GDALEnvPlugin` (also registered on
external clusters), never by hand.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

from distributed import Client, LocalCluster
from distributed.diagnostics.plugin import WorkerPlugin

# GDAL settings every worker gets. The block cache is bounded so worker memory stays flat;
# the cloud settings avoid directory listings and retry transient HTTP errors.
GDAL_WORKER_ENV = {
    "GDAL_CACHEMAX": "128",
    "GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR",
    "CPL_VSIL_CURL_ALLOWED_EXTENSIONS": ".tif,.tiff,.TIF,.TIFF,.jp2,.JP2,.vrt,.xml,.txt,.json,.img,.IMD,.RPB",
    "GDAL_HTTP_MAX_RETRY": "5",
    "GDAL_HTTP_RETRY_DELAY": "1",
    "GDAL_HTTP_TIMEOUT": "60",
    "VSI_CACHE": "TRUE",
    "GDAL_NUM_THREADS": "1",
}


class GDALEnvPlugin(WorkerPlugin):
    """Sets the GDAL configuration on each worker before it runs any task."""

    name = "mosaicflow-gdal-env"

    def __init__(self, env: dict[str, str] | None = None) -> None:
        self.env = dict(GDAL_WORKER_ENV if env is None else env)

    def setup(self, worker: object) -> None:
        for key, value in self.env.items():
            os.environ.setdefault(key, value)


def local_cluster_size(
    parallel_processing_factor: float | int | None = None, workers: int | None = None
) -> int:
    """Worker count: ``workers`` if given, else ``parallelProcessingFactor`` ("4" → 4,
    "50%" → half the cores), else every core."""
    cores = os.cpu_count() or 1
    if workers:
        return max(1, int(workers))
    if parallel_processing_factor is None:
        return cores
    if isinstance(parallel_processing_factor, float) and parallel_processing_factor <= 1:
        return max(1, round(cores * parallel_processing_factor))
    return max(1, int(parallel_processing_factor))


@contextmanager
def dask_client(
    client: Client | None = None,
    *,
    scheduler: str | None = None,
    workers: int | None = None,
    parallel_processing_factor: float | int | None = None,
) -> Iterator[Client]:
    """Yield a ready client; close only what this function started."""
    if client is not None:
        _register(client)
        yield client
        return
    address = scheduler or os.environ.get("DASK_SCHEDULER_ADDRESS")
    if address:
        with Client(address) as c:
            _register(c)
            yield c
        return
    n = local_cluster_size(parallel_processing_factor, workers)
    with (
        LocalCluster(
            n_workers=n,
            threads_per_worker=1,
            processes=True,
            dashboard_address=":0",
            memory_limit=0,
            env=GDAL_WORKER_ENV,
        ) as cluster,
        Client(cluster) as c,
    ):
        _register(c)
        yield c


def _register(client: Client) -> None:
    client.register_plugin(GDALEnvPlugin())
