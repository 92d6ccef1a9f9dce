"""The training engine on a toy model: resume is bit-identical, cancel keeps the last complete
checkpoint, checkpoints are atomic and hold only what ``weights_only=True`` reads."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from napari_stexp.errors import CancelledError, InputError
from napari_stexp.training.engine import TrainConfig, fit, load_checkpoint, save_checkpoint

EPOCHS = 5


class _Toy(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.a = torch.nn.Linear(3, 8)
        self.drop = torch.nn.Dropout(0.3)  # consumes the torch RNG
        self.b = torch.nn.Linear(8, 1)

    def forward(self, x):
        return self.b(self.drop(torch.relu(self.a(x))))


def _batches(epoch):  # consumes the numpy, python and torch RNGs, as real loaders do
    order = np.random.permutation(4)
    noise = random.random()
    for i in order:
        x = torch.randn(6, 3) + float(i) + noise
        yield (x, x.sum(1, keepdim=True))


def _step(model, batch, device):
    x, y = (t.to(device) for t in batch)
    return torch.nn.functional.mse_loss(model(x), y)


def _train(ckpt=None, cancel_after=None):
    torch.manual_seed(0)
    model = _Toy()
    flag = {"stop": False}

    def on_end(epoch, record):
        if cancel_after is not None and epoch == cancel_after:
            flag["stop"] = True

    hist = fit(model, _batches, _step, TrainConfig(epochs=EPOCHS, lr=1e-2, device="cpu"),
               checkpoint_dir=ckpt, cancel=lambda: flag["stop"], on_epoch_end=on_end,
               batches_per_epoch=4)
    return model, hist


def test_cancel_then_resume_is_bit_identical(tmp_path):
    ref, ref_hist = _train()
    with pytest.raises(CancelledError):
        _train(tmp_path, cancel_after=1)
    state = load_checkpoint(tmp_path / "last.pt")  # weights_only=True reads it
    assert state["epoch"] == 1
    resumed, hist = _train(tmp_path)
    assert [e["epoch"] for e in hist.epochs] == list(range(EPOCHS))
    assert hist.losses == ref_hist.losses
    for (k, v), (_, w) in zip(ref.state_dict().items(), resumed.state_dict().items(),
                              strict=True):
        assert torch.equal(v, w), k


def test_a_failed_checkpoint_write_keeps_the_previous_one(tmp_path):
    path = tmp_path / "last.pt"
    save_checkpoint({"epoch": 1, "w": torch.ones(2)}, path)
    good = path.read_bytes()

    class Boom:
        def __reduce__(self):
            raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        save_checkpoint({"epoch": 2, "w": Boom()}, path)
    assert path.read_bytes() == good
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]


def test_truncated_checkpoint_is_a_clear_error(tmp_path):
    path = tmp_path / "last.pt"
    save_checkpoint({"epoch": 1, "w": torch.ones(100)}, path)
    path.write_bytes(path.read_bytes()[:50])
    with pytest.raises(InputError, match="cannot read checkpoint"):
        load_checkpoint(path)


def test_a_checkpoint_of_the_previous_version_still_resumes(tmp_path):
    """napari-stexp 0.1.0 stored numpy's RNG state as an array; such a checkpoint still loads
    with ``weights_only=True`` (numpy array reconstructors only) and training resumes from it."""
    with pytest.raises(CancelledError):
        _train(tmp_path, cancel_after=1)
    state = load_checkpoint(tmp_path / "last.pt")
    npst = state["rng"]["numpy"]
    state["rng"]["numpy"] = (npst[0], npst[1].numpy().astype(np.uint32), *npst[2:])
    torch.save(state, tmp_path / "last.pt")  # the old layout
    assert isinstance(load_checkpoint(tmp_path / "last.pt")["rng"]["numpy"][1], np.ndarray)
    ref, ref_hist = _train()
    resumed, hist = _train(tmp_path)
    assert hist.losses == ref_hist.losses
    assert all(torch.equal(v, w) for v, w in zip(ref.state_dict().values(),
                                                 resumed.state_dict().values(), strict=True))
