"""The saved-editor files (``editors.checkpoint``): one writer and one reader for every editor that
saves itself, the shipped checkpoints and AlphaEdit's earlier format included; one builder of the
hypernetworks' Adam groups."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

import hyperedit
from hyperedit.editors import get_editor
from hyperedit.editors.checkpoint import CONFIG_FILE, WEIGHTS_FILE, read_editor, write_editor
from hyperedit.editors.hypernet import HiEditConfig, HiEditEditor, MalmenConfig, MalmenEditor, parameter_groups
from hyperedit.editors.locate import AlphaEdit
from hyperedit.errors import HyperEditError
from hyperedit.requests import EditRequest

PRETRAINED = Path(hyperedit.__file__).parent / "pretrained"
TINY = {"layers": [1, 2], "v_steps": 2, "n_prefixes": 0, "stats_samples": 16, "stats_max_length": 16,
        "diagnostics": False}
FACT = [EditRequest(prompt="the eiffel tower is located in the city of", target="rome", subject="eiffel tower")]


@pytest.mark.parametrize("folder", sorted(p.name for p in PRETRAINED.iterdir() if p.is_dir()))
def test_every_shipped_checkpoint_is_read_as_it_is(folder):
    saved = read_editor(PRETRAINED / folder)
    assert folder.startswith(saved.editor + "-")
    tensors = saved.tensors()
    assert tensors and set(saved.module_shapes)
    module = get_editor_class(saved.editor).from_checkpoint(PRETRAINED / folder)
    names = module.low.module_names if isinstance(module, HiEditEditor) else module.module_names
    assert names == list(saved.module_shapes)


def get_editor_class(name):
    from hyperedit.editors import editor_entry

    return editor_entry(name).factory


def test_alphaedit_writes_the_common_files_and_reads_its_earlier_format(tiny_llama, tmp_path):
    editor = get_editor("alphaedit", **TINY)
    editor.edit(tiny_llama, FACT)
    state, _ = editor.stream_state()
    editor.save(tmp_path / "new")
    assert sorted(p.name for p in (tmp_path / "new").iterdir()) == [CONFIG_FILE, WEIGHTS_FILE]
    assert read_editor(tmp_path / "new", "alphaedit", trained=False).meta["state"] == {"kind": "alphaedit"}
    old = tmp_path / "old"  # what ``AlphaEdit.save`` wrote before the common format
    old.mkdir()
    save_file({k: v.contiguous() for k, v in state.items()}, str(old / "state.safetensors"))
    (old / "config.json").write_text(json.dumps({"editor": "alphaedit", "config": json.loads(
        (tmp_path / "new" / CONFIG_FILE).read_text())["config"]}))
    for folder in (tmp_path / "new", old):
        loaded = AlphaEdit.load(folder)
        assert loaded.config == editor.config
        got = loaded.stream_state()[0]
        assert sorted(got) == sorted(state) and all(torch.equal(got[k], state[k]) for k in state)


def test_a_checkpoint_of_another_editor_or_with_foreign_weights_is_one_line(tiny_llama, tmp_path):
    malmen = MalmenEditor.create(MalmenConfig(layers=[2, 3], rank=4, n_blocks=1), tiny_llama, seed=0)
    malmen.save(tmp_path / "malmen")
    with pytest.raises(HyperEditError, match="holds a 'malmen' checkpoint, not 'hiedit'"):
        HiEditEditor.from_checkpoint(tmp_path / "malmen")
    with pytest.raises(HyperEditError, match="holds a 'malmen' checkpoint, not 'alphaedit'"):
        AlphaEdit.load(tmp_path / "malmen")
    hiedit = HiEditEditor.create(HiEditConfig(layers=[2, 3], rank=4, n_blocks=1, top_k=1, policy_hidden=8),
                                 tiny_llama, seed=0)
    hiedit.save(tmp_path / "hiedit")
    save_file({"low.junk": torch.zeros(1)}, str(tmp_path / "hiedit" / WEIGHTS_FILE))  # weights of nothing here
    with pytest.raises(HyperEditError, match="does not match its editor.json") as info:
        HiEditEditor.from_checkpoint(tmp_path / "hiedit")
    assert "\n" not in str(info.value)
    (tmp_path / "malmen" / WEIGHTS_FILE).write_bytes(b"not a safetensors file")
    with pytest.raises(HyperEditError, match="unreadable safetensors file"):
        MalmenEditor.from_checkpoint(tmp_path / "malmen")


def test_written_checkpoint_records_its_fields_and_copies_its_tensors(tmp_path):
    shift = torch.arange(6.0).view(2, 3).t()  # not contiguous
    write_editor(tmp_path / "ed", "memit", {"lam": 1.0}, {"w": shift}, note="x")
    saved = read_editor(tmp_path / "ed", "memit", trained=False)
    assert saved.config == {"lam": 1.0} and saved.extra == {"note": "x"}
    assert torch.equal(saved.tensors()["w"], shift)
    with pytest.raises(HyperEditError, match="missing or malformed: modules"):
        read_editor(tmp_path / "ed")  # a trained editor's checkpoint lists its modules


@pytest.mark.parametrize("lambda_meta_lr", [None, 3e-3])
def test_adam_groups_hold_every_hypernetwork_parameter_once(tiny_llama, lambda_meta_lr):
    nets = MalmenEditor.create(MalmenConfig(layers=[2, 3], rank=4, n_blocks=1), tiny_llama, seed=0).nets
    groups = parameter_groups(nets, 1e-4, 2e-4, lambda_meta_lr)
    grouped = [id(p) for g in groups for p in g["params"]]
    assert sorted(grouped) == sorted(id(p) for p in nets.parameters())
    names = {id(p): n for n, p in nets.named_parameters()}
    assert [g["lr"] for g in groups] == [1e-4, 2e-4] + ([] if lambda_meta_lr is None else [lambda_meta_lr])
    assert all(names[id(p)].endswith(".lr") for p in groups[1]["params"])
    lam = [names[id(p)] for p in groups[0]["params"] if names[id(p)].endswith(".log_lambda")]
    assert bool(lam) == (lambda_meta_lr is None)  # with its own step size, log_lambda has its own group
