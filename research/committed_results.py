"""Read a committed result file that a study draws on, from the tree or, once it has left the
tree, from git history (research/README.md, "Result files").

The studies that re-draw committed records (``malmen_tradeoff.py``, ``malmen_leverage_curves.py``)
name dozens of inputs that back no statement of their own; those left ``benchmarks/results/``
and are read from ``PRUNED_AT``, the last commit that had every one of them.
"""
from __future__ import annotations

import json
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
PRUNED_AT = "480ae0d"


def read_records(name: str, results: Path = RESULTS, revision: str = PRUNED_AT) -> list[dict]:
    """The records of ``<results>/<name>.json``, else of that file at ``revision``."""
    path = results / f"{name}.json"
    if path.exists():
        return json.loads(path.read_text())
    relative = path.resolve().relative_to(ROOT).as_posix()
    try:
        shown = subprocess.run(["git", "-C", str(ROOT), "show", f"{revision}:{relative}"],
                               capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError) as exc:
        detail = getattr(exc, "stderr", "") or exc
        raise SystemExit(f"{relative}: not in the tree, and git cannot read it at {revision}: {str(detail).strip()}")
    return json.loads(shown.stdout)
