"""Direction control and online normalisers of the hypernetwork editors (MALMEN, RLEdit, HiEdit):
null-space solves against AlphaEdit's formula and autograd, preserved keys' outputs, the key
state, chunk-invariant online normaliser updates, and exact resume of a lifelong stream."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from test_rledit import requests

from hyperedit.editors.hypernet import cache_requests
from hyperedit.editors.locate import null_space_basis
from hyperedit.editors.hypernet import MalmenConfig, MalmenEditor, RLEditConfig, RLEditEditor
from hyperedit.errors import HyperEditError
from hyperedit.eval.lifelong import LifelongConfig, LifelongRunner
from hyperedit.nets import HyperNets

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "data"


@pytest.fixture
def fixture_corpus(monkeypatch):
    """C0 comes from the miniature generic-text corpus, not the benchmark data directory."""
    monkeypatch.setenv("HYPEREDIT_DATA_DIR", str(FIXTURES))


def _relative_error(a, b):
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


@pytest.mark.parametrize("memory_weight", [1.0, 0.25])
def test_nullspace_solve_is_alphaedit_formula_and_its_gradients_are_autograd_in_float64(memory_weight):
    gen = torch.Generator().manual_seed(5)
    d_in, d_out, n = 9, 4, 12
    nets = HyperNets({"m": (d_in, d_out)}, rank=3, n_blocks=1, lr_init=0.05, seed=2).double()
    with torch.no_grad():
        for p in nets.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=gen, dtype=p.dtype))
    editor = MalmenEditor(MalmenConfig(nullspace=True, solve_dtype="float64", net_batch_size=5,
                                       memory_weight=memory_weight), nets)
    corpus = torch.randn(30, d_in, generator=gen, dtype=torch.float64) @ torch.diag(
        torch.tensor([3.0, 2.0, 2.0, 1.0, 1.0, 1e-3, 1e-3, 1e-4, 1e-4], dtype=torch.float64))
    c0 = corpus.t() @ corpus / 30
    U = null_space_basis(c0, 1e-2)
    assert 0 < U.shape[1] < d_in
    editor.bases = {"m": U}
    earlier = torch.randn(6, d_in, generator=gen, dtype=torch.float64)
    editor.keys.add("m", earlier.t() @ earlier)
    keys, grads = torch.randn(n, d_in, generator=gen, dtype=torch.float64), torch.randn(n, d_out, generator=gen,
                                                                                          dtype=torch.float64)
    target = torch.randn(d_in, d_out, generator=gen, dtype=torch.float64)
    net, index = nets.net_for("m")
    # autograd through AlphaEdit's own equation (P (K^T K + w K_p^T K_p) + e^lambda I) S = P K^T D
    diffs = net.value_diffs(keys, grads, index)
    P = U @ U.T
    m = P @ (keys.t() @ keys + memory_weight * earlier.t() @ earlier) + net.log_lambda[index].exp() * torch.eye(d_in, dtype=torch.float64)
    expected_shift = torch.linalg.solve(m, P @ keys.t() @ diffs)
    loss = ((expected_shift - target) ** 2).sum()
    expected = torch.autograd.grad(loss, list(nets.parameters()), allow_unused=True)
    cache = {"m": (keys, grads)}
    acc, shifts = editor.predict(cache)
    shift = shifts["m"].double()
    assert _relative_error(shift, expected_shift.detach()) < 1e-6  # shifts pass through float32
    assert float((P @ shift - shift).norm()) < 1e-6 * float(shift.norm())  # in the range of P
    nets.zero_grad()
    editor.backward(cache, acc, {"m": shift}, {"m": 2 * (shift - target)})
    for (name, p), e in zip(nets.named_parameters(), expected):
        if e is None:
            assert p.grad is None or float(p.grad.abs().max()) == 0, name
        else:
            assert _relative_error(p.grad, e) < 1e-5, name


def _editor(cls, config_cls, lm, **options):
    options = {"lr_init": 0.5, **options}
    return cls.create(config_cls(layers=[2, 3], rank=4, n_blocks=1, ridge_samples=5, **options), lm, seed=0)


def test_projected_shift_leaves_preserved_keys_outputs_unchanged(tiny_llama, fixture_corpus):
    from hyperedit.stats import key_second_moments

    options = dict(nullspace_threshold=1e-3, threshold_relative=True, lr_init=50.0)
    editor = _editor(RLEditEditor, RLEditConfig, tiny_llama, nullspace=True, **options)
    delta = editor.edit(tiny_llama, requests(3))
    plain = _editor(RLEditEditor, RLEditConfig, tiny_llama, **options).edit(tiny_llama, requests(3))
    modules = dict(tiny_llama.model.named_modules())
    c0 = key_second_moments(tiny_llama, editor.module_names, n_samples=5)
    for name in editor.module_names:
        evals, evecs = torch.linalg.eigh(c0[name].double())
        kept = evals >= 1e-3 * float(evals.max())
        preserved, free = evecs[:, kept].T.float(), evecs[:, ~kept].T.float()  # keys generic text uses / not
        assert len(preserved) and len(free)
        module = modules[name]
        change = {}
        with torch.no_grad():
            before_p, before_f = module(preserved), module(free)
            for label, d in (("projected", delta), ("plain", plain)):
                with d.applied(tiny_llama.model):
                    change[label] = (float((module(preserved) - before_p).abs().max()),
                                     float((module(free) - before_f).abs().max()))
        written = change["projected"][1]
        assert written > 1e-3 * float(before_f.abs().max()), name  # the edit is written in the null space
        assert change["projected"][0] < 1e-3 * written, name  # preserved keys: rounding only
        assert change["plain"][0] > 0.1 * change["plain"][1], name  # without the projection they move


def test_every_edit_adds_its_keys_to_the_key_state(tiny_llama, fixture_corpus):
    editor = _editor(MalmenEditor, MalmenConfig, tiny_llama, nullspace=True, solve_dtype="float64")
    first, second = requests(6)[:2], requests(6)[2:5]
    editor.edit(tiny_llama, first)
    editor.edit(tiny_llama, second)
    assert editor.keys.n_edits == 5
    cache1 = cache_requests(tiny_llama.adapter, first, editor.module_names, "ans")
    cache2 = cache_requests(tiny_llama.adapter, second, editor.module_names, "ans")
    for name in editor.module_names:
        k1, k2 = cache1[name][0].double(), cache2[name][0].double()
        torch.testing.assert_close(editor.keys.get(name), k1.T @ k1 + k2.T @ k2, rtol=1e-5, atol=1e-6)


def test_direction_options_are_runtime_and_checked(tiny_llama, tmp_path):
    from hyperedit.editors import get_editor
    from hyperedit.editors.hypernet import HiEditConfig

    _editor(RLEditEditor, RLEditConfig, tiny_llama).save(tmp_path / "rl")
    loaded = get_editor("rledit", checkpoint=str(tmp_path / "rl"), nullspace=True, online_norm=True,
                        nullspace_threshold=0.5, threshold_relative=True)
    assert loaded.config.nullspace and loaded.config.online_norm and loaded.config.nullspace_threshold == 0.5
    with pytest.raises(HyperEditError, match="rank"):
        get_editor("rledit", checkpoint=str(tmp_path / "rl"), rank=8)
    with pytest.raises(ValueError, match="ridge=identity"):
        RLEditConfig(nullspace=True, ridge="covariance")
    with pytest.raises(ValueError, match="low=malmen"):
        HiEditConfig(low="mend", nullspace=True)
    assert HiEditConfig(nullspace=True).low_config().nullspace


def test_online_normaliser_update_is_chunk_invariant_and_counts_every_token(tiny_llama):
    reqs = requests(5)
    out = {}
    for size in (1, 5):
        editor = _editor(RLEditEditor, RLEditConfig, tiny_llama, online_norm=True, lm_batch_size=size)
        norm = editor.nets.net_for(editor.module_names[0])[0].normalizer
        assert float(norm.count) == 0
        delta = editor.edit(tiny_llama, reqs)
        out[size] = (delta, {k: v.clone() for k, v in norm.state_dict().items()})
    cache = cache_requests(tiny_llama.adapter, reqs, editor.module_names, "ans")
    n_tokens = len(cache[editor.module_names[0]][0])
    assert float(out[1][1]["count"]) == float(out[5][1]["count"]) == 2 * n_tokens  # two modules share one net
    for key in ("mean", "m2"):
        torch.testing.assert_close(out[1][1][key], out[5][1][key], rtol=1e-5, atol=1e-7)  # float32 keys
    for name in out[1][0].shifts:
        torch.testing.assert_close(out[1][0].shifts[name], out[5][0].shifts[name], rtol=1e-4, atol=1e-6)
    # without online updates the normaliser is left as loaded
    still = _editor(RLEditEditor, RLEditConfig, tiny_llama)
    still.edit(tiny_llama, reqs)
    assert float(still.nets.net_for(still.module_names[0])[0].normalizer.count) == 0


def _stream(tiny_dirs, checkpoint, run_dir, stops, editor_name="rledit"):
    from hyperedit.editors import get_editor
    from hyperedit.models import load_model

    config = LifelongConfig(num_seq=6, batch_size=2, num_pre=2, curve_every=2, curve_sample=2, general_per_task=0)
    for stop in stops:  # a fresh model and editor per part, as a resumed process has
        lm = load_model(str(tiny_dirs["llama"]))
        editor = get_editor(editor_name, checkpoint=str(checkpoint), lm=lm, nullspace=True, online_norm=True,
                            nullspace_threshold=1e-3, threshold_relative=True)
        runner = LifelongRunner(lm, editor, requests(6), config, run_dir)
        out = runner.run(resume=True, restore=False, max_edits=stop, progress=False)
    return runner.weights(), editor.stream_state()[0], out


@pytest.mark.parametrize("editor_name", ["rledit", "hiedit"])
def test_stream_with_direction_control_resumes_exactly(tiny_dirs, tiny_llama, tmp_path, fixture_corpus, editor_name):
    if editor_name == "rledit":
        _editor(RLEditEditor, RLEditConfig, tiny_llama).save(tmp_path / "ckpt")
    else:
        from hyperedit.editors.hypernet import HiEditConfig, HiEditEditor

        HiEditEditor.create(HiEditConfig(layers=[1, 2, 3], rank=4, n_blocks=1, lr_init=0.5, ridge_samples=5, top_k=2),
                            tiny_llama, seed=0).save(tmp_path / "ckpt")
    whole, state, summary = _stream(tiny_dirs, tmp_path / "ckpt", tmp_path / "a", [None], editor_name)
    parts, resumed_state, resumed = _stream(tiny_dirs, tmp_path / "ckpt", tmp_path / "b", [2, 4, None], editor_name)
    assert set(whole) == set(parts) and all(torch.equal(whole[n], parts[n]) for n in whole)
    assert set(state) == set(resumed_state) and all(torch.equal(state[k], resumed_state[k]) for k in state)
    assert resumed["metrics"] == summary["metrics"]
    assert int(state["keys/n_edits"]) == 6 and any(k.startswith("keys/kp/") for k in state)
    memory = [p["memory"] for p in summary["curves"]]  # how full the memory is, at every curve point
    assert len(memory) == 3 and memory == [p["memory"] for p in resumed["curves"]]
    assert all(0 <= m["held_dims"] <= m["null_dims"] and m["per_module"] and sum(m["per_module"].values()) == m["held_dims"]
               for m in memory)
    counts = [v for k, v in state.items() if k.endswith("normalizer.count")]
    assert counts and all(float(c) > 0 for c in counts)  # the normalisers followed the stream


# ----- stream-regime trajectory training -------------------------------------------------------
def _trajectory_trainer(lm, run_dir, nullspace=True, **options):
    from hyperedit.training.trajectory import TrajectoryConfig, TrajectoryTrainer

    editor = _editor(RLEditEditor, RLEditConfig, lm, nullspace=nullspace, nullspace_threshold=1e-3,
                     threshold_relative=True, lr_init=1e-2)
    settings = dict(steps=1, traj_len=4, n_edits=2, back_depth=3, gamma=0.9, reg_coef=1e-2, meta_lr=3e-2,
                    loc_reference="pre_edit", edit_lr_init=0.3)
    settings.update(options)
    return TrajectoryTrainer(editor, lm, requests(6), TrajectoryConfig(**settings), run_dir), editor


def test_stream_regime_trajectory_steps_lower_the_loss_with_finite_gradients(tiny_llama, tmp_path, fixture_corpus):
    trainer, editor = _trajectory_trainer(tiny_llama, tmp_path / "run")
    trainer._set_edit_lr()
    assert all(float(p) == pytest.approx(0.3) for lr in editor.edit_lr_parameters() for p in lr.detach())
    records = [trainer.train_step(0) for _ in range(6)]  # the same trajectory, six optimiser steps
    assert all(torch.isfinite(torch.tensor([r["grad_norm"], r["loss"]])).all() and r["grad_norm"] > 0 for r in records)
    for p in editor.parameters():
        assert p.grad is None or bool(torch.isfinite(p.grad).all())
    assert records[-1]["loss"] < records[0]["loss"]
    trainer.train_trajectory(0)  # a step restores the editor state it started from; a trajectory keeps its keys
    assert editor.keys.n_edits == 0 and len(editor.keys.kp) == len(editor.module_names)


def test_pre_edit_reference_changes_only_the_later_edits_locality(tiny_llama, tmp_path, fixture_corpus):
    losses = {}
    for reference in ("unedited", "pre_edit"):
        for length in (1, 2):
            trainer, _ = _trajectory_trainer(tiny_llama, tmp_path / f"{reference}{length}", traj_len=length,
                                             loc_reference=reference, meta_lr=1e-12, edit_lr_init=300.0,
                                             nullspace=False)
            trainer._set_edit_lr()  # large edits, so the model before the second edit differs
            losses[reference, length] = trainer.train_step(0)["last_loss"]
    # the first edit's reference is the unedited model either way; the second's is not
    assert losses["pre_edit", 1] == pytest.approx(losses["unedited", 1], rel=1e-6)
    assert abs(losses["pre_edit", 2] - losses["unedited", 2]) > 1e-6 * abs(losses["unedited", 2])


def test_cli_trajectory_options_reach_the_run(tiny_dirs, tmp_path, fixture_corpus):
    import json

    from test_lifelong import _write_requests

    from hyperedit.cli import main
    from hyperedit.editors import get_editor

    data = tmp_path / "edits.jsonl"
    _write_requests(data, 6)
    assert main(["train", "-q", "--editor", "rledit", "--model", str(tiny_dirs["llama"]), "--train", str(data),
                 "--layers", "2-3", "--rank", "4", "--steps", "1", "--n-edits", "1", "--traj-len", "3",
                 "--back-depth", "2", "--gamma", "0.8", "--reg-coef", "0.01", "--loc-reference", "pre_edit",
                 "--edit-lr-init", "0.002", "--set", "nullspace=true", "--set", "ridge_samples=5",
                 "--set", "threshold_relative=true", "--set", "nullspace_threshold=0.001",
                 "--out", str(tmp_path / "rl")]) == 0
    meta = json.loads(next((tmp_path / "rl" / "checkpoints").glob("step-*/editor.json")).read_text())
    train = meta["training"]["train_config"]
    assert (train["loc_reference"], train["edit_lr_init"], train["gamma"], train["back_depth"], train["traj_len"]) == \
        ("pre_edit", 0.002, 0.8, 2, 3)
    assert meta["config"]["nullspace"] is True
    editor = get_editor("rledit", checkpoint=str(tmp_path / "rl"))
    assert editor.config.nullspace
    lrs = torch.cat([p.detach().flatten() for p in editor.edit_lr_parameters()])
    assert float((lrs - 0.002).abs().max()) < 0.002  # started at 0.002, one Adam step of at most meta_lr away


@pytest.mark.parametrize("reference", ["unedited", "pre_edit"])
def test_frozen_prefix_trajectory_equals_full_passes(tiny_llama, tmp_path, fixture_corpus, reference):
    out = {}
    for cached in (True, False):
        trainer, editor = _trajectory_trainer(tiny_llama, tmp_path / str(cached), fact_cache=cached, traj_len=3,
                                              loc_reference=reference, nullspace=False, edit_lr_init=30.0)
        assert (trainer.prefix_layer is not None) == cached
        trainer._set_edit_lr()
        record = trainer.train_step(0)
        out[cached] = record["loss"], [p.grad.clone() for p in editor.parameters() if p.grad is not None]
    assert out[True][0] == pytest.approx(out[False][0], rel=1e-5)
    assert len(out[True][1]) == len(out[False][1])
    for a, b in zip(out[True][1], out[False][1]):
        assert _relative_error(a, b) < 1e-3  # float32 passes from a cached hidden state vs the whole model


def test_rounds_remember_the_keys_of_an_edit_once(tiny_llama, fixture_corpus):
    once = _editor(MalmenEditor, MalmenConfig, tiny_llama, nullspace=True, solve_dtype="float64")
    twice = _editor(MalmenEditor, MalmenConfig, tiny_llama, nullspace=True, solve_dtype="float64", rounds=2)
    batch = requests(4)
    once.edit(tiny_llama, batch)
    twice.edit(tiny_llama, batch)
    assert once.keys.n_edits == twice.keys.n_edits == 4
    for name in once.module_names:
        torch.testing.assert_close(twice.keys.get(name), once.keys.get(name), rtol=1e-5, atol=1e-8)  # twice remembered would be 2x


def test_held_directions_count_the_memory_above_the_ridge_inside_the_null_space():
    from hyperedit.editors.locate import held_directions

    torch.manual_seed(0)
    basis, _ = torch.linalg.qr(torch.randn(8, 8, dtype=torch.float64))
    U, outside = basis[:, :5], basis[:, 5:]
    gram = (U[:, :3] * torch.tensor([10.0, 3.0, 0.5], dtype=torch.float64)) @ U[:, :3].T
    gram = gram + 100.0 * outside @ outside.T  # memory outside the null space does not count
    assert held_directions(U, gram, ridge=1.0) == {"null_dims": 5, "held_dims": 2, "held_share": 0.4}
    assert held_directions(U, gram, ridge=0.1)["held_dims"] == 3


def test_memory_fill_grows_with_the_edits_and_follows_the_memory_weight(tiny_llama, fixture_corpus):
    options = dict(nullspace=True, solve_dtype="float64", nullspace_threshold=0.5, threshold_relative=True)
    editor = _editor(MalmenEditor, MalmenConfig, tiny_llama, **options)
    with torch.no_grad():  # the tiny model's keys are small: a ridge below their scale
        for name, param in editor.nets.named_parameters():
            if name.endswith("log_lambda"):
                param.fill_(-12.0)
    assert editor.memory_fill() == {}
    editor.edit(tiny_llama, requests(6)[:1])
    one = editor.memory_fill()
    editor.edit(tiny_llama, requests(6)[1:5])
    five = editor.memory_fill()
    rows = cache_requests(tiny_llama.adapter, requests(6)[:5], editor.module_names, "ans")
    for name in editor.module_names:
        assert 0 < one[name]["held_dims"] < five[name]["held_dims"] <= min(five[name]["null_dims"], len(rows[name][0]))
        assert five[name]["null_dims"] == editor.bases[name].shape[1]
    editor.config.memory_weight = 0.0
    assert all(m["held_dims"] == 0 for m in editor.memory_fill().values())


def test_hiedit_memory_of_the_chosen_modules_only(tiny_llama, tmp_path, fixture_corpus):
    """``memory_modules=chosen``: an edit's keys join the memory of the modules it wrote only; the
    shifts of a first edit (no memory yet) are the same, and the memory's fill counts the others empty."""
    from hyperedit.editors import get_editor
    from hyperedit.editors.hypernet import HiEditConfig, HiEditEditor

    HiEditEditor.create(HiEditConfig(layers=[1, 2, 3], rank=4, n_blocks=1, lr_init=0.5, ridge_samples=5, top_k=2),
                        tiny_llama, seed=0).save(tmp_path / "ckpt")
    options = dict(checkpoint=str(tmp_path / "ckpt"), lm=tiny_llama, nullspace=True, nullspace_threshold=1e-3,
                   threshold_relative=True)
    every, chosen = get_editor("hiedit", **options), get_editor("hiedit", memory_modules="chosen", **options)
    batch = requests(6)[:2]
    written, written_chosen = every.edit(tiny_llama, batch), chosen.edit(tiny_llama, batch)
    assert set(written.shifts) == set(written_chosen.shifts) and len(written.shifts) == 2
    assert all(torch.equal(written.shifts[n], written_chosen.shifts[n]) for n in written.shifts)
    assert set(every.low.keys.kp) == set(every.module_names)  # all three candidates
    assert set(chosen.low.keys.kp) == set(written.shifts)  # the two written
    assert all(torch.equal(chosen.low.keys.kp[n], every.low.keys.kp[n]) for n in written.shifts)
    fill = chosen.memory_fill(tiny_llama)
    (unwritten,) = set(chosen.module_names) - set(written.shifts)
    assert set(fill) == set(chosen.module_names) and fill[unwritten]["held_dims"] == 0
    assert fill[unwritten]["null_dims"] == every.memory_fill(tiny_llama)[unwritten]["null_dims"] > 0
    with pytest.raises(ValueError, match="memory_modules"):
        HiEditConfig(memory_modules="some")
