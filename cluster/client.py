"""Obtain a Dask client for an ingestion.

Order of precedence: a ``client`` passed in (used as is, never closed), a scheduler
address (``--scheduler`` or ``DASK_SCHEDULER_ADDRESS``), else a ``LocalCluster`` started
for the run and closed after it.

The local cluster is sized from the machine and ``parallelProcessingFactor`` (see
:func:`local_cluster_size`). By default it is one worker with one *thread* per slot, in
this process: half the memory of worker processes, and a script needs no ``__main__``
guard. ``processes=True`` (``mosaicflow create --processes``) starts one single-threaded
worker process per slot instead, which isolates GDAL per process as a real cluster does
and scales further: a thread holds the GIL about 23 % of its time, so threads stop near
4× whatever the cores. Measured on the W8 benchmark (8 × 4096², 2 cores; the README and
``python -m benchmarks.cluster_scaling``): 2 threads 18.0 s at 511 MiB, 2 worker processes
15.9 s at 1201 MiB.

Workers get GDAL settings through :class:`GDALEnvPlugin`, and worker processes an
allocator that reuses chunk buffers (:class:`cluster.allocator.AllocatorPlugin`), both
registered on every cluster this module hands out (local or external), never by hand.
"""

from __future__ import annotations

import ctypes
import os
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import dask
from distributed import Client, LocalCluster
from distributed.diagnostics.plugin import WorkerPlugin

from cluster.allocator import AllocatorPlugin

_MB = 1024 * 1024

# GDAL settings every worker gets (variables already set on a worker win, so a deployment
# can override any of them with its own environment). Why each one:
GDAL_WORKER_ENV = {
    # Block cache per process, in MB. GDAL's default is 5 % of RAM *per process*; bounded,
    # the cache stays flat. 32 MB: a 32768² scene peaked at 0.99× a 4096² one's worker
    # memory (1.09× with 64 MB), and W8 runs as fast (benchmarks/README.md).
    # Read once, when GDAL first needs its cache: the plugin sets it before a worker's
    # first task.
    "GDAL_CACHEMAX": "32",
    # Opening s3://bucket/x.tif must not list the "directory" (one LIST request over a
    # prefix that may hold millions of keys) nor probe .aux.xml/.ovr/.msk sidecars.
    "GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR",
    # /vsicurl/ (and /vsis3/, /vsigs/, ...) keep one LRU cache of downloaded ranges per
    # process, shared by all threads and files; 16 MB by default, raised to hold a chunk
    # row's worth of source blocks so neighbouring chunks do not fetch them again.
    "CPL_VSIL_CURL_CACHE_SIZE": str(128 * _MB),
    # VSI_CACHE is a *per open file handle* cache (25 MB each by default): handles are
    # cached per thread and per scene, and it doubled peak memory on local inputs, so it
    # stays off. A deployment that turns it on (VSI_CACHE=TRUE on the workers) gets a
    # bounded size per handle.
    "VSI_CACHE": "FALSE",
    "VSI_CACHE_SIZE": str(8 * _MB),
    # A COG's header and tile offsets are fetched in one GET at open.
    "GDAL_INGESTED_BYTES_AT_OPEN": "32768",
    # Adjacent tile ranges are merged into one request.
    "GDAL_HTTP_MERGE_CONSECUTIVE_RANGES": "YES",
    # HTTP/2 multiplexing: the requests of one worker share a connection.
    "GDAL_HTTP_MULTIPLEX": "YES",
    # Transient HTTP errors (429, 500, 502, 503, 504) are retried 5 times, the delay
    # starting at 1 s and growing between attempts; a hung connection fails after 60 s
    # (10 s to connect) instead of holding a worker thread forever.
    "GDAL_HTTP_MAX_RETRY": "5",
    "GDAL_HTTP_RETRY_DELAY": "1",
    "GDAL_HTTP_TIMEOUT": "60",
    "GDAL_HTTP_CONNECTTIMEOUT": "10",
    # Parallelism comes from Dask: one GDAL thread per task, no oversubscription.
    "GDAL_NUM_THREADS": "1",
}


def apply_gdal_env(env: dict[str, str] | None = None) -> None:
    """Set the worker GDAL settings in this process (variables already set win).

    Parameters
    ----------
    env:
        The settings; default :data:`GDAL_WORKER_ENV`. Called before any raster is
        opened, so GDAL reads them when it initialises (GDAL reads the other options
        from the environment on each use).
    """
    for key, value in (GDAL_WORKER_ENV if env is None else env).items():
        os.environ.setdefault(key, value)


class GDALEnvPlugin(WorkerPlugin):
    """Sets the GDAL configuration on each worker before it runs any task.

    Registered with ``client.register_plugin``: the scheduler keeps it and runs
    :meth:`setup` on every worker now and on each worker that joins later (a replaced or
    scaled-up worker gets the same settings).
    """

    name = "mosaicflow-gdal-env"

    def __init__(self, env: dict[str, str] | None = None) -> None:
        self.env = dict(GDAL_WORKER_ENV if env is None else env)

    def setup(self, worker: object) -> None:
        apply_gdal_env(self.env)
        from engine.storage import apply_gdal_s3_env

        apply_gdal_s3_env()  # an S3 endpoint given as AWS_ENDPOINT_URL serves GDAL too
        # GDAL reads GDAL_CACHEMAX once, at its first raster: on a worker that already read
        # one (a cluster shared with other work), set the block cache size directly
        cache = _cache_bytes(os.environ.get("GDAL_CACHEMAX", ""))
        if cache is not None:
            from rasterio.env import set_gdal_config

            set_gdal_config("GDAL_CACHEMAX", cache)


