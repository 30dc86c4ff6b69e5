"""MALMEN and MEND editors on tiny real models: editing, streaming, checkpoints, model checks."""
from __future__ import annotations

import json

import pytest
import torch

from hyperedit.editors import get_editor
from hyperedit.editors.checkpoint import CONFIG_FILE
from hyperedit.editors.hypernet import (MalmenAccumulator, MalmenConfig, MalmenEditor, MendConfig, MendEditor,
                                       NormalEquation, RLEditEditor, cache_requests)
from hyperedit.errors import HyperEditError
from hyperedit.requests import EditRequest, LocalityPrompt

EDITORS = [(MalmenEditor, MalmenConfig), (MendEditor, MendConfig)]
NAMES = "john mary peter anna paul lisa mark sara tom emma".split()
CITIES = "paris rome berlin london madrid tokyo moscow vienna lisbon athens".split()


def facts(n: int, start: int = 0) -> list[EditRequest]:
    out = []
    for i in range(start, start + n):
        a, b = NAMES[i % 10], NAMES[(i * 3 + 1) % 10]
        out.append(EditRequest(prompt=f"{a} {b} was born in", target=CITIES[(i * 7) % 10],
                               rephrasings=(f"the city where {a} {b} was born is",),
                               locality=(LocalityPrompt(f"{b} {a} plays", "tennis"),)))
    return out


def ready_editor(editor_class, config_class, lm, requests, **options):
    """A fresh editor whose normaliser has seen the requests and whose lr makes visible shifts."""
    editor = editor_class.create(config_class(layers=[2, 3], rank=4, **options), lm, seed=0)
    cache = cache_requests(lm.adapter, requests, editor.module_names, "ans")
    for name, (k, g) in cache.items():
        editor.nets.net_for(name)[0].normalizer.update(torch.cat([k, g], -1))
    for net in editor.nets.nets.values():
        net.lr.data.fill_(10.0)
    return editor


def _state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("editor_class, config_class", EDITORS)
@pytest.mark.parametrize("model", ["tiny_llama", "tiny_gpt2"])
def test_edit_returns_shifts_of_the_edited_modules_and_leaves_the_model_unchanged(editor_class, config_class,
                                                                                model, request):
    lm = request.getfixturevalue(model)
    requests = facts(6)
    editor = ready_editor(editor_class, config_class, lm, requests)
    before = _state(lm.model)
    delta = editor.edit(lm, requests)
    after = _state(lm.model)
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert all(not p.requires_grad for p in lm.model.parameters())
    assert sorted(delta.shifts) == sorted(lm.adapter.module_names([2, 3]))
    for name, shift in delta.shifts.items():
        assert shift.shape == lm.adapter.weight(name).shape
        assert float(shift.norm()) > 0
    assert delta.meta["editor"] == editor_class.name and delta.meta["n_requests"] == 6
    batch = lm.adapter.encode([r.prompt for r in requests], [r.target for r in requests])
    with torch.no_grad():
        plain = lm.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        with delta.applied(lm.model):
            edited = lm.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    assert not torch.allclose(plain, edited)


@pytest.mark.parametrize("editor_class, config_class", EDITORS)
def test_streamed_edit_does_not_depend_on_chunk_sizes(editor_class, config_class, tiny_llama):
    requests = facts(9)
    editor = ready_editor(editor_class, config_class, tiny_llama, requests)
    reference = editor.edit(tiny_llama, requests)
    editor.config.lm_batch_size, editor.config.net_batch_size = 2, 3
    streamed = editor.edit(tiny_llama, requests)
    for name, shift in reference.shifts.items():  # equal up to float32 round-off
        assert float((streamed.shifts[name] - shift).norm() / shift.norm()) < 1e-4


