"""Meta-training: checkpoint pieces, data mixing, learning on a tiny model, resume after SIGKILL."""
from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import hyperedit
from hyperedit.editors.hypernet import MalmenConfig, MalmenEditor
from hyperedit.errors import HyperEditError
from hyperedit.requests import EditRequest, LocalityPrompt
from hyperedit.checkpoints import CheckpointStore, load_optimizer_state, optimizer_state, restore_rng_state, rng_state
from hyperedit.training import MetaTrainConfig, MetaTrainer, MetricsLog, batch_for_step, parse_sources, split_validation

NAMES = "john mary peter anna paul lisa mark sara tom emma".split()
CITIES = "paris rome berlin london madrid tokyo moscow vienna lisbon athens cairo delhi beijing oslo".split()
SPORTS = "football tennis golf chess cricket hockey baseball basketball".split()


def synthetic_facts(seed: int = 0) -> list[EditRequest]:
    """90 "X Y was born in CITY" facts over the tiny tokenizer's words, shuffled."""
    rng = random.Random(seed)
    out = [EditRequest(prompt=f"{a} {b} was born in", target=rng.choice(CITIES),
                       rephrasings=(f"the city where {a} {b} was born is",),
                       locality=(LocalityPrompt(f"{b} {a} plays", rng.choice(SPORTS)),))
           for a in NAMES for b in NAMES if a != b]
    rng.shuffle(out)
    return out


# ----- resumable pieces ----------------------------------------------------------------------
def test_checkpoint_store_publishes_complete_checkpoints_only(tmp_path):
    store = CheckpointStore(tmp_path, keep=2)
    assert store.latest() is None
    for step in (2, 4, 6):
        store.save(step, lambda d, s=step: (d / "x.json").write_text(json.dumps({"step": s})))
    assert store.latest().name == "step-000006"
    assert sorted(p.name for p in store.folder.iterdir()) == ["step-000004", "step-000006"]
    (store.folder / ".step-000008-abc").mkdir()  # a write killed half-way is invisible...

    def failing(d):
        (d / "x.json").write_text("{}")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        store.save(8, failing)
    assert store.latest().name == "step-000006"  # ...and so is one that raised
    store.save(8, lambda d: (d / "x.json").write_text("{}"))
    assert not list(store.folder.glob(".step-*"))


def test_optimizer_and_rng_state_round_trip_exactly():
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3)
    opt = torch.optim.Adam([{"params": [model.weight], "lr": 1e-2}, {"params": [model.bias], "lr": 1e-3}])
    for _ in range(3):
        opt.zero_grad()
        model(torch.randn(5, 4)).pow(2).sum().backward()
        opt.step()
    tensors, meta = optimizer_state(opt)
    meta = json.loads(json.dumps(meta))
    gen = torch.Generator().manual_seed(5)
    rng_t, rng_m = rng_state({"data": gen})
    rng_m = json.loads(json.dumps(rng_m))
    expected = (torch.rand(3), random.random(), torch.rand(2, generator=gen))

    twin = torch.nn.Linear(4, 3)
    twin.load_state_dict(model.state_dict())
    twin_opt = torch.optim.Adam([{"params": [twin.weight], "lr": 0.5}, {"params": [twin.bias], "lr": 0.5}])
    load_optimizer_state(twin_opt, tensors, meta)
    restore_rng_state(rng_t, rng_m, {"data": gen})
    assert torch.equal(torch.rand(3), expected[0]) and random.random() == expected[1]
    assert torch.equal(torch.rand(2, generator=gen), expected[2])
    x = torch.randn(5, 4)
    for m, o in ((model, opt), (twin, twin_opt)):
        o.zero_grad()
        m(x).pow(2).sum().backward()
        o.step()
    assert torch.equal(model.weight, twin.weight) and torch.equal(model.bias, twin.bias)


def test_metrics_log_rewinds_to_a_step_and_skips_a_torn_line(tmp_path):
    log = MetricsLog(tmp_path / "m.jsonl")
    for step in range(1, 6):
        log.append({"step": step, "loss": step / 10})
    with open(log.path, "a") as handle:
        handle.write('{"step": 6, "lo')  # killed mid-write
    assert [r["step"] for r in log.read()] == [1, 2, 3, 4, 5]
    log.rewind(3)
    assert [r["step"] for r in log.read()] == [1, 2, 3]
    assert log.path.read_text().endswith("\n")


# ----- data ------------------------------------------------------------------------------------
def test_training_sources_refuse_the_evaluation_splits():
    assert parse_sources("zsre, counterfact") == ["zsre:train", "counterfact:train"]
    assert parse_sources("zsre-10k,counterfact") == ["zsre:train-10k", "counterfact:train"]
    for bad in ("counterfact:val", "zsre,zsre:knowedit-test"):
        with pytest.raises(HyperEditError, match="evaluation split"):
            parse_sources(bad)


def test_batches_are_a_function_of_seed_and_step_and_cover_each_epoch():
    items = synthetic_facts()[:20]
    train, val = split_validation(items, 5, seed=1)
    assert len(train) == 15 and not set(map(id, train)) & set(map(id, val))
    epoch = [r for step in range(3) for r in batch_for_step(train, step, 5, seed=2)]
    assert sorted(map(id, epoch)) == sorted(map(id, train))
    assert batch_for_step(train, 7, 4, seed=2) == batch_for_step(train, 7, 4, seed=2)
    assert batch_for_step(train, 3, 5, seed=2) != batch_for_step(train, 3, 5, seed=3)
    crossing = batch_for_step(train, 3, 4, seed=2)  # positions 12..15 span epochs 0 and 1
    assert len(crossing) == 4


