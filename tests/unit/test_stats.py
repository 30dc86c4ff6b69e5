"""Key statistics: correct second moments, streaming with early stop, cache behaviour."""
from pathlib import Path

import pytest
import torch

from hyperedit.hooks import capture
from hyperedit.stats import corpus_texts, key_second_moments, stats_cache_dir

TEXTS = ["the eiffel tower is in paris", "john plays the violin", "the cat and the dog",
         "rome is the capital of italy", "mary speaks french and german", "a b c"]


def _manual(lm, module, texts):
    """E[k k^T] over non-padding tokens, one text at a time (no padding, no early stop)."""
    total, count = 0, 0
    for text in texts:
        enc = lm.tokenizer(text, return_tensors="pt")
        keep = ~torch.isin(enc["input_ids"], torch.tensor(lm.tokenizer.all_special_ids))
        with capture(lm.model, [module], grads=False) as cap, torch.no_grad():
            cap.mask = keep
            lm.model(**enc)
        k = cap.key(module).double()
        total, count = total + k.T @ k, count + len(k)
    return total / count


def test_second_moment_matches_manual_computation(tiny_llama):
    modules = tiny_llama.adapter.module_names([0, 2])
    got = key_second_moments(tiny_llama, modules, corpus=TEXTS, n_samples=10, batch_size=4,
                             dtype="float64", use_cache=False, progress=False)
    for m in modules:
        assert got[m].shape == (64, 64)
        expected = _manual(tiny_llama, m, TEXTS)
        # The keys come from float32 forward passes (padded batches here, one text at a time there), so
        # the moments agree to float32 precision only, whatever the float64 accumulation; entries near
        # zero carry the rounding of the largest ones, hence an absolute tolerance on that scale.
        torch.testing.assert_close(got[m], expected, rtol=1e-5, atol=1e-5 * float(expected.abs().max()))
    assert not torch.equal(got[modules[0]], got[modules[1]])


def test_cache_hit_equals_recomputation_and_key_separates_settings(tiny_llama, tmp_path, monkeypatch):
    monkeypatch.setenv("HYPEREDIT_STATS_CACHE", str(tmp_path / "stats"))
    module = tiny_llama.adapter.module_names([1])
    first = key_second_moments(tiny_llama, module, corpus=TEXTS, n_samples=5, progress=False)
    files = list((tmp_path / "stats").rglob("*.safetensors"))
    assert len(files) == 1 and "n5" in files[0].name and "layers.1.mlp" in files[0].name
    hit = key_second_moments(tiny_llama, module, corpus=TEXTS, n_samples=5, progress=False)
    fresh = key_second_moments(tiny_llama, module, corpus=TEXTS, n_samples=5, use_cache=False, progress=False)
    assert torch.equal(hit[module[0]], first[module[0]])
    assert torch.equal(hit[module[0]], fresh[module[0]])
    other = key_second_moments(tiny_llama, module, corpus=TEXTS, n_samples=4, progress=False)
    assert len(list((tmp_path / "stats").rglob("*.safetensors"))) == 2
    assert not torch.equal(other[module[0]], first[module[0]])


def test_corrupt_cache_entry_is_recomputed(tiny_llama, tmp_path, monkeypatch):
    monkeypatch.setenv("HYPEREDIT_STATS_CACHE", str(tmp_path / "stats"))
    module = tiny_llama.adapter.module_names([1])
    first = key_second_moments(tiny_llama, module, corpus=TEXTS, progress=False)[module[0]]
    (path,) = list((tmp_path / "stats").rglob("*.safetensors"))
    path.write_bytes(b"not a safetensors file")
    again = key_second_moments(tiny_llama, module, corpus=TEXTS, progress=False)[module[0]]
    assert torch.equal(first, again)


def test_corpus_sources(tmp_path, monkeypatch):
    monkeypatch.setenv("HYPEREDIT_STATS_CACHE", str(tmp_path / "s"))
    assert stats_cache_dir() == tmp_path / "s"
    fixture = Path(__file__).parents[1] / "fixtures" / "data" / "corpus.txt"
    texts = corpus_texts(str(fixture))
    assert texts and all(t.strip() for t in texts)
    spread = corpus_texts([f"text {i}" for i in range(10)], n_samples=3)
    assert spread == ["text 0", "text 3", "text 6"]


def test_default_corpus_is_used_when_none_given():
    data = Path(__file__).parents[2].parent / "shared" / "data"
    if not (data / "fever").is_dir():
        pytest.skip("shared benchmark data not available")
    texts = corpus_texts(None, n_samples=50)
    assert len(texts) == 50 and len(set(texts)) == 50
