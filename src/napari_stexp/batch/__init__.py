"""Many slides on dask.distributed: one task per slide, models loaded once per worker, atomic
outputs and a completion record per slide, reruns resume (no Qt, no torch at import).

- :mod:`.engine`: planning, the local/distributed run, completion records, output listing;
- :mod:`.tasks`: the per-kind ``load_*`` / ``run_*`` pairs the workers resolve by name.
"""

from .engine import (
    KINDS,
    BatchResult,
    clear_model_cache,
    expand_inputs,
    is_complete,
    list_outputs,
    local_cluster,
    plan,
    read_record,
    run_batch,
    slide_stem,
)

__all__ = ["KINDS", "BatchResult", "clear_model_cache", "expand_inputs", "is_complete",
           "list_outputs", "local_cluster", "plan", "read_record", "run_batch", "slide_stem"]
