"""Generated-answer metrics: greedy continuations scored against the answer, beside teacher forcing."""
import torch

from hyperedit.eval import evaluate, locality_reference
from hyperedit.eval.generation import (Probe, follows, generate_for, greedy_tokens, match_scores, normalise)
from hyperedit.eval.metrics import score_pairs
from hyperedit.requests import EditRequest, LocalityPrompt


def _bigram(lm, table: dict[str, str]):
    """Turn the tiny Llama into a bigram model: every layer's output zeroed (the residual stream is
    the token's embedding), each listed token's embedding a distinct basis direction, and the head
    reading that direction as the listed next token. Unlisted tokens predict nothing in particular."""
    model, tok = lm.model, lm.adapter.tokenizer
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        embed, head = model.model.embed_tokens.weight, model.lm_head.weight
        head.zero_()
        for dim, (word, nxt) in enumerate(table.items()):
            a, b = tok.convert_tokens_to_ids(word), tok.convert_tokens_to_ids(nxt)
            embed[a] = 0.0
            embed[a, dim] = 1.0
            head[b, dim] = 10.0
    return lm


def test_normalise_drops_case_punctuation_and_spacing():
    assert normalise("  The  Eiffel-Tower, Paris! ") == "the eiffel tower paris"


def test_teacher_forcing_credits_a_target_the_model_never_says(tiny_llama):
    # after "is" the model says "rome"; after "paris" it says "france": teacher forcing feeds
    # "paris" and credits "france", greedy decoding never gets there.
    lm = _bigram(tiny_llama, {"is": "rome", "rome": "italy", "paris": "france", "italy": "the"})
    said = [EditRequest("the capital is", "paris france"), EditRequest("the city is", "rome italy"),
            EditRequest("the town is", "rome")]
    metrics, rows = evaluate(lm.adapter, said, None, generated=True)
    assert [r["ES"] for r in rows] == [0.5, 1.0, 1.0]
    assert [r["ES_gen"] for r in rows] == [0.0, 1.0, 1.0]
    assert [r["ES_gen_em"] for r in rows] == [0.0, 1.0, 1.0]  # "rome" is the first token of "rome italy"
    assert metrics["ES"] > metrics["ES_gen"]
    text = lm.adapter.tokenizer.decode(greedy_tokens(lm.adapter, ["the capital is"], [4])[0])
    assert normalise(text).startswith("rome italy the")


def test_prefix_match_needs_a_word_boundary(tiny_llama):
    lm = _bigram(tiny_llama, {"is": "rome", "rome": "italy"})
    adapter = lm.adapter
    tokens = greedy_tokens(adapter, ["x is"], [3])[0]
    assert match_scores(adapter, Probe("x is", ("rome",)), tokens) == (1.0, 1.0)
    assert match_scores(adapter, Probe("x is", ("rom",)), tokens) == (0.0, 0.0)  # "rome" is not "rom ..."
    assert match_scores(adapter, Probe("x is", ("paris", "Rome Italy!")), tokens)[1] == 1.0  # any alias


def test_first_token_shortcut_gives_what_full_generation_gives(tiny_llama):
    adapter = tiny_llama.adapter
    words = ["paris", "rome", "the city", "london bridge", "a", "john", "tokyo", "red"]
    probes = [Probe(f"the {w} of {v} is", (w, v)) for w in words for v in ("france", "piano")]
    scores = score_pairs(adapter, [p.prompt for p in probes], [p.answers[0] for p in probes])
    first = {(p.prompt, p.answers[0]): s.predicted[0] for p, s in zip(probes, scores)}
    # the shortcut's premise: the teacher-forced argmax at the prompt is greedy decoding's first token
    full = generate_for(adapter, probes)
    assert [t[0] for t in full] == [first[(p.prompt, p.answers[0])] for p in probes]
    short = generate_for(adapter, probes, first_tokens=first)
    assert [match_scores(adapter, p, t) for p, t in zip(probes, short)] == \
        [match_scores(adapter, p, t) for p, t in zip(probes, full)]


def test_locality_by_teacher_forcing_the_reference_generation(tiny_llama):
    adapter = tiny_llama.adapter
    prompts = ["the king of spain", "who was born in rome", "the band played"]
    tokens = greedy_tokens(adapter, prompts, [5, 4, 3])
    assert follows(adapter, prompts, tokens) == [True, True, True]
    changed = [tokens[0], tokens[1][:-1] + [(tokens[1][-1] + 1) % len(adapter.tokenizer)], tokens[2]]
    assert follows(adapter, prompts, changed) == [True, False, True]


def test_locality_gen_sees_a_changed_continuation(tiny_llama):
    lm = _bigram(tiny_llama, {"is": "rome", "rome": "italy", "spain": "madrid"})
    requests = [EditRequest("the capital is", "paris", locality=(LocalityPrompt("the king of spain"),))]
    reference = locality_reference(lm.adapter, requests, generated=True)
    assert evaluate(lm.adapter, requests, reference, generated=True)[0]["LS_gen"] == 1.0
    with torch.no_grad():  # after "spain" the model now says "france", not "madrid"
        lm.model.lm_head.weight[lm.adapter.tokenizer.convert_tokens_to_ids("france"), 2] = 20.0
    assert evaluate(lm.adapter, requests, reference, generated=True)[0]["LS_gen"] == 0.0
