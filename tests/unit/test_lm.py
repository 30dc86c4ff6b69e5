"""Cheap LM passes: target logits, key / value-gradient caching, trainable_weights."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from hyperedit.lm import (cache_keys_and_value_grads, iter_chunks, prediction_mask, subject_token_index,
                          target_logits, target_token_mask, trainable_weights)

PROMPTS = ["the eiffel tower is located in the city of", "john plays", "the capital of japan is",
           "mary speaks", "the louvre museum is in"]
TARGETS = ["rome", "the piano and the violin", "tokyo", "french", "paris"]


def _full_logits(lm, batch):
    model = lm.model
    with torch.no_grad():
        if lm.adapter.is_seq2seq:
            labels = batch["labels"]
            start = torch.full((labels.shape[0], 1), model.config.decoder_start_token_id)
            dec = torch.cat([start, labels[:, :-1]], dim=1)
            dec = dec.masked_fill(dec == -100, model.config.pad_token_id)
            return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                         decoder_input_ids=dec).logits
        return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits


def test_target_logits_equal_full_logits(tiny_any):
    adapter = tiny_any.adapter
    batch = adapter.encode(PROMPTS, TARGETS)
    labels = batch["labels"]
    full = _full_logits(tiny_any, batch)
    with torch.no_grad():
        out = target_logits(adapter, batch)
    n_target_tokens = int((labels != -100).sum())
    assert out.logits.shape == (n_target_tokens, full.shape[-1])
    if adapter.is_seq2seq:
        mask = labels != -100
        expected_targets = labels[mask]
    else:
        mask = torch.zeros_like(labels, dtype=torch.bool)
        mask[:, :-1] = labels[:, 1:] != -100
        expected_targets = labels[:, 1:][labels[:, 1:] != -100]
    assert torch.allclose(out.logits, full[mask], atol=1e-5)
    assert torch.equal(out.targets, expected_targets)
    per_example = (labels != -100).sum(1)
    assert torch.equal(out.example, torch.repeat_interleave(torch.arange(len(PROMPTS)), per_example))
    assert out.n_examples == len(PROMPTS)

    # loss(): mean over examples of the mean target-token NLL, computed here by hand.
    logp = F.log_softmax(full.float(), -1)
    by_hand = []
    for i in range(len(PROMPTS)):
        pos = mask[i].nonzero().flatten()
        tgt = labels[i][labels[i] != -100]
        by_hand.append(-logp[i, pos, tgt].mean())
    assert float(out.loss()) == pytest.approx(float(torch.stack(by_hand).mean()), rel=1e-5)
    assert torch.allclose(out.per_example_mean(out.token_nll()), torch.stack(by_hand), atol=1e-5)


def test_prediction_and_target_masks():
    labels = torch.tensor([[-100, -100, 5, 6, -100], [-100, 7, -100, -100, -100]])
    assert prediction_mask(labels, seq2seq=False).tolist() == [[False, True, True, False, False],
                                                               [True, False, False, False, False]]
    assert prediction_mask(labels, seq2seq=True).tolist() == (labels != -100).tolist()
    assert target_token_mask(labels).tolist() == (labels != -100).tolist()


def test_iter_chunks():
    assert list(iter_chunks(list(range(5)), 2)) == [[0, 1], [2, 3], [4]]
    assert list(iter_chunks([], 3)) == []
    with pytest.raises(ValueError):
        list(iter_chunks([1], 0))


@pytest.mark.parametrize("fixture, token", [("tiny_llama", "ans"), ("tiny_gpt2", "ans"), ("tiny_t5", "ans"),
                                            ("tiny_llama", "all"), ("tiny_t5", "all")])
def test_cache_chunking_gives_same_keys_and_grads(request, fixture, token):
    tiny_any = request.getfixturevalue(fixture)
    adapter = tiny_any.adapter
    names = adapter.module_names([0, adapter.num_layers - 1])
    one = cache_keys_and_value_grads(adapter, PROMPTS, TARGETS, names, chunk_size=1, token=token)
    eight = cache_keys_and_value_grads(adapter, PROMPTS, TARGETS, names, chunk_size=8, token=token)
    for name in names:
        k1, g1 = one[name]
        k8, g8 = eight[name]
        d_in, d_out = adapter.in_out_shape(name)
        assert k1.shape[1] == d_in and g1.shape[1] == d_out and k1.shape[0] == g1.shape[0]
        assert k1.shape == k8.shape and g1.shape == g8.shape
        assert torch.allclose(k1, k8, atol=1e-5)
        assert torch.allclose(g1, g8, atol=1e-6)
        assert g1.abs().sum() > 0
    if token == "ans":
        assert one[names[0]][0].shape[0] == sum(len(tiny_any.tokenizer(t)["input_ids"]) for t in TARGETS)
    # Nothing leaks: the model is frozen again and no hooks or grads are left behind.
    assert all(not p.requires_grad and p.grad is None for p in tiny_any.model.parameters())
    assert all(not m._forward_hooks for m in tiny_any.model.modules())


def test_cache_keys_and_value_grads_match_single_example(tiny_llama):
    """Each example's gradient is that of its own mean target NLL (independent of the batch)."""
    adapter = tiny_llama.adapter
    name = adapter.module_name(2)
    both = cache_keys_and_value_grads(adapter, PROMPTS[:2], TARGETS[:2], [name], chunk_size=8)[name]
    first = cache_keys_and_value_grads(adapter, PROMPTS[:1], TARGETS[:1], [name])[name]
    n = first[0].shape[0]
    assert torch.allclose(both[0][:n], first[0], atol=1e-5)
    assert torch.allclose(both[1][:n], first[1], atol=1e-6)


