"""Tests of hyperedit.data: benchmark layouts, the user format, malformed input, general
tasks and the text corpus. Fixtures live in tests/fixtures/data (a miniature of the shared
data directory); the tests on the real shared data are skipped when it is absent."""
from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from hyperedit.data import (
    DATASETS,
    GENERAL_TASKS,
    load_general_tasks,
    load_requests,
    load_text_corpus,
    resolve_data_dir,
)
from hyperedit.data import _common
from hyperedit.errors import HyperEditError, InputError
from hyperedit.requests import EditRequest, LocalityPrompt

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "data"


# --------------------------------------------------------------------------- data directory


def test_resolve_explicit_and_env(tmp_path, monkeypatch):
    monkeypatch.setenv(_common.ENV_VAR, str(FIXTURES))
    assert resolve_data_dir(tmp_path) == tmp_path
    assert resolve_data_dir() == FIXTURES
    with pytest.raises(HyperEditError, match="does not exist"):
        resolve_data_dir(tmp_path / "nowhere")


def test_resolve_relative_to_cwd(tmp_path, monkeypatch):
    monkeypatch.delenv(_common.ENV_VAR, raising=False)
    (tmp_path / "shared" / "data").mkdir(parents=True)
    (tmp_path / "project").mkdir()
    monkeypatch.chdir(tmp_path / "project")
    assert resolve_data_dir() == (tmp_path / "shared" / "data").resolve()


def test_resolve_not_found_is_one_line(tmp_path, monkeypatch):
    monkeypatch.delenv(_common.ENV_VAR, raising=False)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(_common, "_repo_data_dir", lambda: None)
    with pytest.raises(HyperEditError) as info:
        resolve_data_dir()
    message = str(info.value)
    assert _common.ENV_VAR in message and "\n" not in message


# --------------------------------------------------------------------------- benchmark layouts


def test_mend_zsre_mapping():
    reqs = load_requests("zsre:train", data_dir=FIXTURES)
    assert len(reqs) == 3
    first, second = reqs[0], reqs[1]
    assert first.prompt == "Which company makes Kelvor Mills?"
    assert first.target == "Halden Textiles"  # answers[0], not alt, not pred
    assert first.subject == "Kelvor Mills"
    assert first.rephrasings == ("Kelvor Mills is made by which company?",)
    assert first.locality == (LocalityPrompt("nq question: who wrote the song about the river", "Mara Quill"),)
    assert first.old_target is None
    assert first.meta["pred"] == "Kelvor" and first.meta["alt"] == "Brandt Works"
    assert first.id == "0"
    assert second.target == "Argentina" and second.meta["answers"] == ["Argentina", "Argentine Republic"]


def test_reduced_mend_zsre_takes_alt_as_the_target():
    """zsre:train-10k has no ``answers``: there ``alt`` is the edit target (read in as zsre-mend)."""
    reqs = load_requests("zsre:train-10k", data_dir=FIXTURES)
    assert [r.target for r in reqs] == ["Halden Textiles", "Danish"]
    first = reqs[0]
    assert first.prompt == "Which company makes Kelvor Mills?" and first.subject == "Kelvor Mills"
    assert first.rephrasings == ("Kelvor Mills is made by which company?",)
    assert first.locality == (LocalityPrompt("nq question: who wrote the song about the river", "Mara Quill"),)
    assert first.meta["format"] == "zsre-mend-reduced" and first.old_target is None
    # the same fact as the full MEND layout's first record (answers[0] there)
    assert first.target == load_requests("zsre:train", data_dir=FIXTURES)[0].target


def test_reduced_mend_zsre_record_without_alt_is_named(tmp_path):
    records = json.loads((FIXTURES / "zsre" / "train-10k.json").read_text())
    del records[1]["alt"]
    path = tmp_path / "reduced.json"
    path.write_text(json.dumps(records))
    with pytest.raises(InputError) as info:
        load_requests(str(path))
    assert info.value.record == 2 and info.value.field == "alt"


