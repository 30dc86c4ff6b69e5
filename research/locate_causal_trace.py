"""Quick causal trace: which MLP layers carry factual recall at the last subject token?

ROME-style: corrupt the subject's token embeddings with Gaussian noise, then restore the clean
MLP outputs at the last subject token in a window of layers and measure how much of the clean
probability of the true answer comes back. Forward passes only; used to pick MEMIT/AlphaEdit's
edited layers for a model.

    PYTHONPATH=src python research/locate_causal_trace.py --n 40 --window 3
"""
from __future__ import annotations

import argparse
import json
import shlex
import sys
import time

import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--data", default="counterfact:train")
    ap.add_argument("--n", type=int, default=40, help="facts the model already knows to trace")
    ap.add_argument("--window", type=int, default=3, help="consecutive MLP layers restored together")
    ap.add_argument("--noise", type=float, default=3.0, help="noise std in units of the embedding std")
    ap.add_argument("--samples", type=int, default=3, help="noise samples per fact")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default="benchmarks/results/locate_causal_trace.json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    from hyperedit.data import load_requests
    from hyperedit.editors.locate.base import encode_prompts_right, subject_position
    from hyperedit.hooks import edit_output
    from hyperedit.models import load_model

    lm = load_model(args.model)
    model, tok, adapter = lm
    start = time.time()
    facts = []
    for r in load_requests(args.data, limit=400):
        if r.subject is None or r.old_target is None:
            continue
        batch = encode_prompts_right(lm, [r.prompt])
        with torch.no_grad():
            probs = model(**batch).logits[0, -1].softmax(-1)
        first = adapter.encode([r.prompt], [r.old_target])["labels"][0]
        answer = int(first[first != -100][0])
        if int(probs.argmax()) == answer:
            facts.append((r, answer, float(probs[answer])))
        if len(facts) == args.n:
            break
    n_layers = adapter.num_layers
    emb = model.get_input_embeddings()
    sigma = args.noise * float(emb.weight.std())
    effects = torch.zeros(n_layers)
    corrupted_p, clean_p = [], []
    for r, answer, p_clean in facts:
        batch = encode_prompts_right(lm, [r.prompt] * (n_layers + 1) * args.samples)
        pos = subject_position(lm, r.prompt, r.subject)
        start_char = r.prompt.find(r.subject)
        first_pos = subject_position(lm, r.prompt[: start_char + 1], None) if start_char > 0 else 0
        clean = {}
        mlps = [adapter.module_name(l, "down") for l in range(n_layers)]
        with torch.no_grad():
            def keep(l):
                def fn(inputs, out):
                    clean[l] = out[0, pos].clone()
                    return out
                return fn
            ctxs = [edit_output(model, mlps[l], keep(l)) for l in range(n_layers)]
            for c in ctxs:
                c.__enter__()
            try:
                model(**encode_prompts_right(lm, [r.prompt]))
            finally:
                for c in ctxs:
                    c.__exit__(None, None, None)
            rows = batch["input_ids"].shape[0]
            noise = torch.randn(args.samples, pos - first_pos + 1, emb.weight.shape[1]) * sigma
            noise = noise.repeat_interleave(n_layers + 1, 0)

            def corrupt(inputs, out):
                out = out.clone()
                out[:, first_pos:pos + 1] += noise
                return out

            centre = torch.arange(rows) % (n_layers + 1)  # row -> centre of the restored window

            def restore(l):
                hit = ((centre - l).abs() <= args.window // 2) & (centre < n_layers)

                def fn(inputs, out):
                    out = out.clone()
                    out[hit, pos] = clean[l]
                    return out
                return fn

            emb_name = next(n for n, m in model.named_modules() if m is emb)
            ctxs = [edit_output(model, emb_name, corrupt)]
            ctxs += [edit_output(model, mlps[l], restore(l)) for l in range(n_layers)]
            for c in ctxs:
                c.__enter__()
            try:
                probs = model(**batch).logits[:, -1].softmax(-1)[:, answer]
            finally:
                for c in ctxs:
                    c.__exit__(None, None, None)
        probs = probs.view(args.samples, n_layers + 1).mean(0)
        effects += probs[:n_layers] - probs[n_layers]
        corrupted_p.append(float(probs[n_layers]))
        clean_p.append(p_clean)
    gap = sum(c - p for c, p in zip(clean_p, corrupted_p))
    effects /= max(gap, 1e-9)  # mean recovered probability over mean damage
    record = {"model": lm.name, "data": args.data, "n_facts": len(facts), "window": args.window,
              "noise_std": sigma, "samples": args.samples,
              "clean_p_mean": sum(clean_p) / max(len(clean_p), 1),
              "corrupted_p_mean": sum(corrupted_p) / max(len(corrupted_p), 1),
              "restored_fraction_by_layer": [round(float(e), 4) for e in effects],
              "time_s": round(time.time() - start, 1),
              "command": "PYTHONPATH=src python " + " ".join(shlex.quote(a) for a in sys.argv)}
    with open(args.out, "w") as f:
        json.dump(record, f, indent=2)
    for l, e in enumerate(effects):
        print(f"layer {l:2d} {'#' * int(min(max(e, 0), 1) * 60):60s} {float(e):.3f}")
    print(f"clean p {record['clean_p_mean']:.3f}  corrupted p {record['corrupted_p_mean']:.3f}  ({record['time_s']} s)")


if __name__ == "__main__":
    main()