@pytest.mark.parametrize("editor_class, config_class", EDITORS)
def test_checkpoint_round_trip_and_refusal_of_another_model(editor_class, config_class, tiny_llama, tiny_gpt2,
                                                           tmp_path):
    requests = facts(4)
    editor = ready_editor(editor_class, config_class, tiny_llama, requests)
    editor.save(tmp_path / "ckpt")
    meta = json.loads((tmp_path / "ckpt" / CONFIG_FILE).read_text())
    assert meta["editor"] == editor_class.name and meta["model"]["model_type"] == "llama"
    loaded = get_editor(editor_class.name, checkpoint=str(tmp_path / "ckpt"), lm=tiny_llama, lm_batch_size=3)
    assert loaded.config.lm_batch_size == 3 and loaded.config.layers == [2, 3]
    a, b = editor.edit(tiny_llama, requests), loaded.edit(tiny_llama, requests)
    for name in a.shifts:  # equal up to float32 round-off (other chunking)
        assert float((a.shifts[name] - b.shifts[name]).norm() / a.shifts[name].norm()) < 1e-4
    with pytest.raises(HyperEditError, match="trained for model") as info:
        get_editor(editor_class.name, checkpoint=str(tmp_path / "ckpt"), lm=tiny_gpt2)
    assert "\n" not in str(info.value)
    with pytest.raises(HyperEditError, match="cannot override rank"):
        get_editor(editor_class.name, checkpoint=str(tmp_path / "ckpt"), rank=8)
    with pytest.raises(HyperEditError, match="pass a checkpoint"):
        get_editor(editor_class.name)
    with pytest.raises(HyperEditError, match="no checkpoint here"):
        get_editor(editor_class.name, checkpoint=str(tmp_path))
    other = "mend" if editor_class.name == "malmen" else "malmen"
    with pytest.raises(HyperEditError, match="checkpoint, not"):
        get_editor(other, checkpoint=str(tmp_path / "ckpt"))


@pytest.mark.parametrize("editor_class, config_class", EDITORS)
def test_shift_scale_of_a_loaded_checkpoint_scales_the_written_shifts(editor_class, config_class, tiny_llama,
                                                                      tmp_path):
    requests = facts(4)
    ready_editor(editor_class, config_class, tiny_llama, requests).save(tmp_path / "ckpt")
    ckpt = str(tmp_path / "ckpt")
    full = get_editor(editor_class.name, checkpoint=ckpt, lm=tiny_llama).edit(tiny_llama, requests)
    small = get_editor(editor_class.name, checkpoint=ckpt, lm=tiny_llama, shift_scale=0.25).edit(tiny_llama, requests)
    assert small.meta["config"]["shift_scale"] == 0.25
    for name, shift in full.shifts.items():
        assert torch.allclose(small.shifts[name], 0.25 * shift, rtol=1e-5, atol=1e-8)
    for bad, message in ((0.0, "shift_scale must be > 0"), ("big", "expected float")):
        with pytest.raises(HyperEditError, match=message) as info:
            get_editor(editor_class.name, checkpoint=ckpt, shift_scale=bad)
        assert "\n" not in str(info.value)


def test_checkpoint_for_other_module_shapes_is_refused(tiny_llama, tmp_path):
    """Same architecture, depth, width and vocabulary, but a wider MLP: the module shapes differ."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from hyperedit.models import load_model
    from tiny import word_tokenizer

    editor = ready_editor(MalmenEditor, MalmenConfig, tiny_llama, facts(2))
    editor.save(tmp_path / "ckpt")
    config = tiny_llama.model.config.to_dict()
    config.update(intermediate_size=96)
    path = tmp_path / "wide"
    word_tokenizer(path)
    LlamaForCausalLM(LlamaConfig(**config)).save_pretrained(path)
    wide = load_model(str(path))
    with pytest.raises(HyperEditError, match="expects model.layers.2.mlp.down_proj of shape"):
        MalmenEditor.from_checkpoint(tmp_path / "ckpt", lm=wide)


def test_corrupt_checkpoint_is_a_one_line_error(tiny_llama, tmp_path):
    editor = ready_editor(MalmenEditor, MalmenConfig, tiny_llama, facts(2))
    editor.save(tmp_path / "ckpt")
    meta = json.loads((tmp_path / "ckpt" / CONFIG_FILE).read_text())
    meta["config"]["rank"] = 5  # weights were saved with rank 4
    (tmp_path / "ckpt" / CONFIG_FILE).write_text(json.dumps(meta))
    with pytest.raises(HyperEditError, match="does not match") as info:
        MalmenEditor.from_checkpoint(tmp_path / "ckpt", lm=tiny_llama)
    assert "\n" not in str(info.value)


def test_least_squares_keeps_each_facts_value_change_where_the_sum_interferes(tiny_llama):
    """With the same hypernetwork, MALMEN's shift reproduces the proposed value differences on the
    edited keys (K S = D as lambda -> 0); MEND's summed rank-1 terms add cross-talk between facts."""
    requests = facts(10)
    malmen = ready_editor(MalmenEditor, MalmenConfig, tiny_llama, requests, solve_dtype="float64")
    malmen.nets.double()
    for net in malmen.nets.nets.values():
        net.log_lambda.data.fill_(-25.0)
    mend = MendEditor(MendConfig(layers=[2, 3], rank=4), malmen.nets)
    cache = {n: (k.double(), g.double())
             for n, (k, g) in cache_requests(tiny_llama.adapter, requests, malmen.module_names, "ans").items()}
    name = malmen.module_names[-1]
    keys, grads = cache[name]
    net, index = malmen.nets.net_for(name)
    with torch.no_grad():
        diffs = net.value_diffs(keys, grads, index)
        system = NormalEquation(keys.t() @ keys, keys.t() @ diffs)
        ls_shift = malmen.finish(MalmenAccumulator(systems={name: system}))[name].double()
        _, mend_shifts = mend.predict(cache)
    ls_residual = float((keys @ ls_shift - diffs).norm() / diffs.norm())
    sum_residual = float((keys @ mend_shifts[name] - diffs).norm() / diffs.norm())
    assert ls_residual < 1e-3 < 0.1 < sum_residual


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


