"""The lifelong runner: accumulation, curves, general ability, exact restore, kill-and-resume."""
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

from hyperedit.editors import get_editor
from hyperedit.eval.general import evaluate_general, macro_f1, predict_choices
from hyperedit.eval.lifelong import LifelongConfig, LifelongRunner
from hyperedit.requests import EditRequest, LocalityPrompt

CITIES = ["paris", "rome", "berlin", "london", "madrid", "tokyo", "moscow", "vienna", "lisbon", "athens", "cairo",
          "delhi"]
COUNTRIES = ["france", "italy", "germany", "england", "spain", "japan", "russia", "austria", "portugal", "greece",
             "egypt", "india"]

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "data"  # a miniature of the benchmark data


def make_requests(n: int) -> list[EditRequest]:
    out = []
    for i in range(n):
        c, t = COUNTRIES[i % len(COUNTRIES)], CITIES[(i * 5 + 3) % len(CITIES)]
        out.append(EditRequest(prompt=f"the capital of {c} is", target=t, subject=c,
                               rephrasings=(f"the city of {c} is",),
                               locality=(LocalityPrompt(f"john plays {['piano', 'golf', 'chess'][i % 3]}", "with"),),
                               id=str(i)))
    return out


def test_macro_f1_by_hand():
    # class 0: tp 1, fp 1, fn 1 -> 2/4 ; class 1: tp 1, fp 2, fn 1 -> 2/5 ; class 2: tp 0 -> 0
    assert macro_f1([0, 0, 1, 1, 2], [0, 1, 1, 0, 1], 3) == pytest.approx((0.5 + 0.4 + 0.0) / 3)
    assert macro_f1([0, 1], [0, 1], 2) == 1.0


def test_choice_scoring_prefers_the_likelier_continuation(tiny_llama):
    adapter = tiny_llama.adapter
    rows = [{"prompt": "the capital of france is", "choices": [" paris", " rome", " cat"], "label": 0}]
    picked = predict_choices(adapter, rows)[0]
    from hyperedit.eval.metrics import score_pairs

    scores = score_pairs(adapter, [rows[0]["prompt"]] * 3, rows[0]["choices"])
    assert picked == min(range(3), key=lambda i: scores[i].mean_nll * len(scores[i].target))
    result = evaluate_general(adapter, {"toy": rows * 2})
    assert result["toy"]["acc"] == float(picked == 0) and result["mean"]["acc"] == result["toy"]["acc"]


def _config(**kw):
    base = dict(num_seq=6, batch_size=2, num_pre=2, curve_every=2, curve_sample=2, general_per_task=0)
    base.update(kw)
    return LifelongConfig(**base)


def test_stream_accumulates_curves_and_restores_exactly(tiny_llama, tmp_path):
    editor = get_editor("ft", steps=3, lr=1e-2)
    adapter = tiny_llama.adapter
    names = [adapter.module_name(i, kind) for i in range(adapter.num_layers) for kind in ("down", "up", "gate")]
    before = {n: tiny_llama.adapter.weight(n).detach().clone() for n in names}
    runner = LifelongRunner(tiny_llama, editor, make_requests(6), _config(), tmp_path / "run")
    summary = runner.run(restore=False, progress=False)
    assert [p["edits"] for p in summary["curves"]] == [2, 4, 6]
    assert summary["n_steps"] == 3 and summary["modules_fraction_mean"] == 1.0
    # every step changed every module it touched, and each is counted once per step
    assert summary["module_edits"] and set(summary["module_edits"].values()) == {3}
    # the process holds the model, so any measured peak is well above zero
    assert summary["peak_rss_mb"] is not None and summary["peak_rss_mb"] > 10.0
    for key in ("ES", "GS", "LS", "ES_pre", "GS_pre", "LS_pre"):
        assert 0.0 <= summary["metrics"][key] <= 1.0
    # the stream's weights are the sum of three deltas, never reverted
    changed = runner.weights()
    assert changed and set(changed) <= set(names)
    assert all(not torch.equal(changed[n], before[n]) for n in changed)
    runner.restore()
    for n in names:
        assert torch.equal(tiny_llama.adapter.weight(n), before[n])


