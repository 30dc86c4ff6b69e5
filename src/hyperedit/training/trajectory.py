"""Trajectory training of lifelong editors (RLEdit, HiEdit; ALGORITHMS.md "Lifelong editing").

One optimiser step per trajectory of ``traj_len`` edits. At step t the model carries every shift
of the trajectory so far; keys and value gradients of edit t are read from that model, the
editor proposes S_t (no grad), and with S_0 + ... + S_t applied the step loss

    reg_coef * ||S_t||^2 + sum_{j=0..min(t, back_depth)} gamma^j [CE(rephrase_{t-j}) + loc_coef KL(unrel_{t-j})]

is backpropagated into the edited weights ("memory backtracking": later edits are trained not to
destroy earlier ones). The KL reference of edit i is the unedited model, or with
``loc_reference="pre_edit"`` the model carrying S_0..S_{i-1}, i.e. the model just before edit i
(as in the RLEdit reference: an edit is asked to keep what the stream's model predicted). The
stream regime (long trajectories, ``back_depth``, ``gamma``, ``reg_coef``, an initial edit lr
``edit_lr_init`` set on the per-module lr scalars at the start of a run) is set by the options. Since W = W_0 + sum S_i, ``W.grad`` is dL_t/dS_t; the editor pushes it
(plus the regulariser) into its networks, the LM graph being freed first (memory separation).
Network gradients accumulate over the trajectory; then clip and one Adam step. Checkpoints and
resume reuse ``hyperedit.checkpoints`` (a killed run resumes to the same weights).

An optimiser step may run ``trajectories_per_step`` trajectories (each drawn from the seed, the
step and its index in the step): their gradients are summed, divided by their number, clipped and
applied in one Adam step. Every trajectory of a step starts from the editor state of the step's
start (normaliser statistics); the rows all of them saw are merged into the normalisers at the end
of the step. That makes the step a sum over independent trajectories, so a data-parallel run
(``torchrun``; ``hyperedit.distributed``) gives each rank a contiguous share of them, all-reduces
the gradients, the normaliser rows and the logged losses, and equals one process running them all
(up to the order of float additions). Rank 0 alone writes the run directory.
"""
from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from ..checkpoints import CheckpointStore
from ..delta import EditDelta
from ..distributed import all_reduce_floats, all_reduce_gradients_, barrier, current_world, shard
from ..editors.protocols import TrajectoryTrainable
from ..errors import HyperEditError
from ..lm import trainable_weights
from ..models.limits import check_request_lengths
from ..requests import EditRequest
from ..outputs import start_run_directory
from ..prefix import compute_prefix, supports_prefix
from ..progress import progress
from .data import batch_for_step
from .losses import generalization_loss, locality_examples, locality_loss, reference_log_probs, rephrase_examples
from .metrics import MetricsLog
from .trainer_state import resume_checkpoint, save_checkpoint

log = logging.getLogger(__name__)

LOC_REFERENCES = ("unedited", "pre_edit")  # the model the locality KL compares against

@dataclass
class TrajectoryConfig:
    """Trajectory-training settings (defaults of the RLEdit paper where CPU allows)."""

    steps: int = 50
    traj_len: int = 10
    n_edits: int = 1
    trajectories_per_step: int = 1
    back_depth: int = 10
    gamma: float = 0.95
    loc_coef: float = 0.6
    reg_coef: float = 1e-4
    meta_lr: float = 1e-4
    lr_meta_lr: float | None = None
    max_grad_norm: float = 1.0
    baseline: bool = True
    loc_reference: str = "unedited"
    edit_lr_init: float | None = None
    fact_cache: bool = True
    ckpt_every: int = 5
    keep_checkpoints: int = 2
    seed: int = 0

    def __post_init__(self) -> None:
        if self.loc_reference not in LOC_REFERENCES:
            raise ValueError(f"loc_reference must be one of {', '.join(LOC_REFERENCES)}")
        if self.edit_lr_init is not None and not self.edit_lr_init > 0:
            raise ValueError("edit_lr_init must be > 0")
        if min(self.steps, self.traj_len, self.n_edits, self.trajectories_per_step, self.ckpt_every) < 1 \
                or self.back_depth < 0:
            raise ValueError("steps, traj_len, n_edits, trajectories_per_step, ckpt_every must be >= 1 "
                             "and back_depth >= 0")
        if not 0 < self.gamma <= 1 or self.meta_lr <= 0 or self.loc_coef < 0 or self.reg_coef < 0:
            raise ValueError("need 0 < gamma <= 1, meta_lr > 0, loc_coef >= 0, reg_coef >= 0")


