"""Results as SpatialData: a real her2st prediction round trip (tiny model, cached mode), writing
into an existing store element by element, and an interrupted write."""

from __future__ import annotations

import hashlib
import warnings
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("spatialdata")
torch = pytest.importorskip("torch")

from napari_stexp import cli  # noqa: E402
from napari_stexp.errors import InputError  # noqa: E402
from napari_stexp.io.open import open_path  # noqa: E402
from napari_stexp.io.sdata_write import element_names, write_sdata  # noqa: E402

MODULE = "napari_stexp.commands.expression"


def _tree_digest(root: Path, skip: tuple[str, ...] = ()) -> dict[str, str]:
    out = {}
    for f in sorted(root.rglob("*")):
        rel = f.relative_to(root).as_posix()
        if f.is_file() and not any(rel.startswith(s) for s in skip) and rel != "zarr.json":
            out[rel] = hashlib.sha256(f.read_bytes()).hexdigest()
    return out


def _read_zarr(path):
    import spatialdata as sd

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return sd.read_zarr(path)


@pytest.fixture(scope="module")
def her2st_prediction(her2st_dir, tmp_path_factory):
    """A tiny mclSTExp model trained on B4 predicting section C2's slide: .h5ad and .zarr."""
    if MODULE not in cli.COMMAND_MODULES:
        cli.COMMAND_MODULES.append(MODULE)
    torch.set_num_threads(1)
    tmp = tmp_path_factory.mktemp("her2st_pred")
    assert cli.main(["expression", "train", "--data", str(her2st_dir), "--sections", "B4",
                     "--out", str(tmp / "model"), "--cache-dir", str(tmp / "cache"), "--tiny",
                     "--epochs", "1", "--mode", "cached", "--input-size", "32", "--quiet"]) == 0
    image = next((her2st_dir / "ST-imgs" / "C" / "C2").glob("*.jpg"))
    for out in ("pred.h5ad", "pred.zarr"):
        assert cli.main(["expression", "predict", "--model", str(tmp / "model"), "--image",
                         str(image), "--out", str(tmp / out), "--pitch-um", "300",
                         "--quiet"]) == 0
    return tmp / "pred.h5ad", tmp / "pred.zarr", image


@pytest.mark.realdata
def test_her2st_prediction_round_trip(her2st_prediction):
    import anndata as ad

    h5ad, store, image = her2st_prediction
    ref = ad.read_h5ad(h5ad)
    sdata = _read_zarr(store)  # spatialdata itself opens it
    (tname,) = list(sdata.tables)
    table = sdata.tables[tname]
    region = table.uns["spatialdata_attrs"]["region"]
    assert region in sdata.shapes and len(sdata.shapes[region]) == ref.n_obs
    np.testing.assert_allclose(np.asarray(table.X), np.asarray(ref.X), rtol=1e-6)
    np.testing.assert_allclose(table.obs["confidence"].to_numpy(), ref.obs["confidence"])
    np.testing.assert_allclose(table.obsm["X_mclstexp"], ref.obsm["X_mclstexp"])
    assert table.uns["napari_stexp"]["kind"] == "mclstexp_slide_prediction"
    shapes = sdata.shapes[region]
    np.testing.assert_allclose(np.column_stack([shapes.geometry.x, shapes.geometry.y]),
                               ref.obsm["spatial"])
    # napari-stexp reopens it with the same numbers and frame
    op = open_path(store)
    assert op.kind == "spatialdata"
    (sec, back), = op.adatas.items()
    assert sec == str(ref.obs["section"].iloc[0])
    np.testing.assert_allclose(back.X.toarray(), np.asarray(ref.X), rtol=1e-6)
    np.testing.assert_allclose(back.obsm["spatial"], ref.obsm["spatial"])
    np.testing.assert_allclose(back.obs["confidence"].to_numpy(), ref.obs["confidence"])
    np.testing.assert_allclose(back.obsm["X_mclstexp"], ref.obsm["X_mclstexp"])
    assert list(back.var_names) == list(ref.var_names)
    assert list(back.obs_names) == list(ref.obs_names)
    m0 = ref.uns["spatial"][sec]["metadata"]
    m1 = back.uns["spatial"][sec]["metadata"]
    # µm/px (None = unknown: this slide's JPEG has none) travels as it is
    assert (m1.get("mpp_fullres") is None) == (m0.get("mpp_fullres") is None)
    if m0.get("mpp_fullres") is not None:
        assert m1["mpp_fullres"] == pytest.approx(m0["mpp_fullres"])
    assert m1["source_image_path"] == str(Path(image).resolve())
    assert back.uns["spatial"][sec]["scalefactors"]["spot_diameter_fullres"] == pytest.approx(
        ref.uns["spatial"][sec]["scalefactors"]["spot_diameter_fullres"])


