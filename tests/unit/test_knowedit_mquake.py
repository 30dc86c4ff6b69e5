"""KnowEdit portability and WikiBio layouts; MQuAKE cases and their chain of rewrites."""
import json

import pytest

from hyperedit.data.load import load_mquake_cases, load_requests
from hyperedit.editors.ft import FineTuneEditor, FTConfig
from hyperedit.errors import InputError
from hyperedit.eval.multihop import run_mquake

CASE = {"case_id": 7, "requested_rewrite": [
    {"prompt": "{} is located in", "subject": "the eiffel tower", "target_new": {"str": "rome"},
     "target_true": {"str": "paris"}, "question": "where is the eiffel tower?"},
    {"prompt": "the capital of {} is", "subject": "rome", "target_new": {"str": "london"},
     "target_true": {"str": "rome"}}],
    "questions": ["the city of the eiffel tower is the capital of what?"],
    "answer": "paris", "answer_alias": [], "new_answer": "london", "new_answer_alias": ["london city"]}


def _write(tmp_path, records, name="data.json"):
    path = tmp_path / name
    path.write_text(json.dumps(records))
    return path


def test_knowedit_portability_takes_every_alias_and_skips_blank_ones(tmp_path):
    record = {"subject": "john", "prompt": "john was born in", "target_new": "rome", "ground_truth": "paris",
              "portability": {"Reasoning": [{"prompt": "john speaks", "ground_truth": [["italian", "it"], ["latin"]]},
                                            {"prompt": "john eats", "ground_truth": [[]]}],
                              "Subject_Aliasing": [{"prompt": "johnny was born in", "ground_truth": "rome"}]},
              "locality": {"Forgetfulness": [{"prompt": "john, not in rome, was born in", "ground_truth": [["paris"]]}]}}
    request, = load_requests(_write(tmp_path, [record]))
    assert request.meta["portability"] == [
        {"kind": "Reasoning", "prompt": "john speaks", "answers": ["italian", "it", "latin"]},
        {"kind": "Subject_Aliasing", "prompt": "johnny was born in", "answers": ["rome"]}]
    assert request.old_target == "paris" and request.locality[0].answer == "paris"


def test_knowedit_bad_portability_names_the_field(tmp_path):
    record = {"prompt": "john was born in", "target_new": "rome", "portability": {"Reasoning": [{"prompt": "x",
                                                                                               "ground_truth": 3}]}}
    with pytest.raises(InputError) as err:
        load_requests(_write(tmp_path, [record]))
    assert err.value.field == "portability.Reasoning[0].ground_truth" and err.value.record == 1


def test_wikibio_continues_the_passage(tmp_path):
    record = {"text": "john smith was a doctor.", "labels": "he was born in rome.", "concept": "john smith",
              "locality": {"Relation_Specificity": [{"prompt": "the job of john smith is", "ground_truth": ["doctor"]}]}}
    request, = load_requests(_write(tmp_path, [record]))
    assert (request.prompt, request.target, request.subject) == ("john smith was a doctor.", "he was born in rome.",
                                                                 "john smith")


def test_mquake_bad_rewrite_names_the_field(tmp_path):
    bad = json.loads(json.dumps(CASE))
    bad["requested_rewrite"][1]["prompt"] = "no placeholder"
    with pytest.raises(InputError) as err:
        load_mquake_cases(_write(tmp_path, [bad]))
    assert err.value.field == "requested_rewrite[1].prompt"


class _Recording(FineTuneEditor):
    """The ft editor, remembering what each edit was asked to write."""

    def __init__(self):
        super().__init__(FTConfig(steps=2))
        self.asked = []

    def edit(self, lm, requests):
        self.asked.append([(r.prompt, r.target) for r in requests])
        return super().edit(lm, requests)


def test_mquake_chain_is_written_together_in_order_and_scored(tmp_path, tiny_llama):
    second = dict(CASE, case_id=8)
    cases = load_mquake_cases(_write(tmp_path, [CASE, second]))
    assert [(r.prompt, r.target, r.old_target) for r in cases[0].chain] == [
        ("the eiffel tower is located in", "rome", "paris"), ("the capital of rome is", "london", "rome")]
    assert cases[0].answers == ("london", "london city")
    before = {k: v.clone() for k, v in tiny_llama.model.state_dict().items()}
    editor = _Recording()
    record = run_mquake(tiny_llama, editor, cases, cases_per_edit=2)
    chain = [("the eiffel tower is located in", "rome"), ("the capital of rome is", "london")]
    assert editor.asked == [chain + chain]  # k = 2: both cases' chains in one edit, each in its order
    assert record["n_cases"] == 2 and record["n_edits"] == 4
    for key in ("MH", "MH_em", "MH_tf", "MH_pre", "ES", "ES_gen"):
        assert 0.0 <= record["metrics"][key] <= 1.0
    assert all((v == before[k]).all() for k, v in tiny_llama.model.state_dict().items())  # reverted
