"""Lifelong results as files: the common result record, JSON + markdown, and PNG curves."""
from __future__ import annotations

from pathlib import Path

from ..bench.records import pyplot, save_figure
from ..outputs import claim


def lifelong_record(summary: dict, *, editor: str, model: str, dataset: str, split: str, command: str | None,
                    seed: int, config: dict | None = None) -> dict:
    """The result record (mode ``lifelong``) of one finished stream summary; ``peak_rss_mb`` is the
    largest process peak measured during one of the stream's edits."""
    from ..bench import make_record

    general = summary.get("general") or {}
    metrics = dict(summary["metrics"])
    retention = (general.get("retention") or {}).get("mean")
    metrics["general_retention"] = retention
    if general.get("before"):
        metrics["general_acc_before"] = general["before"]["mean"]["acc"]
        metrics["general_acc_after"] = (general.get("after") or {}).get("mean", {}).get("acc")
    metrics["modules_fraction"] = summary.get("modules_fraction_mean")
    metrics["time_per_edit_s"] = summary.get("time_per_edit_s")
    extra = {k: v for k, v in summary.items() if k not in ("metrics", "edit_time_s", "peak_rss_mb")}
    return make_record(editor=editor, model=model, dataset=dataset, split=split, mode="lifelong",
                       n_edits=summary["num_seq"], metrics=metrics, edit_time_s=summary["edit_time_s"],
                       peak_rss_mb=summary.get("peak_rss_mb"), command=command, seed=seed, editor_config=config or {}, **extra)


def plot_curves(records: list[dict], path: str | Path) -> Path:
    """One PNG: recent-edit ES, earliest-edit ES, locality and general accuracy along the stream,
    one row of panels per dataset, with a legend per row beside it."""
    plt = pyplot()
    panels = [("recent edits ES", lambda p: p["recent"]["ES"]), ("earliest edits ES", lambda p: p["earliest"]["ES"]),
              ("locality LS (recent)", lambda p: p["recent"]["LS"]),
              ("general acc (mean)", lambda p: (p.get("general") or {}).get("mean", {}).get("acc"))]
    datasets = sorted({str(r.get("dataset")) for r in records}) or ["-"]
    fig, grid = plt.subplots(len(datasets), len(panels), figsize=(4 * len(panels) + 3, 3.2 * len(datasets)),
                             squeeze=False)
    colours = plt.get_cmap("tab20").colors
    for axes, dataset in zip(grid, datasets):
        rows = [r for r in records if str(r.get("dataset")) == dataset]
        for ax, (title, get) in zip(axes, panels):
            for i, r in enumerate(rows):
                points = [(p["edits"], get(p)) for p in r.get("curves") or [] if get(p) is not None]
                if points:
                    ax.plot(*zip(*points), marker="o", ms=3, color=colours[i % len(colours)],
                            linestyle=("-", "--", ":")[i // len(colours) % 3],
                            label=r.get("run") or f"{r['editor']} ({r['dataset']})")
            ax.set_title(f"{dataset}: {title}" if len(datasets) > 1 else title, fontsize=9)
            ax.set_xlabel("edits")
            ax.set_ylim(-0.02, 1.02)
        if axes[0].get_legend_handles_labels()[0]:
            axes[-1].legend(*axes[0].get_legend_handles_labels(), fontsize=7, loc="upper left",
                            bbox_to_anchor=(1.02, 1.0))
    return save_figure(fig, path)


def write_lifelong(records: list[dict], name: str, results_dir: str | Path, notes: str = "") -> list[Path]:
    """``NAME.json`` + ``NAME.md`` (common records) and ``NAME.png`` (curves); without matplotlib
    it fails before writing anything."""
    from ..bench import write_results

    pyplot()
    out = Path(results_dir)
    claim(out / f"{name}.png", "result", option="results", overwrite=True)
    paths = list(write_results(records, name, out, title=f"Lifelong editing: {name}", notes=notes))
    png = plot_curves(records, out / f"{name}.png")
    return paths + [png]
