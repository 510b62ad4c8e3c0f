"""ArcGIS JSON rendering: strict JSON whatever the payload holds."""

from __future__ import annotations

import json
from datetime import UTC, datetime

from engine.server.arcgis import render


def test_nan_and_infinities_become_null_in_every_format():
    payload = {
        "stats": [1.5, float("nan")],
        "max": float("inf"),
        "when": datetime(2020, 1, 2, tzinfo=UTC),
    }
    for f in ("json", "pjson"):
        body = render(payload, f).body.decode()
        assert json.loads(body) == {
            "stats": [1.5, None],
            "max": None,
            "when": "2020-01-02 00:00:00+00:00",
        }
    page = render(payload, "html", "T").body.decode()
    assert "NaN" not in page and "Infinity" not in page and "null" in page
