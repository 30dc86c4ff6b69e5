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
"""
from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file

from ..delta import EditDelta
from ..lm import cache_keys_and_value_grads, trainable_weights
from ..checkpoints import CheckpointStore, check_same_settings, load_optimizer_state, restore_rng_state
from ..models.limits import check_request_lengths
from ..outputs import start_run_directory
from .trainer_state import TRAINER_JSON, TRAINER_TENSORS, write_trainer_state
from .data import batch_for_step
from .losses import (generalization_loss, locality_examples, locality_loss, reference_log_probs,
                     rephrase_examples)
from .metrics import MetricsLog

log = logging.getLogger(__name__)

# Settings that do not change the trained weights: a run may be resumed with other values
# (e.g. more ``steps`` to extend it, since batches depend only on the seed and the step).
RESUMABLE = ("steps", "val_every", "ckpt_every", "keep_checkpoints")


@dataclass
class MetaTrainConfig:
    """Meta-training settings. ``lr_meta_lr`` is Adam's step size for the per-module edit ``lr``
    (default: ``meta_lr``); validation every ``val_every`` steps on ``val_size`` held-out requests.
    ``calibrate_lr``: before the first step, choose the initial edit ``lr`` by a half-decade grid
    search around the editor's ``lr_init`` on the untrained editor's loss on the first batch.
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

    def __post_init__(self) -> None:
        if self.steps < 1 or self.n_edits < 1 or self.ckpt_every < 1:
            raise ValueError("steps, n_edits and ckpt_every must be >= 1")
        if self.meta_lr <= 0 or self.max_grad_norm <= 0 or self.loc_coef < 0:
            raise ValueError("meta_lr and max_grad_norm must be > 0, loc_coef >= 0")


