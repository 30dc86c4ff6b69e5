"""HiEdit: top-k mask with straight-through gradients, the extrinsic loss reaching the gate,
module selection, persistence, trajectory training."""
from __future__ import annotations

import pytest
import torch
from test_rledit import requests

from hyperedit.delta import EditDelta
from hyperedit.editors import get_editor
from hyperedit.editors.hypernet import HiEditConfig, HiEditEditor
from hyperedit.errors import HyperEditError
from hyperedit.lm import trainable_weights
from hyperedit.nets.policy import LayerPolicy, straight_through, top_k_mask
from hyperedit.training.trajectory import TrajectoryConfig, TrajectoryTrainer, backtracking_loss


def test_top_k_mask_and_straight_through_gradient():
    logits = torch.tensor([0.3, -1.0, 2.0, 0.9, 0.0], requires_grad=True)
    gate = torch.sigmoid(logits)
    mask = straight_through(top_k_mask(gate, 2), gate)
    assert mask.tolist() == [0.0, 0.0, 1.0, 1.0, 0.0]
    weights = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0])
    (mask * weights).sum().backward()
    # the forward value is the hard mask, the gradient the gate's: w * sigmoid'(x)
    assert torch.allclose(logits.grad, weights * gate.detach() * (1 - gate.detach()))
    assert top_k_mask(torch.tensor([1.0, 1.0, 0.0]), 5).tolist() == [1.0, 1.0, 1.0]


def test_policy_keeps_k_modules_and_sees_every_candidate():
    shapes = {"a": (6, 4), "b": (6, 4), "c": (3, 5)}
    policy = LayerPolicy(shapes, k=2, hidden=8, seed=0)
    feats = {"a": torch.randn(7, 10), "b": torch.randn(7, 10), "c": torch.randn(7, 8)}
    mask, gate = policy(feats)
    assert mask.sum().item() == 2 and gate.shape == (3,)
    gate.sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in (policy.encoders["3x5"].linear.weight,
                                                                       policy.gate.weight))
    with pytest.raises(ValueError):
        LayerPolicy(shapes, k=4)


def _editor(lm, low="malmen", **kw):
    kw = {"lr_init": 0.05, **kw}
    cfg = HiEditConfig(layers=[0, 1, 2, 3], rank=8, n_blocks=1, top_k=2, policy_hidden=16, low=low, **kw)
    return HiEditEditor.create(cfg, lm, seed=0)


@pytest.mark.parametrize("low", ["malmen", "mend"])
def test_extrinsic_loss_alone_reaches_the_gate(tiny_llama, low):
    """dL/dmask_m = <dL/dW_m, S_m> through the straight-through mask, and it matches a finite difference."""
    adapter = tiny_llama.adapter
    tiny_llama.model.double()  # float64 LM so that the finite difference is exact enough
    editor = _editor(tiny_llama, low=low, sparsity_coef=0.0, lr_init={"malmen": 5.0, "mend": 0.2}[low])  # shifts to difference
    batch = requests(2)
    cache = editor.cache(tiny_llama, batch)
    editor.update_normalizers(cache)
    proposal = editor.trajectory_propose(cache)
    assert len(proposal.shifts) == 2 and len(proposal.full) == 4
    kw = dict(back_depth=0, gamma=1.0, loc_coef=0.5)
    names = editor.module_names
    with trainable_weights(adapter, names) as weights:
        backtracking_loss(adapter, [batch], EditDelta.from_in_out(adapter, proposal.shifts, editor="t"), **kw)
        grads = {n: adapter.param_to_in_out(n, w.grad).float().clone() for n, w in zip(names, weights)}
    editor.policy.zero_grad()
    editor.policy_loss(proposal.state["mask"], grads, proposal.full, intrinsic=False).backward()
    assert editor.policy.gate.weight.grad.abs().sum() > 0
    # finite-difference check of dL/dmask_m for one unchosen and one chosen module
    for name in (n for n in names if n not in proposal.shifts or n == next(iter(proposal.shifts))):
        eps = 1e-2

        def loss_at(scale):
            shifts = dict(proposal.shifts)
            shifts[name] = shifts.get(name, 0 * proposal.full[name]) + scale * proposal.full[name]
            return backtracking_loss(adapter, [batch], EditDelta.from_in_out(adapter, shifts, editor="t"),
                                     backward=False, **kw)["loss"]

        numeric = (loss_at(eps) - loss_at(-eps)) / (2 * eps)
        analytic = float((grads[name] * proposal.full[name]).sum())
        assert abs(analytic) > 1e-4 and analytic == pytest.approx(numeric, rel=0.05)


