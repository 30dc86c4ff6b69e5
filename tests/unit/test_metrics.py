"""Metrics: n-gram entropy, agreement, PairScore, score_pairs, generate, evaluate (ES/GS/LS, CounterFact)."""
from __future__ import annotations

import math

import pytest
import torch

from hyperedit.delta import EditDelta
from hyperedit.eval import evaluate, generate, locality_reference, ngram_entropy, score_pairs
from hyperedit.eval.metrics import PairScore, agreement, mean
from hyperedit.requests import EditRequest, LocalityPrompt

PROMPTS = ["the capital of france is", "the eiffel tower is located in the city of", "john plays", "mary speaks",
           "the louvre museum is in", "paris is the capital of", "tom was born in"]
SPECIALS = {"<pad>", "<unk>", "<s>", "</s>"}


# ----- pure functions ---------------------------------------------------------------------------
def _h(counts):
    total = sum(counts)
    return -sum(c / total * math.log2(c / total) for c in counts)


def test_ngram_entropy_hand_computed():
    # "a b a b": bigrams ab, ba, ab -> counts (2, 1); trigrams aba, bab -> (1, 1).
    expected = (2 / 3 * _h([2, 1]) + 4 / 3 * _h([1, 1])) / 2
    assert ngram_entropy("a b a b") == pytest.approx(expected)
    # All n-grams distinct: log2 of their number.
    assert ngram_entropy("one two three four five") == pytest.approx((2 / 3 * 2 + 4 / 3 * math.log2(3)) / 2)
    # Repetition has zero entropy; too short a text has no n-grams.
    assert ngram_entropy("the the the the the") == 0.0
    assert ngram_entropy("") == 0.0
    assert ngram_entropy("word") == 0.0
    # Less repetition, more entropy.
    assert ngram_entropy("a b c d e f") > ngram_entropy("a b a b a b")


def test_agreement_and_mean():
    assert agreement([1, 2, 3], [1, 0, 3]) == pytest.approx(2 / 3)
    assert agreement([1, 2], [1, 2]) == 1.0
    assert agreement([4, 5], [5, 4]) == 0.0
    assert agreement([], []) == 0.0
    assert mean([1.0, None, float("nan"), 3.0]) == 2.0
    assert mean([None]) is None and mean([]) is None


def test_pair_score():
    s = PairScore(predicted=[1, 2, 3], target=[1, 5, 3], mean_nll=0.5)
    assert s.accuracy == pytest.approx(2 / 3)
    assert s.prob == pytest.approx(math.exp(-0.5))
    assert PairScore([7], [7], 0.0).accuracy == 1.0 and PairScore([7], [7], 0.0).prob == 1.0
    assert PairScore([], [], 1.0).accuracy == 0.0


# ----- helpers over the tiny models --------------------------------------------------------------
def _next_probs(lm, prompt: str) -> torch.Tensor:
    """Next-token distribution after ``prompt``, computed with a plain full forward."""
    ids = torch.tensor([lm.tokenizer(prompt)["input_ids"]])
    with torch.no_grad():
        if lm.adapter.is_seq2seq:
            start = torch.tensor([[lm.model.config.decoder_start_token_id]])
            logits = lm.model(input_ids=ids, decoder_input_ids=start).logits[0, -1]
        else:
            logits = lm.model(input_ids=ids).logits[0, -1]
    return torch.softmax(logits.float(), -1)


def _ranked_words(lm, prompt: str) -> list[str]:
    order = _next_probs(lm, prompt).argsort(descending=True).tolist()
    return [w for w in lm.tokenizer.convert_ids_to_tokens(order) if w not in SPECIALS]


def _greedy_word(lm, prompt):
    """The model's own next word (the argmax), or None when the argmax is a special token."""
    probs = _next_probs(lm, prompt)
    word = lm.tokenizer.convert_ids_to_tokens(int(probs.argmax()))
    return None if word in SPECIALS else word


def _prob(lm, prompt, word):
    return float(_next_probs(lm, prompt)[lm.tokenizer.convert_tokens_to_ids(word)])


def _pick(lm, n):
    prompts = [p for p in PROMPTS if _greedy_word(lm, p) is not None]
    assert len(prompts) >= n
    return prompts[:n]


# ----- score_pairs / generate --------------------------------------------------------------------
def test_score_pairs_matches_full_forward(tiny_any):
    prompt = PROMPTS[0]
    top, second = _ranked_words(tiny_any, prompt)[:2]
    scores = score_pairs(tiny_any.adapter, [prompt, prompt], [top, second], batch_size=1)
    tok = tiny_any.tokenizer
    assert scores[0].target == [tok.convert_tokens_to_ids(top)]
    argmax = int(_next_probs(tiny_any, prompt).argmax())
    assert scores[0].predicted == scores[1].predicted == [argmax]
    assert scores[0].accuracy == float(argmax == scores[0].target[0])
    assert scores[1].accuracy == 0.0
    assert scores[0].prob == pytest.approx(_prob(tiny_any, prompt, top), rel=1e-4)
    assert scores[1].prob == pytest.approx(_prob(tiny_any, prompt, second), rel=1e-4)
    # Batch size does not change results.
    again = score_pairs(tiny_any.adapter, [prompt, prompt], [top, second], batch_size=8)
    assert [s.predicted for s in again] == [s.predicted for s in scores]
    assert [s.mean_nll for s in again] == pytest.approx([s.mean_nll for s in scores], rel=1e-5)


