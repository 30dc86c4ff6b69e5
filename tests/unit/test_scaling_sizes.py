"""The scaling benchmark's pieces: --sizes (integers and 'all', resolved per split) and the edit-and-score
step it shares with the small-batch benchmark."""
from __future__ import annotations

import argparse

import pytest
import torch
from script_loader import load_script

from hyperedit.editors import get_editor
from hyperedit.eval import evaluate, locality_reference
from hyperedit.requests import EditRequest, LocalityPrompt


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


def test_edit_and_score_scores_the_edited_prefix_with_its_reference_and_restores_the_model(scaling, tiny_llama):
    requests = [EditRequest(prompt=p, target=t, locality=(LocalityPrompt(q, None),)) for p, t, q in (
        ("the eiffel tower is located in the city of", "rome", "the capital of france is"),
        ("john plays the sport of", "tennis", "mary plays the sport of"),
        ("the official language of japan is", "french", "the official language of spain is"))]
    reference = locality_reference(tiny_llama.adapter, requests)
    editor = get_editor("ft", layers=[3], steps=30, lr=5e-2, max_rel_norm=5.0)
    weights = {k: v.clone() for k, v in tiny_llama.model.state_dict().items()}

    metrics, cost = scaling.edit_and_score(tiny_llama, editor, requests[:2], requests, reference, 8)

    assert all(torch.equal(v, weights[k]) for k, v in tiny_llama.model.state_dict().items())
    assert cost["n_evaluated"] == 2 and cost["delta_norm"] > 0 and cost["edit_time_s"] > 0
    delta = editor.edit(tiny_llama, requests[:2])  # ft is deterministic: the same edit, scored by hand
    with delta.applied(tiny_llama.model):
        expected, _ = evaluate(tiny_llama.adapter, requests[:2], scaling._slice_reference(reference, 2), 8)
    assert metrics == expected and metrics["ES"] > 0
