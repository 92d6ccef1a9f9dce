"""Training on several processes / GPUs with torch DistributedDataParallel (DDP).

How it fits together:

- :func:`init_distributed` reads the environment ``torchrun`` sets (``RANK``, ``WORLD_SIZE``,
  ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``), starts the process group (``gloo`` on the
  CPU, ``nccl`` on CUDA, one GPU per process = ``LOCAL_RANK``) and makes the returned
  :class:`DistContext` *active*.
- :func:`napari_stexp.training.engine.fit` picks the active context up by itself, so every model
  that trains through the engine trains data-parallel without changes: each batch the model's
  ``train_batches`` yields is the GLOBAL batch (what the user asked for); every rank keeps its
  ``1 / world_size`` slice of it (:func:`shard_batch`, the DistributedSampler idea applied to the
  epoch's batches), the step runs inside DDP (gradients averaged across ranks), only rank 0
  writes checkpoints and reports progress, a resume is read by rank 0 and broadcast, and the
  epoch record carries the global loss, ``world_size`` and ``global_batch``.
- Contrastive losses need every negative of the global batch, not only the local ones:
  :func:`all_gather_with_grad` concatenates the embeddings of all ranks with autograd
  (``torch.distributed.nn.functional.all_gather``), so the similarity matrix is the full
  global one and gradients flow back to the rank that computed each embedding. With that, a
  DDP step computes exactly the gradient of a single process on the global batch (the gather's
  backward sums the identical losses of all ranks, DDP divides by the world size).
  :func:`symmetric_contrastive_loss` is the CLIP / mclSTExp style loss built on it.
- ``torchrun --nproc_per_node=N -m napari_stexp.commands.ddp <command ...>`` runs one
  ``napari-stexp`` training command on N processes (the entry point lives with the commands,
  above this module, so training never imports the CLI; see docs/scaling.md);
  ``... -m napari_stexp.commands.ddp check`` verifies a setup with :func:`check_run`.

Nothing here imports torch at module import.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import DeviceError, InputError

log = logging.getLogger("napari_stexp.training")

ENV_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")

_ACTIVE: DistContext | None = None


@dataclass
class DistContext:
    """One process of a data-parallel run: its rank, the world size, backend and device."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None
    device: Any = None  # torch.device
    find_unused_parameters: bool = True
    initialized_here: bool = False
    global_batch: int | None = field(default=None, init=False)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        """True when several processes take part (world size > 1)."""
        return self.world_size > 1

    # -- data ---------------------------------------------------------------------------------
    def shard(self, batch: Any) -> Any | None:
        """This rank's slice of a global batch (``None`` when it is smaller than the world)."""
        n = batch_len(batch)
        if self.global_batch is None and n:
            self.global_batch = n
            if self.is_main:
                log.info("DDP: global batch %d = %d processes x %d per process", n,
                         self.world_size, n // self.world_size)
        return shard_batch(batch, self.rank, self.world_size)

    # -- model --------------------------------------------------------------------------------
    def wrap(self, model: Any, step: Any) -> tuple[Any, Any]:
        """DDP around ``step`` (so any step function, even one calling ``model.encode``, runs
        inside DDP's forward and its gradients are synchronised). Returns ``(module, step)``
        for the engine's loop; ``model`` itself stays unwrapped (checkpoints keep its keys)."""
        from torch.nn.parallel import DistributedDataParallel as DDP

        module = _step_module(model, step)
        kwargs: dict[str, Any] = {"find_unused_parameters": self.find_unused_parameters}
        if self.device is not None and getattr(self.device, "type", "cpu") == "cuda":
            kwargs.update(device_ids=[self.device.index], output_device=self.device.index)
        ddp = DDP(module, **kwargs)
        return ddp, _call_wrapped

    # -- collectives --------------------------------------------------------------------------
    def broadcast_object(self, obj: Any, src: int = 0) -> Any:
        """``obj`` of rank ``src`` on every rank (pickled; used for resume state)."""
        import torch.distributed as dist

        box = [obj if self.rank == src else None]
        dist.broadcast_object_list(box, src=src)
        return box[0]

    def all_reduce_sum(self, values: list[float]) -> list[float]:
        import torch
        import torch.distributed as dist

        t = torch.tensor(values, dtype=torch.float64)
        if self.backend == "nccl":
            t = t.to(self.device)
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return [float(v) for v in t.cpu()]

    def reduce_record(self, record: dict) -> dict:
        """Epoch record with the loss averaged and the item count summed over all ranks."""
        loss = record.get("loss", float("nan"))
        loss_sum, items = self.all_reduce_sum([float(loss), float(record.get("items", 0))])
        out = dict(record)
        out["loss"] = loss_sum / self.world_size
        out["items"] = int(items)
        secs = out.get("seconds") or 0.0
        out["items_per_s"] = items / secs if secs > 0 else float("nan")
        out["world_size"] = self.world_size
        out["global_batch"] = self.global_batch
        out["per_process_batch"] = (self.global_batch // self.world_size
                                    if self.global_batch else None)
        return out

    def barrier(self) -> None:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.barrier()

    def close(self) -> None:
        """Leave the process group (when this context started it)."""
        global _ACTIVE
        import torch.distributed as dist

        if self.initialized_here and dist.is_initialized():
            dist.destroy_process_group()
        if _ACTIVE is self:
            _ACTIVE = None


def _step_module(model: Any, step: Any) -> Any:
    from torch import nn

    class _StepModule(nn.Module):
        """Runs the model's step function as the forward pass DDP wraps."""

        def __init__(self, inner: nn.Module, fn: Any):
            super().__init__()
            self.inner = inner
            self._fn = fn

        def forward(self, batch: Any, device: Any) -> Any:
            return self._fn(self.inner, batch, device)

    return _StepModule(model, step)


def _call_wrapped(module: Any, batch: Any, device: Any) -> Any:
    return module(batch, device)


# --------------------------------------------------------------------------- set-up


def env_info(environ: dict | None = None) -> dict[str, str]:
    """The torchrun variables present in ``environ`` (default ``os.environ``)."""
    env = os.environ if environ is None else environ
    return {k: env[k] for k in ENV_VARS if k in env}


def init_distributed(backend: str | None = None, device: str = "auto", *,
                     timeout_s: float = 600.0, find_unused_parameters: bool = True
                     ) -> DistContext:
    """Join the process group torchrun describes and make the context active.

    Without ``WORLD_SIZE`` (or with 1) this is a no-op context (rank 0 of 1): the same script
    runs single-process. ``backend``: ``None`` = ``nccl`` when the device is CUDA else
    ``gloo``. ``device``: ``auto`` | ``cpu`` | ``cuda`` (CUDA uses ``cuda:LOCAL_RANK``).
    """
    global _ACTIVE
    import datetime

    import torch
    import torch.distributed as dist

    from .device import get_device

    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", str(rank)))
    dev = get_device(device)
    if dev.type == "cuda":
        if local_rank >= torch.cuda.device_count():
            raise DeviceError(f"LOCAL_RANK {local_rank} but only {torch.cuda.device_count()} "
                              "CUDA device(s); use --nproc_per_node <= the GPU count")
        torch.cuda.set_device(local_rank)
        dev = torch.device("cuda", local_rank)
    elif dev.type == "mps" and world > 1:
        dev = torch.device("cpu")  # no MPS collectives: gloo on the CPU
    ctx = DistContext(rank=rank, world_size=world, local_rank=local_rank, device=dev,
                      find_unused_parameters=find_unused_parameters)
    if world <= 1:
        return ctx
    missing = [k for k in ("MASTER_ADDR", "MASTER_PORT") if k not in os.environ]
    if missing:
        raise InputError("environment", f"WORLD_SIZE={world} but {', '.join(missing)} not set; "
                                        "start the processes with torchrun")
    backend = backend or ("nccl" if dev.type == "cuda" else "gloo")
    if backend == "nccl" and dev.type != "cuda":
        raise DeviceError("the nccl backend needs CUDA; use --backend gloo on the CPU")
    ctx.backend = backend
    if not dist.is_initialized():
        dist.init_process_group(backend=backend, rank=rank, world_size=world,
                                timeout=datetime.timedelta(seconds=timeout_s))
        ctx.initialized_here = True
    _ACTIVE = ctx
    if ctx.is_main:
        log.info("DDP: %d processes, backend %s, device %s", world, backend, dev)
    return ctx


def active_context() -> DistContext | None:
    """The context :func:`init_distributed` made active, if several processes take part."""
    if _ACTIVE is None or not _ACTIVE.enabled:
        return None
    import torch.distributed as dist

    return _ACTIVE if dist.is_initialized() else None


def rank_and_world() -> tuple[int, int]:
    """``(rank, world_size)`` of this process (``(0, 1)`` outside a distributed run)."""
    ctx = active_context()
    return (ctx.rank, ctx.world_size) if ctx else (0, 1)


def is_main_process() -> bool:
    """True on rank 0 and in single-process runs (write files / print only there)."""
    return rank_and_world()[0] == 0


# --------------------------------------------------------------------------- data


def batch_len(batch: Any) -> int:
    """Number of items in a batch: tensor/array, tuple/list of them, or dict of them."""
    if isinstance(batch, dict):
        batch = next(iter(batch.values()), [])
    if isinstance(batch, list | tuple) and batch and _is_array(batch[0]):
        batch = batch[0]
    if hasattr(batch, "shape") and len(batch.shape):
        return int(batch.shape[0])
    return int(len(batch)) if hasattr(batch, "__len__") else 0


def _is_array(x: Any) -> bool:
    return hasattr(x, "shape") and len(getattr(x, "shape", ())) > 0


def shard_batch(batch: Any, rank: int, world_size: int) -> Any | None:
    """Rank ``rank``'s contiguous slice of a global batch (``n // world_size`` items).

    Works on tensors/arrays, tuples/lists and dicts of them (every array whose first axis is
    the batch is sliced; other entries pass through). The ``n % world_size`` trailing items of
    a ragged last batch are dropped so all ranks hold equal slices (collectives need equal
    shapes); a batch smaller than the world gives ``None`` (every rank skips it).
    """
    if world_size <= 1:
        return batch
    n = batch_len(batch)
    per = n // world_size
    if per == 0:
        return None
    sl = slice(rank * per, (rank + 1) * per)

    def cut(x: Any) -> Any:
        if _is_array(x) and x.shape[0] == n:
            return x[sl]
        if isinstance(x, list) and len(x) == n and not (x and _is_array(x[0])):
            return x[sl]
        return x

    if isinstance(batch, dict):
        return {k: cut(v) for k, v in batch.items()}
    if isinstance(batch, list | tuple) and batch and _is_array(batch[0]):
        out = [cut(v) for v in batch]
        return type(batch)(out) if isinstance(batch, tuple) else out
    return cut(batch)


def epoch_batches(n_items: int, global_batch: int, epoch: int, seed: int = 0, *,
                  shuffle: bool = True, drop_last: bool = False) -> list[np.ndarray]:
    """Index arrays of one epoch's GLOBAL batches, identical on every rank (seeded by
    ``seed`` and ``epoch``); shard them with :func:`shard_batch` or :func:`shard_indices`."""
    if global_batch < 1:
        raise InputError("batch_size", f"must be >= 1, got {global_batch}")
    order = (np.random.default_rng([seed, epoch]).permutation(n_items) if shuffle
             else np.arange(n_items))
    out = [order[i:i + global_batch] for i in range(0, n_items, global_batch)]
    if drop_last and out and len(out[-1]) < global_batch:
        out.pop()
    return out


def shard_indices(n_items: int, global_batch: int, epoch: int, seed: int = 0, *,
                  rank: int | None = None, world_size: int | None = None,
                  shuffle: bool = True, drop_last: bool = False) -> list[np.ndarray]:
    """This rank's index arrays for one epoch: the global batches of :func:`epoch_batches`,
    each cut to its ``global_batch // world_size`` slice (load only what the rank needs)."""
    if rank is None or world_size is None:
        rank, world_size = rank_and_world()
    out = []
    for idx in epoch_batches(n_items, global_batch, epoch, seed, shuffle=shuffle,
                             drop_last=drop_last):
        part = shard_batch(idx, rank, world_size)
        if part is not None:
            out.append(part)
    return out


# --------------------------------------------------------------------------- gather / losses


def all_gather_with_grad(tensor: Any) -> Any:
    """Concatenate ``tensor`` (first axis) over all ranks, in rank order, with autograd.

    Identity in a single process. Every rank must pass the same shape. The backward sums the
    gradients all ranks computed for each slice and returns them to the slice's owner.
    """
    import torch
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return tensor
    import warnings

    from torch.distributed.nn.functional import all_gather

    with warnings.catch_warnings():  # deprecated in favour of a private API; still correct
        warnings.simplefilter("ignore", FutureWarning)
        parts = all_gather(tensor.contiguous())
    return torch.cat(parts, dim=0)


def all_gather_tensor(tensor: Any) -> Any:
    """Concatenate ``tensor`` (first axis) over all ranks without autograd (inputs, labels).

    E.g. a set encoder that attends over the whole batch (mclSTExp's spot Transformer) runs on
    the gathered global inputs on every rank, so its context is the global batch too.
    """
    import torch
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return tensor
    parts = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, tensor.detach().contiguous())
    return torch.cat(parts, dim=0)


