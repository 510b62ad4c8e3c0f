"""Obtain a Dask client for an ingestion.

Order of precedence: a ``client`` passed in (used as is, never closed), a scheduler
address (``--scheduler`` or ``DASK_SCHEDULER_ADDRESS``), else a ``LocalCluster`` started
for the run and closed after it.

The local cluster is one worker with one *thread* per core, in this process, chosen by
measurement on the W8 benchmark (8 × 4096² scenes, 2 cores): threads 27.9 s at 387 MiB
peak, two worker processes 30.4 s at 694 MiB. The chunk task spends its time in GDAL's
warper, zstd and numpy, which all release the GIL; processes only add interpreter copies,
nannies, pickling and a second GDAL block cache. Real clusters (``--scheduler``) run the
same task in worker processes, which the test suite exercises. Workers get GDAL settings
through :class:`GDALEnvPlugin` (also registered on external clusters), never by hand.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

import dask
from distributed import Client, LocalCluster
from distributed.diagnostics.plugin import WorkerPlugin

# GDAL settings every worker gets. The block cache is bounded so worker memory stays flat
# (GDAL's default is 5 % of RAM per process); the cloud settings avoid directory listings
# and retry transient HTTP errors. VSI_CACHE is left off: it holds 25 MB per open file
# handle (per thread, per scene), which doubled peak memory on local inputs.
GDAL_WORKER_ENV = {
    "GDAL_CACHEMAX": "64",
    "GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR",
    "CPL_VSIL_CURL_ALLOWED_EXTENSIONS": ".tif,.tiff,.TIF,.TIFF,.jp2,.JP2,.vrt,.xml,.txt,.json,.img,.IMD,.RPB",
    "GDAL_HTTP_MAX_RETRY": "5",
    "GDAL_HTTP_RETRY_DELAY": "1",
    "GDAL_HTTP_TIMEOUT": "60",
    "GDAL_NUM_THREADS": "1",
}


def apply_gdal_env(env: dict[str, str] | None = None) -> None:
    """Set the worker GDAL settings in this process (user-set variables win). Called
    before any raster is opened, so GDAL reads them when it initialises."""
    for key, value in (GDAL_WORKER_ENV if env is None else env).items():
        os.environ.setdefault(key, value)


class GDALEnvPlugin(WorkerPlugin):
    """Sets the GDAL configuration on each worker before it runs any task."""

    name = "mosaicflow-gdal-env"

    def __init__(self, env: dict[str, str] | None = None) -> None:
        self.env = dict(GDAL_WORKER_ENV if env is None else env)

    def setup(self, worker: object) -> None:
        apply_gdal_env(self.env)


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
    # the dashboard listens on loopback only, and its link says so
    with (
        dask.config.set({"distributed.dashboard.link": "http://127.0.0.1:{port}/status"}),
        LocalCluster(
            n_workers=1,
            threads_per_worker=n,
            processes=False,
            dashboard_address="127.0.0.1:0",
            memory_limit=0,
        ) as cluster,
        Client(cluster) as c,
    ):
        _register(c)
        yield c


def _register(client: Client) -> None:
    client.register_plugin(GDALEnvPlugin())
