"""Side-by-side table of one model's batch results and a baseline model's, from result files.

    python benchmarks/model_comparison.py --model gemma3-270m --baseline smollm2-135m \
        --files benchmarks/results/gemma_*.json --baseline-files benchmarks/results/locate_*.json \
        --name gemma_vs_smollm2

Every batch-mode record of ``--model`` in ``--files`` is one row; the baseline column is the record
of ``--baseline`` in ``--baseline-files`` with the same editor, dataset and split and the nearest
number of edits within 5% (exact first, then the newest). Nothing is re-run: the output JSON holds
the records as they were measured (each with its ``source`` file), so every figure keeps the command
that produced it.
"""
from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

RESULTS_DIR = Path(__file__).resolve().parents[1] / "benchmarks" / "results"

log = logging.getLogger("model_comparison")


def load_records(paths: list[str], model: str) -> list[dict]:
    out = []
    for path in dict.fromkeys(paths):  # a file named twice (overlapping globs) counts once
        records = json.loads(Path(path).read_text())
        for record in records if isinstance(records, list) else []:
            if isinstance(record, dict) and record.get("model") == model and record.get("mode") == "batch":
                out.append({**record, "source": Path(path).name})
    return out


def editor_base(record: dict) -> str:
    return str(record["editor"]).split("@", 1)[0]


def match(record: dict, candidates: list[dict]) -> dict | None:
    """The baseline record for ``record``: same editor, dataset and split, n within 5%."""
    n = record["n_edits"]
    same = [c for c in candidates if editor_base(c) == editor_base(record) and c["editor"] == editor_base(c)
            and c["dataset"] == record["dataset"] and c["split"] == record["split"]
            and abs(c["n_edits"] - n) <= 0.05 * n]
    if not same:
        return None
    same.sort(key=lambda c: str(c.get("date", "")), reverse=True)  # among equally close: the newest
    return min(same, key=lambda c: (c["n_edits"] != n, abs(c["n_edits"] - n)))


def _triple(record: dict | None) -> str:
    if record is None:
        return "-"
    m = record["metrics"]
    return " / ".join(f"{m[k]:.3f}" if isinstance(m.get(k), (int, float)) else "-" for k in ("ES", "GS", "LS"))


def _edit_seconds(record: dict) -> str:
    cached = (record.get("locate") or {}).get("target_cached_time_s", 0.0)
    if cached >= 1.0:  # targets computed earlier (another editor of the run, or a pre-pass)
        return f"{record['edit_time_s'] + cached:,.0f} ({record['edit_time_s']:,.0f} + {cached:,.0f} cached targets)"
    return f"{record['edit_time_s']:,.0f}"


def _settings(record: dict) -> str:
    """Options given on the benchmark's command line (editor defaults otherwise)."""
    options = {k: v for k, v in (record.get("options") or {}).items() if k != "inner"}
    return ", ".join(f"{k}={v}" for k, v in options.items()) or "defaults"


def comparison_table(rows: list[tuple[dict, dict | None]], model: str, baseline: str) -> str:
    lines = [f"| data | n | editor | settings | {model} ES / GS / LS | edit s | peak RSS MB | "
             f"{baseline} ES / GS / LS (n, file) | source |", "|---|---|---|---|---|---|---|---|---|"]
    for rec, base in rows:
        base_cell = _triple(base) + (f" ({base['n_edits']}, {base['source']})" if base is not None else "")
        lines.append(f"| {rec['dataset']}:{rec['split']} | {rec['n_edits']} | {rec['editor']} | {_settings(rec)} | "
                     f"{_triple(rec)} | "
                     f"{_edit_seconds(rec)} | {rec['peak_rss_mb']:,.0f} | {base_cell} | {rec['source']} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True)
    ap.add_argument("--baseline", required=True)
    ap.add_argument("--files", nargs="+", required=True)
    ap.add_argument("--baseline-files", nargs="+", required=True)
    ap.add_argument("--name", required=True)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")

    from hyperedit.bench import current_command, write_results

    records = load_records(args.files, args.model)
    if not records:
        log.error("no batch records of %s in --files", args.model)
        return 2
    baselines = load_records(args.baseline_files, args.baseline)
    records.sort(key=lambda r: (r["dataset"], r["n_edits"], r["editor"]))
    rows = [(r, match(r, baselines)) for r in records]
    notes = (comparison_table(rows, args.model, args.baseline)
             + "\nEach row is the record as measured (its command below); the baseline column is the "
             f"{args.baseline} record with the same editor, data and split, n within 5%.\n\n"
             f"Table made by:\n\n    {current_command()}\n")
    out = [r for r, _ in rows] + [b for _, b in rows if b is not None]
    unique = list({json.dumps(r, sort_keys=True): r for r in out}.values())
    write_results(unique, args.name, RESULTS_DIR, title=f"{args.model} next to {args.baseline} (batch editing)", notes=notes)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
