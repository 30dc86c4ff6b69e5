"""Merge the per-run lifelong results into one table + plot.

    python benchmarks/lifelong_summary.py            # reads benchmarks/results/lifelong_*.json
    python benchmarks/lifelong_summary.py --partial runs/ll_x   # + unfinished streams (curves only)
    python benchmarks/lifelong_summary.py --prefix lifelong1000_   # lifelong1000_*.json only
    python benchmarks/lifelong_summary.py --prefix lifelong1000_ --also lifelong_ll22_hiedit_shipped_zsre_1000

Writes ``benchmarks/results/<prefix>summary.{json,md,png}``: one row per result file (``run``: its name
without the prefix; ``--also`` adds named result files) with final ES/GS/LS over all edits, their mean,
and over the first ``num_pre``, general-ability accuracy before / after and its retention, time per edit,
peak RSS, the modules perturbed per edit and their fraction of the candidates.
"""
from __future__ import annotations

import json
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
COLUMNS = ["ES", "GS", "LS", "mean", "ES_pre", "GS_pre", "LS_pre", "general_acc_before", "general_acc_after",
           "general_retention", "time_per_edit_s", "peak_rss_mb", "modules_touched", "modules_fraction"]


def _row_values(r: dict) -> dict:
    """The table's values of one stream record: its metrics plus the derived columns."""
    m = r["metrics"]
    mean = (m["ES"] + m["GS"] + m["LS"]) / 3 if all(m.get(k) is not None for k in ("ES", "GS", "LS")) else None
    return {**m, "mean": mean, "peak_rss_mb": r.get("peak_rss_mb"), "modules_touched": r.get("modules_touched_mean")}


def _fmt(v) -> str:
    return "-" if v is None else f"{v:.3f}" if isinstance(v, float) else str(v)


def partial_rows(run_dirs: list[str]) -> list[str]:
    """Markdown lines for streams that have not finished: their last checkpoint's curve points."""
    from hyperedit.checkpoints import CheckpointStore

    lines = []
    for run in run_dirs:
        latest = CheckpointStore(run).latest()
        if latest is None:
            lines.append(f"- `{run}`: no checkpoint yet")
            continue
        state = json.loads((latest / "stream.json").read_text())
        steps = state["steps"]
        per_edit = sum(x["seconds"] for x in steps) / max(1, sum(x["n"] for x in steps))
        frac = sum(x["touched"] / x["candidates"] for x in steps) / max(1, len(steps))
        lines.append(f"- `{run}` ({state['info']['editor']}, {state['info']['data']}): stopped after "
                     f"{state['done']} of {state['info']['config']['num_seq']} edits; time/edit {per_edit:.2f}s; "
                     f"modules fraction {frac:.2f}; general acc before {state['general_before']['mean']['acc']:.3f}")
        for c in state["curves"]:
            general = (c.get("general") or {}).get("mean", {}).get("acc")
            lines.append(f"  - {c['edits']} edits: recent ES/GS/LS {_fmt(c['recent']['ES'])}/{_fmt(c['recent']['GS'])}/"
                         f"{_fmt(c['recent']['LS'])}, earliest {_fmt(c['earliest']['ES'])}/{_fmt(c['earliest']['GS'])}/"
                         f"{_fmt(c['earliest']['LS'])}, general acc {_fmt(general)}")
    return lines


def main(argv=None) -> int:
    import argparse

    from hyperedit.atomic import atomic_write_text
    from hyperedit.eval.lifelong_report import plot_curves
    from hyperedit.checkpoints import CheckpointStore

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--partial", nargs="*", default=[], help="run directories of unfinished streams")
    parser.add_argument("--prefix", default="lifelong_", help="result files read: <prefix>*.json")
    parser.add_argument("--also", nargs="*", default=[], help="further result files (names without .json)")
    args = parser.parse_args(argv)
    summary = args.prefix + "summary"
    records = []
    also = [RESULTS / f"{name}.json" for name in args.also]
    for path in also:
        if not path.is_file():
            parser.error(f"--also: no result file {path.name} in benchmarks/results")
    for path in [*sorted(RESULTS.glob(args.prefix + "*.json")), *also]:
        if path.stem == summary:
            continue
        records.extend({**r, "run": path.stem.removeprefix(args.prefix)} for r in json.loads(path.read_text())
                       if "curves" in r)  # a stream's own result, not a measurement made on finished streams
    if not records and not args.partial:
        raise SystemExit("no lifelong results yet")
    head = ["run", "editor", "model", "dataset", "stream", *COLUMNS]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in records:
        label = r["editor"] + (f"({r['editor_config'].get('low')})" if r["editor_config"].get("low") else "")
        stream = f"{r['num_seq'] // r['batch_size']}x{r['batch_size']}"
        values = _row_values(r)
        lines.append("| " + " | ".join([r["run"], label, r["model"], r["dataset"], stream,
                                        *(_fmt(values.get(c)) for c in COLUMNS)]) + " |")
    commands = "\n".join(f"    {r['command']}" for r in records)
    md = (f"# Lifelong editing: {summary}\n\n" + "\n".join(lines) +
          "\n\nES/GS/LS: teacher-forced token accuracy over all edits of the stream after the whole stream; "
          "*_pre: over the first num_pre edits. LS against the unedited model's own predictions. "
          "mean: of ES, GS, LS. general_*: mean zero-shot accuracy on the sampled general tasks before the stream / after it; "
          "retention = after / before (mean over tasks). modules_touched / modules_fraction: perturbed modules "
          "per edit and their fraction of the candidates. peak_rss_mb: of the whole process.\n\nCommands:\n\n" + commands + "\n")
    if args.partial:
        md += "\n## Unfinished streams (no final metrics; resume with the same command + --resume)\n\n"
        md += "\n".join(partial_rows(args.partial)) + "\n"
    atomic_write_text(RESULTS / f"{summary}.md", md)
    atomic_write_text(RESULTS / f"{summary}.json", json.dumps(records, indent=2) + "\n")
    plotted = list(records)
    for run in args.partial:  # unfinished streams: their curve points so far
        latest = CheckpointStore(run).latest()
        if latest is not None:
            state = json.loads((latest / "stream.json").read_text())
            plotted.append({"editor": state["info"]["editor"] + " (partial)",
                            "dataset": state["info"]["data"].split(":")[0], "curves": state["curves"]})
    plot_curves(plotted, RESULTS / f"{summary}.png")
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