def test_knowedit_mapping_and_subject_drop(caplog):
    with caplog.at_level(logging.WARNING):
        reqs = load_requests("zsre:knowedit-test", data_dir=FIXTURES)
    first, same, dropped = reqs
    assert first.target == "Lamiaceae" and first.old_target == "Asteraceae"
    assert first.subject == "Brimwort"
    assert first.rephrasings == ("What family is Brimwort part of?",)
    assert first.locality == (
        LocalityPrompt("The taxon rank of Brimwort is", "species"),
        LocalityPrompt("Brimwort taxon rank", "species"),
    )
    assert first.meta["portability"] == [{"kind": "Reasoning", "prompt": first.meta["portability"][0]["prompt"],
                                          "answers": ["mint family"]}]
    assert same.target == "Oslo" and same.old_target is None  # ground_truth[0] == target_new
    assert dropped.subject is None and dropped.prompt == "Who is Quentin Lyle's mother?"
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "1 of 3" in warnings[0].getMessage() and "knowedit-test.json" in warnings[0].getMessage()


def test_counterfact_easyedit_mapping():
    reqs = load_requests("counterfact:train", data_dir=FIXTURES)
    assert [r.id for r in reqs] == ["7", "12", "19"]
    r = reqs[0]
    assert (r.prompt, r.target, r.subject, r.old_target) == ("Ravel Ostin plays the", "violin", "Ravel Ostin", "drums")
    assert r.rephrasings == ("On stage, Ravel Ostin is known for playing the",)
    assert r.locality == (LocalityPrompt("Tomas Brek plays the", "drums"),)
    assert [r.id for r in load_requests("counterfact:val", data_dir=FIXTURES)] == ["107", "112"]


def test_rome_layout():
    reqs = load_requests(str(FIXTURES / "rome.json"))
    r = reqs[0]
    assert r.prompt == "The mother tongue of Lena Morvik is"
    assert r.subject == "Lena Morvik"
    assert (r.target, r.old_target, r.id) == ("Danish", "Spanish", "0")
    assert r.rephrasings == ("Lena Morvik grew up speaking", "The first language of Lena Morvik is")
    assert r.locality == (
        LocalityPrompt("The mother tongue of Pablo Ruiz is", "Spanish"),
        LocalityPrompt("Carla Soto, a native speaker of", "Spanish"),
    )
    assert reqs[1].prompt == "QuickBrush, that was created by" and reqs[1].meta["relation_id"] == "P178"


def test_fever_flipping():
    reqs = load_requests("fever:v0.1-full", data_dir=FIXTURES)
    assert [(r.id, r.target, r.old_target) for r in reqs] == [
        ("1001", "false", "true"),  # SUPPORTS -> edit to false
        ("1002", "true", "false"),  # REFUTES -> edit to true
        ("1003", "false", "true"),
    ]
    assert reqs[0].prompt == "The Velmar River flows into the sea . Is this claim true or false? Answer:"
    # locality: the next claim's prompt, cyclically, without an answer
    assert reqs[0].locality == (LocalityPrompt(reqs[1].prompt),)
    assert reqs[2].locality == (LocalityPrompt(reqs[0].prompt),)
    assert reqs[0].subject is None
    dev = load_requests("fever:v0.2-dev", data_dir=FIXTURES)
    assert [(r.id, r.target) for r in dev] == [("2001", "false"), ("2002", "true")]


