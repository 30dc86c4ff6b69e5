"""Weight drift of lifelong streams: ||W_now - W_0|| / ||W_0|| per touched module, from checkpoints.

    python benchmarks/lifelong_drift.py runs/ll_ft_zsre runs/ll_rledit_zsre ...

Reads each run directory's latest checkpoint (the stream's current weights) and compares with
the unedited model; writes ``benchmarks/results/lifelong_drift.{json,md}``.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def main(argv=None) -> int:
    from safetensors.torch import load_file

    from hyperedit.models import load_model
    from hyperedit.training.checkpoint import CheckpointStore

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+")
    p.add_argument("--model", default="smollm2-135m")
    args = p.parse_args(argv)
    lm = load_model(args.model)
    rows = []
    for run in args.runs:
        latest = CheckpointStore(run).latest()
        if latest is None:
            continue
        state = json.loads((latest / "stream.json").read_text())
        weights = load_file(str(latest / "weights.safetensors"))
        rel = {}
        for name, w in weights.items():
            w0 = lm.adapter.weight(name).detach()
            rel[name] = float((w.float() - w0.float()).norm() / w0.float().norm())
        rows.append({"run": Path(run).name, "editor": state["info"]["editor"], "edits": state["done"],
                     "modules": len(rel), "mean_rel_drift": sum(rel.values()) / max(1, len(rel)),
                     "max_rel_drift": max(rel.values(), default=0.0), "per_module": rel})
    lines = ["| run | editor | edits done | modules touched | mean ||dW||/||W|| | max ||dW||/||W|| |",
             "|---|---|---|---|---|---|"]
    lines += [f"| {r['run']} | {r['editor']} | {r['edits']} | {r['modules']} | {r['mean_rel_drift']:.3f} | "
              f"{r['max_rel_drift']:.3f} |" for r in rows]
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "lifelong_drift.json").write_text(json.dumps(rows, indent=2) + "\n")
    (RESULTS / "lifelong_drift.md").write_text("# Weight drift of the lifelong streams\n\n" + "\n".join(lines) +
                                               "\n\nProduced by:\n\n    python benchmarks/lifelong_drift.py " +
                                               " ".join(args.runs) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
