"""Result records: one schema for every benchmark and evaluation, written as JSON + markdown.

Each result JSON file (the repository keeps its own in ``benchmarks/results/``) is a list of
records with at least
``editor, model, dataset, split, mode, n_edits, metrics{ES, GS, LS, ...}, edit_time_s,
peak_rss_mb, command, seed, date``.
"""
from __future__ import annotations

import datetime as _dt
import json
import os
import resource
import shlex
import sys
import time
from pathlib import Path
from typing import Callable, Sequence

from ..atomic import atomic_file, atomic_write_text
from ..errors import HyperEditError
from ..outputs import claim

REQUIRED = ("editor", "model", "dataset", "split", "mode", "n_edits", "metrics", "edit_time_s",
            "peak_rss_mb", "command", "seed", "date")
MODES = ("batch", "sequential", "single", "lifelong")


def current_command() -> str:
    """The command line of this process, as a user would type it."""
    prog = Path(sys.argv[0]).name
    if prog in ("hyperedit", "__main__.py"):
        return shlex.join(["hyperedit", *sys.argv[1:]])
    return shlex.join(["python", *sys.argv])


def make_record(*, editor: str, model: str, dataset: str, split: str, mode: str, n_edits: int, metrics: dict,
                edit_time_s: float, peak_rss_mb: float | None, command: str | None = None, seed: int = 0,
                **extra) -> dict:
    """A result record of the common schema (extra fields are kept)."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}")
    for key in ("ES", "GS", "LS"):
        metrics.setdefault(key, None)
    record = {
        "editor": editor, "model": model, "dataset": dataset, "split": split, "mode": mode,
        "n_edits": int(n_edits), "metrics": metrics, "edit_time_s": round(float(edit_time_s), 4),
        "peak_rss_mb": None if peak_rss_mb is None else round(float(peak_rss_mb), 1),
        "command": command or current_command(), "seed": int(seed),
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    record.update(extra)
    return record


def _read_vm(field: str) -> float | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return float(line.split()[1]) / 1024.0
    except OSError:
        return None
    return None


def peak_rss_during(fn: Callable, *args, **kwargs):
    """Run ``fn`` and return ``(result, seconds, peak_rss_mb)``.

    On Linux the peak-RSS counter is reset before the call (``/proc/self/clear_refs``), so the
    figure is the peak during ``fn``; elsewhere it is the process peak so far.
    """
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass
    start = time.perf_counter()
    result = fn(*args, **kwargs)
    seconds = time.perf_counter() - start
    peak = _read_vm("VmHWM")
    if peak is None:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    return result, seconds, peak


def _fmt(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value)


def records_table(records: list[dict], columns: Sequence[str] = ()) -> str:
    """A markdown table: one row per record, metric columns in a stable order (and a model column
    when the records are of more than one model); ``columns``: record fields shown after ``n_edits``
    (what tells the rows of one benchmark apart)."""
    metric_keys: list[str] = ["ES", "GS", "LS"]
    for r in records:
        for key in r["metrics"]:
            if key not in metric_keys and not isinstance(r["metrics"][key], (dict, list)):
                metric_keys.append(key)
    models = len({r["model"] for r in records}) > 1
    head = ["editor", *(["model"] if models else []), "dataset", "split", "mode", "n_edits", *columns, *metric_keys,
            "edit_time_s", "peak_rss_mb"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in records:
        cells = [r["editor"], *([r["model"]] if models else []), r["dataset"], r["split"], r["mode"], r["n_edits"],
                 *(r.get(c) for c in columns), *(r["metrics"].get(k) for k in metric_keys), r["edit_time_s"],
                 r["peak_rss_mb"]]
        lines.append("| " + " | ".join(_fmt(c) for c in cells) + " |")
    return "\n".join(lines) + "\n"


def write_results(records: list[dict], name: str, results_dir: str | os.PathLike,
                  title: str | None = None, notes: str = "", columns: Sequence[str] = ()) -> tuple[Path, Path]:
    """Write ``<name>.json`` (list of records) and ``<name>.md`` (table + commands), atomically;
    ``columns``: extra record fields in the table (``records_table``)."""
    for r in records:
        missing = [k for k in REQUIRED if k not in r]
        if missing:
            raise ValueError(f"result record lacks {missing}")
    out = Path(results_dir)
    json_path, md_path = out / f"{name}.json", out / f"{name}.md"
    for path in (json_path, md_path):  # earlier result files are replaced, nothing else
        claim(path, "result", option="results", overwrite=True)
    atomic_write_text(json_path, json.dumps(records, indent=2) + "\n")
    commands = sorted({r["command"] for r in records})
    md = f"# {title or name}\n\n" + (notes.strip() + "\n\n" if notes else "") + records_table(records, columns)
    md += "\nModel: " + ", ".join(sorted({r["model"] for r in records})) + ". Produced by:\n\n"
    md += "\n".join(f"    {c}" for c in commands) + "\n"
    atomic_write_text(md_path, md)
    return json_path, md_path


def pyplot():
    """``matplotlib.pyplot`` on the Agg backend; plots are an optional extra (``hyperedit[plots]``)."""
    try:
        import matplotlib
    except ImportError:
        raise HyperEditError("plots need matplotlib, which is not installed: pip install 'hyperedit[plots]'") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: str | os.PathLike) -> Path:
    """Write a matplotlib figure as ``path`` (PNG) atomically and close it.

    Like the other result files it replaces only an earlier hyperedit result: a PNG beside a
    result JSON or markdown file (``outputs.claim``), never a file hyperedit did not write.
    """
    plt = pyplot()
    path = Path(path)
    try:
        claim(path, "result", option="results", overwrite=True)
        fig.tight_layout()
        with atomic_file(path) as tmp:
            fig.savefig(tmp, dpi=110, bbox_inches="tight", format="png")
    finally:
        plt.close(fig)
    return path
