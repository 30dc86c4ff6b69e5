"""Why a hypernetwork editor writes less late in a lifelong stream: fresh facts edited once at the
end of a finished stream, with each part of the stream's state switched on or off.

    python research/lifelong_write_probe.py runs/ll22_hiedit_s2.0_zsre_1000 --batches 20 --out lifelong_write_probe

In the zsRE streams of HiEdit the earliest edits keep their efficacy to the end while the most
recent ones are written less and less (recent ES .75 after 100 edits, .45 after 1,000). Three things
change along a stream and may cause that: the model's weights (every edit moves the keys and value
gradients the editor reads), the editor's memory of earlier edits (the keys K_p^T K_p that later
solves must keep, with the subjects swapped in as contrast rows), and its normalisers (updated online
at every edit). This probe takes ``--batches`` batches of ``--batch`` requests of the same split that
the stream never edited (the ones after it), and edits each batch once, then reverts it, under each
of the eight combinations of

- weights: the unedited model, or the stream's latest checkpoint;
- memory: none, or the stream's (K_p and the subjects it swaps in);
- normalisers: as the editor was loaded, or the stream's;

plus the same requests unedited on both weights (``--stream-weights-only``: the stream's weights only;
``--stream-memory-only``: the edits with the stream's memory only).
ES / GS / LS are those of the batch right after its own edit (LS against the unedited model's
predictions); ``shift_norm`` is the mean over batches of the summed Frobenius norms of the edit's
shifts; ``old_metrics`` are ES / GS / LS of ``--old`` requests the stream edited (evenly spaced over it)
after each probe edit: what one more edit costs the earlier ones; ``memory_fill``: per module, how many
of the null space's directions the stream's memory holds above the learned ridge. The editor is built as the stream
built it (its checkpoint and run-time options, from the stream's checkpoint), then ``--set``. Writes
``benchmarks/results/OUT.{json,md}``: one record per run and condition.
"""
from __future__ import annotations

from pathlib import Path

import argparse
import contextlib
import itertools
import json
import logging

RESULTS = Path(__file__).resolve().parents[1] / "benchmarks" / "results"

log = logging.getLogger("lifelong_write_probe")


def build_editor(lm, latest, record: dict, overrides: dict):
    """The stream's editor: its checkpoint (or the shipped one) with the stream's run-time options,
    then ``overrides``."""
    from hyperedit.editors import get_editor
    from hyperedit.editors.base import editor_entry
    from hyperedit.eval.lifelong import STATE_FILE

    info = json.loads((latest / STATE_FILE).read_text())["info"]
    runtime = getattr(editor_entry(record["editor"]).config_class, "RUNTIME", ())
    options = {k: v for k, v in (record.get("editor_config") or {}).items() if k in runtime}
    return get_editor(record["editor"], checkpoint=info.get("checkpoint"), lm=lm, **{**options, **overrides})


def mix_state(fresh: tuple, stream: tuple, memory: bool, normalisers: bool) -> tuple:
    """An editor state with the stream's memory and/or normalisers, the rest as loaded (``fresh``)."""
    (fresh_t, fresh_meta), (stream_t, stream_meta) = fresh, stream
    is_memory = lambda k: k.startswith("keys/")  # noqa: E731  (K_p per module and the edit count)
    from_stream = lambda k: memory if is_memory(k) else normalisers  # noqa: E731
    tensors = {k: v for k, v in fresh_t.items() if not from_stream(k)}
    tensors.update({k: v for k, v in stream_t.items() if from_stream(k)})
    meta = dict(fresh_meta, asked=(stream_meta if memory else fresh_meta).get("asked", []))
    return tensors, meta