@pytest.mark.parametrize("editor_class, config_class", EDITORS)
def test_partition_writes_each_chunk_to_one_module_only(editor_class, config_class, tiny_llama):
    """With ``partition`` chunk i goes to module i mod 2: each module's shift is the one an ordinary
    edit of just its chunks writes there."""
    requests = facts(4)
    editor = ready_editor(editor_class, config_class, tiny_llama, requests, lm_batch_size=1)
    first, second = editor.module_names
    editor.config.partition = True
    parted = editor.edit(tiny_llama, requests)
    editor.config.partition = False
    alone_first = editor.edit(tiny_llama, [requests[0], requests[2]])
    alone_second = editor.edit(tiny_llama, [requests[1], requests[3]])
    assert _relative(parted.shifts[first], alone_first.shifts[first]) < 1e-4  # float32 sums, another order
    assert _relative(parted.shifts[second], alone_second.shifts[second]) < 1e-4
    whole = editor.edit(tiny_llama, requests)
    assert _relative(parted.shifts[first], whole.shifts[first]) > 1e-2


@pytest.mark.parametrize("editor_class, config_class", EDITORS)
def test_partition_with_fewer_chunks_than_modules_writes_the_chunks_modules(editor_class, config_class, tiny_llama):
    """One chunk, two modules: the edit writes the first module only (it once failed on the second's
    missing sums)."""
    requests = facts(1)
    editor = ready_editor(editor_class, config_class, tiny_llama, requests, lm_batch_size=1)
    editor.config.partition = True
    parted = editor.edit(tiny_llama, requests)
    editor.config.partition = False
    whole = editor.edit(tiny_llama, requests)
    first = editor.module_names[0]
    assert list(parted.shifts) == [first]
    assert _relative(parted.shifts[first], whole.shifts[first]) < 1e-6


@pytest.mark.parametrize("editor_class, config_class", EDITORS)
def test_each_round_edits_the_model_the_earlier_rounds_left_and_adds_its_shifts(editor_class, config_class,
                                                                               tiny_llama):
    requests = facts(5)
    editor = ready_editor(editor_class, config_class, tiny_llama, requests)
    before = _state(tiny_llama.model)
    first = editor.edit(tiny_llama, requests)
    with first.applied(tiny_llama.model):
        second = editor.edit(tiny_llama, requests)
    editor.config.rounds = 2
    both = editor.edit(tiny_llama, requests)
    after = _state(tiny_llama.model)
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert both.meta["config"]["rounds"] == 2 and both.meta["n_requests"] == 5
    for name, shift in both.shifts.items():  # float32 round-off of two solves
        assert _relative(second.shifts[name], first.shifts[name]) > 1e-2  # the second round is another step
        assert _relative(shift, first.shifts[name] + second.shifts[name]) < 1e-5


def test_rounds_is_a_runtime_option_and_checked(tiny_llama, tmp_path):
    requests = facts(3)
    ready_editor(MalmenEditor, MalmenConfig, tiny_llama, requests).save(tmp_path / "ckpt")
    loaded = get_editor("malmen", checkpoint=str(tmp_path / "ckpt"), lm=tiny_llama, rounds=3)
    assert loaded.config.rounds == 3
    for bad, message in ((0, "rounds must be >= 1"), (1.5, "expected int")):
        with pytest.raises(HyperEditError, match=message) as info:
            get_editor("malmen", checkpoint=str(tmp_path / "ckpt"), rounds=bad)
        assert "\n" not in str(info.value)


