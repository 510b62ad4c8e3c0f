"""The ArcGIS REST server of mosaicflow: ``create_app(root)`` builds the FastAPI app."""

from __future__ import annotations

from engine.server.app import create_app

__all__ = ["create_app"]
