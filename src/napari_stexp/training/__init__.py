"""The shared training engine; it knows no model. Importing this package is cheap (torch loads
with the first name used).

Engine (:mod:`.engine`)
    ``fit(...)`` with a ``TrainConfig`` -> ``TrainHistory`` runs every trainer's loop (AMP,
    atomic checkpoints and resume, cancel, progress); ``save_checkpoint`` / ``load_checkpoint``,
    ``discard_stale_checkpoint``, ``seed_everything``.
Devices (:mod:`.device`)
    ``get_device("auto")``, ``available_devices``.
Distributed data parallel (:mod:`.distributed`)
    ``init_distributed`` -> ``DistContext``, ``active_context``, ``shard_indices``,
    ``all_gather_tensor``, ``all_gather_with_grad``.
"""

from .._lazy import lazy_exports

__all__, __getattr__, __dir__ = lazy_exports(__name__, {
    ".engine": ("fit", "TrainConfig", "TrainHistory", "save_checkpoint", "load_checkpoint",
                "discard_stale_checkpoint", "seed_everything"),
    ".device": ("get_device", "available_devices"),
    ".distributed": ("init_distributed", "DistContext", "active_context", "shard_indices",
                     "all_gather_tensor", "all_gather_with_grad"),
})
