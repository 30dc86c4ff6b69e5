"""The scaling benchmark's --sizes: integers and 'all', resolved per split."""
from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "malmen_scaling.py"


@pytest.fixture(scope="module")
def scaling():
    spec = importlib.util.spec_from_file_location("malmen_scaling", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_all_becomes_the_split_size_and_sizes_above_it_collapse(scaling):
    sizes = scaling.parse_sizes("16,64,1024,all")
    assert sizes == [16, 64, 1024, None]
    assert scaling.sizes_for(sizes, 1919) == [16, 64, 1024, 1919]
    assert scaling.sizes_for(sizes, 500) == [16, 64, 500]


def test_bad_sizes_are_an_argument_error(scaling):
    with pytest.raises(argparse.ArgumentTypeError, match="'all'"):
        scaling.parse_sizes("16,many")
