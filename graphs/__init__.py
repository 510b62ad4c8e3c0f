"""Dask graph builders (ingest.py) and the chunk task and numpy kernels they schedule."""
