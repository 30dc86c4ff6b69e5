"""Evaluation protocols: run_batch / run_sequential produce complete records and leave the model as it was."""
from __future__ import annotations

import dataclasses

import pytest
import torch

from hyperedit.bench.records import REQUIRED, write_results
from hyperedit.delta import EditDelta
from hyperedit.editors import get_editor
from hyperedit.eval import run_batch, run_sequential, run_single
from hyperedit.eval.metrics import mean
from hyperedit.requests import EditRequest, LocalityPrompt

REQUESTS = [
    EditRequest(prompt="the eiffel tower is located in the city of", target="rome", subject="eiffel tower",
                rephrasings=["where is the eiffel tower ? it is in the city of"],
                locality=[LocalityPrompt("the colosseum is located in the city of"),
                          LocalityPrompt("the capital of spain is", answer="madrid")],
                old_target="paris", id="e1"),
    EditRequest(prompt="john plays the sport of", target="tennis", subject="john",
                rephrasings=["the sport john plays is"],
                locality=[LocalityPrompt("mary plays the sport of")], old_target="football", id="e2"),
    EditRequest(prompt="the official language of japan is", target="french",
                locality=[LocalityPrompt("the official language of spain is", answer="spanish")], id="e3"),
]


def _snapshot(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _assert_same(model, snap):
    for k, v in model.state_dict().items():
        assert torch.equal(v, snap[k]), k
    assert all(not p.requires_grad for p in model.parameters())


def _check_record(record, mode, n_edits):
    for key in REQUIRED:
        assert key in record, key
    assert record["mode"] == mode and record["n_edits"] == n_edits
    assert record["editor"] == "ft" and record["dataset"] == "unit" and record["split"] == "test"
    assert record["seed"] == 5 and record["command"] == "pytest runner"
    for key in ("ES", "GS", "LS"):
        assert key in record["metrics"]
        assert 0.0 <= record["metrics"][key] <= 1.0
    assert record["edit_time_s"] > 0 and record["peak_rss_mb"] > 0
    assert record["config"]["steps"] == 3


@pytest.fixture
def ft():
    return get_editor("ft", steps=3, lr=1e-2)


def test_run_batch(tiny_llama, ft, tmp_path):
    snap = _snapshot(tiny_llama.model)
    record = run_batch(tiny_llama, ft, REQUESTS, dataset="unit", split="test", command="pytest runner", seed=5,
                       keep_rows=True)
    _assert_same(tiny_llama.model, snap)
    _check_record(record, "batch", 3)
    assert record["model"] == tiny_llama.name
    assert "efficacy_score" in record["metrics"]  # old targets given: CounterFact scores too
    assert record["metrics_pre_edit"]["ES"] is not None and "LS" not in record["metrics_pre_edit"]
    assert record["delta_norm"] > 0
    assert record["time_per_request_s"] == pytest.approx(record["edit_time_s"] / 3, rel=1e-2, abs=1e-4)
    assert [row["id"] for row in record["rows"]] == ["e1", "e2", "e3"]
    # The record is accepted by write_results as is.
    json_path, _ = write_results([record], "r", tmp_path)
    assert json_path.is_file()


def test_run_batch_on_gpt2_without_pre_metrics(tiny_gpt2, ft):
    snap = _snapshot(tiny_gpt2.model)
    record = run_batch(tiny_gpt2, ft, REQUESTS[:2], dataset="unit", split="test", command="pytest runner", seed=5,
                       pre_metrics=False)
    _assert_same(tiny_gpt2.model, snap)
    _check_record(record, "batch", 2)
    assert record["metrics_pre_edit"] is None and "rows" not in record


def test_run_single_is_the_mean_of_batch_of_one_runs_and_restores_the_model(tiny_llama, ft):
    snap = _snapshot(tiny_llama.model)
    record = run_single(tiny_llama, ft, REQUESTS, dataset="unit", split="test", command="pytest runner", seed=5,
                        keep_rows=True)
    _assert_same(tiny_llama.model, snap)
    _check_record(record, "single", 3)
    assert [row["id"] for row in record["rows"]] == ["e1", "e2", "e3"]
    assert len(record["edit_time_per_request_s"]) == 3
    assert record["edit_time_s"] == pytest.approx(sum(record["edit_time_per_request_s"]), rel=1e-3, abs=1e-3)
    alone = [run_batch(tiny_llama, ft, [r], dataset="unit", split="test", command="x", pre_metrics=False)["metrics"]
             for r in REQUESTS]
    _assert_same(tiny_llama.model, snap)
    assert set(record["metrics"]) == {k for m in alone for k in m}
    for key, value in record["metrics"].items():
        expected = mean(m.get(key) for m in alone)
        assert value == pytest.approx(expected, rel=1e-6, abs=1e-9), key
    # Single edits differ from one batch of all three: the protocol really edits one at a time.
    batch = run_batch(tiny_llama, ft, REQUESTS, dataset="unit", split="test", command="x", pre_metrics=False)
    assert batch["metrics"] != record["metrics"]


def test_run_sequential(tiny_llama, ft):
    snap = _snapshot(tiny_llama.model)
    record = run_sequential(tiny_llama, ft, [REQUESTS[:2], REQUESTS[2:]], dataset="unit", split="test",
                            command="pytest runner", seed=5)
    _assert_same(tiny_llama.model, snap)
    _check_record(record, "sequential", 3)
    assert record["n_batches"] == 2 and record["batch_size"] == 2


@dataclasses.dataclass
class _Cfg:
    scale: float = 0.1


class ShiftThenFailEditor:
    """A real (if simple) editor: a fixed random shift per call; raises on a request whose id is 'fail'."""

    name = "shift-then-fail"

    def __init__(self):
        self.config = _Cfg()

    def edit(self, lm, requests):
        if any(r.id == "fail" for r in requests):
            raise RuntimeError("edit failed")
        name = lm.adapter.module_name(1)
        return EditDelta({name: torch.randn(lm.adapter.weight(name).shape) * self.config.scale})


def test_run_sequential_reverts_applied_batches_on_error(tiny_llama):
    snap = _snapshot(tiny_llama.model)
    failing = EditRequest(prompt="mary speaks", target="german", id="fail")
    with pytest.raises(RuntimeError, match="edit failed"):
        run_sequential(tiny_llama, ShiftThenFailEditor(), [REQUESTS[:1], REQUESTS[1:2], [failing]],
                       dataset="unit", split="test", command="x")
    _assert_same(tiny_llama.model, snap)


def test_run_batch_with_a_shared_locality_reference_gives_the_same_metrics(tiny_llama, ft):
    """Several editors on one batch share the unedited model's locality reference: same metrics."""
    from hyperedit.eval import locality_reference

    reference = locality_reference(tiny_llama.adapter, REQUESTS, 32, generated=True)  # LS_gen needs its generations
    own = run_batch(tiny_llama, ft, REQUESTS, dataset="unit", split="test", pre_metrics=False)["metrics"]
    shared = run_batch(tiny_llama, ft, REQUESTS, dataset="unit", split="test", pre_metrics=False,
                       reference=reference)["metrics"]
    assert set(own) == set(shared)
    for key, value in own.items():
        assert shared[key] == pytest.approx(value, rel=1e-5, abs=1e-7), key
