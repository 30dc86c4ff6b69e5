"""Data-parallel edits on torch.distributed (gloo, CPU): N ranks give the one-rank result."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import hyperedit
from hyperedit.delta import EditDelta
from hyperedit.distributed import World, shard
from hyperedit.distributed.launch import strip_nproc
from hyperedit.editors.hypernet import MalmenConfig, MalmenEditor

FACTS = [{"prompt": f"{name} was born in the city of", "target": city}
         for name, city in zip("john mary peter anna paul lisa mark".split(),
                               "paris rome berlin london madrid tokyo oslo".split())]


@pytest.mark.parametrize("n", [0, 1, 5, 7, 64])
@pytest.mark.parametrize("size", [1, 2, 3])
def test_shards_cover_every_item_once_in_order(n, size):
    items = list(range(n))
    parts = [shard(items, World(rank, size)) for rank in range(size)]
    assert sum(parts, []) == items
    assert max(map(len, parts)) - min(map(len, parts)) <= 1


def test_strip_nproc_keeps_everything_else():
    assert strip_nproc(["edit", "--nproc", "2", "--out", "d", "--nproc=3", "-q"]) == ["edit", "--out", "d", "-q"]


def _env():
    return {**os.environ, "PYTHONPATH": str(Path(hyperedit.__file__).parents[1]), "OMP_NUM_THREADS": "1",
            "HYPEREDIT_PROGRESS": "0"}


def test_a_malmen_edit_on_two_ranks_equals_the_one_rank_edit(tiny_dirs, tiny_llama, tmp_path):
    """MEND shares the path (its accumulator is a plain sum), so MALMEN's least squares stands for both."""
    checkpoint = tmp_path / "editor"
    config = MalmenConfig(layers=[0, 2], rank=8, lr_init=1e-2, solve_dtype="float64")
    MalmenEditor.create(config, tiny_llama, seed=3).save(checkpoint)
    requests = tmp_path / "facts.jsonl"
    requests.write_text("".join(json.dumps(f) + "\n" for f in FACTS))

    def edit(out, *extra):
        cmd = [sys.executable, "-m", "hyperedit", "edit", "-q", "--model", str(tiny_dirs["llama"]),
               "--editor", "malmen", "--checkpoint", str(checkpoint), "--requests", str(requests),
               "--out", str(out), "--set", "lm_batch_size=2", *extra]
        done = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]
        return EditDelta.load(out)

    one, two = edit(tmp_path / "one"), edit(tmp_path / "two", "--nproc", "2")
    assert one.shifts.keys() == two.shifts.keys()
    for name, shift in one.shifts.items():
        assert shift.abs().max() > 0
        # the ranks sum their shares in another order than one process does: float32 rounding only
        torch.testing.assert_close(two.shifts[name], shift, rtol=1e-4, atol=1e-5 * float(shift.abs().max()))


def test_nproc_is_refused_up_front_for_editors_that_do_not_split(tiny_dirs, tmp_path, capsys):
    from hyperedit.cli import main

    requests = tmp_path / "facts.jsonl"
    requests.write_text("".join(json.dumps(f) + "\n" for f in FACTS))
    code = main(["edit", "--model", str(tiny_dirs["llama"]), "--editor", "ft", "--requests", str(requests),
                 "--out", str(tmp_path / "d"), "--nproc", "2"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "does not split" in err[0]
    assert not (tmp_path / "d").exists()