def test_multi_token_pair_accuracy(tiny_llama):
    prompt = _pick(tiny_llama, 1)[0]
    top = _greedy_word(tiny_llama, prompt)
    wrong = _ranked_words(tiny_llama, prompt)[-1]
    (s,) = score_pairs(tiny_llama.adapter, [prompt], [f"{top} {wrong} {wrong}"])
    assert len(s.target) == 3 and s.predicted[0] == s.target[0]
    assert s.accuracy == pytest.approx(sum(p == t for p, t in zip(s.predicted, s.target)) / 3)


def test_generate_is_greedy(tiny_llama):
    prompt = PROMPTS[0]
    ids = tiny_llama.tokenizer(prompt)["input_ids"]
    for _ in range(3):
        with torch.no_grad():
            ids.append(int(tiny_llama.model(input_ids=torch.tensor([ids])).logits[0, -1].argmax()))
    expected = tiny_llama.tokenizer.decode(ids[-3:], skip_special_tokens=True)
    assert generate(tiny_llama.adapter, [prompt, PROMPTS[2]], max_new_tokens=3)[0] == expected


# ----- evaluate ----------------------------------------------------------------------------------
@pytest.mark.parametrize("fixture", ["tiny_llama", "tiny_gpt2"])
def test_es_gs_ls_on_unedited_model(request, fixture):
    """Targets equal to the model's own greedy answers give ES = 1; no edit gives LS = 1."""
    tiny_any = request.getfixturevalue(fixture)
    p0, p1, p2 = _pick(tiny_any, 3)
    w0, w1 = _greedy_word(tiny_any, p0), _greedy_word(tiny_any, p1)
    other = next(w for w in _ranked_words(tiny_any, p1) if w not in (w0, w1))  # nobody's greedy answer
    requests = [
        EditRequest(prompt=p0, target=w0, rephrasings=[p0, p1] if w1 != w0 else [p0],
                    locality=[LocalityPrompt(p2), LocalityPrompt(p1, answer=w1), LocalityPrompt(p0, answer=other)]),
        EditRequest(prompt=p1, target=other),
    ]
    reference = locality_reference(tiny_any.adapter, requests)
    metrics, rows = evaluate(tiny_any.adapter, requests, reference)
    assert rows[0]["ES"] == 1.0 and rows[1]["ES"] == 0.0
    assert metrics["ES"] == 0.5
    assert rows[0]["GS"] == (0.5 if w1 != w0 else 1.0)
    assert rows[1]["GS"] is None  # no rephrasings: not counted
    assert metrics["GS"] == rows[0]["GS"]
    assert rows[0]["LS"] == 1.0 and metrics["LS"] == 1.0
    # Against the dataset's answers: p1 -> its own greedy answer (right), p0 -> another word (wrong).
    assert rows[0]["LS_data"] == 0.5 and metrics["LS_data"] == 0.5
    assert [r["id"] for r in rows] == [None, None]
    assert "efficacy_score" not in metrics  # no old targets: no CounterFact scores


def test_ls_is_none_without_reference(tiny_llama):
    metrics, _ = evaluate(tiny_llama.adapter, [EditRequest(prompt=PROMPTS[0], target="rome")], None)
    assert metrics["LS"] is None


def test_evaluate_reads_the_edited_model(tiny_llama):
    """With large known shifts on every MLP, ES and LS are what a plain forward of that model says."""
    lm = tiny_llama
    adapter = lm.adapter
    p0, p1, p2 = _pick(lm, 3)
    w0 = _greedy_word(lm, p0)
    request = EditRequest(prompt=p0, target=w0, locality=[LocalityPrompt(p1), LocalityPrompt(p2)])
    reference = locality_reference(adapter, [request])
    continuations = [(p, t) for (_, p, t, _) in reference.pairs]
    names = adapter.module_names(range(adapter.num_layers))
    gen = torch.Generator().manual_seed(0)
    known = EditDelta({n: torch.randn(adapter.weight(n).shape, generator=gen) for n in names})
    with known.applied(lm.model):
        metrics, rows = evaluate(adapter, [request], reference)
        es_by_hand = float(_greedy_word(lm, p0) == w0)
        agreements = []
        for prompt, text in continuations:
            ids = lm.tokenizer(prompt)["input_ids"]
            cont = lm.tokenizer(text)["input_ids"]
            with torch.no_grad():
                logits = lm.model(input_ids=torch.tensor([ids + cont])).logits[0]
            predicted = logits[len(ids) - 1:len(ids) - 1 + len(cont)].argmax(-1).tolist()
            agreements.append(sum(a == b for a, b in zip(predicted, cont)) / len(cont))
    assert metrics["ES"] == es_by_hand
    assert metrics["LS"] == pytest.approx(sum(agreements) / len(agreements))
    assert metrics["LS"] < 1.0  # such large shifts do change the tiny model's answers
    # The reference is the unedited model's: its own continuations agree with themselves.
    assert evaluate(adapter, [request], reference)[0]["LS"] == 1.0


