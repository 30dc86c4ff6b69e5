"""Fact caches of meta-training: a cached step equals the uncached one; stale caches are rebuilt."""
from __future__ import annotations

import copy
import dataclasses
import logging

import pytest
import torch

from hyperedit.editors.hypernet import MalmenConfig, MalmenEditor, MendConfig, MendEditor
from hyperedit.lm import target_logits
from hyperedit.prefix import compute_prefix, frozen_prefix
from hyperedit.requests import EditRequest
from hyperedit.training import MetaTrainConfig, MetaTrainer
from hyperedit.training.fact_cache import load_or_build

from test_training import synthetic_facts


def _grads(trainer, step):
    trainer.editor.nets.zero_grad(set_to_none=True)
    record = trainer.step_gradients(step)
    return record, {n: p.grad.clone() for n, p in trainer.editor.nets.named_parameters() if p.grad is not None}


@pytest.fixture(params=["llama", "gemma3"])
def tiny_decoder(request):
    """The families with a frozen-prefix pass: Llama, and Gemma 3 (scaled embeddings, sliding
    window 4, a logit soft-cap) whose reference log-probabilities must go through the cap."""
    return request.getfixturevalue(f"tiny_{request.param}")


def test_prefix_pass_gives_the_full_model_logits(tiny_decoder):
    adapter = tiny_decoder.adapter
    pairs = [(r.prompt, r.target) for r in synthetic_facts()[:7]] + [("the", "city of paris is in france")]
    examples = compute_prefix(adapter, pairs, layer=2, batch_size=3, final=True)
    with torch.no_grad():
        full = target_logits(adapter, adapter.encode([p for p, _ in pairs], [t for _, t in pairs])).logits
        with frozen_prefix(adapter, 2):
            cached = target_logits(adapter, next(examples.batches(len(pairs)))).logits
        from_final = examples.reference_log_probs(adapter, len(pairs))[0]
    torch.testing.assert_close(cached, full, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(from_final, full.float().log_softmax(-1), rtol=1e-5, atol=1e-5)
    # the skipped layers are restored
    assert "forward" not in vars(adapter.get_module("model.layers.0"))


@pytest.mark.parametrize("editor_class,config_class,token", [(MalmenEditor, MalmenConfig, "ans"),
                                                              (MendEditor, MendConfig, "ans"),
                                                              (MalmenEditor, MalmenConfig, "subject")])
def test_cached_training_step_equals_the_uncached_step(tiny_decoder, tmp_path, editor_class, config_class, token):
    facts = [dataclasses.replace(r, subject=" ".join(r.prompt.split()[:2])) for r in synthetic_facts()[:40]]
    editor = editor_class.create(config_class(layers=[2, 3], rank=4, lm_batch_size=5, lr_init=1e-1, token=token),
                                 tiny_decoder, seed=1)
    trainers = {}
    for cached in (False, True):
        config = MetaTrainConfig(steps=1, n_edits=12, val_size=0, fact_cache=cached, cache_dir="", calibrate_lr=False)
        trainers[cached] = MetaTrainer(copy.deepcopy(editor), tiny_decoder, facts, [], config, tmp_path / str(cached))
        trainers[cached].prepare_caches()
    assert trainers[False].facts is None and trainers[True].facts is not None
    for step in (0, 3):  # the second after one update, so normaliser statistics differ from zero
        (rec_a, grads_a), (rec_b, grads_b) = _grads(trainers[False], step), _grads(trainers[True], step)
        assert rec_a["n_tokens"] == rec_b["n_tokens"]
        assert rec_b["gen_loss"] == pytest.approx(rec_a["gen_loss"], rel=1e-5)
        assert rec_b["loc_loss"] == pytest.approx(rec_a["loc_loss"], rel=1e-4, abs=1e-7)
        assert grads_a.keys() == grads_b.keys() and grads_a
        scale = max(float(g.abs().max()) for g in grads_a.values())
        for name in grads_a:
            torch.testing.assert_close(grads_b[name], grads_a[name], rtol=1e-4, atol=1e-5 * scale, msg=name)
        for trainer in trainers.values():
            trainer.optimizer.step()


def test_cached_validation_matches_evaluate(tiny_llama, tmp_path):
    facts = synthetic_facts()
    editor = MalmenEditor.create(MalmenConfig(layers=[2, 3], rank=4, lm_batch_size=8, lr_init=1e-1), tiny_llama, seed=1)
    out = {}
    for cached in (False, True):
        config = MetaTrainConfig(steps=1, n_edits=8, val_size=10, fact_cache=cached, cache_dir="", calibrate_lr=False)
        trainer = MetaTrainer(copy.deepcopy(editor), tiny_llama, facts[10:], facts[:10], config, tmp_path / str(cached))
        trainer.prepare_caches()
        trainer.editor.update_normalizers(trainer.step_inputs(list(range(8)))[0])
        out[cached] = trainer._validate()
    for metric in ("ES", "GS", "LS"):
        assert out[True][metric] == pytest.approx(out[False][metric], abs=1e-6), metric
    assert (tmp_path / "True" / "best" / "editor.safetensors").is_file()


def test_a_stale_cache_is_rebuilt_never_used(tiny_llama, tmp_path, caplog):
    adapter = tiny_llama.adapter
    facts = synthetic_facts()[:6]
    names = adapter.module_names([2, 3], "down")
    path = tmp_path / "cache.safetensors"
    first = load_or_build(path, adapter, facts, names, batch_size=4)
    with caplog.at_level(logging.INFO, logger="hyperedit.training.fact_cache"):
        again = load_or_build(path, adapter, facts, names, batch_size=4)
    assert "key matches" in caplog.text
    torch.testing.assert_close(again.keys[names[0]], first.keys[names[0]], rtol=0, atol=0)

    def rebuilt(**changes) -> str:
        caplog.clear()
        args = {"requests": facts, "names": names, **changes}
        with caplog.at_level(logging.INFO, logger="hyperedit.training.fact_cache"):
            cache = load_or_build(path, adapter, args["requests"], args["names"], batch_size=4)
        assert "stale" in caplog.text and "key matches" not in caplog.text
        return caplog.text, cache

    text, cache = rebuilt(names=adapter.module_names([1, 3], "down"))  # other layers
    assert "modules" in text and cache.rephrase.layer == 1
    changed = [dataclasses.replace(facts[0], target="rome" if facts[0].target != "rome" else "oslo")] + facts[1:]
    assert "data" in rebuilt(requests=changed)[0]  # other data
    load_or_build(path, adapter, facts, names, batch_size=4)
    with torch.no_grad():
        adapter.weight(names[1]).mul_(1.5)  # another model (same architecture and name)
    try:
        assert "weights" in rebuilt()[0]
    finally:
        with torch.no_grad():
            adapter.weight(names[1]).div_(1.5)


def test_log_lambda_starts_at_the_key_scale_and_has_its_own_step_size(tiny_llama, tmp_path):
    facts = synthetic_facts()[:30]
    editor = MalmenEditor.create(MalmenConfig(layers=[2, 3], rank=4, lm_batch_size=8, lr_init=1e-1), tiny_llama,
                                 seed=1)
    config = MetaTrainConfig(steps=1, n_edits=8, val_size=0, cache_dir="", lambda_init="trace", lambda_meta_lr=0.1,
                             meta_lr=1e-5)
    trainer = MetaTrainer(editor, tiny_llama, facts, [], config, tmp_path / "run")
    trainer.prepare_caches()
    trainer.calibrate()
    cache = trainer.step_inputs(trainer.batch_indices(0))[0]
    for name in editor.module_names:
        keys = cache[name][0].double()
        net, index = editor.nets.net_for(name)
        expected = (keys * keys).sum() / keys.shape[1]
        assert float(net.log_lambda[index].detach().exp()) == pytest.approx(float(expected), rel=1e-5)
    before = torch.cat([n.log_lambda.detach().clone() for n in editor.nets.nets.values()])
    trainer.train_step(0)
    after = torch.cat([n.log_lambda.detach() for n in editor.nets.nets.values()])
    # Adam's first step moves each coordinate by about its step size: 0.1 here, not meta_lr
    assert torch.allclose((after - before).abs(), torch.full_like(before, 0.1), rtol=1e-3)


def test_a_file_that_is_not_a_fact_cache_is_never_replaced(tiny_llama, tmp_path):
    from hyperedit.errors import HyperEditError
    from hyperedit.training.fact_cache import load_or_build

    mine = tmp_path / "facts.safetensors"
    mine.write_bytes(b"my own file")
    names = tiny_llama.adapter.module_names([1])
    requests = [EditRequest("john plays the sport of", "tennis")]
    with pytest.raises(HyperEditError, match="not a fact cache"):
        load_or_build(mine, tiny_llama.adapter, requests, names)
    assert mine.read_bytes() == b"my own file"