def _cache_bytes(value: str) -> int | None:
    """GDAL_CACHEMAX in bytes (GDAL's rule: below 100000 it is megabytes), or None for
    what GDAL resolves itself (a percentage of RAM, or nothing set)."""
    try:
        number = int(value)
    except ValueError:
        return None
    return number * 1024 * 1024 if number < 100_000 else number


def local_cluster_size(
    parallel_processing_factor: float | int | None = None, workers: int | None = None
) -> int:
    """How many tasks the local cluster runs at once.

    Parameters
    ----------
    parallel_processing_factor:
        ``Context.parallel_processing_factor`` as engine/request.py parses it: an int is
        a count ("4" → 4; 0 turns parallelism off → 1), a float is a fraction of the
        cores ("50%" → 0.5 → half, "150%" → 1.5 → one and a half times the cores).
    workers:
        An explicit count (``--workers``); wins over the factor.

    Returns
    -------
    int
        At least 1; every core when neither is given.
    """
    cores = os.cpu_count() or 1
    if workers:
        return max(1, int(workers))
    if parallel_processing_factor is None:
        return cores
    if isinstance(parallel_processing_factor, float):  # a percentage of the cores
        return max(1, round(cores * parallel_processing_factor))
    return max(1, int(parallel_processing_factor))


@contextmanager
def dask_client(
    client: Client | None = None,
    *,
    scheduler: str | None = None,
    workers: int | None = None,
    parallel_processing_factor: float | int | None = None,
    processes: bool = False,
) -> Iterator[Client]:
    """Yield a ready client with the GDAL plugin registered; close only what was started.

    Parameters
    ----------
    client:
        An existing client, used as is.
    scheduler:
        A scheduler address (``tcp://host:8786``); default ``DASK_SCHEDULER_ADDRESS``.
    workers, parallel_processing_factor:
        Size of a local cluster (:func:`local_cluster_size`).
    processes:
        Local cluster of single-threaded worker processes instead of threads in this
        process.
    """
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
    if not processes:
        # the worker threads share this process's BLAS: one BLAS thread per task, as
        # Dask's nanny gives worker processes (OPENBLAS_NUM_THREADS=1)
        with one_blas_thread(), _local_cluster(n, processes=False) as c:
            yield c
        return
    with _local_cluster(n, processes=True) as c:
        yield c


@contextmanager
def _local_cluster(n: int, *, processes: bool) -> Iterator[Client]:
    shape = (
        {"n_workers": n, "threads_per_worker": 1, "processes": True, "memory_limit": "auto"}
        if processes
        else {"n_workers": 1, "threads_per_worker": n, "processes": False, "memory_limit": 0}
    )
    # the dashboard listens on loopback only, and its link says so
    with (
        dask.config.set({"distributed.dashboard.link": "http://127.0.0.1:{port}/status"}),
        LocalCluster(dashboard_address="127.0.0.1:0", **shape) as cluster,
        Client(cluster) as c,
    ):
        _register(c)
        yield c


@contextmanager
def one_blas_thread() -> Iterator[None]:
    """Run with numpy's OpenBLAS on one thread, then restore its thread count.

    numpy's OpenBLAS starts a thread per core and keeps them spinning after each call; in
    a process whose Dask threads already use every core, they only steal CPU (measured on
    3 W8 scenes, 2 threads, two interleaved runs each: 13.2 instead of 15.6-16.9 CPU
    seconds, 4-14 % faster). Worker processes get the same from Dask's nanny
    (``OPENBLAS_NUM_THREADS=1``).
    """
    blas = _openblas()
    before = blas[0]() if blas else None
    if blas:
        blas[1](1)
    try:
        yield
    finally:
        if blas and before:
            blas[1](before)


def _openblas() -> tuple[Any, Any] | None:
    """numpy's bundled OpenBLAS (get, set) thread-count functions, or None."""
    import numpy as np

    libs = Path(np.__file__).resolve().parent.parent / "numpy.libs"
    for path in sorted(libs.glob("*openblas*")) if libs.is_dir() else []:
        lib = ctypes.CDLL(str(path))  # already loaded by numpy: the same handle
        for prefix in ("scipy_openblas", "openblas"):
            for suffix in ("64_", ""):
                get = getattr(lib, f"{prefix}_get_num_threads{suffix}", None)
                put = getattr(lib, f"{prefix}_set_num_threads{suffix}", None)
                if get is not None and put is not None:
                    get.restype, put.argtypes = ctypes.c_int, [ctypes.c_int]
                    return get, put
    return None


def dashboard_link(client: Client) -> str | None:
    """The dashboard URL of the client's scheduler, or None when there is none to see.

    ``Client.dashboard_link`` is built from a template whether or not the scheduler serves
    a dashboard (``dask scheduler --no-dashboard`` still runs its HTTP server for /health,
    without /status). The link is dropped only when the scheduler has no HTTP server or
    answers 404 for it; an unreachable link (a cluster behind a proxy) is kept.
    """
    try:
        if "dashboard" not in client.scheduler_info().get("services", {}):
            return None
        link = str(client.dashboard_link)
    except Exception:  # no scheduler information: no link to give
        return None
    try:
        with urllib.request.urlopen(link, timeout=2):
            pass
    except urllib.error.HTTPError as exc:
        return None if exc.code == 404 else link
    except (OSError, ValueError):
        return link
    return link


def _register(client: Client) -> None:
    client.register_plugin(GDALEnvPlugin())
    client.register_plugin(AllocatorPlugin())
