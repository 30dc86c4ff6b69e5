"""Bad models, devices, request files and over-long prompts: one line on stderr, exit 2, no model work."""
from __future__ import annotations

import json
import shutil
import time

import pytest
import torch
from safetensors.torch import load_file, save_file

from hyperedit.cli import main
from hyperedit.editors import get_editor
from hyperedit.errors import InputError
from hyperedit.models import load_model
from hyperedit.models.limits import check_request_lengths, context_limit
from hyperedit.requests import EditRequest, LocalityPrompt

from test_cli import GOOD, _error_line

SHORT_CONTEXT = 24  # positions of the short-context copy of the tiny model
LONG_PROMPT = " ".join(["the city of paris is"] * 4000)  # 20,000 words: minutes of work if not refused


@pytest.fixture
def requests_file(tmp_path):
    path = tmp_path / "requests.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in GOOD))
    return path


def _model_copy(tiny_dirs, tmp_path, kind: str = "llama", **config_changes) -> str:
    """A copy of a tiny model whose config.json has ``config_changes`` applied."""
    path = tmp_path / "model"
    shutil.copytree(tiny_dirs[kind], path)
    config = json.loads((path / "config.json").read_text())
    config.update(config_changes)
    (path / "config.json").write_text(json.dumps(config))
    return str(path)


def _edit(model, requests, out, *extra) -> int:
    return main(["edit", "--model", str(model), "--requests", str(requests), "--out", str(out), *extra])


# ----- the model directory ----------------------------------------------------------------------
@pytest.mark.parametrize("field, value", [("hidden_size", "big"), ("num_hidden_layers", 2.5),
                                          ("vocab_size", None)])
def test_config_field_of_the_wrong_type(tiny_dirs, tmp_path, requests_file, capsys, field, value):
    model = _model_copy(tiny_dirs, tmp_path, **{field: value})
    assert _edit(model, requests_file, tmp_path / "d") == 2
    line = _error_line(capsys)
    assert "config.json" in line and field in line
    assert not (tmp_path / "d").exists()


def test_unknown_model_type_is_one_line(tiny_dirs, tmp_path, requests_file, capsys):
    model = _model_copy(tiny_dirs, tmp_path, model_type="blorp")
    assert _edit(model, requests_file, tmp_path / "d") == 2
    line = _error_line(capsys)
    assert "model_type='blorp'" in line and "llama" in line


def test_config_without_weights(tiny_dirs, tmp_path, requests_file, capsys):
    model = _model_copy(tiny_dirs, tmp_path)
    (tmp_path / "model" / "model.safetensors").unlink()
    assert _edit(model, requests_file, tmp_path / "d") == 2
    assert "no weights" in _error_line(capsys)


def test_weights_missing_a_tensor_are_refused_not_filled_with_random_values(tiny_dirs, tmp_path, requests_file,
                                                                           capsys):
    model = _model_copy(tiny_dirs, tmp_path)
    weights = tmp_path / "model" / "model.safetensors"
    tensors = load_file(str(weights))
    del tensors["model.layers.1.mlp.down_proj.weight"]
    save_file(tensors, str(weights), metadata={"format": "pt"})
    assert _edit(model, requests_file, tmp_path / "d") == 2
    assert "model.layers.1.mlp.down_proj.weight" in _error_line(capsys)


def test_weights_that_contradict_the_config(tiny_dirs, tmp_path, requests_file, capsys):
    model = _model_copy(tiny_dirs, tmp_path, vocab_size=7)
    assert _edit(model, requests_file, tmp_path / "d") == 2
    assert "shapes do not match config.json" in _error_line(capsys)


def test_corrupt_weights_file(tiny_dirs, tmp_path, requests_file, capsys):
    model = _model_copy(tiny_dirs, tmp_path)
    (tmp_path / "model" / "model.safetensors").write_bytes(b"garbage")
    assert _edit(model, requests_file, tmp_path / "d") == 2
    assert "cannot load the weights" in _error_line(capsys)


def test_missing_tokenizer(tiny_dirs, tmp_path, requests_file, capsys):
    model = _model_copy(tiny_dirs, tmp_path)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (tmp_path / "model" / name).unlink()
    assert _edit(model, requests_file, tmp_path / "d") == 2
    assert "cannot load the tokenizer" in _error_line(capsys)


# ----- the device -------------------------------------------------------------------------------
@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
@pytest.mark.parametrize("device", ["cuda", "cuda:1"])
def test_cuda_on_a_cpu_only_machine(tiny_dirs, tmp_path, requests_file, capsys, device):
    assert _edit(tiny_dirs["llama"], requests_file, tmp_path / "d", "--device", device) == 2
    line = _error_line(capsys)
    assert f"'{device}' is not available" in line and "--device cpu" in line