def test_general_ability_points_along_the_stream(tiny_llama, tmp_path):
    editor = get_editor("ft", steps=2, lr=1e-2)
    runner = LifelongRunner(tiny_llama, editor, make_requests(4),
                            _config(num_seq=4, general_per_task=2, general_tasks=["sst2", "rte"]), tmp_path / "run",
                            data_dir=FIXTURES)
    summary = runner.run(progress=False)
    assert set(summary["general"]["before"]) == {"sst2", "rte", "mean"}
    assert all("general" in p and "general_retention" in p for p in summary["curves"])


def test_resume_in_process_matches_uninterrupted(tiny_dirs, tmp_path):
    from hyperedit.models import load_model

    def final_weights(run_dir, stops):
        for stop in stops:
            lm = load_model(str(tiny_dirs["llama"]))
            runner = LifelongRunner(lm, get_editor("ft", steps=3, lr=1e-2), make_requests(6), _config(), run_dir)
            out = runner.run(resume=True, restore=False, max_edits=stop, progress=False)
        return runner.weights(), out

    whole, summary = final_weights(tmp_path / "a", [None])
    parts, resumed = final_weights(tmp_path / "b", [2, 4, None])
    assert set(whole) == set(parts) and all(torch.equal(whole[n], parts[n]) for n in whole)
    assert resumed["metrics"] == summary["metrics"]
    assert [p["edits"] for p in resumed["curves"]] == [2, 4, 6]
    assert resumed["module_edits"] == summary["module_edits"]


def test_resume_from_a_checkpoint_without_module_counts(tiny_llama, tmp_path):
    """A stream checkpoint written before per-module counts existed resumes; counting starts there."""
    run_dir = tmp_path / "run"
    LifelongRunner(tiny_llama, get_editor("ft", steps=3, lr=1e-2), make_requests(6), _config(), run_dir).run(
        restore=True, max_edits=2, progress=False)
    (state_file,) = run_dir.glob("checkpoints/*/stream.json")
    state = json.loads(state_file.read_text())
    del state["module_edits"]
    state_file.write_text(json.dumps(state))
    runner = LifelongRunner(tiny_llama, get_editor("ft", steps=3, lr=1e-2), make_requests(6), _config(), run_dir)
    summary = runner.run(resume=True, progress=False)
    assert summary["n_steps"] == 3 and set(summary["module_edits"].values()) == {2}


def _write_requests(path: Path, n: int) -> None:
    with open(path, "w") as handle:
        for r in make_requests(n):
            handle.write(json.dumps({"prompt": r.prompt, "target": r.target, "rephrasings": list(r.rephrasings),
                                     "locality": [{"prompt": loc.prompt, "answer": loc.answer} for loc in r.locality],
                                     "id": r.id}) + "\n")


def _cli(model_dir, data, run_dir, resume=False):
    cmd = [sys.executable, "-m", "hyperedit", "lifelong", "-q", "--model", str(model_dir), "--editor", "ft",
           "--set", "steps=20", "--set", "lr=0.01", "--data", str(data), "--num-seq", "30", "--batch", "1",
           "--num-pre", "5", "--curve-every", "10", "--curve-sample", "3", "--ckpt-every", "1",
           "--general-per-task", "0", "--run-dir", str(run_dir), "--threads", "1"]
    return cmd + (["--resume"] if resume else [])


def _final(run_dir: Path) -> tuple[dict, dict]:
    latest = run_dir / "checkpoints" / (run_dir / "LATEST").read_text().strip()
    return load_file(str(latest / "weights.safetensors")), json.loads((latest / "stream.json").read_text())


