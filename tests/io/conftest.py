"""Fixtures for the io tests: a small current-format SpatialData store written on demand."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest


def _make_store(path, *, region="cells", ids_offset=0, scale=0.5):
    """Image ``he`` (2 scales, Scale to global), 50 circles ``cells`` (ids 10..59) and a table
    annotating them (instance ids reversed, so order must not matter)."""
    import anndata as ad
    import spatialdata as sd
    from spatialdata.models import Image2DModel, ShapesModel, TableModel
    from spatialdata.transformations import Scale

    rng = np.random.default_rng(0)
    img = Image2DModel.parse(rng.integers(0, 255, (3, 200, 300), dtype=np.uint8),
                             dims=("c", "y", "x"), scale_factors=[2],
                             transformations={"global": Scale([scale, scale], axes=("y", "x"))})
    xy = rng.random((50, 2)) * 100
    shapes = ShapesModel.parse(xy, geometry=0, radius=np.full(50, 3.0), index=np.arange(10, 60))
    a = ad.AnnData(rng.poisson(2, (50, 20)).astype(np.float32))
    a.obs_names = [f"c{i}" for i in range(50)]
    a.var_names = [f"g{i}" for i in range(20)]
    a.obs["region"] = pd.Categorical([region] * 50)
    a.obs["cell_id"] = np.arange(10, 60)[::-1] + ids_offset
    table = TableModel.parse(a, region=region, region_key="region", instance_key="cell_id")
    s = sd.SpatialData(images={"he": img}, shapes={"cells": shapes}, tables={"table": table})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        s.write(path, overwrite=True)
    return path, xy, a


@pytest.fixture
def make_sdata_store():
    pytest.importorskip("spatialdata")
    return _make_store
