"""The encoder registry (models/encoders.py): every entry builds (foundation models at a reduced
depth/width with the published key layout), loads a state dict written in its published layout
(features identical), refuses a mismatched one with one clear error, gives features of the
entry's dimension (full size checked on the meta device), reads patches at the entry's µm/px, and
says where to put missing weights. One real her2st run with a small timm ViT through the CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("timm")

from napari_stexp.errors import InputError  # noqa: E402
from napari_stexp.models import encoders as E  # noqa: E402

NAMES = list(E.ENCODERS)
FOUNDATION = [n for n in NAMES if E.ENCODERS[n].foundation]


@pytest.fixture(autouse=True)
def _threads():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def _build(name, seed, weights=None):
    torch.manual_seed(seed)
    enc, dim = E.build_encoder(name, weights, reduced=True)
    return enc.eval(), dim


def _x(name, n=2, seed=0):
    s = E.get_spec(name)
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, s.input_size, s.input_size, generator=g)


def _save(state, path):
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    else:
        torch.save(state, path)


@pytest.mark.parametrize("name", NAMES)
def test_entry_loads_its_published_layout_with_identical_features(name, tmp_path):
    spec = E.get_spec(name)
    src, dim = _build(name, 0)
    with torch.no_grad():
        want = src(_x(name))
    assert want.shape == (2, dim) and torch.isfinite(want).all()
    state = E.export_published(src, name)
    fname = spec.weight_files[0] if spec.weight_files else "weights.pt"
    path = tmp_path / fname
    _save(state, path)
    dst, _ = _build(name, 1, weights=path)  # a different random init, then the file
    with torch.no_grad():
        got = dst(_x(name))
    assert torch.equal(got, want)
    # the same file found through $STEXP_WEIGHTS/<encoder>/ ("pretrained") or a folder
    if spec.weight_files:
        d = tmp_path / "w" / spec.name
        d.mkdir(parents=True)
        path.rename(d / fname)
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("STEXP_WEIGHTS", str(tmp_path / "w"))
            assert E.find_weights(name, "pretrained") == d / fname
        assert E.find_weights(name, tmp_path / "w") == d / fname


def test_published_key_names():
    """The layouts are the model cards' own names (spot checks of each layout)."""
    keys = {n: set(E.export_published(_build(n, 0)[0], n)) for n in FOUNDATION}
    assert {"cls_token", "pos_embed", "blocks.0.attn.qkv.weight", "blocks.1.ls2.gamma",
            "norm.weight"} <= keys["uni"]
    for n in ("uni2-h", "virchow2", "h-optimus-0", "h-optimus-1"):
        assert "reg_token" in keys[n] and "blocks.0.mlp.fc1.weight" in keys[n]
    assert "reg_token" not in keys["prov-gigapath"]
    assert {"embeddings.cls_token", "embeddings.mask_token", "embeddings.position_embeddings",
            "embeddings.patch_embeddings.projection.weight",
            "encoder.layer.0.attention.attention.query.weight",
            "encoder.layer.0.attention.attention.value.bias",
            "encoder.layer.0.attention.output.dense.weight",
            "encoder.layer.0.layer_scale1.lambda1", "encoder.layer.1.mlp.fc2.bias",
            "layernorm.weight"} <= keys["phikon-v2"]
    assert not any(k.startswith("blocks.") for k in keys["phikon-v2"])
    assert {"visual.trunk.cls_token", "visual.attn_pool_contrast.query",
            "visual.attn_pool_contrast.attn.q_proj_weight",
            "visual.attn_pool_contrast.attn.k_proj_weight",
            "visual.attn_pool_contrast.ln_k.weight", "visual.ln_contrast.weight"} <= keys["conch"]


def test_conch_checkpoint_text_tower_and_heads_are_ignored():
    src, _ = _build("conch", 0)
    state = E.export_published(src, "conch")
    state.update({"text.token_embedding.weight": torch.zeros(4, 8), "logit_scale": torch.ones(()),
                  "visual.proj_contrast": torch.zeros(32, 32),
                  "visual.attn_pool_caption.query": torch.zeros(3, 8)})
    dst, _ = _build("conch", 1)
    E.load_published(dst, "conch", state)
    with torch.no_grad():
        assert torch.equal(dst(_x("conch")), src(_x("conch")))


def test_hf_layout_wrapped_in_a_prefix_still_loads():
    src, _ = _build("phikon-v2", 0)
    state = {"dinov2." + k: v for k, v in E.export_published(src, "phikon-v2").items()}
    dst, _ = _build("phikon-v2", 1)
    E.load_published(dst, "phikon-v2", state)
    with torch.no_grad():
        assert torch.equal(dst(_x("phikon-v2")), src(_x("phikon-v2")))


