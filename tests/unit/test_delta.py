"""EditDelta: exact apply/revert, context manager, persistence, mismatch errors."""
from __future__ import annotations

import json

import pytest
import torch

from hyperedit.delta import META_FILE, SHIFTS_FILE, EditDelta
from hyperedit.errors import DeltaMismatchError, HyperEditError
from hyperedit.models import load_model
from hyperedit.outputs import MARKER


def _snapshot(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _assert_same(model, snap):
    state = model.state_dict()
    assert state.keys() == snap.keys()
    for k, v in snap.items():
        assert torch.equal(state[k], v), k


def _random_delta(lm, layers=(1, 2), scale=0.05, seed=0):
    adapter = lm.adapter
    gen = torch.Generator().manual_seed(seed)
    shifts = {}
    for name in adapter.module_names(layers):
        d_in, d_out = adapter.in_out_shape(name)
        shifts[name] = torch.randn(d_in, d_out, generator=gen) * scale
    return EditDelta.from_in_out(adapter, shifts, editor="test", config={"scale": scale})


def test_from_in_out_meta(tiny_gpt2):
    delta = _random_delta(tiny_gpt2)
    assert delta.meta["editor"] == "test" and delta.meta["config"] == {"scale": 0.05}
    assert delta.meta["model"]["model_type"] == "gpt2"
    assert "hyperedit_version" in delta.meta
    for name, shape in delta.meta["shapes"].items():
        assert shape == list(tiny_gpt2.adapter.weight(name).shape)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_apply_revert_is_bit_exact(tiny_dirs, dtype):
    lm = load_model(str(tiny_dirs["llama"]), dtype=dtype)
    snap = _snapshot(lm.model)
    # Small shifts: in bfloat16 ``(w + s) - s != w``, so only restoring the originals is exact.
    delta = _random_delta(lm, scale=1e-3)
    delta.apply(lm.model)
    assert delta.is_applied
    changed = [n for n in delta.shifts if not torch.equal(lm.adapter.weight(n), snap[n + ".weight"])]
    assert changed == list(delta.shifts)
    delta.revert(lm.model)
    assert not delta.is_applied
    _assert_same(lm.model, snap)


def test_subtracting_bf16_shift_would_not_be_exact(tiny_dirs):
    """Documents why revert restores saved tensors: the naive inverse loses bits in bfloat16."""
    lm = load_model(str(tiny_dirs["llama"]), dtype="bfloat16")
    name = lm.adapter.module_name(1)
    w = lm.adapter.weight(name).detach().clone()
    s = lm.adapter.shift_to_param(name, torch.randn(*lm.adapter.in_out_shape(name)) * 1e-3)
    assert not torch.equal((w + s) - s, w)


def test_apply_changes_logits_and_revert_restores_them(tiny_llama):
    batch = tiny_llama.adapter.encode(["the capital of france is"], ["paris"])
    with torch.no_grad():
        before = tiny_llama.model(input_ids=batch["input_ids"]).logits
        delta = _random_delta(tiny_llama, scale=0.5)
        with delta.applied(tiny_llama.model):
            during = tiny_llama.model(input_ids=batch["input_ids"]).logits
        after = tiny_llama.model(input_ids=batch["input_ids"]).logits
    assert not torch.equal(before, during)
    assert torch.equal(before, after)


def test_applied_reverts_when_block_raises(tiny_gpt2):
    snap = _snapshot(tiny_gpt2.model)
    delta = _random_delta(tiny_gpt2)
    with pytest.raises(RuntimeError, match="boom"):
        with delta.applied(tiny_gpt2.model):
            assert not torch.equal(tiny_gpt2.adapter.weight(next(iter(delta.shifts))),
                                   snap[next(iter(delta.shifts)) + ".weight"])
            raise RuntimeError("boom")
    assert not delta.is_applied
    _assert_same(tiny_gpt2.model, snap)


def test_double_apply_and_revert_without_apply_raise(tiny_llama):
    delta = _random_delta(tiny_llama)
    with pytest.raises(HyperEditError, match="not applied"):
        delta.revert(tiny_llama.model)
    delta.apply(tiny_llama.model)
    snap = _snapshot(tiny_llama.model)
    with pytest.raises(HyperEditError, match="already applied"):
        delta.apply(tiny_llama.model)
    _assert_same(tiny_llama.model, snap)  # the refused apply changed nothing
    delta.revert(tiny_llama.model)


def test_revert_on_another_model_object_refused(tiny_dirs):
    a = load_model(str(tiny_dirs["llama"]))
    b = load_model(str(tiny_dirs["llama"]))
    delta = _random_delta(a)
    delta.apply(a.model)
    with pytest.raises(HyperEditError, match="different model"):
        delta.revert(b.model)
    delta.revert(a.model)


def test_compose_adds_shifts(tiny_llama):
    a = _random_delta(tiny_llama, layers=(1, 2), seed=0)
    b = _random_delta(tiny_llama, layers=(2, 3), seed=1)
    c = a.compose(b)
    names = tiny_llama.adapter.module_names([1, 2, 3])
    assert set(c.shifts) == set(names)
    assert torch.equal(c.shifts[names[0]], a.shifts[names[0]])
    assert torch.equal(c.shifts[names[1]], a.shifts[names[1]] + b.shifts[names[1]])
    assert torch.equal(c.shifts[names[2]], b.shifts[names[2]])
    assert c.norms()[names[2]] == pytest.approx(float(b.shifts[names[2]].norm()))


def test_save_load_round_trip(tiny_llama, tmp_path):
    delta = _random_delta(tiny_llama)
    out = delta.save(tmp_path / "d")
    assert out == tmp_path / "d"
    assert sorted(p.name for p in out.iterdir()) == sorted([SHIFTS_FILE, META_FILE, MARKER])
    assert [p.name for p in tmp_path.iterdir()] == ["d"]  # no temp dirs left
    loaded = EditDelta.load(out)
    assert loaded.shifts.keys() == delta.shifts.keys()
    for k in delta.shifts:
        assert torch.equal(loaded.shifts[k], delta.shifts[k])
    assert loaded.meta["editor"] == "test" and loaded.meta["model"] == delta.meta["model"]
    # The loaded delta applies and reverts exactly.
    snap = _snapshot(tiny_llama.model)
    with loaded.applied(tiny_llama.model):
        name = next(iter(delta.shifts))
        assert torch.equal(tiny_llama.adapter.weight(name), snap[name + ".weight"] + delta.shifts[name])
    _assert_same(tiny_llama.model, snap)


def test_save_overwrites_atomically(tiny_llama, tmp_path):
    first = _random_delta(tiny_llama, layers=(1,), seed=0)
    second = _random_delta(tiny_llama, layers=(2, 3), seed=1)
    first.save(tmp_path / "d")
    second.save(tmp_path / "d")
    assert [p.name for p in tmp_path.iterdir()] == ["d"]  # no temp or ".old" dirs left
    loaded = EditDelta.load(tmp_path / "d")
    assert set(loaded.shifts) == set(second.shifts)
    for k in second.shifts:
        assert torch.equal(loaded.shifts[k], second.shifts[k])


def test_bfloat16_delta_round_trip(tiny_dirs, tmp_path):
    lm = load_model(str(tiny_dirs["gpt2"]), dtype="bfloat16")
    delta = _random_delta(lm)
    assert all(t.dtype == torch.bfloat16 for t in delta.shifts.values())
    loaded = EditDelta.load(delta.save(tmp_path / "bf"))
    for k in delta.shifts:
        assert loaded.shifts[k].dtype == torch.bfloat16 and torch.equal(loaded.shifts[k], delta.shifts[k])


def test_load_into_other_architecture_raises(tiny_llama, tiny_gpt2, tmp_path):
    loaded = EditDelta.load(_random_delta(tiny_llama).save(tmp_path / "d"))
    snap = _snapshot(tiny_gpt2.model)
    with pytest.raises(DeltaMismatchError, match="llama"):
        loaded.apply(tiny_gpt2.model)
    assert not loaded.is_applied
    _assert_same(tiny_gpt2.model, snap)


def test_other_module_names_raise(tiny_llama):
    name = tiny_llama.adapter.module_name(1)
    delta = EditDelta({name.replace("layers.1", "layers.9"): torch.zeros(32, 64)})  # no model identity
    with pytest.raises(DeltaMismatchError, match="does not have"):
        delta.apply(tiny_llama.model)
    assert not delta.is_applied


def test_other_shapes_raise(tiny_llama, tmp_path):
    from transformers import LlamaConfig, LlamaForCausalLM

    wider = LlamaForCausalLM(LlamaConfig(vocab_size=tiny_llama.model.config.vocab_size, hidden_size=48,
                                         intermediate_size=96, num_hidden_layers=4, num_attention_heads=4,
                                         num_key_value_heads=2))
    loaded = EditDelta.load(_random_delta(tiny_llama).save(tmp_path / "d"))
    snap = _snapshot(wider)
    with pytest.raises(DeltaMismatchError, match="shape"):
        loaded.apply(wider)
    _assert_same(wider, snap)


def test_load_not_a_delta(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(HyperEditError, match="not a saved delta"):
        EditDelta.load(tmp_path / "empty")
    with pytest.raises(HyperEditError, match="not a saved delta"):
        EditDelta.load(tmp_path / "missing")


def test_corrupted_delta_json(tiny_llama, tmp_path):
    path = _random_delta(tiny_llama).save(tmp_path / "d")
    (path / META_FILE).write_text('{"editor": "test", "shapes": ')
    with pytest.raises(HyperEditError, match="invalid JSON"):
        EditDelta.load(path)


def test_delta_json_not_an_object(tiny_llama, tmp_path):
    path = _random_delta(tiny_llama).save(tmp_path / "d")
    (path / META_FILE).write_text("[1, 2, 3]")
    with pytest.raises(HyperEditError):
        EditDelta.load(path)


def test_delta_json_shapes_disagree_with_tensors(tiny_llama, tmp_path):
    path = _random_delta(tiny_llama).save(tmp_path / "d")
    meta = json.loads((path / META_FILE).read_text())
    first = next(iter(meta["shapes"]))
    meta["shapes"][first] = [1, 2]
    (path / META_FILE).write_text(json.dumps(meta))
    with pytest.raises(HyperEditError, match="do not match"):
        EditDelta.load(path)


def test_corrupted_shifts_file(tiny_llama, tmp_path):
    path = _random_delta(tiny_llama).save(tmp_path / "d")
    (path / SHIFTS_FILE).write_bytes(b"\x00\x01garbage")
    with pytest.raises(HyperEditError):
        EditDelta.load(path)
