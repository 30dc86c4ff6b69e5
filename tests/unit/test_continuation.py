"""Scoring that continues the prompts from its own KV cache gives what separate passes give."""
import pytest

from hyperedit.eval.continuation import Want, score_and_continue, supports_continuation
from hyperedit.eval.generation import follows, greedy_tokens
from hyperedit.eval.metrics import score_pairs

PAIRS = [("the king of spain", "madrid"), ("who was born in rome", "a painter of note"), ("the band played", "on"),
         ("the capital of france is", "paris"), ("the red", "london bridge is falling"), ("tokyo", "japan"),
         ("a", "b c d e f g"), ("the city of john", "x")]


@pytest.mark.parametrize("batch_size", [3, 8])
def test_scores_and_greedy_tokens_equal_the_separate_passes(tiny_llama, batch_size):
    adapter = tiny_llama.adapter
    prompts, targets = [p for p, _ in PAIRS], [t for _, t in PAIRS]
    lengths = [2 + i % 5 for i in range(len(PAIRS))]
    assert supports_continuation(adapter)
    scores, greedy, _ = score_and_continue(adapter, PAIRS, {i: Want(n) for i, n in enumerate(lengths)}, batch_size)
    assert scores == score_pairs(adapter, prompts, targets, batch_size)
    assert [greedy[i] for i in range(len(PAIRS))] == greedy_tokens(adapter, prompts, lengths)


def test_following_a_reference_continuation_equals_the_separate_pass(tiny_llama):
    adapter = tiny_llama.adapter
    prompts = [p for p, _ in PAIRS]
    reference = greedy_tokens(adapter, prompts, [5] * len(PAIRS))
    vocab = len(adapter.tokenizer)
    changed = [r if i % 2 else r[:i % 4] + [(r[i % 4] + 1) % vocab] + r[i % 4 + 1:] for i, r in enumerate(reference)]
    # one pair whose target is the reference's own start, so the shared prefix is read from the scoring pass
    pairs = PAIRS[:-1] + [(PAIRS[-1][0], adapter.tokenizer.decode(reference[-1][:2]).strip())]
    for refs in (reference, changed):
        _, _, found = score_and_continue(adapter, pairs, {i: Want(follow=tuple(r)) for i, r in enumerate(refs)}, 3)
        assert [found[i] for i in range(len(pairs))] == follows(adapter, prompts, refs)
    assert not all(follows(adapter, prompts, changed))


def test_greedy_stops_once_ruled_out(tiny_llama):
    adapter = tiny_llama.adapter
    _, greedy, _ = score_and_continue(adapter, PAIRS[:2], {0: Want(4, rules_out=lambda t: True), 1: Want(4)})
    assert greedy[0] is None and len(greedy[1]) == 4


def test_evaluate_from_the_cache_equals_evaluate_by_separate_passes(tiny_llama, monkeypatch):
    from hyperedit.eval import continuation, evaluate, locality_reference
    from hyperedit.requests import EditRequest, LocalityPrompt

    adapter = tiny_llama.adapter
    requests = [EditRequest(p, t, rephrasings=(f"so, {p}", f"{p} indeed"), old_target="rome",
                            locality=(LocalityPrompt(f"near {p}", "rome"), LocalityPrompt(f"far from {t}")))
                for p, t in PAIRS]
    results = []
    for families in (continuation.CONTINUATION_FAMILIES, ()):
        monkeypatch.setattr(continuation, "CONTINUATION_FAMILIES", families)
        reference = locality_reference(adapter, requests, 3, generated=True)
        results.append((reference.generated, evaluate(adapter, requests, reference, 3, generated=True)))
    assert results[0] == results[1]
    assert {"ES_gen", "GS_gen_em", "LS_gen"} <= set(results[0][1][0])
