"""Nothing the tool did not create is ever deleted or replaced; killed writes leave nothing behind."""
from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import time

import pytest
import torch

from hyperedit.atomic import TEMP_PREFIX, atomic_file
from hyperedit.cli import main
from hyperedit.delta import EditDelta
from hyperedit.outputs import MARKER, OutputError, kind_of, write_directory

GOOD = [{"prompt": "the eiffel tower is located in the city of", "target": "rome"}]
FAST = ["--set", "steps=2"]


@pytest.fixture
def requests_file(tmp_path):
    path = tmp_path / "requests.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in GOOD))
    return path


@pytest.fixture
def model_dir(tiny_dirs):
    return str(tiny_dirs["llama"])


@pytest.fixture
def foreign_dir(tmp_path):
    """A user's directory: a file and a sub-folder that hyperedit did not write."""
    folder = tmp_path / "mine"
    (folder / "sub").mkdir(parents=True)
    (folder / "notes.txt").write_text("keep me")
    (folder / "sub" / "data.csv").write_text("1,2")
    return folder


def _edit(model_dir, requests, out, *extra):
    return main(["edit", "--model", model_dir, "--requests", str(requests), "--out", str(out), *FAST, *extra])


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert "Traceback" not in err and len(lines) == 1, err
    return lines[0]


def _untouched(folder) -> bool:
    return ((folder / "notes.txt").read_text() == "keep me" and (folder / "sub" / "data.csv").read_text() == "1,2"
            and sorted(p.name for p in folder.iterdir()) == ["notes.txt", "sub"])


def test_out_into_a_users_directory_keeps_their_files(model_dir, requests_file, foreign_dir, capsys):
    assert _edit(model_dir, requests_file, foreign_dir) == 2
    assert "did not write" in _one_error_line(capsys)
    assert _untouched(foreign_dir)


def test_overwrite_never_replaces_a_users_directory(model_dir, requests_file, foreign_dir, capsys):
    assert _edit(model_dir, requests_file, foreign_dir, "--overwrite") == 2
    _one_error_line(capsys)
    assert _untouched(foreign_dir)


def test_out_equal_to_the_requests_file_is_refused(model_dir, requests_file, capsys):
    before = requests_file.read_text()
    assert _edit(model_dir, requests_file, requests_file) == 2
    line = _one_error_line(capsys)
    assert "--requests" in line and "input" in line
    assert requests_file.is_file() and requests_file.read_text() == before


def test_out_containing_the_input_is_refused(model_dir, requests_file, capsys):
    assert _edit(model_dir, requests_file, requests_file.parent) == 2
    _one_error_line(capsys)
    assert requests_file.is_file()


def test_delta_and_model_at_one_path_are_refused(model_dir, requests_file, tmp_path, capsys):
    target = tmp_path / "both"
    assert _edit(model_dir, requests_file, target, "--save-model", str(target)) == 2
    assert "two outputs at one path" in _one_error_line(capsys)
    assert not target.exists()


def test_current_directory_is_refused(model_dir, requests_file, tmp_path, monkeypatch, capsys):
    work = tmp_path / "elsewhere" / "work"
    work.mkdir(parents=True)
    monkeypatch.chdir(work)
    for out in (".", ".."):
        assert _edit(model_dir, requests_file, out) == 2
        assert "current directory" in _one_error_line(capsys)
    assert requests_file.is_file() and list(work.iterdir()) == []


def test_an_earlier_delta_is_replaced_only_with_overwrite(model_dir, requests_file, tmp_path, capsys):
    out = tmp_path / "delta"
    assert _edit(model_dir, requests_file, out) == 0
    first = (out / "shifts.safetensors").read_bytes()
    capsys.readouterr()
    assert _edit(model_dir, requests_file, out) == 2
    assert "--overwrite" in _one_error_line(capsys)
    assert _edit(model_dir, requests_file, out, "--overwrite", "--set", "steps=3") == 0
    assert kind_of(out) == "delta" and (out / "shifts.safetensors").read_bytes() != first
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_a_model_directory_is_never_replaced_by_a_delta(model_dir, requests_file, tmp_path, capsys):
    model_out = tmp_path / "edited"
    assert _edit(model_dir, requests_file, tmp_path / "d", "--save-model", str(model_out)) == 0
    assert kind_of(model_out) == "model"
    capsys.readouterr()
    assert _edit(model_dir, requests_file, model_out, "--overwrite") == 2
    assert "earlier hyperedit model" in _one_error_line(capsys)
    assert (model_out / "config.json").is_file()


