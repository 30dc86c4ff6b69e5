"""Training curves of meta-trained hypernetwork editors, from their runs' ``metrics.jsonl``.

    python research/malmen_training_curve.py runs/malmen-smollm2 runs/mend-smollm2

Copies each run's metrics log to benchmarks/results/malmen_train_<editor><tag>.jsonl and its settings to
malmen_train_<editor><tag>.json, and draws malmen_training_curve.png: the training losses (moving average
over ``--window`` steps) and the validation ES/GS/LS of every run against the step.
"""
from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

RESULTS = Path(__file__).resolve().parents[1] / "benchmarks" / "results"


def _read(path: Path) -> list[dict]:
    records = []
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


def _moving_average(values: list[float], window: int) -> list[float]:
    out, total = [], 0.0
    for i, v in enumerate(values):
        total += v
        if i >= window:
            total -= values[i - window]
        out.append(total / min(i + 1, window))
    return out


def _calibrated_lr(records: list[dict], loc_coef: float) -> float | None:
    points = [r for r in records if r.get("split") == "calibration"]
    if not points:
        return None
    return min(points, key=lambda r: r["gen_loss"] + loc_coef * r["loc_loss"])["lr"]


def summarise(run: Path) -> dict:
    """Editor, settings, CPU time and validation history of one run (from its latest checkpoint)."""
    latest = (run / "LATEST").read_text().strip()
    trainer = json.loads((run / "checkpoints" / latest / "trainer.json").read_text())
    model = json.loads((run / "checkpoints" / latest / "editor.json").read_text())["model"]["name"]
    records = _read(run / "metrics.jsonl")
    train = [r for r in records if r.get("split") == "train"]
    return {"editor": trainer["editor"], "model": model, "run": str(run), "steps": trainer["step"],
            "train_config": trainer["train_config"], "editor_config": trainer["editor_config"],
            "sources": trainer.get("sources"), "n_train": trainer.get("n_train"), "n_val": trainer.get("n_val"),
            "init_from": trainer.get("init_from"),
            "cpu_seconds_train_steps": round(sum(r.get("cpu_seconds", 0) for r in train), 1),
            "wall_seconds_train_steps": round(sum(r.get("seconds", 0) for r in train), 1),
            "run_config": trainer.get("run_config"),
            "calibration": [{k: r[k] for k in ("lr", "gen_loss", "loc_loss")} for r in records
                            if r.get("split") == "calibration"],
            "calibrated_lr": _calibrated_lr(records, trainer["train_config"].get("loc_coef", 1.0)),
            "validation": [{k: r.get(k) for k in ("step", "ES", "GS", "LS", "LS_data")}
                           for r in records if r.get("split") == "val"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--window", type=int, default=10)
    parser.add_argument("--out", default="malmen_training_curve")
    parser.add_argument("--command", action="append", default=[], help="training command to list (repeatable)")
    parser.add_argument("--tag", default="", help="suffix of the copied logs: malmen_train_<editor><tag>.jsonl")
    args = parser.parse_args()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from hyperedit.bench import save_figure
    from hyperedit.atomic import atomic_write_text
    from hyperedit.outputs import claim

    summaries = []
    fig, axes = plt.subplots(2, 2, figsize=(12, 7.5))
    colors = {"ES": "tab:blue", "GS": "tab:orange", "LS": "tab:green"}
    for column, run in enumerate(args.runs[:2]):
        summary = summarise(run)
        summaries.append(summary)
        editor = summary["editor"]
        RESULTS.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(run / "metrics.jsonl", RESULTS / f"malmen_train_{editor}{args.tag}.jsonl")
        (RESULTS / f"malmen_train_{editor}{args.tag}.json").write_text(json.dumps(summary, indent=2) + "\n")
        records = _read(run / "metrics.jsonl")
        train = [r for r in records if r.get("split") == "train"]
        steps = [r["step"] for r in train]
        ax = axes[0][column]
        ax.plot(steps, _moving_average([r["gen_loss"] for r in train], args.window), label="generalisation CE")
        ax.plot(steps, _moving_average([r["loc_loss"] for r in train], args.window), label="locality KL")
        ax.set_title(f"{editor}: training losses (moving average, {args.window} steps)")
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        ax.legend()
        ax = axes[1][column]
        val = summary["validation"]
        for metric, color in colors.items():
            ax.plot([v["step"] for v in val], [v[metric] for v in val], marker="o", color=color, label=metric)
        ax.set_ylim(-0.02, 1.02)
        ax.set_title(f"{editor}: validation ({summary['n_val']} held-out training facts, edited at once)")
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        ax.legend()
    md_path = claim(RESULTS / f"{args.out}.md", "result", option="--out", overwrite=True)
    atomic_write_text(md_path, report(summaries, args.command, args.out, args.tag))
    save_figure(fig, RESULTS / f"{args.out}.png")


def best_validation(validation: list[dict]) -> dict | None:
    """The validation record with the highest mean of ES, GS and LS (the earliest on ties):
    validation facts are held-out *training* facts, so choosing by them never sees a test split."""
    scored = [v for v in validation if all(isinstance(v.get(k), float) for k in ("ES", "GS", "LS"))]
    return max(scored, key=lambda v: (v["ES"] + v["GS"] + v["LS"], -v["step"]), default=None)


def report(summaries: list[dict], commands: list[str], name: str, tag: str = "") -> str:
    """Markdown: per run the settings, CPU time, calibrated lr and validation history."""
    models = ", ".join(sorted({s["model"] for s in summaries}))
    lines = [f"# Meta-training of the hypernetwork editors ({models})", "",
             f"Curves: `{name}.png`; full logs: `malmen_train_<editor>{tag}.jsonl`; settings: "
             f"`malmen_train_<editor>{tag}.json`.",
             ""]
    for s in summaries:
        cfg, ecfg = s["train_config"], s["editor_config"]
        lines += [f"## {s['editor']}", "",
                  f"- data: {' + '.join(s['sources'] or [])}, {s['n_train']} training requests, {s['n_val']} held out "
                  "for validation (edited at once)",
                  f"- layers {ecfg['layers'][0]}-{ecfg['layers'][-1]} ({ecfg['module_kind']}), rank {ecfg['rank']}, "
                  f"{ecfg['n_blocks']} blocks; {s['steps']} steps of {cfg['n_edits']} facts, meta_lr {cfg['meta_lr']}, "
                  f"lr_meta_lr {cfg['lr_meta_lr']}, loc_coef {cfg['loc_coef']}, max_grad_norm {cfg['max_grad_norm']}",
                  (f"- calibrated initial edit lr: {s['calibrated_lr']:.3g}" if s["calibrated_lr"] is not None else
                   f"- started from the trained editor {s['init_from']} (no lr calibration)"),
                  f"- training steps: {s['cpu_seconds_train_steps'] / 60:.1f} CPU min "
                  f"({s['wall_seconds_train_steps'] / 60:.1f} wall min on the shared machine); validations and "
                  "calibration come on top", "",
                  "| step | ES | GS | LS | LS_data |", "|---|---|---|---|---|"]
        for v in s["validation"]:
            cells = ["-" if v.get(k) is None else f"{v[k]:.3f}" for k in ("ES", "GS", "LS", "LS_data")]
            lines.append(f"| {v['step']} | {' | '.join(cells)} |")
        best = best_validation(s["validation"])
        if best is not None:
            lines += ["", f"Best validation mean of ES, GS and LS (the checkpoint the benchmarks use): step "
                          f"{best['step']} ({(best['ES'] + best['GS'] + best['LS']) / 3:.3f})."]
        lines.append("")
    if commands:
        lines += ["Produced by:", ""] + [f"    {c}" for c in commands] + [""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