def probe(lm, editor, batches, reference, state, old, old_reference) -> dict:
    """Mean ES / GS / LS of each batch right after its own edit (reverted after), the mean shift norm,
    and the mean ES / GS / LS of the stream's ``old`` requests after each edit (``old=None``: not
    measured); ``state=None``: no edit."""
    from hyperedit.eval.evaluate import evaluate
    from hyperedit.eval.lifelong import subset_reference

    def score(requests, ref) -> dict:
        return evaluate(lm.adapter, requests, ref)[0]

    sums, norms, start, unchanged = {}, [], 0, None
    add = lambda prefix, metrics: sums.update(  # noqa: E731
        {prefix + k: sums.get(prefix + k, 0.0) + metrics[k] / len(batches) for k in ("ES", "GS", "LS")})
    for batch in batches:
        ref = subset_reference(reference, list(range(start, start + len(batch))))
        start += len(batch)
        if state is None:
            add("", score(batch, ref))
            if old:
                unchanged = unchanged or score(old, old_reference)  # the same weights for every batch
                add("old_", unchanged)
            continue
        editor.load_stream_state({k: v.clone() for k, v in state[0].items()}, state[1])
        delta = editor.edit(lm, batch)
        norms.append(sum(delta.norms().values()))
        with delta.applied(lm.model):
            add("", score(batch, ref))
            if old:
                add("old_", score(old, old_reference))
    return {**sums, "shift_norm": sum(norms) / len(norms) if norms else 0.0}


def memory_fill(lm, editor, stream: tuple) -> dict | None:
    """How much of each module's null space the stream's memory holds above the ridge
    (the editor's ``memory_fill``; None for an editor without a null-space memory). ``lm`` must carry
    the unedited weights: the null space comes from the key statistics of generic text."""
    low = getattr(editor, "low", editor)  # HiEdit's low level, or RLEdit / MALMEN itself
    if not getattr(low.config, "nullspace", False):
        return None
    editor.load_stream_state({k: v.clone() for k, v in stream[0].items()}, stream[1])
    per_module = editor.memory_fill(lm)
    held = sum(m["held_dims"] for m in per_module.values())
    return {"per_module": per_module, "held_dims": held,
            "null_dims": sum(m["null_dims"] for m in per_module.values())}


