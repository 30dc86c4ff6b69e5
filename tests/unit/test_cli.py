"""The command line, called in-process: user errors are one line + exit 2; edit and eval write their files."""
from __future__ import annotations

import json

import pytest

from hyperedit.bench.records import REQUIRED
from hyperedit.cli import main
from hyperedit.delta import EditDelta
from hyperedit.models import load_model

GOOD = [
    {"prompt": "the eiffel tower is located in the city of", "target": "rome"},
    {"prompt": "john plays the sport of", "target": "tennis"},
]


@pytest.fixture
def requests_file(tmp_path):
    path = tmp_path / "requests.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in GOOD))
    return path


def _error_line(capsys) -> str:
    """The one line a user error prints on stderr (nothing else, no traceback)."""
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert "Traceback" not in err
    assert len(lines) == 1, err
    assert lines[0].startswith("hyperedit: error: ")
    return lines[0]


def _edit(model_dir, requests, out, *extra):
    return main(["edit", "--model", model_dir, "--requests", str(requests), "--out", str(out), *extra])


def test_unknown_editor(model_dir, requests_file, tmp_path, capsys):
    assert _edit(model_dir, requests_file, tmp_path / "d", "--editor", "nope") == 2
    line = _error_line(capsys)
    assert "unknown editor 'nope'" in line and "ft" in line
    assert not (tmp_path / "d").exists()


def test_missing_requests_file(model_dir, tmp_path, capsys):
    missing = tmp_path / "no-such-file.jsonl"
    assert _edit(model_dir, missing, tmp_path / "d") == 2
    assert str(missing) in _error_line(capsys)


def test_malformed_requests_file(model_dir, tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(GOOD[0]) + "\n" + json.dumps({"prompt": "john plays", "target": 5}) + "\n")
    assert _edit(model_dir, bad, tmp_path / "d") == 2
    line = _error_line(capsys)
    assert str(bad) in line and "record 2" in line and "'target'" in line


def test_requests_file_with_broken_json(model_dir, tmp_path, capsys):
    bad = tmp_path / "broken.jsonl"
    bad.write_text(json.dumps(GOOD[0]) + "\n" + '{"prompt": "john plays", "target": \n')
    assert _edit(model_dir, bad, tmp_path / "d") == 2
    line = _error_line(capsys)
    assert str(bad) in line and "2" in line


def test_requests_file_with_typo_field(model_dir, tmp_path, capsys):
    bad = tmp_path / "typo.jsonl"
    bad.write_text(json.dumps({"prompt": "john plays", "target": "tennis", "subjcet": "john"}) + "\n")
    assert _edit(model_dir, bad, tmp_path / "d") == 2
    line = _error_line(capsys)
    assert "record 1" in line and "subjcet" in line and "subject" in line


def test_missing_model(requests_file, tmp_path, capsys):
    assert _edit(str(tmp_path / "no-model"), requests_file, tmp_path / "d") == 2
    assert "no-model" in _error_line(capsys)


@pytest.mark.parametrize("option, expected", [
    ("steps=notanumber", "steps"),
    ("stop_loss=abc", "stop_loss"),
    ("layers=[99]", "layer 99"),
    ("layers=abc", "layers"),
    ("stepz=3", "stepz"),
    ("steps", "KEY=VALUE"),
])
def test_bad_editor_options_are_one_line(model_dir, requests_file, tmp_path, capsys, option, expected):
    assert _edit(model_dir, requests_file, tmp_path / "d", "--set", option) == 2
    assert expected in _error_line(capsys)
    assert not (tmp_path / "d").exists()


def test_bad_config_file(model_dir, requests_file, tmp_path, capsys):
    cfg = tmp_path / "cfg.json"
    cfg.write_text("[1, 2]")
    assert _edit(model_dir, requests_file, tmp_path / "d", "--config", str(cfg)) == 2
    assert "JSON object" in _error_line(capsys)
    assert _edit(model_dir, requests_file, tmp_path / "d", "--config", str(tmp_path / "none.json")) == 2
    assert "none.json" in _error_line(capsys)