# ----- learning ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def peaky_llama(tmp_path_factory):
    """A tiny Llama with larger initial weights, so its predictions are not near-uniform."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from hyperedit.models import load_model
    from tiny import word_tokenizer

    path = tmp_path_factory.mktemp("peaky-llama")
    tok = word_tokenizer(path)
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64, pad_token_id=0,
                         bos_token_id=2, eos_token_id=3, tie_word_embeddings=False, initializer_range=0.2)
    LlamaForCausalLM(config).save_pretrained(path)
    return load_model(str(path))


def test_short_meta_training_raises_es_on_held_out_edits(peaky_llama, tmp_path):
    facts = synthetic_facts()
    train, val = facts[16:], facts[:16]
    editor = MalmenEditor.create(MalmenConfig(layers=[0, 1], rank=8, lm_batch_size=16, lr_init=1e-2), peaky_llama,
                                 seed=0)
    config = MetaTrainConfig(steps=40, n_edits=8, val_size=16, val_every=40, ckpt_every=40, meta_lr=1e-3)
    records = MetaTrainer(editor, peaky_llama, train, val, config, tmp_path / "run").run()
    before, after = records[0], records[-1]
    assert (before["step"], after["step"]) == (0, 40)
    assert after["ES"] >= before["ES"] + 0.3, (before, after)
    log = MetricsLog(tmp_path / "run" / "metrics.jsonl").read()
    assert [r["step"] for r in log if r["split"] == "train"] == list(range(1, 41))
    assert any(r["split"] == "calibration" for r in log)


# ----- resume after SIGKILL ------------------------------------------------------------------------
def _write_requests(path: Path) -> None:
    with open(path, "w") as handle:
        for r in synthetic_facts(seed=3):
            handle.write(json.dumps({"prompt": r.prompt, "target": r.target, "rephrasings": list(r.rephrasings),
                                     "locality": [{"prompt": loc.prompt, "answer": loc.answer} for loc in r.locality]})
                         + "\n")


def _train_cmd(model: Path, data: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "hyperedit", "train", "-q", "--editor", "malmen", "--model", str(model),
            "--train", str(data), "--out", str(out), "--layers", "0-1", "--rank", "8", "--steps", "20",
            "--n-edits", "8", "--val-size", "8", "--val-every", "0", "--ckpt-every", "2", "--meta-lr", "1e-3",
            "--lr-init", "1e-2", "--threads", "1", "--seed", "4", *extra]


def _run_ok(cmd: list[str], env: dict) -> None:
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]


def test_run_killed_with_sigkill_resumes_to_the_same_weights(tiny_dirs, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(Path(hyperedit.__file__).parents[1]), "OMP_NUM_THREADS": "1"}
    data = tmp_path / "facts.jsonl"
    _write_requests(data)
    model = tiny_dirs["llama"]
    _run_ok(_train_cmd(model, data, tmp_path / "whole"), env)

    killed = tmp_path / "killed"
    proc = subprocess.Popen(_train_cmd(model, data, killed), env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:  # kill it once some checkpoints exist
        latest = killed / "LATEST"
        if latest.is_file() and int(latest.read_text().strip().split("-")[1]) >= 4:
            break
        time.sleep(0.02)
    assert proc.poll() is None, "the run ended before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    stopped_at = (killed / "LATEST").read_text().strip()
    assert stopped_at != "step-000020"
    _run_ok(_train_cmd(model, data, killed, "--resume"), env)

    whole = load_file(str(tmp_path / "whole" / "checkpoints" / "step-000020" / "editor.safetensors"))
    resumed = load_file(str(killed / "checkpoints" / "step-000020" / "editor.safetensors"))
    assert whole.keys() == resumed.keys()
    for key in whole:
        assert torch.equal(whole[key], resumed[key]), key
    strip = lambda rs: [{k: v for k, v in r.items() if k not in ("seconds", "cpu_seconds", "edit_seconds")} for r in rs]  # noqa: E731
    assert strip(MetricsLog(killed / "metrics.jsonl").read()) == strip(MetricsLog(tmp_path / "whole" / "metrics.jsonl").read())
    refused = subprocess.run(_train_cmd(model, data, killed), env=env, capture_output=True, text=True)
    assert refused.returncode == 2 and "--resume" in refused.stderr


def test_a_finished_run_extended_with_more_steps_equals_a_longer_run(tiny_llama, tmp_path):
    facts = synthetic_facts(seed=5)[:40]

    def trainer(run, steps, meta_lr=1e-3):
        editor = MalmenEditor.create(MalmenConfig(layers=[2, 3], rank=4, lr_init=1e-2), tiny_llama, seed=1)
        config = MetaTrainConfig(steps=steps, n_edits=4, val_size=0, val_every=0, ckpt_every=3, meta_lr=meta_lr,
                                 calibrate_lr=False)
        return MetaTrainer(editor, tiny_llama, facts, [], config, tmp_path / run), editor

    whole, whole_editor = trainer("whole", 8)
    whole.run()
    short, _ = trainer("extended", 4)
    short.run()
    longer, longer_editor = trainer("extended", 8)
    longer.run(resume=True)
    for (name, a), b in zip(whole_editor.nets.state_dict().items(), longer_editor.nets.state_dict().values()):
        assert torch.equal(a, b), name
    other, _ = trainer("extended", 10, meta_lr=5e-3)
    with pytest.raises(HyperEditError) as info:
        other.run(resume=True)
    # The message names the differing setting with both values, on one line.
    message = str(info.value)
    assert "train_config.meta_lr: run has 0.001, now 0.005" in message and "\n" not in message
    assert "steps" not in message  # a run may be extended: steps is not a difference
