"""The subject-site signal benchmark's pieces: its gradients against the editors' value gradients,
its linear fit against a planted map."""
from __future__ import annotations

import pytest
import torch
from script_loader import load_script

from hyperedit.requests import EditRequest

REQUESTS = [EditRequest(prompt="the eiffel tower is located in the city of", target="rome", subject="eiffel tower"),
            EditRequest(prompt="john plays", target="the piano and the violin", subject="john"),
            EditRequest(prompt="the capital of japan is", target="tokyo", subject="japan")]


@pytest.fixture(scope="module")
def signal():
    return load_script("research/subject_site_signal.py")


def _block_output_gradients(lm, layer):
    """Reference: autograd of the summed per-request mean target NLL at block ``layer``'s output."""
    from hyperedit.editors.locate import layer_module, subject_position
    from hyperedit.hooks import edit_output
    from hyperedit.lm import prediction_mask, target_logits

    batch = lm.adapter.encode([r.prompt for r in REQUESTS], [r.target for r in REQUESTS])
    held = {}

    def tap(inputs, out):
        held["zero"] = torch.zeros_like(out, requires_grad=True)
        return out + held["zero"]

    with edit_output(lm.model, layer_module(lm, layer), tap):
        out = target_logits(lm.adapter, batch)
        loss = out.per_example_mean(out.token_nll()).sum()
    (grad,) = torch.autograd.grad(loss, held["zero"])
    pos = torch.tensor([subject_position(lm, r.prompt, r.subject) for r in REQUESTS])
    answer = (grad * prediction_mask(batch["labels"], False)[..., None]).sum(1)
    return grad[torch.arange(len(REQUESTS)), pos], answer


def test_gradients_are_the_block_output_gradients_at_both_sites(signal, tiny_llama):
    """The value gradients the benchmark reads (MLP output projection, one row per fact at the
    subject site, the fact's rows summed at the answer site) equal the gradients at the block's
    output, where MEMIT's targets live (a Llama block adds its MLP output unscaled)."""
    layer = tiny_llama.adapter.num_layers - 2
    g_subject, g_answer = signal.gradients(tiny_llama, REQUESTS, layer, batch_size=2)
    ref_subject, ref_answer = _block_output_gradients(tiny_llama, layer)
    assert g_subject.shape == g_answer.shape == ref_subject.shape
    torch.testing.assert_close(g_subject, ref_subject, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(g_answer, ref_answer, rtol=1e-5, atol=1e-6)
    assert g_subject.abs().sum() > 0 and g_answer.abs().sum() > 0


def test_linear_fit_recovers_a_planted_map(signal):
    gen = torch.Generator().manual_seed(0)
    n, d = 200, 8
    W_true = torch.randn(d, d, generator=gen)
    G = torch.randn(n, d, generator=gen)
    W, alpha = signal.fit_linear(G, G @ W_true)
    assert alpha == pytest.approx(1e-3)  # noise-free: the smallest ridge predicts best
    held_out = torch.randn(20, d, generator=gen)
    cos = signal._cos(held_out @ W, held_out @ W_true)
    assert float(cos.min()) > 0.999