def test_counterfact_scores_hand_built(tiny_gpt2):
    lm = tiny_gpt2
    prompt, para, neighbour = _pick(lm, 3)
    top, low = _greedy_word(lm, prompt), _ranked_words(lm, prompt)[5]
    # Case 1: the new target is the less likely one -> efficacy 0, negative magnitude.
    r = EditRequest(prompt=prompt, target=low, old_target=top, rephrasings=[para],
                    locality=[LocalityPrompt(neighbour, answer=top)])
    metrics, _ = evaluate(lm.adapter, [r], None)
    p_new, p_old = _prob(lm, prompt, low), _prob(lm, prompt, top)
    assert p_new < p_old
    assert metrics["efficacy_score"] == 0.0
    assert metrics["efficacy_magnitude"] == pytest.approx(p_new - p_old, rel=1e-4, abs=1e-7)
    para_diff = _prob(lm, para, low) - _prob(lm, para, top)
    assert metrics["paraphrase_score"] == float(para_diff > 0)
    assert metrics["paraphrase_magnitude"] == pytest.approx(para_diff, rel=1e-4, abs=1e-7)
    nb_diff = _prob(lm, neighbour, top) - _prob(lm, neighbour, low)  # P(old) - P(new)
    assert metrics["neighborhood_score"] == float(nb_diff > 0)
    assert metrics["neighborhood_magnitude"] == pytest.approx(nb_diff, rel=1e-4, abs=1e-7)

    # Case 2: swapped -> efficacy 1. Two requests: scores average per request.
    swapped = EditRequest(prompt=prompt, target=top, old_target=low)
    metrics2, _ = evaluate(lm.adapter, [swapped], None)
    assert metrics2["efficacy_score"] == 1.0
    assert metrics2["efficacy_magnitude"] == pytest.approx(p_old - p_new, rel=1e-4, abs=1e-7)
    assert "paraphrase_score" not in metrics2 and "neighborhood_score" not in metrics2
    both, _ = evaluate(lm.adapter, [r, swapped], None)
    assert both["efficacy_score"] == 0.5
    assert both["efficacy_magnitude"] == pytest.approx(0.0, abs=1e-6)
    assert both["paraphrase_score"] == metrics["paraphrase_score"]  # only the first request has one


def test_fluency_metric(tiny_llama):
    metrics, _ = evaluate(tiny_llama.adapter, [EditRequest(prompt=PROMPTS[0], target="rome")], None,
                          fluency_prompts=1)
    text = generate(tiny_llama.adapter, [PROMPTS[0]], max_new_tokens=30)[0]
    assert metrics["fluency"] == pytest.approx(ngram_entropy(text))


def test_pairs_shared_by_locality_and_neighbourhood_scores_are_scored_once(tiny_gpt2, monkeypatch):
    """CounterFact's neighbour prompt with the old object is both a locality pair and the
    neighbourhood score's old pair: scored once, both metrics still the hand-computed values."""
    import importlib

    evaluate_module = importlib.import_module("hyperedit.eval.evaluate")  # the package exports a function of that name
    lm = tiny_gpt2
    prompt, para, neighbour = _pick(lm, 3)
    top, low = _greedy_word(lm, prompt), _ranked_words(lm, prompt)[5]
    r = EditRequest(prompt=prompt, target=low, old_target=top, rephrasings=[para, para],
                    locality=[LocalityPrompt(neighbour, answer=top)])
    reference = locality_reference(lm.adapter, [r])
    scored = []
    real = evaluate_module.score_examples
    monkeypatch.setattr(evaluate_module, "score_examples",
                        lambda adapter, pairs, *a, **k: scored.append(list(pairs)) or real(adapter, pairs, *a, **k))
    metrics, _ = evaluate(lm.adapter, [r], reference)
    # es, es_old, gs and gs_old once each (the repeated rephrasing too), nb_new, nb_old = the locality pair
    assert len(scored) == 1 and len(scored[0]) == 6 == len(set(scored[0]))
    nb_diff = _prob(lm, neighbour, top) - _prob(lm, neighbour, low)
    assert metrics["neighborhood_magnitude"] == pytest.approx(nb_diff, rel=1e-4, abs=1e-7)
    assert metrics["LS"] == 1.0  # unedited model against its own reference
    assert metrics["LS_data"] == float(_greedy_word(lm, neighbour) == top)
