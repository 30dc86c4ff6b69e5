"""Key statistics: correct second moments, streaming with early stop, cache behaviour."""
import logging
from pathlib import Path

import pytest
import torch

from hyperedit.hooks import capture
from hyperedit.stats import (CORPUS_ENV, SHIPPED_DIR, compute, corpus_fingerprint, corpus_texts, key_second_moments,
                             list_stats, stats_cache_dir, stats_keys, store)
from hyperedit.stats.store import pack_triu, unpack_triu

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


def test_packaged_corpus_is_the_default_and_the_env_names_another(tmp_path, monkeypatch):
    monkeypatch.delenv(CORPUS_ENV, raising=False)
    texts = corpus_texts(None, n_samples=50)
    assert len(texts) == 50 and len(set(texts)) == 50
    assert texts == corpus_texts("packaged", n_samples=50)
    mine = tmp_path / "mine.txt"
    mine.write_text("one text\nanother text\n")
    monkeypatch.setenv(CORPUS_ENV, str(mine))
    assert corpus_texts(None) == ["one text", "another text"]


def test_shipped_statistics_match_the_packaged_corpus():
    """A shipped file made from another corpus than the packaged one would never be used: fail here."""
    shipped = list_stats([SHIPPED_DIR])
    if not shipped:
        pytest.skip("no key statistics shipped yet: hyperedit stats export --layers 4-8,24-29 --packed "
                    "--out src/hyperedit/stats/shipped (docs/statistics.md)")
    for row in shipped:
        texts = corpus_texts("packaged", int(row["n_texts"]))
        assert row["corpus"] == corpus_fingerprint(texts), row["file"]
        assert row["layout"] in ("triu-float16", "triu-float32") and int(row["n_tokens"]) > 10_000


def test_packed_triangle_round_trip():
    a = torch.randn(7, 5, dtype=torch.float64)
    C = (a @ a.T).float()
    back = unpack_triu(pack_triu(C), 7)
    assert torch.equal(back, back.T)
    torch.testing.assert_close(back, C, rtol=1e-3, atol=1e-3 * float(C.abs().max()))


def test_shipped_file_is_used_only_when_its_key_matches(tiny_llama, tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("HYPEREDIT_STATS_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(store, "SHIPPED_DIR", tmp_path / "shipped")
    module = tiny_llama.adapter.module_names([1])
    exact = key_second_moments(tiny_llama, module, corpus=TEXTS, use_cache=False, progress=False)[module[0]]
    (key,) = stats_keys(tiny_llama, module, TEXTS, 128)
    store.write_stats(store.shipped_file(key), exact, key, n_tokens=30, dtype="float32", packed="float16")
    got = key_second_moments(tiny_llama, module, corpus=TEXTS, progress=False)[module[0]]
    torch.testing.assert_close(got, exact, rtol=1e-3, atol=1e-3 * float(exact.abs().max()))
    assert not list((tmp_path / "cache").rglob("*.safetensors")), "the shipped file was used, nothing computed"
    # a file under the right name whose metadata names another corpus: refused aloud, recomputed
    stale = store.StatsKey(key.model, key.module, "0" * 16, key.n_texts, key.max_length)
    store.write_stats(store.shipped_file(key), exact * 2, stale, n_tokens=30, dtype="float32", packed="float16")
    with caplog.at_level(logging.WARNING):
        again = key_second_moments(tiny_llama, module, corpus=TEXTS, progress=False)[module[0]]
    assert "do not match" in caplog.text and "other settings" in caplog.text
    assert torch.equal(again, exact.float())


def test_interrupted_computation_resumes(tiny_llama, tmp_path, monkeypatch):
    monkeypatch.setenv("HYPEREDIT_STATS_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(compute, "CHECKPOINT_SECONDS", 0.0)
    module = tiny_llama.adapter.module_names([2])
    texts = [f"text number {i} about the river" + " and more" * (i % 4) for i in range(12)]
    whole = key_second_moments(tiny_llama, module, corpus=texts, batch_size=2, use_cache=False,
                               dtype="float64", progress=False)[module[0]]
    calls = {"n": 0}

    def stop_on_fourth(*_):
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt

    hook = tiny_llama.model.register_forward_pre_hook(stop_on_fourth)
    with pytest.raises(KeyboardInterrupt):
        key_second_moments(tiny_llama, module, corpus=texts, batch_size=2, dtype="float64", progress=False)
    hook.remove()
    (partial,) = list((tmp_path / "cache").rglob("partial-*.safetensors"))
    calls["n"] = 0
    hook = tiny_llama.model.register_forward_pre_hook(lambda *_: calls.__setitem__("n", calls["n"] + 1))
    resumed = key_second_moments(tiny_llama, module, corpus=texts, batch_size=2, dtype="float64",
                                 progress=False)[module[0]]
    hook.remove()
    assert calls["n"] == 3, "the three batches already summed were not recomputed"
    assert not partial.exists()
    torch.testing.assert_close(resumed, whole, rtol=1e-12, atol=0)


def test_packed_float16_never_stores_an_overflow(tmp_path, caplog):
    """A second moment beyond float16's range (SmolLM2 layer 28 has one) is stored in float32."""
    from hyperedit.stats import store

    a = torch.randn(6, 4, dtype=torch.float64)
    C = (a @ a.T).float()
    C[2, 2] = 1.0e5
    key = store.StatsKey("m", "layer.2", "c", 3, 8)
    path = tmp_path / "s.safetensors"
    store.write_stats(path, C, key, n_tokens=30, dtype="float32", packed="float16")
    assert store.read_meta(path)["layout"] == "triu-float32"
    back = store.read_stats(path, key)
    assert torch.isfinite(back).all() and torch.equal(back, C)
    assert "exceed float16" in caplog.text
