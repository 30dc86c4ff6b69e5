"""Teacher-forced scoring that also continues the prompts, reusing the scoring pass's KV cache.

Greedy decoding from a prompt is teacher forcing along its own path: while the model's argmax at
each target position equals the target token, the greedy continuation *is* the target so far. So
the scoring pass over prompt + target (right-padded, causal) already holds, in its KV cache, the
prompt and every target token greedy decoding agrees with; its argmax at the first disagreeing
position is the next greedy token. Only the tokens after that are decoded, one step at a time from
the cache, never encoding a prompt a second time. Likewise a reference continuation (``LS_gen``:
does the edited model still say what the unedited one said?) is checked with one short forward of
its tokens past the shared prefix.

The scores are those of ``metrics.score_examples`` (the same batches, the same forward: the cache
is a by-product); the continuations equal ``generation.greedy_tokens`` / ``generation.follows`` up
to float rounding of differently padded batches (``benchmarks/eval_cost.py --same-metrics-as`` compares
them). Llama-family models only (``supports_continuation``: explicit positions over a masked
cached past, as tested); the others take the separate passes.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass

import torch

from ..lm import TargetLogits, iter_chunks, prediction_mask
from ..models.limits import context_limit
from .generation import generation_lengths, locality_probes, ruled_out
from .metrics import PairScore, pair_scores

CONTINUATION_FAMILIES = ("llama",)  # the family it is tested on (SmolLM2); others take the separate passes


def supports_continuation(adapter) -> bool:
    return (not adapter.is_seq2seq and adapter.model_type in CONTINUATION_FAMILIES
            and adapter.spec.fast_logits)


@dataclass(frozen=True)
class Want:
    """What to do with a scored pair's prompt: greedy-continue it to ``length`` tokens (stopping
    early once ``rules_out(tokens)`` says no answer can match), and/or check that greedy decoding
    reproduces ``follow``."""

    length: int = 0
    rules_out: object = None  # callable(list[int]) -> bool, or None
    follow: tuple[int, ...] | None = None


GROUP_BATCHES = 4  # scoring batches whose continuations are decoded together (fewer, larger steps)


@torch.no_grad()
def score_and_continue(adapter, pairs: list[tuple[str, str]], wants: dict[int, Want], batch_size: int = 32):
    """``(scores, greedy, follows)``: a ``PairScore`` per pair (batches of ``batch_size`` in the given
    order, as ``score_examples``), and per index of ``wants`` its greedy tokens (None: ruled out)
    and whether greedy decoding follows its reference. The wanted rows of a few scoring batches
    are continued together, their caches padded to one width (the padding masked)."""
    model = adapter.model
    device = next(model.parameters()).device
    scores: list[PairScore] = []
    group = _Group(adapter, device)
    for start, chunk in zip(range(0, len(pairs), batch_size), iter_chunks(pairs, batch_size)):
        batch = adapter.encode([p for p, _ in chunk], [t for _, t in chunk], device=device)
        out = model.base_model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=True)
        labels = batch["labels"]
        mask = prediction_mask(labels, False)
        example = torch.arange(len(chunk), device=labels.device)[:, None].expand_as(mask)[mask]
        found = pair_scores(TargetLogits(adapter.head_logits(out.last_hidden_state[mask]),
                                         labels[:, 1:][mask[:, :-1]], example, len(chunk)))
        scores += found
        local = [j for j in range(len(chunk)) if start + j in wants]
        if local:
            group.add(batch, _output_cache(out), found, {start + j: wants[start + j] for j in local}, local)
        if group.size >= GROUP_BATCHES * batch_size:
            group.flush()
    group.flush()
    return scores, group.greedy, group.follows


class _Group:
    """Wanted rows of several scoring batches, with their caches, continued together on ``flush``."""

    def __init__(self, adapter, device):
        self.adapter, self.device = adapter, device
        self.greedy: dict[int, list[int] | None] = {}
        self.follows: dict[int, bool] = {}
        self._clear()

    def _clear(self):
        self.index, self.wants, self.rows, self.prompt_len, self.last_prompt, self.layers = [], [], [], [], [], []

    @property
    def size(self) -> int:
        return len(self.index)

    def add(self, batch, cache, found, wants: dict[int, Want], local: list[int]):
        labels, attention = batch["labels"], batch["attention_mask"]
        for j, (i, want) in zip(local, wants.items()):
            n = int(((labels[j] == -100) & (attention[j] == 1)).sum())
            self.index.append(i), self.wants.append(want), self.prompt_len.append(n)
            self.rows.append((found[j].predicted, found[j].target))
            self.last_prompt.append(int(batch["input_ids"][j, n - 1]))
        self.layers.append(_layers(_narrowed(cache, local, self.device)))

    def flush(self):
        if not self.index:
            return
        model, eos, limit = self.adapter.model, self.adapter.tokenizer.eos_token_id, context_limit(self.adapter)
        width = max(keys.shape[2] for layers in self.layers for keys, _ in layers)
        cache = _cache_of([(_padded([b[layer][0] for b in self.layers], width),
                            _padded([b[layer][1] for b in self.layers], width)) for layer in range(len(self.layers[0]))])
        todo = {j: w for j, w in enumerate(self.wants) if w.length > 0}
        if todo:
            room = {j: w.length if limit is None else min(w.length, limit - self.prompt_len[j]) for j, w in todo.items()}
            found = _greedy(model, cache, width, self.prompt_len, self.last_prompt, self.rows, todo, room, eos,
                            self.device)
            self.greedy.update({self.index[j]: tokens for j, tokens in found.items()})
        checks = {j: w.follow for j, w in enumerate(self.wants) if w.follow is not None}
        if checks:
            found = _follow(model, cache, width, self.prompt_len, self.last_prompt, self.rows, checks, self.device)
            self.follows.update({self.index[j]: ok for j, ok in found.items()})
        self._clear()


def _padded(tensors: list[torch.Tensor], width: int) -> torch.Tensor:
    """(rows, heads, positions, dim) tensors zero-padded to ``width`` positions, stacked by rows."""
    return torch.cat([torch.nn.functional.pad(t, (0, 0, 0, width - t.shape[2])) for t in tensors], dim=0)


def _known(predicted: list[int], target: list[int]) -> list[int]:
    """The greedy tokens the scoring pass already gives: the target up to the first position whose
    argmax differs, then that argmax (all of the target when none differs)."""
    for k, (p, t) in enumerate(zip(predicted, target)):
        if p != t:
            return target[:k] + [p]
    return list(target)


def _past_mask(width: int, valid: list[int], extra: int, device) -> torch.Tensor:
    """(batch, width + extra): row j sees its first ``valid[j]`` cached positions and every appended one."""
    cols = torch.arange(width, device=device)[None, :]
    past = (cols < torch.tensor(valid, device=device)[:, None]).long()
    return torch.cat([past, torch.ones(len(valid), extra, dtype=torch.long, device=device)], dim=1)


def _follow(model, cache, width, prompt_len, last_prompt, rows, checks: dict[int, tuple[int, ...]],
            device) -> dict[int, bool]:
    """Per row: does greedy decoding from its prompt produce ``checks[j]``? Positions up to the first
    difference from the scored target are read from the scoring pass; the rest come from one
    forward of the reference's tokens from there over the cache."""
    result, feed, position, first = {}, {}, {}, {}
    for j, ref in checks.items():
        predicted, target = rows[j]
        ref = list(ref)
        if not ref:
            result[j] = True
            continue
        if not target:  # nothing scored: read the first token from the prompt's last position
            feed[j], position[j], first[j] = [last_prompt[j]] + ref[:-1], prompt_len[j] - 1, 0
            continue
        shared = next((k for k, (a, b) in enumerate(zip(ref, target)) if a != b), min(len(ref), len(target)))
        s = min(shared, len(target) - 1)  # reference positions 0..s are read from the scoring pass
        if predicted[:s + 1] != ref[:s + 1]:
            result[j] = False
        elif s + 1 >= len(ref):
            result[j] = True
        else:
            feed[j], position[j], first[j] = ref[s:-1], prompt_len[j] + s, s + 1
    if feed:
        going = list(feed)
        hidden = _forward(model, _narrowed(cache, going, device), width, [position[j] for j in going], 0,
                          [feed[j] for j in going], device)
        for n, j in enumerate(going):
            wanted = torch.tensor(checks[j][first[j]:], device=device)
            result[j] = bool((model.get_output_embeddings()(hidden[n, :len(feed[j])]).argmax(-1) == wanted).all())
    return result


