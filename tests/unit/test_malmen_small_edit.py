"""MALMEN's small-edit rule: edits of at most ``small_edit_facts`` facts are solved with the
small-edit contrast rows and shift scale, larger ones with the editor's own settings."""
from __future__ import annotations

import json

import pytest
import torch

from hyperedit.editors import get_editor
from hyperedit.editors._shipped import SHIPPED_DIR
from hyperedit.editors.base import make_config
from hyperedit.editors.malmen import MalmenConfig, MalmenEditor
from hyperedit.errors import HyperEditError
from hyperedit.requests import EditRequest, LocalityPrompt

FACTS = [("the capital of {} is", "france", "rome"), ("{} speaks the language", "peter", "dutch"),
         ("the river of {} is", "egypt", "seine"), ("{} plays the sport of", "maria", "golf"),
         ("the capital of {} is", "spain", "oslo")]
RULE = {"small_edit_facts": 4, "small_edit_contrast": 2, "small_edit_shift_scale": 1.5}


def _requests() -> list[EditRequest]:
    return [EditRequest(prompt=t.format(s), target=new, subject=s, rephrasings=(f"so, {t.format(s)}",),
                        locality=(LocalityPrompt("john plays the", "piano"),)) for t, s, new in FACTS]


def _editor(lm, **options) -> MalmenEditor:
    config = MalmenConfig(layers=[2, 3], rank=4, n_blocks=1, lr_init=0.5, solve_dtype="float64", **options)
    return MalmenEditor.create(config, lm, seed=0)


def _same(a, b) -> bool:
    return all(torch.allclose(a.shifts[n], b.shifts[n], rtol=1e-5, atol=1e-8) for n in a.shifts)


def test_small_edits_use_the_small_edit_settings_and_larger_ones_the_editor_own(tiny_llama):
    reqs = _requests()
    ruled = _editor(tiny_llama, **RULE)
    as_small = _editor(tiny_llama, contrast=2, shift_scale=1.5)
    plain = _editor(tiny_llama)
    small = ruled.edit(tiny_llama, reqs[:4])
    assert _same(small, as_small.edit(tiny_llama, reqs[:4]))
    assert not _same(small, plain.edit(tiny_llama, reqs[:4]))  # the rule changes what is written
    assert small.meta["config"]["contrast"] == 2 and small.meta["config"]["shift_scale"] == 1.5
    large = ruled.edit(tiny_llama, reqs)  # 5 facts > small_edit_facts: the editor's own settings
    assert _same(large, plain.edit(tiny_llama, reqs))
    assert large.meta["config"]["contrast"] == 0 and large.meta["config"]["shift_scale"] == 1.0
    assert ruled.config.contrast == 0 and ruled.config.shift_scale == 1.0  # restored after the edit


def test_the_rule_is_off_by_default_and_a_runtime_option_of_a_checkpoint(tiny_llama, tmp_path):
    reqs = _requests()[:4]
    assert _editor(tiny_llama).small_edit_config(1) is None  # a trained editor's default: off
    _editor(tiny_llama, **RULE).save(tmp_path / "ckpt")
    loaded = get_editor("malmen", checkpoint=str(tmp_path / "ckpt"), lm=tiny_llama)
    off = get_editor("malmen", checkpoint=str(tmp_path / "ckpt"), lm=tiny_llama, small_edit_facts=0)
    assert loaded.config.small_edit_facts == 4 and off.small_edit_config(4) is None
    assert _same(off.edit(tiny_llama, reqs), _editor(tiny_llama).edit(tiny_llama, reqs))
    for bad in ({"small_edit_facts": -1}, {"small_edit_contrast": -2}, {"small_edit_shift_scale": 0.0}):
        with pytest.raises(HyperEditError, match="small_edit") as info:
            get_editor("malmen", checkpoint=str(tmp_path / "ckpt"), **bad)
        assert "\n" not in str(info.value)


def test_the_shipped_rule_leaves_edits_of_a_thousand_facts_to_the_editor_own_settings():
    """The shipped SmolLM2 MALMEN turns the rule on for small edits only: an edit of 1,024 facts
    (the scale its validation figures are for) takes the same code path as before the rule."""
    meta = json.loads((SHIPPED_DIR / "malmen-smollm2-135m" / "editor.json").read_text())
    config = make_config(MalmenConfig, {}, base=meta["config"])
    editor = MalmenEditor(config)
    assert 0 < config.small_edit_facts < 1024 and editor.small_edit_config(1024) is None
    small = editor.small_edit_config(config.small_edit_facts)
    assert small.contrast == config.small_edit_contrast > 0
    assert (config.contrast, config.shift_scale) == (0, 1.0)  # what 1,024 facts are solved with
