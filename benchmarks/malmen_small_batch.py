"""The shipped MALMEN at small batches: edit-time settings against the locality of few-fact edits.

For each setting (``--variant NAME:KEY=VALUE,KEY=VALUE``; ``NAME:`` alone = the editor as loaded)
and each size N, the first N requests of each dataset are edited at once and scored on the first
min(N, ``--eval-subset``) of them (as ``malmen_scaling.py``, whose helpers it uses), and the demo's
four facts (``hyperedit demo``) are edited and the unrelated rows that change their generated answer
are counted. One process loads the model once; finished records are kept (a rerun skips them).

    python benchmarks/malmen_small_batch.py --sizes 16,64 --variant shipped: --variant c4:contrast=4

Writes benchmarks/results/<out>.json/.md.
"""
from __future__ import annotations

import argparse
import dataclasses
import logging
import time

from malmen_scaling import RESULTS, edit_and_score, parse_sizes, scored_split, start_run

log = logging.getLogger("malmen_small_batch")


def parse_variant(text: str) -> tuple[str, dict[str, str]]:
    """``c4:contrast=4,shift_scale=0.8`` -> ("c4", {"contrast": "4", "shift_scale": "0.8"})."""
    name, sep, rest = text.partition(":")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"expected NAME:KEY=VALUE,..., got {text!r}")
    pairs = [p for p in rest.split(",") if p]
    if any("=" not in p for p in pairs):
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE pairs after {name}:, got {rest!r}")
    return name, dict(p.split("=", 1) for p in pairs)


def _editor(lm, overrides: dict[str, str]):
    from hyperedit.commands._common import parse_overrides
    from hyperedit.editors import get_editor

    parsed = parse_overrides(argparse.Namespace(overrides=[f"{k}={v}" for k, v in overrides.items()], config=None))
    return get_editor("malmen", lm=lm, **parsed)


def demo_changed_rows(lm, editor, tokens: int = 6) -> dict:
    """Edit the demo's facts; ES/GS/LS and how many unrelated rows' generated answers changed."""
    from hyperedit.commands.demo import DEMO_REQUESTS
    from hyperedit.eval import evaluate, generate, locality_reference

    prompts = [loc.prompt for r in DEMO_REQUESTS for loc in r.locality]
    before = generate(lm.adapter, prompts, tokens)
    reference = locality_reference(lm.adapter, DEMO_REQUESTS)
    start = time.perf_counter()
    delta = editor.edit(lm, DEMO_REQUESTS)
    seconds = time.perf_counter() - start
    with delta.applied(lm.model):
        after = generate(lm.adapter, prompts, tokens)
        metrics, _ = evaluate(lm.adapter, DEMO_REQUESTS, reference)
    changed = [p for p, b, a in zip(prompts, before, after) if b.strip() != a.strip()]
    return {"metrics": metrics, "edit_time_s": seconds, "unrelated_changed": len(changed),
            "unrelated_rows": len(prompts), "changed_prompts": changed,
            "answers_after": [a.strip() for a in after]}


def run(args) -> list[dict]:
    from hyperedit.bench import make_record, write_results
    from hyperedit.eval import locality_reference

    lm, records, done, command = start_run(args, "variant")

    def save(record):
        records.append(record)
        write_results(records, args.out, RESULTS, title="The shipped MALMEN at small batches", notes=NOTES,
                      columns=("variant", "unrelated_changed"))

    for name, overrides in args.variants:
        if args.demo and (name, "demo", "demo", 4) not in done:
            result = demo_changed_rows(lm, _editor(lm, overrides))
            save(make_record(editor="malmen", model=lm.name, dataset="demo", split="demo", mode="batch", n_edits=4,
                             metrics=result.pop("metrics"), edit_time_s=result.pop("edit_time_s"), peak_rss_mb=None,
                             command=command, variant=name, overrides=overrides, **result))
            log.info("%s demo: %d of %d unrelated rows changed", name, records[-1]["unrelated_changed"],
                     records[-1]["unrelated_rows"])
    for spec in filter(None, args.datasets.split(",")):  # --datasets "": the demo only
        dataset, split, requests, eval_all = scored_split(spec, max(args.sizes), args.eval_subset)
        reference = None
        for n in sorted(set(args.sizes)):
            for name, overrides in args.variants:
                if (name, dataset, split, n) in done:
                    continue
                if reference is None:
                    reference = locality_reference(lm.adapter, eval_all, args.eval_batch_size)
                editor = _editor(lm, overrides)
                metrics, cost = edit_and_score(lm, editor, requests[:n], eval_all, reference, args.eval_batch_size)
                save(make_record(editor="malmen", model=lm.name, dataset=dataset, split=split, mode="batch", n_edits=n,
                                 metrics=metrics, command=command, threads=args.threads, variant=name,
                                 overrides=overrides, checkpoint="shipped", config=dataclasses.asdict(editor.config),
                                 **cost))
                log.info("%s %s n=%d: ES %.3f GS %.3f LS %.3f, edit %.1fs", name, dataset, n, metrics["ES"] or 0,
                         metrics["GS"] or 0, metrics["LS"] or 0, cost["edit_time_s"])
    return records


NOTES = """The shipped MALMEN (SmolLM2-135M) with edit-time settings (`variant`, its `overrides`; `config`
in the JSON is the editor's whole configuration). N facts edited at once; ES/GS/LS teacher-forced
on the first min(N, eval subset) edited requests, as in `malmen_scaling`. Rows with dataset `demo`
edit the four facts of `hyperedit demo`; `unrelated_changed` counts its unrelated prompts whose
generated answer (6 tokens) differs after the edit."""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--datasets", default="counterfact:val")
    parser.add_argument("--sizes", type=parse_sizes, default="16,64")
    parser.add_argument("--variant", dest="variants", type=parse_variant, action="append", required=True)
    parser.add_argument("--demo", action="store_true", help="also edit the demo's facts per variant")
    parser.add_argument("--eval-subset", type=int, default=256)
    parser.add_argument("--eval-batch-size", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default="malmen_small_batch")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    run(args)


if __name__ == "__main__":
    main()