def test_edit_writes_a_delta_that_loads(model_dir, requests_file, tmp_path, capsys):
    out = tmp_path / "deltas" / "my_delta"
    assert _edit(model_dir, requests_file, out, "--set", "steps=2", "--set", "layers=[1,2]", "--json") == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["n_edits"] == 2 and summary["editor"] == "ft" and summary["delta"] == str(out)
    assert sorted(p.name for p in (tmp_path / "deltas").iterdir()) == ["my_delta"]  # no temp dirs left
    delta = EditDelta.load(out)
    assert sorted(delta.shifts) == ["model.layers.1.mlp.down_proj", "model.layers.2.mlp.down_proj"]
    assert delta.meta["requests"]["count"] == 2 and delta.meta["config"]["steps"] == 2
    lm = load_model(model_dir)
    with delta.applied(lm.model):
        pass  # fits the model it was made for


def test_edit_save_model(model_dir, requests_file, tmp_path, capsys):
    import torch

    out, saved = tmp_path / "d", tmp_path / "edited-model"
    assert _edit(model_dir, requests_file, out, "--set", "steps=2", "--save-model", str(saved)) == 0
    assert "edited model written" in capsys.readouterr().out
    delta = EditDelta.load(out)
    original, edited = load_model(model_dir), load_model(str(saved))
    with delta.applied(original.model):
        for name in delta.shifts:
            assert torch.equal(original.adapter.weight(name), edited.adapter.weight(name))


def test_eval_writes_json_and_markdown(model_dir, requests_file, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code = main(["eval", "--model", model_dir, "--data", str(requests_file), "--n-edits", "2", "--set", "steps=2",
                 "--out", "tmp/x"])
    assert code == 0
    assert "| ft |" in capsys.readouterr().out
    assert sorted(p.name for p in (tmp_path / "tmp").iterdir()) == ["x.json", "x.md"]
    records = json.loads((tmp_path / "tmp" / "x.json").read_text())
    assert isinstance(records, list) and len(records) == 1
    record = records[0]
    assert all(k in record for k in REQUIRED)
    assert record["n_edits"] == 2 and record["mode"] == "batch" and record["dataset"] == "requests"
    assert set(record["metrics"]) >= {"ES", "GS", "LS"}
    assert "| ft |" in (tmp_path / "tmp" / "x.md").read_text()


def test_eval_rejects_zero_edits(model_dir, requests_file, capsys):
    assert main(["eval", "--model", model_dir, "--data", str(requests_file), "--n-edits", "0"]) == 2
    assert "--n-edits" in _error_line(capsys)


def test_editors_lists_methods(capsys):
    assert main(["editors"]) == 0
    out = capsys.readouterr().out
    assert any(line.startswith("ft ") for line in out.splitlines())
    assert "--set steps=" in out


def test_no_command_prints_help(capsys):
    assert main([]) == 2
    assert "usage: hyperedit" in capsys.readouterr().out


def test_argparse_errors_exit_2(capsys):
    with pytest.raises(SystemExit) as info:
        main(["edit", "--no-such-flag"])
    assert info.value.code == 2


def test_measured_settings_of_an_embedded_model_fill_in_what_the_user_did_not_set(tiny_llama, caplog):
    """An editor on Gemma-3-270M gets the layers and target step measured for it; --set wins;
    the default model gets the editors' own defaults."""
    import argparse
    import dataclasses
    import logging

    from hyperedit.commands._common import editor_from_args

    args = argparse.Namespace(editor="memit", checkpoint=None, config=None, overrides=["v_lr=2.0"])
    gemma_named = dataclasses.replace(tiny_llama, name="gemma3-270m")
    with caplog.at_level(logging.INFO):
        editor = editor_from_args(args, gemma_named)
    assert editor.config.layers == (6, 7, 8, 9) and editor.config.v_lr == 2.0
    assert "settings measured for this model (layers=[6, 7, 8, 9])" in caplog.text
    ft = editor_from_args(argparse.Namespace(editor="ft", checkpoint=None, config=None, overrides=[]), gemma_named)
    assert ft.config.max_rel_norm == 0.015
    default = editor_from_args(argparse.Namespace(editor="memit", checkpoint=None, config=None, overrides=[]),
                               dataclasses.replace(tiny_llama, name="smollm2-135m"))
    assert default.config.layers is None and default.config.v_lr == 1.0
