"""The ST-guided batch-agnostic classifier: losses, calibration, training on the synthetic slide,
save/load, whole-slide classification, evaluation/embedding, bad input and real her2st A1/B1."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pandas as pd
import pytest

from napari_stexp.analysis.slide_classify import classify_slide
from napari_stexp.errors import InputError
from napari_stexp.models.batch_agnostic import (
    PREFIX,
    BatchAgnosticClassifier,
    ClassifierConfig,
    ClassifierWarning,
    class_guided_loss,
    embed_sections,
    evaluate_classifier,
    fit_temperature,
    info_nce,
    soft_target_loss,
    spatial_block_split,
    train_classifier,
)

torch = pytest.importorskip("torch")
torch.set_num_threads(1)


@pytest.fixture(scope="module")
def slide():
    from napari_stexp.data.synthetic_slide import make_synthetic_slide

    return make_synthetic_slide(12, 12, mpp=1.4, seed=0)


@pytest.fixture(scope="module")
def trained(slide):
    """A tiny model trained once on the synthetic slide (one patient)."""
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        model = train_classifier({"SYN1": slide.adata}, ClassifierConfig.tiny(),
                                 images={"SYN1": slide.pyramid}, cache_dir=False)
    return model, [str(w.message) for w in rec]


# ----------------------------------------------------------------------------- pure functions


def test_contrastive_losses():
    g = torch.Generator().manual_seed(0)
    a = torch.nn.functional.normalize(torch.randn(16, 8, generator=g), dim=1)
    b = torch.nn.functional.normalize(torch.randn(16, 8, generator=g), dim=1)
    aligned, shuffled = info_nce(a, a, 0.1), info_nce(a, b, 0.1)
    assert float(aligned) < float(shuffled) - 1.0
    # soft targets: with distinct embeddings the targets are ~identity -> ~InfoNCE
    assert abs(float(soft_target_loss(a, a, 0.02)) - float(info_nce(a, a, 0.02))) < 0.05
    # duplicate spots: perfectly aligned embeddings reach the soft loss's minimum (the entropy
    # of its targets: no false-negative penalty), while InfoNCE still pays for the duplicate
    c = a.clone()
    c[1] = a[0]
    t = torch.softmax(c @ c.T / 0.1, dim=-1)
    entropy = float(-(t * torch.log(t)).sum(1).mean())
    assert float(soft_target_loss(c, c, 0.1)) == pytest.approx(entropy, abs=5e-3)
    assert float(info_nce(c, c, 0.1)) > float(info_nce(a, a, 0.1)) + 0.05
    y = torch.tensor([0, 0, 1, 1] + [-1] * 12)
    assert float(class_guided_loss(a, a, y, 0.1)) > 0
    assert float(class_guided_loss(a, a, torch.full((16,), -1), 0.1)) == 0.0
    a.requires_grad_(True)
    info_nce(a, b, 0.1).backward()
    assert torch.isfinite(a.grad).all()


def test_temperature_scaling_calibrates():
    from napari_stexp.evaluation.classification import expected_calibration_error

    rng = np.random.default_rng(0)
    true_logits = rng.normal(0, 1.5, (2000, 4))
    p = np.exp(true_logits)
    p /= p.sum(1, keepdims=True)
    y = np.array([rng.choice(4, p=row) for row in p])
    over = true_logits * 4.0  # an overconfident model
    t = fit_temperature(over, y)
    assert 3.0 < t < 5.5

    def sm(z):
        e = np.exp(z - z.max(1, keepdims=True))
        return e / e.sum(1, keepdims=True)

    assert expected_calibration_error(sm(over / t), y) < expected_calibration_error(sm(over), y)
    assert expected_calibration_error(sm(over / t), y) < 0.05


def test_spatial_block_split():
    xy = np.array([[x, y] for x in range(20) for y in range(20)], float)
    labels = np.where(xy[:, 0] < 10, "a", "b").astype(object)
    labels[:5] = None
    val = spatial_block_split(xy, ["S"] * len(xy), labels, 0.25, 4, seed=1)
    lab = np.array([v is not None for v in labels])
    assert 0.2 <= val[lab].mean() <= 0.35
    assert not val[~lab].any()
    blocks = pd.Series([f"{int(x // 4)}-{int(y // 4)}" for x, y in xy])
    for _, idx in blocks[lab].groupby(blocks[lab]).groups.items():  # whole blocks only
        assert len(set(val[idx])) == 1
    # a class whose spots all fall in validation blocks keeps them for training
    rare = labels.copy()
    rare[(xy[:, 0] == 19) & (xy[:, 1] == 19)] = "c"
    val2 = spatial_block_split(xy, ["S"] * len(xy), rare, 0.5, 4, seed=3)
    assert not val2[rare == "c"].any()


# ----------------------------------------------------------------------------- training


def test_train_synthetic_learns_and_calibrates(slide, trained):
    model, msgs = trained
    assert model.classes == ["adipose tissue", "connective tissue", "invasive cancer"]
    assert any("only one batch" in m for m in msgs)  # single patient: warned, continued
    truth = slide.adata.obs["label"].astype(str).to_numpy()
    res = model.predict_patches(model.section_patches(slide.adata, "SYN1", slide.pyramid))
    assert res["proba"].shape == (slide.adata.n_obs, 3)
    np.testing.assert_allclose(res["proba"].sum(1), 1.0, atol=1e-5)
    majority = pd.Series(truth).value_counts(normalize=True).max()
    acc = float((res["class"] == truth).mean())
    assert acc > majority + 0.1, (acc, majority)
    val = model.provenance["validation"]
    assert val["n"] >= 10 and 0 < val["temperature"] < 20
    assert val["ece"] <= val["ece_before_calibration"] + 1e-9
    assert model.history["image"] and model.history["gene"]


def test_save_load_roundtrip(tmp_path, slide, trained):
    model, _ = trained
    out = model.save(tmp_path / "model")
    meta = json.loads((out / "config.json").read_text())
    assert meta["classes"] == model.classes and meta["batches"] == ["P1"]
    assert len(meta["genes"]) == slide.adata.n_vars  # 30 synthetic genes < 200 requested
    assert meta["provenance"]["seed"] == 0 and "created" in meta["provenance"]
    assert (out / "gene_encoder" / "gene_vae.pt").is_file()
    m2 = BatchAgnosticClassifier.load(out)
    p = model.section_patches(slide.adata, "SYN1", slide.pyramid)
    np.testing.assert_allclose(model.predict_patches(p)["proba"],
                               m2.predict_patches(p)["proba"], atol=1e-5)
    assert float(m2.net.calibration_temperature) == pytest.approx(
        model.provenance["validation"]["temperature"])
    (out / "config.json").write_text("{}")
    with pytest.raises(InputError, match="not a batch-agnostic classifier"):
        BatchAgnosticClassifier.load(out)
    with pytest.raises(InputError, match="not found"):
        BatchAgnosticClassifier.load(tmp_path / "nope")


def test_classify_slide_grid(slide, trained):
    model, _ = trained
    ad = classify_slide(model, slide.pyramid, name="SYN1")
    assert ad.n_obs > 50
    assert list(ad.uns[f"{PREFIX}_classes"]) == model.classes
    proba = ad.obsm[f"{PREFIX}_proba"]
    assert proba.shape == (ad.n_obs, 3) and (proba >= 0).all() and (proba <= 1).all()
    np.testing.assert_allclose(proba.sum(1), 1.0, atol=1e-5)
    assert set(ad.obs[f"{PREFIX}_class"].astype(str)) <= set(model.classes)
    np.testing.assert_allclose(ad.obs[f"{PREFIX}_confidence"], proba.max(1), atol=1e-6)
    xy = ad.obsm["spatial"]
    assert (xy >= 0).all() and (xy[:, 0] < slide.image.shape[1]).all()
    assert ad.obsm["X_image"].shape == (ad.n_obs, model.config.projection_dim)


def test_evaluate_and_embed_with_a_section_without_image(slide, trained):
    model, _ = trained
    no_img = slide.adata.copy()
    no_img.uns["spatial"]["SYN1"]["images"] = {}
    no_img.obs["label"] = no_img.obs["label"].cat.add_categories(["alien"])
    no_img.obs.iloc[:4, no_img.obs.columns.get_loc("label")] = "alien"
    with pytest.warns(ClassifierWarning, match="alien"):
        rep, details = evaluate_classifier(model, {"SYN1": slide.adata, "NOIMG": no_img})
    assert list(rep.columns) == ["method", "section", "n_spots", "accuracy", "macro_f1"]
    assert set(zip(rep["method"], rep["section"], strict=True)) == {
        (PREFIX, "SYN1"), ("gene_latent", "SYN1"), ("gene_latent", "NOIMG")}
    assert int(rep.loc[rep["section"] == "NOIMG", "n_spots"].iloc[0]) == slide.adata.n_obs - 4
    assert rep["accuracy"].between(0, 1).all()
    assert "ece" in details[f"{PREFIX}/SYN1"]
    emb = embed_sections(model, {"SYN1": slide.adata, "NOIMG": no_img})
    assert emb.n_obs == 2 * slide.adata.n_obs
    assert emb.obsm["X_gene_latent"].shape == (emb.n_obs, model.config.gene.n_latent)
    has = emb.obs["has_image"].to_numpy(bool)
    assert has.sum() == slide.adata.n_obs
    assert np.isfinite(emb.obsm["X_image"][has]).all() and np.isnan(emb.obsm["X_image"][~has]).all()
    assert set(emb.obs["patient"]) == {"P1"}


def test_supervised_baseline_and_soft_loss(slide):
    sup = train_classifier({"SYN1": slide.adata}, ClassifierConfig.tiny(objective="supervised",
                                                                       classifier_epochs=0),
                           images={"SYN1": slide.pyramid}, cache_dir=False)
    assert sup.gene_model is None and sup.net.gene_head is None
    with pytest.raises(InputError, match="without a gene encoder"):
        sup.gene_embed({"SYN1": slide.adata})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        soft = train_classifier({"SYN1": slide.adata},
                                ClassifierConfig.tiny(loss="soft", epochs=2,
                                                      gene={"epochs": 3}),
                                images={"SYN1": slide.pyramid}, cache_dir=False)
    losses = [e["loss"] for e in soft.history["image"]]
    assert len(losses) == 2 and all(np.isfinite(losses))


# ----------------------------------------------------------------------------- bad input


def test_bad_input(slide):
    cfg = ClassifierConfig.tiny(epochs=1, classifier_epochs=1, gene={"epochs": 1})
    imgs = {"SYN1": slide.pyramid}
    nolab = slide.adata.copy()
    nolab.obs["label"] = pd.Categorical([np.nan] * nolab.n_obs)
    with pytest.raises(InputError, match="no labelled spot"):
        train_classifier({"SYN1": nolab}, cfg, images=imgs, cache_dir=False)
    noimg = slide.adata.copy()
    noimg.uns["spatial"]["SYN1"]["images"] = {}
    with pytest.raises(InputError, match="no section has an H&E image"):
        train_classifier({"SYN1": noimg}, cfg, cache_dir=False)
    nan = slide.adata.copy()
    nan.obsm["spatial"] = nan.obsm["spatial"].copy()
    nan.obsm["spatial"][3] = np.nan
    with pytest.raises(InputError, match="NaN"):
        train_classifier({"SYN1": nan}, cfg, images=imgs, cache_dir=False)
    with pytest.raises(InputError, match="unknown mode"):
        ClassifierConfig(mode="fast").validate()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        with pytest.warns(ClassifierWarning, match="not among the classes"):
            m = train_classifier({"SYN1": slide.adata},
                                 ClassifierConfig.tiny(epochs=1, classifier_epochs=5,
                                                       gene={"epochs": 1},
                                                       classes=["invasive cancer",
                                                                "connective tissue"]),
                                 images=imgs, cache_dir=False)
    assert m.classes == ["invasive cancer", "connective tissue"]
    with pytest.warns(ClassifierWarning, match="fewer than 40 labelled"):
        m = train_classifier({"SYN1": slide.adata},
                             ClassifierConfig.tiny(epochs=1, classifier_epochs=5,
                                                   gene={"epochs": 1}, min_class_spots=40),
                             images=imgs, cache_dir=False)
    assert "adipose tissue" not in m.classes


# ----------------------------------------------------------------------------- real data


@pytest.mark.realdata
def test_her2st_a1_image_and_b1_labels(her2st_dir, tmp_path):
    """A1 (H&E + labels, patient A) and B1 (labels, no image, patient B): the gene encoder sees
    two patients, the image classifier A1; evaluation covers both methods."""
    from napari_stexp.io.her2st import her2st_gene_panel
    from napari_stexp.io.st import read_st, section_image

    genes = her2st_gene_panel(her2st_dir)[:200]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        secs = read_st(her2st_dir, ["A1", "B1"], images=False, genes=genes)
        model = train_classifier(secs, ClassifierConfig.tiny(), genes=genes,
                                 cache_dir=tmp_path / "cache")
    assert model.provenance["image_sections"] == ["A1"]
    assert model.provenance["gene_sections"] == ["A1", "B1"] and model.batches == ["A", "B"]
    assert {"invasive cancer", "connective tissue", "cancer in situ"} <= set(model.classes)
    assert "immune infiltrate" not in model.classes  # 2 spots < min_class_spots
    pyr = section_image(secs["A1"])
    assert pyr is not None and pyr.width == 2000
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rep, _ = evaluate_classifier(model, secs, cache_dir=tmp_path / "cache")
    got = {(m, s): n for m, s, n in zip(rep["method"], rep["section"], rep["n_spots"],
                                        strict=True)}
    n_a1 = int(secs["A1"].obs["label"].isin(model.classes).sum())
    assert got[(PREFIX, "A1")] == n_a1 == got[("gene_latent", "A1")]
    assert ("gene_latent", "B1") in got and (PREFIX, "B1") not in got
    assert rep["accuracy"].between(0, 1).all() and rep["macro_f1"].between(0, 1).all()


def test_existing_obsm_latent_instead_of_the_vae(slide, tmp_path):
    """A user latent (obsm['X_scVI']) replaces the gene VAE; saved and reloaded by key."""
    a = slide.adata.copy()
    rng = np.random.default_rng(0)
    a.obsm["X_scVI"] = rng.normal(size=(a.n_obs, 7)).astype(np.float32)
    m = train_classifier({"SYN1": a}, ClassifierConfig.tiny(gene_latent="obsm:X_scVI", epochs=1,
                                                            classifier_epochs=5),
                         images={"SYN1": slide.pyramid}, cache_dir=False)
    assert m.net.gene_head.projection.in_features == 7
    m.save(tmp_path / "m")
    m2 = BatchAgnosticClassifier.load(tmp_path / "m")
    np.testing.assert_array_equal(m2.gene_embed({"SYN1": a}), a.obsm["X_scVI"])
    with pytest.raises(InputError, match="obsm\\['X_scVI'\\] not found"):
        m2.gene_embed({"SYN1": slide.adata})
