"""The leverage benchmark's records as curves: what each solve gives a fact back (``self``) against
how far it reaches locality prompts (``loc_reach_ans``), one curve per dataset, ridge and per-module or
joint solve, traced by ``--ridge-scales``. Higher at equal reach is more room for the same locality.

    python research/malmen_leverage_curves.py malmen_leverage_covariance_cf malmen_leverage_covariance_cf_wide \
        malmen_leverage_covariance_zsre malmen_leverage_covariance_zsre_wide --out malmen_leverage_curves

Reads committed records of ``malmen_leverage.py`` (nothing is re-run; those that left the tree from
git history, ``committed_results.py``) and writes
benchmarks/results/<out>.json/.md/.png.
"""
from __future__ import annotations

import argparse
import sys
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from committed_results import RESULTS, read_records  # noqa: E402



def curves(records: list[dict]) -> dict[tuple, list[tuple[float, float]]]:
    """``{(dataset, n_edits, curve name): [(loc_reach_ans, self), ...]}`` sorted by reach."""
    out = defaultdict(list)
    for r in records:
        joint = "joint" if r["layers"].endswith("joint") else "per module"
        key = (r["dataset"], r["n_edits"], f"{r.get('ridge', 'identity')} ridge, {joint}")
        out[key].append((r["metrics"]["loc_reach_ans"], r["metrics"]["self"]))
    return {k: sorted(v) for k, v in out.items()}


def plot(lines: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from hyperedit.bench import save_figure

    panels = sorted({k[:2] for k in lines})
    fig, axes = plt.subplots(1, len(panels), figsize=(6.5 * len(panels), 5.5), squeeze=False)
    for ax, (dataset, n) in zip(axes[0], panels):
        for (d, m, name), points in sorted(lines.items()):
            if (d, m) == (dataset, n):
                ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=name)
        ax.set_xlabel("reach into locality prompts (loc_reach_ans)")
        ax.set_ylabel("share of its own value a fact gets back (self)")
        ax.set_title(f"{dataset}, {n} facts at once: the solve's room")
        ax.grid(alpha=0.3)
        ax.legend(loc="lower right")
    save_figure(fig, path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("results", nargs="+", help="names of malmen_leverage.py result files (without .json)")
    parser.add_argument("--out", default="malmen_leverage_curves")
    args = parser.parse_args()
    from hyperedit.bench import write_results

    records = [r for name in args.results for r in read_records(name)]
    records.sort(key=lambda r: (r["dataset"], r["editor"], r["metrics"]["loc_reach_ans"]))
    write_results(records, args.out, RESULTS, title="Room of MALMEN's least-squares solve against its reach", notes=(
        "Committed records of malmen_leverage.py, not re-run (each names its command); see that script's "
        "docstring for the measures. The plot (`.png`) draws self against loc_reach_ans per ridge and solve."))
    plot(curves(records), RESULTS / f"{args.out}.png")


if __name__ == "__main__":
    main()
