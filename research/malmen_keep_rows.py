"""Which rows keep CounterFact's neighbours: MALMEN at N facts with zero-target rows from a pool.

Contrast rows (docs/malmen.md) swap subjects among the edit's own requests. This probe asks
whether other rows do better, with the shipped MALMEN editing the first N requests of a split at
once (metrics on the first ``--eval-subset``), each request getting ``per`` rows of weight ``w``
added to the least-squares solve exactly as contrast rows are (``add_rows``):

- ``random``: prompts drawn at random from the pool;
- ``same``: pool prompts whose answer is the request's old answer (``old_target``): the kind of
  prompt CounterFact's neighbourhood test asks (other subjects sharing relation and old object);
- ``neighbour``: the request's own locality prompts, i.e. the very prompts LS is measured on. A
  diagnostic upper bound for any row choice, not an editor anyone can run;
- ``none``: no rows (the shipped editor).

The pool is a training split (its prompts and locality prompts with their answers), minus every
prompt that occurs anywhere in the evaluated split (prompts, rephrasings, locality prompts), so no
pool row is an evaluated prompt. Rows are read at the editor's site with the request's new target,
as contrast rows are.

    python research/malmen_keep_rows.py --variants none,random:2,same:2,same:8,neighbour:1 --out malmen_keep_rows

Writes benchmarks/results/<out>.json/.md; finished variants are kept (a rerun skips them).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import random
from pathlib import Path

RESULTS = Path(__file__).resolve().parents[1] / "benchmarks" / "results"

log = logging.getLogger("malmen_keep_rows")
KINDS = ("none", "random", "same", "neighbour")


def parse_variant(text: str) -> tuple[str, int]:
    kind, _, per = text.partition(":")
    if kind not in KINDS or (kind != "none" and not per.isdigit()):
        raise argparse.ArgumentTypeError(f"variant must be none or KIND:PER with KIND in {KINDS[1:]}, got {text!r}")
    return kind, int(per or 0)


def build_pool(pool_requests, evaluated_split) -> tuple[dict[str, list[str]], list[str]]:
    """(answer -> prompts, all prompts) of the pool, without any prompt of the evaluated split."""
    banned = set()
    for r in evaluated_split:
        banned.update((r.prompt, *r.rephrasings, *(loc.prompt for loc in r.locality)))
    by_answer: dict[str, list[str]] = {}
    pairs = [(r.prompt, r.old_target) for r in pool_requests]
    pairs += [(loc.prompt, loc.answer) for r in pool_requests for loc in r.locality]
    for prompt, answer in pairs:
        if answer and prompt not in banned:
            by_answer.setdefault(answer.strip(), []).append(prompt)
    rng = random.Random(0)
    for prompts in by_answer.values():
        rng.shuffle(prompts)
    return by_answer, sorted({p for prompts in by_answer.values() for p in prompts})


def rows_for(requests, kind: str, per: int, by_answer, every: list[str], seed: int) -> list[tuple[str, str]]:
    """(prompt, target) rows of each request: ``per`` prompts of ``kind`` that do not name its subject."""
    rng = random.Random(seed)
    rows = []
    for r in requests:
        if kind == "same":
            candidates = by_answer.get((r.old_target or "").strip(), [])
        elif kind == "random":
            candidates = rng.sample(every, min(len(every), 4 * per))
        else:  # neighbour
            candidates = [loc.prompt for loc in r.locality]
        rows += [(p, r.target) for p in candidates if not r.subject or r.subject not in p][:per]
    return rows


def rows_gram(lm, rows, names, weight: float, chunk: int) -> dict:
    """``weight * K^T K`` (float64) of the rows' keys at the editor's site, per module."""
    from hyperedit.lm import key_gram

    grams = key_gram(lm.adapter, [p for p, _ in rows], [t for _, t in rows], names, chunk_size=chunk)
    return {name: weight * g for name, g in grams.items()}


def run(args) -> None:
    import torch

    from hyperedit.bench import current_command, make_record, peak_rss_during
    from hyperedit.commands._common import dataset_label
    from hyperedit.data import load_requests
    from hyperedit.editors import get_editor
    from hyperedit.eval import evaluate, locality_reference
    from hyperedit.models import load_model

    torch.set_num_threads(args.threads)
    out_json = RESULTS / f"{args.out}.json"
    records = json.loads(out_json.read_text()) if out_json.is_file() else []
    done = {(r["rows"], r["rows_per_request"], r["rows_weight"]) for r in records}
    lm = load_model(args.model)
    dataset, split = dataset_label(args.data)
    split_requests = load_requests(args.data)
    requests = split_requests[: args.n]
    by_answer, every = build_pool(load_requests(args.pool), split_requests)
    log.info("pool %s: %d prompts, %d answers (evaluated split's prompts removed)", args.pool, len(every), len(by_answer))
    evaluated = [dataclasses.replace(r, old_target=None) for r in requests[: args.eval_subset]]
    reference = locality_reference(lm.adapter, evaluated, args.eval_batch_size)
    command = current_command()
    for kind, per in args.variants:
        weight = args.weight if kind != "none" else 0.0
        if (kind, per, weight) in done:
            continue
        editor = get_editor("malmen", checkpoint=args.malmen, lm=lm)
        rows = rows_for(requests, kind, per, by_answer, every, seed=0) if kind != "none" else []
        if rows:  # the rows join the solve where the editor's own contrast rows would
            editor.contrast_gram = lambda lm_, reqs, names: rows_gram(lm_, rows, names, weight, args.chunk)
        delta, seconds, peak = peak_rss_during(editor.edit, lm, requests)
        with delta.applied(lm.model):
            metrics, _ = evaluate(lm.adapter, evaluated, reference, args.eval_batch_size)
        records.append(make_record(editor="malmen", model=lm.name, dataset=dataset, split=split, mode="batch",
                                   n_edits=len(requests), metrics=metrics, edit_time_s=seconds, peak_rss_mb=peak,
                                   command=command, seed=0, rows=kind, rows_per_request=per, rows_weight=weight,
                                   n_rows=len(rows), pool=args.pool, n_evaluated=len(evaluated),
                                   checkpoint=args.malmen or "shipped", threads=args.threads))
        log.info("%s:%d w=%g (%d rows): ES %.3f GS %.3f LS %.3f, edit %.0fs", kind, per, weight, len(rows),
                 metrics["ES"], metrics["GS"], metrics["LS"], seconds)
        _write(records, args.out)
    _write(records, args.out)


def _write(records: list[dict], out: str) -> None:
    from hyperedit.bench import write_results

    write_results(records, out, RESULTS, title="MALMEN with zero-target rows from a pool", notes=NOTES,
                  columns=("rows", "rows_per_request", "rows_weight", "n_rows"))


NOTES = """The shipped MALMEN edits the first N requests at once; each request adds `rows_per_request`
zero-target rows of kind `rows` (weight `rows_weight`) to the solve (research/malmen_keep_rows.py).
`neighbour` rows are the evaluated locality prompts themselves: a diagnostic upper bound, not a
usable editor. ES/GS/LS as in malmen_scaling (first `n_evaluated` edited requests; LS against the
unedited model's predictions)."""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--malmen", help="MALMEN checkpoint (default: the shipped one)")
    parser.add_argument("--data", default="counterfact:val")
    parser.add_argument("--pool", default="counterfact:train")
    parser.add_argument("--n", type=int, default=1024)
    parser.add_argument("--variants", type=lambda s: [parse_variant(v) for v in s.split(",")],
                        default="none,random:2,same:2,neighbour:1")
    parser.add_argument("--weight", type=float, default=1.0)
    parser.add_argument("--eval-subset", type=int, default=256)
    parser.add_argument("--eval-batch-size", type=int, default=32)
    parser.add_argument("--chunk", type=int, default=32, help="prompts per forward pass when reading row keys")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default="malmen_keep_rows")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    run(args)


if __name__ == "__main__":
    main()