@pytest.mark.parametrize("name", FOUNDATION)
def test_mismatched_weights_are_one_clear_error(name, tmp_path):
    enc, _ = _build(name, 0)
    # another entry's file (different layout or shapes), a truncated file, a wrong shape
    other = "uni" if name != "uni" else "virchow2"
    wrong = E.export_published(_build(other, 0)[0], other)
    with pytest.raises(InputError, match=f"weights do not fit encoder '{name}'"):
        E.load_published(enc, name, wrong)
    state = E.export_published(enc, name)
    first = sorted(state)[0]
    with pytest.raises(InputError, match="missing parameter"):
        E.load_published(enc, name, {k: v for k, v in state.items() if k != first})
    big = dict(state)
    k = next(k for k in big if k.endswith("weight") and big[k].ndim == 2)
    big[k] = torch.zeros(big[k].shape[0] + 1, big[k].shape[1])
    with pytest.raises(InputError, match="shape mismatch"):
        E.load_published(enc, name, big)
    bad = tmp_path / "broken.bin"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(InputError, match="cannot read weights file"):
        E.build_encoder(name, bad, reduced=True)


@pytest.mark.parametrize("name", FOUNDATION)
def test_full_size_feature_dim(name):
    """The full architecture on the meta device (no memory): feature dim of the model card."""
    spec = E.get_spec(name)
    with torch.device("meta"):
        enc, dim = E.build_encoder(name)
        out = enc(torch.empty(2, 3, spec.input_size, spec.input_size))
    assert dim == spec.feature_dim and tuple(out.shape) == (2, spec.feature_dim)
    n = sum(p.numel() for p in enc.parameters()) / 1e6
    assert abs(n - spec.full_params_m) / spec.full_params_m < 0.02


def test_missing_weights_error_names_encoder_folder_and_file(tmp_path, monkeypatch):
    monkeypatch.setenv("STEXP_WEIGHTS", str(tmp_path / "weights"))
    with pytest.raises(InputError) as err:
        E.build_encoder("uni", "pretrained", reduced=True)
    msg = str(err.value)
    assert "'uni'" in msg and str(tmp_path / "weights" / "uni") in msg
    assert "pytorch_model.bin" in msg and "MahmoodLab/UNI" in msg and "--weights" in msg
    monkeypatch.delenv("STEXP_WEIGHTS")
    monkeypatch.setenv("STEXP_CACHE", str(tmp_path / "cache"))
    with pytest.raises(InputError, match="cache/weights/virchow2"):
        E.find_weights("virchow2")
    with pytest.raises(InputError, match="weights file not found for encoder 'conch'"):
        E.find_weights("conch", tmp_path / "nope.bin")
    with pytest.raises(InputError, match="for the CNNs"):
        E.build_encoder("uni", "imagenet", reduced=True)
    with pytest.raises(InputError, match="unknown encoder"):
        E.get_spec("uni3")


def test_weights_choice_defaults():
    assert E.weights_choice("uni", None) == "pretrained"
    assert E.weights_choice("densenet121", None) is None
    assert E.weights_choice("uni", "none") is None
    assert E.weights_choice("resnet18", "imagenet") == "imagenet"
    assert E.get_spec("gigapath").name == "prov-gigapath"


def test_old_backbone_names_keep_working():
    from napari_stexp.models.backbones import BACKBONES, build_image_encoder

    for name in ("densenet121", "resnet18", "resnet50", "tinycnn"):
        enc, dim = build_image_encoder(name, None)
        assert dim == BACKBONES[name] == E.get_spec(name).feature_dim


def test_feature_cache_signature_tells_encoders_apart():
    from napari_stexp.models.feature_cache import backbone_signature, cache_key

    a, _ = _build("h-optimus-0", 0)
    b, _ = _build("h-optimus-1", 0)  # same architecture and parameters, same normalisation
    sa = backbone_signature(a, "h-optimus-0", None)
    sb = backbone_signature(b, "h-optimus-1", None)
    assert sa["digest"] == sb["digest"] and sa["encoder"]["mean"] == list(E.HOPTIMUS_MEAN)
    assert cache_key({"d": 1}, sa) != cache_key({"d": 1}, sb)
    c, _ = _build("uni", 0)
    sc = backbone_signature(c, "uni", None)
    assert sc["encoder"]["mean"] == list(E.IMAGENET_MEAN)
    # the CNNs keep the signature they had (existing caches stay valid)
    t, _ = E.build_encoder("tinycnn")
    assert set(backbone_signature(t, "tinycnn", None)) == {"name", "weights", "digest"}