def test_cache_rejects_bad_token(tiny_llama):
    with pytest.raises(ValueError, match="token"):
        cache_keys_and_value_grads(tiny_llama.adapter, PROMPTS, TARGETS, [tiny_llama.adapter.module_name(0)],
                                   token="nowhere")


def test_subject_site_reads_the_last_subject_token_of_each_prompt(tiny_llama):
    """token="subject": one row per example, the keys and value gradients of the "all" site at the
    last subject token (the last prompt token without a subject, or when it does not occur)."""
    adapter = tiny_llama.adapter
    subjects = ["eiffel tower", None, "japan", "mary", "not in the prompt"]
    names = adapter.module_names([0, adapter.num_layers - 1])
    site = cache_keys_and_value_grads(adapter, PROMPTS, TARGETS, names, chunk_size=2, token="subject",
                                      subjects=subjects)
    every = cache_keys_and_value_grads(adapter, PROMPTS, TARGETS, names, chunk_size=8, token="all")
    lengths = adapter.encode(PROMPTS, TARGETS)["attention_mask"].sum(1).tolist()
    starts = [sum(lengths[:i]) for i in range(len(PROMPTS))]
    picked = []
    for start, prompt, subject in zip(starts, PROMPTS, subjects):
        picked.append(start + subject_token_index(adapter, prompt, subject if subject and subject in prompt else None))
    assert picked[0] - starts[0] == len(tiny_llama.tokenizer("the eiffel tower")["input_ids"]) - 1
    assert picked[1] - starts[1] == len(tiny_llama.tokenizer(PROMPTS[1])["input_ids"]) - 1
    for name in names:
        k, g = site[name]
        assert k.shape[0] == g.shape[0] == len(PROMPTS)
        torch.testing.assert_close(k, every[name][0][picked], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(g, every[name][1][picked], rtol=1e-5, atol=1e-6)
        assert g.abs().sum() > 0


def test_trainable_weights(tiny_llama):
    adapter = tiny_llama.adapter
    low, high = adapter.module_name(0), adapter.module_name(2)
    other = adapter.module_name(3)
    adapter.weight(other).requires_grad_(True)  # the caller's own setting must survive
    flags = []
    hooks = [adapter.get_module(n).register_forward_hook(lambda m, i, o: flags.append(o.requires_grad))
             for n in (low, high)]
    try:
        with trainable_weights(adapter, [high]) as weights:
            assert weights == [adapter.weight(high)] and weights[0].requires_grad
            batch = adapter.encode(PROMPTS[:2], TARGETS[:2])
            target_logits(adapter, batch).loss().backward()
            # Below the trainable module nothing requires grad, so backward never reaches it.
            assert flags == [False, True]
            assert adapter.weight(low).grad is None
            assert adapter.weight(high).grad is not None and adapter.weight(high).grad.abs().sum() > 0
        assert adapter.weight(high).grad is None  # cleared on exit
        assert not adapter.weight(high).requires_grad and not adapter.weight(low).requires_grad
        assert adapter.weight(other).requires_grad
    finally:
        for h in hooks:
            h.remove()
        adapter.weight(other).requires_grad_(False)
        adapter.weight(other).grad = None


def test_trainable_weights_restores_after_error(tiny_gpt2):
    adapter = tiny_gpt2.adapter
    name = adapter.module_name(1)
    with pytest.raises(RuntimeError):
        with trainable_weights(adapter, [name]):
            raise RuntimeError
    assert not adapter.weight(name).requires_grad
