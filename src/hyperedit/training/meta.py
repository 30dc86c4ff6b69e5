"""Meta-training of a hypernetwork editor (MALMEN or MEND) with memory separation.

One step per batch of ``n_edits`` requests (ALGORITHMS.md, MALMEN):
1. cache keys and value gradients of the edit examples (LM passes in chunks); update the normaliser;
2. predict the shifts S without grad;
3-4. with S applied, backpropagate the generalisation loss (rephrasings) and ``loc_coef`` x the
   locality KL into the edited weights, whose ``.grad`` is then dL/dS (the LM graph is freed);
5-6. the editor pushes dL/dS through its aggregation (closed form for MALMEN's solve) and re-runs
   the hypernetwork chunk by chunk with grad; clip; Adam step.
The LM graph and the hypernetwork graph are never in memory together. Checkpoints (editor +
optimiser + RNG + step) make a killed run resume to the same final weights.

With ``fact_cache`` (default, for models ``hyperedit.prefix`` supports) step 1 and the layers
below the lowest edited one are computed once per request before training (``FactCache``): a
step then runs only the hypernetwork and the edited layers + head; validation likewise (ES, GS
and LS on the cached texts: teacher-forced token accuracy, LS against the unedited argmax on the
locality prompts that have an answer). After each validation the editor with the best mean of
ES, GS and LS so far is kept in ``OUT/best``.

Data parallel (launched by torchrun, ``hyperedit.distributed``): every rank draws the same batch
(a function of seed and step) and takes its contiguous share of it. The normaliser statistics,
MALMEN's ``K^T K`` and ``K^T D`` (MEND's summed shifts), the loss counts and values and dL/dS are
all-reduced, so every rank solves the same system; the losses are divided by the batch's example
counts, so the ranks' hypernetwork gradients add up to the one-process gradient and are summed
(dL/dlambda, computed identically everywhere, is added by rank 0 only). Clipping and Adam then run
identically on every rank. Validation is split the same way (metric sums reduced). Only rank 0
writes the run directory (checkpoints, metrics, fact caches); the others wait at a barrier and
read the caches it wrote.
"""
from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from ..checkpoints import CheckpointStore
from ..delta import EditDelta
from ..distributed import (all_reduce_floats, all_reduce_gradients_, all_reduce_sum_, barrier, current_world,
                           shard)
from ..errors import HyperEditError
from ..lm import cache_keys_and_value_grads, trainable_weights
from ..models.limits import check_request_lengths
from ..outputs import start_run_directory, write_directory
from ..prefix import supports_prefix
from .calibration import calibrate_lr, init_lambda
from .data import batch_for_step
from .fact_cache import FactCache, load_or_build
from .losses import generalization_loss, locality_examples, locality_loss, rephrase_examples
from .metrics import MetricsLog
from .trainer_state import resume_checkpoint, save_checkpoint
from .validation import Validator

log = logging.getLogger(__name__)

# Settings that do not change the trained weights: a run may be resumed with other values
# (e.g. more ``steps`` to extend it, since batches depend only on the seed and the step).
RESUMABLE = ("steps", "val_every", "ckpt_every", "keep_checkpoints", "fact_cache", "cache_dir")
BEST_DIR = "best"


@dataclass
class MetaTrainConfig:
    """Meta-training settings. ``lr_meta_lr`` is Adam's step size for the per-module edit ``lr``
    (default: ``meta_lr``); validation every ``val_every`` steps on ``val_size`` held-out requests.
    ``calibrate_lr``: before the first step, choose the initial edit ``lr`` by a half-decade grid
    search around the editor's ``lr_init`` on the untrained editor's loss on the first batch.
    ``lambda_meta_lr``: Adam's step size for MALMEN's ``log_lambda`` (default: ``meta_lr``);
    ``lambda_init="trace"`` sets e^lambda to tr(K^T K) / d_in of the first batch's keys per module
    (the ridge then starts at the scale of the keys instead of 1). ``fact_cache``: compute the
    per-request caches once (``FactCache``; ignored with a log line where unsupported), kept in
    ``cache_dir`` (default: the run directory) or, with ``cache_dir=""``, in memory only.
    """

    steps: int = 100
    n_edits: int = 64
    meta_lr: float = 1e-4
    lr_meta_lr: float | None = None
    loc_coef: float = 1.0
    max_grad_norm: float = 1.0
    val_size: int = 64
    val_every: int = 25
    ckpt_every: int = 10
    keep_checkpoints: int = 2
    seed: int = 0
    calibrate_lr: bool = True
    lambda_meta_lr: float | None = None
    lambda_init: str = "zero"
    fact_cache: bool = True
    cache_dir: str | None = None

    def __post_init__(self) -> None:
        if self.steps < 1 or self.n_edits < 1 or self.ckpt_every < 1:
            raise ValueError("steps, n_edits and ckpt_every must be >= 1")
        if self.meta_lr <= 0 or self.max_grad_norm <= 0 or self.loc_coef < 0:
            raise ValueError("meta_lr and max_grad_norm must be > 0, loc_coef >= 0")
        if self.lambda_init not in ("zero", "trace"):
            raise ValueError("lambda_init must be 'zero' or 'trace'")


