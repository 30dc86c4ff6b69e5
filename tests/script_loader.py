"""Import a repository script (benchmarks/, research/, scripts/) as a module, for tests of its pieces."""
from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def load_script(relative: str):
    """The module of the script at ``relative`` (e.g. ``benchmarks/malmen_scaling.py``)."""
    path = ROOT / relative
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
