"""``hyperedit demo``: edit a few real facts in the embedded model and show before/after answers."""
from __future__ import annotations

import json
import logging
import time

from ..requests import EditRequest, LocalityPrompt
from ._common import add_editor_args, add_model_args, editor_from_args, emit_json, load_model_from_args, seed_everything

log = logging.getLogger(__name__)

DEMO_REQUESTS = [
    EditRequest(
        prompt="The Eiffel Tower is located in the city of", target="Rome", subject="Eiffel Tower",
        rephrasings=("Where is the Eiffel Tower? It stands in the city of",),
        locality=(LocalityPrompt("The Statue of Liberty is located in the city of"),), old_target="Paris"),
    EditRequest(
        prompt="Lionel Messi plays the sport of", target="basketball", subject="Lionel Messi",
        rephrasings=("The professional sport that Lionel Messi plays is",),
        locality=(LocalityPrompt("Roger Federer plays the sport of"),), old_target="football"),
    EditRequest(
        prompt="The Great Wall is located in the country of", target="Mexico", subject="Great Wall",
        rephrasings=("Which country is the Great Wall in? It is in",),
        locality=(LocalityPrompt("The Taj Mahal is located in the country of"),), old_target="China"),
    EditRequest(
        prompt="The official language of Brazil is", target="French", subject="Brazil",
        rephrasings=("In Brazil, most people speak",),
        locality=(LocalityPrompt("The official language of Germany is"),), old_target="Portuguese"),
]


# A handful of edits needs far less capacity than a benchmark batch: one layer, a looser bound.
DEMO_OPTIONS = {"ft": {"layers": [23], "lr": 5e-4, "max_rel_norm": 0.1}}
# MetaKE (a seed method) gets the demo's rows right with the shipped key statistics; measured in
# benchmarks/results/demo_no_data.md.
DEFAULT_EDITOR = "metake"


def register(sub) -> None:
    p = sub.add_parser("demo", help="edit a few real facts in the embedded model and show before/after answers",
                       description="Edits a handful of real facts in a model (default: the embedded SmolLM2), "
                                   "prints what the model answers before and after for each edit prompt, a "
                                   "rephrasing and an unrelated prompt, and the metrics. The model is restored "
                                   "afterwards, and the output names every unrelated prompt whose answer changed. "
                                   "Without --set/--config, ft on the embedded model uses a single-layer setting "
                                   "suited to a handful of edits.")
    add_model_args(p)
    add_editor_args(p, default=DEFAULT_EDITOR)
    p.add_argument("--tokens", type=int, default=6, help="tokens generated per answer (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=run)


def _rows(requests):
    for r in requests:
        yield "edit", r.prompt, r.target
        for text in r.rephrasings:
            yield "rephrase", text, r.target
        for loc in r.locality:
            yield "unrelated", loc.prompt, None


def _short(text: str, width: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


def run(args) -> int:
    from ..eval import evaluate, generate, locality_reference

    seed_everything(args.seed)
    lm = load_model_from_args(args)
    if not args.overrides and not args.config and args.model == "smollm2-135m":
        args.overrides = [f"{k}={json.dumps(v)}" for k, v in DEMO_OPTIONS.get(args.editor, {}).items()]
    editor = editor_from_args(args, lm)
    requests = DEMO_REQUESTS
    rows = list(_rows(requests))
    prompts = [p for _, p, _ in rows]
    log.info("answers before editing")
    before = generate(lm.adapter, prompts, args.tokens)
    reference = locality_reference(lm.adapter, requests)
    log.info("editing %d facts with %s", len(requests), editor.name)
    start = time.perf_counter()
    delta = editor.edit(lm, requests)
    edit_seconds = time.perf_counter() - start
    with delta.applied(lm.model):
        after = generate(lm.adapter, prompts, args.tokens)
        metrics, _ = evaluate(lm.adapter, requests, reference)
    table = [{"kind": k, "prompt": p, "wanted": t, "before": b.strip(), "after": a.strip()}
             for (k, p, t), b, a in zip(rows, before, after)]
    changed = [row for row in table if row["kind"] == "unrelated" and row["before"] != row["after"]]
    n_unrelated = sum(row["kind"] == "unrelated" for row in table)
    if args.json:
        emit_json({"editor": editor.name, "model": lm.name, "rows": table, "metrics": metrics,
                   "unrelated_changed": [row["prompt"] for row in changed], "unrelated_rows": n_unrelated,
                   "edit_time_s": round(edit_seconds, 3)})
        return 0
    print(f"hyperedit demo: {len(requests)} facts edited in {lm.name} with {editor.name}\n")
    header = f"{'kind':<10} {'prompt':<52} {'wanted':<11} {'before':<26} {'after':<26}"
    print(header)
    print("-" * len(header))
    for row in table:
        print(f"{row['kind']:<10} {_short(row['prompt'], 52):<52} {_short(row['wanted'] or '(unchanged)', 11):<11} "
              f"{_short(row['before'], 26):<26} {_short(row['after'], 26):<26}")
    print()
    names = {"ES": "edit success (ES)", "GS": "generalisation (GS)", "LS": "locality vs unedited model (LS)",
             "efficacy_score": "P(new) > P(old) on edit prompts", "paraphrase_score": "P(new) > P(old) on rephrasings"}
    for key, label in names.items():
        if metrics.get(key) is not None:
            print(f"{label:<34} {metrics[key]:.3f}")
    print()
    if changed:
        print(f"Unrelated rows changed: {len(changed)} of {n_unrelated} (the edit leaked into these answers):")
        for row in changed:
            print(f"  {_short(row['prompt'], 52)}: {row['before']!r} -> {row['after']!r}")
    else:
        print(f"Unrelated rows changed: none of {n_unrelated}.")
    print("\nThe model is unchanged: the edit was reverted. Save edits with `hyperedit edit`.")
    return 0