def backtracking_loss(adapter, history: list[list[EditRequest]], delta: EditDelta, *, back_depth: int, gamma: float,
                      loc_coef: float, batch_size: int = 16, references: dict | None = None,
                      backward: bool = True, examples: dict | None = None) -> dict:
    """The discounted memory-backtracking loss of the last batch in ``history`` (oldest first).

    ``sum_j gamma^j [CE(rephrase_{t-j}) + loc_coef KL(ref_{t-j} || edited)]`` for
    ``j = 0..min(back_depth, t)``, with ``delta`` applied (CE and KL are per-example means averaged
    over each batch's examples). ``examples`` maps a history index to its (rephrase, locality)
    examples: (prompt, target) pairs or cached prefixes (``hyperedit.prefix``); missing entries are
    made from the requests. ``references`` caches the KL references by history index (computed
    here, before applying ``delta``, when missing: the unedited model, or the cached prefixes' final
    states). With ``backward`` the loss is backpropagated into whatever requires grad.
    Returns ``{"loss", "gen": [...], "loc": [...]}``.
    """
    references = {} if references is None else references
    examples = {} if examples is None else examples
    t = len(history) - 1
    depth = range(min(back_depth, t) + 1)
    for j in depth:
        if t - j not in examples:
            examples[t - j] = (rephrase_examples(history[t - j]), locality_examples(history[t - j]))
        if t - j not in references and loc_coef:
            references[t - j] = reference_log_probs(adapter, examples[t - j][1], batch_size)
    gens, locs, total = [], [], 0.0
    for j in depth:
        weight = gamma ** j
        rephrase, locality = examples[t - j]
        gen = generalization_loss(adapter, rephrase, delta, batch_size, backward=backward, coef=weight)
        loc = locality_loss(adapter, locality, delta, batch_size, coef=weight * loc_coef, backward=backward,
                            references=references[t - j]) if loc_coef else 0.0
        gens.append(gen), locs.append(loc)
        total += weight * (gen + loc_coef * loc)
    return {"loss": total, "gen": gens, "loc": locs}


