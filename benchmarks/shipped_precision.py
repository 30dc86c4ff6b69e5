"""Does a float16 copy of a trained editor edit as the original does?

    python benchmarks/shipped_precision.py --editor hiedit --checkpoint runs/hiedit13_ns --n 20

Edits the first ``--n`` requests of ``--data`` at once with the checkpoint as trained and with a
copy whose weight matrices are stored in float16 (``hyperedit.checkpoints.half_matrices``, what
``scripts/ship_editor.py --float16`` ships), on the same model. Records ES / GS / LS of both and the
largest relative difference between their weight shifts, in
``benchmarks/results/<out>.{json,md}``.
"""
from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

RESULTS_DIR = Path(__file__).resolve().parents[1] / "benchmarks" / "results"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--editor", required=True)
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--data", default="zsre:knowedit-test")
    parser.add_argument("--n", type=int, default=20)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default="shipped_precision")
    args = parser.parse_args()

    import torch
    from safetensors.torch import load_file, save_file

    from hyperedit.bench import make_record, write_results
    from hyperedit.checkpoints import half_matrices, resolve_checkpoint
    from hyperedit.data import load_requests
    from hyperedit.editors import get_editor
    from hyperedit.eval import evaluate, locality_reference
    from hyperedit.models import load_model

    torch.set_num_threads(args.threads)
    lm = load_model(args.model)
    requests = load_requests(args.data, limit=args.n)
    reference = locality_reference(lm.adapter, requests)
    folder = resolve_checkpoint(args.checkpoint, "editor.json")
    records, shifts = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        half = Path(tmp) / "float16"
        half.mkdir()
        shutil.copyfile(folder / "editor.json", half / "editor.json")
        save_file(half_matrices(load_file(str(folder / "editor.safetensors"))), str(half / "editor.safetensors"))
        for storage, path in (("float32", folder), ("float16", half)):
            editor = get_editor(args.editor, checkpoint=str(path), lm=lm)
            start = time.perf_counter()
            delta = editor.edit(lm, requests)
            seconds = time.perf_counter() - start
            with delta.applied(lm.model):
                metrics, _ = evaluate(lm.adapter, requests, reference)
            shifts[storage] = delta.shifts
            records.append(make_record(editor=args.editor, model=args.model, dataset=args.data.split(":")[0],
                                       split=args.data.split(":")[-1], mode="batch", n_edits=len(requests),
                                       metrics=metrics, edit_time_s=seconds, peak_rss_mb=None,
                                       command="python " + " ".join(sys.argv), storage=storage,
                                       stored_bytes=(path / "editor.safetensors").stat().st_size))
    worst = max(float((shifts["float16"][k] - s).norm() / s.norm().clamp_min(1e-30)) for k, s in shifts["float32"].items()
                if k in shifts["float16"])
    same_modules = sorted(shifts["float16"]) == sorted(shifts["float32"])
    for r in records:
        r.update(max_rel_shift_diff=worst, same_modules=same_modules)
    write_results(records, args.out, RESULTS_DIR, title=f"{args.editor}: float16 storage against float32",
                  notes=f"Rows: the checkpoint as trained (float32), then its float16 copy "
                  f"({records[0]['stored_bytes']:,} -> {records[1]['stored_bytes']:,} bytes). Largest relative "
                  f"difference of a module's shift: {worst:.2e}; same modules shifted: {same_modules}.")


if __name__ == "__main__":
    main()