class MetaTrainer:
    """Runs, checkpoints and resumes the meta-training of ``editor`` on ``lm``."""

    def __init__(self, editor, lm, train, val, config: MetaTrainConfig, run_dir: str | Path, info: dict | None = None):
        check_request_lengths(lm.adapter, [*train, *val])
        self.editor, self.lm, self.train, self.val, self.config = editor, lm, train, val, config
        self.run_dir = Path(run_dir)
        self.info = dict(info or {})
        self.store = CheckpointStore(self.run_dir, keep=config.keep_checkpoints)
        self.metrics = MetricsLog(self.run_dir / "metrics.jsonl")
        self.world = current_world()
        if config.n_edits < self.world.size or (val and len(val) < self.world.size):
            raise HyperEditError(f"{self.world.size} ranks need at least as many facts per step and validation "
                                 f"requests (n_edits {config.n_edits}, validation {len(val)})")
        self.step = 0
        self.optimizer = torch.optim.Adam(editor.parameter_groups(config.meta_lr, config.lr_meta_lr or config.meta_lr,
                                                                  config.lambda_meta_lr or config.meta_lr))
        self.validator = Validator(editor, lm, val, self.world, self.contrast_rows)
        self.facts: FactCache | None = None
        self.best_score: float | None = None

    # ----- the loop ---------------------------------------------------------------------------
    def run(self, resume: bool = False) -> list[dict]:
        """Train up to ``config.steps``; returns the validation records of this run's log."""
        if self.world.is_main:
            start_run_directory(self.run_dir, "training-run", resume=resume)
        barrier(self.world)
        latest = self.store.latest()
        if latest is not None:
            self._load(latest)
        elif resume:
            log.warning("nothing to resume in %s: starting a new run", self.run_dir)
        self.editor.prepare(self.lm)
        self.prepare_caches()
        if self.world.is_main:
            scores = [self._score(r) for r in self.metrics.read() if r.get("split") == "val"]
            self.best_score = max((v for v in scores if v is not None), default=None)
        if self.step == 0:
            self._rewind_log(-1)
            if self.config.calibrate_lr:
                self.calibrate()
            if self.val and self.config.val_every:
                self._validate()
        cfg = self.config
        while self.step < cfg.steps:
            record = self.train_step(self.step)
            self.step += 1
            self._append_log({"step": self.step, "split": "train", **record})
            log.info("step %d/%d gen %.3f loc %.4f |g| %.3g (%.1fs)", self.step, cfg.steps, record["gen_loss"],
                     record["loc_loss"], record["grad_norm"], record["seconds"])
            last = self.step == cfg.steps
            if self.val and ((cfg.val_every and self.step % cfg.val_every == 0) or last):
                self._validate()
            if self.step % cfg.ckpt_every == 0 or last:
                self._save()
        return [r for r in self.metrics.read() if r.get("split") == "val"] if self.world.is_main else []

    def _append_log(self, record: dict) -> None:
        if self.world.is_main:
            self.metrics.append(record)

    def _rewind_log(self, step: int) -> None:
        if self.world.is_main:
            self.metrics.rewind(step)

    # ----- inputs of a step: cached or computed -------------------------------------------------
    def prepare_caches(self) -> None:
        """Build or load the fact caches of the training and validation requests (``FactCache``)."""
        cfg, adapter = self.config, self.lm.adapter
        if not cfg.fact_cache or self.facts is not None:
            return
        if not supports_prefix(adapter):
            log.info("fact cache: not supported for model_type %s; every step runs the whole model",
                     adapter.model_type)
            return
        folder = None if cfg.cache_dir == "" else Path(cfg.cache_dir or self.run_dir)
        ecfg, names = self.editor.config, self.editor.module_names
        path = (lambda name: None if folder is None else folder / name)

        def build() -> None:
            self.facts = load_or_build(path("train-cache.safetensors"), adapter, self.train, names, ecfg.token,
                                       ecfg.lm_batch_size)
            if self.val:
                self.validator.facts = load_or_build(path("val-cache.safetensors"), adapter, self.val, names, ecfg.token,
                                               ecfg.lm_batch_size, prompts=True)

        if folder is None or self.world.is_main:  # in memory: every rank builds its own
            build()
        barrier(self.world)
        if folder is not None and not self.world.is_main:  # rank 0 wrote the files: read them
            build()

    def batch_indices(self, step: int) -> list[int]:
        """Indices (into the training requests) of this rank's share of the batch of ``step``."""
        batch = batch_for_step(list(range(len(self.train))), step, self.config.n_edits, self.config.seed)
        return shard(batch, self.world)

    def global_counts(self, *counts: int) -> list[int]:
        """Counts of this rank's share summed over the ranks (the divisors of the batch's mean losses)."""
        return [int(c) for c in all_reduce_floats(counts, self.world)]

    def step_inputs(self, indices: list[int]):
        """(keys/value-gradient cache, generalisation examples, locality examples) of a batch."""
        if self.facts is not None:
            f = self.facts
            # losses are sums over examples: their order is free, so batches of similar length
            return (f.edit_cache(indices), f.rephrase_examples(indices).by_length(),
                    f.locality_examples(indices).by_length())
        batch = [self.train[i] for i in indices]
        return self._cache(batch), rephrase_examples(batch), locality_examples(batch)

    def contrast_rows(self, requests, indices: list[int]) -> dict | None:
        """``contrast`` (MALMEN's option): the rows of this rank's share of a batch (swapped within
        the share, as a data-parallel edit does), summed over the ranks; None when off. The keys
        are read from the whole unedited model at every step (a forward pass per swap)."""
        editor = self.editor
        if not getattr(editor.config, "contrast", 0):
            return None
        names = editor.module_names
        rows = editor.contrast_gram(self.lm, [requests[i] for i in indices], names)
        if self.world.size > 1:  # a share without swaps still joins the reduction
            rows = {n: rows[n] if n in rows else torch.zeros(2 * (editor.nets.net_for(n)[0].d_in,), dtype=torch.float64,
                                                             device=self.lm.device) for n in names}
            all_reduce_sum_(list(rows.values()), self.world)
        return rows

    def _cache(self, batch) -> dict:
        ecfg = self.editor.config
        raw = cache_keys_and_value_grads(self.lm.adapter, [r.prompt for r in batch], [r.target for r in batch],
                                         self.editor.module_names, chunk_size=ecfg.lm_batch_size, token=ecfg.token,
                                         subjects=[r.subject for r in batch])
        return {n: (k.float(), g.float()) for n, (k, g) in raw.items()}

    def calibrate(self, max_points: int = 16) -> float:
        """Before the first step: the normalisers take in the first training batch (so the step-0
        validation is of a usable untrained editor), ``lambda_init``, then the initial edit ``lr``
        (``calibration.calibrate_lr``)."""
        batch = self.step_inputs(self.batch_indices(0))
        self.editor.update_normalizers(batch[0], self.world)
        if self.config.lambda_init == "trace":
            init_lambda(self.editor, batch[0], self.world)
        counts = self.global_counts(len(batch[1]), len(batch[2]))
        return calibrate_lr(self.editor, self.lm.adapter, batch, counts, self.world, self.config.loc_coef,
                            self._append_log, max_points)

    def train_step(self, step: int) -> dict:
        """One meta-training step on the batch of ``step``; returns its log record."""
        start, cpu_start = time.perf_counter(), time.process_time()
        self.optimizer.zero_grad(set_to_none=True)
        record = self.step_gradients(step)
        all_reduce_gradients_(self.editor.nets.parameters(), self.world)
        grad_norm = torch.nn.utils.clip_grad_norm_(self.editor.nets.parameters(), self.config.max_grad_norm)
        self.optimizer.step()
        nets = self.editor.nets.nets.values()
        lrs = torch.cat([net.lr.detach() for net in nets])
        lams = torch.cat([net.log_lambda.detach().exp() for net in nets])
        cpu = time.process_time() - cpu_start
        record = {**record, "grad_norm": float(grad_norm), "lr": float(lrs.mean()), "lambda": float(lams.mean()),
                  "seconds": round(time.perf_counter() - start, 3), "cpu_seconds": round(cpu, 3)}
        if self.world.size > 1:  # the CPU time of the whole step, over every rank
            total_cpu = all_reduce_floats([cpu], self.world)[0]
            record.update(ranks=self.world.size, cpu_seconds_all_ranks=round(total_cpu, 3))
        return record

    def step_gradients(self, step: int) -> dict:
        """Steps 1-6 of a training step: the hypernetwork's ``.grad`` (added to) and the losses."""
        editor, adapter, cfg = self.editor, self.lm.adapter, self.config
        ecfg = editor.config
        names = editor.module_names
        editor.nets.train()
        with trainable_weights(adapter, names) as weights:
            indices = self.batch_indices(step)
            cache, gen_pairs, loc_pairs = self.step_inputs(indices)
            editor.update_normalizers(cache, self.world)
            acc, shifts = editor.predict(cache, self.world, rows=self.contrast_rows(self.train, indices))
            delta = EditDelta.from_in_out(adapter, shifts, editor=editor.name)
            for w in weights:
                w.grad = None
            n_gen, n_loc, n_tokens = self.global_counts(len(gen_pairs), len(loc_pairs),
                                                        next(iter(cache.values()))[0].shape[0])
            gen = generalization_loss(adapter, gen_pairs, delta, ecfg.lm_batch_size, total_examples=n_gen)
            loc = locality_loss(adapter, loc_pairs, delta, ecfg.lm_batch_size, cfg.loc_coef, total_examples=n_loc)
            grad_shifts = {}
            for name, w in zip(names, weights):
                grad = w.grad if w.grad is not None else torch.zeros_like(w)
                grad_shifts[name] = adapter.param_to_in_out(name, grad).float().clone()
        all_reduce_sum_(list(grad_shifts.values()), self.world)
        gen, loc = all_reduce_floats([gen, loc], self.world)
        editor.backward(cache, acc, shifts, grad_shifts, replicated=self.world.is_main)
        return {"gen_loss": gen, "loc_loss": loc, "n_tokens": n_tokens,
                "shift_norm": float(sum(s.norm() for s in shifts.values()) / len(shifts))}

    # ----- validation ------------------------------------------------------------------------------
    def _validate(self) -> dict:
        """Edit all validation requests at once and score the edited model (ES, GS, LS)."""
        start = time.perf_counter()
        metrics = self.validator.metrics()
        record = {"step": self.step, "split": "val", "n_edits": len(self.val),
                  "seconds": round(time.perf_counter() - start, 3),
                  **{k: v for k, v in metrics.items() if isinstance(v, (int, float)) or v is None}}
        self._append_log(record)
        log.info("validation at step %d: ES %.3f GS %.3f LS %.3f", self.step, record.get("ES") or 0,
                 record.get("GS") or 0, record.get("LS") or 0)
        score = self._score(record)
        if self.world.is_main and score is not None and (self.best_score is None or score > self.best_score):
            self.best_score = score
            with write_directory(self.run_dir / BEST_DIR, "editor-state") as tmp:
                self.editor.save(tmp, extra_meta={"training": {"step": self.step, **self._identity()},
                                                  "validation": record})
            log.info("best validation so far (mean %.3f): editor kept in %s", score, self.run_dir / BEST_DIR)
        return record

    @staticmethod
    def _score(record: dict) -> float | None:
        values = [record.get(k) for k in ("ES", "GS", "LS")]
        return None if any(v is None for v in values) else sum(values) / 3

    # ----- checkpoints ---------------------------------------------------------------------------
    def _identity(self) -> dict:
        """What a resumed run must share with the checkpoint (``RESUMABLE`` settings may change)."""
        train = {k: v for k, v in asdict(self.config).items() if k not in RESUMABLE}
        return {"train_config": train, "editor_config": asdict(self.editor.config), "editor": self.editor.name,
                **self.info}

    def _save(self) -> None:
        if self.world.is_main:  # every rank holds the same weights; rank 0 writes them
            path = save_checkpoint(self.store, self.step, self.editor, self.optimizer, self._identity(),
                                   run_config=asdict(self.config), ranks=self.world.size)
            log.info("checkpoint %s", path)

    def _load(self, folder: Path) -> None:
        self.step = resume_checkpoint(folder, self.run_dir, self.editor, self.optimizer, self._identity(),
                                      self.world.size, resumable=RESUMABLE)
        self._rewind_log(self.step)
        log.info("resumed from %s (step %d)", folder, self.step)
