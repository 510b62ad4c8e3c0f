"""mosaicflow on a SLURM (or PBS) cluster through dask-jobqueue.

Run on a login node, in the environment mosaicflow is installed in (the batch jobs start
workers from the same ``python``)::

    pip install "mosaicflow[hpc]"          # dask-jobqueue
    python -m cluster.hpc.slurm /scratch/out.zarr /scratch/scenes/ --jobs 4 \
        --account myproject --partition compute

The client (this process) and the scheduler run on the login node; each batch job is one
worker process with a thread per core it was given (threads measured faster than processes
for mosaicflow's chunk task). Inputs and the store must be on a file system every node
mounts (or be object-store uris). The engine registers its GDAL settings on every worker
when it connects, including on workers that join later. ``--pbs`` makes PBS jobs instead.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any


def make_cluster(
    *,
    jobs: int = 4,
    cores: int = 8,
    memory: str = "16GiB",
    walltime: str = "02:00:00",
    account: str | None = None,
    queue: str | None = None,
    pbs: bool = False,
    interface: str | None = None,
    scheduler_options: dict[str, Any] | None = None,
) -> Any:
    """A dask-jobqueue cluster of ``jobs`` batch jobs, each one mosaicflow worker.

    Parameters
    ----------
    jobs:
        Batch jobs (= Dask workers) to submit; 0 submits none (inspect ``job_script()``).
    cores, memory, walltime:
        What each job asks the batch system for; the worker runs ``cores`` threads and is
        bounded by ``memory``.
    account, queue:
        The batch account and partition (SLURM) / queue (PBS).
    pbs:
        PBS Pro / Torque instead of SLURM.
    interface:
        The network interface workers reach the scheduler on (e.g. ``ib0``).
    scheduler_options:
        Passed to the scheduler (e.g. ``{"dashboard_address": ":8787"}``).

    Returns
    -------
    dask_jobqueue.SLURMCluster or dask_jobqueue.PBSCluster
    """
    from dask_jobqueue import PBSCluster, SLURMCluster

    cls = PBSCluster if pbs else SLURMCluster
    cluster = cls(
        cores=cores,
        processes=1,  # one worker process per job, `cores` threads in it
        memory=memory,
        walltime=walltime,
        account=account,
        queue=queue,
        interface=interface,
        job_name="mosaicflow",
        # numba caches the compiled warp kernels per user; GDAL runs one thread per task
        job_script_prologue=[
            'export NUMBA_CACHE_DIR="${TMPDIR:-/tmp}/numba-cache-$USER"',
            "export OMP_NUM_THREADS=1",
        ],
        scheduler_options=scheduler_options or {},
    )
    if jobs:
        cluster.scale(jobs=jobs)
    return cluster


def main(argv: list[str] | None = None) -> int:
    """Ingest on a batch cluster: the same request as ``mosaicflow create``."""
    from distributed import Client

    from engine import create_image_collection
    from engine.cli import ProgressPrinter, report

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("store")
    p.add_argument("inputs", nargs="+")
    p.add_argument("--jobs", type=int, default=4)
    p.add_argument("--cores", type=int, default=8)
    p.add_argument("--memory", default="16GiB")
    p.add_argument("--walltime", default="02:00:00")
    p.add_argument("--account")
    p.add_argument("--partition", dest="queue")
    p.add_argument("--pbs", action="store_true")
    p.add_argument("--interface")
    p.add_argument("--out-sr", default=None)
    p.add_argument("--cell-size", default=None)
    p.add_argument("--resampling", default=None)
    args = p.parse_args(argv)
    context = {
        k: v
        for k, v in {
            "outSR": args.out_sr,
            "cellSize": args.cell_size,
            "resamplingMethod": args.resampling,
        }.items()
        if v is not None
    }
    with (
        make_cluster(
            jobs=args.jobs,
            cores=args.cores,
            memory=args.memory,
            walltime=args.walltime,
            account=args.account,
            queue=args.queue,
            pbs=args.pbs,
            interface=args.interface,
        ) as cluster,
        Client(cluster) as client,
    ):
        client.wait_for_workers(1, timeout=3600)  # start once the first job runs
        result = create_image_collection(
            args.inputs,
            image_collection=args.store,
            context=context,
            client=client,
            progress=ProgressPrinter(),
        )
    return report(result, as_json=False)


if __name__ == "__main__":
    sys.exit(main())