def test_edit_changes_top_k_modules_and_checkpoint_roundtrip(tiny_llama, tmp_path):
    editor = _editor(tiny_llama)
    delta = editor.edit(tiny_llama, requests(1))
    assert len(delta.shifts) == 2 and delta.meta["n_candidates"] == 4
    editor.save(tmp_path / "ck")
    loaded = get_editor("hiedit", checkpoint=str(tmp_path / "ck"), lm=tiny_llama)
    again = loaded.edit(tiny_llama, requests(1))
    assert set(again.shifts) == set(delta.shifts)
    assert all(torch.equal(again.shifts[n], delta.shifts[n]) for n in delta.shifts)


def test_trajectory_training_updates_policy_and_hypernet(tiny_llama, tmp_path):
    editor = _editor(tiny_llama, low="mend")
    gate_before = editor.policy.gate.weight.detach().clone()
    cfg = TrajectoryConfig(steps=2, traj_len=3, back_depth=2, meta_lr=1e-2, ckpt_every=1)
    log = TrajectoryTrainer(editor, tiny_llama, requests(6), cfg, tmp_path / "run").run()
    assert len(log) == 2 and all("advantage_vs_all" in r for r in log)
    assert all(r["modules_touched"] == 2 for r in log)
    assert not torch.equal(editor.policy.gate.weight, gate_before)


def test_cli_train_hiedit_then_lifelong(tiny_dirs, tmp_path):
    import json

    from test_lifelong import _write_requests

    from hyperedit.cli import main

    data = tmp_path / "edits.jsonl"
    _write_requests(data, 8)
    out = tmp_path / "hi"
    assert main(["train", "-q", "--editor", "hiedit", "--model", str(tiny_dirs["llama"]), "--train", str(data),
                 "--out", str(out), "--layers", "0-3", "--rank", "4", "--n-blocks", "1", "--set", "top_k=2",
                 "--set", "low=mend", "--steps", "1", "--n-edits", "1", "--traj-len", "2", "--back-depth", "1",
                 "--ckpt-every", "1"]) == 0
    assert (out / "LATEST").is_file()
    assert main(["lifelong", "-q", "--editor", "hiedit", "--checkpoint", str(out), "--model", str(tiny_dirs["llama"]),
                 "--data", str(data), "--num-seq", "4", "--batch", "2", "--num-pre", "2", "--curve-every", "2",
                 "--general-per-task", "0", "--run-dir", str(tmp_path / "ll"), "--out", str(tmp_path / "res")]) == 0
    record = json.loads((tmp_path / "res.json").read_text())[0]
    assert record["mode"] == "lifelong" and record["metrics"]["modules_fraction"] == 0.5
    # 2 steps x top_k 2 modules, counted per module over the 4 candidates
    counts = record["module_edits"]
    assert sum(counts.values()) == 4 and len(counts) <= 4 and max(counts.values()) <= 2
    assert (tmp_path / "res.png").is_file() and (tmp_path / "res.md").is_file()


def test_shift_scale_scales_only_the_chosen_shifts(tiny_llama, tmp_path):
    _editor(tiny_llama).save(tmp_path / "ck")
    full = get_editor("hiedit", checkpoint=str(tmp_path / "ck"), lm=tiny_llama).edit(tiny_llama, requests(1))
    half = get_editor("hiedit", checkpoint=str(tmp_path / "ck"), lm=tiny_llama, shift_scale=0.5).edit(tiny_llama,
                                                                                                    requests(1))
    assert set(half.shifts) == set(full.shifts) and len(full.shifts) == 2
    assert all(torch.allclose(half.shifts[n], 0.5 * full.shifts[n], rtol=1e-5, atol=1e-8) for n in full.shifts)
    with pytest.raises(HyperEditError, match="cannot override top_k"):
        get_editor("hiedit", checkpoint=str(tmp_path / "ck"), top_k=3)


