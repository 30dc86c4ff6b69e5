"""The Editor contract, table-driven over every registered editor that needs no checkpoint.

Each row: on tiny Llama and tiny GPT-2, ``edit`` returns an ``EditDelta`` over modules the model
has, with shapes of their weights; the model is unchanged afterwards (weights, requires_grad,
hooks); ``apply`` changes the weights and ``revert`` restores them bit for bit. New editors join
the table automatically through ``editor_names()``.
"""
from __future__ import annotations

import dataclasses

import pytest
import torch

from hyperedit.delta import EditDelta
from hyperedit.editors import Editor, editor_entry, editor_names, get_editor
from hyperedit.errors import HyperEditError
from hyperedit.requests import EditRequest, LocalityPrompt

REQUESTS = [
    EditRequest(prompt="the eiffel tower is located in the city of", target="rome", subject="eiffel tower",
                rephrasings=["where is the eiffel tower ? it is in the city of"],
                locality=[LocalityPrompt("the colosseum is located in the city of")], old_target="paris"),
    EditRequest(prompt="john plays the sport of", target="tennis", subject="john", old_target="football"),
]

# Options that make any editor fast on the tiny 4-layer models, applied when the editor's config
# has a field of that name (so editors added later are covered without editing this file).
GENERIC_FAST = {
    "layers": [1, 2],
    "steps": 3,  # ft
    "v_steps": 3,  # locate-then-edit target optimisation
    "n_prefixes": 0,
    "prefix_tokens": 2,
    "stats_samples": 16,
    "stats_max_length": 16,
    "diagnostics": False,
    "meta_steps": 2,  # MetaKE
    "n_locality_texts": 4,
    "locality_tokens": 8,
}
# Per-editor overrides on top (editor name -> options).
PER_EDITOR: dict[str, dict] = {
    "ft": {"layers": [2], "lr": 1e-2},
}
# Editors known to fail the contract on the tiny models, with the reason (pytest.mark.xfail).
XFAIL: dict[str, str] = {}

SHAPES = ["tiny_llama", "tiny_gpt2"]


def _untrained() -> list[str]:
    return [n for n in editor_names() if not editor_entry(n).needs_checkpoint]


def _trained() -> list[str]:
    return [n for n in editor_names() if editor_entry(n).needs_checkpoint]


def _params(names):
    return [pytest.param(n, marks=pytest.mark.xfail(reason=XFAIL[n], strict=False)) if n in XFAIL else n
            for n in names]


@pytest.fixture(scope="module")
def stats_corpus(tmp_path_factory):
    """A small corpus of in-vocabulary sentences for editors that need key statistics."""
    import random

    from tiny import WORDS

    rng = random.Random(0)
    words = [w for w in WORDS if w.isalpha()]
    path = tmp_path_factory.mktemp("corpus") / "corpus.txt"
    path.write_text("\n".join(" ".join(rng.choice(words) for _ in range(12)) for _ in range(40)) + "\n")
    return str(path)


def _fast_options(name: str, stats_corpus: str) -> dict:
    fields = {f.name for f in dataclasses.fields(editor_entry(name).config_class)}
    wanted = {**GENERIC_FAST, "stats_corpus": stats_corpus, **PER_EDITOR.get(name, {})}
    return {k: v for k, v in wanted.items() if k in fields}


def _snapshot(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _assert_same(model, snap):
    state = model.state_dict()
    for k, v in snap.items():
        assert torch.equal(state[k], v), f"{k} changed"


def test_registry_is_not_empty():
    names = editor_names()
    assert "ft" in names and names == sorted(names)
    assert "ft" in _untrained()


@pytest.mark.parametrize("fixture", SHAPES)
@pytest.mark.parametrize("name", _params(_untrained()))
def test_editor_contract(name, fixture, request, stats_corpus, tmp_path):
    lm = request.getfixturevalue(fixture)
    editor = get_editor(name, **_fast_options(name, stats_corpus))
    assert isinstance(editor, Editor)
    assert editor.name == name
    assert isinstance(editor.config, editor_entry(name).config_class)

    snap = _snapshot(lm.model)
    delta = editor.edit(lm, REQUESTS)

    # The model is exactly as before: weights, frozen parameters, no hooks left behind.
    _assert_same(lm.model, snap)
    assert all(not p.requires_grad for p in lm.model.parameters())
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in lm.model.modules())

    # The delta edits modules the model has, in their weights' layout.
    assert isinstance(delta, EditDelta) and delta.shifts
    modules = dict(lm.model.named_modules())
    for module_name, shift in delta.shifts.items():
        assert module_name in modules, module_name
        weight = modules[module_name].weight
        assert shift.shape == weight.shape and shift.dtype == weight.dtype
        assert torch.isfinite(shift).all()
    assert any(float(s.abs().sum()) > 0 for s in delta.shifts.values())
    # The delta names its editor (variants may add a suffix, e.g. MetaKE's "metake-memit").
    assert str(delta.meta.get("editor", "")).startswith(name)
    assert delta.meta.get("model", {}).get("model_type") == lm.adapter.model_type

    # apply changes exactly the edited weights; revert is exact.
    delta.apply(lm.model)
    try:
        state = lm.model.state_dict()
        for module_name, shift in delta.shifts.items():
            key = module_name + ".weight"
            assert torch.equal(state[key], snap[key] + shift)
        for key in set(snap) - {m + ".weight" for m in delta.shifts}:
            assert torch.equal(state[key], snap[key]), key
    finally:
        delta.revert(lm.model)
    _assert_same(lm.model, snap)

    # The delta survives a save / load round trip and still fits.
    loaded = EditDelta.load(delta.save(tmp_path / "delta"))
    loaded.check_fits(lm.model)
    assert all(torch.equal(loaded.shifts[k], delta.shifts[k]) for k in delta.shifts)


@pytest.mark.parametrize("name", _trained())
def test_trained_editors_require_a_checkpoint(name):
    with pytest.raises(HyperEditError, match="checkpoint"):
        get_editor(name)


@pytest.mark.parametrize("name", _untrained())
def test_untrained_editors_refuse_a_checkpoint(name, tmp_path):
    with pytest.raises(HyperEditError, match="no checkpoint"):
        get_editor(name, checkpoint=str(tmp_path))


@pytest.mark.parametrize("name", _untrained())
def test_unknown_option_is_a_one_line_error(name):
    with pytest.raises(HyperEditError) as info:
        get_editor(name, no_such_option=1)
    assert "no_such_option" in str(info.value) and "\n" not in str(info.value)
