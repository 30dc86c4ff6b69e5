"""``--device-map``: one model placed over several places by accelerate, edited and evaluated.

A CPU-only machine has one compute device, so the split tested here is CPU + disk offload: the
layers mapped to ``disk`` have their weights on the meta device and accelerate's hooks load them
from the offload folder for every forward pass, exactly as it does for layers on another GPU
(moving activations between devices is the one part a single-device machine cannot exercise).
"""
from __future__ import annotations

import json

import pytest
import torch

from hyperedit.cli import main
from hyperedit.delta import EditDelta
from hyperedit.editors.hypernet import MalmenConfig, MalmenEditor
from hyperedit.models import load_model
from test_distributed_training import assert_same_metrics, facts_with_rephrasing_and_locality

SPLIT = {"model.embed_tokens": "cpu", "model.rotary_emb": "cpu", "model.layers.0": "cpu", "model.layers.1": "disk",
         "model.layers.2": "cpu", "model.layers.3": "disk", "model.norm": "cpu", "lm_head": "cpu"}


@pytest.fixture
def setup(tiny_dirs, tiny_llama, tmp_path):
    checkpoint = tmp_path / "editor"
    MalmenEditor.create(MalmenConfig(layers=[0, 2], rank=8, lr_init=1e-2, solve_dtype="float64"), tiny_llama,
                        seed=3).save(checkpoint)
    requests = tmp_path / "facts.jsonl"
    requests.write_text("".join(json.dumps(f) + "\n" for f in facts_with_rephrasing_and_locality()))
    device_map = tmp_path / "map.json"
    device_map.write_text(json.dumps(SPLIT))
    common = ["--model", str(tiny_dirs["llama"]), "--editor", "malmen", "--checkpoint", str(checkpoint)]
    return common, requests, device_map


def test_the_map_really_offloads_half_the_layers(tiny_dirs, tmp_path):
    lm = load_model(str(tiny_dirs["llama"]), device_map=SPLIT, offload_folder=str(tmp_path / "offload"))
    assert lm.model.hf_device_map == SPLIT
    layers = lm.model.model.layers
    assert [layers[i].mlp.down_proj.weight.device.type for i in range(4)] == ["cpu", "meta", "cpu", "meta"]
    assert lm.device == torch.device("cpu")
    whole = load_model(str(tiny_dirs["llama"]))
    ids = torch.tensor([[2, 5, 6, 7, 8]])
    torch.testing.assert_close(lm.model(ids).logits, whole.model(ids).logits, rtol=1e-5, atol=1e-6)


def test_edit_and_eval_on_a_split_model_equal_the_whole_model(setup, tmp_path, capsys):
    common, requests, device_map = setup
    placed = ["--device-map", str(device_map), "--offload-folder", str(tmp_path / "offload")]
    for out, extra in (("whole", []), ("split", placed)):
        assert main(["edit", "-q", *common, "--requests", str(requests), "--out", str(tmp_path / out), *extra]) == 0
    whole, split = EditDelta.load(tmp_path / "whole"), EditDelta.load(tmp_path / "split")
    assert whole.shifts.keys() == split.shifts.keys()
    for name, shift in whole.shifts.items():
        assert shift.abs().max() > 0
        torch.testing.assert_close(split.shifts[name], shift, rtol=1e-5, atol=1e-6 * float(shift.abs().max()))
    capsys.readouterr()

    metrics = []
    for extra in ([], placed):
        assert main(["eval", "-q", *common, "--data", str(requests), "--n-edits", "7", "--json", *extra]) == 0
        metrics.append(json.loads(capsys.readouterr().out)["metrics"])
    assert_same_metrics(metrics[1], metrics[0])


def test_an_offloaded_edited_layer_is_refused_in_one_line(setup, tmp_path, capsys):
    common, requests, device_map = setup
    device_map.write_text(json.dumps({**SPLIT, "model.layers.2": "disk"}))
    code = main(["eval", *common, "--data", str(requests), "--n-edits", "3", "--device-map", str(device_map),
                 "--offload-folder", str(tmp_path / "offload")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "model.layers.2.mlp.down_proj is offloaded" in err[0]


@pytest.mark.parametrize("options, message", [
    (["--device-map", "everywhere"], "auto, balanced"),
    (["--device-map", "auto", "--max-memory", "lots"], "DEVICE=AMOUNT"),
    (["--max-memory", "0=1GiB"], "go with --device-map"),
])
def test_bad_placement_options_are_one_line_errors(setup, options, message, capsys):
    common, requests, _ = setup
    code = main(["eval", *common, "--data", str(requests), "--n-edits", "3", *options])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and message in err[0], err