def test_geometry_follows_the_entry():
    from napari_stexp.models.mclstexp import MclstexpConfig

    cfg = MclstexpConfig(backbone="conch", input_size=224)
    E.apply_encoder_geometry(cfg)
    assert cfg.target_mpp == 0.5 and cfg.input_size == 448 and cfg.patch_size == 224
    cfg = MclstexpConfig(backbone="uni", input_size=64, target_mpp=0.25)
    E.apply_encoder_geometry(cfg)  # user's µm/px wins; UNI interpolates positions
    assert cfg.target_mpp == 0.25 and cfg.input_size == 64
    cfg = MclstexpConfig(backbone="densenet121")
    E.apply_encoder_geometry(cfg)
    assert cfg.target_mpp is None  # CNNs: the data's µm/px, as before


def test_patches_are_read_at_the_entry_mpp(tmp_path):
    """A reduced ViT entry trains on a synthetic slide scanned at 1.4 µm/px: its patches are
    read at 0.5 µm/px (224 px = 112 µm), recorded in the model config."""
    from napari_stexp.data.synthetic_slide import make_synthetic_slide
    from napari_stexp.models.mclstexp import train_expression_model

    slide = make_synthetic_slide(6, 6, mpp=1.4, seed=0)
    model = train_expression_model({"SYN1": slide.adata}, images={"SYN1": slide.pyramid},
                                   backbone="vit-tiny", weights=None, mode="cached", epochs=1,
                                   batch_size=8, input_size=32, top_k=5, cache_dir=False)
    assert model.config.target_mpp == 0.5 and model.config.patch_size == 224
    assert model.patch_spec.target_mpp == 0.5


# ----------------------------------------------------------------------------- real data


@pytest.mark.realdata
def test_her2st_small_vit_through_the_cli(her2st_dir, tmp_path, monkeypatch):
    """vit-tiny (a small timm ViT, random weights in the timm layout written to
    $STEXP_WEIGHTS/vit-tiny/) in cached mode: expression train → evaluate, classify train."""
    import pandas as pd

    from napari_stexp import cli

    for mod in ("napari_stexp.commands.expression", "napari_stexp.commands.classify"):
        if mod not in cli.COMMAND_MODULES:
            monkeypatch.setattr(cli, "COMMAND_MODULES", [*cli.COMMAND_MODULES, mod])
    torch.manual_seed(0)
    enc, _ = E.build_encoder("vit-tiny")
    wdir = tmp_path / "weights" / "vit-tiny"
    wdir.mkdir(parents=True)
    _save(E.export_published(enc, "vit-tiny"), wdir / "model.safetensors")
    monkeypatch.setenv("STEXP_WEIGHTS", str(tmp_path / "weights"))
    cache = str(tmp_path / "cache")
    fast = ["--tiny", "--encoder", "vit-tiny", "--weights", "pretrained", "--epochs", "1",
            "--input-size", "32", "--quiet"]
    model_dir = tmp_path / "model"
    assert cli.main(["expression", "train", "--data", str(her2st_dir), "--sections", "B4",
                     "--mode", "cached", "--out", str(model_dir), "--cache-dir", cache,
                     "--top-genes", "50", *fast]) == 0
    cfg = json.loads((model_dir / "config.json").read_text())
    cfg = cfg.get("config", cfg)
    assert cfg["backbone"] == "vit-tiny" and cfg["target_mpp"] == 0.5
    report = tmp_path / "report.csv"
    assert cli.main(["expression", "evaluate", "--model", str(model_dir), "--data",
                     str(her2st_dir), "--sections", "C3", "--out", str(report), "--cache-dir",
                     cache, "--quiet"]) == 0
    t = pd.read_csv(report)
    assert {"mclstexp", "ridge", "train_mean"} <= set(t["method"])
    assert np.isfinite(t.loc[t.method == "mclstexp", "pcc_acg"]).all()

    cls_dir = tmp_path / "classifier"
    assert cli.main(["classify", "train", "--data", str(her2st_dir), "--sections", "A1", "B1",
                     "--out", str(cls_dir), "--cache-dir", cache, "--gene-epochs", "2",
                     *fast]) == 0
    meta = json.loads((cls_dir / "config.json").read_text())
    assert meta["config"]["backbone"] == "vit-tiny" and meta["config"]["target_mpp"] == 0.5
