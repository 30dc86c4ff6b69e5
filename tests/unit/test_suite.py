"""The benchmark suite: protocol files, resumable runs, the leaderboard and the README table."""
import json
from pathlib import Path

import pytest

from hyperedit.errors import InputError
from hyperedit.suite import load_protocols, run_protocol
from hyperedit.suite.report import load_records, readme_block, readme_table, report_markdown

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tests" / "fixtures" / "data"


def test_readme_table_is_the_generated_one():
    records = load_records(ROOT / "benchmarks" / "results" / "leaderboard")
    assert records, "the leaderboard results are committed"
    assert readme_block((ROOT / "README.md").read_text()) == readme_table(records)


def test_every_shipped_protocol_file_is_valid():
    names = [p.name for path in sorted((ROOT / "benchmarks" / "protocols").glob("*.json"))
             for p in load_protocols(path)]
    assert "counterfact-val-100" in names and "mquake-hard-100" in names and len(names) == len(set(names))


@pytest.mark.parametrize("change, field", [({"mode": "stream"}, "mode"), ({"n": 0}, "n"), ({"colour": 1}, "colour"),
                                           ({"mode": "sequential", "n": 10, "batch": 3}, "batch"),
                                           ({"editors": [{"editor": "ft", "options": []}]}, "editors[0].options")])
def test_bad_protocol_is_one_line_naming_file_and_field(tmp_path, change, field):
    path = tmp_path / "p.json"
    path.write_text(json.dumps([{"name": "x", "data": "counterfact:val", "n": 4, "mode": "batch",
                                 "editors": ["ft"], **change}]))
    with pytest.raises(InputError) as err:
        load_protocols(path)
    assert err.value.field == field and str(path) in str(err.value) and "\n" not in str(err.value)


def test_run_writes_one_file_per_experiment_and_skips_it_next_time(tmp_path, model_dir, monkeypatch):
    monkeypatch.setenv("HYPEREDIT_DATA_DIR", str(FIXTURES))
    path = tmp_path / "p.json"
    path.write_text(json.dumps({"name": "tiny", "data": "counterfact:train", "n": 2, "mode": "batch",
                                "editors": ["ft", {"editor": "ft", "label": "ft-2", "options": {"steps": 2}}],
                                "models": [model_dir]}))
    protocol, = load_protocols(path)
    out = tmp_path / "results"
    first = run_protocol(protocol, out)
    assert [s for _, s in first] == ["ran", "ran"]
    assert [s for _, s in run_protocol(protocol, out)] == ["done", "done"]
    records = load_records(out)
    assert {r["editor_label"] for r in records} == {"ft", "ft-2"}
    assert all("ES_gen" in r["metrics"] and "ES" in r["metrics"] for r in records)
    text = report_markdown(records, None)
    assert "## tiny" in text and "Produced by:" in text


def _record(protocol: str, editor: str, tf: float, gen: float) -> dict:
    metrics = {k: tf for k in ("ES", "GS", "LS")} | {k: gen for k in ("ES_gen", "GS_gen", "LS_gen")}
    return {"protocol": protocol, "editor": editor, "model": "m", "n_edits": 4, "mode": "batch",
            "edit_time_s": 1.0, "command": "c", "metrics": metrics}


def test_report_names_the_protocol_whose_ranking_changes_and_the_gap_per_editor():
    records = [_record("a", "x", 0.9, 0.2), _record("a", "y", 0.5, 0.4), _record("a", "z", 0.1, 0.0),
               _record("b", "x", 0.9, 0.8), _record("b", "y", 0.5, 0.4)]
    text = report_markdown(records, None)
    summary = next(line for line in text.splitlines() if line.startswith("Under the generated metrics"))
    assert "1 of 2 protocols" in summary and "`a` (y overtakes x)" in summary and "same in `b`" in summary
    row_x = next(line for line in text.splitlines() if line.startswith("| x | 2 |"))
    assert f"{((0.2 - 0.9) + (0.8 - 0.9)) / 2:+.3f}" in row_x


def test_mquake_editors_are_ranked_by_multihop_accuracy():
    records = [{**_record("mq", e, 0.0, 0.0), "metrics": {"ES": 1.0, "MH_tf": tf, "MH": gen}}
               for e, tf, gen in (("x", 0.6, 0.1), ("y", 0.4, 0.3))]
    text = report_markdown(records, None)
    assert "Ranking by multi-hop accuracy (MH_tf, MH): teacher-forced x > y; generated y > x" in text
    assert "`mq` (y overtakes x)" in text
