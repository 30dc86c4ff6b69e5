"""The hypernetwork modules and the least-squares maths of MALMEN (no language model needed)."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from hyperedit.editors.hypernet import RidgeFactor, cache_requests, ridge_solve, ridge_solve_backward, token_slices
from hyperedit.editors.hypernet import MalmenConfig, MalmenEditor, MendConfig, MendEditor
from hyperedit.nets import HyperNet, HyperNets, RunningMeanStd
from hyperedit.requests import EditRequest


def _relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm().clamp_min(1e-300))


# ----- the network ---------------------------------------------------------------------------
def test_fresh_hypernet_is_the_identity_of_its_normalised_input():
    torch.manual_seed(0)
    net = HyperNet(d_in=12, d_out=5, rank=4, n_blocks=3, n_modules=2, lr_init=1e-3)
    keys, grads = torch.randn(7, 12), torch.randn(7, 5)
    pk, pg = net(keys, grads, 1)
    assert torch.equal(pk, keys) and torch.equal(pg, grads)  # fresh normaliser: mean 0, std 1
    net.normalizer.update(torch.randn(50, 17) * 3 + 1)
    pk, pg = net(keys, grads, 0)
    expected = net.normalizer(torch.cat([keys, grads], -1))
    torch.testing.assert_close(torch.cat([pk, pg], -1), expected, rtol=0, atol=0)


def test_trained_block_is_no_longer_the_identity_and_modules_differ():
    torch.manual_seed(0)
    net = HyperNet(d_in=6, d_out=4, rank=3, n_blocks=1, n_modules=2, lr_init=1e-3)
    with torch.no_grad():
        net.blocks[0].B.normal_()
        net.blocks[0].shift[1].fill_(0.5)
    keys, grads = torch.randn(5, 6), torch.randn(5, 4)
    out0 = torch.cat(net(keys, grads, 0), -1)
    out1 = torch.cat(net(keys, grads, 1), -1)
    assert not torch.allclose(out0, torch.cat([keys, grads], -1))
    # (x + 0.5) - x in float32 is 0.5 up to a few ulps of |x|, not of 0.5.
    scale = float(torch.maximum(out0.abs(), out1.abs()).max().detach())
    torch.testing.assert_close(out1 - out0, torch.full_like(out0, 0.5), rtol=0, atol=1e-6 * max(scale, 1.0))


def test_running_normaliser_matches_the_data_statistics_however_chunked():
    torch.manual_seed(0)
    data = torch.randn(101, 8, dtype=torch.float64) * torch.arange(1, 9) + 5
    whole, pieces = RunningMeanStd(8), RunningMeanStd(8)
    whole.update(data)
    for part in token_slices(101, 13):
        pieces.update(data[part])
    torch.testing.assert_close(whole.mean, data.mean(0))
    torch.testing.assert_close(whole.std, data.std(0))
    torch.testing.assert_close(pieces.mean, whole.mean, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(pieces.std, whole.std, rtol=1e-10, atol=1e-10)
    assert set(dict(whole.named_buffers())) == {"count", "mean", "m2"}


def test_modules_of_one_shape_share_a_network_with_their_own_index():
    nets = HyperNets({"a": (8, 4), "b": (6, 4), "c": (8, 4)}, rank=2, n_blocks=1, lr_init=1e-3, seed=0)
    assert sorted(nets.nets) == ["6x4", "8x4"]
    net_a, ia = nets.net_for("a")
    net_c, ic = nets.net_for("c")
    assert net_a is net_c and (ia, ic) == (0, 1)
    assert net_a.lr.shape == (2,) and net_a.blocks[0].scale.shape == (2, 12)
    again = HyperNets({"a": (8, 4), "b": (6, 4), "c": (8, 4)}, rank=2, n_blocks=1, lr_init=1e-3, seed=0)
    for (name, p), q in zip(nets.state_dict().items(), again.state_dict().values()):
        assert torch.equal(p, q), name


# ----- least squares -------------------------------------------------------------------------
def test_closed_form_gradients_equal_autograd_through_solve_in_float64():
    gen = torch.Generator().manual_seed(0)
    for n, d_in, d_out in ((5, 9, 4), (40, 9, 4), (30, 30, 7)):
        keys = torch.randn(n, d_in, generator=gen, dtype=torch.float64)
        diffs = torch.randn(n, d_out, generator=gen, dtype=torch.float64, requires_grad=True)
        log_lambda = torch.tensor(0.3, dtype=torch.float64, requires_grad=True)
        weights = torch.randn(d_in, d_out, generator=gen, dtype=torch.float64)
        ktk = keys.t() @ keys
        shift = ridge_solve(ktk, keys.t() @ diffs, log_lambda)
        loss = (weights * shift).sum() + 0.5 * (shift ** 2).sum()
        loss.backward()
        grad_shift = (weights + shift).detach()
        grad_d, grad_lam = ridge_solve_backward(keys, ktk, shift.detach(), grad_shift, log_lambda.detach())
        assert _relative_error(grad_d, diffs.grad) < 1e-8
        assert _relative_error(grad_lam, log_lambda.grad) < 1e-8


def test_solution_satisfies_the_normal_equations():
    gen = torch.Generator().manual_seed(1)
    keys = torch.randn(50, 16, generator=gen, dtype=torch.float64)
    diffs = torch.randn(50, 3, generator=gen, dtype=torch.float64)
    log_lambda = torch.tensor(-1.0, dtype=torch.float64)
    shift = ridge_solve(keys.t() @ keys, keys.t() @ diffs, log_lambda)
    lhs = (keys.t() @ keys + log_lambda.exp() * torch.eye(16, dtype=torch.float64)) @ shift
    assert _relative_error(lhs, keys.t() @ diffs) < 1e-12
    # and it is the minimiser: the objective's gradient vanishes there
    s = shift.clone().requires_grad_(True)
    objective = ((keys @ s - diffs) ** 2).sum() + log_lambda.exp() * (s ** 2).sum()
    objective.backward()
    assert float(s.grad.abs().max()) < 1e-10


@pytest.mark.parametrize("editor_class, config_class", [(MalmenEditor, MalmenConfig), (MendEditor, MendConfig)])
def test_chunked_accumulation_equals_the_one_shot_result(editor_class, config_class):
    torch.manual_seed(0)
    nets = HyperNets({"m0": (10, 6), "m1": (10, 6)}, rank=4, n_blocks=2, lr_init=0.1, seed=3)
    with torch.no_grad():  # a non-trivial network
        for p in nets.parameters():
            p.add_(0.1 * torch.randn_like(p))
    nets.double()
    options = {"solve_dtype": "float64"} if editor_class is MalmenEditor else {}
    one_shot = editor_class(config_class(net_batch_size=10_000, **options), nets)
    chunked = editor_class(config_class(net_batch_size=7, **options), nets)
    data = {name: (torch.randn(45, 10, dtype=torch.float64), torch.randn(45, 6, dtype=torch.float64))
            for name in ("m0", "m1")}
    _, expected = one_shot.predict(data)
    acc = chunked.new_accumulator()
    with torch.no_grad():
        for part in token_slices(45, 11):  # LM chunks, each split again into hypernetwork chunks
            for name, (k, g) in data.items():
                chunked.accumulate(acc, name, k[part], g[part])
        shifts = chunked.finish(acc)
    for name in expected:
        assert _relative_error(shifts[name].double(), expected[name].double()) < 1e-10
    if editor_class is MalmenEditor:  # and the one-shot result is the ridge solution of all tokens
        net, index = nets.net_for("m1")
        keys, grads = data["m1"]
        with torch.no_grad():
            diffs = net.value_diffs(keys, grads, index)
            direct = ridge_solve(keys.t() @ keys, keys.t() @ diffs, net.log_lambda[index])
        assert _relative_error(expected["m1"].double(), direct) < 1e-6  # finish() returns float32


def test_backward_of_both_editors_matches_autograd_end_to_end():
    """dL/d(hypernetwork) from the chunked closed-form backward equals autograd of the one-shot graph."""
    torch.manual_seed(0)
    for editor_class, config_class, options in ((MalmenEditor, MalmenConfig, {"solve_dtype": "float64"}),
                                                (MendEditor, MendConfig, {})):
        nets = HyperNets({"m": (8, 5)}, rank=3, n_blocks=2, lr_init=0.05, seed=1).double()
        with torch.no_grad():
            for p in nets.parameters():
                p.add_(0.1 * torch.randn_like(p))
        editor = editor_class(config_class(net_batch_size=6, **options), nets)
        keys, grads = torch.randn(20, 8, dtype=torch.float64), torch.randn(20, 5, dtype=torch.float64)
        target = torch.randn(8, 5, dtype=torch.float64)
        net, index = nets.net_for("m")
        # autograd through the whole graph
        if editor_class is MalmenEditor:
            diffs = net.value_diffs(keys, grads, index)
            shift = ridge_solve(keys.t() @ keys, keys.t() @ diffs, net.log_lambda[index])
        else:
            shift = net.rank_one_shift(keys, grads, index)
        loss = ((shift - target) ** 2).sum()
        expected = torch.autograd.grad(loss, list(nets.parameters()), allow_unused=True)
        # the editor's memory-separated path
        cache = {"m": (keys, grads)}
        acc, shifts = editor.predict(cache)
        shifts = {k: v.double() for k, v in shifts.items()}
        nets.zero_grad()
        editor.backward(cache, acc, shifts, {"m": 2 * (shifts["m"] - target)})
        for (name, p), e in zip(nets.named_parameters(), expected):
            if e is None:
                assert p.grad is None or float(p.grad.abs().max()) == 0, name
            else:
                assert _relative_error(p.grad, e) < 1e-5, name  # shifts pass through float32 in finish()


def test_covariance_ridge_gradients_equal_autograd_through_solve_in_float64():
    gen = torch.Generator().manual_seed(3)
    for n, d_in, d_out in ((5, 9, 4), (40, 9, 4)):
        keys = torch.randn(n, d_in, generator=gen, dtype=torch.float64)
        corpus = torch.randn(200, d_in, generator=gen, dtype=torch.float64) * torch.linspace(0.1, 3, d_in,
                                                                                              dtype=torch.float64)
        c0 = corpus.t() @ corpus / 200
        diffs = torch.randn(n, d_out, generator=gen, dtype=torch.float64, requires_grad=True)
        log_lambda = torch.tensor(0.7, dtype=torch.float64, requires_grad=True)
        weights = torch.randn(d_in, d_out, generator=gen, dtype=torch.float64)
        ktk = keys.t() @ keys
        shift = torch.linalg.solve(ktk + log_lambda.exp() * c0, keys.t() @ diffs)  # autograd reference
        ((weights * shift).sum() + 0.5 * (shift ** 2).sum()).backward()
        grad_shift = (weights + shift).detach()
        factor = RidgeFactor(ktk, log_lambda.detach(), c0)
        assert factor.cholesky
        torch.testing.assert_close(factor.solve(keys.t() @ diffs.detach()), shift.detach(), rtol=1e-10, atol=1e-12)
        for f in (factor, None):
            grad_d, grad_lam = ridge_solve_backward(keys, ktk, shift.detach(), grad_shift, log_lambda.detach(), c0, f)
            assert _relative_error(grad_d, diffs.grad) < 1e-8
            assert _relative_error(grad_lam, log_lambda.grad) < 1e-8
        # the identity ridge is the special case R = I
        eye = torch.eye(d_in, dtype=torch.float64)
        plain = ridge_solve_backward(keys, ktk, shift.detach(), grad_shift, log_lambda.detach())
        with_eye = ridge_solve_backward(keys, ktk, shift.detach(), grad_shift, log_lambda.detach(), eye)
        assert _relative_error(with_eye[0], plain[0]) < 1e-12 and _relative_error(with_eye[1], plain[1]) < 1e-12


def test_covariance_ridge_editor_solves_with_c0(tiny_llama, monkeypatch):
    from hyperedit.editors.hypernet import MalmenConfig, MalmenEditor
    from hyperedit.stats import key_second_moments

    # C0 comes from the generic-text corpus: the miniature copy, not the benchmark data directory
    monkeypatch.setenv("HYPEREDIT_DATA_DIR", str(Path(__file__).resolve().parents[1] / "fixtures" / "data"))

    editor = MalmenEditor.create(MalmenConfig(layers=[2, 3], rank=4, lr_init=1e-1, ridge="covariance",
                                              ridge_samples=8, solve_dtype="float64"), tiny_llama, seed=0)
    requests = [EditRequest(prompt="the capital of france is", target="rome"),
                EditRequest(prompt="john was born in", target="oslo")]
    delta = editor.edit(tiny_llama, requests)
    c0 = key_second_moments(tiny_llama, editor.module_names, n_samples=8)
    cache = cache_requests(tiny_llama.adapter, requests, editor.module_names, "ans")
    for name in editor.module_names:
        net, index = editor.nets.net_for(name)
        keys, grads = cache[name]
        with torch.no_grad():
            diffs = net.value_diffs(keys, grads, index)
        keys, diffs = keys.double(), diffs.double()  # C0 of 8 texts leaves M poorly conditioned
        direct = ridge_solve(keys.t() @ keys, keys.t() @ diffs, net.log_lambda[index].detach(), c0[name].double())
        shift = tiny_llama.adapter.param_to_in_out(name, delta.shifts[name]).double()
        assert _relative_error(shift, direct) < 1e-5  # the shift is stored in float32
