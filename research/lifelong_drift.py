"""How far lifelong streams moved the weights, and how much of that move unrelated text sees.

    python research/lifelong_drift.py runs/ll_ft_zsre runs/ll_rledit_zsre ...

For each run directory, its latest checkpoint (the stream's current weights) is compared with the
unedited model, per touched module m:

- drift: ``||dW_m|| / ||W_m||``;
- interference: ``||K dW_m|| / ||K W_m||`` where K are the module's input activations (keys) on
  held-out text (prompts of the ``general/`` tasks, which no editor's statistics used), computed
  exactly from their second moment ``C = E[k k^T]`` as ``sqrt(tr(dW^T C dW) / tr(W^T C W))``.
  It is the relative change of the module's output on text the stream should leave alone; a
  shift confined to the null space of such keys has drift but no interference.

Writes ``benchmarks/results/lifelong_drift.{json,md}`` (``--out NAME``: ``NAME.{json,md}``): one record
per run, the run's own result
record (the schema fields of DEVELOPERS.md; ``command`` is the stream's) with ``drift`` added.
"""
from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

RESULTS = Path(__file__).resolve().parents[1] / "benchmarks" / "results"
HELD_OUT_PER_TASK = 50


def held_out_texts(data_dir=None) -> list[str]:
    """Prompts of every general task (a fixed sample), the held-out text of the interference."""
    from hyperedit.data.general import load_general_tasks

    tasks = load_general_tasks(data_dir, per_task=HELD_OUT_PER_TASK, seed=0)
    return [row["prompt"] for rows in tasks.values() for row in rows]


def module_drift(adapter, name: str, weight, moment) -> dict[str, float]:
    w0 = adapter.param_to_in_out(name, adapter.weight(name).detach().float())
    dw = adapter.param_to_in_out(name, weight.float()) - w0
    seen = float(((dw.t() @ moment) * dw.t()).sum()) / float(((w0.t() @ moment) * w0.t()).sum())
    return {"drift": float(dw.norm() / w0.norm()), "interference": math.sqrt(max(seen, 0.0))}


def main(argv=None) -> int:
    from safetensors.torch import load_file

    from hyperedit.atomic import atomic_write_text
    from hyperedit.bench.records import REQUIRED
    from hyperedit.models import load_model
    from hyperedit.stats import key_second_moments
    from hyperedit.eval.lifelong import finished_streams

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+")
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--out", default="lifelong_drift",
                   help="result name: writes benchmarks/results/OUT.{json,md} (default: lifelong_drift)")
    args = p.parse_args(argv)
    lm = load_model(args.model)
    runs = []
    for run, record, latest in finished_streams(args.runs):
        runs.append((run.name, record, load_file(str(latest / "weights.safetensors"))))
    modules = sorted({name for _, _, weights in runs for name in weights})
    moments = key_second_moments(lm, modules, corpus=held_out_texts(args.data_dir), n_samples=None)
    records, lines = [], ["| run | editor | data | edits | modules | mean drift | mean interference | max interference | ES / GS / LS |",
                          "|---|---|---|---|---|---|---|---|---|"]
    for run, record, weights in runs:
        per_module = {n: module_drift(lm.adapter, n, w, moments[n]) for n, w in weights.items()}
        drift = [v["drift"] for v in per_module.values()]
        seen = [v["interference"] for v in per_module.values()]
        record = {**{k: record[k] for k in REQUIRED if k in record}, "run": run, "drift": {
            "modules": len(per_module), "mean_rel_drift": sum(drift) / len(drift), "max_rel_drift": max(drift),
            "mean_rel_interference": sum(seen) / len(seen), "max_rel_interference": max(seen),
            "held_out_texts": f"general/* prompts, {HELD_OUT_PER_TASK} per task", "per_module": per_module}}
        records.append(record)
        d, m = record["drift"], record["metrics"]
        lines.append(f"| {run} | {record['editor']} | {record['dataset']} | {record['n_edits']} | {d['modules']} | "
                     f"{d['mean_rel_drift']:.3f} | {d['mean_rel_interference']:.3f} | {d['max_rel_interference']:.3f} | "
                     f"{m['ES']:.3f} / {m['GS']:.3f} / {m['LS']:.3f} |")
    command = "python research/lifelong_drift.py " + " ".join(args.runs) + (
        f" --out {args.out}" if args.out != "lifelong_drift" else "")
    RESULTS.mkdir(parents=True, exist_ok=True)
    atomic_write_text(RESULTS / f"{args.out}.json", json.dumps(records, indent=2) + "\n")
    atomic_write_text(RESULTS / f"{args.out}.md",
                      "# Weight drift and interference of the lifelong streams\n\n"
                      "drift = ||dW|| / ||W||; interference = ||K dW|| / ||K W|| over the keys K of held-out text "
                      f"(general-task prompts, {HELD_OUT_PER_TASK} per task); means over the touched modules.\n\n"
                      + "\n".join(lines) + f"\n\nProduced by:\n\n    {command}\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
