"""The model-folder contract (models/_folder.py, open_model): old folders open, new ones round-trip,
tampered, truncated or hostile files are refused with one line, and no pickle ever runs code."""

from __future__ import annotations

import importlib.util
import json
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from napari_stexp.errors import InputError
from napari_stexp.models import open_model
from napari_stexp.models._folder import read_model_folder, write_model_folder
from napari_stexp.models.batch_agnostic import BatchAgnosticClassifier
from napari_stexp.models.betavae import BVAEModel
from napari_stexp.models.gene_vae import FittedGeneVAE
from napari_stexp.models.mclstexp import ExpressionModel

HERE = Path(__file__).parent
LEGACY = HERE / "data" / "legacy"  # written by main before the contract (make_legacy_folders.py)
KINDS = {"mclstexp": ExpressionModel, "classifier": BatchAgnosticClassifier, "bvae": BVAEModel,
         "gene_vae": FittedGeneVAE}
WEIGHTS = {"mclstexp": "model.pt", "classifier": "model.pt", "bvae": "weights.pt",
           "gene_vae": "gene_vae.pt"}


def _generator():
    spec = importlib.util.spec_from_file_location("make_legacy_folders",
                                                  HERE / "make_legacy_folders.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def new_folders(tmp_path_factory):
    """One folder of each kind written by this code (same models as the legacy fixtures)."""
    out = tmp_path_factory.mktemp("new")
    _generator().main(out)
    return out


@pytest.fixture(params=["legacy", "new"])
def folders(request, tmp_path, new_folders):
    src = LEGACY if request.param == "legacy" else new_folders
    dst = tmp_path / request.param
    shutil.copytree(src, dst)
    return dst


def _outputs(d: Path, exp) -> None:
    """Each folder opens through open_model and reproduces the writer's outputs."""
    em = open_model(d / "mclstexp", device="cpu")
    assert isinstance(em, ExpressionModel) and em.genes == [f"G{i}" for i in range(6)]
    np.testing.assert_allclose(em.embed_patches(exp["patches"]), exp["mclstexp_embed"],
                               atol=1e-5)
    gv = open_model(d / "gene_vae", device="cpu")
    assert isinstance(gv, FittedGeneVAE)
    np.testing.assert_allclose(gv.embed_counts(exp["counts"], ["P0"] * 5),
                               exp["gene_vae_embed"], atol=1e-5)
    clf = open_model(d / "classifier", device="cpu")
    assert isinstance(clf, BatchAgnosticClassifier) and isinstance(clf.gene_model,
                                                                    FittedGeneVAE)
    np.testing.assert_allclose(clf.predict_patches(exp["classifier_patches"],
                                                   device="cpu")["proba"],
                               exp["classifier_proba"], atol=1e-5)
    bv = open_model(d / "bvae", device="cpu")
    assert isinstance(bv, BVAEModel) and bv.genes is not None
    with torch.no_grad():
        mu = bv.image_vae.encode(torch.from_numpy(exp["crops"]))[0].numpy()
    np.testing.assert_allclose(mu, exp["bvae_mu"], atol=1e-5)


def test_old_and_new_folders_open_and_reproduce_outputs(folders):
    with np.load(folders / "expected.npz") as z:
        exp = {k: z[k] for k in z.files}
    _outputs(folders, exp)


def test_new_folders_carry_the_contract(new_folders):
    for name, kind in (("mclstexp", "mclstexp"), ("classifier", "batch-agnostic-classifier"),
                       ("bvae", "bvae"), ("gene_vae", "gene-vae")):
        meta = json.loads((new_folders / name / "config.json").read_text())
        assert meta["format"] == f"napari-stexp/{kind}"
        assert isinstance(meta["format_version"], int)
        assert meta["napari_stexp_version"]
        assert WEIGHTS[name] in meta["files"] and len(meta["files"][WEIGHTS[name]]["sha256"]) == 64
        assert "genes" in meta["panel_sha256"]
    # the classifier's gene encoder is a nested model folder of its own
    sub = read_model_folder(new_folders / "classifier" / "gene_encoder")
    assert sub.kind == "gene-vae" and not sub.legacy
    meta = json.loads((new_folders / "classifier" / "config.json").read_text())
    assert meta["files"]["gene_encoder"]["folder"] is True
    assert not [p for p in new_folders.iterdir() if ".tmp-" in p.name or ".old-" in p.name]


def test_open_model_refuses_the_wrong_kind(new_folders):
    with pytest.raises(InputError, match="not a batch-agnostic classifier"):
        open_model(new_folders / "bvae", kind="batch-agnostic-classifier")
    with pytest.raises(InputError, match="not a mclSTExp model|not a mclSTExp"):
        ExpressionModel.load(new_folders / "classifier")
    with pytest.raises(InputError, match="model folder not found"):
        open_model(new_folders / "nope")


# ----------------------------------------------------------------------------- hostile pickles


class _Payload:
    """Unpickling this creates the marker file: proof that a load ran code."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _plant(path: Path, marker: Path, how: str) -> None:
    if how == "torch":  # a torch zip archive whose pickle holds the payload
        torch.save({"weight": _Payload(marker), "state_dict": {"x": _Payload(marker)},
                    "image": {"w": _Payload(marker)}, "meta": {}}, path)
    else:  # a bare pickle (torch's legacy format)
        path.write_bytes(pickle.dumps({"weight": _Payload(marker), "image": _Payload(marker),
                                       "state_dict": _Payload(marker)}))


def _redigest(folder: Path, name: str) -> None:
    """What an attacker does too: record the crafted file's digest in config.json."""
    from napari_stexp._provenance import sha256_file

    cfg = folder / "config.json"
    if not cfg.is_file():
        return
    meta = json.loads(cfg.read_text())
    if "files" in meta:
        meta["files"][name]["sha256"] = sha256_file(folder / name)
    if "weights_sha256" in meta:
        meta["weights_sha256"] = sha256_file(folder / name)
    cfg.write_text(json.dumps(meta))


@pytest.mark.parametrize("how", ["torch", "pickle"])
@pytest.mark.parametrize("kind", sorted(KINDS))
def test_a_crafted_pickle_as_weights_never_runs(folders, tmp_path, kind, how):
    marker = tmp_path / f"ran-{kind}-{how}"
    d = folders / kind
    _plant(d / WEIGHTS[kind], marker, how)
    _redigest(d, WEIGHTS[kind])
    with pytest.raises(InputError, match="refused|truncated or corrupt") as err:
        KINDS[kind].load(d)
    assert str(d / WEIGHTS[kind]) in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(InputError):
        open_model(d, device="cpu")
    assert not marker.exists()


@pytest.mark.parametrize("how", ["torch", "pickle"])
def test_a_crafted_gene_vae_inside_a_classifier_never_runs(folders, tmp_path, how):
    marker = tmp_path / "ran"
    sub = folders / "classifier" / "gene_encoder"
    _plant(sub / "gene_vae.pt", marker, how)
    _redigest(sub, "gene_vae.pt")
    if (sub / "config.json").is_file():  # new layout: keep the outer digest consistent too
        from napari_stexp._provenance import sha256_file

        meta = json.loads((folders / "classifier" / "config.json").read_text())
        meta["files"]["gene_encoder"]["sha256"] = sha256_file(sub / "config.json")
        (folders / "classifier" / "config.json").write_text(json.dumps(meta))
    with pytest.raises(InputError, match="refused|truncated or corrupt"):
        BatchAgnosticClassifier.load(folders / "classifier")
    assert not marker.exists()


@pytest.mark.parametrize("how", ["torch", "pickle"])
def test_a_crafted_checkpoint_never_runs(tmp_path, how):
    from napari_stexp.models.betavae import _prepare_checkpoints
    from napari_stexp.training.engine import (
        TrainConfig,
        discard_stale_checkpoint,
        fit,
        load_checkpoint,
    )

    marker = tmp_path / "ran"
    ck = tmp_path / "ck"
    ck.mkdir()
    _plant(ck / "last.pt", marker, how)
    with pytest.raises(InputError, match="refused|cannot read checkpoint"):
        load_checkpoint(ck / "last.pt")
    net = torch.nn.Linear(2, 1)
    with pytest.raises(InputError, match="refused|cannot read checkpoint"):
        fit(net, lambda e: [torch.zeros(4, 2)], lambda m, b, d: m(b.to(d)).sum(),
            TrainConfig(epochs=1, device="cpu"), checkpoint_dir=ck)
    discard_stale_checkpoint(ck / "last.pt", "sig")  # unreadable: deleted, not run
    assert not (ck / "last.pt").exists()
    _plant(ck / "last.pt", marker, how)
    _prepare_checkpoints(ck, "sig", resume=True)  # the β-VAE's stale-checkpoint check
    assert not (ck / "last.pt").exists()
    assert not marker.exists()


# ----------------------------------------------------------------------------- validation


def _edit(path: Path, fn) -> None:
    meta = json.loads(path.read_text())
    meta = fn(meta)
    path.write_text(json.dumps(meta))


@pytest.mark.parametrize("edit, message", [
    (lambda m: [m], "must be a JSON object, not a list"),
    (lambda m: {**m, "format_version": "2"}, "format_version must be an integer"),
    (lambda m: {**m, "format_version": None}, "format_version must be an integer"),
    (lambda m: {**m, "format_version": 99}, "newer than this napari-stexp"),
    (lambda m: {**m, "config": [1, 2]}, "'config' must be a JSON object"),
    (lambda m: {**m, "config": {**m["config"], "projection_dim": "16"}},
     "config.projection_dim: expected int"),
    (lambda m: {**m, "config": {**m["config"], "pos_size_x": -8}},
     "config.pos_size_x: must not be negative"),
    (lambda m: {**m, "config": {**m["config"], "heads": 2.5}}, "config.heads: expected int"),
    (lambda m: {**m, "n_genes": "6"}, "config.json says"),
])
def test_bad_config_json_is_one_clear_line(folders, edit, message):
    d = folders / "mclstexp"
    _edit(d / "config.json", edit)
    with pytest.raises(InputError, match=message) as err:
        ExpressionModel.load(d)
    assert "\n" not in str(err.value) and str(d) in str(err.value)


def test_bad_bvae_and_classifier_configs(folders):
    _edit(folders / "bvae" / "config.json",
          lambda m: {**m, "config": {**m["config"], "latent_dim": -1}})
    with pytest.raises(InputError, match="latent_dim: must not be negative"):
        BVAEModel.load(folders / "bvae")
    _edit(folders / "classifier" / "config.json",
          lambda m: {**m, "config": {**m["config"], "gene": {"n_latent": "4"}}})
    with pytest.raises(InputError, match="config.gene.n_latent: expected int"):
        BatchAgnosticClassifier.load(folders / "classifier")


def test_gene_panel_is_tied_to_the_weights(new_folders, tmp_path):
    """Issue 16: a shuffled, renamed or duplicated genes.txt was accepted (length only)."""
    genes = [f"G{i}" for i in range(6)]
    for name, lines, message in (
            ("shuffled", genes[::-1], "sha256"),
            ("renamed", ["X0", *genes[1:]], "sha256"),
            ("duplicated", ["G0"] * 6, "duplicate|sha256")):
        d = tmp_path / name
        shutil.copytree(new_folders / "mclstexp", d)
        (d / "genes.txt").write_text("\n".join(lines) + "\n")
        with pytest.raises(InputError, match=message):
            ExpressionModel.load(d)
    # even when whoever edits genes.txt re-records its file digest, the panel digest differs
    d = tmp_path / "redigested"
    shutil.copytree(new_folders / "mclstexp", d)
    (d / "genes.txt").write_text("\n".join(genes[::-1]) + "\n")
    _redigest(d, "genes.txt")
    with pytest.raises(InputError, match="do not match the panel"):
        ExpressionModel.load(d)
    # duplicates are refused in old folders too (no digest there)
    d = tmp_path / "legacy"
    shutil.copytree(LEGACY / "mclstexp", d)
    (d / "genes.txt").write_text("\n".join(["G0"] * 6) + "\n")
    with pytest.raises(InputError, match="duplicate name"):
        ExpressionModel.load(d)
    (d / "genes.txt").write_bytes(b"\xff\xfe\x00\x01" * 10)
    with pytest.raises(InputError, match="not a UTF-8 text file"):
        ExpressionModel.load(d)


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_truncated_weights_say_truncated(folders, kind):
    """Issue 16: a truncated model.pt said "weights do not match config.json"."""
    p = folders / kind / WEIGHTS[kind]
    data = p.read_bytes()
    p.write_bytes(data[:len(data) // 2])
    with pytest.raises(InputError, match="truncated or corrupt") as err:
        KINDS[kind].load(folders / kind)
    assert str(p) in str(err.value)


def test_edited_weights_fail_the_digest(new_folders, tmp_path):
    d = tmp_path / "m"
    shutil.copytree(new_folders / "mclstexp", d)
    state = torch.load(d / "model.pt", weights_only=True)
    state = {k: v + 1 if v.is_floating_point() else v for k, v in state.items()}
    torch.save(state, d / "model.pt")
    with pytest.raises(InputError, match="do not match the sha256"):
        ExpressionModel.load(d)


def test_out_naming_an_existing_file_is_refused(tmp_path, new_folders):
    """Issue 16: ``--out`` naming an existing regular file was replaced by a model folder."""
    target = tmp_path / "precious.txt"
    target.write_text("keep me")
    with pytest.raises(InputError, match="exists and is not a folder"):
        write_model_folder(target, format="mclstexp", version=2, config={},
                           state_dicts={"model.pt": {"w": torch.zeros(1)}})
    assert target.read_text() == "keep me"
    m = ExpressionModel.load(new_folders / "mclstexp")
    with pytest.raises(InputError, match="exists and is not a folder"):
        m.save(target)
    assert target.read_text() == "keep me"
    with pytest.raises(InputError, match="is a file, not a folder"):
        m.save(target / "sub")


def test_write_model_folder_refuses_non_tensors(tmp_path):
    with pytest.raises(TypeError, match="not a tensor"):
        write_model_folder(tmp_path / "m", format="bvae", version=2, config={},
                           state_dicts={"weights.pt": {"w": np.zeros(2)}})
    assert not (tmp_path / "m").exists()
    assert not list(tmp_path.iterdir())


# ----------------------------------------------------------------------------- the CLI


@pytest.mark.parametrize("argv, plant", [
    (["bvae", "embed", "--model", "{d}/bvae", "--cells", "{d}/none", "--out", "{d}/o.h5ad"],
     "bvae/weights.pt"),
    (["bvae", "traverse", "--model", "{d}/bvae", "--cell", "{d}/none.png", "--out",
      "{d}/o.png"], "bvae/weights.pt"),
    (["classify", "embed", "--model", "{d}/classifier", "--data", "{d}/none", "--out",
      "{d}/o.h5ad"], "classifier/gene_encoder/gene_vae.pt"),
])
def test_cli_refuses_crafted_folders_with_exit_2(tmp_path, argv, plant):
    """Issue 16: ``bvae embed/traverse`` and ``classify embed`` ran a crafted pickle (exit 0)."""
    import subprocess
    import sys

    d = tmp_path / "legacy"
    shutil.copytree(LEGACY, d)
    marker = tmp_path / "ran"
    _plant(d / plant, marker, "torch")
    _redigest((d / plant).parent, Path(plant).name)
    src = str(Path(__file__).resolve().parents[2] / "src")
    proc = subprocess.run([sys.executable, "-c", "import sys; sys.path.insert(0, sys.argv[1]); "
                           "from napari_stexp.cli import main; sys.exit(main(sys.argv[2:]))",
                           src, *[a.format(d=d) for a in argv]],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr[-2000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("napari-stexp: error: ") and str(d / plant) in last
    assert "refused" in last and "Traceback" not in proc.stderr
    assert not marker.exists()
