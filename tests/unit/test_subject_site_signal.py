"""The subject-site signal benchmark's pieces: its gradients against the editors' value gradients,
its linear fit against a planted map."""
from __future__ import annotations

import pytest
import torch
from script_loader import load_script

from hyperedit.lm import cache_keys_and_value_grads
from hyperedit.requests import EditRequest

REQUESTS = [EditRequest(prompt="the eiffel tower is located in the city of", target="rome", subject="eiffel tower"),
            EditRequest(prompt="john plays", target="the piano and the violin", subject="john"),
            EditRequest(prompt="the capital of japan is", target="tokyo", subject="japan")]


@pytest.fixture(scope="module")
def signal():
    return load_script("benchmarks/subject_site_signal.py")


def test_gradients_are_the_value_gradients_at_both_sites(signal, tiny_llama):
    """At a Llama block's output the gradient equals that of its MLP output projection, which is what
    the hypernetwork editors read: at the subject site one row per fact, at the answer site the
    fact's rows summed."""
    adapter = tiny_llama.adapter
    layer = adapter.num_layers - 2
    module = adapter.module_names([layer], "down")[0]
    g_subject, g_answer = signal.gradients(tiny_llama, REQUESTS, layer, batch_size=2)
    prompts, targets = [r.prompt for r in REQUESTS], [r.target for r in REQUESTS]
    _, site = cache_keys_and_value_grads(adapter, prompts, targets, [module], token="subject",
                                         subjects=[r.subject for r in REQUESTS])[module]
    torch.testing.assert_close(g_subject, site, rtol=1e-5, atol=1e-6)
    _, rows = cache_keys_and_value_grads(adapter, prompts, targets, [module], token="ans")[module]
    counts = [len(tiny_llama.tokenizer(t, add_special_tokens=False)["input_ids"]) for t in targets]
    assert sum(counts) == rows.shape[0]
    summed = torch.stack([part.sum(0) for part in rows.split(counts)])
    torch.testing.assert_close(g_answer, summed, rtol=1e-5, atol=1e-6)
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