@pytest.mark.parametrize("device, expected", [("tpu9", "unknown device 'tpu9'"), ("meta", "cannot run a model")])
def test_devices_that_cannot_run_a_model(tiny_dirs, tmp_path, requests_file, capsys, device, expected):
    assert main(["eval", "--model", str(tiny_dirs["llama"]), "--data", str(requests_file), "--n-edits", "1",
                 "--device", device]) == 2
    assert expected in _error_line(capsys)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_index_beyond_the_visible_devices(tiny_dirs, tmp_path, requests_file, capsys):
    index = torch.cuda.device_count()
    assert _edit(tiny_dirs["llama"], requests_file, tmp_path / "d", "--device", f"cuda:{index}") == 2
    assert "does not exist" in _error_line(capsys)


def test_cpu_devices_resolve():
    from hyperedit.models.loading import resolve_device

    assert resolve_device("cpu") == torch.device("cpu") and resolve_device("cpu:0") == torch.device("cpu:0")
    assert resolve_device(torch.device("cpu")) == torch.device("cpu")


# ----- request files --------------------------------------------------------------------------
def test_directory_given_as_requests(tiny_dirs, tmp_path, capsys):
    folder = tmp_path / "edits"
    folder.mkdir()
    assert _edit(tiny_dirs["llama"], folder, tmp_path / "d") == 2
    line = _error_line(capsys)
    assert "is a directory" in line and "not found" not in line


def test_counterfact_record_without_target_new_names_that_field(tiny_dirs, tmp_path, capsys):
    data = tmp_path / "cf.json"
    data.write_text(json.dumps([{"case_id": 7, "prompt": "john plays the sport of", "subject": "john",
                                 "ground_truth": "football", "rephrase_prompt": "the sport john plays is",
                                 "locality_prompt": "mary plays the sport of", "locality_ground_truth": "golf"}]))
    assert _edit(tiny_dirs["llama"], data, tmp_path / "d") == 2
    line = _error_line(capsys)
    assert "record 1" in line and "'target_new'" in line and "missing" in line and "case_id" not in line


# ----- prompts longer than the model's context ----------------------------------------------------
def test_context_limit_comes_from_the_config(tiny_dirs, tmp_path):
    short = load_model(_model_copy(tiny_dirs, tmp_path, max_position_embeddings=SHORT_CONTEXT))
    assert context_limit(short.adapter) == SHORT_CONTEXT
    assert context_limit(load_model(str(tiny_dirs["gpt2"])).adapter) == 128  # n_positions


def test_over_long_prompt_is_refused_fast_naming_the_record(tiny_dirs, tmp_path, capsys):
    model = _model_copy(tiny_dirs, tmp_path, max_position_embeddings=SHORT_CONTEXT)
    data = tmp_path / "long.jsonl"
    data.write_text(json.dumps(GOOD[0]) + "\n" + json.dumps({"prompt": LONG_PROMPT, "target": "rome"}) + "\n")
    start = time.perf_counter()
    assert _edit(model, data, tmp_path / "d") == 2
    seconds = time.perf_counter() - start
    line = _error_line(capsys)
    assert str(data) in line and "record 2" in line and "field 'prompt'" in line
    assert f"context of {SHORT_CONTEXT} tokens" in line and "20001 tokens" in line  # 20,000 words + target
    assert seconds < 10, seconds  # editing that prompt would take minutes
    assert not (tmp_path / "d").exists()


def test_over_long_locality_prompt_is_refused_by_eval(tiny_dirs, tmp_path, capsys):
    model = _model_copy(tiny_dirs, tmp_path, max_position_embeddings=SHORT_CONTEXT)
    data = tmp_path / "long.jsonl"
    record = {**GOOD[0], "locality": [{"prompt": "the capital of spain is"}, {"prompt": LONG_PROMPT}]}
    data.write_text(json.dumps(record) + "\n")
    assert main(["eval", "--model", model, "--data", str(data), "--n-edits", "1", "--mode", "single"]) == 2
    line = _error_line(capsys)
    assert "record 1" in line and "field 'locality[1].prompt'" in line