def _stacked_joint_solution(editor, cache, penalties):
    """The joint shifts from the stacked normal equation (float64): keys side by side (times the
    null-space basis where given), block-diagonal penalty ``penalties[name]`` (e^lambda I included)."""
    keys, diffs, bases = [], 0, []
    with torch.no_grad():
        for name in editor.module_names:
            k, g = cache[name]
            net, index = editor.nets.net_for(name)
            U = penalties[name][1]
            keys.append(k.double() if U is None else k.double() @ U)
            diffs = diffs + net.value_diffs(k, g, index).double()
            bases.append(U)
    stacked = torch.cat(keys, dim=1)
    solved = torch.linalg.solve(stacked.T @ stacked + torch.block_diag(*[penalties[n][0] for n in editor.module_names]),
                                stacked.T @ diffs)
    out, start = {}, 0
    for name, k, U in zip(editor.module_names, keys, bases):
        z = solved[start:start + k.shape[1]]
        start += k.shape[1]
        out[name] = z if U is None else U @ z
    return out


def test_joint_solve_is_the_least_squares_over_all_modules_keys_side_by_side(tiny_llama):
    """``joint``: the modules' shifts minimise ||sum_m K_m S_m - sum_m D_m||^2 + sum_m e^lambda_m ||S_m||^2
    (checked against the stacked normal equation in float64), and they are not the per-module solves."""
    requests = facts(6)
    editor = ready_editor(MalmenEditor, MalmenConfig, tiny_llama, requests, solve_dtype="float64", joint=True)
    for i, net in enumerate(editor.nets.nets.values()):
        net.log_lambda.data.fill_(-1.0 + i)
    joint = editor.edit(tiny_llama, requests).shifts
    cache = cache_requests(tiny_llama.adapter, requests, editor.module_names, "ans")
    d_in = cache[editor.module_names[0]][0].shape[1]
    expected = _stacked_joint_solution(editor, cache, {
        n: (editor.learned_ridge(n) * torch.eye(d_in, dtype=torch.float64), None) for n in editor.module_names})
    editor.config.joint = False
    separate = editor.edit(tiny_llama, requests).shifts
    for name in editor.module_names:
        # the delta stores the weight's layout (d_out, d_in); float32 shifts of a float64 solve
        torch.testing.assert_close(joint[name].T.double(), expected[name], rtol=1e-5,
                                   atol=1e-6 * float(expected[name].abs().max()))
        assert _relative(separate[name].T.double(), expected[name]) > 1e-2


def test_a_large_edit_without_joint_points_to_it_once(tiny_llama, caplog):
    """From ``JOINT_HINT_FACTS`` facts in one edit the log names the joint setting, once per editor;
    with ``joint`` on, or below the threshold, it says nothing."""
    requests = facts(6)
    quiet = ready_editor(MalmenEditor, MalmenConfig, tiny_llama, requests, joint=True)
    told = ready_editor(MalmenEditor, MalmenConfig, tiny_llama, requests)
    for editor in (quiet, told):
        editor.JOINT_HINT_FACTS = 6
    with caplog.at_level("INFO", logger="hyperedit.editors.hypernet.malmen"):
        told.edit(tiny_llama, requests[:5])
        quiet.edit(tiny_llama, requests)
        assert "joint=true" not in caplog.text
        told.edit(tiny_llama, requests)
        told.edit(tiny_llama, requests)
    assert caplog.text.count("joint=true") == 1
    assert RLEditEditor.JOINT_HINT_FACTS is None  # measured for MALMEN only


def test_joint_options_are_checked():
    for bad in ({"ridge": "covariance"}, {"partition": True}):
        with pytest.raises(ValueError, match="joint"):
            MalmenConfig(layers=[2, 3], joint=True, **bad)


