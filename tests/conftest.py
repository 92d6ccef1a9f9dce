"""Shared fixtures. Real data come from $STEXP_DATA (default ../shared/data); tests that need it
skip with a clear reason when it is absent."""

from __future__ import annotations

import os

import pytest

# Keep torch/BLAS from oversubscribing the 2 cores CI has.
os.environ.setdefault("OMP_NUM_THREADS", "2")

from napari_stexp.datasets import data_root


def pytest_configure(config):
    """The suite draws napari windows (Qt + Mesa) and trains torch models in ONE process: torch
    (triton's LLVM) must be loaded before Mesa's, as the plugin does in every process it runs in,
    whatever order the test files run in."""
    from napari_stexp._torch_guard import guard_torch

    guard_torch()  # hides triton when there is no CUDA (its LLVM clashes with Mesa's)
    try:
        import torch
        import torch.optim  # noqa: F401 - imports torch._dynamo, as training does
    except ImportError:  # pragma: no cover - torch is a dependency
        pass


def _require(*parts: str):
    path = data_root().joinpath(*parts)
    if not path.exists():
        pytest.skip(f"real data not found at {path} (set STEXP_DATA to the shared data folder)")
    return path


@pytest.fixture(scope="session")
def stexp_data():
    return _require()


@pytest.fixture(scope="session")
def her2st_dir():
    return _require("her2st")


@pytest.fixture(scope="session")
def visium_dir():
    return _require("visium-scanpy-testdata")


@pytest.fixture(scope="session")
def bccd_dir():
    return _require("bccd-wbc")


@pytest.fixture(scope="session")
def pbc_dir():
    return _require("pbc-wbc")


@pytest.fixture(scope="session")
def pbmc_path():
    return _require("pbmc68k-reduced", "10x_pbmc68k_reduced.h5ad")


@pytest.fixture(scope="session")
def xenium_dir():
    return _require("xenium-mouse-ileum-tiny")


@pytest.fixture(scope="session")
def hd_mock():
    return _require("visium-hd-layout-mock")


@pytest.fixture(scope="session")
def merfish():
    return _require("spatialdata-merfish", "merfish.zarr")
