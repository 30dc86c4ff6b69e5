"""The edit ledger: exact revert, persistence, crash safety and concurrent writers."""
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

from hyperedit.delta import EditDelta
from hyperedit.errors import HyperEditError
from hyperedit.ledger import EXPORT_MARKER, Ledger
from hyperedit.models import load_model
from hyperedit.requests import EditRequest

FACTS = [EditRequest(prompt="the eiffel tower is located in the city of", target="rome"),
         EditRequest(prompt="john plays the sport of", target="tennis"),
         EditRequest(prompt="the official language of japan is", target="french")]
# Cheap and strong on the tiny model; layers overlap so the sum order matters.
FT = dict(layers=[2, 3], steps=4, lr=5e-2, max_rel_norm=5.0)
CORPUS = str(Path(__file__).parents[1] / "fixtures" / "data" / "corpus.txt")
ALPHA = dict(layers=[2], stats_corpus=CORPUS, stats_samples=50, n_prefixes=0, v_steps=3, kl_factor=0.0)
SRC = str(Path(__file__).resolve().parents[2] / "src")


def _weights(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _assert_bit_equal(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]), k


def _fresh(tiny_dirs):
    return load_model(str(tiny_dirs["llama"]))


def test_revert_middle_entry_equals_never_applying_it(tiny_dirs, tmp_path):
    led = Ledger(tmp_path / "ws").attach(_fresh(tiny_dirs))
    base = _weights(load_model(str(tiny_dirs["llama"])).model)
    a, b, c = (led.apply([fact], "ft", FT) for fact in FACTS)
    assert [e.parents for e in (a, b, c)] == [[], [a.id], [a.id, b.id]]
    with_b = _weights(led.lm.model)
    assert any(not torch.equal(with_b[k], base[k]) for k in base)
    assert led.revert(b.id) == {"reverted": b.id, "recomputed": [], "kept": [], "computed_on_it": [c.id]}
    after_revert = _weights(led.lm.model)

    # A second ledger holding only A's and C's deltas, in a fresh model and process state.
    other = Ledger(tmp_path / "ws2").attach(_fresh(tiny_dirs))
    for entry in (a, c):
        other.import_delta(EditDelta(led.blobs.get(entry.delta_hash), entry.delta_meta), metrics=False)
    _assert_bit_equal(after_revert, _weights(other.lm.model))

    # Reopening the workspace and materialising from scratch gives the same bits again.
    reopened = Ledger(tmp_path / "ws", create=False).attach(_fresh(tiny_dirs))
    reopened.sync()
    _assert_bit_equal(after_revert, _weights(reopened.lm.model))

    # Reverting everything gives the base weights exactly.
    for entry in (a, c):
        led.revert(entry.id)
    _assert_bit_equal(base, _weights(led.lm.model))
    assert [e.status for e in led.entries()] == ["reverted"] * 3


def test_entry_records_what_was_done(tiny_dirs, tmp_path):
    led = Ledger(tmp_path / "ws").attach(_fresh(tiny_dirs))
    entry = led.apply(FACTS[:2], "ft", FT)
    assert entry.status == "active" and entry.source == "computed" and entry.editor == "ft"
    assert entry.options == FT and entry.base_model["fingerprint"] == led.base_model["fingerprint"]
    assert [r["target"] for r in entry.requests] == ["rome", "tennis"]
    assert set(entry.metrics) >= {"ES", "GS", "LS"} and 0 <= entry.metrics["ES"] <= 1
    assert entry.edit_time_s > 0 and entry.created_at
    assert entry.edit_requests() == FACTS[:2]
    assert [ev["action"] for ev in led.events(entry.id)] == ["applied"]
    with pytest.raises(HyperEditError, match="no ledger entry 99"):
        led.get(99)
    led.revert(entry.id)
    with pytest.raises(HyperEditError, match="already reverted"):
        led.revert(entry.id)
    assert led.verify()["ok"]


def test_ledger_refuses_another_base_model_and_foreign_directory(tiny_dirs, tmp_path):
    Ledger(tmp_path / "ws").attach(_fresh(tiny_dirs))
    with pytest.raises(HyperEditError, match="belongs to base model"):
        Ledger(tmp_path / "ws").attach(load_model(str(tiny_dirs["gpt2"])))
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "notes.txt").write_text("mine")
    with pytest.raises(HyperEditError, match="not a ledger workspace"):
        Ledger(tmp_path / "foreign")
    assert (tmp_path / "foreign" / "notes.txt").read_text() == "mine"


