"""Merge the per-run lifelong results into one table + plot.

    python benchmarks/lifelong_summary.py            # reads benchmarks/results/lifelong_*.json

Writes ``benchmarks/results/lifelong_summary.{json,md,png}``: one row per (editor, dataset) with
final ES/GS/LS over all edits and over the first ``num_pre``, general-ability accuracy before /
after and its retention, time per edit and the fraction of candidate modules perturbed per edit.
"""
from __future__ import annotations

import json
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
COLUMNS = ["ES", "GS", "LS", "ES_pre", "GS_pre", "LS_pre", "general_acc_before", "general_acc_after",
           "general_retention", "time_per_edit_s", "modules_fraction"]


def _fmt(v) -> str:
    return "-" if v is None else f"{v:.3f}" if isinstance(v, float) else str(v)


def main() -> int:
    from hyperedit.eval.lifelong_report import plot_curves

    records = []
    for path in sorted(RESULTS.glob("lifelong_*.json")):
        if path.stem == "lifelong_summary":
            continue
        records.extend(json.loads(path.read_text()))
    if not records:
        raise SystemExit("no lifelong results yet")
    head = ["editor", "label", "dataset", "stream", *COLUMNS]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in records:
        label = r["editor"] + (f"({r['editor_config'].get('low')})" if r["editor_config"].get("low") else "")
        stream = f"{r['num_seq']}x{r['batch_size']}"
        lines.append("| " + " | ".join([r["editor"], label, r["dataset"], stream,
                                        *(_fmt(r["metrics"].get(c)) for c in COLUMNS)]) + " |")
    commands = "\n".join(f"    {r['command']}" for r in records)
    md = ("# Lifelong editing on SmolLM2-135M (summary)\n\n" + "\n".join(lines) +
          "\n\nES/GS/LS: teacher-forced token accuracy over all edits of the stream after the whole stream; "
          "*_pre: over the first num_pre edits. LS against the unedited model's own predictions. "
          "general_*: mean zero-shot accuracy on the sampled general tasks before the stream / after it; "
          "retention = after / before (mean over tasks). modules_fraction: perturbed / candidate modules "
          "per edit.\n\nCommands:\n\n" + commands + "\n")
    (RESULTS / "lifelong_summary.md").write_text(md)
    (RESULTS / "lifelong_summary.json").write_text(json.dumps(records, indent=2) + "\n")
    plot_curves(records, RESULTS / "lifelong_summary.png")
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
