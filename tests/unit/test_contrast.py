"""Contrast rows of the least-squares editors: subject swaps, forward-only keys, and the solve
with the swapped prompts' keys as zero-target rows."""
from __future__ import annotations

import pytest
import torch

from hyperedit.editors.hypernet import MalmenConfig, MalmenEditor, cache_requests, subject_swaps
from hyperedit.lm import cache_keys, cache_keys_and_value_grads, key_gram
from hyperedit.requests import EditRequest, LocalityPrompt

FACTS = [("the capital of {} is", "france", "rome"), ("{} speaks the language", "peter", "dutch"),
         ("the capital of {} is", "spain", "oslo"), ("{} speaks the language", "maria", "greek"),
         ("the river of {} is", "egypt", "seine")]


def _requests():
    out = [EditRequest(prompt=t.format(s), target=new, subject=s, rephrasings=(f"so, {t.format(s)}",),
                       locality=(LocalityPrompt("john plays the", "piano"),)) for t, s, new in FACTS]
    return out + [EditRequest(prompt="no subject here", target="x")]


def test_swaps_use_other_subjects_in_the_edit_own_template_and_never_another_edit_prompt():
    reqs = _requests()
    swaps = subject_swaps(reqs, 2)
    assert subject_swaps(reqs, 2) == swaps  # deterministic
    prompts = {r.prompt for r in reqs}
    by_target = {}
    for prompt, target, subject in swaps:
        by_target.setdefault(target, []).append((prompt, subject))
        assert prompt not in prompts and subject in prompt
    assert set(by_target) == {new for _, _, new in FACTS}  # the request without a subject has none
    for template, own, new in FACTS:
        got = by_target[new]
        assert len(got) == 2
        for prompt, subject in got:
            assert subject != own and prompt == template.format(subject)
            source = next(t for t, s, _ in FACTS if s == subject)
            assert source != template  # a subject asked the same question would fight that edit
    assert subject_swaps(reqs, 0) == [] and subject_swaps(reqs[:1], 3) == []


def test_earlier_subjects_are_swapped_in_after_the_edit_own_most_recent_first():
    from hyperedit.editors.hypernet import asked

    reqs = _requests()
    earlier = asked(reqs[1:5])  # peter (speaks), spain (capital), maria (speaks), egypt (river)
    swaps = subject_swaps(reqs[:1], 2, earlier)  # france: capital
    assert [s for _, _, s in swaps] == ["egypt", "maria"]  # spain is asked the same question
    assert swaps[0] == ("the capital of egypt is", "rome", "egypt")
    within = subject_swaps(reqs[:2], 2, earlier)
    assert [s for p, _, s in within if p.startswith("the capital")] == ["peter", "egypt"]


def test_forward_only_keys_are_the_keys_read_with_gradients(tiny_llama):
    reqs = _requests()[:4]
    names = tiny_llama.adapter.module_names([1, 3], "down")
    args = ([r.prompt for r in reqs], [r.target for r in reqs], names)
    for token in ("ans", "subject"):
        with_grads = cache_keys_and_value_grads(tiny_llama.adapter, *args, chunk_size=3, token=token,
                                                subjects=[r.subject for r in reqs])
        keys = cache_keys(tiny_llama.adapter, *args, chunk_size=2, token=token, subjects=[r.subject for r in reqs])
        for name in names:
            torch.testing.assert_close(keys[name], with_grads[name][0], rtol=1e-5, atol=1e-6)



def test_key_gram_is_the_gram_of_the_keys_whatever_the_chunks(tiny_llama):
    reqs = _requests()[:5]
    names = tiny_llama.adapter.module_names([1, 3], "down")
    args = ([r.prompt for r in reqs], [r.target for r in reqs], names)
    keys = cache_keys(tiny_llama.adapter, *args, chunk_size=5)
    for chunk in (1, 2, 5):
        grams = key_gram(tiny_llama.adapter, *args, chunk_size=chunk)
        for name in names:
            k = keys[name].double()
            assert grams[name].dtype == torch.float64
            torch.testing.assert_close(grams[name], k.t() @ k, rtol=1e-5, atol=1e-6)

def _editor(lm, **options):
    config = MalmenConfig(layers=[2, 3], rank=4, n_blocks=1, lr_init=0.5, solve_dtype="float64", **options)
    return MalmenEditor.create(config, lm, seed=0)


