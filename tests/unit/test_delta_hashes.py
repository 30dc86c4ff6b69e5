"""Every registered editor's edits are bit-identical to the recorded ones (``tests/delta_hashes.py``).

A refactoring that changes no behaviour keeps these fingerprints; a change meant to alter edits
reruns ``python tests/delta_hashes.py`` and commits the new fixture with it.
"""
from __future__ import annotations

import json

import pytest

from delta_hashes import FIXTURE, editor_fingerprints, write_corpus
from hyperedit import editor_names

RECORDED = json.loads(FIXTURE.read_text())["editors"]


def test_every_registered_editor_is_recorded():
    assert sorted(RECORDED) == editor_names()


@pytest.mark.parametrize("name", sorted(RECORDED))
def test_edits_are_bit_identical_to_the_recorded_ones(name, model_dir, tmp_path):
    corpus = write_corpus(tmp_path / "corpus.txt")
    assert editor_fingerprints(name, model_dir, corpus) == RECORDED[name]
