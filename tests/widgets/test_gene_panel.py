"""One default gene panel for the expression widget and the CLI (issue 17.5): the base panel +
the tissue's markers present in the data + the genes a user names."""

from __future__ import annotations

import numpy as np
import pytest


def _adatas(genes):
    import anndata as ad

    X = np.random.default_rng(0).poisson(3.0, (40, len(genes))).astype(np.float32)
    a = ad.AnnData(X)
    a.var_names = genes
    a.obs["section"] = "S1"
    return {"S1": a}


def test_default_panel_adds_present_markers_and_named_genes():
    from napari_stexp.data.panels import default_panel
    from napari_stexp.errors import InputError

    genes = [f"G{i}" for i in range(30)] + ["ERBB2", "ESR1", "MKI67"]
    adatas = _adatas(genes)
    panel, how = default_panel(adatas, top_genes=5, add_genes="G29")
    assert {"ERBB2", "ESR1", "MKI67", "G29"} <= set(panel) and "PGR" not in panel
    assert len(panel) == len(set(panel)) and "breast markers" in how
    assert "ERBB2" not in default_panel(adatas, top_genes=5, tissue="none")[0]
    with pytest.raises(InputError, match="NOPE"):
        default_panel(adatas, add_genes="NOPE")


@pytest.mark.gui
@pytest.mark.realdata
def test_cli_and_widget_train_on_the_same_panel_with_erbb2(her2st_dir, tmp_path,
                                                          make_napari_viewer, qtbot,
                                                          monkeypatch):
    import torch

    from napari_stexp import cli
    from napari_stexp.io.st import read_st
    from napari_stexp.session import get_session
    from napari_stexp.widgets.expression import ExpressionWidget

    torch.set_num_threads(1)
    module = "napari_stexp.commands.expression"
    if module not in cli.COMMAND_MODULES:
        monkeypatch.setattr(cli, "COMMAND_MODULES", [*cli.COMMAND_MODULES, module])
    fast = {"epochs": 1, "input_size": 32, "batch_size": 32, "top_k": 5}
    rc = cli.main(["expression", "train", "--data", str(her2st_dir), "--sections", "B4",
                   "--out", str(tmp_path / "m"), "--tiny", "--mode", "cached", "--epochs", "1",
                   "--input-size", "32", "--no-cache", "--quiet"])
    assert rc == 0
    cli_genes = (tmp_path / "m" / "genes.txt").read_text().split()

    adatas = read_st([str(her2st_dir)], ["B4"], images=True)
    viewer = make_napari_viewer()
    get_session(viewer).add_adata("B4", adatas["B4"])
    w = ExpressionWidget(viewer)
    w.set_checked(["B4"])
    worker = w.train(mode="cached", backbone="tinycnn", device="cpu", cache_dir=False, **fast)
    with qtbot.waitSignal(worker.finished, timeout=600_000):
        pass
    assert w.model is not None, w.status.text()
    assert list(w.model.genes) == cli_genes
    panel = np.load(her2st_dir / "her_hvg_cut_1000.npy", allow_pickle=False)
    assert cli_genes[:len(panel)] == [str(g) for g in panel]
    assert "ERBB2" in cli_genes and "ESR1" in cli_genes
