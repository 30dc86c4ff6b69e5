"""What a MALMEN edit costs: time against one LM forward+backward, memory against the number of facts,
and what the cheap LM passes of ``hyperedit.lm`` save.

Each N runs in a fresh process (so peak-memory figures are not hidden by memory an earlier, larger
run left to the allocator). In that process, after a small warm-up:
1. the MALMEN edit of the first N requests (wall time, CPU time, peak RSS and its increase);
2. one forward+backward of the LM over the same N edit examples, as the edit's own LM pass does it
   (batches of ``lm_batch_size``, target cross-entropy, gradient w.r.t. the edited weights only);
3. with ``--ablation`` (N = 64 only by default): the same pass without each optimisation:
   full-vocabulary logits, every parameter requiring grad, one example at a time.

    python benchmarks/malmen_cost.py --malmen runs/malmen-smollm2

Writes benchmarks/results/<out>.json and .md.
"""
from __future__ import annotations

import argparse
import json
import logging
import subprocess
import sys
import time
from pathlib import Path

RESULTS_DIR = Path(__file__).resolve().parents[1] / "benchmarks" / "results"

RESULTS = Path("benchmarks") / "results"
log = logging.getLogger("malmen_cost")


def _rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return float(line.split()[1]) / 1024.0
    return float("nan")


def _timed(fn, *args):
    from hyperedit.bench import peak_rss_during

    before, cpu = _rss_mb(), time.process_time()
    result, wall, peak = peak_rss_during(fn, *args)
    return result, {"wall_s": round(wall, 3), "cpu_s": round(time.process_time() - cpu, 3),
                    "peak_rss_mb": round(peak, 1), "peak_rss_increase_mb": round(peak - before, 1)}


def forward_backward(adapter, requests, names, batch_size: int, *, fast_logits=True, edited_only=True) -> None:
    """One forward+backward over (prompt, target) pairs, optionally without the cheap-pass optimisations."""
    import torch

    from hyperedit.lm import iter_chunks, target_logits, trainable_weights

    model = adapter.model
    params = names if edited_only else []
    flags = [p.requires_grad for p in model.parameters()]
    if not edited_only:
        model.requires_grad_(True)
    try:
        with trainable_weights(adapter, params):
            for chunk in iter_chunks(list(requests), batch_size):
                batch = adapter.encode([r.prompt for r in chunk], [r.target for r in chunk])
                if fast_logits:
                    out = target_logits(adapter, batch)
                    loss = out.per_example_mean(out.token_nll()).sum()
                else:  # the plain way: logits at every position, loss from the model
                    loss = model(**batch, use_cache=False).loss * len(chunk)
                loss.backward()
    finally:
        for p, flag in zip(model.parameters(), flags):
            p.requires_grad_(flag)
            p.grad = None
    torch.set_grad_enabled(True)