def _result(seed=0, n=30, genes=8):
    from napari_stexp.io.spatial import build_st_adata

    rng = np.random.default_rng(seed)
    a = build_st_adata(rng.poisson(3, (n, genes)), [f"s{i}" for i in range(n)],
                       [f"g{i}" for i in range(genes)], rng.random((n, 2)) * 500,
                       section="S1", spot_diameter_fullres=20.0, mpp_fullres=0.5)
    a.X = rng.random((n, genes)).astype(np.float32)  # "predicted"
    a.layers["measured"] = a.layers["counts"]
    a.obs["confidence"] = rng.random(n)
    a.obs["cls"] = np.array(["tumour", "stroma", "immune"])[rng.integers(0, 3, n)]
    a.obsm["cls_proba"] = rng.dirichlet(np.ones(3), n)
    a.obsm["X_bvae"] = rng.normal(size=(n, 4)).astype(np.float32)
    a.uns["napari_stexp"] = {"kind": "test", "model": "tiny", "list": [1, 2, 3]}
    return a


def test_write_into_existing_store_keeps_other_elements(tmp_path, make_sdata_store):
    store, _, _ = make_sdata_store(tmp_path / "s.zarr")
    before = _tree_digest(store)
    a = _result()
    write_sdata(a, store, name="pred")
    assert element_names(store) == {"images": ["he"], "shapes": ["cells", "pred"],
                                    "tables": ["pred_table", "table"]}
    after = _tree_digest(store, skip=("shapes/pred", "tables/pred_table"))
    assert {k: v for k, v in after.items() if k in before} == before  # untouched, byte for byte
    sdata = _read_zarr(store)
    t = sdata.tables["pred_table"]
    np.testing.assert_allclose(np.asarray(t.X), a.X)
    np.testing.assert_array_equal(np.asarray(t.layers["measured"].toarray()),
                                  a.layers["measured"].toarray())
    assert str(t.obs["cls"].dtype) == "category"
    np.testing.assert_allclose(t.obsm["cls_proba"], a.obsm["cls_proba"])
    np.testing.assert_allclose(t.obsm["X_bvae"], a.obsm["X_bvae"])
    assert sdata.shapes["pred"]["radius"].iloc[0] == pytest.approx(10.0)
    assert "micrometer" in sdata.coordinate_systems  # µm/px known: a µm coordinate system
    op = open_path(store)
    assert set(op.adatas) == {"table:cells", "S1"}


def test_interrupted_write_leaves_the_store_as_it_was(tmp_path, make_sdata_store):
    store, _, _ = make_sdata_store(tmp_path / "s.zarr")
    write_sdata(_result(0), store, name="pred")
    before = _tree_digest(store)
    with pytest.raises(RuntimeError, match="interrupted"):
        write_sdata(_result(1, n=40), store, name="pred", _fail_after=1)  # shapes moved, not table
    assert _tree_digest(store) == before
    assert not list(tmp_path.glob(".s.zarr.tmp-*"))  # nothing staged is left behind
    t = _read_zarr(store).tables["pred_table"]
    np.testing.assert_allclose(np.asarray(t.X), _result(0).X)


def test_refuses_old_layout_and_non_zarr(tmp_path, stexp_data):
    merfish = stexp_data / "spatialdata-merfish" / "merfish.zarr"
    if merfish.exists():
        with pytest.raises(InputError, match="older \\(zarr v2\\) SpatialData store"):
            write_sdata(_result(), merfish)
    bad = tmp_path / "x.zarr"
    bad.mkdir()
    with pytest.raises(InputError, match="x.zarr: exists and is not a zarr store"):
        write_sdata(_result(), bad)