def global_logits(a: Any, b: Any, temperature: float = 1.0, *, gather: bool = True) -> Any:
    """``a_all @ b_all.T / temperature``: the global (N, N) similarity matrix (N = global
    batch) when ``gather`` (rows and columns in rank order)."""
    if gather:
        a, b = all_gather_with_grad(a), all_gather_with_grad(b)
    return a @ b.T / temperature


def symmetric_contrastive_loss(a: Any, b: Any, temperature: float = 1.0, *,
                               targets: Any = None, gather: bool = True) -> Any:
    """Symmetric cross-entropy (InfoNCE / CLIP) over the global similarity matrix.

    ``targets``: ``None`` = the diagonal (item i of ``a`` matches item i of ``b``), or a
    callable ``(a_all, b_all) -> (N, N)`` soft-target matrix (mclSTExp uses
    ``softmax((sim_a + sim_b) / 2 / temperature)``). Averaged over the global batch, so one
    process with batch N and N/W items on W processes give the same loss and gradients.
    """
    import torch
    from torch.nn import functional as F

    if gather:
        a, b = all_gather_with_grad(a), all_gather_with_grad(b)
    logits = a @ b.T / temperature
    if targets is None:
        t = torch.arange(logits.shape[0], device=logits.device)
        return 0.5 * (F.cross_entropy(logits, t) + F.cross_entropy(logits.T, t))
    soft = targets(a, b)
    la = (-soft * F.log_softmax(logits, dim=1)).sum(1).mean()
    lb = (-soft.T * F.log_softmax(logits.T, dim=1)).sum(1).mean()
    return 0.5 * (la + lb)


