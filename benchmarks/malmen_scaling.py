"""ES/GS/LS, edit time and memory of MALMEN, MEND and ft against the number of facts edited at once.

For each dataset the first N requests (N = 16, 64, 256, 1024; ``all`` = the whole split) are edited
in one batch; metrics are
measured on the first ``--eval-subset`` of the edited requests (all of them when N is smaller),
so every N is scored on the same facts while more edits are applied around them. The locality
reference (the unedited model's predictions) is taken once per dataset. Requests are evaluated
without their ``old_target`` (CounterFact probability scores are skipped: it halves the cost).

    python benchmarks/malmen_scaling.py --malmen runs/malmen-smollm2 --mend runs/mend-smollm2

Writes benchmarks/results/<out>.json/.md (one record per editor x dataset x N) and <out>.png.
Finished records are kept: a rerun skips them (delete the JSON to start over).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import time
from pathlib import Path

RESULTS_DIR = Path(__file__).resolve().parents[1] / "benchmarks" / "results"

log = logging.getLogger("malmen_scaling")
RESULTS = RESULTS_DIR


def _rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return float(line.split()[1]) / 1024.0
    return float("nan")


def _slice_reference(reference, n: int):
    from hyperedit.eval import LocalityReference

    keep = [i for i, pair in enumerate(reference.pairs) if pair[0] < n]
    return LocalityReference([reference.pairs[i] for i in keep], [reference.predicted[i] for i in keep])


def parse_sizes(text: str) -> list[int | None]:
    """``16,64,all`` -> [16, 64, None] (None: every request of the split)."""
    try:
        return [None if s.strip() == "all" else int(s) for s in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers or 'all', got {text!r}") from None


def sizes_for(sizes: list[int | None], available: int) -> list[int]:
    """The batch sizes to run on a split of ``available`` requests: 'all' and sizes above it become
    ``available``, each size once, ascending."""
    return sorted({available if n is None else min(n, available) for n in sizes})


def existing_records(out: str) -> list[dict]:
    """The records an earlier run wrote to ``<out>.json`` (a rerun skips them)."""
    path = RESULTS / f"{out}.json"
    return json.loads(path.read_text()) if path.is_file() else []


def start_run(args, key: str):
    """``(lm, records, done, command)``: the model loaded on ``args.threads`` threads, the records of
    an earlier run of ``args.out`` and their ``(record[key], dataset, split, n_edits)``, which a rerun skips."""
    import torch

    from hyperedit.bench import current_command
    from hyperedit.models import load_model

    torch.set_num_threads(args.threads)
    records = existing_records(args.out)
    done = {(r[key], r["dataset"], r["split"], r["n_edits"]) for r in records}
    return load_model(args.model), records, done, current_command()


def scored_split(spec: str, limit: int | None, eval_subset: int):
    """``(dataset, split, requests, scored)``: the first ``limit`` requests of ``spec`` and the first
    ``eval_subset`` of them without their ``old_target`` (the probability scores are skipped)."""
    from hyperedit.commands._common import dataset_label
    from hyperedit.data import load_requests

    dataset, split = dataset_label(spec)
    requests = load_requests(spec, limit=limit)
    return dataset, split, requests, [dataclasses.replace(r, old_target=None) for r in requests[:eval_subset]]


def edit_and_score(lm, editor, requests: list, scored: list, reference, eval_batch_size: int) -> tuple[dict, dict]:
    """Edit ``requests`` at once and score the first ``len(requests)`` of ``scored`` (the dataset's
    scored prefix, ``reference`` its locality reference) with the edit applied; the model is
    restored after. Returns the metrics and the record's cost fields."""
    from hyperedit.bench import peak_rss_during
    from hyperedit.eval import evaluate

    n = len(requests)
    rss_before = _rss_mb()
    cpu = time.process_time()
    delta, seconds, peak = peak_rss_during(editor.edit, lm, requests)
    cpu = time.process_time() - cpu
    evaluated = scored[:n]
    with delta.applied(lm.model):
        metrics, _ = evaluate(lm.adapter, evaluated, _slice_reference(reference, n), eval_batch_size)
    return metrics, {"edit_time_s": seconds, "peak_rss_mb": peak, "edit_cpu_s": round(cpu, 3),
                     "n_evaluated": len(evaluated), "rss_before_mb": round(rss_before, 1),
                     "peak_rss_increase_mb": round(peak - rss_before, 1), "delta_norm": sum(delta.norms().values())}