def measure(args) -> dict:
    """The measurements of one N (run in its own process)."""
    import torch

    from hyperedit.data import load_requests
    from hyperedit.editors import get_editor
    from hyperedit.models import load_model

    torch.set_num_threads(args.threads)
    lm = load_model(args.model)
    editor = get_editor("malmen", checkpoint=args.malmen, lm=lm)
    requests = load_requests(args.dataset, limit=args.n)
    names, bs = editor.module_names, editor.config.lm_batch_size
    editor.edit(lm, requests[:4])  # warm-up
    forward_backward(lm.adapter, requests[:4], names, bs)
    out = {"n": args.n, "rss_model_loaded_mb": round(_rss_mb(), 1)}
    _, out["edit"] = _timed(editor.edit, lm, requests)
    _, out["forward_backward"] = _timed(forward_backward, lm.adapter, requests, names, bs)
    if args.ablation:
        variants = {"full_logits": dict(fast_logits=False), "all_params_grad": dict(edited_only=False),
                    "one_at_a_time": dict(), "none_of_them": dict(fast_logits=False, edited_only=False)}
        for key, options in variants.items():
            size = 1 if key in ("one_at_a_time", "none_of_them") else bs
            _, out[key] = _timed(lambda: forward_backward(lm.adapter, requests, names, size, **options))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--malmen", required=True, help="MALMEN checkpoint or training run directory")
    parser.add_argument("--dataset", default="counterfact:val")
    parser.add_argument("--sizes", default="64,1024")
    parser.add_argument("--ablation-sizes", default="64")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default="malmen_cost")
    parser.add_argument("--n", type=int, help=argparse.SUPPRESS)  # child process: measure this N
    parser.add_argument("--ablation", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--rewrite", action="store_true", help="only rewrite the markdown from the JSON")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    if args.rewrite:
        from hyperedit.bench import write_results

        records = json.loads((RESULTS / f"{args.out}.json").read_text())
        write_results(records, args.out, RESULTS_DIR, title="MALMEN edit cost", notes=_notes(records))
        return
    if args.n is not None:
        print(json.dumps(measure(args)))
        return
    from hyperedit.commands._common import dataset_label
    from hyperedit.bench import current_command, make_record, write_results

    command = current_command()
    records = []
    ablate = {int(s) for s in args.ablation_sizes.split(",") if s}
    for n in (int(s) for s in args.sizes.split(",")):
        child = [sys.executable, __file__, "--model", args.model, "--malmen", args.malmen, "--dataset", args.dataset,
                 "--threads", str(args.threads), "--n", str(n)] + (["--ablation"] if n in ablate else [])
        done = subprocess.run(child, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise SystemExit(f"measurement of N={n} failed:\n{done.stderr[-3000:]}")
        m = json.loads(done.stdout.strip().splitlines()[-1])
        edit, fb = m["edit"], m["forward_backward"]
        dataset, split = dataset_label(args.dataset)
        records.append(make_record(
            editor="malmen", model=args.model, dataset=dataset, split=split, mode="batch", n_edits=n, metrics={},
            edit_time_s=edit["wall_s"], peak_rss_mb=edit["peak_rss_mb"], command=command, seed=0,
            edit_cpu_s=edit["cpu_s"], peak_rss_increase_mb=edit["peak_rss_increase_mb"],
            forward_backward=fb, time_ratio_wall=round(edit["wall_s"] / fb["wall_s"], 3),
            time_ratio_cpu=round(edit["cpu_s"] / fb["cpu_s"], 3), threads=args.threads, checkpoint=args.malmen,
            rss_model_loaded_mb=m["rss_model_loaded_mb"],
            ablation={k: m[k] for k in ("full_logits", "all_params_grad", "one_at_a_time", "none_of_them") if k in m}))
        log.info("N=%d: edit %.1fs (cpu %.1fs), forward+backward %.1fs (cpu %.1fs)", n, edit["wall_s"], edit["cpu_s"],
                 fb["wall_s"], fb["cpu_s"])
    write_results(records, args.out, RESULTS_DIR, title="MALMEN edit cost", notes=_notes(records))


def _notes(records: list[dict]) -> str:
    lines = ["| N | edit wall s | edit CPU s | fwd+bwd wall s | fwd+bwd CPU s | ratio (wall) | ratio (CPU) | "
             "peak RSS MB | peak RSS increase MB |", "|---|---|---|---|---|---|---|---|---|"]
    for r in records:
        fb = r["forward_backward"]
        lines.append(f"| {r['n_edits']} | {r['edit_time_s']:.2f} | {r['edit_cpu_s']:.2f} | {fb['wall_s']:.2f} | "
                     f"{fb['cpu_s']:.2f} | {r['time_ratio_wall']:.3f} | {r['time_ratio_cpu']:.3f} | "
                     f"{r['peak_rss_mb']:.0f} | {r['peak_rss_increase_mb']:.0f} |")
    by_n = {r["n_edits"]: r for r in records}
    if 64 in by_n and 1024 in by_n:
        a, b = by_n[64], by_n[1024]
        lines += ["", f"Peak memory, 1024 facts over 64 facts: {b['peak_rss_mb'] / a['peak_rss_mb']:.3f} (process peak), "
                      f"{b['peak_rss_increase_mb'] / max(a['peak_rss_increase_mb'], 1e-9):.3f} (increase during the edit)."]
    for r in records:
        if r.get("ablation"):
            fb = r["forward_backward"]
            lines += ["", f"Forward+backward over {r['n_edits']} edit examples (CPU s, wall s, peak RSS increase MB):",
                      "", "| variant | CPU s | wall s | peak RSS increase MB |", "|---|---|---|---|",
                      f"| hyperedit.lm: batched, target-position logits, edited weights only | {fb['cpu_s']:.2f} | "
                      f"{fb['wall_s']:.2f} | {max(fb['peak_rss_increase_mb'], 0):.0f} |"]
            labels = {"full_logits": "logits at every position (plain model loss)",
                      "all_params_grad": "every parameter requires grad (backward to the embeddings)",
                      "one_at_a_time": "one example per pass", "none_of_them": "none of the three"}
            for key, label in labels.items():
                v = r["ablation"].get(key)
                if v:
                    lines.append(f"| {label} | {v['cpu_s']:.2f} | {v['wall_s']:.2f} | "
                                 f"{max(v['peak_rss_increase_mb'], 0):.0f} |")
    return ("The edit and the forward+backward run in the same process, one after the other; each N in a "
            "fresh process. ES/GS/LS are not measured here (see malmen_scaling).\n\n" + "\n".join(lines))


if __name__ == "__main__":
    main()
