"""Hostile inputs and faults of issue 42: nothing lost, nothing silently wrong, one line and exit 2."""
from __future__ import annotations

import json
import multiprocessing
import os
import resource
import shutil
import signal
import sqlite3
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from hyperedit.cli import main
from hyperedit.delta import EditDelta
from hyperedit.editors import get_editor
from hyperedit.errors import NonFiniteDeltaError, OptionError

from test_cli import GOOD, _error_line

FAST = ["--set", "steps=2", "--set", "layers=[1]"]
SRC = str(Path(__file__).resolve().parents[2] / "src")


@pytest.fixture
def requests_file(tmp_path):
    path = tmp_path / "requests.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in GOOD))
    return path


def _edit(model, requests, out, *extra) -> int:
    return main(["edit", "--model", str(model), "--requests", str(requests), "--out", str(out), *extra])


# ----- the output rule ----------------------------------------------------------------------------
def test_overwrite_refuses_a_delta_holding_a_users_file(model_dir, requests_file, tmp_path, capsys):
    out = tmp_path / "d"
    assert _edit(model_dir, requests_file, out, *FAST) == 0
    (out / "my_notes.txt").write_text("mine")
    before = sorted(p.name for p in out.iterdir())
    capsys.readouterr()
    assert _edit(model_dir, requests_file, out, *FAST, "--overwrite") == 2
    assert "my_notes.txt" in _error_line(capsys)
    assert sorted(p.name for p in out.iterdir()) == before and (out / "my_notes.txt").read_text() == "mine"
    (out / "my_notes.txt").unlink()
    assert _edit(model_dir, requests_file, out, *FAST, "--overwrite") == 0  # only its own files: replaced


def test_train_overwrite_refuses_a_run_holding_a_users_file(tmp_path):
    from hyperedit.outputs import OutputError, start_run_directory

    run = start_run_directory(tmp_path / "run", "training-run")
    (run / "checkpoints").mkdir()
    (run / "LATEST").write_text("step-000001\n")
    (run / "my_notes.txt").write_text("mine")
    with pytest.raises(OutputError, match="my_notes.txt"):
        start_run_directory(run, "training-run", overwrite=True)
    assert (run / "my_notes.txt").read_text() == "mine"
    (run / "my_notes.txt").unlink()
    start_run_directory(run, "training-run", overwrite=True)
    assert not (run / "LATEST").exists()


@pytest.mark.parametrize("umask", [0o002, 0o022])
def test_every_written_file_follows_the_umask(model_dir, requests_file, tmp_path, umask):
    from hyperedit.checkpoints import CheckpointStore

    old = os.umask(umask)
    try:
        assert _edit(model_dir, requests_file, tmp_path / "d", *FAST, "--save-model", str(tmp_path / "m")) == 0
        CheckpointStore(tmp_path / "run").save(1, lambda d: save_file({"a": torch.zeros(2)}, str(d / "w.safetensors")))
    finally:
        os.umask(old)
    files = [p for root in ("d", "m", "run") for p in (tmp_path / root).rglob("*")]
    assert any(p.name == "shifts.safetensors" for p in files) and any(p.name == "model.safetensors" for p in files)
    for path in files:
        expected = (0o777 if path.is_dir() else 0o666) & ~umask
        assert stat.S_IMODE(path.stat().st_mode) == expected, path


# ----- tracebacks that are one line ---------------------------------------------------------------
@pytest.mark.parametrize("option", ["--requests", "--out"])
def test_symlink_loop_is_one_line(model_dir, requests_file, tmp_path, capsys, option):
    (tmp_path / "a").symlink_to(tmp_path / "b")
    (tmp_path / "b").symlink_to(tmp_path / "a")
    paths = {"--requests": requests_file, "--out": tmp_path / "d", option: tmp_path / "a"}
    assert _edit(model_dir, paths["--requests"], paths["--out"]) == 2
    assert option in _error_line(capsys)


def _read_only_edit(model_dir, requests_file, folder: Path) -> subprocess.CompletedProcess:
    """``edit --out folder/d`` with ``folder`` read-only: a read-only mount under root, else chmod."""
    command = [sys.executable, "-m", "hyperedit", "edit", "--model", model_dir, "--requests", str(requests_file),
               "--out", str(folder / "d")]
    env = {**os.environ, "PYTHONPATH": SRC}
    if os.geteuid() != 0:
        folder.chmod(0o555)
        return subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    if shutil.which("unshare") is None:
        pytest.skip("root without unshare: no read-only location to try")
    script = f"mount -t tmpfs -o ro tmpfs {folder} && exec \"$@\""
    done = subprocess.run(["unshare", "-m", "sh", "-c", script, "sh", *command], env=env, capture_output=True,
                          text=True, timeout=300)
    if "mount:" in done.stderr:
        pytest.skip("no permission to mount a read-only file system")
    return done


