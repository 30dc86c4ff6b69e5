"""MALMEN's small-edit rule: edits of at most ``small_edit_facts`` facts are solved with
``small_edit_contrast`` contrast rows spread over their requests, larger ones with the editor's own
settings; the generic
``contrast_subjects`` give a small edit its contrast rows when it has too few requests of its own."""
from __future__ import annotations

import json

import pytest
import torch

from hyperedit.editors import get_editor
from hyperedit.editors.hypernet.contrast import subject_swaps
from hyperedit.editors.hypernet.shipped import SHIPPED_DIR
from hyperedit.editors.base import make_config
from hyperedit.editors.hypernet import MalmenConfig, MalmenEditor
from hyperedit.errors import HyperEditError
from hyperedit.requests import EditRequest, LocalityPrompt

FACTS = [("the capital of {} is", "france", "rome"), ("{} speaks the language", "peter", "dutch"),
         ("the river of {} is", "egypt", "seine"), ("{} plays the sport of", "maria", "golf"),
         ("the capital of {} is", "spain", "oslo")]
RULE = {"small_edit_facts": 4, "small_edit_contrast": 6}  # 4 facts: ceil(6 / 4) = 2 rows per request


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
    as_small = _editor(tiny_llama, contrast=2)
    plain = _editor(tiny_llama)
    small = ruled.edit(tiny_llama, reqs[:4])
    assert _same(small, as_small.edit(tiny_llama, reqs[:4]))
    assert not _same(small, plain.edit(tiny_llama, reqs[:4]))  # the rule changes what is written
    assert small.meta["config"]["contrast"] == 2
    assert [ruled.small_edit_config(n).contrast for n in (1, 2, 3, 4)] == [6, 3, 2, 2]  # more rows per fact
    large = ruled.edit(tiny_llama, reqs)  # 5 facts > small_edit_facts: the editor's own settings
    assert _same(large, plain.edit(tiny_llama, reqs))
    assert large.meta["config"]["contrast"] == 0 and ruled.small_edit_config(5) is None
    assert ruled.config.contrast == 0  # restored after the edit


def test_the_rule_is_off_by_default_and_a_runtime_option_of_a_checkpoint(tiny_llama, tmp_path):
    reqs = _requests()[:4]
    assert _editor(tiny_llama).small_edit_config(1) is None  # a trained editor's default: off
    _editor(tiny_llama, **RULE).save(tmp_path / "ckpt")
    loaded = get_editor("malmen", checkpoint=str(tmp_path / "ckpt"), lm=tiny_llama)
    off = get_editor("malmen", checkpoint=str(tmp_path / "ckpt"), lm=tiny_llama, small_edit_facts=0)
    assert loaded.config.small_edit_facts == 4 and off.small_edit_config(4) is None
    assert _same(off.edit(tiny_llama, reqs), _editor(tiny_llama).edit(tiny_llama, reqs))
    for bad in ({"small_edit_facts": -1}, {"small_edit_contrast": -2}):
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
    assert editor.small_edit_config(config.small_edit_facts).contrast >= 1
    assert editor.small_edit_config(1).contrast == config.small_edit_contrast
    assert config.contrast_subjects and config.contrast == 0  # 1,024 facts: no contrast rows, as before


def test_generic_subjects_are_swapped_in_after_the_edit_own_and_never_the_edit_own_subject():
    reqs = _requests()[:2]  # france (capital), peter (speaks)
    pool = ["peter", "Japan", "the Moon"]
    swaps = subject_swaps(reqs, 3, pool=pool)
    by_prompt = {}
    for prompt, target, subject in swaps:
        by_prompt.setdefault(target, []).append(subject)
    assert by_prompt["rome"] == ["peter", "Japan", "the Moon"]  # the edit's own partner first
    assert by_prompt["dutch"] == ["france", "Japan", "the Moon"]  # its own subject is not swapped in
    assert ("the capital of Japan is", "rome", "Japan") in swaps
    assert [s for _, _, s in subject_swaps(reqs[:1], 2, pool=pool)] == ["peter", "Japan"]  # one request
    assert subject_swaps(reqs, 2) == subject_swaps(reqs, 2, pool=())


def test_contrast_subjects_give_a_one_fact_edit_its_rows(tiny_llama):
    reqs = _requests()[:1]
    with_pool = _editor(tiny_llama, contrast=2, contrast_subjects=["Japan", "the Moon"])
    assert not _same(with_pool.edit(tiny_llama, reqs), _editor(tiny_llama).edit(tiny_llama, reqs))
    assert _same(_editor(tiny_llama, contrast=2).edit(tiny_llama, reqs), _editor(tiny_llama).edit(tiny_llama, reqs))
    for bad in (["ok", ""], "Japan", [3]):
        with pytest.raises(ValueError, match="contrast_subjects"):
            MalmenConfig(contrast_subjects=bad)
