"""Shipped editors: used without --checkpoint for the model they were trained for, never for another."""
from __future__ import annotations

import logging

import pytest

from hyperedit.editors import _shipped, get_editor
from hyperedit.editors.malmen import MalmenConfig, MalmenEditor
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
