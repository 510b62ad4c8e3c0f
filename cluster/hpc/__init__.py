"""HPC recipes: Dask clusters on batch schedulers (dask-jobqueue)."""
