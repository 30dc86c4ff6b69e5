"""Meta-training of hypernetwork editors, and the resumable pieces other trainers reuse
(``CheckpointStore``, optimiser/RNG state in safetensors + JSON, ``MetricsLog``)."""
from .checkpoint import CheckpointStore, load_optimizer_state, optimizer_state, resolve_checkpoint, restore_rng_state, rng_state
from .data import batch_for_step, load_pool, parse_sources, split_validation
from .meta import MetaTrainConfig, MetaTrainer
from .metrics import MetricsLog

__all__ = ["CheckpointStore", "MetaTrainConfig", "MetaTrainer", "MetricsLog", "batch_for_step", "load_optimizer_state",
           "load_pool", "optimizer_state", "parse_sources", "resolve_checkpoint", "restore_rng_state", "rng_state",
           "split_validation"]
