"""What a client may set in an edit's ``options``: no file names, and every count bounded.

The service's operator chooses files (statistics corpus, checkpoint) when starting it; a client
naming one could make the server read, probe or write files. Counts (optimisation steps, rounds,
samples, batch sizes) decide how long an edit holds the worker, so each is capped; an option not
named in ``COUNT_LIMITS`` that takes an integer is capped at ``GENERIC_INT_FACTOR`` times its
default, so an option added to an editor later is bounded too.
"""
from __future__ import annotations

import dataclasses
import math

from ..errors import HyperEditError

# an option whose name holds one of these words names a file or folder
PATH_WORDS = ("corpus", "path", "file", "dir", "checkpoint", "cache", "root", "url")

COUNT_LIMITS = {
    "steps": 200, "v_steps": 100, "meta_steps": 20, "rounds": 8, "refresh_every": 1000,
    "batch_size": 256, "lm_batch_size": 64, "net_batch_size": 8192,
    "stats_samples": 5000, "ridge_samples": 5000, "stats_max_length": 512,
    "n_prefixes": 10, "prefix_tokens": 20, "n_locality_texts": 64, "locality_tokens": 64,
    "rank": 1024, "top_k": 16, "policy_hidden": 1024, "contrast": 64, "contrast_memory": 4096,
}
GENERIC_INT_FACTOR = 4
MAX_LIST_ITEMS = 64


def names_a_file(option: str) -> bool:
    return any(word in option.lower() for word in PATH_WORDS)


def check_client_options(config_class: type, options: dict) -> None:
    """Raise HyperEditError naming the first option a client may not set, or set so high."""
    defaults = {f.name: f.default for f in dataclasses.fields(config_class)}
    for key, value in options.items():
        if names_a_file(key):
            raise HyperEditError(f"option {key!r} names a file; clients may not set it "
                                 f"(the service's operator chooses files when starting it)")
        if isinstance(value, bool) or key not in defaults:
            continue  # unknown keys are reported by the editor's config
        if isinstance(value, float) and not math.isfinite(value):
            raise HyperEditError(f"option {key!r} must be a finite number, got {value}")
        if isinstance(value, int):
            default = defaults[key]
            limit = COUNT_LIMITS.get(key)
            if limit is None and isinstance(default, int) and not isinstance(default, bool) and default > 0:
                limit = max(GENERIC_INT_FACTOR * default, 1)
            if limit is not None and not 0 <= value <= limit:
                raise HyperEditError(f"option {key!r} must be between 0 and {limit} on this service, got {value}")
        if isinstance(value, (list, dict)) and len(value) > MAX_LIST_ITEMS:
            raise HyperEditError(f"option {key!r} holds {len(value)} items; the limit is {MAX_LIST_ITEMS}")
