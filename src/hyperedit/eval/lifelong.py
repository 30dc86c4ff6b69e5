"""Lifelong editing: a stream of edits applied on top of each other and never reverted.

The stream is ``num_seq`` requests edited ``batch_size`` at a time, each delta added to the
weights the earlier ones left. Every ``curve_every`` edits a curve point is measured: ES/GS/LS of
the most recent edits, of the earliest ones, and zero-shot general ability (``eval.general``)
against its value before the stream, and, for an editor with a null-space memory of earlier edits
(``memory_fill``), how many of the directions a new edit may write in it holds. After the stream:
ES/GS/LS over all edits and over the first ``num_pre``. Any editor of the registry works; stateful
editors (AlphaEdit's K_p, the hypernetwork editors' memory) are resumable through
``editors.protocols.SequentialState``.

The run directory holds checkpoints (``hyperedit.checkpoints.CheckpointStore``): the current weights
of every module touched so far (safetensors) and ``stream.json`` (edits done, curves, timings), so
a killed run resumes exactly where its last checkpoint stopped and ends in the same state.
"""
from __future__ import annotations

import contextlib
import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from ..bench.records import peak_rss_during
from ..editors.protocols import MemoryReport, SequentialState
from ..errors import HyperEditError
from ..models.limits import check_request_lengths
from ..requests import EditRequest
from ..checkpoints import CheckpointStore, check_same_settings
from ..outputs import start_run_directory
from ..progress import progress as progress_bar
from .evaluate import LocalityReference, evaluate, locality_reference
from .general import evaluate_general, retention

log = logging.getLogger(__name__)

STATE_FILE = "stream.json"
WEIGHTS_FILE = "weights.safetensors"
EDITOR_FILE = "editor_state.safetensors"
RESULT_FILE = "result.json"  # the finished stream's result record, in its run directory
MEMORY_FULL = 0.9  # share of the null space held by the memory at which a stream warns once


def finished_streams(run_dirs) -> list[tuple[Path, dict, Path]]:
    """``(run directory, result record, latest checkpoint folder)`` of each finished stream among
    ``run_dirs``; a directory without a checkpoint or a result record is skipped with a warning."""
    found = []
    for run in map(Path, run_dirs):
        latest = CheckpointStore(run).latest()
        if latest is None or not (run / RESULT_FILE).is_file():
            log.warning("%s: no finished stream here (a checkpoint and %s are needed); skipped", run, RESULT_FILE)
            continue
        found.append((run, json.loads((run / RESULT_FILE).read_text()), latest))
    return found


@contextlib.contextmanager
def stream_weights(lm, folder: str | Path):
    """``lm`` carrying the weights of a stream's checkpoint ``folder`` (every module the stream touched);
    the model's own weights are put back on leaving."""
    weights = load_file(str(Path(folder) / WEIGHTS_FILE))
    params = {n: lm.adapter.weight(n) for n in weights if n != "_empty"}
    saved = {n: p.detach().clone() for n, p in params.items()}
    try:
        with torch.no_grad():
            for n, p in params.items():
                p.copy_(weights[n].to(p))
        yield lm
    finally:
        with torch.no_grad():
            for n, p in params.items():
                p.copy_(saved[n])


@dataclass
class LifelongConfig:
    """Stream settings: ``num_seq`` edits in batches of ``batch_size``; a curve point every
    ``curve_every`` edits over ``curve_sample`` recent / earliest edits and ``general_per_task``
    rows of each general task (0 disables); ``ckpt_every`` edits between checkpoints (default:
    ``curve_every``)."""

    num_seq: int = 100
    batch_size: int = 1
    num_pre: int = 100
    curve_every: int = 100
    curve_sample: int = 50
    general_per_task: int = 10
    general_tasks: list[str] | None = None
    eval_batch_size: int = 32
    ckpt_every: int | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        if min(self.num_seq, self.batch_size, self.curve_every, self.curve_sample) < 1:
            raise ValueError("num_seq, batch_size, curve_every and curve_sample must be >= 1")
        if self.num_pre < 0 or self.general_per_task < 0:
            raise ValueError("num_pre and general_per_task must be >= 0")
        if self.ckpt_every is not None and self.ckpt_every < 1:
            raise ValueError("ckpt_every must be >= 1")


