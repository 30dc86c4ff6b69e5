"""UltraEdit: the shift against a direct computation (hand statistics, lstsq), lifelong
normalisation across edits, state round trip, default bands, and that an edit lowers the loss."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from hyperedit.editors import get_editor
from hyperedit.editors.hypernet.ultraedit import DEFAULT_BANDS, band_layers, default_modules
from hyperedit.errors import HyperEditError
from hyperedit.lm import cache_keys_and_value_grads, target_logits
from hyperedit.requests import EditRequest

FACTS = [("france", "rome"), ("italy", "oslo"), ("japan", "delhi"), ("spain", "cairo"), ("greece", "vienna")]


def requests(start=0, n=3):
    return [EditRequest(prompt=f"the capital of {c} is", target=t, subject=c) for c, t in FACTS[start:start + n]]


def _rows(lm, reqs, name):
    raw = cache_keys_and_value_grads(lm.adapter, [r.prompt for r in reqs], [r.target for r in reqs], [name])
    k, g = raw[name]
    return k.double(), g.double()


def _direct_shift(K, G, stats_rows, lr, ridge):
    """Standardise with torch.mean/std of ``stats_rows`` and solve min ||K S - V||^2 + ridge ||S||^2
    as an augmented least-squares problem (no normal equation)."""
    mean, std = stats_rows.mean(0), stats_rows.std(0)
    z = (torch.cat([K, G], -1) - mean) / std.clamp_min(1e-6)
    k_hat, g_hat = z[:, :K.shape[1]], z[:, K.shape[1]:]
    V = -lr * (k_hat ** 2).sum(-1, keepdim=True) * g_hat
    A = torch.cat([K, ridge ** 0.5 * torch.eye(K.shape[1], dtype=K.dtype)])
    B = torch.cat([V, torch.zeros(K.shape[1], V.shape[1], dtype=V.dtype)])
    return torch.linalg.lstsq(A, B).solution


def _shift_in_out(lm, delta, name):
    return lm.adapter.param_to_in_out(name, delta.shifts[name]).double()


def assert_close_rel(a, b):
    scale = float(b.abs().max())
    assert scale > 0
    assert float((a - b).abs().max()) <= 1e-5 * scale


@pytest.mark.parametrize("fixture", ["tiny_llama", "tiny_gpt2"])
def test_shift_matches_a_direct_computation(fixture, request):
    lm = request.getfixturevalue(fixture)
    editor = get_editor("ultraedit", layers=[2], lr=1e-3, ridge=0.5)
    name = editor.modules(lm)[0]
    reqs = requests()
    K, G = _rows(lm, reqs, name)
    delta = editor.edit(lm, reqs)
    assert_close_rel(_shift_in_out(lm, delta, name), _direct_shift(K, G, torch.cat([K, G], -1), 1e-3, 0.5))


def test_lifelong_normalisation_uses_the_rows_of_every_edit(tiny_llama):
    lm = tiny_llama
    lifelong = get_editor("ultraedit", layers=[1], lr=1e-3)
    per_edit = get_editor("ultraedit", layers=[1], lr=1e-3, lifelong_norm=False)
    name = lifelong.modules(lm)[0]
    first, second = requests(0, 3), requests(3, 2)
    K1, G1 = _rows(lm, first, name)
    K2, G2 = _rows(lm, second, name)
    lifelong.edit(lm, first)
    per_edit.edit(lm, first)
    seen = torch.cat([torch.cat([K1, G1], -1), torch.cat([K2, G2], -1)])
    assert_close_rel(_shift_in_out(lm, lifelong.edit(lm, second), name), _direct_shift(K2, G2, seen, 1e-3, 1.0))
    assert_close_rel(_shift_in_out(lm, per_edit.edit(lm, second), name), _direct_shift(K2, G2, torch.cat([K2, G2], -1), 1e-3, 1.0))
    assert lifelong.n_edits == 5 and per_edit.stream_state()[0].keys() == {"n_edits"}


def test_norm_scope_shape_shares_statistics_between_modules_of_one_shape(tiny_llama):
    lm = tiny_llama
    shared = get_editor("ultraedit", layers=[1, 2])
    separate = get_editor("ultraedit", layers=[1, 2], norm_scope="module")
    shared.edit(lm, requests())
    separate.edit(lm, requests())
    counts = {k: float(v) for k, v in shared.stream_state()[0].items() if k.endswith("/count")}
    per_module = {k: float(v) for k, v in separate.stream_state()[0].items() if k.endswith("/count")}
    assert len(counts) == 1 and len(per_module) == 2
    assert sum(per_module.values()) == pytest.approx(next(iter(counts.values())))


def test_state_round_trip_resumes_a_stream_exactly(tiny_llama):
    lm = tiny_llama
    a = get_editor("ultraedit", layers=[1, 2])
    a.edit(lm, requests(0, 3))
    b = get_editor("ultraedit", layers=[1, 2])
    b.load_stream_state(*a.stream_state())
    da, db = a.edit(lm, requests(3, 2)), b.edit(lm, requests(3, 2))
    assert da.shifts.keys() == db.shifts.keys()
    assert all(torch.equal(da.shifts[k], db.shifts[k]) for k in da.shifts)
    assert b.n_edits == 5
    b.reset()
    assert b.n_edits == 0 and not b.normalizers


def test_bad_state_is_refused_in_one_line(tiny_llama):
    editor = get_editor("ultraedit", layers=[1])
    editor.edit(tiny_llama, requests())
    state, _ = editor.stream_state()
    with pytest.raises(HyperEditError, match="n_edits"):
        editor.load_stream_state({k: v for k, v in state.items() if k != "n_edits"})
    broken = {k: v for k, v in state.items() if not k.endswith("/m2")}
    with pytest.raises(HyperEditError, match="count, mean and m2"):
        editor.load_stream_state(broken)


def test_default_bands_reproduce_the_authors_llama3_layout_and_scale_with_depth(tiny_llama, tiny_gpt2):
    (gate, g0, g1), (up, u0, u1) = DEFAULT_BANDS
    assert (gate, band_layers(32, g0, g1)) == ("gate", list(range(11, 16)))
    assert (up, band_layers(32, u0, u1)) == ("up", list(range(18, 25)))
    for lm in (tiny_llama, tiny_gpt2):
        names = default_modules(lm.adapter)
        assert names and len(set(names)) == len(names)
        assert all(0 <= lm.adapter.layer_of(n) < lm.adapter.num_layers for n in names)
    assert any(".gate_proj" in n for n in default_modules(tiny_llama.adapter))
    with pytest.raises(HyperEditError, match="module_kind needs layers"):
        get_editor("ultraedit", module_kind="up").modules(tiny_llama)


@pytest.mark.parametrize("option", [{"lr": 0.0}, {"ridge": float("nan")}, {"norm_scope": "layer"}, {"layers": []}])
def test_bad_options_are_one_line_errors(option):
    with pytest.raises(HyperEditError) as info:
        get_editor("ultraedit", **option)
    assert "\n" not in str(info.value)


def test_an_edit_lowers_the_target_loss(tiny_llama):
    lm = tiny_llama
    reqs = requests()

    def loss():
        with torch.no_grad():
            out = [target_logits(lm.adapter, lm.adapter.encode([r.prompt], [r.target])) for r in reqs]
            return sum(float(F.cross_entropy(o.logits.float(), o.targets)) for o in out) / len(out)

    before = loss()
    delta = get_editor("ultraedit", layers=[1, 2, 3], lr=1e-2).edit(lm, reqs)
    with delta.applied(lm.model):
        after = loss()
    assert after < before


def test_a_lifelong_stream_resumes_exactly(tiny_dirs, tmp_path):
    from test_lifelong import _config, make_requests

    from hyperedit.eval.lifelong import LifelongRunner
    from hyperedit.models import load_model

    def final_state(run_dir, stops):
        for stop in stops:
            lm = load_model(str(tiny_dirs["llama"]))
            editor = get_editor("ultraedit", layers=[1, 2], lr=1e-3)
            runner = LifelongRunner(lm, editor, make_requests(6), _config(), run_dir)
            out = runner.run(resume=True, restore=False, max_edits=stop, progress=False)
        return runner.weights(), editor.stream_state()[0], out

    whole, state, summary = final_state(tmp_path / "a", [None])
    parts, resumed_state, resumed = final_state(tmp_path / "b", [2, 4, None])
    assert whole and set(whole) == set(parts) and all(torch.equal(whole[n], parts[n]) for n in whole)
    assert set(state) == set(resumed_state) and all(torch.equal(state[k], resumed_state[k]) for k in state)
    assert int(state["n_edits"]) == 6 and resumed["metrics"] == summary["metrics"]