def _forward(model, cache, width: int, start: list[int], appended: int, feed: list[list[int]], device):
    """Last hidden states of ``feed[n]`` placed at position ``start[n]`` onward, for every row n of
    ``cache``: a row sees the first ``start[n]`` of the scoring pass's ``width`` cached positions
    and the ``appended`` ones decoded since."""
    n = len(feed)
    span = max(len(f) for f in feed)
    ids = torch.zeros(n, span, dtype=torch.long, device=device)
    mask = _past_mask(width, start, appended + span, device)
    for row, tokens in enumerate(feed):
        ids[row, :len(tokens)] = torch.tensor(tokens, dtype=torch.long)
        mask[row, width + appended + len(tokens):] = 0
    positions = torch.tensor(start, device=device)[:, None] + appended + torch.arange(span, device=device)[None, :]
    return model.base_model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True,
                            **{_cache_argument(model): cache}).last_hidden_state


def _cache_argument(model) -> str:
    """The base model's name for the KV cache argument (``cache`` since transformers 5.2x)."""
    return "cache" if "cache" in inspect.signature(model.base_model.forward).parameters else "past_key_values"


def _greedy(model, cache, width, prompt_len, last_prompt, rows, todo: dict[int, Want], room: dict[int, int], eos,
            device) -> dict[int, list[int] | None]:
    """Greedy tokens per row of ``todo``: the known ones, then one decoding step at a time over a
    copy of the cache narrowed to the rows still going (a row sees its prompt and the target
    tokens greedy decoding agreed with)."""
    known = {j: _known(*rows[j]) if rows[j][1] else [] for j in todo}
    done = {j: _finished(known[j], room[j], eos, todo[j]) for j in todo}
    going = [j for j in todo if not done[j]]
    if going:
        sub = _narrowed(cache, going, device)
        feed = [[known[j][-1]] if known[j] else [last_prompt[j]] for j in going]
        start = [prompt_len[j] + len(known[j]) - 1 for j in going]
        for appended in range(max(room[j] - len(known[j]) for j in going)):
            hidden = _forward(model, sub, width, start, appended, feed, device)
            nxt = model.get_output_embeddings()(hidden[:, 0]).argmax(-1).tolist()
            for n, j in enumerate(going):
                feed[n] = [nxt[n]]
                if not done[j]:
                    known[j].append(nxt[n])
                    done[j] = _finished(known[j], room[j], eos, todo[j])
            if all(done[j] for j in going):
                break
    out = {}
    for j, tokens in known.items():
        tokens = tokens[:max(room[j], 0)]
        if eos is not None and eos in tokens:
            tokens = tokens[:tokens.index(eos) + 1]
        out[j] = None if todo[j].rules_out is not None and todo[j].rules_out(tokens) else tokens
    return out


