"""Evaluation: metrics and the batch / single / sequential protocols."""
from .evaluate import LocalityReference, evaluate, locality_reference
from .metrics import generate, ngram_entropy, score_pairs
from .runner import run_batch, run_sequential, run_single

__all__ = ["LocalityReference", "evaluate", "generate", "locality_reference", "ngram_entropy", "run_batch",
           "run_sequential", "run_single", "score_pairs"]
