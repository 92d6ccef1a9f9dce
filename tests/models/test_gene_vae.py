"""The batch-agnostic gene encoder (scVI-style VAE): planted batch effects, real her2st, bad input."""

from __future__ import annotations

import warnings

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from napari_stexp.errors import InputError
from napari_stexp.evaluation.mixing import knn_transfer, mixing_report
from napari_stexp.models.gene_vae import (
    FittedGeneVAE,
    GeneVAEConfig,
    GeneVAEWarning,
    ObsmLatent,
    fit_gene_vae,
    gene_inputs,
    select_genes,
)

torch = pytest.importorskip("torch")
torch.set_num_threads(1)


def simulate_batches(n_per: int = 100, n_patients: int = 3, n_types: int = 3, n_genes: int = 40,
                     shift_sd: float = 1.0, seed: int = 0) -> dict[str, ad.AnnData]:
    """Spots of ``n_types`` tissue types in ``n_patients`` patients; each patient multiplies every
    gene by its own factor exp(N(0, shift_sd)) (the planted batch effect). NB counts."""
    rng = np.random.default_rng(seed)
    base = rng.normal(0, 1, n_genes)
    program = rng.normal(0, 1.0, (n_types, n_genes))
    out = {}
    for p in range(n_patients):
        shift = rng.normal(0, shift_sd, n_genes)
        y = rng.integers(0, n_types, n_per)
        log_rate = base + program[y] + shift + rng.normal(0, 0.2, (n_per, n_genes))
        prop = np.exp(log_rate)
        prop /= prop.sum(1, keepdims=True)
        mu = prop * (1500 * np.exp(rng.normal(0, 0.3, n_per)))[:, None]
        counts = rng.poisson(rng.gamma(10.0, mu / 10.0)).astype(np.float32)
        a = ad.AnnData(sp.csr_matrix(counts))
        a.var_names = [f"G{i}" for i in range(n_genes)]
        a.obs_names = [f"P{p}_{i}" for i in range(n_per)]
        a.obs["section"] = f"S{p}"
        a.obs["patient"] = f"P{p}"
        a.obs["label"] = pd.Categorical([f"type{k}" for k in y])
        out[f"S{p}"] = a
    return out


GENES = [f"G{i}" for i in range(40)]
FAST = dict(n_latent=10, n_hidden=64, epochs=100, batch_size=64, lr=2e-3, classifier=False)


@pytest.fixture(scope="module")
def planted():
    return simulate_batches()


@pytest.fixture(scope="module")
def planted_fits(planted):
    """The same code and data, batch conditioning on and off."""
    fits = {}
    for cond in (True, False):
        fits[cond] = fit_gene_vae(planted, genes=GENES,
                                  config=GeneVAEConfig(batch_conditioning=cond, **FAST))
    return fits


def test_nb_log_prob_matches_scipy():
    from scipy.stats import nbinom

    from napari_stexp.models.gene_vae import nb_log_prob

    x = torch.tensor([0.0, 1.0, 5.0, 40.0])
    mu = torch.tensor([0.5, 3.0, 5.0, 30.0])
    theta = torch.tensor([2.0, 0.7, 10.0, 4.0])
    ours = nb_log_prob(x, mu, theta).numpy()
    p = (theta / (theta + mu)).numpy()
    ref = nbinom.logpmf(x.numpy(), theta.numpy(), p)
    np.testing.assert_allclose(ours, ref, rtol=1e-4, atol=1e-4)


def test_batch_conditioning_mixes_planted_batches(planted, planted_fits):
    """Conditioning the decoder on the patient removes the planted patient shift from the latent;
    the unconditioned model (same code, flag off) keeps patients apart. Labels stay separable."""
    inp = gene_inputs(planted, GENES)
    batch, labels = inp.obs["patient"].to_numpy(), inp.obs["label"].to_numpy()
    rep = {}
    for cond, m in planted_fits.items():
        z = m.embed(planted)
        assert z.shape == (300, 10) and np.isfinite(z).all()
        r = mixing_report(z, batch, labels)
        held = batch == "P2"
        r["transfer"] = knn_transfer(z[~held], labels[~held], z[held], labels[held])["accuracy"]
        rep[cond] = r
    on, off = rep[True], rep[False]
    # batches mix measurably better with conditioning ...
    assert on["batch_silhouette_within_label"] < off["batch_silhouette_within_label"] - 0.15, rep
    assert on["knn_batch_accuracy"] < off["knn_batch_accuracy"] - 0.05, rep
    assert on["mixing_entropy"] > off["mixing_entropy"] + 0.3, rep
    assert off["knn_batch_accuracy"] > 0.95  # without it, patients are perfectly separable
    # ... while the tissue types stay apart and transfer to another patient (kNN from P0, P1
    # to P2); without conditioning the transfer breaks down
    assert on["label_silhouette"] > 0.1, rep
    assert on["transfer"] >= 0.9, rep
    assert on["transfer"] > off["transfer"] + 0.15, rep