def _editor(name: str, args, lm, n: int):
    from hyperedit.editors import get_editor

    if name in ("malmen", "mend"):
        from hyperedit.commands._common import parse_overrides

        return get_editor(name, checkpoint=getattr(args, name), lm=lm, **parse_overrides(args)), {}
    steps = args.ft_steps if n <= args.ft_full_max else args.ft_steps_large
    return get_editor("ft", steps=steps), {"ft_steps": steps}


def run(args) -> list[dict]:
    from hyperedit.bench import make_record, write_results
    from hyperedit.eval import locality_reference

    lm, records, done, command = start_run(args, "editor")
    sizes = args.sizes
    for spec in args.datasets.split(","):
        dataset, split, requests, eval_all = scored_split(spec, None if None in sizes else max(sizes), args.eval_subset)
        reference = None
        for n in sizes_for(sizes, len(requests)):
            for name in args.editors.split(","):
                if (name, dataset, split, n) in done or (name == "ft" and n > args.ft_max):
                    continue
                if reference is None:
                    reference = locality_reference(lm.adapter, eval_all, args.eval_batch_size)
                editor, extra = _editor(name, args, lm, n)
                metrics, cost = edit_and_score(lm, editor, requests[:n], eval_all, reference, args.eval_batch_size)
                record = make_record(editor=name, model=lm.name, dataset=dataset, split=split, mode="batch",
                                     n_edits=n, metrics=metrics, command=command, seed=0, threads=args.threads,
                                     config=dataclasses.asdict(editor.config), **cost, **extra)
                if name in ("malmen", "mend"):
                    record["checkpoint"] = getattr(args, name) or "shipped"
                records.append(record)
                log.info("%s %s n=%d: ES %.3f GS %.3f LS %.3f, edit %.1fs", name, dataset, n, metrics["ES"] or 0,
                         metrics["GS"] or 0, metrics["LS"] or 0, cost["edit_time_s"])
                write_results(records, args.out, RESULTS_DIR, title="MALMEN, MEND and ft against the number of facts",
                              notes=NOTES)
    plot(records, RESULTS / f"{args.out}.png")
    compare(records, args)
    return records


def compare(records: list[dict], args) -> None:
    """``<out>_vs_baselines.md/.json/.png``: these records next to the batch rows of
    ``--baseline-editors`` already measured in the ``--baselines`` result files (not re-run)."""
    if not args.baselines:
        return
    from hyperedit.bench import write_results

    wanted = set(args.baseline_editors.split(","))
    datasets = {(r["dataset"], r["split"]) for r in records}
    rows = []
    for name in args.baselines.split(","):
        for r in json.loads((RESULTS / f"{name}.json").read_text()):
            if r["editor"] in wanted and r["mode"] == "batch" and (r["dataset"], r["split"]) in datasets:
                rows.append({k: r[k] for k in SUMMARY_FIELDS if k in r} | {"source": f"{name}.json"})
    both = sorted(records + rows, key=lambda r: (r["dataset"], r["editor"], r["n_edits"]))
    name = f"{args.out}_vs_baselines"
    write_results(both, name, RESULTS_DIR, title="Hypernetwork editors against MEMIT and MetaKE(MEMIT)",
                  notes=NOTES + "\n\n" + BASELINE_NOTES)
    plot(both, RESULTS / f"{name}.png")


