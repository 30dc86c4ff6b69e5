"""RLEdit: the discounted backtracking loss against a hand computation, trajectory training, resume."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from hyperedit.delta import EditDelta
from hyperedit.editors import get_editor
from hyperedit.editors.hypernet import RLEditConfig, RLEditEditor
from hyperedit.lm import target_logits, trainable_weights
from hyperedit.requests import EditRequest, LocalityPrompt
from hyperedit.training.trajectory import TrajectoryConfig, TrajectoryTrainer, backtracking_loss

WORDS = [("france", "paris", "rome"), ("italy", "rome", "oslo"), ("japan", "tokyo", "delhi"),
         ("spain", "madrid", "cairo"), ("greece", "athens", "vienna"), ("egypt", "cairo", "lisbon")]


def requests(n=6):
    out = []
    for i in range(n):
        country, _, new = WORDS[i % len(WORDS)]
        out.append(EditRequest(prompt=f"the capital of {country} is", target=new, subject=country,
                               rephrasings=(f"the city of {country} is", f"{country} capital city is"),
                               locality=(LocalityPrompt(f"john plays {['piano', 'golf', 'chess'][i % 3]}", "with"),)))
    return out


def _random_delta(adapter, names, scale=0.05, seed=0):
    g = torch.Generator().manual_seed(seed)
    return EditDelta.from_in_out(adapter, {n: scale * torch.randn(*adapter.in_out_shape(n), generator=g) for n in names},
                                 editor="test")


def _hand_ce(adapter, pairs):
    losses = []
    for prompt, target in pairs:  # one example at a time: mean target-token NLL
        out = target_logits(adapter, adapter.encode([prompt], [target]))
        losses.append(F.cross_entropy(out.logits.float(), out.targets))
    return torch.stack(losses).mean()


def _hand_kl(adapter, pairs, refs):
    kls = []
    for (prompt, answer), ref in zip(pairs, refs):
        logp = target_logits(adapter, adapter.encode([prompt], [answer])).logits.float().log_softmax(-1)
        kls.append((ref.exp() * (ref - logp)).sum(-1).mean())
    return torch.stack(kls).mean()


def test_backtracking_loss_matches_a_hand_computation(tiny_llama):
    adapter = tiny_llama.adapter
    names = adapter.module_names([1, 2])
    reqs = requests(6)
    history = [reqs[0:2], reqs[2:4], reqs[4:6]]
    delta = _random_delta(adapter, names)
    gamma, loc_coef = 0.5, 0.7
    with trainable_weights(adapter, names) as weights:
        out = backtracking_loss(adapter, history, delta, back_depth=1, gamma=gamma, loc_coef=loc_coef, batch_size=3)
        got = [w.grad.clone() for w in weights]
    with trainable_weights(adapter, names) as weights:
        hand = 0.0
        for j, batch in ((0, history[2]), (1, history[1])):  # back_depth 1: the last two batches only
            rephrase = [(t, r.target) for r in batch for t in r.rephrasings]
            loc = [(lp.prompt, lp.answer) for r in batch for lp in r.locality]
            with torch.no_grad():  # the unedited model's answers
                refs = [target_logits(adapter, adapter.encode([p], [a])).logits.float().log_softmax(-1) for p, a in loc]
            with delta.applied(adapter.model):
                ce, kl = _hand_ce(adapter, rephrase), _hand_kl(adapter, loc, refs)
                term = gamma ** j * (ce + loc_coef * kl)
                term.backward()
            hand += float(term.detach())
            # float32 losses: relative precision ~1e-5 of the value, whatever its size
            assert out["gen"][j] == pytest.approx(float(ce.detach()), rel=1e-5, abs=1e-6)
            assert out["loc"][j] == pytest.approx(float(kl.detach()), rel=1e-5, abs=1e-6)
        want = [w.grad.clone() for w in weights]
    assert out["loss"] == pytest.approx(float(hand), rel=1e-5, abs=1e-6) and len(out["gen"]) == 2
    for a, b in zip(got, want):
        assert torch.allclose(a, b, atol=1e-6, rtol=1e-4) and a.abs().sum() > 0
    deep = backtracking_loss(adapter, history, delta, back_depth=5, gamma=gamma, loc_coef=loc_coef, backward=False)
    assert len(deep["gen"]) == 3
    assert deep["loss"] - out["loss"] == pytest.approx(gamma ** 2 * (deep["gen"][2] + loc_coef * deep["loc"][2]),
                                                      rel=1e-5, abs=1e-5 * abs(deep["loss"]))


def _trainer(lm, run_dir, steps, **options):
    editor = RLEditEditor.create(RLEditConfig(layers=[2, 3], rank=8, n_blocks=1, lr_init=1e-2), lm, seed=0)
    cfg = TrajectoryConfig(steps=steps, **{**dict(traj_len=3, n_edits=1, back_depth=2, ckpt_every=1, meta_lr=1e-3),
                                           **options})
    return TrajectoryTrainer(editor, lm, requests(6), cfg, run_dir), editor


def test_resume_refuses_another_number_of_trajectories_per_step(tiny_llama, tmp_path):
    from hyperedit.errors import HyperEditError

    first, _ = _trainer(tiny_llama, tmp_path / "run", 1, traj_len=1)
    first.run()
    again, _ = _trainer(tiny_llama, tmp_path / "run", 2, traj_len=1, trajectories_per_step=2)
    with pytest.raises(HyperEditError, match="trajectories_per_step"):
        again.run(resume=True)


def test_trajectory_training_moves_the_hypernet_and_resumes_exactly(tiny_dirs, tmp_path):
    from hyperedit.models import load_model

    lm = load_model(str(tiny_dirs["llama"]))
    trainer, editor = _trainer(lm, tmp_path / "a", 3)
    before = {k: v.clone() for k, v in editor.nets.state_dict().items()}
    log = trainer.run()
    assert len(log) == 3 and all(r["grad_norm"] > 0 for r in log)
    after = editor.nets.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)

    lm2 = load_model(str(tiny_dirs["llama"]))
    part, _ = _trainer(lm2, tmp_path / "b", 1)
    part.run()
    rest, resumed = _trainer(lm2, tmp_path / "b", 3)
    rest.run(resume=True)
    for k, v in resumed.nets.state_dict().items():
        assert torch.equal(v, after[k]), k
    # the trained checkpoint is an ordinary registered editor that edits every configured module
    loaded = get_editor("rledit", checkpoint=str(tmp_path / "a"), lm=lm)
    delta = loaded.edit(lm, requests(2))
    assert set(delta.shifts) == set(editor.module_names)
    assert all(n > 0 for n in delta.norms().values())


def _trained_like_malmen(lm, folder, layers):
    """A MALMEN checkpoint whose hypernetwork is not at its initialisation (random weights)."""
    from hyperedit.editors.hypernet import MalmenConfig, MalmenEditor

    source = MalmenEditor.create(MalmenConfig(layers=layers, rank=4, n_blocks=1, lr_init=0.05), lm, seed=3)
    with torch.no_grad():
        for p in source.nets.parameters():
            p.add_(0.1 * torch.randn_like(p))
    source.save(folder)
    return source


def test_warm_start_gives_the_source_hypernetwork(tiny_llama, tmp_path):
    source = _trained_like_malmen(tiny_llama, tmp_path / "malmen", [1, 2])
    editor = RLEditEditor.create(RLEditConfig(layers=[1, 2], rank=4, n_blocks=1), tiny_llama, seed=0)
    before = editor.edit(tiny_llama, requests(2))
    editor.warm_start(source)
    after, expected = editor.edit(tiny_llama, requests(2)), source.edit(tiny_llama, requests(2))
    assert all(torch.equal(after.shifts[n], expected.shifts[n]) for n in expected.shifts)
    assert not all(torch.equal(before.shifts[n], expected.shifts[n]) for n in expected.shifts)


def test_cli_init_from_takes_the_checkpoint_modules_and_refuses_another_kind(tiny_dirs, tiny_llama, tmp_path, capsys):
    import json

    from test_lifelong import _write_requests

    from hyperedit.cli import main

    _trained_like_malmen(tiny_llama, tmp_path / "malmen", [2, 3])
    data = tmp_path / "edits.jsonl"
    _write_requests(data, 6)
    common = ["--model", str(tiny_dirs["llama"]), "--train", str(data), "--layers", "0-3", "--steps", "1",
              "--n-edits", "1", "--traj-len", "2", "--back-depth", "1", "--ckpt-every", "1",
              "--init-from", str(tmp_path / "malmen")]
    assert main(["train", "-q", "--editor", "rledit", "--out", str(tmp_path / "rl"), *common]) == 0
    meta = json.loads(next((tmp_path / "rl" / "checkpoints").glob("step-*/editor.json")).read_text())
    assert meta["config"]["layers"] == [2, 3] and meta["config"]["rank"] == 4
    capsys.readouterr()
    assert main(["train", "-q", "--editor", "hiedit", "--set", "low=mend", "--set", "top_k=1",
                 "--out", str(tmp_path / "hi"), *common]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "malmen" in err[0] and "mend" in err[0]


def test_meta_training_init_from_continues_the_checkpoint_without_recalibrating(tiny_dirs, tiny_llama, tmp_path):
    import json

    from test_lifelong import _write_requests

    from hyperedit.cli import main
    from hyperedit.editors.hypernet import MalmenEditor

    source = _trained_like_malmen(tiny_llama, tmp_path / "malmen", [2, 3])
    data = tmp_path / "edits.jsonl"
    _write_requests(data, 6)
    meta_lr = 1e-3
    assert main(["train", "-q", "--editor", "malmen", "--model", str(tiny_dirs["llama"]), "--train", str(data),
                 "--out", str(tmp_path / "run"), "--layers", "0-3", "--steps", "1", "--n-edits", "2",
                 "--val-size", "2", "--meta-lr", str(meta_lr), "--lambda-init", "trace",
                 "--init-from", str(tmp_path / "malmen")]) == 0
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert not [r for r in records if r.get("split") == "calibration"]
    trained = MalmenEditor.from_checkpoint(tmp_path / "run")
    assert trained.config.layers == [2, 3] and trained.config.rank == 4
    # one Adam step moves every parameter by at most its step size from the checkpoint's value
    # (lr, log_lambda included: no calibration or trace init replaced them)
    start = dict(source.nets.named_parameters())
    moved = max(float((p.detach() - start[n].detach()).abs().max()) for n, p in trained.nets.named_parameters())
    assert 0 < moved <= meta_lr * 1.01
    # the key site is the checkpoint's unless --set token asks for another (the shapes do not depend on it)
    assert trained.config.token == source.config.token == "ans"
    assert main(["train", "-q", "--editor", "malmen", "--model", str(tiny_dirs["llama"]), "--train", str(data),
                 "--out", str(tmp_path / "subject"), "--steps", "1", "--n-edits", "2", "--val-size", "2",
                 "--set", "token=subject", "--init-from", str(tmp_path / "malmen")]) == 0
    at_subject = MalmenEditor.from_checkpoint(tmp_path / "subject")
    assert at_subject.config.token == "subject" and at_subject.config.layers == [2, 3]
