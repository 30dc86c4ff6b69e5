"""Constrained fine-tuning (ft): flips a planted fact, leaves the model unchanged, respects its norm bound."""
from __future__ import annotations

import pytest
import torch

from hyperedit.editors import get_editor
from hyperedit.errors import HyperEditError
from hyperedit.requests import EditRequest

FACT = EditRequest(prompt="the eiffel tower is located in the city of", target="rome")
MORE = [FACT, EditRequest(prompt="john plays the sport of", target="tennis"),
        EditRequest(prompt="the official language of japan is", target="french")]
# A strong configuration for the tiny random model (whose MLP outputs are small).
STRONG = dict(layers=[3], steps=30, lr=5e-2, max_rel_norm=5.0)


def _argmax_at_target(lm, request):
    batch = lm.adapter.encode([request.prompt], [request.target])
    n_prompt = int((batch["labels"][0] == -100).sum())
    with torch.no_grad():
        logits = lm.model(input_ids=batch["input_ids"]).logits[0, n_prompt - 1]
    return int(logits.argmax()), int(batch["labels"][0, n_prompt])


def _snapshot(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _assert_same(model, snap):
    for k, v in model.state_dict().items():
        assert torch.equal(v, snap[k]), k


def test_ft_flips_planted_fact_and_leaves_model_unchanged(tiny_llama):
    predicted, target = _argmax_at_target(tiny_llama, FACT)
    assert predicted != target  # the fact is new to the model
    snap = _snapshot(tiny_llama.model)
    delta = get_editor("ft", **STRONG).edit(tiny_llama, [FACT])
    _assert_same(tiny_llama.model, snap)  # edit() computes the delta; it does not apply it
    assert all(not p.requires_grad and p.grad is None for p in tiny_llama.model.parameters())
    assert list(delta.shifts) == ["model.layers.3.mlp.down_proj"]
    with delta.applied(tiny_llama.model):
        assert _argmax_at_target(tiny_llama, FACT)[0] == target
    _assert_same(tiny_llama.model, snap)
    assert delta.meta["editor"] == "ft" and delta.meta["config"]["steps"] == 30
    assert delta.meta["model"]["model_type"] == "llama"
    assert delta.meta["steps_run"] <= 30 and delta.meta["final_loss"] > 0


@pytest.mark.parametrize("bound", [0.01, 0.2])
def test_shift_norm_respects_max_rel_norm(tiny_gpt2, bound):
    adapter = tiny_gpt2.adapter
    delta = get_editor("ft", layers=[1, 2], steps=5, lr=0.1, max_rel_norm=bound).edit(tiny_gpt2, MORE)
    for name, shift in delta.shifts.items():
        radius = bound * float(adapter.weight(name).norm())
        norm = float(shift.norm())
        assert 0 < norm <= radius * (1 + 1e-4)
        # With such a large learning rate the projection is active: the shift sits on the ball.
        assert norm == pytest.approx(radius, rel=1e-3)


def test_stop_loss_stops_before_any_step(tiny_llama):
    delta = get_editor("ft", layers=[2], steps=10, stop_loss=1e9).edit(tiny_llama, [FACT])
    assert delta.meta["steps_run"] == 1
    assert all(n == 0.0 for n in delta.norms().values())


def test_batch_size_does_not_change_the_result(tiny_llama):
    cfg = dict(layers=[2, 3], steps=3, lr=1e-2)
    one = get_editor("ft", batch_size=1, **cfg).edit(tiny_llama, MORE)
    all_at_once = get_editor("ft", batch_size=8, **cfg).edit(tiny_llama, MORE)
    for name in one.shifts:
        assert torch.allclose(one.shifts[name], all_at_once.shifts[name], atol=1e-5)
    assert one.meta["final_loss"] == pytest.approx(all_at_once.meta["final_loss"], rel=1e-4)


def test_ft_on_t5(tiny_t5):
    snap = _snapshot(tiny_t5.model)
    delta = get_editor("ft", layers=[1], steps=2).edit(tiny_t5, [FACT])
    _assert_same(tiny_t5.model, snap)
    assert list(delta.shifts) == ["decoder.block.1.layer.2.DenseReluDense.wo"]


@pytest.mark.parametrize("bad", [dict(steps=0), dict(lr=0), dict(max_rel_norm=-1), dict(batch_size=0),
                                 dict(stepz=3)])
def test_invalid_config(bad):
    with pytest.raises(HyperEditError):
        get_editor("ft", **bad)
