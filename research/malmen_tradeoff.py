"""Every measured MALMEN lever at 1,024 facts on one efficacy/locality map (not re-run).

Collects the batch records at 1,024 facts (MEMIT / MetaKE(MEMIT): 1,000 on CounterFact, 500 on
zsRE, the sizes measured) from the committed result files named in ``POINTS`` (those that left
the tree are read from git history: ``committed_results.py``), and draws ES against
LS per split with the issue's target region shaded. Each record keeps the command that produced it
and names its file in ``source``.

    python research/malmen_tradeoff.py --out malmen_tradeoff
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from committed_results import RESULTS, read_records  # noqa: E402
from malmen_scaling import SUMMARY_FIELDS  # noqa: E402

# (label, result file, editor, extra record fields that must match)
POINTS = [
    ("shipped", "malmen_scaling_step60", "malmen", {}),
    ("shift_scale 0.6", "malmen_scaling_scale0.6", "malmen", {}),
    ("rounds 2", "malmen_scaling_rounds2", "malmen", {}),
    ("rounds 3", "malmen_scaling_rounds3", "malmen", {}),
    ("contrast 1", "malmen_scaling_contrast1", "malmen", {}),
    ("contrast 2", "malmen_scaling_contrast2", "malmen", {}),
    ("contrast 1, weight 3", "malmen_scaling_contrast1_w3", "malmen", {}),
    ("contrast 2, weight 3, rounds 3", "malmen_scaling_contrast2_rounds3_w3", "malmen", {}),
    ("null space 0.1", "malmen_scaling_ns0.1", "malmen", {}),
    ("null space 0.1, rounds 3", "malmen_scaling_ns0.1_rounds3", "malmen", {}),
    ("covariance ridge (40 steps)", "malmen_scaling_covariance_step40", "malmen", {}),
    ("6,000 training facts", "malmen_scaling_6k", "malmen", {}),
    ("layers 18-29", "malmen_capacity_layers18_29", "malmen", {}),
    ("trained with contrast rows", "malmen_scaling_c1_trained", "malmen", {}),
    ("rows: 2 random pool prompts", "malmen_keep_rows", "malmen", {"rows": "random"}),
    ("rows: 2 same-answer prompts", "malmen_keep_rows", "malmen", {"rows": "same", "rows_per_request": 2}),
    ("rows: 8 same-answer prompts", "malmen_keep_rows", "malmen", {"rows": "same", "rows_per_request": 8}),
    ("rows: own tested neighbour (oracle)", "malmen_keep_rows", "malmen", {"rows": "neighbour"}),
    ("partition", "malmen_scaling_partition", "malmen", {}),
    ("partition, shift_scale 3", "malmen_scaling_partition_s3", "malmen", {}),
    ("joint", "malmen_scaling_joint", "malmen", {}),
    ("joint, shift_scale 0.8", "malmen_scaling_joint_s0.8", "malmen", {}),
    ("joint, shift_scale 0.6", "malmen_scaling_joint_s0.6", "malmen", {}),
    ("joint, shift_scale 0.5", "malmen_scaling_joint_s0.5", "malmen", {}),
    ("joint, shift_scale 0.4", "malmen_scaling_joint_s0.4", "malmen", {}),
    ("joint, trained through it", "malmen_scaling_joint_trained_s1.0", "malmen", {}),
    ("joint, trained through it, shift_scale 0.8", "malmen_scaling_joint_trained_s0.8", "malmen", {}),
    ("joint, contrast 1, shift_scale 0.8", "malmen_scaling_joint_c1_s0.8", "malmen", {}),
    ("joint, ridge x0.1, shift_scale 0.5", "malmen_scaling_joint_ridge0.1_s0.5", "malmen", {}),
    ("joint, ridge x0.1, shift_scale 0.35", "malmen_scaling_joint_ridge0.1_s0.35", "malmen", {}),
    ("joint, trained through it on 6,000 facts", "malmen_scaling_6k_joint_s1.0", "malmen", {}),
    ("joint, trained through it on 6,000 facts, shift_scale 0.8", "malmen_scaling_6k_joint_s0.8", "malmen", {}),
    ("joint, trained through it on 6,000 facts, shift_scale 0.6", "malmen_scaling_6k_joint_s0.6", "malmen", {}),
    ("MEMIT", "locate_cf_val_1000", "memit", {}),
    ("MetaKE(MEMIT)", "locate_cf_val_1000", "metake-memit", {}),
    ("MEMIT", "locate_zsre_knowedit_500", "memit", {}),
    ("MetaKE(MEMIT)", "locate_zsre_knowedit_500", "metake-memit", {}),
]
SIZES = (500, 1000, 1024)
# ES and LS corners of the targets at 1,024 facts (zsRE also asks GS >= .65)
TARGETS = {"counterfact": (0.85, 0.70), "zsre": (0.85, 0.65)}


def collect() -> list[dict]:
    rows = []
    for label, name, editor, match in POINTS:
        for r in read_records(name):
            if (r["editor"] == editor and r["mode"] == "batch" and r["n_edits"] in SIZES
                    and all(r.get(k) == v for k, v in match.items())):
                rows.append({k: r[k] for k in SUMMARY_FIELDS if k in r} | {"label": label, "source": f"{name}.json"})
    return rows


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from hyperedit.bench import save_figure

    datasets = sorted({r["dataset"] for r in rows})
    fig, axes = plt.subplots(1, len(datasets), figsize=(7.5 * len(datasets), 6.5), squeeze=False)
    for ax, dataset in zip(axes[0], datasets):
        es_min, ls_min = TARGETS.get(dataset, (1.0, 1.0))
        ax.add_patch(plt.Rectangle((ls_min, es_min), 1 - ls_min, 1 - es_min, color="tab:green", alpha=0.15,
                                   label="target region"))
        for r in (r for r in rows if r["dataset"] == dataset):
            ours = r["editor"] == "malmen"
            color = ("tab:purple" if r["label"].startswith("joint") else "tab:blue") if ours else "tab:red"
            ax.scatter(r["metrics"]["LS"], r["metrics"]["ES"], marker="o" if ours else "s", color=color, s=30)
            ax.annotate(r["label"], (r["metrics"]["LS"], r["metrics"]["ES"]), fontsize=7,
                        xytext=(3, 3), textcoords="offset points")
        ax.set_xlim(0.2, 1.0)
        ax.set_ylim(0.0, 1.0)
        ax.set_xlabel("LS (locality)")
        ax.set_ylabel("ES (efficacy)")
        ax.set_title(f"{dataset}: MALMEN at 1,024 facts (blue; joint solve purple), locate-then-edit (red)")
        ax.grid(alpha=0.3)
        ax.legend(loc="lower left")
    save_figure(fig, path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="malmen_tradeoff")
    args = parser.parse_args()
    from hyperedit.bench import write_results

    rows = sorted(collect(), key=lambda r: (r["dataset"], r["editor"] != "malmen", -r["metrics"]["LS"]))
    write_results(rows, args.out, RESULTS, title="MALMEN's levers at 1,024 facts on one efficacy/locality map", notes=(
        "Committed batch records, not re-run (`source`: the result file, `command`: what produced it). "
        "MALMEN edits 1,024 facts, metrics on the first 256; MEMIT / MetaKE(MEMIT) edit 1,000 (CounterFact) "
        "and 500 (zsRE) and score every request. The plot (`.png`) shows ES against LS with the issue's "
        "target region shaded."), columns=("label",))
    plot(rows, RESULTS / f"{args.out}.png")


if __name__ == "__main__":
    main()
