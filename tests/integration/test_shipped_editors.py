"""The trained editors shipped for the embedded model: found, identity-checked, and they edit."""
from __future__ import annotations

import json
import logging

import pytest
import torch

from hyperedit.data import resolve_data_dir
from hyperedit.editors import get_editor
from hyperedit.editors.hypernet.shipped import SIDECAR, shipped_checkpoint, shipped_folders
from hyperedit.errors import HyperEditError
from hyperedit.eval import evaluate, locality_reference
from hyperedit.requests import EditRequest

from test_smollm2 import requires_smollm2

pytestmark = [pytest.mark.integration, requires_smollm2]

PLANTED = [
    EditRequest(prompt="The Eiffel Tower is located in the city of", target="Rome"),
    EditRequest(prompt="The mother tongue of Danielle Darrieux is", target="English"),
    EditRequest(prompt="Toko Yasuda plays the", target="violin"),
    EditRequest(prompt="The capital of Norway is", target="Lisbon"),
]


@pytest.fixture(scope="module")
def smollm2():
    from hyperedit.models import load_model

    torch.set_num_threads(1)
    return load_model("smollm2-135m")


@pytest.mark.parametrize("name", ["malmen", "mend"])
def test_shipped_editor_is_used_without_checkpoint_and_flips_planted_facts(smollm2, caplog, name):
    folder = shipped_folders(name).get("smollm2-135m")
    assert folder is not None, f"no {name} checkpoint shipped for smollm2-135m"
    assert (folder / "editor.safetensors").stat().st_size <= 10 * 2 ** 20
    sidecar = json.loads((folder / SIDECAR).read_text())
    assert sidecar["command"].startswith("hyperedit train") and sidecar["validation"]["n_edits"] >= 1
    meta = json.loads((folder / "editor.json").read_text())
    identity = smollm2.adapter.identity()
    assert {k: meta["model"][k] for k in identity} == identity
    assert shipped_checkpoint(name, smollm2) == folder

    with caplog.at_level(logging.INFO, logger="hyperedit.editors.base"):
        editor = get_editor(name, lm=smollm2)
    assert "shipped" in caplog.text
    before, _ = evaluate(smollm2.adapter, PLANTED, None)
    reference = locality_reference(smollm2.adapter, PLANTED)
    delta = editor.edit(smollm2, PLANTED)
    with delta.applied(smollm2.model):
        after, _ = evaluate(smollm2.adapter, PLANTED, reference)
    assert before["ES"] < 0.5 and after["ES"] >= 0.75, (before, after)


@pytest.mark.parametrize("name", ["malmen", "mend", "rledit", "hiedit"])
def test_another_model_gets_a_one_line_refusal(tiny_llama, name):
    with pytest.raises(HyperEditError, match="shipped one is for smollm2-135m") as info:
        get_editor(name, lm=tiny_llama)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("name", ["rledit", "hiedit"])
def test_shipped_lifelong_editor_carries_its_direction_control_and_edits(smollm2, name):
    folder = shipped_folders(name).get("smollm2-135m")
    assert folder is not None, f"no {name} checkpoint shipped for smollm2-135m"
    assert (folder / "editor.safetensors").stat().st_size <= 10 * 2 ** 20
    sidecar = json.loads((folder / SIDECAR).read_text())
    assert sidecar["command"].startswith(f"hyperedit train --editor {name}")
    try:
        resolve_data_dir()
    except HyperEditError:
        pytest.skip("the null space of a shipped lifelong editor needs the generic corpus of the benchmark data")
    editor = get_editor(name, lm=smollm2, ridge_samples=200)  # a small C0 sample keeps the test short
    assert editor.config.nullspace is True
    before, _ = evaluate(smollm2.adapter, PLANTED, None)
    delta = editor.edit(smollm2, PLANTED)
    with delta.applied(smollm2.model):
        after, _ = evaluate(smollm2.adapter, PLANTED, None)
    assert after["ES"] > before["ES"], (before, after)