NOTES = """Edit N facts at once (SmolLM2-135M, batch mode). ES/GS/LS: teacher-forced token accuracy on the
edit prompts / rephrasings with the new target / locality prompts against the unedited model's own
predictions, measured on the first min(N, eval subset) edited requests (column `n_evaluated` in
the JSON). edit_time_s is wall time on a shared 2-core machine (edit_cpu_s, the CPU time of the
editing process, is steadier); peak_rss_mb is the process peak during the edit (model included),
peak_rss_increase_mb the part above the RSS just before it. ft: `ft_steps` in the JSON."""


# the fields a baseline row keeps in the comparison (not its per-request lists)
SUMMARY_FIELDS = ("editor", "model", "dataset", "split", "mode", "n_edits", "metrics", "edit_time_s", "peak_rss_mb",
                  "command", "seed", "date", "config")
BASELINE_NOTES = """MEMIT and MetaKE(MEMIT) rows come from the locate-then-edit benchmark (its own command in the
JSON, its file in `source`); they score every edited request, at the sizes measured there, and
were not re-run."""


def plot(records: list[dict], path: Path) -> None:
    """ES/GS/LS against N, one column per metric, one row per dataset, one line per editor."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from hyperedit.bench import save_figure

    datasets = sorted({(r["dataset"], r["split"]) for r in records})
    editors = sorted({r["editor"] for r in records})
    fig, axes = plt.subplots(len(datasets), 3, figsize=(12, 3.4 * len(datasets)), squeeze=False)
    for row, (dataset, split) in enumerate(datasets):
        for col, metric in enumerate(("ES", "GS", "LS")):
            ax = axes[row][col]
            for editor in editors:
                points = sorted((r["n_edits"], r["metrics"].get(metric)) for r in records
                                if r["editor"] == editor and (r["dataset"], r["split"]) == (dataset, split)
                                and r["metrics"].get(metric) is not None)
                if points:
                    ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=editor)
            ax.set_xscale("log", base=2)
            ax.set_ylim(-0.02, 1.02)
            ax.set_title(f"{metric} - {dataset}:{split}")
            ax.set_xlabel("facts edited at once")
            ax.grid(alpha=0.3)
            if row == 0 and col == 0:
                ax.legend()
    save_figure(fig, path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--malmen", help="MALMEN checkpoint or training run directory (default: the shipped one)")
    parser.add_argument("--mend", help="MEND checkpoint or training run directory (default: the shipped one)")
    parser.add_argument("--datasets", default="counterfact:val,zsre:knowedit-test")
    parser.add_argument("--sizes", type=parse_sizes, default="16,64,256,1024", help="comma-separated; 'all' = the whole split")
    parser.add_argument("--editors", default="malmen,mend,ft")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="runtime option of the MALMEN/MEND checkpoint, e.g. --set rounds=2; repeatable")
    parser.add_argument("--eval-subset", type=int, default=256, help="score at most this many edited requests")
    parser.add_argument("--eval-batch-size", type=int, default=32)
    parser.add_argument("--ft-steps", type=int, default=25, help="ft steps up to --ft-full-max facts")
    parser.add_argument("--ft-full-max", type=int, default=64)
    parser.add_argument("--ft-steps-large", type=int, default=5, help="ft steps above --ft-full-max facts")
    parser.add_argument("--ft-max", type=int, default=256, help="skip ft above this many facts")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default="malmen_scaling")
    parser.add_argument("--baselines", help="result names whose rows of --baseline-editors join a comparison table")
    parser.add_argument("--baseline-editors", default="memit,metake-memit")
    parser.add_argument("--plot-only", action="store_true", help="redraw the PNG from the JSON")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    if args.plot_only:
        records = json.loads((RESULTS / f"{args.out}.json").read_text())
        plot(records, RESULTS / f"{args.out}.png")
        compare(records, args)
        return
    run(args)


if __name__ == "__main__":
    main()
