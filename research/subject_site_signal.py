"""Can one value gradient at MEMIT's key site stand in for MEMIT's optimised target?

A hypernetwork editor writing at the last subject token of layers 4-8 (``--set token=subject``)
sees one gradient there and must turn it into the value that writes the fact. MEMIT instead
optimises that value per fact: a residual ``r = z - h`` at the output of block L (the last edited
layer) found by 15 Adam steps. This measures, without training anything, how much of ``r`` one
gradient carries, on facts of an evaluation split:

- ``cos``: per fact the cosine between ``r`` and ``-g`` for two gradients of the edit loss (the mean
  target cross-entropy of the bare prompt, as MALMEN's) at block L's output: ``subject``, at the last
  subject token (what a MALMEN at the subject site reads in module L), and ``answer``, summed over the
  positions that predict the target (the signal next to the loss);
- ``cos_linear``: the same for the best linear map ``r ~ W (-g)`` (a (d, d) ridge regression, the
  most a hypernetwork linear in the gradient can learn; keys ignored), fitted on facts of a training
  split and applied to the evaluation facts;
- edit quality when MEMIT's own multi-layer covariance solve (layers 4-8, its defaults) writes, at
  once, for the evaluation facts: ``r`` itself (MEMIT), ``||r|| unit(-g)`` (the gradient's direction
  with the optimised length: an upper bound for any hypernetwork that only rescales the gradient),
  and ``W (-g)`` (the linear prediction, no oracle); and MEMIT's target stopped after 1 and 3 of its
  optimisation steps (how many gradient evaluations a target needs).

    python research/subject_site_signal.py --fit counterfact:train --fit-size 384 --eval counterfact:val \\
        --eval-size 256 --out subject_site_signal_cf

Writes benchmarks/results/<out>.json/.md (one record per written residual; the cosines in the
MEMIT record). MEMIT's targets are kept in ``--target-cache`` so a rerun does not recompute them.
"""
from __future__ import annotations

import argparse
import dataclasses
import logging
from pathlib import Path

RESULTS = Path(__file__).resolve().parents[1] / "benchmarks" / "results"

log = logging.getLogger("subject_site_signal")

NOTES = """MEMIT's multi-layer covariance solve (layers 4-8, lam 1500, C0 on the default corpus) writing, for
all `n_edits` evaluation facts at once, different residuals at the output of block 8 at the last
subject token: `optimised` is MEMIT itself (r = z - h, up to 15 Adam steps per fact; `optimised, k
steps`: the same stopped after k steps); `oracle-norm
(<site>)` writes ||r|| unit(-g), the direction of one gradient of the edit loss at that site with
MEMIT's length; `linear (<site>)` writes W (-g), W the ridge regression r ~ W (-g) fitted on
`fit_size` facts of `fit` (no oracle). Sites: `subject` = the gradient at the last subject token,
`answer` = the sum of the gradients at the positions predicting the target (both at block 8's
output). cos_to_optimised / norm_to_optimised: mean over the evaluation facts of the written
residual's cosine with r / its norm over ||r|| (for `oracle-norm` the cosine is the raw gradient's);
`details` in the JSON: quartiles of those cosines, the ridge the linear fits picked (relative to the
mean squared gradient norm) and their cosine on the facts they were fitted on. ES/GS/LS as in the
scaling benchmarks (teacher-forced token accuracy; LS against the unedited model)."""


def gradients(lm, requests, layer: int, batch_size: int = 16):
    """``(g_subject, g_answer)`` (n, d): the value gradients (``hyperedit.lm``, the edit loss the
    hypernetwork editors read) of block ``layer``'s MLP output projection, at the last subject token
    and summed over each request's answer-predicting positions. Where the MLP output joins the
    residual stream unscaled (Llama, SmolLM2) they are the gradients at the block's output."""
    import torch

    from hyperedit.lm import cache_keys_and_value_grads, site_mask

    adapter = lm.adapter
    module = adapter.module_names([layer], "down")[0]
    prompts, targets = [r.prompt for r in requests], [r.target for r in requests]
    subjects = [r.subject for r in requests]
    _, g_subject = cache_keys_and_value_grads(adapter, prompts, targets, [module], batch_size, token="subject",
                                              subjects=subjects)[module]
    _, rows = cache_keys_and_value_grads(adapter, prompts, targets, [module], batch_size, token="ans")[module]
    counts = [int(site_mask(adapter, adapter.encode([p], [t]), "ans", [p], None).sum()) for p, t in zip(prompts, targets)]
    g_answer = torch.stack([part.sum(0) for part in rows.split(counts)])
    return g_subject.float().cpu(), g_answer.float().cpu()


def fit_linear(G, R, folds: int = 5):
    """Ridge regression ``R ~ G W`` with its ridge picked by k-fold cosine; returns ``(W, alpha)``."""
    import torch

    G, R = G.double(), R.double()
    n, d = G.shape
    scale = float((G * G).sum()) / n
    best = None
    for alpha in (1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0):
        cos = []
        for f in range(folds):
            held = torch.arange(n) % folds == f
            W = _ridge(G[~held], R[~held], alpha * scale)
            cos.append(_cos(G[held] @ W, R[held]).mean())
        score = float(torch.stack(cos).mean())
        if best is None or score > best[0]:
            best = (score, alpha)
    return _ridge(G, R, best[1] * scale).float(), best[1]


