"""Training curves of meta-trained hypernetwork editors, from their runs' ``metrics.jsonl``.

    python benchmarks/malmen_training_curve.py runs/malmen-smollm2 runs/mend-smollm2

Copies each run's metrics log to benchmarks/results/malmen_train_<editor>.jsonl and its settings to
malmen_train_<editor>.json, and draws malmen_training_curve.png: the training losses (moving average
over ``--window`` steps) and the validation ES/GS/LS of every run against the step.
"""
from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

RESULTS = Path("benchmarks") / "results"


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


def summarise(run: Path) -> dict:
    """Editor, settings, CPU time and validation history of one run (from its latest checkpoint)."""
    latest = (run / "LATEST").read_text().strip()
    trainer = json.loads((run / "checkpoints" / latest / "trainer.json").read_text())
    records = _read(run / "metrics.jsonl")
    train = [r for r in records if r.get("split") == "train"]
    return {"editor": trainer["editor"], "run": str(run), "steps": trainer["step"],
            "train_config": trainer["train_config"], "editor_config": trainer["editor_config"],
            "sources": trainer.get("sources"), "n_train": trainer.get("n_train"), "n_val": trainer.get("n_val"),
            "cpu_seconds_train_steps": round(sum(r.get("cpu_seconds", 0) for r in train), 1),
            "wall_seconds_train_steps": round(sum(r.get("seconds", 0) for r in train), 1),
            "calibrated_lr": next((r["lr"] for r in train[:1]), None),
            "validation": [{k: r.get(k) for k in ("step", "ES", "GS", "LS", "LS_data")}
                           for r in records if r.get("split") == "val"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--window", type=int, default=10)
    parser.add_argument("--out", default="malmen_training_curve")
    args = parser.parse_args()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(12, 7.5))
    colors = {"ES": "tab:blue", "GS": "tab:orange", "LS": "tab:green"}
    for column, run in enumerate(args.runs[:2]):
        summary = summarise(run)
        editor = summary["editor"]
        RESULTS.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(run / "metrics.jsonl", RESULTS / f"malmen_train_{editor}.jsonl")
        (RESULTS / f"malmen_train_{editor}.json").write_text(json.dumps(summary, indent=2) + "\n")
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
    fig.tight_layout()
    fig.savefig(RESULTS / f"{args.out}.png", dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
