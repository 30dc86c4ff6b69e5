"""hooks.capture / stop_after / edit_output: right tensors, and only their own handles, always removed."""
from __future__ import annotations

import pytest
import torch

from hyperedit.hooks import capture, edit_output, stop_after
from hyperedit.lm import prediction_mask, target_logits, trainable_weights

PROMPTS = ["the eiffel tower is located in the city of", "john plays"]
TARGETS = ["rome", "the piano"]


def _mlp_input_to_down_input(adapter, layer, x):
    """The input of the MLP's down projection, computed by hand from the MLP's input ``x``."""
    mlp = adapter.get_module(f"{adapter.spec.layers}.{layer}.mlp")
    if adapter.model_type == "llama":
        return mlp.act_fn(mlp.gate_proj(x)) * mlp.up_proj(x)
    return mlp.act(mlp.c_fc(x))  # gpt2


@pytest.mark.parametrize("fixture", ["tiny_llama", "tiny_gpt2"])
def test_captured_keys_are_module_inputs_at_masked_positions(request, fixture):
    lm = request.getfixturevalue(fixture)
    adapter = lm.adapter
    down = adapter.module_name(1)
    mlp = f"{adapter.spec.layers}.1.mlp"
    batch = adapter.encode(PROMPTS, TARGETS)
    mask = prediction_mask(batch["labels"], seq2seq=False)
    with torch.no_grad(), capture(lm.model, [down, mlp], grads=False) as cap:
        cap.mask = mask
        lm.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        # The same forward once more without a mask: every position is kept.
        cap.mask = None
        lm.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    assert len(cap.keys[down]) == 2 and cap.grads[down] == []
    masked, full = cap.keys[down]
    mlp_in = cap.keys[mlp][1].reshape(*mask.shape, -1)
    with torch.no_grad():
        manual = _mlp_input_to_down_input(adapter, 1, mlp_in)
    assert masked.shape == (int(mask.sum()), adapter.in_out_shape(down)[0])
    assert torch.allclose(masked, manual[mask], atol=1e-5)
    assert torch.allclose(full, manual.reshape(-1, manual.shape[-1]), atol=1e-5)
    # Masked keys are the full keys at the masked positions, in batch-major order.
    assert torch.equal(masked, full.reshape(*mask.shape, -1)[mask])


def test_captured_value_grads_equal_autograd(tiny_any):
    adapter = tiny_any.adapter
    name = adapter.module_name(1)
    module = adapter.get_module(name)
    batch = adapter.encode(PROMPTS, TARGETS)
    mask = prediction_mask(batch["labels"], adapter.is_seq2seq)
    outputs = []
    keep = module.register_forward_hook(lambda m, i, o: outputs.append(o))
    try:
        with trainable_weights(adapter, [name]), capture(tiny_any.model, [name]) as cap:
            cap.mask = mask
            out = target_logits(adapter, batch)
            loss = out.loss()
            (expected,) = torch.autograd.grad(loss, outputs[0], retain_graph=True)
            cap.clear()  # autograd.grad may fire tensor hooks too; keep only backward's
            loss.backward()
    finally:
        keep.remove()
    assert len(cap.grads[name]) == 1
    got = cap.grad(name)
    assert got.shape == (int(mask.sum()), adapter.in_out_shape(name)[1])
    assert torch.allclose(got, expected[mask], atol=1e-6)
    assert got.abs().sum() > 0
    assert not module._forward_hooks


def _other_hook(module, inputs, output):
    return None


def test_handles_removed_after_exception_in_block(tiny_llama):
    names = tiny_llama.adapter.module_names([0, 1])
    modules = [tiny_llama.adapter.get_module(n) for n in names]
    mine = modules[0].register_forward_hook(_other_hook)
    try:
        with pytest.raises(RuntimeError, match="inside"):
            with capture(tiny_llama.model, names):
                assert len(modules[0]._forward_hooks) == 2 and len(modules[1]._forward_hooks) == 1
                raise RuntimeError("inside")
        assert list(modules[0]._forward_hooks.values()) == [_other_hook]  # the caller's hook is kept
        assert not modules[1]._forward_hooks
    finally:
        mine.remove()


def test_handles_removed_after_exception_in_forward(tiny_gpt2):
    names = tiny_gpt2.adapter.module_names([0, 2])
    modules = [tiny_gpt2.adapter.get_module(n) for n in names]
    mine = modules[1].register_forward_hook(_other_hook)
    batch = tiny_gpt2.adapter.encode(PROMPTS, TARGETS)
    try:
        with pytest.raises(ValueError, match="does not match"):
            with torch.no_grad(), capture(tiny_gpt2.model, names) as cap:
                cap.mask = torch.ones(1, 3, dtype=torch.bool)  # wrong shape: the hook raises mid-forward
                tiny_gpt2.model(input_ids=batch["input_ids"])
        assert not modules[0]._forward_hooks
        assert list(modules[1]._forward_hooks.values()) == [_other_hook]
    finally:
        mine.remove()
    # The model still works and no hook of capture fires any more.
    with torch.no_grad():
        tiny_gpt2.model(input_ids=batch["input_ids"])


def test_capture_unknown_module(tiny_llama):
    with pytest.raises(ValueError, match="no modules"):
        with capture(tiny_llama.model, ["model.layers.7.mlp.down_proj"]):
            pass


def test_stop_after_skips_upper_layers(tiny_llama):
    adapter = tiny_llama.adapter
    low, high = adapter.module_name(0), adapter.module_name(3)
    batch = adapter.encode(PROMPTS, TARGETS)
    with torch.no_grad(), capture(tiny_llama.model, [low, high], grads=False) as cap:
        with stop_after(tiny_llama.model, low):
            result = tiny_llama.model(input_ids=batch["input_ids"])
            pytest.fail(f"forward was not stopped: {type(result)}")
    assert len(cap.keys[low]) == 1 and cap.keys[high] == []
    assert not adapter.get_module(low)._forward_hooks
    with pytest.raises(ValueError, match="no module"):
        with stop_after(tiny_llama.model, "nope"):
            pass


def test_stop_after_lets_other_errors_through(tiny_llama):
    low = tiny_llama.adapter.module_name(0)
    with pytest.raises(KeyError):
        with stop_after(tiny_llama.model, low):
            raise KeyError("x")
    assert not tiny_llama.adapter.get_module(low)._forward_hooks


def test_edit_output_replaces_and_restores(tiny_llama):
    adapter = tiny_llama.adapter
    name = adapter.module_name(2)
    module = adapter.get_module(name)
    mine = module.register_forward_hook(_other_hook)
    batch = adapter.encode(PROMPTS, TARGETS)
    seen = []
    try:
        with torch.no_grad():
            before = tiny_llama.model(input_ids=batch["input_ids"]).logits
            with edit_output(tiny_llama.model, name, lambda inputs, out: seen.append(out.shape) or out * 0 + 1):
                during = tiny_llama.model(input_ids=batch["input_ids"]).logits
            after = tiny_llama.model(input_ids=batch["input_ids"]).logits
            with pytest.raises(RuntimeError):
                with edit_output(tiny_llama.model, name, lambda inputs, out: out):
                    raise RuntimeError
        assert seen == [torch.Size([2, batch["input_ids"].shape[1], 32])]
        assert not torch.allclose(before, during)
        assert torch.equal(before, after)
        assert list(module._forward_hooks.values()) == [_other_hook]
    finally:
        mine.remove()