def test_revert_with_recompute_replays_later_entries_on_the_new_history(tiny_dirs, tmp_path):
    led = Ledger(tmp_path / "ws").attach(_fresh(tiny_dirs))
    a, b, c = (led.apply([fact], "alphaedit", ALPHA, metrics=False) for fact in FACTS)
    assert c.state_hash and c.state_hash != b.state_hash  # AlphaEdit's sequential state is chained
    result = led.revert(b.id, recompute=True)
    assert result == {"reverted": b.id, "recomputed": [c.id], "kept": [], "computed_on_it": []}
    new_c = led.get(c.id)
    assert new_c.parents == [a.id] and new_c.delta_hash != c.delta_hash
    assert [ev["action"] for ev in led.events(c.id)] == ["applied", "recomputed"]
    # The recomputed C is what applying A then C gives in a ledger that never saw B.
    other = Ledger(tmp_path / "ws2").attach(_fresh(tiny_dirs))
    other.apply([FACTS[0]], "alphaedit", ALPHA, metrics=False)
    redo = other.apply([FACTS[2]], "alphaedit", ALPHA, metrics=False)
    assert redo.delta_hash == new_c.delta_hash and redo.state_hash == new_c.state_hash
    _assert_bit_equal(_weights(led.lm.model), _weights(other.lm.model))


def test_export_writes_a_loadable_model_and_refuses_foreign_directories(tiny_dirs, tmp_path):
    led = Ledger(tmp_path / "ws").attach(_fresh(tiny_dirs))
    led.apply([FACTS[0]], "ft", FT, metrics=False)
    out = led.export(tmp_path / "export")
    from transformers import AutoModelForCausalLM

    loaded = AutoModelForCausalLM.from_pretrained(out, local_files_only=True)
    _assert_bit_equal(_weights(led.lm.model), _weights(loaded))
    assert json.loads((out / EXPORT_MARKER).read_text())["active_entries"] == [1]
    led.export(out)  # a previous export may be replaced
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "keep.txt").write_text("x")
    with pytest.raises(HyperEditError, match="did not write"):
        led.export(tmp_path / "mine")
    assert os.listdir(tmp_path / "mine") == ["keep.txt"]


_WRITER = """
import sys, torch
sys.path.insert(0, {src!r})
from hyperedit.delta import EditDelta
from hyperedit.ledger import Ledger
from hyperedit.models import load_model
writer, count = int(sys.argv[2]), int(sys.argv[3])
torch.manual_seed(writer)
led = Ledger(sys.argv[1]).attach(load_model({model!r}))
print("ready", flush=True)
for i in range(count):
    shift = torch.randn(32, 64) * 1e-3
    led.import_delta(EditDelta({{"model.layers.1.mlp.down_proj": shift}}, {{"editor": "test", "writer": writer}}),
                     metrics=False)
print("done", flush=True)
"""
FINITE = 15


@pytest.fixture(scope="module")
def raced_workspace(tiny_dirs, tmp_path_factory):
    """Two processes import deltas into one ledger at once; the second is killed (-9) mid-stream."""
    root = tmp_path_factory.mktemp("race")
    script = root / "writer.py"
    script.write_text(_WRITER.format(src=SRC, model=str(tiny_dirs["llama"])))
    workspace = root / "ws"
    Ledger(workspace)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    finite, endless = (subprocess.Popen([sys.executable, str(script), str(workspace), str(w), str(n)],
                                        stdout=subprocess.PIPE, text=True, env=env)
                       for w, n in ((1, FINITE), (2, 10**6)))
    assert endless.stdout.readline().strip() == "ready"
    out, _ = finite.communicate(timeout=300)
    time.sleep(0.3)  # the endless writer is now in the middle of some apply
    os.kill(endless.pid, signal.SIGKILL)
    endless.wait()
    endless.stdout.close()
    return workspace, finite.returncode, out


def _check_consistent(workspace):
    led = Ledger(workspace, create=False)
    report = led.verify()
    assert report["ok"], report["problems"]
    for entry in led.entries():
        shifts = led.blobs.get(entry.delta_hash)
        assert list(shifts) == ["model.layers.1.mlp.down_proj"] and shifts["model.layers.1.mlp.down_proj"].shape == (32, 64)
    return led


def test_two_processes_applying_at_once_never_corrupt_the_ledger(raced_workspace):
    workspace, code, out = raced_workspace
    assert code == 0 and out.split() == ["ready", "done"]
    led = _check_consistent(workspace)
    entries = led.entries()
    assert [e.id for e in entries] == list(range(1, len(entries) + 1))
    mine = [e for e in entries if e.delta_meta["writer"] == 1]
    assert len(mine) == FINITE and len({e.delta_hash for e in mine}) == FINITE  # none lost or mixed up
    assert any(e.delta_meta["writer"] == 2 for e in entries) and mine[-1].id < entries[-1].id  # they interleaved


def test_kill_9_during_apply_leaves_ledger_consistent(raced_workspace, tiny_dirs):
    workspace, _, _ = raced_workspace
    led = _check_consistent(workspace)  # every recorded entry is whole; a killed apply left no entry
    before = len(led.entries())
    led.attach(_fresh(tiny_dirs))
    led.sync()
    led.import_delta(EditDelta({"model.layers.1.mlp.down_proj": torch.zeros(32, 64)}), metrics=False)
    assert len(_check_consistent(workspace).entries()) == before + 1
