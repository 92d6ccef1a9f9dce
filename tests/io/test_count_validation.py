"""One validator for every count matrix we read (io/_validate.py, issue 16)."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from napari_stexp.errors import InputError
from napari_stexp.io._validate import check_compressed, check_counts, check_sparse


def test_valid_csr_passes():
    X = sp.random(20, 30, density=0.2, format="csr", random_state=0)
    check_sparse("m.h5", X)
    check_sparse("m.h5", X.tocsc())
    check_counts("m.h5", X)


@pytest.mark.parametrize("edit, match", [
    (lambda ind, ptr: ind.__setitem__(3, 99), "column index 99 outside 0..29"),
    (lambda ind, ptr: ind.__setitem__(3, -1), "column index -1"),
    (lambda ind, ptr: ptr.__setitem__(5, ptr[6] + 2), "indptr decreases at row"),
    (lambda ind, ptr: ptr.__setitem__(0, 1), "indptr starts at 1"),
    (lambda ind, ptr: ptr.__setitem__(-1, ptr[-1] - 1), "indptr ends at"),
])
def test_broken_layouts(edit, match):
    X = sp.random(20, 30, density=0.2, format="csr", random_state=0)
    ind, ptr = X.indices.copy(), X.indptr.copy()
    edit(ind, ptr)
    with pytest.raises(InputError, match=match) as exc:
        check_compressed("m.h5", ind, ptr, 20, 30)
    assert str(exc.value).startswith("m.h5: ")


@pytest.mark.parametrize("value, match", [(-2.0, "negative"), (1e300, "float32"),
                                          (np.nan, "NaN"), (np.inf, "infinite")])
def test_bad_counts_name_the_rows(value, match):
    X = np.ones((4, 3))
    X[2, 1] = value
    with pytest.raises(InputError, match=match) as exc:
        check_counts("c.tsv", X, ["a", "b", "spot_c", "d"])
    assert "spot_c" in str(exc.value) and "refused" in str(exc.value)


def test_visium_matrix_with_out_of_range_index(visium_dir, tmp_path):
    import shutil

    import h5py

    from napari_stexp.io.visium import read_10x_h5

    p = tmp_path / "m.h5"
    shutil.copy(visium_dir / "filtered_feature_bc_matrix.h5", p)
    with h5py.File(p, "r+") as f:
        v = f["matrix/indices"][()]
        v[7] = 10**6
        f["matrix/indices"][...] = v
    with pytest.raises(InputError, match="feature index 1000000 outside"):
        read_10x_h5(p)


def test_binary_gene_list_is_refused(tmp_path):
    from napari_stexp.data.genes import load_gene_file

    p = tmp_path / "genes.txt"
    p.write_bytes(bytes(range(256)) * 4)
    with pytest.raises(InputError, match="genes.txt: not a text gene list"):
        load_gene_file(p)
    p.write_text("GATA3\nERBB2\n")
    assert load_gene_file(p) == ["GATA3", "ERBB2"]