def test_sigkill_then_resume_gives_the_uninterrupted_final_state(tiny_dirs, tmp_path):
    data = tmp_path / "edits.jsonl"
    _write_requests(data, 30)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run(_cli(tiny_dirs["llama"], data, tmp_path / "whole"), check=True, env=env, capture_output=True)
    killed = tmp_path / "killed"
    proc = subprocess.Popen(_cli(tiny_dirs["llama"], data, killed), env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 60
    while not (killed / "LATEST").exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done_at_kill = _final(killed)[1]["done"]
    assert done_at_kill < 30, "the run finished before it could be killed"
    subprocess.run(_cli(tiny_dirs["llama"], data, killed, resume=True), check=True, env=env, capture_output=True)
    (w_whole, s_whole), (w_res, s_res) = _final(tmp_path / "whole"), _final(killed)
    assert s_res["done"] == s_whole["done"] == 30
    assert set(w_whole) == set(w_res) and all(torch.equal(w_whole[k], w_res[k]) for k in w_whole)
    assert s_res["curves"] == s_whole["curves"]
    m_res, m_whole = (json.loads((d / "result.json").read_text())["metrics"] for d in (killed, tmp_path / "whole"))
    assert all(m_res[k] == m_whole[k] for k in ("ES", "GS", "LS", "ES_pre", "GS_pre", "LS_pre"))


def test_single_token_fast_path_agrees_with_pair_scoring(tiny_llama):
    from hyperedit.eval import general

    rows = [{"prompt": "the capital of france is", "choices": [" paris", " rome", " cat"], "label": 0},
            {"prompt": "john plays", "choices": [" piano", " golf"], "label": 1},
            {"prompt": "mary is a", "choices": [" doctor", " big dog"], "label": 0}]  # two tokens: slow path
    assert general._single_token_choices(tiny_llama.adapter, rows[0]) is not None
    assert general._single_token_choices(tiny_llama.adapter, rows[2]) is None
    from hyperedit.eval.metrics import score_pairs

    want = []
    for row in rows:
        s = score_pairs(tiny_llama.adapter, [row["prompt"]] * len(row["choices"]), row["choices"])
        want.append(min(range(len(s)), key=lambda i: s[i].mean_nll * len(s[i].target)))
    assert predict_choices(tiny_llama.adapter, rows, batch_size=2) == want


class _CountingEditor:
    """A stateful editor: each shift is scaled by how many edits it has made (state resumes or not)."""

    name = "counting"
    config = None

    def __init__(self):
        self.count = torch.zeros(())

    def edit(self, lm, requests):
        from hyperedit.delta import EditDelta

        self.count += len(requests)
        name = lm.adapter.module_names([0])[0]
        shape = lm.adapter.in_out_shape(name)
        return EditDelta.from_in_out(lm.adapter, {name: torch.full(shape, 1e-3) * self.count}, editor=self.name)

    def stream_state(self):
        return {"count": self.count.clone()}, {"kind": "counting"}

    def load_stream_state(self, state, meta):
        assert meta == {"kind": "counting"}
        self.count = state["count"].clone()


def test_stateful_editor_state_is_checkpointed(tiny_dirs, tmp_path):
    from hyperedit.models import load_model

    def run(run_dir, stops):
        for stop in stops:
            lm = load_model(str(tiny_dirs["llama"]))
            runner = LifelongRunner(lm, _CountingEditor(), make_requests(6), _config(), run_dir)
            runner.run(resume=True, restore=False, max_edits=stop, progress=False)
        return runner.weights()

    whole, parts = run(tmp_path / "a", [None]), run(tmp_path / "b", [2, None])
    assert all(torch.equal(whole[n], parts[n]) for n in whole)


def test_cli_pinned_target_cache_is_written_and_read(tiny_dirs, tmp_path, capsys):
    """Locate-then-edit editors in a stream: --pin-targets --target-cache writes every request's target,
    and a later run really reads them (a doctored cache changes the written weights)."""
    from test_memit import CORPUS

    from hyperedit.cli import main
    from hyperedit.editors.locate import TargetCache

    data, cache_file = tmp_path / "edits.jsonl", tmp_path / "targets.safetensors"
    _write_requests(data, 4)

    def run(name, *extra):
        return main(["lifelong", "-q", "--model", str(tiny_dirs["llama"]), "--editor", "memit", "--set", "layers=[1,2]",
                     "--set", f"stats_corpus={CORPUS}", "--set", "n_prefixes=0", "--set", "v_steps=5",
                     "--data", str(data), "--num-seq", "4", "--batch", "2", "--num-pre", "2", "--curve-every", "2",
                     "--general-per-task", "0", "--run-dir", str(tmp_path / name), *extra])

    assert run("a", "--pin-targets", "--target-cache", str(cache_file)) == 0
    cache = TargetCache().load(cache_file)
    assert len(cache) == 4
    for key, (z, h, *rest) in list(cache._store.items()):
        cache._store[key] = (z + 1.0, h, *rest)
    cache.save(cache_file)
    assert run("b", "--pin-targets", "--target-cache", str(cache_file)) == 0
    first, second = (load_file(str(sorted((tmp_path / n).rglob("weights.safetensors"))[-1])) for n in ("a", "b"))
    assert set(first) == set(second) and any(not torch.equal(first[k], second[k]) for k in first)
    capsys.readouterr()
    assert main(["lifelong", "-q", "--model", str(tiny_dirs["llama"]), "--editor", "ft", "--data", str(data),
                 "--num-seq", "2", "--run-dir", str(tmp_path / "c"), "--pin-targets"]) == 2
    assert "computes no target vectors" in capsys.readouterr().err


def test_curve_plot_has_one_row_per_dataset(tmp_path):
    from PIL import Image

    from hyperedit.eval.lifelong_report import plot_curves

    point = {"edits": 10, "recent": {"ES": 1.0, "LS": 0.5}, "earliest": {"ES": 0.8}, "general": {"mean": {"acc": 0.5}}}
    records = [{"editor": "ft", "dataset": d, "run": f"ft_{d}", "curves": [point, {**point, "edits": 20}]}
               for d in ("zsre", "counterfact")]
    one = Image.open(plot_curves(records[:1], tmp_path / "one.png"))
    two = Image.open(plot_curves(records, tmp_path / "two.png"))
    assert two.size[1] > 1.6 * one.size[1]  # a second row of panels
    assert plot_curves([{"editor": "ft", "dataset": "zsre", "curves": []}], tmp_path / "empty.png").is_file()


def test_finished_streams_skips_runs_without_checkpoint_or_result(tmp_path, caplog):
    from hyperedit.checkpoints import CheckpointStore
    from hyperedit.eval.lifelong import RESULT_FILE, finished_streams

    done, running, empty = tmp_path / "done", tmp_path / "running", tmp_path / "empty"
    for run in (done, running):
        CheckpointStore(run).save(10, lambda folder: (folder / "stream.json").write_text("{}"))
    (done / RESULT_FILE).write_text(json.dumps({"editor": "ft", "n_edits": 10}))
    empty.mkdir()
    with caplog.at_level("WARNING"):
        found = finished_streams([done, running, empty])
    assert [(run, record["n_edits"]) for run, record, _ in found] == [(done, 10)]
    assert found[0][2] == CheckpointStore(done).latest()
    assert sum("no finished stream" in r.message for r in caplog.records) == 2


def test_alphaedit_with_refreshed_memory_resumes_exactly(tiny_dirs, tmp_path, monkeypatch):
    from hyperedit.models import load_model
    from test_memit import TINY

    monkeypatch.setenv("HYPEREDIT_STATS_CACHE", str(tmp_path / "stats"))

    def final_state(run_dir, stops):
        for stop in stops:
            lm = load_model(str(tiny_dirs["llama"]))
            editor = get_editor("alphaedit", l2=1e-4, nullspace_threshold=1e-6, refresh_every=2,
                                **{**TINY, "v_steps": 2})
            runner = LifelongRunner(lm, editor, make_requests(6), _config(), run_dir)
            out = runner.run(resume=True, restore=False, max_edits=stop, progress=False)
        return runner.weights(), editor.stream_state()[0], out

    whole, state, summary = final_state(tmp_path / "a", [None])
    parts, resumed_state, resumed = final_state(tmp_path / "b", [2, 4, None])
    assert state["refreshed_at"] == 4 and bytes(state["edited"].tolist()).count(b'"') > 0
    assert set(whole) == set(parts) and all(torch.equal(whole[n], parts[n]) for n in whole)
    assert set(state) == set(resumed_state) and all(torch.equal(state[k], resumed_state[k]) for k in state)
    assert resumed["metrics"] == summary["metrics"]


def test_stream_weights_carry_a_checkpoint_and_put_the_model_back(tiny_llama, tmp_path):
    from hyperedit.eval.lifelong import stream_weights

    lm = tiny_llama
    original = {n: p.detach().clone() for n, p in lm.model.named_parameters()}
    runner = LifelongRunner(lm, get_editor("ft", layers=[1], lr=5e-2, steps=3), make_requests(4),
                            _config(num_seq=4, num_pre=0), tmp_path / "run")
    runner.run(restore=False, progress=False)
    edited = runner.weights()
    runner.restore()
    assert edited and all(not torch.equal(w, original[n + ".weight"]) for n, w in edited.items())
    try:
        with stream_weights(lm, runner.store.latest()):
            assert all(torch.equal(lm.adapter.weight(n), w) for n, w in edited.items())
            raise KeyboardInterrupt  # the model is put back however the block ends
    except KeyboardInterrupt:
        pass
    assert all(torch.equal(p, original[n]) for n, p in lm.model.named_parameters())


def test_curves_say_how_full_a_null_space_memory_is(tiny_llama, tmp_path, monkeypatch, caplog):
    """An editor with a memory of earlier edits (AlphaEdit): every curve point counts the null-space
    directions it holds (the editor's own ``memory_fill``, summed), the count grows with the edits, a
    nearly full memory is warned about once, and the result carries the final share; an editor
    without a memory (ft) gets none of it."""
    from test_memit import TINY

    from hyperedit.eval import lifelong

    monkeypatch.setenv("HYPEREDIT_STATS_CACHE", str(tmp_path / "stats"))
    # the tiny model's null space is wide (its statistics corpus is a few lines): warn at a twentieth
    monkeypatch.setattr(lifelong, "MEMORY_FULL", 0.05)
    editor = get_editor("alphaedit", l2=1e-4, nullspace_threshold=1e-2, threshold_relative=True,
                        **{**TINY, "v_steps": 2})
    runner = LifelongRunner(tiny_llama, editor, make_requests(6), _config(), tmp_path / "run")
    with caplog.at_level("WARNING", logger="hyperedit.eval.lifelong"):
        summary = runner.run(progress=False)
    points = [p["memory"] for p in summary["curves"]]
    held = [p["held_dims"] for p in points]
    assert held == sorted(held) and 0 < held[0] < held[-1] <= points[-1]["null_dims"]
    fill = editor.memory_fill(tiny_llama)
    assert points[-1]["per_module"] == {name: m["held_dims"] for name, m in fill.items()}
    assert points[-1]["null_dims"] == sum(m["null_dims"] for m in fill.values())
    assert summary["metrics"]["memory_held_share"] == pytest.approx(held[-1] / points[-1]["null_dims"])
    shares = [p["held_share"] for p in points]
    assert shares[0] < 0.05 <= shares[1] < shares[2]  # one key per fact and layer: 4, 8, 12 held
    warnings = [r.getMessage() for r in caplog.records if "memory of earlier edits holds" in r.getMessage()]
    assert len(warnings) == 1 and warnings[0].startswith("after 4 edits")

    plain = LifelongRunner(tiny_llama, get_editor("ft", steps=1, lr=1e-2), make_requests(4), _config(num_seq=4),
                           tmp_path / "ft").run(progress=False)
    assert all("memory" not in p for p in plain["curves"]) and "memory_held_share" not in plain["metrics"]
