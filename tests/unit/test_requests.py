"""EditRequest / LocalityPrompt validation."""
from __future__ import annotations

import dataclasses

import pytest

from hyperedit.requests import EditRequest, LocalityPrompt


def test_valid_request_keeps_fields():
    r = EditRequest(prompt="the capital of france is", target="rome", subject="france", old_target="paris", id="x")
    assert (r.prompt, r.target, r.subject, r.old_target, r.id) == ("the capital of france is", "rome", "france",
                                                                    "paris", "x")
    assert r.rephrasings == () and r.locality == ()


@pytest.mark.parametrize("target", ["", "   ", None, 3])
def test_empty_or_non_string_target_rejected(target):
    with pytest.raises(ValueError, match="target"):
        EditRequest(prompt="the capital of france is", target=target)


@pytest.mark.parametrize("prompt", ["", " \n", None])
def test_empty_prompt_rejected(prompt):
    with pytest.raises(ValueError, match="prompt"):
        EditRequest(prompt=prompt, target="rome")


def test_subject_must_occur_in_prompt():
    with pytest.raises(ValueError, match="does not occur"):
        EditRequest(prompt="the capital of france is", target="rome", subject="spain")
    with pytest.raises(ValueError, match="subject"):
        EditRequest(prompt="the capital of france is", target="rome", subject="  ")


def test_target_equal_to_old_target_rejected():
    with pytest.raises(ValueError, match="old_target"):
        EditRequest(prompt="the capital of france is", target="paris", old_target="paris")
    # Whitespace differences do not make a different target.
    with pytest.raises(ValueError, match="old_target"):
        EditRequest(prompt="the capital of france is", target=" paris", old_target="paris ")
    with pytest.raises(ValueError, match="old_target"):
        EditRequest(prompt="the capital of france is", target="rome", old_target="")


def test_lists_become_tuples_and_request_is_hashable():
    r = EditRequest(prompt="the capital of france is", target="rome",
                    rephrasings=["france has the capital"],
                    locality=[LocalityPrompt("the capital of spain is", "madrid")])
    assert isinstance(r.rephrasings, tuple) and r.rephrasings == ("france has the capital",)
    assert isinstance(r.locality, tuple) and r.locality[0].answer == "madrid"
    hash(r)  # frozen + tuples: usable as a dict key
    same = EditRequest(prompt="the capital of france is", target="rome",
                       rephrasings=("france has the capital",),
                       locality=(LocalityPrompt("the capital of spain is", "madrid"),))
    assert r == same and hash(r) == hash(same)


def test_request_is_frozen():
    r = EditRequest(prompt="the capital of france is", target="rome")
    with pytest.raises(dataclasses.FrozenInstanceError):
        r.target = "paris"


def test_bad_rephrasings_and_locality_entries_rejected():
    with pytest.raises(ValueError, match="rephrasings"):
        EditRequest(prompt="the capital of france is", target="rome", rephrasings=["ok", ""])
    with pytest.raises(ValueError, match="locality"):
        EditRequest(prompt="the capital of france is", target="rome", locality=["the capital of spain is"])


def test_locality_prompt_validation():
    assert LocalityPrompt("the capital of spain is").answer is None
    with pytest.raises(ValueError):
        LocalityPrompt("")
    with pytest.raises(ValueError):
        LocalityPrompt("the capital of spain is", answer=" ")


def test_meta_does_not_affect_equality():
    a = EditRequest(prompt="the capital of france is", target="rome", meta={"source": 1})
    b = EditRequest(prompt="the capital of france is", target="rome", meta={"source": 2})
    assert a == b and hash(a) == hash(b)
