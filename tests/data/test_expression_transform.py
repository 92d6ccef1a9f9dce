"""THE expression transform (data.genes.expression_transform): log1p CP10k over an explicit
library."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from napari_stexp.data.genes import expression_transform
from napari_stexp.errors import InputError

X = np.array([[1, 3, 6, 0], [0, 0, 0, 0], [2, 0, 2, 4]], np.float32)
NAMES = ["a", "b", "c", "d"]


def test_library_all_sums_every_gene_and_panel_only_the_panel():
    all_ = expression_transform(X, library="all", panel=["c", "a"], var_names=NAMES)
    np.testing.assert_allclose(all_[0], np.log1p(np.array([6, 1]) / 10 * 1e4), rtol=1e-6)
    panel = expression_transform(X, library="panel", panel=["c", "a"], var_names=NAMES)
    np.testing.assert_allclose(panel[0], np.log1p(np.array([6, 1]) / 7 * 1e4), rtol=1e-6)
    np.testing.assert_array_equal(all_[1], 0)  # empty library: zeros, no NaN
    assert all_.dtype == np.float32 and all_.shape == (3, 2)


def test_sparse_and_dense_agree_and_no_panel_means_every_column():
    dense = expression_transform(X, library="all")
    np.testing.assert_array_equal(dense, expression_transform(sp.csr_matrix(X), library="all"))
    np.testing.assert_array_equal(dense, expression_transform(X, library="panel"))
    np.testing.assert_allclose(dense[2], np.log1p(X[2] / 8 * 1e4), rtol=1e-6)


def test_the_library_is_explicit_and_genes_must_exist():
    with pytest.raises(TypeError):
        expression_transform(X)  # no default library
    with pytest.raises(ValueError, match="library"):
        expression_transform(X, library="spots")
    with pytest.raises(InputError, match="ZZ"):
        expression_transform(X, library="all", panel=["a", "ZZ"], var_names=NAMES)