# --------------------------------------------------------------------------- self check


def gather_probe(ctx: DistContext, n_local: int = 4, dim: int = 3, seed: int = 0,
                 temperature: float = 0.5) -> dict:
    """Gather two seeded (n_local, dim) embeddings per rank with autograd, take the global
    contrastive loss and backpropagate: returns the inputs, the gathered tensor, the global
    logits' shape, the loss and the local gradient (``world_size`` x the gradient of the loss
    w.r.t. this rank's rows, since every rank back-propagates the same global loss)."""
    import torch

    g = torch.Generator().manual_seed(seed * 1000 + ctx.rank)
    a = torch.randn(n_local, dim, generator=g).requires_grad_(True)
    b = torch.randn(n_local, dim, generator=g).requires_grad_(True)
    gathered = all_gather_with_grad(a)
    logits = global_logits(a, b, temperature)
    loss = symmetric_contrastive_loss(a, b, temperature)
    loss.backward()
    ids = all_gather_tensor(torch.arange(n_local) + 100 * ctx.rank)
    return {"a": a.detach().tolist(), "b": b.detach().tolist(), "ids": ids.tolist(),
            "gathered": gathered.detach().tolist(), "logits_shape": list(logits.shape),
            "loss": float(loss.detach()), "grad_a": a.grad.tolist(), "grad_b": b.grad.tolist()}


