"""Shipped editors: used without --checkpoint for the model they were trained for, never for another."""
from __future__ import annotations

import json
import logging
import sys

import pytest
import torch

from hyperedit.editors import get_editor
from hyperedit.editors.hypernet import shipped as _shipped
from hyperedit.editors.hypernet import MalmenConfig, MalmenEditor
from hyperedit.errors import HyperEditError


def test_shipped_checkpoint_is_used_only_for_its_model(tiny_llama, tiny_gpt2, tmp_path, monkeypatch, caplog):
    editor = MalmenEditor.create(MalmenConfig(layers=[2, 3], rank=4), tiny_llama, seed=0)
    name = tiny_llama.adapter.identity()["name"]
    editor.save(tmp_path / "shipped" / "malmen-tiny")
    other = MalmenEditor.create(MalmenConfig(layers=[1, 2], rank=4), tiny_llama, seed=1)
    other.save(tmp_path / "mine")
    monkeypatch.setattr(_shipped, "SHIPPED_DIR", tmp_path / "shipped")

    with caplog.at_level(logging.INFO, logger="hyperedit.editors.base"):
        loaded = get_editor("malmen", lm=tiny_llama)
    assert "shipped" in caplog.text and loaded.config.layers == [2, 3]
    assert get_editor("malmen", checkpoint=str(tmp_path / "mine"), lm=tiny_llama).config.layers == [1, 2]
    with pytest.raises(HyperEditError, match=f"shipped one is for {name}, not") as info:
        get_editor("malmen", lm=tiny_gpt2)
    assert "\n" not in str(info.value)
    with pytest.raises(HyperEditError, match="pass a checkpoint"):
        get_editor("malmen")  # no model to check it against
    with pytest.raises(HyperEditError, match="pass a checkpoint"):
        get_editor("mend", lm=tiny_llama)  # nothing shipped for mend here


def _ship_script():
    from script_loader import load_script

    return load_script("scripts/ship_editor.py")


def test_ship_script_writes_runtime_settings_and_refuses_trained_ones(tiny_llama, tmp_path, monkeypatch):
    from hyperedit.editors.hypernet import RLEditEditor

    editor = RLEditEditor.create(RLEditEditor.config_class(layers=[2, 3], rank=4), tiny_llama, seed=0)
    editor.save(tmp_path / "run")
    script = _ship_script()
    monkeypatch.setattr(script, "PACKAGE", tmp_path / "pretrained")
    monkeypatch.setattr(sys, "argv", ["ship_editor.py", str(tmp_path / "run"), "--command", "hyperedit train x",
                                      "--set", "nullspace=true", "--set", "nullspace_threshold=0.1"])
    script.main()
    name = tiny_llama.adapter.identity()["name"]
    monkeypatch.setattr(_shipped, "SHIPPED_DIR", tmp_path / "pretrained")
    shipped = get_editor("rledit", lm=tiny_llama)
    assert shipped.config.nullspace is True and shipped.config.nullspace_threshold == 0.1
    sidecar = json.loads((tmp_path / "pretrained" / f"rledit-{name}" / "training.json").read_text())
    assert sidecar["settings_changed"] == {"nullspace": True, "nullspace_threshold": 0.1}

    monkeypatch.setattr(sys, "argv", ["ship_editor.py", str(tmp_path / "run"), "--command", "x", "--set", "rank=8"])
    with pytest.raises(SystemExit, match="rank: not a runtime setting"):
        script.main()


def test_ship_script_float16_stores_half_matrices_that_edit_as_the_original(tiny_llama, tmp_path, monkeypatch):
    from safetensors.torch import load_file

    from hyperedit.requests import EditRequest

    editor = MalmenEditor.create(MalmenConfig(layers=[2, 3], rank=4), tiny_llama, seed=0)
    editor.save(tmp_path / "run")
    script = _ship_script()
    monkeypatch.setattr(script, "PACKAGE", tmp_path / "pretrained")
    monkeypatch.setattr(sys, "argv", ["ship_editor.py", str(tmp_path / "run"), "--command", "hyperedit train x", "--float16"])
    script.main()
    folder = tmp_path / "pretrained" / f"malmen-{tiny_llama.adapter.identity()['name']}"
    original, stored = load_file(str(tmp_path / "run" / "editor.safetensors")), load_file(str(folder / "editor.safetensors"))
    assert set(original) == set(stored)
    for key, value in original.items():
        expected = torch.float16 if value.dtype == torch.float32 and value.dim() >= 2 else value.dtype
        assert stored[key].dtype == expected, key
    assert json.loads((folder / "training.json").read_text())["storage"] == "float16 matrices"

    requests = [EditRequest(prompt="The capital of Norway is", target="Lisbon")]
    full = editor.edit(tiny_llama, requests).shifts
    half = get_editor("malmen", checkpoint=str(folder), lm=tiny_llama).edit(tiny_llama, requests).shifts
    for name, shift in full.items():  # float16 keeps ~3 decimal digits of each matrix entry
        assert torch.allclose(half[name], shift, rtol=2e-2, atol=2e-2 * float(shift.abs().max())), name