class MetaTrainer:
    """Runs, checkpoints and resumes the meta-training of ``editor`` on ``lm``."""

    def __init__(self, editor, lm, train, val, config: MetaTrainConfig, run_dir: str | Path, info: dict | None = None):
        check_request_lengths(lm.adapter, [*train, *val])
        self.editor, self.lm, self.train, self.val, self.config = editor, lm, train, val, config
        self.run_dir = Path(run_dir)
        self.info = dict(info or {})
        self.store = CheckpointStore(self.run_dir, keep=config.keep_checkpoints)
        self.metrics = MetricsLog(self.run_dir / "metrics.jsonl")
        self.step = 0
        nets = editor.nets
        lr_params = [p for n, p in nets.named_parameters() if n.endswith(".lr")]
        others = [p for n, p in nets.named_parameters() if not n.endswith(".lr")]
        self.optimizer = torch.optim.Adam([
            {"params": others, "lr": config.meta_lr},
            {"params": lr_params, "lr": config.lr_meta_lr or config.meta_lr},
        ])
        self._reference = None

    # ----- the loop ---------------------------------------------------------------------------
    def run(self, resume: bool = False) -> list[dict]:
        """Train up to ``config.steps``; returns the validation records of this run's log."""
        start_run_directory(self.run_dir, "training-run", resume=resume)
        latest = self.store.latest()
        if latest is not None:
            self._load(latest)
        elif resume:
            log.warning("nothing to resume in %s: starting a new run", self.run_dir)
        if self.step == 0:
            self.metrics.rewind(-1)
            if self.config.calibrate_lr:
                self.calibrate()
            if self.val and self.config.val_every:
                self._validate()
        cfg = self.config
        while self.step < cfg.steps:
            record = self.train_step(self.step)
            self.step += 1
            self.metrics.append({"step": self.step, "split": "train", **record})
            log.info("step %d/%d gen %.3f loc %.4f |g| %.3g (%.1fs)", self.step, cfg.steps, record["gen_loss"],
                     record["loc_loss"], record["grad_norm"], record["seconds"])
            last = self.step == cfg.steps
            if self.val and ((cfg.val_every and self.step % cfg.val_every == 0) or last):
                self._validate()
            if self.step % cfg.ckpt_every == 0 or last:
                self._save()
        return [r for r in self.metrics.read() if r.get("split") == "val"]

    def _cache(self, batch) -> dict:
        ecfg = self.editor.config
        raw = cache_keys_and_value_grads(self.lm.adapter, [r.prompt for r in batch], [r.target for r in batch],
                                         self.editor.module_names, chunk_size=ecfg.lm_batch_size, token=ecfg.token)
        return {n: (k.float(), g.float()) for n, (k, g) in raw.items()}

    def _update_normalizers(self, cache: dict) -> None:
        for name in self.editor.module_names:
            self.editor.nets.net_for(name)[0].normalizer.update(torch.cat(cache[name], dim=-1))

    def calibrate(self, max_points: int = 16) -> float:
        """Set every module's initial ``lr`` to the grid value with the lowest untrained loss.

        The grid is ``lr_init * 10^(i/2)``: i = -2..2 first, extended half a decade at a time while
        the best value lies on an edge (at most ``max_points`` values). Each value is scored by the
        generalisation loss + ``loc_coef`` x locality KL on the first training batch (forward
        passes only). The normaliser keeps the statistics of that batch, so the step-0 validation
        is of a usable untrained editor.
        """
        editor, adapter, cfg = self.editor, self.lm.adapter, self.config
        bs = editor.config.lm_batch_size
        batch = batch_for_step(self.train, 0, cfg.n_edits, cfg.seed)
        cache = self._cache(batch)
        self._update_normalizers(cache)
        gen_pairs, loc_pairs = rephrase_examples(batch), locality_examples(batch)
        references = reference_log_probs(adapter, loc_pairs, bs)
        scores: dict[int, float] = {}

        def score(i: int) -> float:
            lr = editor.config.lr_init * 10 ** (i / 2)
            for net in editor.nets.nets.values():
                net.lr.data.fill_(lr)
            _, shifts = editor.predict(cache)
            delta = EditDelta.from_in_out(adapter, shifts, editor=editor.name)
            gen = generalization_loss(adapter, gen_pairs, delta, bs, backward=False)
            loc = locality_loss(adapter, loc_pairs, delta, bs, backward=False, references=references)
            self.metrics.append({"step": 0, "split": "calibration", "lr": lr, "gen_loss": gen, "loc_loss": loc})
            return gen + cfg.loc_coef * loc

        for i in range(-2, 3):
            scores[i] = score(i)
        while len(scores) < max_points:
            best = min(scores, key=lambda i: (scores[i], i))
            if best == max(scores):
                scores[best + 1] = score(best + 1)
            elif best == min(scores):
                scores[best - 1] = score(best - 1)
            else:
                break
        best = min(scores, key=lambda i: (scores[i], i))
        lr = editor.config.lr_init * 10 ** (best / 2)
        for net in editor.nets.nets.values():
            net.lr.data.fill_(lr)
        log.info("calibrated initial edit lr: %.3g (%d values tried)", lr, len(scores))
        return lr

    def train_step(self, step: int) -> dict:
        """One meta-training step on the batch of ``step``; returns its log record."""
        start, cpu_start = time.perf_counter(), time.process_time()
        editor, adapter, cfg = self.editor, self.lm.adapter, self.config
        ecfg = editor.config
        names = editor.module_names
        batch = batch_for_step(self.train, step, cfg.n_edits, cfg.seed)
        editor.nets.train()
        with trainable_weights(adapter, names) as weights:
            cache = self._cache(batch)
            self._update_normalizers(cache)
            acc, shifts = editor.predict(cache)
            delta = EditDelta.from_in_out(adapter, shifts, editor=editor.name)
            for w in weights:
                w.grad = None
            gen = generalization_loss(adapter, rephrase_examples(batch), delta, ecfg.lm_batch_size)
            loc = locality_loss(adapter, locality_examples(batch), delta, ecfg.lm_batch_size, cfg.loc_coef)
            grad_shifts = {}
            for name, w in zip(names, weights):
                grad = w.grad if w.grad is not None else torch.zeros_like(w)
                grad_shifts[name] = adapter.param_to_in_out(name, grad).float().clone()
        self.optimizer.zero_grad(set_to_none=True)
        editor.backward(cache, acc, shifts, grad_shifts)
        grad_norm = torch.nn.utils.clip_grad_norm_(editor.nets.parameters(), cfg.max_grad_norm)
        self.optimizer.step()
        lrs = torch.cat([net.lr.detach() for net in editor.nets.nets.values()])
        lams = torch.cat([net.log_lambda.detach().exp() for net in editor.nets.nets.values()])
        return {"gen_loss": gen, "loc_loss": loc, "grad_norm": float(grad_norm), "lr": float(lrs.mean()),
                "lambda": float(lams.mean()), "n_tokens": int(next(iter(cache.values()))[0].shape[0]),
                "shift_norm": float(sum(s.norm() for s in shifts.values()) / len(shifts)),
                "seconds": round(time.perf_counter() - start, 3),
                "cpu_seconds": round(time.process_time() - cpu_start, 3)}

    def _validate(self) -> dict:
        """Edit all validation requests at once; ES/GS/LS of the edited model (hyperedit.eval)."""
        from ..eval import evaluate, locality_reference

        adapter = self.lm.adapter
        if self._reference is None:
            self._reference = locality_reference(adapter, self.val)
        start = time.perf_counter()
        delta = self.editor.edit(self.lm, self.val)
        seconds = time.perf_counter() - start
        with delta.applied(self.lm.model):
            metrics, _ = evaluate(adapter, self.val, self._reference)
        record = {"step": self.step, "split": "val", "n_edits": len(self.val), "edit_seconds": round(seconds, 3),
                  **{k: v for k, v in metrics.items() if isinstance(v, (int, float)) or v is None}}
        self.metrics.append(record)
        log.info("validation at step %d: ES %.3f GS %.3f LS %.3f", self.step, record.get("ES") or 0,
                 record.get("GS") or 0, record.get("LS") or 0)
        return record

    # ----- checkpoints ---------------------------------------------------------------------------
    def _identity(self) -> dict:
        """What a resumed run must share with the checkpoint (``RESUMABLE`` settings may change)."""
        train = {k: v for k, v in asdict(self.config).items() if k not in RESUMABLE}
        return {"train_config": train, "editor_config": asdict(self.editor.config), "editor": self.editor.name,
                **self.info}

    def _save(self) -> None:
        def write(folder: Path) -> None:
            self.editor.save(folder, extra_meta={"training": {"step": self.step, **self._identity()}})
            write_trainer_state(folder, self.step, self.optimizer,
                                {**self._identity(), "run_config": asdict(self.config)})

        path = self.store.save(self.step, write)
        log.info("checkpoint %s", path)

    def _load(self, folder: Path) -> None:
        import json

        from ..editors._hypernet import WEIGHTS_FILE

        meta = json.loads((folder / TRAINER_JSON).read_text())
        mine = json.loads(json.dumps(self._identity()))
        theirs = {k: meta.get(k) for k in mine}
        theirs["train_config"] = {k: v for k, v in (theirs["train_config"] or {}).items() if k not in RESUMABLE}
        check_same_settings(self.run_dir, theirs, mine)
        if meta.get("threads") != torch.get_num_threads():
            log.warning("resuming with %d threads, the run used %s: results may differ in the last bits",
                        torch.get_num_threads(), meta.get("threads"))
        self.editor.nets.load_state_dict(load_file(str(folder / WEIGHTS_FILE)))
        tensors = load_file(str(folder / TRAINER_TENSORS))
        load_optimizer_state(self.optimizer, tensors, meta["optimizer"])
        restore_rng_state(tensors, meta["rng"])
        self.step = int(meta["step"])
        self.metrics.rewind(self.step)
        log.info("resumed from %s (step %d)", folder, self.step)