def add_shifts(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Module-wise sum of two (d_in, d_out) shift dicts."""
    out = dict(a)
    for name, s in b.items():
        out[name] = out[name] + s if name in out else s
    return out


class TrajectoryTrainer:
    """Trains ``editor`` (``editors.protocols.TrajectoryTrainable``) over editing trajectories."""

    def __init__(self, editor, lm, train: list[EditRequest], config: TrajectoryConfig, run_dir: str | Path,
                 info: dict | None = None):
        if not isinstance(editor, TrajectoryTrainable):
            raise HyperEditError(f"editor {getattr(editor, 'name', '?')!r} cannot be trained over trajectories")
        check_request_lengths(lm.adapter, train)
        self.editor, self.lm, self.train, self.config = editor, lm, train, config
        self.run_dir = Path(run_dir)
        self.info = dict(info or {})
        self.store = CheckpointStore(self.run_dir, keep=config.keep_checkpoints)
        self.metrics = MetricsLog(self.run_dir / "metrics.jsonl")
        self.world = current_world()
        if config.trajectories_per_step < self.world.size:
            raise HyperEditError(f"{self.world.size} ranks need at least as many trajectories per step "
                                 f"(trajectories_per_step {config.trajectories_per_step})")
        self.step = 0
        editor.prepare(lm)  # ridge matrices / null-space bases of the solve, when its options need them
        names = editor.module_names
        self.prefix_layer = (min(lm.adapter.layer_of(n) for n in names)
                             if config.fact_cache and supports_prefix(lm.adapter) else None)
        self.optimizer = torch.optim.Adam(editor.parameter_groups(config.meta_lr, config.lr_meta_lr or config.meta_lr))

    def run(self, resume: bool = False) -> list[dict]:
        """Train up to ``config.steps`` optimiser steps; returns the log records (rank 0; others: [])."""
        main = self.world.is_main
        if main:
            start_run_directory(self.run_dir, "training-run", resume=resume)
        barrier(self.world)
        latest = self.store.latest()
        if latest is not None:
            self._load(latest)
        else:
            if main:
                self.metrics.rewind(-1)
            self._set_edit_lr()
        bar = progress(total=self.config.steps, initial=self.step, desc=f"train {self.editor.name}", unit="step",
                       enabled=main)
        while self.step < self.config.steps:
            record = self.train_step(self.step)
            self.step += 1
            if main:
                self.metrics.append({"step": self.step, **record})
            bar.update(1)
            bar.set_postfix(loss=f"{record['loss']:.3f}")
            if self.step % self.config.ckpt_every == 0 or self.step == self.config.steps:
                self._save()
        bar.close()
        return self.metrics.read() if main else []

    def train_step(self, step: int) -> dict:
        """One optimiser step: this rank's share of the step's trajectories, their gradients summed
        over the ranks and divided by ``trajectories_per_step``, clipped, one Adam step; returns
        the log record (means over the step's trajectories, reduced over the ranks)."""
        cfg, editor, world = self.config, self.editor, self.world
        start = time.perf_counter()
        count = cfg.trajectories_per_step
        start_state = editor.stream_state()
        self.optimizer.zero_grad(set_to_none=True)
        records, rows = [], []
        for j in shard(range(count), world):
            editor.load_stream_state(*start_state)
            record, seen = self.train_trajectory(step * count + j)
            records.append(record), rows.extend(seen)
        editor.load_stream_state(*start_state)  # then every trajectory's rows, from every rank
        editor.update_normalizers({n: tuple(torch.cat([c[n][i] for c in rows]) for i in (0, 1))
                                   for n in editor.module_names}, world)
        parameters = list(editor.parameters())
        all_reduce_gradients_(parameters, world)
        for p in parameters:
            if p.grad is not None:
                p.grad.div_(count)
        norm = torch.nn.utils.clip_grad_norm_(parameters, cfg.max_grad_norm)
        self.optimizer.step()
        out = {**self._step_means(records), "grad_norm": float(norm), "seconds": round(time.perf_counter() - start, 3)}
        if world.size > 1:
            out["ranks"] = world.size
        log.info("step %d: loss %.4f |g| %.3g (%.1fs)", step + 1, out["loss"], norm, out["seconds"])
        return out

    def _step_means(self, records: list[dict]) -> dict:
        """The means over all the step's trajectories (every rank's) of the trajectory records."""
        keys = ("loss", "last_loss", "modules_touched", "shift_norm")
        advantages = [r["advantage_vs_all"] for r in records if "advantage_vs_all" in r]
        sums = all_reduce_floats([sum(r[k] for r in records) for k in keys] + [sum(advantages), len(advantages)],
                                 self.world)
        out = {k: v / self.config.trajectories_per_step for k, v in zip(keys, sums)}
        if sums[-1]:
            out["advantage_vs_all"] = sums[-2] / sums[-1]
        return out

    def train_trajectory(self, index: int) -> tuple[dict, list]:
        """Trajectory ``index`` (``traj_len`` edits): its gradients are added to the editor's
        ``.grad``; returns its record and the caches whose rows the normalisers saw."""
        cfg, editor, adapter = self.config, self.editor, self.lm.adapter
        names = editor.module_names
        history = [batch_for_step(self.train, index * cfg.traj_len + t, cfg.n_edits, cfg.seed)
                   for t in range(cfg.traj_len)]
        cumulative: dict[str, torch.Tensor] = {}
        references: dict = {}
        examples = {t: self._examples(batch) for t, batch in enumerate(history)}
        editor.train_mode(True)
        editor.begin_trajectory()
        losses, advantages, touched, seen = [], [], [], []
        for t in range(cfg.traj_len):
            prior = EditDelta.from_in_out(adapter, cumulative, editor=editor.name)
            with prior.applied(self.lm.model):
                cache = editor.cache(self.lm, history[t])
                rows = editor.contrast_rows(self.lm, history[t])
                if cfg.loc_reference == "pre_edit" and cfg.loc_coef:
                    references[t] = reference_log_probs(adapter, examples[t][1], editor.config.lm_batch_size)
            editor.update_normalizers(cache)
            seen.append(cache)
            proposal = editor.trajectory_propose(cache, rows)
            total = add_shifts(cumulative, proposal.shifts)
            kw = dict(back_depth=cfg.back_depth, gamma=cfg.gamma, loc_coef=cfg.loc_coef,
                      batch_size=editor.config.lm_batch_size, references=references, examples=examples)
            with trainable_weights(adapter, names) as weights:
                out = backtracking_loss(adapter, history[:t + 1], EditDelta.from_in_out(adapter, total, editor=editor.name), **kw)
                grads = {n: adapter.param_to_in_out(n, w.grad).float().clone() if w.grad is not None
                         else torch.zeros(adapter.in_out_shape(n)) for n, w in zip(names, weights)}
            if cfg.baseline and proposal.full is not None:  # extrinsic return relative to editing every candidate
                full = EditDelta.from_in_out(adapter, add_shifts(cumulative, proposal.full), editor=editor.name)
                advantages.append(backtracking_loss(adapter, history[:t + 1], full, backward=False, **kw)["loss"] - out["loss"])
            reg = cfg.reg_coef * sum(float(s.pow(2).sum()) for s in proposal.shifts.values())
            editor.trajectory_backward(proposal, grads, cfg.reg_coef)
            losses.append(out["loss"] + reg)
            touched.append(len(proposal.shifts))
            cumulative = total
        record = {"loss": sum(losses) / len(losses), "last_loss": losses[-1],
                  "modules_touched": sum(touched) / len(touched),
                  "shift_norm": float(sum(s.norm() for s in cumulative.values()))}
        if advantages:
            record["advantage_vs_all"] = sum(advantages) / len(advantages)
        return record, seen

    def _examples(self, batch: list[EditRequest]) -> tuple:
        """(rephrase, locality) examples of one edit's batch. With ``fact_cache`` (models that
        ``hyperedit.prefix`` supports) their hidden states entering the lowest edited layer are
        computed once, since no shift of the trajectory reaches below it, and every loss pass of
        the trajectory runs only the layers from there up; the unedited locality distribution
        comes with them (``loc_reference="unedited"``)."""
        rephrase, locality = rephrase_examples(batch), locality_examples(batch)
        if self.prefix_layer is None:
            return rephrase, locality
        adapter, size = self.lm.adapter, self.editor.config.lm_batch_size
        final = self.config.loc_reference == "unedited"
        return (compute_prefix(adapter, rephrase, self.prefix_layer, size, desc="rephrase prefixes").by_length(),
                compute_prefix(adapter, locality, self.prefix_layer, size, final=final,
                               desc="locality prefixes").by_length() if locality else locality)

    def _set_edit_lr(self) -> None:
        """``edit_lr_init``: every per-module edit lr starts at this value (a fresh run only)."""
        if self.config.edit_lr_init is None:
            return
        with torch.no_grad():
            for param in self.editor.edit_lr_parameters():
                param.fill_(self.config.edit_lr_init)
        log.info("edit lr of every module set to %g", self.config.edit_lr_init)

    # ----- checkpoints -------------------------------------------------------------------------
    def _identity(self) -> dict:
        train = {k: v for k, v in asdict(self.config).items() if k != "steps"}  # a run may be extended
        if train["trajectories_per_step"] == 1:  # the identity of runs made before the option existed
            del train["trajectories_per_step"]
        return {"train_config": train, "editor_config": asdict(self.editor.config),
                "editor": self.editor.name, **self.info}

    def _save(self) -> None:
        if self.world.is_main:  # every rank holds the same weights; rank 0 writes them
            path = save_checkpoint(self.store, self.step, self.editor, self.optimizer, self._identity(),
                                   ranks=self.world.size)
            log.info("checkpoint %s", path)

    def _load(self, folder: Path) -> None:
        self.step = resume_checkpoint(folder, self.run_dir, self.editor, self.optimizer, self._identity(),
                                      self.world.size)
        if self.world.is_main:
            self.metrics.rewind(self.step)
        log.info("resumed from %s (step %d)", folder, self.step)