def subset_reference(reference: LocalityReference, indices: list[int]) -> LocalityReference:
    """The locality reference of ``requests[i] for i in indices``, re-indexed from 0."""
    position = {i: n for n, i in enumerate(indices)}
    pairs, predicted = [], []
    for (i, prompt, target, from_data), pred in zip(reference.pairs, reference.predicted):
        if i in position:
            pairs.append((position[i], prompt, target, from_data))
            predicted.append(pred)
    return LocalityReference(pairs, predicted)


def _short(metrics: dict) -> dict:
    return {k: metrics.get(k) for k in ("ES", "GS", "LS")}


@dataclass
class StreamState:
    """What a checkpoint stores besides the weights (JSON)."""

    done: int = 0
    steps: list[dict] = field(default_factory=list)  # per edit step: n, seconds, touched, candidates
    curves: list[dict] = field(default_factory=list)
    general_before: dict | None = None
    touched: list[str] = field(default_factory=list)
    module_edits: dict[str, int] = field(default_factory=dict)  # edit steps that changed each module


class LifelongRunner:
    """Runs (or resumes) one lifelong stream of ``editor`` on ``lm`` over ``requests``."""

    def __init__(self, lm, editor, requests: list[EditRequest], config: LifelongConfig, run_dir: str | Path,
                 info: dict | None = None, data_dir: str | Path | None = None):
        if len(requests) < config.num_seq:
            raise HyperEditError(f"the stream needs {config.num_seq} requests, only {len(requests)} given")
        check_request_lengths(lm.adapter, requests[: config.num_seq])
        self.lm, self.editor, self.config = lm, editor, config
        self.requests = list(requests[: config.num_seq])
        self.run_dir = Path(run_dir)
        self.info = {"editor": getattr(editor, "name", "?"), "model": lm.name, "config": asdict(config),
                     **(info or {})}
        self.store = CheckpointStore(self.run_dir, keep=2)
        self.state = StreamState()
        self.originals: dict[str, torch.Tensor] = {}
        self._reference: LocalityReference | None = None
        self._general: dict | None = None
        self._said_full = False  # the warning that the memory is nearly full is given once
        self.data_dir = data_dir

    # ----- the loop -------------------------------------------------------------------------
    def run(self, resume: bool = False, restore: bool = True, max_edits: int | None = None,
            progress: bool = True) -> dict:
        """Run the stream to the end (or until ``max_edits`` edits are done, for tests);
        returns the summary (``summary()``). ``restore`` puts the original weights back at the end."""
        cfg, adapter = self.config, self.lm.adapter
        start_run_directory(self.run_dir, "lifelong-run", resume=resume, option="--run-dir")
        latest = self.store.latest()
        self._reference = locality_reference(adapter, self.requests, cfg.eval_batch_size)  # unedited model
        try:
            if latest is not None:
                self._load(latest)
            if self.state.general_before is None and self._general_tasks():
                self.state.general_before = evaluate_general(adapter, self._general_tasks(), cfg.eval_batch_size)
            ckpt_every = cfg.ckpt_every or cfg.curve_every
            stop = cfg.num_seq if max_edits is None else min(cfg.num_seq, max_edits)
            bar = progress_bar(total=cfg.num_seq, initial=self.state.done, desc=f"lifelong {self.info['editor']}",
                               unit="edit", enabled=progress)
            while self.state.done < stop:
                start = self.state.done
                batch = self.requests[start:start + cfg.batch_size]
                self._edit(batch)
                self.state.done = start + len(batch)
                bar.update(len(batch))
                crossed = lambda every: self.state.done // every > start // every  # noqa: E731
                last = self.state.done == cfg.num_seq
                if crossed(cfg.curve_every) or last:
                    self._curve_point()
                if crossed(ckpt_every) or last or self.state.done == stop:
                    self._save()
            bar.close()
            return self.summary() if self.state.done == cfg.num_seq else {"done": self.state.done}
        finally:
            if restore:
                self.restore()

    def _edit(self, batch: list[EditRequest]) -> None:
        model = self.lm.model
        delta, seconds, peak_mb = peak_rss_during(self.editor.edit, self.lm, batch)
        delta.check_fits(model)
        modules = dict(model.named_modules())
        touched = 0
        with torch.no_grad():
            for name, shift in delta.shifts.items():
                if not bool(shift.abs().sum() > 0):
                    continue
                weight = modules[name].weight
                if name not in self.originals:
                    self.originals[name] = weight.detach().clone()
                    self.state.touched.append(name)
                weight.add_(shift.to(device=weight.device, dtype=weight.dtype))
                touched += 1
                self.state.module_edits[name] = self.state.module_edits.get(name, 0) + 1
        candidates = int(delta.meta.get("n_candidates") or len(delta.shifts))
        self.state.steps.append({"n": len(batch), "seconds": round(seconds, 4), "touched": touched,
                                 "candidates": candidates,
                                 "peak_rss_mb": None if peak_mb is None else round(float(peak_mb), 1)})

    def _general_tasks(self) -> dict:
        if self._general is None:
            from ..data import load_general_tasks

            cfg = self.config
            self._general = ({} if not cfg.general_per_task else
                             load_general_tasks(self.data_dir, tasks=cfg.general_tasks, per_task=cfg.general_per_task, seed=cfg.seed))
        return self._general

    def _evaluate(self, indices: list[int]) -> dict:
        requests = [self.requests[i] for i in indices]
        metrics, _ = evaluate(self.lm.adapter, requests, subset_reference(self._reference, indices),
                              self.config.eval_batch_size)
        return metrics

    def _curve_point(self) -> None:
        cfg, done = self.config, self.state.done
        n = min(cfg.curve_sample, done)
        earliest = list(range(min(n, cfg.num_pre or n)))
        point = {"edits": done, "recent": _short(self._evaluate(list(range(done - n, done)))),
                 "earliest": _short(self._evaluate(earliest))}
        if self._general_tasks():
            now = evaluate_general(self.lm.adapter, self._general_tasks(), cfg.eval_batch_size)
            point["general"] = now
            point["general_retention"] = retention(self.state.general_before, now)
        memory = self._memory_fill()
        if memory is not None:
            point["memory"] = memory
        self.state.curves.append(point)
        log.info("after %d edits: recent %s earliest %s%s", done, point["recent"], point["earliest"],
                 "" if memory is None else f" memory holds {memory['held_dims']} of {memory['null_dims']} "
                                           "null-space directions")

    def _memory_fill(self) -> dict | None:
        """How full the editor's null-space memory of earlier edits is (editors with one: AlphaEdit, and
        the hypernetwork editors with ``nullspace``), summed over its modules; None for editors without.
        A full memory leaves a new edit only directions in which it is cut back (docs/lifelong.md), so
        the stream says so once, when nine tenths are held."""
        per_module = self.editor.memory_fill(self.lm) if isinstance(self.editor, MemoryReport) else None
        if not per_module:
            return None
        held, null = (sum(m[k] for m in per_module.values()) for k in ("held_dims", "null_dims"))
        share = held / null if null else None
        if share is not None and share >= MEMORY_FULL and not self._said_full:
            self._said_full = True
            log.warning("after %d edits the editor's memory of earlier edits holds %d of the %d null-space "
                        "directions a new edit may write in (%.0f%%): later edits will be written weakly",
                        self.state.done, held, null, 100 * share)
        return {"held_dims": held, "null_dims": null, "held_share": share,
                "per_module": {name: m["held_dims"] for name, m in per_module.items()}}

    # ----- results ---------------------------------------------------------------------------
    def summary(self) -> dict:
        """Final metrics over all edits and the first ``num_pre``, curves, general ability, timing."""
        cfg = self.config
        all_metrics = self._evaluate(list(range(cfg.num_seq)))
        pre = self._evaluate(list(range(min(cfg.num_pre, cfg.num_seq)))) if cfg.num_pre else {}
        steps = self.state.steps
        seconds = sum(s["seconds"] for s in steps)
        fractions = [s["touched"] / s["candidates"] for s in steps if s["candidates"]]
        peaks = [s["peak_rss_mb"] for s in steps if s.get("peak_rss_mb") is not None]  # absent in checkpoints older than the field
        metrics = {**{k: v for k, v in all_metrics.items() if not isinstance(v, (dict, list))},
                   **{f"{k}_pre": pre.get(k) for k in ("ES", "GS", "LS")}}
        memory = self.state.curves[-1].get("memory") if self.state.curves else None
        if memory is not None:
            metrics["memory_held_share"] = memory["held_share"]
        general = {"before": self.state.general_before,
                   "after": self.state.curves[-1].get("general") if self.state.curves else None}
        if general["before"] and general["after"]:
            general["retention"] = retention(general["before"], general["after"])
        log.info("edit steps that changed each module (of %d): %s", len(steps),
                 ", ".join(f"{name} {n}" for name, n in sorted(self.state.module_edits.items())) or "none")
        return {"metrics": metrics, "curves": self.state.curves, "general": general, "edit_time_s": seconds,
                "time_per_edit_s": seconds / max(1, cfg.num_seq),
                "modules_fraction_mean": sum(fractions) / len(fractions) if fractions else None,
                "modules_touched_mean": sum(s["touched"] for s in steps) / max(1, len(steps)),
                "n_candidates": steps[0]["candidates"] if steps else None,
                "module_edits": dict(sorted(self.state.module_edits.items())),
                "peak_rss_mb": max(peaks) if peaks else None,
                "n_steps": len(steps), "num_seq": cfg.num_seq, "batch_size": cfg.batch_size, "num_pre": cfg.num_pre}

    def weights(self) -> dict[str, torch.Tensor]:
        """Current weights of every module the stream has touched (the stream's state)."""
        modules = dict(self.lm.model.named_modules())
        return {name: modules[name].weight.detach().clone() for name in self.state.touched}

    @torch.no_grad()
    def restore(self) -> None:
        """Put the original weights of every touched module back."""
        modules = dict(self.lm.model.named_modules())
        for name, original in self.originals.items():
            modules[name].weight.copy_(original)

    # ----- checkpoints -------------------------------------------------------------------------
    def _save(self) -> None:
        def write(folder: Path) -> None:
            save_file({k: v.contiguous().cpu() for k, v in self.weights().items()} or {"_empty": torch.zeros(1)},
                      str(folder / WEIGHTS_FILE))
            meta = None
            if isinstance(self.editor, SequentialState):
                tensors, meta = self.editor.stream_state()
                tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
                save_file(tensors or {"_empty": torch.zeros(1)}, str(folder / EDITOR_FILE))
            state = {**asdict(self.state), "info": self.info, "editor_state": meta,
                     "threads": torch.get_num_threads()}
            (folder / STATE_FILE).write_text(json.dumps(state, indent=1, sort_keys=True, default=str))

        self.store.save(self.state.done, write)

    def _load(self, folder: Path) -> None:
        data = json.loads((folder / STATE_FILE).read_text())
        mine = json.loads(json.dumps(self.info, default=str))
        check_same_settings(self.run_dir, data.get("info") or {}, mine, what="stream")
        if data.get("threads") != torch.get_num_threads():
            log.warning("resuming with %d threads, the stream used %s", torch.get_num_threads(), data.get("threads"))
        # fields added after a checkpoint was written keep their defaults (``module_edits``: from then on)
        self.state = StreamState(**{k: data[k] for k in asdict(StreamState()) if k in data})
        saved = load_file(str(folder / WEIGHTS_FILE))
        modules = dict(self.lm.model.named_modules())
        with torch.no_grad():
            for name in self.state.touched:
                weight = modules[name].weight
                self.originals[name] = weight.detach().clone()
                weight.copy_(saved[name].to(device=weight.device, dtype=weight.dtype))
        meta = data.get("editor_state")
        if meta is not None:
            tensors = {k: v for k, v in load_file(str(folder / EDITOR_FILE)).items() if k != "_empty"}
            if not isinstance(self.editor, SequentialState):
                raise HyperEditError(f"{folder}: the stream's editor kept a sequential state; "
                                     f"editor {self.info['editor']!r} keeps none")
            self.editor.load_stream_state(tensors, meta)
        log.info("resumed the stream after %d edits from %s", self.state.done, folder)