def test_joint_rows_to_keep_and_the_null_space_memory_join_each_module_penalty(tiny_llama):
    """Contrast rows (target 0) and, with ``nullspace``, the memory of earlier edits enter each module's
    penalty as in the per-module solve; the joint shifts then equal the stacked normal equation."""
    from hyperedit.editors.locate import null_space_basis

    requests, earlier = facts(4), facts(3, start=5)
    editor = ready_editor(MalmenEditor, MalmenConfig, tiny_llama, requests + earlier, solve_dtype="float64",
                          joint=True, nullspace=True, nullspace_threshold=0.5, threshold_relative=True)
    d_in = editor.nets.net_for(editor.module_names[0])[0].d_in
    gen = torch.Generator().manual_seed(5)
    second = {n: (lambda a: a @ a.T)(torch.randn(d_in, 3, generator=gen, dtype=torch.float64))
              for n in editor.module_names}
    editor.ridges = second  # C0 for the null space: a rank-3 "generic text" covariance
    editor.bases = {n: null_space_basis(c, 0.5, True) for n, c in second.items()}
    editor.edit(tiny_llama, earlier)  # the memory K_p of three earlier facts
    assert editor.keys.n_edits == 3
    cache = cache_requests(tiny_llama.adapter, requests, editor.module_names, "ans")
    rows = {n: (lambda a: a @ a.T)(torch.randn(d_in, 2, generator=gen, dtype=torch.float64)) for n in editor.module_names}
    acc = editor.new_accumulator()
    for name in editor.module_names:
        editor.accumulate(acc, name, *cache[name])
    editor.add_rows(acc, rows)
    with torch.no_grad():
        joint = editor.finish(acc)
    penalties = {}
    for name in editor.module_names:
        U = editor.bases[name].double()
        held = editor.config.memory_weight * editor.keys.get(name).double() + rows[name]
        penalties[name] = (U.T @ held @ U + editor.learned_ridge(name) * torch.eye(U.shape[1], dtype=torch.float64), U)
    expected = _stacked_joint_solution(editor, cache, penalties)
    for name in editor.module_names:
        torch.testing.assert_close(joint[name].double(), expected[name], rtol=1e-5,
                                   atol=1e-6 * float(expected[name].abs().max()))
        # the shift lies in the null space: C0's directions are kept exactly
        assert float((second[name] @ joint[name].double()).norm()) < 1e-6 * float(second[name].norm() * joint[name].norm())
    with pytest.raises(HyperEditError, match="edit-time option"):
        editor.backward(cache, acc, joint, {n: torch.ones_like(v) for n, v in joint.items()})


def test_the_joint_solve_backward_equals_autograd_in_float64(tiny_llama):
    """The hypernetwork's and lambda's gradients of a loss of the joint shifts, from ``backward``,
    against autograd through the same solve written with ``torch.linalg.solve`` (float64)."""
    requests = facts(5)
    editor = ready_editor(MalmenEditor, MalmenConfig, tiny_llama, requests, solve_dtype="float64", joint=True)
    editor.nets.double()
    for i, net in enumerate(editor.nets.nets.values()):
        net.log_lambda.data.fill_(0.5 * i)
    cache = {n: (k.double(), g.double())
             for n, (k, g) in cache_requests(tiny_llama.adapter, requests, editor.module_names, "ans").items()}
    gen = torch.Generator().manual_seed(3)
    names = editor.module_names
    targets = {n: torch.randn(cache[n][0].shape[1], cache[n][1].shape[1], generator=gen, dtype=torch.float64)
               for n in names}

    def loss_of(shifts):  # a quadratic loss touching every module's shift
        return sum(((shifts[n] - targets[n]) ** 2).sum() for n in names)

    params = list(editor.nets.parameters())
    editor.nets.zero_grad()
    acc, shifts = editor.predict(cache)
    grad_shifts = {n: 2 * (shifts[n].double() - targets[n]) for n in names}
    editor.backward(cache, acc, shifts, grad_shifts)
    ours = [None if p.grad is None else p.grad.clone() for p in params]

    editor.nets.zero_grad()
    gram, total, keys, lams = 0, 0, {}, {}
    for n in names:
        net, index = editor.nets.net_for(n)
        keys[n], lams[n] = cache[n][0], net.log_lambda[index].exp()
        gram = gram + keys[n] @ keys[n].T / lams[n]
        total = total + net.value_diffs(*cache[n], index)
    weights = torch.linalg.solve(gram + torch.eye(gram.shape[0], dtype=torch.float64), total)
    loss_of({n: keys[n].T @ weights / lams[n] for n in names}).backward()
    compared = 0
    for p, mine in zip(params, ours):
        if p.grad is None:
            assert mine is None or not mine.any()
            continue
        torch.testing.assert_close(mine, p.grad, rtol=1e-7, atol=1e-9 * float(p.grad.abs().max()))
        compared += 1
    assert compared >= 4  # the networks' weights and every lambda