def test_fever_not_enough_info_left_out(tmp_path, caplog):
    path = tmp_path / "fever.jsonl"
    rows = [{"id": "1", "claim": "A is B .", "label": "SUPPORTS"},
            {"id": "2", "claim": "C is D .", "label": "NOT ENOUGH INFO"},
            {"id": "3", "claim": "E is F .", "label": "REFUTES"}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with caplog.at_level(logging.WARNING):
        reqs = load_requests(str(path))
    assert [r.id for r in reqs] == ["1", "3"]
    assert any("1 NOT ENOUGH INFO" in r.getMessage() for r in caplog.records)


def test_user_format():
    reqs = load_requests(str(FIXTURES / "user.jsonl"))
    first = reqs[0]
    assert first == EditRequest(
        prompt="The capital of Veltria is", target="Lorn", subject="Veltria",
        rephrasings=("Veltria's capital city is", "The seat of government of Veltria is"),
        locality=(LocalityPrompt("The capital of Spain is", "Madrid"), LocalityPrompt("Water boils at")),
        old_target="Darsk", id="veltria-capital",
    )
    assert (reqs[1].subject, reqs[1].rephrasings, reqs[1].locality, reqs[1].id) == (None, (), (), None)
    assert reqs[2].id == "17"


@pytest.mark.parametrize("spec", ["zsre:train", "zsre:train-10k", "zsre:knowedit-test", "counterfact:train",
                                  "fever:v0.2-test"])
def test_path_autodetect_matches_spec(spec):
    by_spec = load_requests(spec, data_dir=FIXTURES)
    by_path = load_requests(str(FIXTURES / DATASETS[spec]))
    assert by_path == by_spec and len(by_path) > 0


def test_limit_and_offset():
    all_reqs = load_requests("counterfact:train", data_dir=FIXTURES)
    assert load_requests("counterfact:train", data_dir=FIXTURES, limit=1, offset=1) == all_reqs[1:2]
    assert load_requests("counterfact:train", data_dir=FIXTURES, offset=2) == all_reqs[2:]
    assert load_requests("counterfact:train", data_dir=FIXTURES, limit=0) == []
    with pytest.raises(HyperEditError):
        load_requests("counterfact:train", data_dir=FIXTURES, offset=-1)


@pytest.mark.parametrize("spec, needle", [
    ("zsre:test", "unknown dataset"),
    ("nosuch:split", "unknown dataset"),
    ("missing_file.jsonl", "not found"),
])
def test_bad_spec_is_one_line_error(spec, needle, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(HyperEditError) as info:
        load_requests(spec, data_dir=FIXTURES)
    assert needle in str(info.value) and "\n" not in str(info.value)
    assert not isinstance(info.value, InputError)


def test_split_missing_from_data_dir(tmp_path):
    with pytest.raises(HyperEditError, match="missing"):
        load_requests("zsre:train", data_dir=tmp_path)


# --------------------------------------------------------------------------- malformed input

GOOD = {"prompt": "The capital of Veltria is", "target": "Lorn"}


def _jsonl(*rows) -> str:
    return "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows)


MALFORMED = [
    # (name, file name, content, record, field, words in the problem)
    ("invalid json", "u.jsonl", _jsonl(GOOD, '{"prompt": "x", "target": }'), 2, None, "invalid JSON"),
    ("missing target", "u.jsonl", _jsonl({"prompt": "The sky is"}), 1, "target", "missing"),
    ("target number", "u.jsonl", _jsonl({"prompt": "Pi is", "target": 3.14}), 1, "target", "got number"),
    ("target list", "u.jsonl", _jsonl({"prompt": "Pi is", "target": ["3"]}), 1, "target", "got list"),
    ("empty prompt", "u.jsonl", _jsonl({"prompt": "", "target": "x"}), 1, "prompt", "empty"),
    ("blank target", "u.jsonl", _jsonl({"prompt": "Pi is", "target": "   "}), 1, "target", "empty"),
    ("subject not in prompt", "u.jsonl", _jsonl(dict(GOOD, subject="Narnia")), 1, "subject", "does not occur"),
    ("typo field", "u.jsonl", _jsonl(GOOD, {"prompt": "A is", "targt": "B"}), 2, "targt", "did you mean 'target'"),
    ("rephrasings str", "u.jsonl", _jsonl(dict(GOOD, rephrasings="x")), 1, "rephrasings", "list"),
    ("rephrasing empty", "u.jsonl", _jsonl(dict(GOOD, rephrasings=["ok", ""])), 1, "rephrasings[1]", "empty"),
    ("locality no prompt", "u.jsonl", _jsonl(dict(GOOD, locality=[{"answer": "x"}])), 1, "locality[0].prompt", "missing"),
    ("locality typo", "u.jsonl", _jsonl(dict(GOOD, locality=[{"prompt": "a", "answr": "b"}])), 1,
     "locality[0].answr", "unknown field"),
    ("locality str", "u.jsonl", _jsonl(dict(GOOD, locality=["a"])), 1, "locality[0]", "expected an object"),
    ("same old target", "u.jsonl", _jsonl(dict(GOOD, old_target="Lorn")), 1, "old_target", "nothing to edit"),
    ("id list", "u.jsonl", _jsonl(dict(GOOD, id=[1])), 1, "id", "id"),
    ("not an object", "u.jsonl", _jsonl(GOOD, [1, 2]), 2, None, "JSON object"),
    ("bad record after good ones", "u.jsonl", _jsonl(GOOD, GOOD, {"prompt": "A is", "target": 5}), 3, "target", "number"),
    ("blank lines keep numbering", "u.jsonl", _jsonl(GOOD, "", {"prompt": "A is"}), 3, "target", "missing"),
    ("empty file", "u.jsonl", "", None, None, "empty"),
    ("whitespace file", "u.jsonl", "\n  \n", None, None, "empty"),
    ("empty array", "u.json", "[]", None, None, "empty"),
    ("broken array", "u.json", '[{"prompt": "a",\n "target": }]', None, None, "line 2"),
    ("unknown layout", "u.jsonl", _jsonl({"question": "q", "answer": "a"}), 1, None, "unrecognised"),
    ("mend answers empty", "z.json", json.dumps([{"src": "Q?", "answers": [], "rephrase": "R?"}]), 1, "answers", "empty"),
    ("mend answer number", "z.json", json.dumps([{"src": "Q?", "answers": [7]}]), 1, "answers[0]", "number"),
    ("cf target number", "c.json", json.dumps([{"case_id": 1, "prompt": "P", "target_new": 4, "ground_truth": "g"}]), 1,
     "target_new", "number"),
    ("cf same target", "c.json", json.dumps([{"case_id": 1, "prompt": "P", "target_new": "g", "ground_truth": "g"}]), 1,
     "ground_truth", "nothing to edit"),
    ("knowedit locality", "k.json", json.dumps([{"prompt": "P", "target_new": "t", "ground_truth": ["g"],
                                                "locality": {"Relation_Specificity": [{"ground_truth": ["x"]}]}}]), 1,
     "locality.Relation_Specificity[0].prompt", "missing"),
    ("rome placeholder", "r.json", json.dumps([{"case_id": 0, "requested_rewrite": {
        "prompt": "The language of X is", "subject": "X", "target_new": {"str": "a"}, "target_true": {"str": "b"}}}]), 1,
     "requested_rewrite.prompt", "placeholder"),
    ("fever label", "f.jsonl", _jsonl({"id": "1", "claim": "A .", "label": "SUPPORTS"},
                                      {"id": "2", "claim": "B .", "label": "MAYBE"}), 2, "label", "SUPPORTS or REFUTES"),
]


@pytest.mark.parametrize("name, filename, content, record, field, words", MALFORMED, ids=[m[0] for m in MALFORMED])
def test_malformed_input_raises_input_error(tmp_path, name, filename, content, record, field, words):
    path = tmp_path / filename
    path.write_text(content, encoding="utf-8")
    with pytest.raises(InputError) as info:
        load_requests(str(path))
    err = info.value
    message = str(err)
    assert (err.record, err.field) == (record, field)
    assert words in err.problem
    assert "\n" not in message and message.startswith(str(path))
    if record is not None:
        assert f"record {record}" in message
    if field is not None:
        assert f"field '{field}'" in message


def test_not_utf8(tmp_path):
    path = tmp_path / "latin1.jsonl"
    path.write_bytes('{"prompt": "Caf\u00e9 is", "target": "x"}\n'.encode("latin-1"))
    with pytest.raises(InputError, match="UTF-8"):
        load_requests(str(path))


# --------------------------------------------------------------------------- general tasks


def test_general_tasks_rows():
    tasks = load_general_tasks(data_dir=FIXTURES, per_task=50)
    assert list(tasks) == list(GENERAL_TASKS)
    for name, rows in tasks.items():
        assert rows, name
        for row in rows:
            assert set(row) == {"prompt", "choices", "label"}
            assert isinstance(row["prompt"], str) and row["prompt"].endswith(":")
            assert 0 <= row["label"] < len(row["choices"]) and isinstance(row["label"], int)
    label = {name: [row["label"] for row in rows] for name, rows in tasks.items()}
    assert label["sst2"] == [1, 0, 1, 0] and tasks["sst2"][0]["choices"] == [" negative", " positive"]
    assert tasks["sst2"][0]["prompt"] == "Review: a warm , funny and clever film\nSentiment:"
    assert label["sentiment"] == [1, 0, 0]  # string labels "1"/"0"
    assert label["rte"] == [1, 0, 1]  # GLUE RTE: 0 = entailment -> " yes" (index 1)
    assert label["nli"] == [1, 0, 1]  # "entailment" / "not_entailment"
    assert label["mrpc"] == [1, 0, 1] and label["cola"] == [1, 0, 1]
    assert label["mmlu"] == [1, 2, 3] and tasks["mmlu"][0]["choices"] == [" A", " B", " C", " D"]
    assert "\nB. 5\n" in tasks["mmlu"][0]["prompt"] and "elementary mathematics" in tasks["mmlu"][0]["prompt"]
    assert label["dialogue"] == [2, 0]
    assert tasks["dialogue"][0]["choices"][label["dialogue"][0]] == " C"


def test_general_sampling_is_seeded(tmp_path):
    (tmp_path / "general").mkdir()
    rows = [{"sentence": f"review number {i}", "label": i % 2} for i in range(40)]
    (tmp_path / "general" / "sst2.jsonl").write_text(_jsonl(*rows))
    a = load_general_tasks(data_dir=tmp_path, tasks=["sst2"], per_task=10, seed=0)["sst2"]
    b = load_general_tasks(data_dir=tmp_path, tasks=["sst2"], per_task=10, seed=0)["sst2"]
    c = load_general_tasks(data_dir=tmp_path, tasks=["sst2"], per_task=10, seed=1)["sst2"]
    assert a == b and len(a) == 10 and a != c
    assert len(set(r["prompt"] for r in a)) == 10
    everything = load_general_tasks(data_dir=tmp_path, tasks="sst2", per_task=None)["sst2"]
    assert len(everything) == 40


def test_general_errors(tmp_path):
    with pytest.raises(HyperEditError, match="unknown general task"):
        load_general_tasks(data_dir=FIXTURES, tasks=["squad"])
    (tmp_path / "general").mkdir()
    (tmp_path / "general" / "nli.jsonl").write_text(_jsonl(
        {"sentence1": "a", "sentence2": "b", "label": "entailment"},
        {"sentence1": "a", "sentence2": "b", "label": "neutral"}))
    with pytest.raises(InputError) as info:
        load_general_tasks(data_dir=tmp_path, tasks=["nli"])
    assert (info.value.record, info.value.field) == (2, "label")


# --------------------------------------------------------------------------- text corpus


def test_benchmark_corpus():
    texts = load_text_corpus("benchmark", data_dir=FIXTURES)
    assert texts[0] == "The Velmar River ( Velmar Rio ) flows into the Aster Sea ."  # brackets unescaped
    assert len(texts) == len(set(texts))
    assert texts.count("Cobalt Hill is a 2004 novel by Ivo Marsh .") == 1  # in v0.1 and v0.2 test
    assert "Sat the on cat mat the." in texts and "The shop sells cars." in texts
    assert not any("-LRB-" in t for t in texts)
    assert load_text_corpus("benchmark", data_dir=FIXTURES, limit=2) == texts[:2]


def test_user_corpus_files(tmp_path):
    assert load_text_corpus(FIXTURES / "corpus.txt") == [
        "The first sentence of the corpus.", "A second line with text.", "The first sentence of the corpus."]
    assert load_text_corpus(str(FIXTURES / "corpus.jsonl")) == ["One text record.", "Another one."]
    bad = tmp_path / "c.jsonl"
    bad.write_text(_jsonl({"text": "fine"}, {"txt": "oops"}))
    with pytest.raises(InputError) as info:
        load_text_corpus(bad)
    assert (info.value.record, info.value.field) == (2, "text")
    other = tmp_path / "c.csv"
    other.write_text("a,b\n")
    with pytest.raises(HyperEditError, match=".txt or .jsonl"):
        load_text_corpus(other)


# --------------------------------------------------------------------------- real shared data


def _shared_data() -> Path:
    try:
        base = resolve_data_dir()
    except HyperEditError:
        pytest.skip("shared benchmark data directory not found")
    if not (base / DATASETS["zsre:train"]).is_file():
        pytest.skip("shared benchmark data directory not found")
    return base


REAL_COUNTS = {
    "zsre:train": (1000, 0), "zsre:train-10k": (10000, 0), "zsre:knowedit-test": (1304, 3),
    "counterfact:train": (10000, 0), "counterfact:val": (1919, 0), "fever:v0.1-full": (956, 0),
    "fever:v0.2-dev": (708, 0), "fever:v0.2-test": (712, 0),
}


@pytest.mark.parametrize("spec", list(REAL_COUNTS))
def test_real_splits(spec, caplog):
    base = _shared_data()
    count, drops = REAL_COUNTS[spec]
    with caplog.at_level(logging.WARNING):
        reqs = load_requests(spec, data_dir=base)
    assert len(reqs) == count
    assert all(isinstance(r, EditRequest) for r in reqs)
    assert len({r.id for r in reqs}) == count
    assert sum(r.subject is None for r in reqs) == (count if spec.startswith("fever") else drops)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == (1 if drops else 0)
    if drops:
        assert f"{drops} of {count}" in warnings[0]
    if spec.startswith("fever"):
        assert {r.target for r in reqs} == {"true", "false"}
        assert sum(r.target == "true" for r in reqs) == count // 2  # the symmetric sets are balanced
    else:
        assert all(r.rephrasings and r.locality for r in reqs)


def test_real_general_tasks():
    base = _shared_data()
    counts = {"sst2": 856, "mrpc": 258, "cola": 644, "rte": 262, "nli": 2489, "mmlu": 1516,
              "dialogue": 886, "sentiment": 872}
    full = load_general_tasks(data_dir=base, per_task=None)
    assert {name: len(rows) for name, rows in full.items()} == counts
    for name, rows in full.items():
        assert all(0 <= r["label"] < len(r["choices"]) for r in rows), name
        labels = {r["label"] for r in rows}
        assert labels == set(range(len(rows[0]["choices"]))), name  # every answer occurs
    sample = load_general_tasks(data_dir=base)
    assert all(len(rows) == 50 for rows in sample.values())


def test_real_corpus():
    base = _shared_data()
    texts = load_text_corpus("benchmark", data_dir=base)
    assert len(texts) > 5000 and len(texts) == len(set(texts))
    assert all(t.strip() for t in texts)


def test_corpus_folder_and_packaged_corpus(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "b.txt").write_text("second file\n")
    (tmp_path / "a.jsonl").write_text(_jsonl({"text": "first file"}))
    (tmp_path / "sub" / "c.txt").write_text("in a sub-folder\n")
    (tmp_path / "notes.md").write_text("ignored\n")
    assert load_text_corpus(tmp_path) == ["first file", "second file", "in a sub-folder"]
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(HyperEditError, match="no .txt or .jsonl"):
        load_text_corpus(empty)
    packaged = load_text_corpus()
    assert len(packaged) > 500 and packaged == load_text_corpus("packaged")