def check_run(ctx: DistContext, *, n_items: int = 128, global_batch: int = 32, epochs: int = 3,
              dim: int = 8, seed: int = 0, lr: float = 1e-2,
              checkpoint_dir: str | None = None) -> dict:
    """A tiny contrastive training through the engine (verifies a distributed set-up).

    Two linear encoders map paired synthetic features (``x`` and a noisy linear image of it)
    into a shared space, trained with :func:`symmetric_contrastive_loss` over the gathered
    global batch. Returns the epoch losses, the similarity matrix shape the loss saw and the
    global batch size; one process with the same ``global_batch`` gives the same curve.
    """
    import torch

    from .engine import TrainConfig, fit

    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n_items, 16)).astype(np.float32)
    y = (x @ rng.normal(size=(16, 12)) + 0.3 * rng.normal(size=(n_items, 12))).astype(np.float32)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)

    torch.manual_seed(seed)
    model = torch.nn.ModuleDict({"a": torch.nn.Linear(16, dim), "b": torch.nn.Linear(12, dim)})

    def batches(epoch: int):
        for idx in epoch_batches(n_items, global_batch, epoch, seed):
            yield xt[idx], yt[idx]

    shapes: list[tuple[int, int]] = []

    def step(m, batch, device):
        a = torch.nn.functional.normalize(m["a"](batch[0].to(device)), dim=1)
        b = torch.nn.functional.normalize(m["b"](batch[1].to(device)), dim=1)
        logits = global_logits(a, b, 0.1)
        shapes.append(tuple(logits.shape))
        return symmetric_contrastive_loss(a, b, 0.1)

    device = "cpu" if ctx.device is None else ctx.device.type
    cfg = TrainConfig(epochs=epochs, lr=lr, weight_decay=0.0, seed=seed, device=device,
                      amp=False)
    hist = fit(model, batches, step, cfg, checkpoint_dir=checkpoint_dir, resume=False,
               distributed=ctx if ctx.enabled else False)
    first = hist.epochs[0] if hist.epochs else {}
    return {"rank": ctx.rank, "world_size": ctx.world_size, "backend": ctx.backend,
            "losses": hist.losses, "similarity_shape": list(shapes[0]) if shapes else None,
            "global_batch": first.get("global_batch") or global_batch,
            "per_process_batch": first.get("per_process_batch") or global_batch,
            "items_per_epoch": first.get("items")}
