"""Run a protocol's editors x models grid: one result file per experiment, done ones skipped.

An experiment is (protocol, editor label, model); its records go to
``<results dir>/<protocol>__<label>__<model>.json`` (and ``.md``), written once it finished, so an
interrupted run resumes where it stopped and a finished experiment is never measured twice
(delete its file to measure it again).
"""
from __future__ import annotations

import json
import logging
import re
from pathlib import Path

from ..bench.records import current_command, write_results
from .protocols import EditorSpec, Protocol

log = logging.getLogger(__name__)

# relative to the working directory: the repository root, where the protocol files live
LEADERBOARD_DIR = Path("benchmarks") / "results" / "leaderboard"
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def model_slug(model: str) -> str:
    """A file-name form of a model name or directory (its last part)."""
    return _UNSAFE.sub("-", Path(model).name or model).strip("-") or "model"


def experiment_name(protocol: Protocol, editor: EditorSpec, model: str) -> str:
    return f"{protocol.name}__{editor.label}__{model_slug(model)}"


def is_done(path: Path, protocol: Protocol) -> bool:
    """A result file of this protocol is there and readable."""
    try:
        records = json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    return isinstance(records, list) and any(isinstance(r, dict) and r.get("protocol") == protocol.name
                                             for r in records)


def _measure(protocol: Protocol, spec: EditorSpec, lm, command: str) -> dict:
    from ..data import load_requests
    from ..data.load import load_mquake_cases
    from ..editors import get_editor
    from ..editors.presets import preset_options
    from ..eval import run_batch, run_sequential, run_single
    from ..eval.multihop import run_mquake

    editor = get_editor(spec.editor, checkpoint=spec.checkpoint, lm=lm,
                        **preset_options(spec.editor, lm.name, spec.options), **spec.options)
    dataset, _, split = protocol.data.partition(":")
    common = dict(command=command, seed=protocol.seed, eval_batch_size=protocol.eval_batch_size,
                  generated=protocol.generated)
    if protocol.mode == "mquake":
        cases = load_mquake_cases(protocol.data, limit=protocol.n, offset=protocol.offset)
        return run_mquake(lm, editor, cases, cases_per_edit=protocol.batch, dataset=dataset, split=split or "file",
                          **common)
    requests = load_requests(protocol.data, limit=protocol.n, offset=protocol.offset)
    common.update(dataset=dataset, split=split or "file")
    if protocol.mode == "batch":
        return run_batch(lm, editor, requests, **common)
    if protocol.mode == "single":
        return run_single(lm, editor, requests, **common)
    batches = [requests[i:i + protocol.batch] for i in range(0, len(requests), protocol.batch)]
    return run_sequential(lm, editor, batches, **common)


def run_protocol(protocol: Protocol, results_dir: str | Path | None = None, editors: set[str] | None = None,
                 models: set[str] | None = None, dry_run: bool = False) -> list[tuple[str, str]]:
    """Measure every experiment of ``protocol`` not yet done; ``editors`` / ``models`` keep only
    those labels / models. Returns ``(experiment, status)`` for each: done, ran, or would run."""
    from ..models import load_model

    out = Path(results_dir) if results_dir is not None else LEADERBOARD_DIR
    command = current_command()
    statuses = []
    for model in protocol.models:
        if models and model not in models:
            continue
        todo = [s for s in protocol.editors if not editors or s.label in editors]
        pending = [s for s in todo if not is_done(out / f"{experiment_name(protocol, s, model)}.json", protocol)]
        statuses += [(experiment_name(protocol, s, model), "done") for s in todo if s not in pending]
        if dry_run or not pending:
            statuses += [(experiment_name(protocol, s, model), "would run") for s in pending if dry_run]
            continue
        lm = load_model(model)
        for spec in pending:
            name = experiment_name(protocol, spec, model)
            log.info("%s: measuring", name)
            _seed(protocol.seed)
            record = _measure(protocol, spec, lm, command)
            record.update(protocol=protocol.name, protocol_title=protocol.title, editor_label=spec.label,
                          protocol_file=protocol.source)
            write_results([record], name, out, title=f"{protocol.title}: {spec.label} on {model}")
            statuses.append((name, "ran"))
    return statuses


def _seed(seed: int) -> None:
    import random

    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