def test_python_api_edit_refuses_before_any_model_work(tiny_dirs, tmp_path):
    lm = load_model(_model_copy(tiny_dirs, tmp_path, max_position_embeddings=SHORT_CONTEXT))
    ok = EditRequest(prompt="the eiffel tower is located in the city of", target="rome")
    long = EditRequest(prompt="john plays the sport of", target="tennis", rephrasings=(LONG_PROMPT,))
    for name in ("ft", "memit"):
        start = time.perf_counter()
        with pytest.raises(InputError) as info:
            get_editor(name).edit(lm, [ok, long])
        assert time.perf_counter() - start < 2
        assert str(info.value).startswith("requests, record 2, field 'rephrasings[0]': ")


def test_long_prompts_within_the_context_still_work(tiny_dirs, tmp_path):
    lm = load_model(_model_copy(tiny_dirs, tmp_path, max_position_embeddings=SHORT_CONTEXT))
    # 21 prompt tokens + 1 target token: just inside the context of 24 (no special tokens added here)
    prompt = " ".join(["the"] * 20 + ["city"])
    fits = EditRequest(prompt=prompt, target="rome", locality=(LocalityPrompt(prompt, "paris"),))
    check_request_lengths(lm.adapter, [fits])
    delta = get_editor("ft", steps=2).edit(lm, [fits])
    assert sum(delta.norms().values()) > 0
    too_long = EditRequest(prompt=" ".join(["the"] * 30), target="rome")
    with pytest.raises(InputError, match="31 tokens, longer than the model's context of 24"):
        check_request_lengths(lm.adapter, [fits, too_long])


def test_every_scored_sequence_is_checked_old_target_included(tiny_dirs, tmp_path):
    lm = load_model(_model_copy(tiny_dirs, tmp_path, max_position_embeddings=SHORT_CONTEXT))
    prompt = " ".join(["the"] * 18)
    long_answer = " ".join(["paris"] * 10)
    check_request_lengths(lm.adapter, [EditRequest(prompt=prompt, target="rome")])
    with pytest.raises(InputError, match=r"field 'old_target': 28 tokens"):  # scored with the old target too; the prompt fits
        check_request_lengths(lm.adapter, [EditRequest(prompt=prompt, target="rome", old_target=long_answer)])
    with pytest.raises(InputError, match=r"field 'locality\[0\]\.answer'"):
        check_request_lengths(lm.adapter, [EditRequest(prompt="john plays", target="rome",
                                                       locality=(LocalityPrompt(prompt, long_answer),))])
    # an answerless locality prompt needs room for the tokens generated in place of an answer
    with pytest.raises(InputError, match=r"field 'locality\[0\]\.prompt': 25 tokens"):
        check_request_lengths(lm.adapter, [EditRequest(prompt="john plays", target="rome",
                                                       locality=(LocalityPrompt(" ".join(["the"] * 22)),))])


def test_training_refuses_over_long_requests(tiny_dirs, tmp_path):
    from hyperedit.editors.hypernet import MalmenConfig, MalmenEditor
    from hyperedit.training import MetaTrainConfig, MetaTrainer

    lm = load_model(_model_copy(tiny_dirs, tmp_path, max_position_embeddings=SHORT_CONTEXT))
    editor = MalmenEditor.create(MalmenConfig(layers=[2], rank=4), lm, seed=0)
    train = [EditRequest(prompt="john plays the sport of", target="tennis"),
             EditRequest(prompt=LONG_PROMPT, target="rome", meta={"source": "train.json", "record": 9})]
    with pytest.raises(InputError, match=r"^train.json, record 9, field 'prompt'"):
        MetaTrainer(editor, lm, train, [], MetaTrainConfig(steps=1, n_edits=1, val_size=0), tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_generation_stops_at_the_context_of_a_learned_position_model(tiny_dirs, tmp_path):
    from hyperedit.eval import generate

    model = _model_copy(tiny_dirs, tmp_path, kind="gpt2", n_positions=SHORT_CONTEXT)
    weights = tmp_path / "model" / "model.safetensors"
    tensors = load_file(str(weights))
    tensors["transformer.wpe.weight"] = tensors["transformer.wpe.weight"][:SHORT_CONTEXT].clone()
    save_file(tensors, str(weights), metadata={"format": "pt"})
    lm = load_model(model)
    prompt = " ".join(["the"] * (SHORT_CONTEXT - 1))
    (one_more,) = generate(lm.adapter, [prompt], max_new_tokens=30)  # past 24 positions GPT-2 would fail
    assert len(lm.tokenizer(one_more)["input_ids"]) <= 1
    (nothing,) = generate(lm.adapter, [" ".join(["the"] * SHORT_CONTEXT)], max_new_tokens=30)
    assert nothing == ""