def test_unseen_patient_is_embedded_without_its_batch(planted, planted_fits):
    """The encoder does not need the batch: a patient never seen in training embeds fine and
    gets the same latent whatever batch name it carries."""
    m = planted_fits[True]
    new = simulate_batches(n_per=30, n_patients=1, seed=5)["S0"]
    new.obs["patient"] = "NEW"
    z1 = m.embed(new)
    new.obs["patient"] = "P0"
    z2 = m.embed(new)
    np.testing.assert_allclose(z1, z2, atol=1e-5)


def test_save_load_roundtrip(tmp_path, planted, planted_fits):
    m = planted_fits[True]
    m.save(tmp_path / "m")
    m2 = FittedGeneVAE.load(tmp_path / "m")
    assert m2.genes == GENES and m2.batches == ["P0", "P1", "P2"]
    np.testing.assert_allclose(m.embed(planted), m2.embed(planted), atol=1e-5)
    with pytest.raises(InputError, match="no gene_vae.pt"):
        FittedGeneVAE.load(tmp_path)


def test_label_head_learned_library_and_unknown_classes(planted):
    """scANVI-style head + learned library: probabilities are valid and mostly right; labels
    outside a fixed class list become unlabelled with a warning naming them."""
    secs = {k: v.copy() for k, v in planted.items()}
    secs["S0"].obs["label"] = secs["S0"].obs["label"].cat.add_categories(["alien"])
    secs["S0"].obs.iloc[:5, secs["S0"].obs.columns.get_loc("label")] = "alien"
    cfg = GeneVAEConfig(**{**FAST, "classifier": True, "library": "learned", "epochs": 30})
    with pytest.warns(GeneVAEWarning, match="alien"):
        m = fit_gene_vae(secs, genes=GENES, config=cfg,
                         classes=["type0", "type1", "type2"])
    assert m.classes == ["type0", "type1", "type2"]
    p = m.predict_proba(planted)
    assert p.shape == (300, 3) and np.allclose(p.sum(1), 1, atol=1e-5)
    truth = gene_inputs(planted, GENES, classes=m.classes).labels
    assert (p.argmax(1) == truth).mean() > 0.9


def test_single_batch_warns_and_trains(planted):
    with pytest.warns(GeneVAEWarning, match="only one batch"):
        m = fit_gene_vae({"S0": planted["S0"]}, genes=GENES,
                         config=GeneVAEConfig(**{**FAST, "epochs": 3}))
    assert m.embed(planted["S0"]).shape == (100, 10)
    assert not m.module.cond  # conditioning really is off


def test_unlabelled_sections_train_unsupervised(planted):
    secs = {k: v.copy() for k, v in planted.items()}
    for a in secs.values():
        a.obs["label"] = pd.Categorical([np.nan] * a.n_obs)
    with pytest.warns(GeneVAEWarning, match="no labelled spots"):
        m = fit_gene_vae(secs, genes=GENES,
                         config=GeneVAEConfig(**{**FAST, "classifier": True, "epochs": 3}))
    assert m.classes == [] and m.module.classifier is None
    with pytest.raises(InputError, match="no classifier head"):
        m.predict_proba(secs)


def test_panel_and_bad_counts(planted):
    m_genes = select_genes(planted, n_top=15)
    assert len(m_genes) == 15 and set(m_genes) <= set(GENES)
    a = planted["S0"]
    few = a[:, GENES[:-3]].copy()  # 3 panel genes missing -> zeros, warning
    with pytest.warns(GeneVAEWarning, match="3 of 40 panel genes missing"):
        inp = gene_inputs({"S0": few}, GENES)
    assert (inp.counts[:, -3:] == 0).all()
    with pytest.raises(InputError, match="does not share the model's genes"):
        gene_inputs({"S0": a[:, :5].copy()}, GENES)
    neg = a.copy()
    neg.X = neg.X.toarray() * -1
    neg.layers.clear()
    with pytest.raises(InputError, match="negative"):
        gene_inputs({"S0": neg}, GENES)
    with pytest.raises(InputError, match="n_latent"):
        GeneVAEConfig(n_latent=1).validate()


