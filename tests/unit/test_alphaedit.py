"""AlphaEdit: projected normal equations, exact preservation of null-space keys, sequential state."""
import torch

from hyperedit.editors import get_editor
from hyperedit.editors.locate import AlphaEdit, alphaedit_map, null_space_projector
from hyperedit.stats import key_second_moments

from test_memit import FACTS, TINY, top_token


def _random_problem(seed=0, n=6, d_in=16, d_out=5, n_pre=9):
    g = torch.Generator().manual_seed(seed)
    K0 = torch.randn(n_pre, d_in, generator=g, dtype=torch.float64)  # preserved keys, rank 9 < 16
    K = torch.randn(n, d_in, generator=g, dtype=torch.float64)
    R = torch.randn(n, d_out, generator=g, dtype=torch.float64)
    Kp = torch.randn(3, d_in, generator=g, dtype=torch.float64)
    return K0, K, R, Kp


def test_alphaedit_solution_satisfies_projected_normal_equations():
    K0, K, R, Kp = _random_problem()
    P = null_space_projector(K0.T @ K0 / len(K0), 1e-8)
    l2 = 0.7
    S = alphaedit_map(K, P, Kp.T @ Kp, l2) @ R
    lhs = (P @ (K.T @ K + Kp.T @ Kp) + l2 * torch.eye(16, dtype=torch.float64)) @ S
    torch.testing.assert_close(lhs, P @ K.T @ R, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(P @ S, S, rtol=1e-9, atol=1e-9)  # the update lies in range(P)


def test_preserved_keys_outputs_unchanged_to_numerical_precision():
    K0, K, R, _ = _random_problem(seed=1)
    P = null_space_projector(K0.T @ K0 / len(K0), 1e-8)
    assert round(float(torch.trace(P))) == 16 - 9
    S = alphaedit_map(K, P, None, 1e-3) @ R
    assert float((K0 @ S).abs().max()) < 1e-10 * float(S.abs().max())
    # and the edit keys still get (most of) their residual: they are not all in the preserved span
    assert float((K @ S - R).norm() / R.norm()) < 1.0
    # relative threshold picks the same null space here
    torch.testing.assert_close(null_space_projector(K0.T @ K0, 1e-10, relative=True), P, rtol=0, atol=1e-8)


def test_alphaedit_on_tiny_model_flips_facts_and_preserves_corpus_keys(tiny_llama, tmp_path, monkeypatch):
    lm = tiny_llama
    monkeypatch.setenv("HYPEREDIT_STATS_CACHE", str(tmp_path / "stats"))
    # a corpus of few tokens gives keys of rank < d_in (64): an exact null space exists
    corpus = ["the cat", "a dog", "rome is old", "blue and red"]
    cfg = {**TINY, "stats_corpus": None}
    editor = get_editor("alphaedit", l2=1e-4, nullspace_threshold=1e-10, **cfg)
    editor._stats = key_second_moments(lm, editor.modules(lm), corpus=corpus, progress=False)
    delta = editor.edit(lm, FACTS)
    with delta.applied(lm.model):
        assert [top_token(lm, r.prompt) for r in FACTS] == [r.target for r in FACTS]
    from hyperedit.hooks import capture
    for name in editor.modules(lm):
        with capture(lm.model, [name], grads=False) as cap, torch.no_grad():
            for text in corpus:
                lm.model(**lm.tokenizer(text, return_tensors="pt"))
        keys = cap.key(name).double()
        S = lm.adapter.param_to_in_out(name, delta.shifts[name]).double()
        assert float((keys @ S).norm()) < 1e-4 * float(keys.norm() * S.norm())
    assert editor.n_edits == 2


def test_sequential_state_accumulates_and_round_trips(tiny_llama, tmp_path):
    lm = tiny_llama
    editor = get_editor("alphaedit", l2=1e-4, nullspace_threshold=1e-6, **{**TINY, "v_steps": 2})
    assert editor.stream_state()[0]["n_edits"] == 0
    editor.edit(lm, FACTS[:1])
    one = {k: v.clone() for k, v in editor.stream_state()[0].items()}
    editor.edit(lm, FACTS[1:])
    two = editor.stream_state()[0]
    assert int(two["n_edits"]) == 2
    for key in one:
        if key.startswith("kp/"):
            assert float((two[key] - one[key]).norm()) > 0  # the second batch's keys were added
    editor.save(tmp_path / "ed")
    loaded = AlphaEdit.load(tmp_path / "ed")
    assert loaded.config == editor.config
    for key, value in two.items():
        assert torch.equal(loaded.stream_state()[0][key], value)
    # the earlier keys constrain the next solve: same K, different map once K_p is known
    K = torch.randn(1, 64, dtype=torch.float64)
    name = editor.modules(lm)[0]
    loaded._stats = editor._stats
    fresh = get_editor("alphaedit", l2=1e-4, nullspace_threshold=1e-6, **TINY)
    fresh._stats = editor._stats
    remembering = loaded.solver_map(lm, name, K)
    assert not torch.allclose(remembering, fresh.solver_map(lm, name, K))
    # memory_weight scales K_p in the solve: 0 forgets the earlier edits, 0.5 is in between
    loaded.config.memory_weight = 0.0
    torch.testing.assert_close(loaded.solver_map(lm, name, K), fresh.solver_map(lm, name, K))
    loaded.config.memory_weight = 0.5
    half = loaded.solver_map(lm, name, K)
    assert not torch.allclose(half, remembering) and not torch.allclose(half, fresh.solver_map(lm, name, K))
    loaded.config.memory_weight = 1.0
    loaded.reset()
    torch.testing.assert_close(loaded.solver_map(lm, name, K), fresh.solver_map(lm, name, K))


def _current_gram(lm, editor, requests, name):
    from hyperedit.editors.locate import keys_and_hidden

    K, _ = keys_and_hidden(lm, requests, name, editor.prefixes(lm), lm.adapter.layer_of(name))
    return K.double().T @ K.double()


def test_refresh_rebuilds_the_memory_from_the_keys_the_edited_model_reads(tiny_llama):
    import pytest

    from hyperedit.errors import HyperEditError

    lm = tiny_llama
    editor = get_editor("alphaedit", l2=1e-4, nullspace_threshold=1e-6, refresh_every=1, **{**TINY, "v_steps": 2})
    names = editor.modules(lm)
    first = editor.edit(lm, FACTS[:1])
    remembered = {n: editor.keys.get(n).clone() for n in names}
    with first.applied(lm.model):
        # one edit: its keys were read with its own lower layers' shifts applied, as the edited model reads them
        editor.refresh_keys(lm)
        for n in names:
            torch.testing.assert_close(editor.keys.get(n), remembered[n], rtol=1e-5, atol=1e-6)
        second = editor.edit(lm, FACTS[1:])  # a stream: the second edit is made on the model carrying the first
        assert editor.refreshed_at == 1 and editor.n_edits == 2 and len(editor.edited) == 2
        stale = {n: editor.keys.get(n).clone() for n in names}
        with second.applied(lm.model):
            editor.refresh_keys(lm)
            for n in names:
                torch.testing.assert_close(editor.keys.get(n), _current_gram(lm, editor, FACTS, n), rtol=1e-5,
                                           atol=1e-6)
            # the lowest module's input is not edited: its keys stay; above it the first fact's keys moved
            torch.testing.assert_close(editor.keys.get(names[0]), stale[names[0]], rtol=1e-5, atol=1e-6)
            moved = editor.keys.get(names[1]) - stale[names[1]]
            assert float(moved.norm()) > 1e-3 * float(stale[names[1]].norm())
    # the edited requests are part of the sequential state
    state = editor.stream_state()[0]
    other = get_editor("alphaedit", l2=1e-4, nullspace_threshold=1e-6, refresh_every=1, **TINY)
    other.load_stream_state(state)
    assert other.edited == editor.edited and other.refreshed_at == 2
    for key, value in state.items():
        assert torch.equal(other.stream_state()[0][key], value)
    # a state saved without them cannot be refreshed
    stripped = get_editor("alphaedit", l2=1e-4, nullspace_threshold=1e-6, refresh_every=1, **TINY)
    stripped.load_stream_state({k: v for k, v in state.items() if k not in ("edited", "refreshed_at")})
    with pytest.raises(HyperEditError, match="refresh_every"):
        stripped.refresh_keys(lm)
    with pytest.raises(HyperEditError, match="refresh_every"):
        get_editor("alphaedit", refresh_every=-1, **TINY)
    with pytest.raises(HyperEditError, match="accumulate"):
        get_editor("alphaedit", refresh_every=5, accumulate=False, **TINY)


def test_metake_over_alphaedit_refreshes_its_memory_too(tiny_llama):
    import pytest

    from hyperedit.errors import HyperEditError

    lm = tiny_llama
    with pytest.raises(HyperEditError, match="inner=alphaedit"):
        get_editor("metake", inner="memit", refresh_every=1, **TINY)
    editor = get_editor("metake", inner="alphaedit", refresh_every=1, meta_steps=0, l2=1e-4, nullspace_threshold=1e-6,
                        **{**TINY, "v_steps": 2})
    first = editor.edit(lm, FACTS[:1])
    assert [r.prompt for r in editor.inner.edited] == [FACTS[0].prompt]
    with first.applied(lm.model):
        editor.edit(lm, FACTS[1:])  # the memory of the first edit is re-read before the second
        assert editor.inner.refreshed_at == 1 and len(editor.inner.edited) == 2