def test_read_only_out_is_refused_before_the_edit(model_dir, requests_file, tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir()
    start = time.perf_counter()
    done = _read_only_edit(model_dir, requests_file, folder)
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1 and "cannot write into" in lines[0], done.stderr
    assert "edited" not in done.stdout and time.perf_counter() - start < 120


def _limit_file_size():
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))  # like a full disk: writes past 4 KiB fail


def test_a_full_disk_while_saving_is_one_line_and_leaves_nothing(model_dir, requests_file, tmp_path):
    out = tmp_path / "outputs"
    out.mkdir()
    done = subprocess.run([sys.executable, "-m", "hyperedit", "edit", "--model", model_dir, "--requests",
                           str(requests_file), "--out", str(out / "d"), *FAST], env={**os.environ, "PYTHONPATH": SRC},
                          preexec_fn=_limit_file_size, capture_output=True, text=True, timeout=300)
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1 and "writing failed" in lines[0], done.stderr
    assert list(out.iterdir()) == []


@pytest.mark.parametrize("record, field", [
    ({"prompt": "the city \ud800 of", "target": "rome"}, "prompt"),
    ({"prompt": "the city of", "target": "rome", "locality": [{"prompt": "a \udc00"}]}, "locality[0].prompt"),
])
def test_a_lone_surrogate_is_one_line_naming_the_field(model_dir, tmp_path, capsys, record, field):
    path = tmp_path / "r.jsonl"
    path.write_text(json.dumps(record) + "\n")  # json.dumps escapes the surrogate as \ud800
    assert _edit(model_dir, path, tmp_path / "d") == 2
    line = _error_line(capsys)
    assert f"field '{field}'" in line and "Unicode" in line


def test_an_over_long_target_is_named_target(tiny_dirs, tmp_path, capsys):
    path = tmp_path / "r.jsonl"
    path.write_text(json.dumps({"prompt": "the city of", "target": " ".join(["paris"] * 5000)}) + "\n")
    assert _edit(str(tiny_dirs["llama"]), path, tmp_path / "d") == 2
    assert "field 'target'" in _error_line(capsys)


def test_a_junk_checkpoint_folder_says_what_is_missing(model_dir, requests_file, tmp_path, capsys):
    junk = tmp_path / "ck"
    junk.mkdir()
    (junk / "editor.json").write_text("{}")
    assert _edit(model_dir, requests_file, tmp_path / "d", "--editor", "malmen", "--checkpoint", str(junk)) == 2
    line = _error_line(capsys)
    assert "editor.safetensors" in line and "modules" in line and "None" not in line


# ----- options: finite and in range ---------------------------------------------------------------
@pytest.mark.parametrize("config", [{"lr": float("nan")}, {"lr": float("inf")}, {"max_rel_norm": float("nan")},
                                    {"max_rel_norm": float("inf"), "lr": 1e30}, {"layers": []}])
def test_options_that_are_not_finite_or_in_range_are_one_line(model_dir, requests_file, tmp_path, capsys, config):
    path = tmp_path / "c.json"
    path.write_text(json.dumps(config))  # NaN and Infinity, as Python's json writes them
    assert _edit(model_dir, requests_file, tmp_path / "d", "--config", str(path)) == 2
    assert next(iter(config)) in _error_line(capsys)
    assert not (tmp_path / "d").exists()
    with pytest.raises(OptionError):
        get_editor("ft", **config)


def test_set_lr_1e999_is_refused(model_dir, requests_file, tmp_path, capsys):
    assert _edit(model_dir, requests_file, tmp_path / "d", "--set", "lr=1e999") == 2
    assert "lr=inf" in _error_line(capsys)


def test_a_huge_finite_lr_still_gives_a_bounded_edit(tiny_llama):
    delta = get_editor("ft", layers=[1], steps=2, lr=1e30, max_rel_norm=0.03).edit(
        tiny_llama, [__import__("hyperedit.requests", fromlist=["EditRequest"]).EditRequest(**GOOD[0])])
    weight = dict(tiny_llama.model.named_modules())[next(iter(delta.shifts))].weight
    norm = float(next(iter(delta.shifts.values())).double().norm())
    assert 0 < norm <= 0.03 * float(weight.double().norm()) * (1 + 1e-5)


