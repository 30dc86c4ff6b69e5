"""MetaKE: the structural gradient proxy is the exact gradient through one closed-form layer, and
MetaKE edits a tiny model over both inner solvers."""
import pytest
import torch

from hyperedit.editors import get_editor
from hyperedit.editors.locate import alphaedit_map, memit_map, null_space_projector, proxy_grad
from hyperedit.errors import HyperEditError

from test_memit import FACTS, TINY, top_token


def _layer_loss(S, X, W, Y):
    """A small nonlinear 'post-edit' loss of one linear layer W + S."""
    return ((torch.tanh(X @ (W + S)) - Y) ** 2).sum()


@pytest.mark.parametrize("solver", ["memit", "alphaedit"])
def test_proxy_gradient_equals_autograd_through_the_closed_form(solver):
    g = torch.Generator().manual_seed(0)
    n, d_in, d_out = 5, 10, 4
    dt = torch.float64
    K = torch.randn(n, d_in, generator=g, dtype=dt)
    A = torch.randn(30, d_in, generator=g, dtype=dt)
    C = A.T @ A / 30
    X, W = torch.randn(8, d_in, generator=g, dtype=dt), torch.randn(d_in, d_out, generator=g, dtype=dt)
    Y = torch.randn(8, d_out, generator=g, dtype=dt)
    R = torch.randn(n, d_out, generator=g, dtype=dt, requires_grad=True)
    if solver == "memit":
        S = torch.linalg.solve(2.0 * C + K.T @ K, K.T @ R)  # the solver, differentiated by autograd
        Q = memit_map(K, C, 2.0)
    else:
        P = null_space_projector(A[:6].T @ A[:6], 1e-8)
        Kp = torch.randn(2, d_in, generator=g, dtype=dt)
        M = P @ (K.T @ K + Kp.T @ Kp) + 0.5 * torch.eye(d_in, dtype=dt)
        S = torch.linalg.solve(M, P @ K.T @ R)
        Q = alphaedit_map(K, P, Kp.T @ Kp, 0.5)
    (auto,) = torch.autograd.grad(_layer_loss(S, X, W, Y), R)
    S_leaf = (Q @ R.detach()).requires_grad_(True)
    (grad_S,) = torch.autograd.grad(_layer_loss(S_leaf, X, W, Y), S_leaf)
    torch.testing.assert_close(proxy_grad(Q, grad_S), auto, rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("inner,extra", [("memit", {"lam": 1e-3}),
                                         ("alphaedit", {"l2": 1e-4, "nullspace_threshold": 1e-6})])
def test_metake_flips_planted_facts_with_diagnostics(tiny_llama, inner, extra):
    lm = tiny_llama
    editor = get_editor("metake", inner=inner, meta_steps=3, n_locality_texts=2, **TINY, **extra)
    before = {n: p.clone() for n, p in lm.model.named_parameters()}
    delta = editor.edit(lm, FACTS)
    assert all(torch.equal(before[n], p) for n, p in lm.model.named_parameters())
    with delta.applied(lm.model):
        assert [top_token(lm, r.prompt) for r in FACTS] == [r.target for r in FACTS]
    info = editor.last_info
    assert info["inner"] == inner and delta.meta["editor"] == f"metake-{inner}"
    for key in ("truncation_before", "truncation_after", "original_plan_realised_after"):
        assert len(info[key]["realised_fraction"]) == len(FACTS)
    assert 1 <= len(info["proxy_loss_curve"]) <= 3
    if inner == "alphaedit":
        assert int(editor.stream_state()[0]["n_edits"]) == len(FACTS)  # only the final write is remembered
        # its memory's fill is the inner AlphaEdit's: one key per fact and layer, each above the ridge
        fill = editor.memory_fill(lm)
        assert fill == editor.inner.memory_fill(lm) and set(fill) == set(editor.inner.modules(lm))
        assert all(m["held_dims"] == len(FACTS) for m in fill.values())
    else:
        assert editor.memory_fill(lm) == {}


def test_metake_rejects_unknown_inner():
    with pytest.raises(HyperEditError):
        get_editor("metake", inner="rome")