def test_contrast_rows_are_zero_target_rows_of_the_least_squares_solve(tiny_llama):
    reqs = _requests()[:5]
    weight = 2.5
    editor = _editor(tiny_llama, contrast=2, contrast_weight=weight)
    shifts, _ = editor.edit_round(tiny_llama, reqs, first=True)
    plain, _ = _editor(tiny_llama).edit_round(tiny_llama, reqs, first=True)
    swaps = subject_swaps(reqs, 2)
    contrast = cache_keys(tiny_llama.adapter, [p for p, _, _ in swaps], [t for _, t, _ in swaps],
                          editor.module_names, subjects=[s for _, _, s in swaps])
    cache = cache_requests(tiny_llama.adapter, reqs, editor.module_names, "ans")
    for name in editor.module_names:
        net, index = editor.nets.net_for(name)
        keys, grads = cache[name]
        with torch.no_grad():
            d = net.value_diffs(keys, grads, index).double()
        k, kc = keys.double(), contrast[name].double()
        lam = float(net.log_lambda[index].detach().exp())
        normal = k.T @ k + weight * kc.T @ kc + lam * torch.eye(k.shape[1], dtype=torch.float64)
        expected = torch.linalg.solve(normal, k.T @ d)
        torch.testing.assert_close(shifts[name].double(), expected, rtol=1e-5, atol=1e-7 * float(expected.abs().max()))
        # the swapped prompts' outputs move less than without the rows
        assert float((kc @ shifts[name].double()).norm()) < float((kc @ plain[name].double()).norm())


def test_contrast_options_are_checked():
    with pytest.raises(ValueError, match="contrast"):
        MalmenConfig(contrast=-1)
    with pytest.raises(ValueError, match="contrast"):
        MalmenConfig(contrast_weight=0.0)


def test_hiedit_keeps_the_contrast_rows_of_every_candidate_in_its_key_state(tiny_llama, monkeypatch):
    from pathlib import Path

    from hyperedit.editors.hypernet import HiEditConfig, HiEditEditor

    monkeypatch.setenv("HYPEREDIT_DATA_DIR", str(Path(__file__).resolve().parents[1] / "fixtures" / "data"))
    reqs = _requests()[:5]
    config = HiEditConfig(layers=[1, 2, 3], rank=4, n_blocks=1, lr_init=0.5, ridge_samples=5, top_k=2,
                          nullspace=True, nullspace_threshold=1e-3, threshold_relative=True, contrast=1,
                          contrast_weight=3.0)
    editor = HiEditEditor.create(config, tiny_llama, seed=0)
    shifts, _ = editor.edit_round(tiny_llama, reqs, first=True)
    assert len(shifts) == 2
    swaps = subject_swaps(reqs, 1)
    contrast = cache_keys(tiny_llama.adapter, [p for p, _, _ in swaps], [t for _, t, _ in swaps],
                          editor.module_names, subjects=[s for _, _, s in swaps])
    cache = cache_requests(tiny_llama.adapter, reqs, editor.module_names, "ans")
    for name in editor.module_names:  # chosen or not
        k, kc = cache[name][0].double(), contrast[name].double()
        torch.testing.assert_close(editor.low.keys.get(name), k.T @ k + 3.0 * kc.T @ kc, rtol=1e-5, atol=1e-6)


def test_an_edit_without_swaps_is_solved_as_without_contrast_and_says_so(tiny_llama, caplog):
    one = _requests()[:1]
    with caplog.at_level("INFO", logger="hyperedit.editors.hypernet.malmen"):
        shifts, _ = _editor(tiny_llama, contrast=2).edit_round(tiny_llama, one, first=True)
    plain, _ = _editor(tiny_llama).edit_round(tiny_llama, one, first=True)
    assert "no subject swaps" in caplog.text
    for name in plain:
        torch.testing.assert_close(shifts[name], plain[name], rtol=1e-6, atol=0)


def test_a_stream_of_single_edits_with_contrast_memory_resumes_exactly(tiny_dirs, tiny_llama, tmp_path):
    from hyperedit.editors import get_editor
    from hyperedit.eval.lifelong import LifelongConfig, LifelongRunner
    from hyperedit.models import load_model

    _editor(tiny_llama).save(tmp_path / "ckpt")
    config = LifelongConfig(num_seq=5, batch_size=1, num_pre=2, curve_every=2, curve_sample=2, general_per_task=0)

    def stream(run_dir, stops, memory=2):
        for stop in stops:  # a fresh model and editor per part, as a resumed process has
            lm = load_model(str(tiny_dirs["llama"]))
            editor = get_editor("malmen", checkpoint=str(tmp_path / "ckpt"), lm=lm, contrast=1,
                                contrast_memory=memory)
            runner = LifelongRunner(lm, editor, _requests()[:5], config, run_dir)
            runner.run(resume=True, restore=False, max_edits=stop, progress=False)
        return runner.weights(), editor.asked

    whole, asked_whole = stream(tmp_path / "a", [None])
    parts, asked_parts = stream(tmp_path / "b", [2, 3, None])
    assert set(whole) == set(parts) and all(torch.equal(whole[n], parts[n]) for n in whole)
    assert asked_whole == asked_parts and len(asked_whole) == 2  # the last two edits
    without, nothing = stream(tmp_path / "c", [None], memory=0)  # single edits have no swaps of their own
    assert nothing == [] and any(not torch.equal(whole[n], without[n]) for n in whole)


