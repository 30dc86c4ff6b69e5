"""Data-parallel meta-training and evaluation on torch.distributed (gloo, CPU, tiny model).

Each test runs the CLI as a user would (``--nproc 2`` re-launches it under torchrun) and compares
with one process on the same global batch.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from hyperedit.editors.hypernet import MalmenConfig, MalmenEditor
from hyperedit.training import MetricsLog
from test_distributed import FACTS, _env
from test_training import _write_requests

TIMINGS = ("seconds", "cpu_seconds", "edit_seconds", "cpu_seconds_all_ranks", "ranks")


TORCHRUN_2 = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2"]


def _train(model: Path, data: Path, out: Path, editor: str, *extra: str,
           launcher: tuple = (sys.executable,)) -> list[str]:
    return [*launcher, "-m", "hyperedit", "train", "-q", "--editor", editor, "--model", str(model),
            "--train", str(data), "--out", str(out), "--layers", "0-1", "--rank", "8", "--n-edits", "8",
            "--val-size", "6", "--val-every", "0", "--meta-lr", "1e-3", "--lr-init", "1e-2", "--threads", "1",
            "--seed", "4", "--set", "lm_batch_size=3", *extra]


def _run_ok(cmd: list[str]) -> None:
    done = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]


def _weights(run: Path, step: int) -> dict[str, torch.Tensor]:
    return load_file(str(run / "checkpoints" / f"step-{step:06d}" / "editor.safetensors"))


def _records(run: Path) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in TIMINGS} for r in MetricsLog(run / "metrics.jsonl").read()]


@pytest.mark.parametrize("editor, options", [("malmen", ["--set", "solve_dtype=float64"]),
                                             ("mend", ["--no-fact-cache"])])
def test_a_training_step_on_two_ranks_equals_the_same_batch_on_one(tiny_dirs, tmp_path, editor, options):
    """Calibration, one step and the final validation: the ranks share every batch; the sums they
    reduce are added in another order than in one process, so float32 rounding is all that differs.
    MALMEN reads the fact caches (rank 0 builds them), MEND recomputes everything each step."""
    data = tmp_path / "facts.jsonl"
    _write_requests(data)
    extra = ["--steps", "1", *options]
    one, two = tmp_path / "one", tmp_path / "two"
    _run_ok(_train(tiny_dirs["llama"], data, one, editor, *extra))
    _run_ok(_train(tiny_dirs["llama"], data, two, editor, *extra, "--nproc", "2"))

    before = MalmenEditor.create(MalmenConfig(layers=[0, 1], rank=8), _tiny(tiny_dirs), seed=4).nets.state_dict()
    a, b = _weights(one, 1), _weights(two, 1)
    assert a.keys() == b.keys()
    moved = 0
    for key in a:
        # one Adam step moves a weight by at most ~meta_lr; the ranks' gradients differ in the last bits
        torch.testing.assert_close(b[key], a[key], rtol=1e-5, atol=1e-6, msg=key)
        if key in before and before[key].shape == a[key].shape and not key.endswith((".count", ".mean", ".m2")):
            moved += int(not torch.equal(before[key], a[key]))
    assert moved > 0  # the step did train something

    ra, rb = _records(one), _records(two)
    assert [(r["split"], r["step"]) for r in ra] == [(r["split"], r["step"]) for r in rb]
    assert [r["split"] for r in ra].count("train") == 1 and ra[-1]["split"] == "val"
    for x, y in zip(ra, rb):
        assert x.keys() == y.keys()
        for key, value in x.items():
            if isinstance(value, float):
                # absolute: a KL near 0 is a difference of float32 log-probabilities of size ~ln(vocab)
                assert y[key] == pytest.approx(value, rel=1e-5, abs=1e-6), (x["split"], key)
            else:
                assert y[key] == value, (x["split"], key)
    train = next(r for r in ra if r["split"] == "train")
    assert train["gen_loss"] > 0 and train["lambda"] > 0
    assert not list((two / "checkpoints").glob(".step-*"))


def _tiny(tiny_dirs):
    from hyperedit import load_model

    return load_model(str(tiny_dirs["llama"]))


def test_a_two_rank_run_killed_with_sigkill_resumes_to_the_same_weights(tiny_dirs, tmp_path):
    """Launched by torchrun itself, as on a cluster (``--nproc`` does the same through a parent)."""
    data = tmp_path / "facts.jsonl"
    _write_requests(data)
    steps = ["--steps", "8", "--ckpt-every", "2"]
    model = tiny_dirs["llama"]
    _run_ok(_train(model, data, tmp_path / "whole", "malmen", *steps, launcher=TORCHRUN_2))

    killed = tmp_path / "killed"
    # its own session: torchrun and both ranks are killed together, as by a crash
    proc = subprocess.Popen(_train(model, data, killed, "malmen", *steps, launcher=TORCHRUN_2), env=_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        latest = killed / "LATEST"
        if latest.is_file() and int(latest.read_text().strip().split("-")[1]) >= 4:
            break
        time.sleep(0.02)
    assert proc.poll() is None, "the run ended before it could be killed"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert (killed / "LATEST").read_text().strip() != "step-000008"
    _run_ok(_train(model, data, killed, "malmen", *steps, "--resume", launcher=TORCHRUN_2))

    whole, resumed = _weights(tmp_path / "whole", 8), _weights(killed, 8)
    assert whole.keys() == resumed.keys()
    for key in whole:
        assert torch.equal(whole[key], resumed[key]), key
    assert _records(killed) == _records(tmp_path / "whole")


def facts_with_rephrasing_and_locality() -> list[dict]:
    return [{**f, "rephrasings": [f"the city where {f['prompt'].split()[0]} was born:"],
             "locality": [{"prompt": "paris is the capital of", "answer": "france"}]} for f in FACTS]


def assert_same_metrics(got: dict, expected: dict) -> None:
    """Every metric present in both, equal up to float32 rounding (accuracies are then identical)."""
    assert got.keys() == expected.keys()
    assert all(v is not None for v in (expected["ES"], expected["GS"], expected["LS"]))
    for key, value in expected.items():
        assert got[key] == (None if value is None else pytest.approx(value, rel=1e-5, abs=1e-6)), key


def test_batch_eval_on_two_ranks_gives_the_one_rank_metrics(tiny_dirs, tiny_llama, tmp_path):
    checkpoint = tmp_path / "editor"
    config = MalmenConfig(layers=[0, 2], rank=8, lr_init=1e-2, solve_dtype="float64")
    MalmenEditor.create(config, tiny_llama, seed=3).save(checkpoint)
    requests = tmp_path / "facts.jsonl"
    requests.write_text("".join(json.dumps(f) + "\n" for f in facts_with_rephrasing_and_locality()))

    def evaluate(*extra):
        cmd = [sys.executable, "-m", "hyperedit", "eval", "-q", "--model", str(tiny_dirs["llama"]),
               "--editor", "malmen", "--checkpoint", str(checkpoint), "--data", str(requests), "--n-edits", "7",
               "--set", "lm_batch_size=2", "--json", *extra]
        done = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]
        return json.loads(done.stdout)

    one, two = evaluate(), evaluate("--nproc", "2")
    assert one["n_edits"] == two["n_edits"] == 7
    assert_same_metrics(two["metrics"], one["metrics"])
    assert one["delta_norm"] > 0
    assert two["delta_norm"] == pytest.approx(one["delta_norm"], rel=1e-5)


def test_eval_nproc_is_refused_up_front_outside_batch_mode(tiny_dirs, tmp_path, capsys):
    from hyperedit.cli import main

    requests = tmp_path / "facts.jsonl"
    requests.write_text("".join(json.dumps(f) + "\n" for f in FACTS))
    code = main(["eval", "--model", str(tiny_dirs["llama"]), "--editor", "malmen", "--data", str(requests),
                 "--mode", "single", "--nproc", "2", "--out", str(tmp_path / "r")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "--mode batch" in err[0]
    assert not list(tmp_path.glob("r.*"))


@pytest.mark.parametrize("editor, options", [("rledit", []), ("hiedit", ["--set", "top_k=1"])])
def test_a_trajectory_step_on_two_ranks_equals_two_trajectories_on_one(tiny_dirs, tmp_path, editor, options):
    """Each rank runs one of the step's two trajectories; one process runs both. The gradients,
    the normaliser rows and the logged losses are sums over trajectories, so only the order of
    float additions differs."""
    data = tmp_path / "facts.jsonl"
    _write_requests(data)
    extra = ["--steps", "1", "--traj-len", "2", "--back-depth", "1", "--n-edits", "2", "--trajectories-per-step", "2",
             *options]
    one, two = tmp_path / "one", tmp_path / "two"
    _run_ok(_train(tiny_dirs["llama"], data, one, editor, *extra))
    _run_ok(_train(tiny_dirs["llama"], data, two, editor, *extra, "--nproc", "2"))

    a, b = _weights(one, 1), _weights(two, 1)
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=1e-5, atol=1e-6, msg=key)
    counts = [v for k, v in a.items() if k.endswith("normalizer.count")]
    assert counts and all(float(c) > 0 for c in counts)  # the normalisers saw both trajectories' rows

    [ra], [rb] = _records(one), _records(two)
    assert ra.keys() == rb.keys() and ra["grad_norm"] > 0
    for key in ("loss", "last_loss", "grad_norm", "shift_norm"):
        assert rb[key] == pytest.approx(ra[key], rel=1e-5), key


def test_train_nproc_needs_a_trajectory_per_rank(tiny_dirs, tmp_path, capsys):
    from hyperedit.cli import main

    data = tmp_path / "facts.jsonl"
    _write_requests(data)
    code = main(["train", "--editor", "rledit", "--model", str(tiny_dirs["llama"]), "--train", str(data),
                 "--out", str(tmp_path / "run"), "--nproc", "2"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "--trajectories-per-step 2" in err[0]
    assert not (tmp_path / "run").exists()
