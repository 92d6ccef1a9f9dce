"""One training engine for every model: device, seeds, loop, mixed precision, atomic
checkpoints, resume, cancel and progress.

A model plugs in with a ``step(model, batch, device) -> loss tensor`` function (plus optional
``metrics`` it wants logged). The engine owns everything else, so the three models train, resume
and cancel the same way.
"""

from __future__ import annotations

import math
import os
import random
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputError
from ..io._atomic import atomic_path
from ..progress import CancelFlag, ProgressFn, check_cancel, report
from .device import get_device


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (all devices)."""
    import torch

    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)


def save_checkpoint(state: dict, path: str | os.PathLike) -> Path:
    """``torch.save`` to a temp file, then rename: a crash never leaves a broken checkpoint.

    ``state`` must hold only what ``torch.load(weights_only=True)`` reads back: tensors,
    numbers, strings, ``None`` and lists/tuples/dicts of them (the RNG states are stored as
    tensors, see :func:`_get_rng`)."""
    import torch

    path = Path(path)
    with atomic_path(path) as tmp:
        torch.save(state, tmp)
    return path


def load_checkpoint(path: str | os.PathLike, device: Any = "cpu") -> dict:
    """Read a checkpoint with ``weights_only=True``: a file holding other Python objects (a
    crafted pickle) is refused with an InputError and never runs code."""
    import pickle

    import torch

    path = Path(path)
    if not path.exists():
        raise InputError(path, "checkpoint file not found")
    try:
        with torch.serialization.safe_globals(_numpy_array_globals()):
            return torch.load(path, map_location=device, weights_only=True)
    except pickle.UnpicklingError as exc:
        if "GLOBAL" in str(exc) or "Unsupported global" in str(exc):
            raise InputError(path, "refused: the checkpoint holds Python objects other than "
                                   "tensors and plain values (loading it could run code)") \
                from exc
        raise InputError(path, "cannot read checkpoint (truncated or corrupt)") from exc
    except Exception as exc:  # truncated/corrupt file
        raise InputError(path, f"cannot read checkpoint ({type(exc).__name__}: "
                               f"{str(exc).splitlines()[0] if str(exc) else ''})") from exc


def _numpy_array_globals() -> list:
    """The numpy array reconstructors (no other callable) that checkpoints of napari-stexp
    0.1.0 need: they stored numpy's RNG state as an array. Allowlisting them keeps those
    checkpoints resumable under ``weights_only=True``; they build arrays, never run code."""
    try:
        from numpy._core.multiarray import _reconstruct
    except ImportError:  # numpy < 2
        from numpy.core.multiarray import _reconstruct
    return [_reconstruct, np.ndarray, np.dtype, type(np.dtype(np.uint32))]


@dataclass
class TrainConfig:
    epochs: int = 10
    lr: float = 1e-4
    weight_decay: float = 1e-3
    seed: int = 0
    device: str = "auto"
    amp: bool = True  # mixed precision on CUDA only
    grad_clip: float | None = None
    checkpoint_every: int = 1  # epochs


@dataclass
class TrainHistory:
    epochs: list[dict] = field(default_factory=list)

    @property
    def losses(self) -> list[float]:
        return [e["loss"] for e in self.epochs]


StepFn = Callable[[Any, Any, Any], Any]


def fit(
    model,
    train_batches: Callable[[int], Iterable],
    step: StepFn,
    config: TrainConfig,
    *,
    optimizer=None,
    checkpoint_dir: str | os.PathLike | None = None,
    resume: bool = True,
    extra_state: dict | None = None,
    progress: ProgressFn | None = None,
    cancel: CancelFlag | None = None,
    batches_per_epoch: int | None = None,
    on_epoch_end: Callable[[int, dict], None] | None = None,
    distributed: Any = None,
) -> TrainHistory:
    """Train ``model`` for ``config.epochs`` epochs.

    ``train_batches(epoch)`` returns the epoch's iterable of batches (so shuffling can be seeded
    per epoch); ``step(model, batch, device)`` returns the scalar loss. With ``checkpoint_dir``,
    ``last.pt`` is written atomically after each epoch and, if ``resume``, training continues
    from it (same optimizer state, RNG states and history). Progress is reported per batch as
    ``(batches done, batches total)``; ``cancel`` is checked between batches.

    ``distributed``: ``None`` = data-parallel when this process was started by torchrun and
    :func:`napari_stexp.training.distributed.init_distributed` ran (else single-process, as
    before); ``False`` = never; or a ``DistContext``. Data-parallel: each batch from
    ``train_batches`` is the global batch and every rank trains on its slice under DDP; only
    rank 0 reports progress and reads/writes checkpoints (see ``training/distributed.py``).
    """
    import torch

    ctx = _distributed_context(distributed)
    if ctx is not None:
        ctx.global_batch = None  # this fit's batch (a model may train several stages)
    is_main = ctx is None or ctx.is_main
    if not is_main:
        progress = None
    device = ctx.device if ctx is not None else get_device(config.device)
    seed_everything(config.seed)
    model.to(device)
    if optimizer is None:
        optimizer = torch.optim.Adam(
            [p for p in model.parameters() if p.requires_grad],
            lr=config.lr, weight_decay=config.weight_decay,
        )
    use_amp = bool(config.amp and device.type == "cuda")
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    history = TrainHistory()
    start_epoch = 0
    ckpt_path = Path(checkpoint_dir) / "last.pt" if checkpoint_dir else None
    if ckpt_path is not None and resume and (ctx is not None or ckpt_path.exists()):
        if ctx is None:
            state = load_checkpoint(ckpt_path, device)
        else:  # rank 0 reads, every rank gets the same state (no shared disk needed)
            state = load_checkpoint(ckpt_path, "cpu") if is_main and ckpt_path.exists() \
                else None
            state = ctx.broadcast_object(state)
    else:
        state = None
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        history = TrainHistory(list(state.get("history", [])))
        start_epoch = int(state.get("epoch", -1)) + 1
        if "rng" in state:
            _set_rng(state["rng"])
    train_model, train_step = (model, step) if ctx is None else ctx.wrap(model, step)

    total = (batches_per_epoch or 0) * config.epochs
    done = (batches_per_epoch or 0) * start_epoch
    for epoch in range(start_epoch, config.epochs):
        train_model.train()
        t0 = time.perf_counter()
        losses, n_items = [], 0
        for batch in train_batches(epoch):
            check_cancel(cancel, "training")
            if ctx is not None:
                batch = ctx.shard(batch)
                if batch is None:
                    continue
            optimizer.zero_grad(set_to_none=True)
            with torch.autocast(device_type=device.type, dtype=torch.float16, enabled=use_amp):
                loss = train_step(train_model, batch, device)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"loss became {loss.item()} at epoch {epoch}")
            scaler.scale(loss).backward()
            if config.grad_clip:
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
            scaler.step(optimizer)
            scaler.update()
            losses.append(float(loss.detach()))
            n_items += _batch_len(batch)
            done += 1
            report(progress, done, max(total, done), f"epoch {epoch + 1}/{config.epochs} "
                   f"loss {losses[-1]:.4f}")
        secs = time.perf_counter() - t0
        record = {"epoch": epoch, "loss": float(np.mean(losses)) if losses else math.nan,
                  "seconds": secs, "items": n_items,
                  "items_per_s": n_items / secs if secs > 0 else math.nan}
        if ctx is not None:
            record = ctx.reduce_record(record)
        if on_epoch_end is not None:
            extra = on_epoch_end(epoch, record)
            if isinstance(extra, dict):
                record.update(extra)
        history.epochs.append(record)
        due = ((epoch + 1) % max(config.checkpoint_every, 1) == 0
               or epoch + 1 == config.epochs)
        if ckpt_path is not None and is_main and due:
            save_checkpoint({
                "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                "epoch": epoch, "history": history.epochs, "config": asdict(config),
                "rng": _get_rng(), **(extra_state or {}),
            }, ckpt_path)
    return history


def _distributed_context(distributed: Any) -> Any:
    """The DDP context to train with, or None for a plain single-process run."""
    if distributed is False:
        return None
    if distributed is None:
        from .distributed import active_context

        return active_context()
    return distributed if getattr(distributed, "enabled", False) else None


def _batch_len(batch) -> int:
    if isinstance(batch, dict):
        batch = next(iter(batch.values()))
    if isinstance(batch, list | tuple):
        batch = batch[0]
    return int(len(batch)) if hasattr(batch, "__len__") else 1


def _get_rng() -> dict:
    """python, numpy and torch RNG states as tensors and plain values (``weights_only``-safe)."""
    import torch

    name, keys, pos, has_gauss, cached = np.random.get_state()
    return {"python": random.getstate(),
            "numpy": [str(name), torch.from_numpy(np.asarray(keys, np.int64)), int(pos),
                      int(has_gauss), float(cached)],
            "torch": torch.get_rng_state()}


def _set_rng(state: dict) -> None:
    import torch

    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    npst = state["numpy"]
    keys = npst[1].numpy() if hasattr(npst[1], "numpy") else np.asarray(npst[1])
    np.random.set_state((npst[0], keys.astype(np.uint32), int(npst[2]), int(npst[3]),
                         float(npst[4])))
    torch.set_rng_state(state["torch"].cpu() if hasattr(state["torch"], "cpu") else state["torch"])


def discard_stale_checkpoint(last: str | os.PathLike, run_signature: str, *, key: str = "run",
                             resume: bool = True) -> None:
    """Delete checkpoint ``last`` when it belongs to another run (its ``key`` entry differs
    from ``run_signature``), cannot be read (also: holds objects other than tensors), or
    ``resume`` is False, so :func:`fit` starts over instead of resuming."""
    last = Path(last)
    if not last.exists():
        return
    old = None
    if resume:
        try:
            old = load_checkpoint(last, "cpu").get(key)
        except (InputError, AttributeError):  # unreadable or refused: start over
            old = None
    if old != run_signature:
        last.unlink()
