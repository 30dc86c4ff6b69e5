"""What AlphaEdit's memory of earlier edits holds after a lifelong stream, and how far the keys it
remembers have moved.

    python research/alphaedit_memory.py runs/ll23_alphaedit_l4-13_cf_1000 --out alphaedit_memory

AlphaEdit keeps earlier edits through ``K_p^T K_p`` (the Gram matrix of their keys, per edited
module) in every later solve ``(P (K^T K + K_p^T K_p) + l2 I) S = P K^T R``; a later shift is free
only in the directions of P's range that the memory does not hold. For each AlphaEdit run directory,
at its latest checkpoint, per edited module:

- ``null_dims``: the dimension of P's range (where any edit may write);
- ``held_dims``: eigenvalues of ``U^T K_p^T K_p U`` (U: a basis of P's range) above ``l2``, the
  directions in which the memory outweighs the ridge; ``held_share`` = held_dims / null_dims;
- ``key_drift``: for the first ``--first`` requests of the stream, the keys the module reads now
  (the stream's weights loaded) against the keys it read on the unedited model, which is about
  where they were when those edits were made and added to the memory:
  mean ``||k_now - k_then|| / ||k_then||``, and the mean share of ``k_now - k_then`` inside P's range;
  ``key_drift_unedited``: the same for as many requests of the split the stream never edited (the
  ones after it), whose keys only the other edits moved.

A memory that is full (held_share near 1) leaves a new edit nowhere to go but over earlier ones;
keys that moved make the memory protect directions the earlier facts no longer use.
Writes ``benchmarks/results/OUT.{json,md}`` (one record per run: the stream's own record, with
``memory`` added, ``command`` this benchmark's and ``stream_command`` the stream's).
"""
from __future__ import annotations

from pathlib import Path

import argparse
import sys

RESULTS = Path(__file__).resolve().parents[1] / "benchmarks" / "results"


def read_keys(lm, editor, requests, z_layer: int) -> dict:
    """Keys of ``requests`` at every edited module of ``editor``, as ``lm`` reads them now."""
    from hyperedit.editors import _locate as L

    return {name: L.keys_and_hidden(lm, requests, name, editor.prefixes(lm), z_layer)[0].double()
            for name in editor.modules(lm)}


def key_drift(before, after, P) -> dict:
    """Mean relative move of the keys, and the mean share of the move inside P's range."""
    move = after - before
    inside = (move @ P.to(move)).norm(dim=1) / move.norm(dim=1).clamp_min(1e-12)
    return {"key_drift": float((move.norm(dim=1) / before.norm(dim=1)).mean()),
            "drift_in_null_space": float(inside.mean())}


def main(argv=None) -> int:
    import torch
    from safetensors.torch import load_file

    from hyperedit.bench import current_command, write_results
    from hyperedit.bench.records import REQUIRED
    from hyperedit.data import load_requests
    from hyperedit.editors import get_editor
    from hyperedit.eval.lifelong import EDITOR_FILE, finished_streams, stream_weights
    from hyperedit.models import load_model

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+")
    p.add_argument("--first", type=int, default=100, help="earliest requests of the stream whose keys are followed")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default="alphaedit_memory")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.set_grad_enabled(False)
    records, lm = [], None
    for run, record, latest in finished_streams(args.runs):
        if record["editor"] != "alphaedit":
            print(f"{run}: not an AlphaEdit stream; skipped", file=sys.stderr)
            continue
        lm = lm or load_model(record["model"])
        editor = get_editor("alphaedit", lm=lm, **record.get("editor_config", {}))
        state = load_file(str(latest / EDITOR_FILE))
        spec = f"{record['dataset']}:{record['split']}"
        first = load_requests(spec, data_dir=args.data_dir, limit=args.first)
        unedited = load_requests(spec, data_dir=args.data_dir, limit=args.first, offset=record["n_edits"])
        z_layer = editor.layers(lm)[-1]
        sets = {"first": first, "unedited": unedited}
        before = {which: read_keys(lm, editor, reqs, z_layer) for which, reqs in sets.items()}
        with stream_weights(lm, latest):
            after = {which: read_keys(lm, editor, reqs, z_layer) for which, reqs in sets.items()}
        editor.load_stream_state(state)
        fill = editor.memory_fill(lm)
        per_module = {}
        for name in editor.modules(lm):
            P = editor.projector(lm, name)
            per_module[name] = {**{k: v for k, v in fill[name].items() if k != "ridge"},
                                **key_drift(before["first"][name], after["first"][name], P),
                                "key_drift_unedited": key_drift(before["unedited"][name], after["unedited"][name],
                                                                P)["key_drift"]}
        mean = {k: sum(v[k] for v in per_module.values()) / len(per_module)
                for k in ("held_share", "key_drift", "drift_in_null_space", "key_drift_unedited")}
        records.append({**{k: record[k] for k in REQUIRED if k in record}, "run": run.name,
                        "command": current_command(), "stream_command": record["command"],
                        "editor_config": record.get("editor_config"),
                        "memory": {"checkpoint": latest.name, "first": args.first, "mean": mean,
                                   "per_module": per_module}})
    if not records:
        print("no AlphaEdit stream measured", file=sys.stderr)
        return 2
    lines = ["| run | module | null_dims | held_dims | held_share | key drift, first edits | share in P's range | "
             "key drift, never edited |", "|---|---|---|---|---|---|---|---|"]
    for r in records:
        for name, m in r["memory"]["per_module"].items():
            lines.append(f"| {r['run']} | {name} | {m['null_dims']} | {m['held_dims']} | {m['held_share']:.3f} | "
                         f"{m['key_drift']:.3f} | {m['drift_in_null_space']:.3f} | {m['key_drift_unedited']:.3f} |")
    write_results(records, args.out, RESULTS, title="AlphaEdit's memory after a lifelong stream", notes=(
        "Per edited module at the stream's latest checkpoint: the dimension of the null-space projector's range, "
        "how many of those directions the memory of earlier edits (K_p^T K_p) holds above the ridge l2, and how "
        f"far the keys of the stream's first {args.first} requests have moved since the unedited model "
        "(mean relative change; mean share of the change inside P's range), and those of as many requests of the "
        "split that the stream never edited (the next ones after it).\n\n" + "\n".join(lines)))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
