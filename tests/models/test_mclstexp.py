"""mclSTExp model: learning, retrieval math, loss, position tables, backbones, patches, caches,
save/load and bad input (tiny configurations; the real-data CLI test is in
test_expression_cli.py)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from expression_helpers import MPP, synthetic_pair
from napari_stexp.errors import InputError, StexpError

TINY = dict(backbone="tinycnn", patch_size=64, input_size=32, batch_size=64, top_k=50,
            device="cpu")


@pytest.fixture(scope="module")
def pair():
    return synthetic_pair()


@pytest.fixture(scope="module")
def trained(pair):
    from napari_stexp.models.mclstexp import train_expression_model

    adatas, images = pair
    return train_expression_model({"TRAIN": adatas["TRAIN"]}, images=images, mode="cached",
                                  epochs=30, cache_dir=False, **TINY)


# ----------------------------------------------------------------------------- learning


def test_trained_model_beats_untrained_on_a_new_slide(pair, trained):
    """Train on one synthetic section, test on another (other seed, same expression law)."""
    from napari_stexp.evaluation.regression import evaluate_model
    from napari_stexp.models.mclstexp import train_expression_model

    adatas, images = pair
    untrained = train_expression_model({"TRAIN": adatas["TRAIN"]}, images=images,
                                       mode="cached", epochs=0, cache_dir=False, **TINY)
    test = {"TEST": adatas["TEST"]}
    r_t = evaluate_model(trained, test, images=images, cache_dir=False, device="cpu",
                         baselines=()).table.iloc[0]
    r_u = evaluate_model(untrained, test, images=images, cache_dir=False, device="cpu",
                         baselines=()).table.iloc[0]
    assert r_t["pcc_acg"] > 0.3, r_t
    assert r_u["pcc_acg"] < 0.15, r_u
    assert r_t["pcc_acg"] - r_u["pcc_acg"] > 0.2
    # the loss went down and training recorded its history
    losses = [h["loss"] for h in trained.history]
    assert len(losses) == 30 and losses[-1] < 0.5 * losses[0]


def test_normalised_embeddings_with_learned_temperature_also_learn(pair):
    from napari_stexp.evaluation.regression import evaluate_model
    from napari_stexp.models.mclstexp import train_expression_model

    adatas, images = pair
    m = train_expression_model({"TRAIN": adatas["TRAIN"]}, images=images, mode="cached",
                               epochs=20, cache_dir=False, normalize_embeddings=True,
                               learn_temperature=True, **TINY)
    assert m.net.logit_scale.requires_grad
    assert not math.isclose(float(m.net.logit_scale.detach()), math.log(1 / 0.07), rel_tol=1e-6)
    r = evaluate_model(m, {"TEST": adatas["TEST"]}, images=images, cache_dir=False,
                       device="cpu", baselines=()).table.iloc[0]
    assert r["pcc_acg"] > 0.3


# ----------------------------------------------------------------------------- retrieval


def test_retrieval_uses_cosine_top_k_and_inverse_square_distance_weights():
    from napari_stexp.models.mclstexp import retrieve

    q = np.array([[1.0, 0.0]], np.float32)
    refs = np.array([[2.0, 0.0],     # cos 1.000, d = 1
                     [0.5, 0.05],    # cos 0.995, d ≈ 0.502
                     [0.0, 1.0],     # cos 0
                     [-1.0, 0.0]],   # cos -1
                    np.float32)
    expr = np.array([[10.0, 0.0], [0.0, 10.0], [100.0, 100.0], [-50.0, 7.0]], np.float32)
    pred, conf = retrieve(q, refs, expr, top_k=2)
    d = np.linalg.norm(refs[:2] - q, axis=1)
    w = 1 / d**2
    w /= w.sum()
    np.testing.assert_allclose(pred[0], w @ expr[:2], rtol=1e-5)
    cos = refs[:2] @ q[0] / np.linalg.norm(refs[:2], axis=1)
    np.testing.assert_allclose(conf[0], cos.mean(), rtol=1e-5)
    # the nearer (in Euclidean distance) neighbour dominates though its cosine is lower
    assert pred[0, 1] > pred[0, 0]
    # L1 distances (the published code)
    pred1, _ = retrieve(q, refs, expr, top_k=2, distance="l1")
    d1 = np.abs(refs[:2] - q).sum(axis=1)
    w1 = 1 / d1**2
    np.testing.assert_allclose(pred1[0], (w1 / w1.sum()) @ expr[:2], rtol=1e-5)
    # k larger than the reference: all references, still a weighted mean (weights sum to 1)
    predk, confk = retrieve(q, refs, np.ones((4, 2), np.float32), top_k=200)
    np.testing.assert_allclose(predk, 1.0, rtol=1e-5)
    np.testing.assert_allclose(confk[0], np.mean(refs @ q[0] / np.linalg.norm(refs, axis=1)),
                               rtol=1e-5)


def test_retrieval_exact_match_dominates_and_chunks_agree():
    from napari_stexp.models.mclstexp import retrieve

    rng = np.random.default_rng(0)
    refs = rng.normal(size=(300, 16)).astype(np.float32)
    expr = rng.normal(size=(300, 5)).astype(np.float32)
    pred, conf = retrieve(refs[:7], refs, expr, top_k=20)
    np.testing.assert_allclose(pred, expr[:7], atol=1e-4)  # d = 0 → all weight on itself
    q = rng.normal(size=(50, 16)).astype(np.float32)
    a, ca = retrieve(q, refs, expr, top_k=20, chunk=7)
    b, cb = retrieve(q, refs, expr, top_k=20, chunk=1000)
    np.testing.assert_allclose(a, b, rtol=1e-5)
    np.testing.assert_allclose(ca, cb, rtol=1e-5)


# ----------------------------------------------------------------------------- loss, positions


def test_symmetric_loss_with_identity_targets():
    from torch.nn import functional as F

    from napari_stexp.models.mclstexp import MclstexpConfig, MclstexpNet, contrastive_loss

    torch.manual_seed(0)
    logits = torch.randn(6, 6)
    eye = torch.eye(6)
    ref = (F.cross_entropy(logits, eye) + F.cross_entropy(logits.T, eye)) / 2
    assert torch.allclose(contrastive_loss(logits), ref)
    assert float(contrastive_loss(torch.eye(8) * 50)) < 1e-6  # perfect matching
    assert math.isclose(float(contrastive_loss(torch.zeros(8, 8))), math.log(8), rel_tol=1e-6)
    # the network divides by the temperature (unnormalised embeddings by default)
    net = MclstexpNet(5, MclstexpConfig(backbone="tinycnn", temperature=2.0, pos_size_x=4,
                                        pos_size_y=4))
    a, b = torch.randn(3, 256), torch.randn(3, 256)
    assert torch.allclose(net.logits(a, b), b @ a.T / 2.0, atol=1e-5)
    assert torch.allclose(net.loss(a, b), contrastive_loss(b @ a.T / 2.0), atol=1e-5)
    netn = MclstexpNet(5, MclstexpConfig(backbone="tinycnn", normalize_embeddings=True,
                                         pos_size_x=4, pos_size_y=4))
    assert torch.allclose(netn.logits(a, b), F.normalize(b, dim=1) @ F.normalize(a, dim=1).T,
                          atol=1e-5)


def test_position_tables_are_sized_to_the_data(pair, trained):
    from napari_stexp.models.mclstexp import position_table_sizes

    pos = np.array([[1, 3], [35, 2], [10, 33]])
    assert position_table_sizes(pos, margin=8) == (44, 42)
    with pytest.raises(InputError):
        position_table_sizes(np.array([[-1, 2]]))
    adatas, _ = pair
    ax = adatas["TRAIN"].obs["array_x"].max()
    assert trained.net.x_embed.num_embeddings == ax + 1 + trained.config.pos_margin
    assert trained.net.x_embed.num_embeddings < 100  # not 65,536 rows
    # her2st-sized model: ~6 M parameters in the spot side, not 100 M in position tables
    from napari_stexp.models.mclstexp import MclstexpConfig, MclstexpNet

    net = MclstexpNet(785, MclstexpConfig(backbone="tinycnn", pos_size_x=44, pos_size_y=44))
    n_pos = net.x_embed.weight.numel() + net.y_embed.weight.numel()
    assert n_pos == 2 * 44 * 785
    assert sum(p.numel() for p in net.parameters()) < 10_000_000


# ----------------------------------------------------------------------------- backbones


def test_backbones_output_pooled_features_and_load_local_weights(tmp_path):
    from napari_stexp.models.backbones import build_image_encoder

    x = torch.rand(2, 3, 64, 64)
    for name, dim in (("tinycnn", 64), ("resnet18", 512)):
        enc, d = build_image_encoder(name, None)
        assert d == dim and enc.eval()(x).shape == (2, dim)
    # a torchvision-layout state dict (with the classifier) loads into the encoder
    import torchvision

    tv = torchvision.models.resnet18(weights=None)
    path = tmp_path / "r18.pt"
    torch.save({"state_dict": {f"module.{k}": v for k, v in tv.state_dict().items()}}, path)
    enc, _ = build_image_encoder("resnet18", path)
    assert torch.equal(enc.trunk[0].weight, tv.conv1.weight)
    # the wrong architecture or a missing file: clear InputError
    enc_t, _ = build_image_encoder("tinycnn", None)
    bad = tmp_path / "tiny.pt"
    torch.save(enc_t.state_dict(), bad)
    with pytest.raises(InputError, match="do not fit backbone 'resnet18'"):
        build_image_encoder("resnet18", bad)
    with pytest.raises(InputError, match="not found"):
        build_image_encoder("resnet18", tmp_path / "missing.pt")
    with pytest.raises(InputError, match="unknown backbone"):
        build_image_encoder("vgg99")


def test_densenet_is_memory_efficient_and_pools_to_1024():
    from napari_stexp.models.backbones import build_image_encoder

    enc, d = build_image_encoder("densenet121", None, memory_efficient=True)
    assert d == 1024
    layer = enc.trunk.denseblock1.denselayer1
    assert layer.memory_efficient
    assert enc.eval()(torch.rand(1, 3, 64, 64)).shape == (1, 1024)


def test_imagenet_weights_offline_give_a_clear_error(monkeypatch):
    import torchvision

    from napari_stexp.models import backbones

    def offline(*a, **k):
        raise OSError("network is unreachable")

    monkeypatch.setattr(torchvision.models.ResNet18_Weights.IMAGENET1K_V1.__class__,
                        "get_state_dict", offline)
    with pytest.raises(StexpError, match="cannot get ImageNet weights.*resnet18-"):
        backbones.build_image_encoder("resnet18", "imagenet")


# ----------------------------------------------------------------------------- patches, caches


def test_patches_are_centred_and_resampled_to_the_training_scale():
    from napari_stexp.data.patches import PatchSpec, extract_patches, read_size_px
    from napari_stexp.data.synthetic_slide import pyramid_from_array

    img = np.full((400, 500, 3), 255, np.uint8)
    img[200:210, 300:310] = (255, 0, 0)  # a red square centred at (205, 305)
    pyr = pyramid_from_array(img, mpp=1.0, min_size=64)
    spec = PatchSpec(patch_size=40, input_size=40, target_mpp=1.0)
    p = extract_patches(pyr, np.array([[205.0, 305.0]]), read_size_px(pyr, spec), 40)
    red = (p[0, :, :, 1] < 50)
    rr, cc = np.nonzero(red)
    assert abs(rr.mean() - 19.5) < 1 and abs(cc.mean() - 19.5) < 1
    # the same physical field from a 2× coarser image (2 µm/px): same patch content
    small = img[::2, ::2].copy()
    pyr2 = pyramid_from_array(small, mpp=2.0, min_size=64)
    assert read_size_px(pyr2, spec) == 20
    p2 = extract_patches(pyr2, np.array([[102.5, 152.5]]), read_size_px(pyr2, spec), 40)
    rr2, cc2 = np.nonzero(p2[0, :, :, 1] < 128)
    assert abs(rr2.mean() - 19.5) < 1.5 and abs(cc2.mean() - 19.5) < 1.5
    assert 50 < len(rr2) < 200  # ~10×10 px of red at the training scale


def test_augmentation_keeps_pixels_without_jitter_and_changes_colours_with_it():
    from napari_stexp.data.patches import augment_batch

    x = torch.rand(16, 3, 8, 8)
    g = torch.Generator().manual_seed(0)
    y = augment_batch(x, g, jitter=(0, 0, 0))
    for i in range(16):  # each output is a rotation/flip of its input
        assert torch.allclose(torch.sort(y[i].flatten())[0], torch.sort(x[i].flatten())[0])
    assert not torch.allclose(y, x)
    z = augment_batch(x, g, jitter=(0.5, 0.5, 0.5))
    assert z.min() >= 0 and z.max() <= 1
    assert not torch.allclose(torch.sort(z[0].flatten())[0], torch.sort(x[0].flatten())[0])


def test_feature_cache_hits_and_keys_change_with_data_and_backbone(tmp_path, pair):
    from napari_stexp.data.patches import PatchSpec
    from napari_stexp.models import feature_cache as fc
    from napari_stexp.models.backbones import build_image_encoder
    from napari_stexp.models.feature_cache import backbone_signature
    from napari_stexp.models.mclstexp import section_frozen_features

    adatas, images = pair
    ad, pyr = adatas["TRAIN"][:20].copy(), images["TRAIN"]
    spec = PatchSpec(64, 32, MPP)
    torch.manual_seed(0)
    enc, _ = build_image_encoder("tinycnn")
    sig = backbone_signature(enc, "tinycnn", None)
    calls = []
    real = fc.compute_features

    def counting(*a, **k):
        calls.append(1)
        return real(*a, **k)

    import napari_stexp.models.feature_cache as mod

    orig = mod.compute_features
    mod.compute_features = counting
    try:
        f1 = section_frozen_features(enc, sig, ad, "A", pyr, spec, cache_dir=tmp_path)
        f2 = section_frozen_features(enc, sig, ad, "A", pyr, spec, cache_dir=tmp_path)
        assert len(calls) == 1 and np.array_equal(f1, f2) and f1.shape == (1, 20, 64)
        section_frozen_features(enc, sig, ad[:10].copy(), "A", pyr, spec, cache_dir=tmp_path)
        assert len(calls) == 2  # other spots: new key
        torch.manual_seed(1)
        enc2, _ = build_image_encoder("tinycnn")
        sig2 = backbone_signature(enc2, "tinycnn", None)
        assert sig2["digest"] != sig["digest"]
        section_frozen_features(enc2, sig2, ad, "A", pyr, spec, cache_dir=tmp_path)
        assert len(calls) == 3  # other weights: new key
    finally:
        mod.compute_features = orig
    assert len(list((tmp_path / "features").glob("*.npy"))) == 3


# ----------------------------------------------------------------------------- save / load


def test_model_folder_round_trip_and_other_panel_error(tmp_path, pair, trained):
    from napari_stexp.evaluation.regression import evaluate_model
    from napari_stexp.models.mclstexp import ExpressionModel

    adatas, images = pair
    out = trained.save(tmp_path / "model")
    for f in ("config.json", "genes.txt", "model.pt", "reference.npz"):
        assert (out / f).is_file()
    m = ExpressionModel.load(out)
    assert m.genes == trained.genes and m.config.mode == "cached"
    assert m.provenance["seed"] == 0 and m.provenance["sections"] == ["TRAIN"]
    patches = m.section_patches(adatas["TEST"], "TEST", images["TEST"])
    a = trained.predict_patches(patches, device="cpu")
    b = m.predict_patches(patches, device="cpu")
    np.testing.assert_allclose(a["predicted"], b["predicted"], rtol=1e-5, atol=1e-6)
    # a section whose genes are not the model's panel
    other = adatas["TEST"].copy()
    other.var_names = [f"OTHER{i}" for i in range(other.n_vars)]
    with pytest.raises(InputError, match="model .*model.*shares none of the 30 panel genes"):
        evaluate_model(m, {"TEST": other}, images=images, cache_dir=False, device="cpu")
    # the test section among the references: refused (a leak)
    with pytest.raises(InputError, match="retrieval reference"):
        evaluate_model(m, {"TRAIN": adatas["TRAIN"]}, images=images, cache_dir=False)
    # broken folders
    (out / "reference.npz").unlink()
    with pytest.raises(InputError, match="reference.npz is missing"):
        ExpressionModel.load(out)
    with pytest.raises(InputError, match="not found"):
        ExpressionModel.load(tmp_path / "nope")


# ----------------------------------------------------------------------------- bad input


def test_spots_outside_the_image_and_no_shared_genes_are_input_errors(pair):
    from napari_stexp.data.genes import resolve_panel
    from napari_stexp.models.mclstexp import train_expression_model

    adatas, images = pair
    bad = adatas["TRAIN"].copy()
    bad.obsm["spatial"] = bad.obsm["spatial"] + np.array([5000.0, 0.0])
    with pytest.raises(InputError, match="section TRAIN.*outside the"):
        train_expression_model({"TRAIN": bad}, images=images, mode="cached", epochs=1,
                               cache_dir=False, **TINY)
    other = adatas["TEST"].copy()
    other.var_names = [f"X{i}" for i in range(other.n_vars)]
    with pytest.raises(InputError, match="share no gene names"):
        resolve_panel({"TRAIN": adatas["TRAIN"], "X": other}, top_genes=10)
    with pytest.raises(InputError, match="section X.*shares none"):
        resolve_panel({"TRAIN": adatas["TRAIN"], "X": other}, genes=["GENE001", "GENE002"])


def test_slide_smaller_than_a_patch_is_an_input_error(trained):
    from napari_stexp.analysis.slide_predict import predict_slide
    from napari_stexp.data.synthetic_slide import pyramid_from_array

    tiny = pyramid_from_array(np.full((30, 40, 3), 200, np.uint8), mpp=MPP)
    with pytest.raises(InputError, match="smaller than one patch"):
        predict_slide(trained, tiny, device="cpu")
    blank = pyramid_from_array(np.full((300, 300, 3), 245, np.uint8), mpp=MPP)
    with pytest.raises(InputError, match="no tissue found"):
        predict_slide(trained, blank, device="cpu")


# ----------------------------------------------------------------------------- slide


def test_slide_prediction_covers_the_tissue_with_pseudo_spots(pair, trained):
    from napari_stexp.analysis.slide_predict import predict_slide
    from napari_stexp.data.tissue import tissue_mask

    adatas, images = pair
    pyr = images["TEST"]
    mask, ds = tissue_mask(pyr)
    # the measured spots (placed where the spot disk is mostly tissue) lie on the mask
    rc = adatas["TEST"].obsm["spatial"][:, ::-1] / ds
    on = mask[rc[:, 0].astype(int), rc[:, 1].astype(int)]
    assert on.mean() > 0.9
    ad = predict_slide(trained, pyr, name="TEST", device="cpu", batch_size=16, tile=300)
    n_real = adatas["TEST"].n_obs
    assert 0.7 * n_real < ad.n_obs < 1.5 * n_real
    # the grid runs at the training pitch (200 µm at 2.8 µm/px)
    xy = ad.obsm["spatial"]
    steps = np.diff(np.unique(np.round(xy[:, 0], 3)))
    assert np.allclose(steps, 200 / MPP, atol=1e-6)
    assert ad.layers["predicted"].shape == (ad.n_obs, 30)
    assert ad.obsm["X_mclstexp"].shape == (ad.n_obs, 256)
    assert np.isfinite(ad.obs["confidence"]).all()
    prov = ad.uns["napari_stexp"]
    assert prov["n_spots"] == ad.n_obs and prov["mpp_known"] and prov["reference_sections"]
    # the same pseudo-spots predicted directly from their patches give the same values
    from napari_stexp.data.patches import extract_patches

    p = extract_patches(pyr, xy[:, ::-1], prov["read_px"], trained.config.input_size)
    direct = trained.predict_patches(p, device="cpu")["predicted"]
    np.testing.assert_allclose(direct, ad.layers["predicted"], rtol=1e-4, atol=1e-5)


def test_training_resumes_from_checkpoints_and_cancels(tmp_path, pair):
    from napari_stexp.errors import CancelledError
    from napari_stexp.models.mclstexp import train_expression_model

    adatas, images = pair
    train = {"TRAIN": adatas["TRAIN"]}
    kw = dict(images=images, mode="cached", cache_dir=False, **TINY)
    ck = tmp_path / "ck"
    a = train_expression_model(train, epochs=2, checkpoint_dir=ck, **kw)
    assert (ck / "last.pt").is_file()
    b = train_expression_model(train, epochs=4, checkpoint_dir=ck, **kw)
    assert len(b.history) == 4
    assert [h["loss"] for h in b.history[:2]] == [h["loss"] for h in a.history]
    # another run (other panel) does not resume from the old checkpoint
    c = train_expression_model(train, epochs=1, checkpoint_dir=ck, top_genes=10, **kw)
    assert len(c.history) == 1 and len(c.genes) == 10
    with pytest.raises(CancelledError):
        train_expression_model(train, epochs=3, cancel=lambda: True, **kw)


# ----------------------------------------------------------------------------- spatial context


def test_neighbour_mean_on_a_known_grid_and_grid_layouts():
    from napari_stexp.models.mclstexp import grid_coordinates, neighbour_graph, neighbour_mean

    # a 3 × 3 square grid (x, y) with value = 10·x + y, plus a lone spot far away
    g = np.array([[x, y] for y in range(3) for x in range(3)] + [[9, 9]], np.float64)
    v = (10 * g[:, 0] + g[:, 1])[:, None].astype(np.float32)
    m = neighbour_mean(v, g, radius=1.5)
    # centre (1, 1): the 8 others, whose mean is its own value
    np.testing.assert_allclose(m[4, 0], 11.0)
    # corner (0, 0): neighbours (1, 0), (0, 1), (1, 1) → (10 + 1 + 11) / 3
    np.testing.assert_allclose(m[0, 0], 22 / 3, rtol=1e-6)
    # edge (1, 0): (0,0) (2,0) (0,1) (1,1) (2,1) → (0 + 20 + 1 + 11 + 21) / 5
    np.testing.assert_allclose(m[1, 0], 53 / 5, rtol=1e-6)
    assert m[9, 0] == v[9, 0]  # a lone spot is its own context
    # radius 1: the 4-neighbourhood only
    np.testing.assert_allclose(neighbour_mean(v, g, radius=1.0)[0, 0], (10 + 1) / 2)
    # groups (sections) never mix, even at the same coordinates
    gg = np.vstack([g[:9], g[:9]])
    vv = np.vstack([v[:9], v[:9] + 1000])
    mm = neighbour_mean(vv, neighbour_graph(gg, 1.5, groups=np.repeat(["A", "B"], 9)))
    np.testing.assert_allclose(mm[9:], mm[:9] + 1000, rtol=1e-6)
    # hexagonal array coordinates (Visium / hex pseudo-spots: x steps by 2) → unit pitch
    hexg = np.array([[0, 0], [2, 0], [1, 1], [3, 1]])
    h = grid_coordinates(hexg)
    d = np.linalg.norm(h[:, None] - h[None], axis=-1)
    np.testing.assert_allclose(d[0, 1], 1.0)
    np.testing.assert_allclose(d[0, 2], 1.0)
    np.testing.assert_allclose(grid_coordinates(g, "square"), g)
    with pytest.raises(InputError, match="layout"):
        grid_coordinates(g, "triangle")


def test_smoothing_a_constant_is_a_no_op_and_weights_the_neighbours():
    from napari_stexp.models.mclstexp import smooth_predictions

    g = np.array([[x, y] for y in range(4) for x in range(5)], np.float64)
    const = np.full((len(g), 3), 2.5, np.float32)
    np.testing.assert_allclose(smooth_predictions(const, g, 0.7), const, rtol=1e-6)
    rng = np.random.default_rng(0)
    p = rng.normal(size=(len(g), 3)).astype(np.float32)
    np.testing.assert_array_equal(smooth_predictions(p, g, 0.0), p)
    s = smooth_predictions(p, g, 0.5)
    own_nb = [j for j in range(len(g)) if j != 6 and np.abs(g[j] - g[6]).max() <= 1]
    np.testing.assert_allclose(s[6], 0.5 * p[6] + 0.5 * p[own_nb].mean(axis=0), rtol=1e-5)
    assert np.var(s) < np.var(p)  # smoothing shrinks the spread


def _context_law_pair(n: int = 14, n_genes: int = 30):
    """Two synthetic sections whose expression follows the *neighbours'* appearance (the mean
    of the 8 surrounding spots' features), not the spot's own: a law only context can learn."""
    import scipy.sparse as sp

    from napari_stexp.data.synthetic_slide import make_synthetic_slide
    from napari_stexp.models.mclstexp import neighbour_mean, section_grid

    slides = [make_synthetic_slide(n, n, n_genes=n_genes, seed=s, mpp=MPP, section=nm,
                                   patient=f"P{s}") for s, nm in ((1, "TRAIN"), (2, "TEST"))]
    W = slides[0].gene_weights
    rng = np.random.default_rng(0)
    adatas, images = {}, {}
    for sl in slides:
        F = sl.features.to_numpy(np.float64)
        Z = (F - F.mean(axis=0)) / np.where(F.std(axis=0) > 0, F.std(axis=0), 1)
        Zc = neighbour_mean(Z, section_grid(sl.adata), 1.5)
        log_rate = 2.0 * Zc @ W
        prop = np.exp(log_rate - log_rate.max(axis=1, keepdims=True))
        prop /= prop.sum(axis=1, keepdims=True)
        counts = rng.poisson(prop * 5000.0).astype(np.float32)
        ad = sl.adata.copy()
        ad.X = sp.csr_matrix(counts)
        ad.layers["counts"] = ad.X.copy()
        name = str(ad.obs["section"].iloc[0])
        adatas[name], images[name] = ad, sl.pyramid
    return adatas, images


def test_spatial_context_learns_a_neighbourhood_law_that_the_paper_model_cannot():
    from napari_stexp.evaluation.regression import evaluate_model
    from napari_stexp.models.mclstexp import train_expression_model

    adatas, images = _context_law_pair()
    test = {"TEST": adatas["TEST"]}
    kw = dict(images=images, mode="cached", epochs=30, cache_dir=False, **TINY)
    plain = train_expression_model({"TRAIN": adatas["TRAIN"]}, **kw)
    ctx = train_expression_model({"TRAIN": adatas["TRAIN"]}, context_neighbours="concat", **kw)
    assert ctx.net.image_projection.projection.in_features == 2 * plain.net.feature_dim
    assert ctx.reference.grid.shape == (adatas["TRAIN"].n_obs, 2)
    r_p = evaluate_model(plain, test, images=images, cache_dir=False, device="cpu",
                         baselines=()).table.iloc[0]
    r_c = evaluate_model(ctx, test, images=images, cache_dir=False, device="cpu",
                         baselines=()).table.iloc[0]
    assert r_c["pcc_acg"] > r_p["pcc_acg"] + 0.05, (r_c["pcc_acg"], r_p["pcc_acg"])
    assert r_c["pcc_acg"] > 0.3


def test_context_smoothing_and_tta_options_change_the_prediction(tmp_path, pair):
    from napari_stexp.evaluation.regression import evaluate_model
    from napari_stexp.models.mclstexp import (
        ExpressionModel,
        MclstexpConfig,
        section_grid,
        train_expression_model,
    )

    adatas, images = pair
    # the defaults are the paper's
    d = MclstexpConfig()
    assert (d.context_neighbours, d.smooth_neighbours, d.tta_views) == ("none", 0.0, 1)
    with pytest.raises(InputError, match="context_neighbours"):
        MclstexpConfig(context_neighbours="sum").validate()
    with pytest.raises(InputError, match="smooth_neighbours"):
        MclstexpConfig(smooth_neighbours=1.5).validate()
    with pytest.raises(InputError, match="cached"):
        train_expression_model({"TRAIN": adatas["TRAIN"]}, images=images, mode="finetune",
                               epochs=1, context_neighbours="concat", cache_dir=False, **TINY)
    kw = dict(images=images, mode="cached", epochs=3, cache_dir=False, **TINY)
    m = train_expression_model({"TRAIN": adatas["TRAIN"]}, context_neighbours="mean", **kw)
    test = adatas["TEST"]
    patches = m.section_patches(test, "TEST", images["TEST"])
    grid = section_grid(test)
    with pytest.raises(InputError, match="grid"):
        m.predict_patches(patches, device="cpu")
    base = m.predict_patches(patches, grid=grid, device="cpu")
    # the context changes the embedding: a grid where no spot has a neighbour gives another one
    lone = m.predict_patches(patches, grid=grid * 10, device="cpu")
    assert np.abs(base["embeddings"] - lone["embeddings"]).max() > 1e-3
    # smoothing (prediction time) and test-time augmentation change the prediction
    m.config.smooth_neighbours = 0.5
    sm = m.predict_patches(patches, grid=grid, device="cpu")
    np.testing.assert_allclose(sm["embeddings"], base["embeddings"], rtol=1e-5, atol=1e-6)
    assert np.abs(sm["predicted"] - base["predicted"]).max() > 1e-4
    assert np.var(sm["predicted"], axis=0).mean() < np.var(base["predicted"], axis=0).mean()
    m.config.tta_views = 8
    tta = m.predict_patches(patches, grid=grid, device="cpu")
    assert np.abs(tta["embeddings"] - sm["embeddings"]).max() > 1e-4
    # from features (the whole-slide route) = from patches
    from napari_stexp.models.feature_cache import compute_features

    f = compute_features(m.net.image_encoder, patches, views=8)
    np.testing.assert_allclose(m.predict_features(f, grid)["predicted"], tta["predicted"],
                               rtol=1e-4, atol=1e-5)
    # the options survive save/load; evaluation reports ridge with the same options
    m2 = ExpressionModel.load(m.save(tmp_path / "ctx"))
    assert m2.config.context_neighbours == "mean" and m2.reference.grid is not None
    np.testing.assert_allclose(m2.predict_patches(patches, grid=grid, device="cpu")["predicted"],
                               tta["predicted"], rtol=1e-4, atol=1e-5)
    t = evaluate_model(m2, {"TEST": test}, images=images, cache_dir=tmp_path / "cache",
                       device="cpu", baselines=("ridge",)).table.set_index("method")
    assert {"mclstexp", "ridge", "ridge+options"} <= set(t.index)
    assert t.loc["ridge", "pcc_acg"] != t.loc["ridge+options", "pcc_acg"]
    np.testing.assert_allclose(
        evaluate_model(m2, {"TEST": test}, images=images, cache_dir=False, device="cpu",
                       baselines=()).table.iloc[0]["pcc_acg"], t.loc["mclstexp", "pcc_acg"],
        rtol=1e-4)
