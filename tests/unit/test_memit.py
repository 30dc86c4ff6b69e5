"""MEMIT: closed-form normal equations, subject location, and a planted fact flip on a tiny model."""
from pathlib import Path

import pytest
import torch

from hyperedit.editors import get_editor
from hyperedit.editors.locate import LocateConfig, TargetCache, memit_map, subject_position
from hyperedit.requests import EditRequest

CORPUS = str(Path(__file__).parents[1] / "fixtures" / "data" / "corpus.txt")
# A random tiny model passes little information between positions, so the planted facts end in the
# subject (or have none: last-token fallback); no prefixes (in a random model a prefix changes the keys a
# lot, and MEMIT averages keys over prefixes) and no weight decay.
TINY = dict(layers=(1, 2), stats_corpus=CORPUS, n_prefixes=0, clamp_norm_factor=100.0,
            v_steps=25, v_weight_decay=0.0, kl_factor=0.0)
FACTS = [EditRequest(prompt="the famous tower of paris", target="rome", subject="paris"),
         EditRequest(prompt="the music of john", target="violin")]


def top_token(lm, prompt):
    enc = lm.tokenizer(prompt, return_tensors="pt")
    with torch.no_grad():
        return lm.tokenizer.decode(lm.model(**enc).logits[0, -1].argmax()).strip()


def test_memit_solution_satisfies_normal_equations():
    g = torch.Generator().manual_seed(0)
    n, d_in, d_out, lam = 7, 12, 5, 3.0
    K, R = torch.randn(n, d_in, generator=g), torch.randn(n, d_out, generator=g)
    A = torch.randn(50, d_in, generator=g)
    C = A.T @ A / 50
    S = memit_map(K, C, lam) @ R.double()
    lhs = (lam * C.double() + K.double().T @ K.double()) @ S
    torch.testing.assert_close(lhs, K.double().T @ R.double(), rtol=1e-9, atol=1e-9)
    # with lam -> 0 and fewer keys than dimensions, the keys are written exactly
    S0 = memit_map(K, C, 1e-9) @ R.double()
    torch.testing.assert_close(K.double() @ S0, R.double(), rtol=1e-5, atol=1e-5)


def test_config_validation():
    with pytest.raises(ValueError):
        LocateConfig(layers=(5, 4))
    with pytest.raises(ValueError):
        LocateConfig(v_steps=0)
    assert LocateConfig(layers=[3]).layers == (3,)


def test_subject_position_is_last_subject_token(tiny_llama):
    text = "the eiffel tower is located in paris"
    ids = tiny_llama.tokenizer(text)["input_ids"]
    pos = subject_position(tiny_llama, text, "eiffel tower")
    assert tiny_llama.tokenizer.decode([ids[pos]]).strip() == "tower"
    assert subject_position(tiny_llama, text, None) == len(ids) - 1
    # after a prefix, the first occurrence after the prefix is used
    assert subject_position(tiny_llama, "paris . " + text, "paris", start=8) == len(ids) + 2 - 1


def test_memit_flips_planted_facts_and_leaves_model_unchanged(tiny_llama):
    lm = tiny_llama
    assert [top_token(lm, r.prompt) for r in FACTS] != [r.target for r in FACTS]
    editor = get_editor("memit", lam=1e-3, **TINY)
    before = {n: p.clone() for n, p in lm.model.named_parameters()}
    delta = editor.edit(lm, FACTS)
    assert all(torch.equal(before[n], p) for n, p in lm.model.named_parameters())
    assert set(delta.shifts) == set(lm.adapter.module_names([1, 2]))
    with delta.applied(lm.model):
        assert [top_token(lm, r.prompt) for r in FACTS] == [r.target for r in FACTS]
    trunc = editor.last_info["truncation"]
    assert len(trunc["realised_fraction"]) == 2


def test_target_cache_reuses_vectors(tiny_llama):
    cache = TargetCache()
    a = get_editor("memit", lam=1e-3, **{**TINY, "v_steps": 3})
    a.target_cache = cache
    first = a.targets(tiny_llama, FACTS)
    assert first.n_cached == 0 and len(cache) == 2
    b = get_editor("memit", lam=5.0, **{**TINY, "v_steps": 3})
    b.target_cache = cache
    second = b.targets(tiny_llama, FACTS[::-1])
    assert second.n_cached == 2
    torch.testing.assert_close(second.z, first.z.flip(0))


def test_target_cache_round_trips_through_a_file(tiny_llama, tmp_path):
    cache = TargetCache()
    editor = get_editor("memit", **{**TINY, "v_steps": 2})
    editor.target_cache = cache
    first = editor.targets(tiny_llama, FACTS)
    cache.save(tmp_path / "targets.safetensors")
    loaded = TargetCache().load(tmp_path / "targets.safetensors")
    assert len(loaded) == len(cache) == 2
    editor.target_cache = loaded
    again = editor.targets(tiny_llama, FACTS)
    assert again.n_cached == 2 and torch.equal(again.z, first.z) and torch.equal(again.h, first.h)
    assert len(TargetCache().load(tmp_path / "missing.safetensors")) == 0


@pytest.mark.parametrize("family", ["tiny_llama", "tiny_gemma3"])
def test_targets_from_frozen_prefix_equal_full_passes(family, request):
    """Steps that start at the block above the injection point (hidden states below computed once)
    give the targets of full passes: same steps, vectors equal to float32 rounding."""
    from hyperedit.editors.locate import compute_targets

    lm = request.getfixturevalue(family)
    cfg = LocateConfig(**{**TINY, "kl_factor": 0.5, "v_steps": 4, "v_stop_nll": 0.0})
    facts = FACTS + [EditRequest(prompt="the capital city of spain", target="lisbon", subject="spain")]
    prefixes = ["", "a short note. "]
    full = compute_targets(lm, facts, 1, prefixes, cfg, progress=False, reuse_prefix=False)
    cached = compute_targets(lm, facts, 1, prefixes, cfg, progress=False, reuse_prefix=True)
    assert torch.equal(full.steps, cached.steps)
    torch.testing.assert_close(cached.h, full.h, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(cached.z, full.z, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(cached.nll, full.nll, rtol=1e-4, atol=1e-6)