def _narrowed(cache, rows: list[int], device):
    """A new cache holding only ``rows`` of ``cache`` (which stays as it was)."""
    index = torch.tensor(rows, device=device)
    return _cache_of([(keys.index_select(0, index), values.index_select(0, index)) for keys, values in _layers(cache)])


def _cache_of(layers) -> "DynamicCache":
    """A cache holding these (keys, values) per layer."""
    from transformers import DynamicCache

    out = DynamicCache()
    for layer, (keys, values) in enumerate(layers):
        out.update(keys, values, layer)
    return out


def _layers(cache):
    if hasattr(cache, "layers"):
        return [(layer.keys, layer.values) for layer in cache.layers]
    return list(zip(cache.key_cache, cache.value_cache))


def _finished(tokens: list[int], room: int, eos, want: Want) -> bool:
    return (len(tokens) >= room or (eos is not None and eos in tokens)
            or (want.rules_out is not None and bool(tokens) and want.rules_out(tokens)))


def reference_with_generations(adapter, pairs, batch_size: int):
    """The locality reference's scores of its ``(request, prompt, text, from data)`` pairs and the
    unedited greedy tokens of each prompt (for ``LS_gen``), from one pass."""
    lengths = generation_lengths(adapter, locality_probes(pairs), default=3)
    scores, greedy, _ = score_and_continue(adapter, [(p, t) for _, p, t, _ in pairs],
                                           {i: Want(n) for i, n in enumerate(lengths)}, batch_size)
    return scores, [greedy[i] for i in range(len(pairs))]


def evaluation_wants(adapter, probes, reference) -> dict[tuple[str, str], Want]:
    """Per scored (prompt, target) pair what ``evaluate`` wants continued: each generation probe's
    greedy tokens (scored pair: prompt and first answer; stopped once every probe on it is ruled
    out) and each reference pair's unedited continuation to check."""
    by_pair: dict[tuple[str, str], list] = {}
    for probe, n in zip(probes, generation_lengths(adapter, probes, default=3)):
        by_pair.setdefault((probe.prompt, probe.answers[0]), []).append((probe, n))
    wants = {pair: Want(max(n for _, n in found),
                        lambda tokens, found=found: all(ruled_out(adapter, p, tokens) for p, _ in found))
             for pair, found in by_pair.items()}
    if reference is not None and reference.generated is not None:
        for (_, prompt, text, _), tokens in zip(reference.pairs, reference.generated):
            old = wants.get((prompt, text), Want())
            wants[(prompt, text)] = Want(old.length, old.rules_out, tuple(tokens))
    return wants


def probe_generations(adapter, probes, greedy: dict[tuple[str, str], list[int] | None]) -> list[list[int] | None]:
    """Each probe's tokens out of its scored pair's continuation, cut to the probe's own length."""
    lengths = generation_lengths(adapter, probes, default=3)
    out = []
    for probe, n in zip(probes, lengths):
        tokens = greedy[(probe.prompt, probe.answers[0])]
        out.append(None if tokens is None or ruled_out(adapter, probe, tokens[:n]) else tokens[:n])
    return out


def _output_cache(out):
    """The KV cache of a forward's output (``cache`` since transformers 5.2x, ``past_key_values`` before)."""
    return out["cache"] if "cache" in out else out.past_key_values