def test_random_selection_draws_top_k_per_edit_reproducibly(tiny_llama, tmp_path):
    _editor(tiny_llama).save(tmp_path / "ck")
    editor = get_editor("hiedit", checkpoint=str(tmp_path / "ck"), lm=tiny_llama, selection="random")
    drawn = []
    for i in range(6):
        batch = requests(i + 1)[i:]
        delta = editor.edit(tiny_llama, batch)
        assert len(delta.shifts) == 2 and set(delta.shifts) == set(editor.random_choice(batch))
        drawn.append(tuple(sorted(delta.shifts)))
    # the draw is seeded by the edit itself, and different edits do not all draw the same pair
    assert editor.random_choice(requests(3)[2:]) == list(drawn[2]) and len(set(drawn)) > 1
    with pytest.raises(ValueError, match="selection"):
        HiEditConfig(selection="best")


def test_lowest_selection_always_edits_the_lowest_top_k_layers(tiny_llama, tmp_path):
    _editor(tiny_llama).save(tmp_path / "ck")
    editor = get_editor("hiedit", checkpoint=str(tmp_path / "ck"), lm=tiny_llama, selection="lowest")
    lowest = set(tiny_llama.adapter.module_names([0, 1]))
    assert all(set(editor.edit(tiny_llama, requests(i + 1)[i:]).shifts) == lowest for i in range(3))


def test_rounds_edit_the_model_the_earlier_rounds_left(tiny_llama):
    editor = _editor(tiny_llama, lr_init=0.5)
    batch = requests(2)
    first = editor.edit(tiny_llama, batch)
    with first.applied(tiny_llama.model):
        second = editor.edit(tiny_llama, batch)
    editor.config.rounds = 2
    both = editor.edit(tiny_llama, batch)
    assert both.meta["n_candidates"] == 4 and set(both.shifts) == set(first.shifts) | set(second.shifts)
    for name, shift in both.shifts.items():  # float32 round-off of two solves
        expected = sum(d.shifts[name] for d in (first, second) if name in d.shifts)
        assert float((shift - expected).norm() / expected.norm()) < 1e-5


def test_warm_start_from_a_hiedit_takes_its_policy_and_hypernetwork(tiny_dirs, tiny_llama, tmp_path):
    import json

    from test_lifelong import _write_requests

    from hyperedit.cli import main

    source = _editor(tiny_llama, lr_init=0.5)
    with torch.no_grad():  # a policy that differs from a fresh one
        source.policy.gate.weight.add_(torch.randn(source.policy.gate.weight.shape, generator=torch.Generator().manual_seed(1)))
    fresh = HiEditEditor.create(source.config, tiny_llama, seed=3)
    batch = requests(2)
    theirs, before = source.edit(tiny_llama, batch), fresh.edit(tiny_llama, batch)
    fresh.warm_start(source)
    ours = fresh.edit(tiny_llama, batch)
    assert set(ours.shifts) == set(theirs.shifts) and all(torch.equal(ours.shifts[n], theirs.shifts[n]) for n in ours.shifts)
    assert set(before.shifts) != set(theirs.shifts) or any(not torch.equal(before.shifts[n], theirs.shifts[n])
                                                           for n in before.shifts)
    source.save(tmp_path / "hi")
    data = tmp_path / "edits.jsonl"
    _write_requests(data, 6)
    assert main(["train", "-q", "--editor", "hiedit", "--model", str(tiny_dirs["llama"]), "--train", str(data),
                 "--out", str(tmp_path / "on"), "--init-from", str(tmp_path / "hi"), "--set", "contrast=1",
                 "--steps", "1", "--n-edits", "2", "--traj-len", "2", "--back-depth", "1", "--ckpt-every", "1"]) == 0
    meta = json.loads(next((tmp_path / "on" / "checkpoints").glob("step-*/editor.json")).read_text())
    assert meta["config"]["top_k"] == 2 and meta["config"]["layers"] == [0, 1, 2, 3]
    assert meta["config"]["contrast"] == 1 and meta["training"]["init_from"] == str(tmp_path / "hi")


def test_a_checkpoint_with_broken_json_is_one_clear_error(tmp_path):
    (tmp_path / "ck").mkdir()
    (tmp_path / "ck" / "editor.json").write_text('{"editor": "hiedit",')
    with pytest.raises(HyperEditError, match="editor.json: invalid JSON"):
        get_editor("hiedit", checkpoint=str(tmp_path / "ck"))