def test_no_non_finite_delta_is_saved_loaded_or_recorded(tmp_path, tiny_llama):
    from hyperedit.ledger import Ledger

    name = "model.layers.1.mlp.down_proj"
    shape = dict(tiny_llama.model.named_modules())[name].weight.shape
    bad = EditDelta({name: torch.full(shape, float("nan"))}, {"editor": "ft"})
    with pytest.raises(NonFiniteDeltaError):
        bad.save(tmp_path / "d")
    assert not (tmp_path / "d").exists()
    ledger = Ledger(tmp_path / "ws").attach(tiny_llama)
    with pytest.raises(NonFiniteDeltaError):
        ledger.import_delta(bad, metrics=False)
    assert ledger.entries() == [] and ledger.verify()["ok"]


def test_ledger_verify_flags_a_non_finite_blob(tmp_path, tiny_llama):
    from hyperedit.ledger import Ledger

    name = "model.layers.1.mlp.down_proj"
    shape = dict(tiny_llama.model.named_modules())[name].weight.shape
    ledger = Ledger(tmp_path / "ws").attach(tiny_llama)
    entry = ledger.import_delta(EditDelta({name: torch.zeros(shape)}, {"editor": "ft"}), metrics=False)
    blob = ledger.blobs.path(entry.delta_hash)
    from safetensors.torch import save

    data = bytearray(save({name: torch.full(shape, float("inf"))}))
    new = __import__("hashlib").sha256(bytes(data)).hexdigest()
    ledger.blobs.path(new).write_bytes(bytes(data))
    db = sqlite3.connect(ledger.workspace / "ledger.sqlite")
    db.execute("UPDATE entries SET delta_hash = ? WHERE id = ?", (new, entry.id))
    db.commit()
    db.close()
    report = ledger.verify()
    assert not report["ok"] and any("non-finite" in p for p in report["problems"]), report
    assert blob.is_file()


# ----- the ledger ---------------------------------------------------------------------------------
def test_ledger_list_on_a_corrupt_database_is_one_line(tmp_path, capsys):
    (tmp_path / "ws").mkdir()
    (tmp_path / "ws" / "ledger.sqlite").write_bytes(os.urandom(5000))
    assert main(["ledger", "list", "-w", str(tmp_path / "ws")]) == 2
    assert "ledger.sqlite" in _error_line(capsys)


def test_ledger_subcommands_take_quiet_and_verbose(tmp_path, capsys):
    from hyperedit.cli import build_parser

    for argv in (["ledger", "list", "-q"], ["ledger", "list", "-v"], ["ledger", "-v", "verify"]):
        args = build_parser().parse_args([*argv, "-w", str(tmp_path)])
        assert args.quiet or args.verbose
    assert main(["ledger", "list", "-q", "-w", str(tmp_path / "none")]) == 2


def _open_ledger(path: str, start: float, results) -> None:
    sys.path.insert(0, SRC)
    from hyperedit.ledger import Ledger

    while time.time() < start:
        pass
    try:
        Ledger(path, create=True).entries()
        results.put("ok")
    except Exception as exc:  # noqa: BLE001 - the test reports whatever failed
        results.put(f"{type(exc).__name__}: {exc}")


def test_several_processes_create_one_new_workspace_safely(tmp_path):
    ctx = multiprocessing.get_context("spawn")
    for trial in range(3):
        results, start = ctx.Queue(), time.time() + 4
        procs = [ctx.Process(target=_open_ledger, args=(str(tmp_path / f"ws{trial}"), start, results)) for _ in range(4)]
        for p in procs:
            p.start()
        for p in procs:
            p.join(120)
        assert [results.get(timeout=5) for _ in procs] == ["ok"] * 4


def test_stale_blob_temporaries_are_reported_and_swept(tmp_path, tiny_llama):
    from hyperedit.ledger import Ledger

    ledger = Ledger(tmp_path / "ws").attach(tiny_llama)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = ledger.blobs.root / f".hyperedit-tmp-{dead.stdout.strip()}-blob-x.safetensors"
    stale.write_bytes(b"half a blob")
    assert ledger.verify()["stale_temporaries"] == [stale.name]
    name = "model.layers.1.mlp.down_proj"
    shape = dict(tiny_llama.model.named_modules())[name].weight.shape
    ledger.import_delta(EditDelta({name: torch.zeros(shape)}, {"editor": "ft"}), metrics=False)
    assert not stale.exists() and ledger.verify()["stale_temporaries"] == []