def test_obsm_latent(planted):
    a = planted["S0"].copy()
    a.obsm["X_scVI"] = np.random.default_rng(0).normal(size=(a.n_obs, 12)).astype(np.float32)
    lat = ObsmLatent("X_scVI")
    assert lat.embed(a).shape == (100, 12) and lat.n_latent == 12
    with pytest.raises(InputError, match="obsm\\['X_other'\\] not found"):
        ObsmLatent("X_other").embed(a)
    a.obsm["X_scVI"][0, 0] = np.nan
    with pytest.raises(InputError, match="NaN"):
        ObsmLatent("X_scVI").embed(a)


@pytest.mark.realdata
def test_her2st_six_patients_gene_latent(her2st_dir):
    """Real her2st A1-F1 (six patients, pathologist labels; 150 spots each to stay fast): a few
    epochs of the gene encoder give a latent where patients mix far better than in PCA of
    log-normalised expression, where they separate almost perfectly."""
    from sklearn.decomposition import PCA

    from napari_stexp.data.genes import expression_transform
    from napari_stexp.io.her2st import her2st_gene_panel
    from napari_stexp.io.st import read_st

    genes = her2st_gene_panel(her2st_dir)[:300]
    rng = np.random.default_rng(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        secs = read_st(her2st_dir, ["A1", "B1", "C1", "D1", "E1", "F1"], images=False,
                       genes=genes)
        secs = {k: v[rng.choice(v.n_obs, 150, replace=False)].copy() for k, v in secs.items()}
        m = fit_gene_vae(secs, genes=genes,
                         config=GeneVAEConfig(n_latent=10, epochs=20, batch_size=64, lr=1e-2,
                                              kl_warmup=0.1, classifier=True))
    assert m.batches == list("ABCDEF")
    assert set(m.classes) >= {"invasive cancer", "connective tissue", "immune infiltrate"}
    assert "undetermined" not in m.classes
    inp = gene_inputs(secs, genes, classes=m.classes)
    assert inp.counts.shape == (900, 300)
    z = m.embed(secs)
    assert z.shape == (900, 10) and np.isfinite(z).all()
    pca = PCA(10, random_state=0).fit_transform(expression_transform(inp.counts, library="all"))
    batch = inp.obs["patient"].to_numpy()
    r_vae, r_pca = mixing_report(z, batch), mixing_report(pca, batch)
    assert r_pca["knn_batch_accuracy"] > 0.9  # patients separate strongly in PCA
    assert r_vae["knn_batch_accuracy"] < r_pca["knn_batch_accuracy"] - 0.1, (r_vae, r_pca)
    assert r_vae["mixing_entropy"] > r_pca["mixing_entropy"] + 0.2, (r_vae, r_pca)


def test_checkpoint_resume_and_cancel(tmp_path, planted):
    from napari_stexp.errors import CancelledError

    cfg = GeneVAEConfig(**{**FAST, "epochs": 2})
    a = fit_gene_vae(planted, genes=GENES, config=cfg, checkpoint_dir=tmp_path)
    assert (tmp_path / "last.pt").is_file()
    calls = []
    b = fit_gene_vae(planted, genes=GENES, config=cfg, checkpoint_dir=tmp_path,
                     progress=lambda d, t, m: calls.append(d))
    assert calls == []  # resumed after the last epoch: nothing left to train
    np.testing.assert_allclose(a.embed(planted), b.embed(planted), atol=1e-5)
    c = fit_gene_vae(planted, genes=GENES, config=GeneVAEConfig(**{**FAST, "epochs": 2,
                                                                     "n_latent": 6}),
                     checkpoint_dir=tmp_path)  # another run: the stale checkpoint is discarded
    assert c.embed(planted).shape == (300, 6)
    with pytest.raises(CancelledError):
        fit_gene_vae(planted, genes=GENES, config=cfg, cancel=lambda: True)
