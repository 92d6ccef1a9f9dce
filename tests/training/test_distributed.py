"""Data-parallel training: batch sharding, rank-0-only checkpoints, the autograd all_gather and a
2-process gloo run (torchrun) against 1 process with the same global batch."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from napari_stexp.training import distributed as D

torch = pytest.importorskip("torch")


# --------------------------------------------------------------------------- sharding


def test_shard_batch_splits_global_batch_evenly():
    x = torch.arange(10).reshape(10, 1)
    y = np.arange(10)
    parts = [D.shard_batch((x, y, "meta"), r, 2) for r in range(2)]
    assert [p[0].shape[0] for p in parts] == [5, 5]
    assert torch.equal(torch.cat([p[0] for p in parts]), x)
    assert parts[1][2] == "meta"
    # ragged last batch: the remainder is dropped so shapes agree; too small -> skipped
    parts = [D.shard_batch({"x": torch.arange(7)}, r, 2) for r in range(2)]
    assert [p["x"].tolist() for p in parts] == [[0, 1, 2], [3, 4, 5]]
    assert D.shard_batch(torch.arange(1), 0, 2) is None
    assert D.shard_batch(x, 0, 1) is x


def test_shard_indices_cover_each_global_batch_once():
    world = 2
    per_rank = [D.shard_indices(50, 8, epoch=3, seed=1, rank=r, world_size=world)
                for r in range(world)]
    glob = D.epoch_batches(50, 8, epoch=3, seed=1)
    assert len(per_rank[0]) == len(per_rank[1]) == len(glob)
    for i, g in enumerate(glob):
        both = np.concatenate([per_rank[0][i], per_rank[1][i]])
        n = len(g) // world * world
        assert sorted(both.tolist()) == sorted(g[:n].tolist())
        assert len(per_rank[0][i]) == len(g) // world
    # the same epoch is identical on every call (all ranks agree); other epochs differ
    assert np.array_equal(D.epoch_batches(50, 8, 3, 1)[0], glob[0])
    assert not np.array_equal(D.epoch_batches(50, 8, 4, 1)[0], glob[0])


def test_single_process_defaults(monkeypatch):
    for k in D.ENV_VARS:
        monkeypatch.delenv(k, raising=False)
    ctx = D.init_distributed(device="cpu")
    assert (ctx.rank, ctx.world_size, ctx.enabled, ctx.is_main) == (0, 1, False, True)
    assert D.active_context() is None and D.rank_and_world() == (0, 1)
    t = torch.ones(3, 2, requires_grad=True)
    assert D.all_gather_with_grad(t) is t
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(D.InputError, match="MASTER_ADDR"):
        D.init_distributed(device="cpu")


def test_private_out_for_other_ranks():
    argv = ["expression", "train", "--out", "/results", "--epochs", "2"]
    from napari_stexp.commands.ddp import _private_out

    same, tmp = _private_out(argv, "--out", 0)
    assert same == argv and tmp is None
    other, tmp = _private_out(argv, "--out", 1)
    try:
        assert other[3] == tmp and tmp != "/results" and os.path.isdir(tmp)
    finally:
        os.rmdir(tmp)


class _FakeRank1(D.DistContext):
    """Rank 1 of 2 without a process group (collectives are identities)."""

    def __init__(self):
        super().__init__(rank=1, world_size=2, device=torch.device("cpu"))

    def broadcast_object(self, obj, src=0):
        return obj

    def all_reduce_sum(self, values):
        return [2 * v for v in values]

    def wrap(self, model, step):
        return model, step


def test_engine_non_main_rank_writes_nothing(tmp_path):
    from napari_stexp.training.engine import TrainConfig, fit

    torch.manual_seed(0)
    model = torch.nn.Linear(3, 1)
    x = torch.randn(8, 3)
    seen, calls = [], []

    def step(m, batch, device):
        seen.append(len(batch))
        return m(batch).pow(2).mean()

    hist = fit(model, lambda e: [x], step, TrainConfig(epochs=2, device="cpu", amp=False),
               checkpoint_dir=tmp_path, progress=lambda *a: calls.append(a),
               distributed=_FakeRank1())
    assert list(tmp_path.iterdir()) == []  # only rank 0 writes checkpoints
    assert calls == []  # ... and reports progress
    assert seen == [4, 4]  # its half of the global batch of 8
    rec = hist.epochs[0]
    assert (rec["world_size"], rec["global_batch"], rec["per_process_batch"], rec["items"]) == \
        (2, 8, 4, 8)


# --------------------------------------------------------------------------- 2 processes


@pytest.fixture(scope="module")
def torchrun_check(tmp_path_factory):
    """One 2-process gloo run of ``-m napari_stexp.commands.ddp check`` (torchrun)."""
    out = tmp_path_factory.mktemp("ddp")
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes=1",
           "--nproc_per_node=2", "-m", "napari_stexp.commands.ddp", "--backend",
           "gloo", "--device", "cpu", "check", "--epochs", "8", "--items", "96",
           "--global-batch", "24", "--json-dir", str(out / "json"),
           "--checkpoint-dir", str(out / "ckpt")]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [json.loads((out / "json" / f"rank{r}.json").read_text()) for r in range(2)]
    return out, ranks, proc


def test_two_process_loss_curve_matches_one_process(torchrun_check):
    out, ranks, proc = torchrun_check
    r0, r1 = ranks
    assert (r0["world_size"], r0["backend"]) == (2, "gloo")
    assert r0["global_batch"] == 24 and r0["per_process_batch"] == 12
    assert r0["items_per_epoch"] == 96  # summed over the ranks
    assert r0["similarity_shape"] == [24, 24]  # every negative of the global batch
    assert "global batch 24 = 2 processes x 12 per process" in proc.stderr + proc.stdout
    assert r0["losses"] == pytest.approx(r1["losses"])  # the logged loss is the global one

    torch.set_num_threads(1)
    one = D.check_run(D.DistContext(device=torch.device("cpu")), n_items=96, global_batch=24,
                      epochs=8)
    assert one["similarity_shape"] == [24, 24]
    a, b = np.array(one["losses"]), np.array(r0["losses"])
    assert a[-1] < 0.5 * a[0]  # it learns, so the curves have a shape to compare
    assert np.corrcoef(a, b)[0, 1] > 0.99
    assert b[-1] == pytest.approx(a[-1], rel=0.02)
    # rank 0 wrote a complete checkpoint, nothing half-written
    names = sorted(p.name for p in (out / "ckpt").iterdir())
    assert names == ["last.pt"]
    state = torch.load(out / "ckpt" / "last.pt", weights_only=False)
    assert state["epoch"] == 7 and set(state["model"]) == {"a.weight", "a.bias", "b.weight",
                                                           "b.bias"}


def test_all_gather_gives_global_similarity_and_gradients(torchrun_check):
    _, ranks, _ = torchrun_check
    A = torch.tensor(ranks[0]["probe"]["a"] + ranks[1]["probe"]["a"], requires_grad=True)
    B = torch.tensor(ranks[0]["probe"]["b"] + ranks[1]["probe"]["b"], requires_grad=True)
    n = len(ranks[0]["probe"]["a"])
    ref = D.symmetric_contrastive_loss(A, B, 0.5, gather=False)
    ref.backward()
    for r, res in enumerate(ranks):
        p = res["probe"]
        assert np.allclose(p["gathered"], A.detach().numpy(), atol=1e-6)  # rank order
        assert p["logits_shape"] == [2 * n, 2 * n]
        assert p["ids"] == list(range(n)) + list(range(100, 100 + n))  # no-grad gather
        assert p["loss"] == pytest.approx(float(ref.detach()), rel=1e-5)
        # gradients flow back through the gather to the owner of each row
        sl = slice(r * n, (r + 1) * n)
        assert np.abs(p["grad_a"]).sum() > 0
        assert np.allclose(p["grad_a"], 2 * A.grad[sl].numpy(), atol=1e-5)
        assert np.allclose(p["grad_b"], 2 * B.grad[sl].numpy(), atol=1e-5)


def test_ddp_subcommand_single_process(monkeypatch, capsys):
    """``napari-stexp ddp check`` outside torchrun: one process, same code path."""
    import argparse

    from napari_stexp.commands import batch as cmd

    for k in D.ENV_VARS:
        monkeypatch.delenv(k, raising=False)
    parser = argparse.ArgumentParser()
    cmd.register(parser.add_subparsers())
    args = parser.parse_args(["ddp", "--device", "cpu", "check", "--epochs", "2", "--items",
                              "32", "--global-batch", "8"])
    assert args.func(args) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["world_size"] == 1 and out["global_batch"] == 8
    assert out["similarity_shape"] == [8, 8] and len(out["losses"]) == 2


# --------------------------------------------------------------------------- models under DDP


def _torchrun(args: list[str], timeout: int = 300) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes=1",
           "--nproc_per_node=2", "-m", "napari_stexp.commands.ddp", "--backend",
           "gloo", "--device", "cpu", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)


@pytest.mark.realdata
def test_mclstexp_two_processes_train_like_one(her2st_dir, tmp_path, monkeypatch):
    """mclSTExp on her2st B4 (cached features, tiny backbone): 2 gloo processes with a global
    batch of 94 (283 spots = 3 x 94 + 1, the single leftover spot is dropped in both) give the
    loss curve of 1 process with batch 94, because the image embeddings are gathered with
    autograd and the spot Transformer runs on the gathered global batch. Without the gathers
    each process would contrast 47 spots and the curve would differ."""
    from napari_stexp import cli
    from napari_stexp.models.mclstexp import ExpressionModel

    cache = tmp_path / "cache"
    args = ["expression", "train", "--data", str(her2st_dir), "--sections", "B4", "--tiny",
            "--mode", "cached", "--epochs", "4", "--batch-size", "94", "--input-size", "32",
            "--cache-dir", str(cache), "--device", "cpu", "--quiet"]
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert cli.main([*args, "--out", str(tmp_path / "one")]) == 0  # fills the cache too
    finally:
        torch.set_num_threads(old)
    proc = _torchrun([*args, "--out", str(tmp_path / "two")])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "global batch 94 = 2 processes x 47 per process" in proc.stderr + proc.stdout
    one = ExpressionModel.load(tmp_path / "one").history
    two = ExpressionModel.load(tmp_path / "two").history
    assert [h.get("world_size", 1) for h in two] == [2] * 4
    a = np.array([h["loss"] for h in one])
    b = np.array([h["loss"] for h in two])
    assert a[-1] < a[0]  # it learns
    assert b[0] == pytest.approx(a[0], rel=1e-3)
    np.testing.assert_allclose(b, a, rtol=5e-3)


@pytest.mark.realdata
def test_classifier_two_processes_contrast_the_global_batch(her2st_dir, tmp_path):
    """Batch-agnostic classifier on her2st A1 (image + labels) and B1 (genes only) (tiny, cached): with 2 gloo processes the
    image↔gene InfoNCE sees the global batch of 32 (gathered embeddings and labels), so its loss
    curve follows 1 process with batch 32. The gene VAE's sampling noise differs per process,
    hence a tolerance; a per-process loss over 16 spots would start ~log(2) lower."""
    from napari_stexp import cli
    from napari_stexp.models.batch_agnostic import BatchAgnosticClassifier

    args = ["classify", "train", "--data", str(her2st_dir), "--sections", "A1", "B1", "--tiny",
            "--mode", "cached", "--batch-size", "32", "--cache-dir", str(tmp_path / "cache"),
            "--device", "cpu", "--quiet"]
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert cli.main([*args, "--out", str(tmp_path / "one")]) == 0
    finally:
        torch.set_num_threads(old)
    proc = _torchrun([*args, "--out", str(tmp_path / "two")])
    assert proc.returncode == 0, proc.stderr[-3000:]
    one = BatchAgnosticClassifier.load(tmp_path / "one").history["image"]
    two = BatchAgnosticClassifier.load(tmp_path / "two").history["image"]
    assert [h.get("global_batch") for h in two] == [32] * len(one)
    a = np.array([h["loss"] for h in one])
    b = np.array([h["loss"] for h in two])
    assert a[-1] < a[0]
    np.testing.assert_allclose(b, a, rtol=0.03)