def test_training_proposes_the_shifts_an_edit_writes_with_its_contrast_rows(tiny_llama):
    from hyperedit.editors.hypernet import RLEditConfig, RLEditEditor

    reqs = _requests()[:5]
    config = RLEditConfig(layers=[2, 3], rank=4, n_blocks=1, lr_init=0.5, solve_dtype="float64", contrast=2)
    editor = RLEditEditor.create(config, tiny_llama, seed=0)
    written, _ = editor.edit_round(tiny_llama, reqs, first=False)
    cache = editor.cache(tiny_llama, reqs)
    rows = editor.contrast_rows(tiny_llama, reqs)
    assert set(rows) == set(editor.module_names)
    proposed = editor.trajectory_propose(cache, rows).shifts
    without = editor.trajectory_propose(cache).shifts
    for name in editor.module_names:
        torch.testing.assert_close(proposed[name], written[name], rtol=1e-5, atol=1e-7 * float(written[name].abs().max()))
        assert not torch.allclose(without[name], written[name], rtol=1e-3, atol=0)


def test_the_solve_backward_with_contrast_rows_equals_autograd_in_float64():
    from hyperedit.nets import HyperNets

    gen = torch.Generator().manual_seed(5)
    nets = HyperNets({"m": (8, 5)}, rank=3, n_blocks=1, lr_init=0.05, seed=1).double()
    with torch.no_grad():
        for p in nets.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=gen, dtype=p.dtype))
    editor = MalmenEditor(MalmenConfig(solve_dtype="float64"), nets)
    keys, grads = (torch.randn(6, d, generator=gen, dtype=torch.float64) for d in (8, 5))
    swapped = torch.randn(12, 8, generator=gen, dtype=torch.float64)
    target = torch.randn(8, 5, generator=gen, dtype=torch.float64)
    net, index = nets.net_for("m")
    diffs = net.value_diffs(keys, grads, index)  # autograd through the whole graph
    normal = keys.T @ keys + swapped.T @ swapped + net.log_lambda[index].exp() * torch.eye(8, dtype=torch.float64)
    shift = torch.linalg.solve(normal, keys.T @ diffs)
    expected = torch.autograd.grad(((shift - target) ** 2).sum(), list(nets.parameters()), allow_unused=True)
    cache = {"m": (keys, grads)}
    acc, shifts = editor.predict(cache, rows={"m": swapped.T @ swapped})
    shifts = {"m": shifts["m"].double()}
    nets.zero_grad()
    editor.backward(cache, acc, shifts, {"m": 2 * (shifts["m"] - target)})
    checked = 0
    for (name, p), e in zip(nets.named_parameters(), expected):
        if e is not None and float(e.abs().max()) > 0:
            torch.testing.assert_close(p.grad, e, rtol=1e-5, atol=1e-5 * float(e.abs().max()), msg=name)
            checked += 1
    assert checked >= 3  # the hypernetwork's weights, its edit lr and the ridge strength


def test_meta_training_solves_from_its_caches_with_the_rows_an_edit_adds(tiny_llama, tmp_path):
    from hyperedit.training import MetaTrainConfig, MetaTrainer

    reqs = _requests()[:5]
    editor = _editor(tiny_llama, contrast=1)
    config = MetaTrainConfig(steps=1, n_edits=5, val_size=0, val_every=0, calibrate_lr=False, cache_dir="")
    trainer = MetaTrainer(editor, tiny_llama, reqs, [], config, tmp_path / "run")
    trainer.prepare_caches()
    indices = trainer.batch_indices(0)
    cache, _, _ = trainer.step_inputs(indices)
    _, trained = editor.predict(cache, rows=trainer.contrast_rows(reqs, indices))
    written, _ = editor.edit_round(tiny_llama, [reqs[i] for i in indices], first=False)
    plain, _ = _editor(tiny_llama).edit_round(tiny_llama, reqs, first=False)
    for name in editor.module_names:
        scale = float(written[name].abs().max())
        torch.testing.assert_close(trained[name], written[name], rtol=1e-5, atol=1e-6 * scale)
        assert not torch.allclose(plain[name], written[name], rtol=1e-3, atol=0)
    assert MetaTrainer(_editor(tiny_llama), tiny_llama, reqs, [], config, tmp_path / "r2").contrast_rows(reqs, indices) is None
