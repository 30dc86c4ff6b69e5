"""Meta-training (``MetaTrainer``) and trajectory training of hypernetwork editors.

Checkpointing lives one floor down, in ``hyperedit.checkpoints``."""
from .data import batch_for_step, load_pool, parse_sources, split_validation
from .meta import MetaTrainConfig, MetaTrainer
from .metrics import MetricsLog

__all__ = ["MetaTrainConfig", "MetaTrainer", "MetricsLog", "batch_for_step", "load_pool", "parse_sources",
           "split_validation"]