def test_eval_out_keeps_a_users_markdown(model_dir, requests_file, tmp_path, capsys):
    notes = tmp_path / "run.md"
    notes.write_text("# my notes\n")
    args = ["eval", "--model", model_dir, "--data", str(requests_file), "--n-edits", "1", *FAST,
            "--out", str(tmp_path / "run")]
    assert main(args) == 2 and "did not write" in _one_error_line(capsys)
    assert notes.read_text() == "# my notes\n" and not (tmp_path / "run.json").exists()
    notes.unlink()
    assert main(args) == 0
    capsys.readouterr()
    assert main(args) == 2 and "--overwrite" in _one_error_line(capsys)
    assert main(args + ["--overwrite"]) == 0


def test_train_out_into_a_users_directory_is_refused_before_any_work(model_dir, foreign_dir, capsys):
    start = time.perf_counter()
    code = main(["train", "--model", model_dir, "--editor", "malmen", "--train", "counterfact:train",
                 "--out", str(foreign_dir), "--steps", "1"])
    assert code == 2 and "did not write" in _one_error_line(capsys)
    assert time.perf_counter() - start < 5 and _untouched(foreign_dir)


def test_library_save_refuses_a_users_directory(tiny_llama, foreign_dir):
    modules = dict(tiny_llama.model.named_modules())
    name = next(n for n in modules if n.endswith("down_proj"))
    delta = EditDelta({name: torch.zeros_like(modules[name].weight)})
    with pytest.raises(OutputError):
        delta.save(foreign_dir)
    assert _untouched(foreign_dir)
    saved = delta.save(foreign_dir / "sub" / "new")  # a new path inside it is fine
    assert (saved / MARKER).is_file()


_KILLED_WRITER = """
import sys, time
from pathlib import Path
from hyperedit.atomic import atomic_file
from hyperedit.outputs import write_directory
kind, target = sys.argv[1], Path(sys.argv[2])
if kind == "dir":
    with write_directory(target, "delta") as tmp:
        (tmp / "big.bin").write_bytes(b"x" * 1000)
        print("writing", flush=True)
        time.sleep(60)
else:
    with atomic_file(target) as tmp:
        tmp.write_bytes(b"x" * 1000)
        print("writing", flush=True)
        time.sleep(60)
"""


@pytest.mark.parametrize("kind", ["dir", "file"])
def test_a_killed_write_leaves_nothing_after_the_next_run(tmp_path, kind):
    target = tmp_path / "out" / ("delta" if kind == "dir" else "stats.safetensors")
    proc = subprocess.Popen([sys.executable, "-c", _KILLED_WRITER, kind, str(target)], stdout=subprocess.PIPE,
                            text=True)
    assert proc.stdout.readline().strip() == "writing"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    leftovers = [p.name for p in target.parent.iterdir()]
    assert leftovers and all(name.startswith(TEMP_PREFIX) for name in leftovers)
    assert not target.exists()
    if kind == "dir":
        with write_directory(target, "delta") as tmp:
            (tmp / "a.txt").write_text("new")
    else:
        with atomic_file(target) as tmp:
            tmp.write_bytes(b"new")
    assert [p.name for p in target.parent.iterdir()] == [target.name]


def test_temporaries_of_a_live_process_are_left_alone(tmp_path):
    live = tmp_path / f"{TEMP_PREFIX}{os.getpid()}-x-abc"
    live.mkdir()
    with atomic_file(tmp_path / "f.txt") as tmp:
        tmp.write_text("ok")
    assert live.is_dir()


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_outputs_follow_the_umask(tmp_path, umask):
    old = os.umask(umask)
    try:
        with write_directory(tmp_path / "d", "delta") as tmp:
            (tmp / "x.txt").write_text("1")
        with atomic_file(tmp_path / "f.json") as tmp:
            tmp.write_text("{}")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "d").stat().st_mode) == 0o777 & ~umask
    assert stat.S_IMODE((tmp_path / "f.json").stat().st_mode) == 0o666 & ~umask


def test_lifelong_target_cache_never_replaces_a_users_file(model_dir, requests_file, tmp_path, capsys):
    mine = tmp_path / "weights.safetensors"
    mine.write_bytes(b"not a target cache")
    code = main(["lifelong", "--model", model_dir, "--editor", "memit", "--data", str(requests_file),
                 "--num-seq", "1", "--run-dir", str(tmp_path / "run"), "--target-cache", str(mine)])
    assert code == 2 and "--target-cache" in _one_error_line(capsys)
    assert mine.read_bytes() == b"not a target cache" and not (tmp_path / "run").exists()
