"""Key statistics of edited modules (``compute``) and where they are stored (``store``)."""
from .compute import (CORPUS_ENV, corpus_fingerprint, corpus_texts, key_second_moments, model_fingerprint,
                      stats_keys)
from .store import SHIPPED_DIR, StatsKey, find_stats, list_stats, stats_cache_dir

__all__ = ["CORPUS_ENV", "SHIPPED_DIR", "StatsKey", "corpus_fingerprint", "corpus_texts", "find_stats",
           "key_second_moments", "list_stats", "model_fingerprint", "stats_cache_dir", "stats_keys"]
