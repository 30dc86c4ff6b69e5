"""The scaling benchmark's --sizes: integers and 'all', resolved per split."""
from __future__ import annotations

import argparse

import pytest
from script_loader import load_script


@pytest.fixture(scope="module")
def scaling():
    return load_script("benchmarks/malmen_scaling.py")


def test_all_becomes_the_split_size_and_sizes_above_it_collapse(scaling):
    sizes = scaling.parse_sizes("16,64,1024,all")
    assert sizes == [16, 64, 1024, None]
    assert scaling.sizes_for(sizes, 1919) == [16, 64, 1024, 1919]
    assert scaling.sizes_for(sizes, 500) == [16, 64, 500]


def test_bad_sizes_are_an_argument_error(scaling):
    with pytest.raises(argparse.ArgumentTypeError, match="'all'"):
        scaling.parse_sizes("16,many")