def main(argv=None) -> int:
    import torch
    from safetensors.torch import load_file

    from hyperedit.bench import current_command, write_results
    from hyperedit.bench.records import REQUIRED
    from hyperedit.commands._common import parse_overrides
    from hyperedit.data import load_requests
    from hyperedit.eval.evaluate import locality_reference
    from hyperedit.eval.lifelong import EDITOR_FILE, STATE_FILE, finished_streams, stream_weights
    from hyperedit.models import load_model

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", help="run directories of finished hypernetwork-editor streams")
    p.add_argument("--batches", type=int, default=20)
    p.add_argument("--batch", type=int, default=5)
    p.add_argument("--old", type=int, default=40, help="requests of the stream (evenly spaced) whose ES / GS / LS "
                                                       "after each probe edit show what it costs earlier edits")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="run-time option of the editor on top of the stream's, e.g. --set memory_weight=0.01; repeatable")
    p.add_argument("--stream-weights-only", action="store_true", help="skip the conditions on the unedited model")
    p.add_argument("--stream-memory-only", action="store_true",
                   help="skip the edits without the stream's memory (e.g. when --set changes only how it is used)")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default="lifelong_write_probe")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    torch.set_num_threads(args.threads)
    records, lm = [], None
    for run, record, latest in finished_streams(args.runs):
        lm = lm or load_model(record["model"])
        editor = build_editor(lm, latest, record, parse_overrides(args))
        if not hasattr(editor, "stream_state"):
            log.warning("%s: %s keeps no stream state; skipped", run, record["editor"])
            continue
        meta = json.loads((latest / STATE_FILE).read_text())["editor_state"]
        stream = ({k: v for k, v in load_file(str(latest / EDITOR_FILE)).items() if k != "_empty"}, meta)
        fresh = editor.stream_state()
        fresh = ({k: v.clone() for k, v in fresh[0].items()}, fresh[1])
        fill = memory_fill(lm, editor, stream)
        spec = f"{record['dataset']}:{record['split']}"
        n = args.batches * args.batch
        requests = load_requests(spec, data_dir=args.data_dir, limit=n, offset=record["n_edits"])
        batches = [requests[i:i + args.batch] for i in range(0, n, args.batch)]
        reference = locality_reference(lm.adapter, requests)
        stream_requests = load_requests(spec, data_dir=args.data_dir, limit=record["n_edits"])
        step = max(1, len(stream_requests) // args.old)
        old = stream_requests[::step][: args.old]
        old_reference = locality_reference(lm.adapter, old)
        results = []
        for weights in ("stream",) if args.stream_weights_only else ("unedited", "stream"):
            context = stream_weights(lm, latest) if weights == "stream" else contextlib.nullcontext()
            olds = (old, old_reference) if weights == "stream" else (None, None)  # unedited: nothing to lose
            with context:
                results.append(({"weights": weights, "edit": False}, probe(lm, editor, batches, reference, None, *olds)))
                for memory, normalisers in itertools.product((True,) if args.stream_memory_only else (False, True),
                                                             (False, True)):
                    state = mix_state(fresh, stream, memory, normalisers)
                    condition = {"weights": weights, "edit": True, "memory": "stream" if memory else "none",
                                 "normalisers": "stream" if normalisers else "loaded"}
                    results.append((condition, probe(lm, editor, batches, reference, state, *olds)))
                    log.info("%s %s: %s", run.name, condition, {k: round(v, 3) for k, v in results[-1][1].items()})
        for condition, metrics in results:
            records.append({**{k: record[k] for k in REQUIRED if k in record}, "run": run.name,
                            "stream_command": record["command"], "command": current_command(),
                            "editor_config": record.get("editor_config"), "probe": condition,
                            "probe_requests": {"offset": record["n_edits"], "n": n, "batch": args.batch},
                            "overrides": args.overrides, "old_requests": {"n": len(old), "every": step},
                            "metrics": {k: metrics[k] for k in ("ES", "GS", "LS")},
                            "old_metrics": ({k: metrics["old_" + k] for k in ("ES", "GS", "LS")}
                                            if "old_ES" in metrics else None),
                            "shift_norm": metrics["shift_norm"], "memory_fill": fill})
    if not records:
        log.error("no hypernetwork-editor stream probed")
        return 2
    lines = ["| run | options | weights | edit | memory | normalisers | ES | GS | LS | shift norm | old ES / GS / LS |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in records:
        c, m = r["probe"], r["metrics"]
        o = r["old_metrics"]
        old_cell = f"{o['ES']:.3f} / {o['GS']:.3f} / {o['LS']:.3f}" if o else "-"
        lines.append(f"| {r['run']} | {' '.join(r['overrides']) or '-'} | {c['weights']} | {'yes' if c['edit'] else 'no'} | {c.get('memory', '-')} | "
                     f"{c.get('normalisers', '-')} | {m['ES']:.3f} | {m['GS']:.3f} | {m['LS']:.3f} | "
                     f"{r['shift_norm']:.2f} | {old_cell} |")
    lines += ["", "Memory fill (per module: null-space dimensions, held above the ridge e^lambda, ridge):", "",
              "| run | module | null_dims | held_dims | held_share | ridge |", "|---|---|---|---|---|---|"]
    for r in {r["run"]: r for r in records if r["memory_fill"]}.values():
        for name, m in r["memory_fill"]["per_module"].items():
            lines.append(f"| {r['run']} | {name} | {m['null_dims']} | {m['held_dims']} | {m['held_share']:.3f} | "
                         f"{m['ridge']:.1f} |")
    write_results(records, args.out, RESULTS, title="Writing at the end of a lifelong stream: what holds new edits back",
                  notes=__doc__.split("\n\n", 2)[2].strip() + "\n\n" + "\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
