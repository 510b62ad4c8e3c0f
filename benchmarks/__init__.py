"""Benchmarks and synthetic inputs for mosaicflow.

``engine.synth`` makes realistic synthetic scenes (also used by ``mosaicflow demo``),
``benchmarks.measure`` times a subprocess and samples its process tree's memory,
``benchmarks.baselines`` holds the reference tools (gdalwarp, odc-geo, plain I/O), and
``python -m benchmarks.ingest`` runs them all side by side with mosaicflow.

Importing this package (or ``engine.synth``) has no side effects.
"""