def _ridge(G, R, ridge):
    import torch

    eye = torch.eye(G.shape[1], dtype=G.dtype)
    return torch.linalg.solve(G.T @ G + ridge * eye, G.T @ R)


def _cos(a, b):
    import torch

    return torch.nn.functional.cosine_similarity(a.double(), b.double(), dim=-1)


def targets_for(lm, editor, requests, cache_path):
    """MEMIT's targets for ``requests`` through the editor's target cache, saved to ``cache_path``."""
    targets = editor.targets(lm, requests)
    Path(cache_path).parent.mkdir(parents=True, exist_ok=True)
    editor.target_cache.save(cache_path)
    return targets


def run(args) -> list[dict]:
    import torch

    from hyperedit.bench import current_command, make_record, peak_rss_during, write_results
    from hyperedit.commands._common import dataset_label
    from hyperedit.data import load_requests
    from hyperedit.editors import get_editor
    from hyperedit.editors.locate import TargetCache
    from hyperedit.eval.evaluate import evaluate, locality_reference
    from hyperedit.models import load_model

    torch.set_num_threads(args.threads)
    lm = load_model(args.model)
    editor = get_editor("memit", lm=lm)
    layer = editor.layers(lm)[-1]
    fit_reqs = load_requests(args.fit, limit=args.fit_size)
    eval_reqs = [dataclasses.replace(r, old_target=None) for r in load_requests(args.eval, limit=args.eval_size)]
    dataset, split = dataset_label(args.eval)
    command, records = current_command(), []

    editor.stats(lm)
    editor.target_cache = TargetCache.for_model(lm.model, path=args.target_cache)
    fit_t = targets_for(lm, editor, fit_reqs, args.target_cache)
    eval_t = targets_for(lm, editor, eval_reqs, args.target_cache)
    r_fit, r_eval = fit_t.residual.float().cpu(), eval_t.residual.float().cpu()
    fit_g = dict(zip(("subject", "answer"), gradients(lm, fit_reqs, layer)))
    eval_g = dict(zip(("subject", "answer"), gradients(lm, eval_reqs, layer)))

    written = {"optimised": r_eval}
    details = {"r_norm_over_h": float((r_eval.norm(dim=-1) / eval_t.h.cpu().norm(dim=-1)).mean())}
    for site in ("subject", "answer"):
        g = -eval_g[site]
        unit = g / g.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        written[f"oracle-norm ({site})"] = unit * r_eval.norm(dim=-1, keepdim=True)
        W, alpha = fit_linear(-fit_g[site], r_fit)
        written[f"linear ({site})"] = g @ W
        details |= {f"cos_{site}_q25": float(_cos(g, r_eval).quantile(.25)),
                    f"cos_{site}_q75": float(_cos(g, r_eval).quantile(.75)),
                    f"linear_{site}_ridge": alpha, f"linear_{site}_cos_on_fit": float(_cos(-fit_g[site] @ W, r_fit).mean())}
    full = editor.config
    for steps in args.few_steps:
        editor.config = dataclasses.replace(full, v_steps=steps)
        written[f"optimised, {steps} steps"] = targets_for(lm, editor, eval_reqs, args.target_cache).residual.float().cpu()
    editor.config = full
    log.info("details: %s", {k: round(v, 3) for k, v in details.items()})

    reference = locality_reference(lm.adapter, eval_reqs)
    h = eval_t.h.to(lm.device)
    for name, residual in written.items():
        (shifts, _), seconds, peak = peak_rss_during(editor.solve, lm, eval_reqs, h + residual.to(h))
        delta = editor.make_delta(lm, shifts)
        with delta.applied(lm.model):
            metrics, _ = evaluate(lm.adapter, eval_reqs, reference)
        direction = {"cos_to_optimised": float(_cos(residual, r_eval).mean()),
                     "norm_to_optimised": float((residual.norm(dim=-1) / r_eval.norm(dim=-1)).mean())}
        records.append(make_record(
            editor=f"memit[{name}]", model=lm.name, dataset=dataset, split=split, mode="batch",
            n_edits=len(eval_reqs), metrics=metrics | direction, edit_time_s=seconds, peak_rss_mb=peak,
            command=command, seed=0, written=name, fit=args.fit, fit_size=len(fit_reqs), layers=list(editor.layers(lm)),
            target_time_s=round(eval_t.time_s, 1), details=details))
        log.info("%s: ES %.3f GS %.3f LS %.3f", name, metrics["ES"], metrics["GS"], metrics["LS"])
        write_results(records, args.out, RESULTS, title="One gradient against MEMIT's optimised target, at the subject site",
                      notes=NOTES)
    return records


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--fit", default="counterfact:train", help="split the linear maps are fitted on")
    parser.add_argument("--fit-size", type=int, default=384)
    parser.add_argument("--eval", default="counterfact:val")
    parser.add_argument("--eval-size", type=int, default=256)
    parser.add_argument("--target-cache", default="runs/subject_site_signal/targets.safetensors")
    parser.add_argument("--few-steps", type=lambda t: [int(x) for x in t.split(",") if x], default="1,3",
                        help="also write MEMIT's targets after only these many optimisation steps")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default="subject_site_signal_cf")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    run(args)


if __name__ == "__main__":
    main()
