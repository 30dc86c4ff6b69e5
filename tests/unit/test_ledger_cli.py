"""``hyperedit ledger``: apply, list, show, revert, export and their one-line errors."""
from __future__ import annotations

import json

import torch

from hyperedit.cli import main
from hyperedit.delta import EditDelta
from hyperedit.ledger import Ledger

REQUEST = {"prompt": "the eiffel tower is located in the city of", "target": "rome"}


def _run(capsys, *argv) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    return code, out, err


def test_apply_list_revert_export_round_trip(tiny_dirs, tmp_path, capsys):
    ws, model = str(tmp_path / "ws"), str(tiny_dirs["llama"])
    requests = tmp_path / "r.jsonl"
    requests.write_text(json.dumps(REQUEST) + "\n")
    code, out, _ = _run(capsys, "ledger", "apply", "-w", ws, "--model", model, "--requests", str(requests),
                        "--set", "layers=[3]", "--set", "steps=2", "--json")
    assert code == 0 and json.loads(out)["id"] == 1
    EditDelta({"model.layers.1.mlp.down_proj": torch.full((32, 64), 1e-3)}, {"editor": "ft"}).save(tmp_path / "saved")
    # the model is found from the workspace once it exists
    code, out, _ = _run(capsys, "ledger", "apply", "-w", ws, "--delta", str(tmp_path / "saved"))
    assert code == 0 and out.startswith("entry 2: 0 request(s) with ft")
    code, out, _ = _run(capsys, "ledger", "list", "-w", ws, "--json")
    assert [e["id"] for e in json.loads(out)] == [1, 2]
    code, out, _ = _run(capsys, "ledger", "revert", "-w", ws, "1")
    assert code == 0 and "entry 1 reverted" in out
    code, out, _ = _run(capsys, "ledger", "list", "-w", ws, "--status", "active", "--json")
    assert [e["id"] for e in json.loads(out)] == [2]
    code, out, _ = _run(capsys, "ledger", "show", "-w", ws, "1")
    shown = json.loads(out)
    assert shown["status"] == "reverted" and [e["action"] for e in shown["events"]] == ["applied", "reverted"]
    code, out, _ = _run(capsys, "ledger", "export", "-w", ws, str(tmp_path / "model"))
    assert code == 0 and (tmp_path / "model" / "model.safetensors").is_file()
    code, out, _ = _run(capsys, "ledger", "verify", "-w", ws)
    assert code == 0 and out.startswith("2 entries (1 active)")


def test_ledger_user_errors_are_one_line_exit_2(tiny_dirs, tmp_path, capsys):
    ws = str(tmp_path / "ws")
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "keep.txt").write_text("x")
    cases = [
        (["ledger", "list"], "--workspace is required"),
        (["ledger", "list", "-w", str(tmp_path / "none")], "no ledger here"),
        (["ledger", "apply", "-w", ws, "--model", str(tiny_dirs["llama"])], "give --requests"),
        (["ledger", "export", "-w", str(busy), str(tmp_path / "out")], "no ledger here"),
    ]
    for argv, message in cases:
        code, _, err = _run(capsys, *argv)
        lines = err.strip().splitlines()
        assert code == 2 and len(lines) == 1 and message in lines[0], (argv, err)
    Ledger(ws)
    code, _, err = _run(capsys, "ledger", "show", "-w", ws, "7")
    assert code == 2 and "no ledger entry 7" in err
    code, _, err = _run(capsys, "ledger", "export", "-w", ws, "--model", str(tiny_dirs["llama"]), str(busy))
    assert code == 2 and "did not write" in err
    assert [p.name for p in busy.iterdir()] == ["keep.txt"]
