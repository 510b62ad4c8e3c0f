"""``mosaicflow demo``: the synthetic scenes are realistic and the demo ingests them for real."""

from __future__ import annotations

import numpy as np
import rasterio

from engine.demo import run_demo
from engine.synth import make_scenes
from engine.verify import verify_collection


def test_scenes_are_deterministic_tiled_and_collared(tmp_path):
    a = make_scenes(tmp_path / "a", n=2, size=256)
    b = make_scenes(tmp_path / "b", n=2, size=256)
    for pa, pb in zip(a, b, strict=True):
        with rasterio.open(pa) as da, rasterio.open(pb) as db:
            assert max(da.block_shapes[0]) <= 512 and da.nodata == 0 and da.count == 3
            x, y = da.read(), db.read()
            np.testing.assert_array_equal(x, y)
            collar = (x == 0).all(axis=0)
            assert 0.1 < collar.mean() < 0.6, "a tilted scene has a nodata collar"
            assert len(np.unique(x[0][~collar])) > 100, "content is not constant"


def test_demo_ingests_and_verifies(tmp_path, capsys):
    result = run_demo(tmp_path / "demo", scenes=2, size=256, workers=1)
    assert result.exit_code == 0 and len(result.complete) == 2
    assert verify_collection(result.store)["bad"] == 0
    assert "demo collection:" in capsys.readouterr().out
