"""How much room a null-space memory leaves, layer by layer: how many facts fit before a stream's
memory of earlier edits holds every direction a new edit may write in.

With ``nullspace=true`` (AlphaEdit, and HiEdit / RLEdit with direction control) a shift is written in
U's range, U the eigenvectors of the module's key second moment C0 (generic text) with eigenvalue
below ``nullspace_threshold``; the earlier edits' keys K_p^T K_p join every later solve, and a
direction in which ``U^T K_p^T K_p U`` is above the ridge ``e^lambda`` is one a new edit is cut back
in (``hyperedit.editors.locate.held_directions``). This script reads, from the unedited model, the
keys an editor remembers (MALMEN's rows: the positions predicting the target) for the first ``--n``
requests of a split and counts, every ``--every`` facts and for every down_proj module of ``--layers``,
the null space's size (``null_dims``) and the directions the memory holds (``held_dims``), at each
``--thresholds`` value. No edit is made: the keys are the unedited model's, so this is the room a
stream starts with, not the one its own edits leave (they move the keys: docs/lifelong.md, round 15).

The ridge is the shipped HiEdit's learned ``e^lambda`` in its own modules (layers 24-29) and, in
every other layer, the same multiple of the mean squared key norm (``ridge_rel``). ``--energies``
(below 1) also counts a memory that keeps of each edit's ``--batch`` requests only the strongest
directions of its keys in U's range, as many as hold that share of their energy: whether fewer
memory rows per fact would leave room (in ``--energy-layers`` only; one eigendecomposition per edit).
``--contrast N --contrast-memory M`` also remembers the contrast rows a stream with those options
keeps (docs/malmen.md, "Contrast rows"), so their share of the fill can be told from the facts' own.

    python benchmarks/memory_room.py --data zsre:knowedit-test --out memory_room_zsre
    python benchmarks/memory_room.py --data counterfact:val --out memory_room_cf
    python benchmarks/memory_room.py --data counterfact:val --layers 24-29 --thresholds 0.1,0.3 --energies "" \
        --contrast 2 --contrast-memory 20 --out memory_room_cf_contrast2

Writes benchmarks/results/<out>.{json,md,png}: one record per module, threshold and energy, its
``held_by_facts`` curve, and a plot of the null space's size and the room left after ``--n`` facts.
"""
from __future__ import annotations

from pathlib import Path

import argparse
import logging
import time

RESULTS_DIR = Path(__file__).resolve().parents[1] / "benchmarks" / "results"

log = logging.getLogger("memory_room")

NOTES = """Room of a null-space memory per module (no edit is made; keys of the unedited model; see the
script's docstring). null_dims: eigenvalues of C0 below the threshold; held_dims / held_share: of those,
the directions in which the memory of the first n_edits facts' keys is above the ridge; room_left:
null_dims - held_dims; facts_to_half: facts after which half the null space is held (None: not within
n_edits). energy < 1: each edit's keys kept only along their strongest directions in U's range."""


def truncated_memory(U, keys, owner, batch: int, checkpoints: list[int], energy: float, ridge: float) -> dict:
    """``{n: held_dims}`` of a memory that keeps, per edit of ``batch`` requests, the fewest eigen-
    directions of its keys' Gram in U's range that hold ``energy`` of its trace."""
    import torch

    from hyperedit.editors.locate import held_directions

    reduced = keys @ U
    memory = torch.zeros(U.shape[1], U.shape[1], dtype=torch.float64)
    curve = {}
    for start in range(0, max(checkpoints), batch):
        rows = reduced[(owner >= start) & (owner < start + batch)]
        if len(rows):
            evals, evecs = torch.linalg.eigh(rows.T @ rows)
            evals, evecs = evals.flip(0).clamp_min(0), evecs.flip(1)
            share = evals.cumsum(0) / evals.sum().clamp_min(1e-300)
            k = int((share < energy).sum()) + 1
            memory += evecs[:, :k] @ torch.diag(evals[:k]) @ evecs[:, :k].T
        if start + batch in checkpoints:
            identity = torch.eye(len(memory), dtype=memory.dtype)  # the memory is kept in U's coordinates
            curve[start + batch] = held_directions(identity, memory, ridge)["held_dims"]
    return curve


def with_contrast_rows(lm, requests, keys, owner, names, args):
    """``keys``/``owner`` with the contrast rows a stream of ``--batch`` requests per edit remembers
    (``contrast=--contrast``, ``contrast_memory=--contrast-memory``, weight 1), each owned by its
    edit's first request so it joins the memory with that edit."""
    import torch

    from hyperedit.editors.hypernet import asked, subject_swaps
    from malmen_leverage import read_keys  # the same key reading as the leverage benchmark

    pairs, subjects, first = [], [], []
    for start in range(0, len(requests), args.batch):
        earlier = asked(requests[max(0, start - args.contrast_memory):start]) if args.contrast_memory else ()
        for prompt, target, subject in subject_swaps(requests[start:start + args.batch], args.contrast, earlier):
            pairs.append((prompt, target))
            subjects.append(subject)
            first.append(start)
    swap_keys, swap_owner = read_keys(lm, pairs, subjects, names, "ans")
    swap_owner = torch.tensor(first, dtype=torch.long)[swap_owner]
    return ({n: torch.cat([keys[n], swap_keys[n]]) for n in names}, torch.cat([owner, swap_owner]))


def run(args) -> list[dict]:
    import torch

    from hyperedit.bench import current_command, make_record, write_results
    from hyperedit.commands._common import dataset_label
    from hyperedit.commands._training_setup import parse_layers
    from hyperedit.data import load_requests
    from hyperedit.editors import get_editor
    from hyperedit.editors.locate import held_directions, null_space_basis
    from hyperedit.models import load_model
    from hyperedit.stats import key_second_moments
    from malmen_leverage import read_keys  # the same key reading as the leverage benchmark

    torch.set_num_threads(args.threads)
    lm = load_model(args.model)
    low = get_editor("hiedit", lm=lm).low
    learned = {name: low.learned_ridge(name) for name in low.module_names}
    names = lm.adapter.module_names(parse_layers(args.layers), "down")
    energy_names = set(lm.adapter.module_names(parse_layers(args.energy_layers), "down"))
    started = time.perf_counter()
    c0 = key_second_moments(lm, names, n_samples=low.config.ridge_samples)
    dataset, split = dataset_label(args.data)
    requests = load_requests(args.data, limit=args.n)
    n = len(requests)
    read = sorted(set(names) | set(learned), key=lm.adapter.layer_of)  # the ridge comes from HiEdit's modules
    keys, owner = read_keys(lm, [(r.prompt, r.target) for r in requests], [r.subject for r in requests], read, "ans")
    if args.contrast:
        keys, owner = with_contrast_rows(lm, requests, keys, owner, read, args)
    checkpoints = sorted({min(c, n) for c in range(args.every, n + args.every, args.every)})
    ratio = sum(lam / float(keys[m].pow(2).sum(1).mean()) for m, lam in learned.items()) / len(learned)
    command, records = current_command(), []
    for name in names:
        K = keys[name]
        ridge = learned.get(name, ratio * float(K.pow(2).sum(1).mean()))
        grams, gram, last = {}, torch.zeros(K.shape[1], K.shape[1], dtype=torch.float64), 0
        for c in checkpoints:  # the memory's K_p^T K_p after c facts, summed on
            rows = K[(owner >= last) & (owner < c)]
            gram, last = gram + rows.T @ rows, c
            grams[c] = gram
        for threshold in args.thresholds:
            U = null_space_basis(c0[name].cpu(), threshold)
            curves = {1.0: {c: held_directions(U, grams[c], ridge)["held_dims"] for c in checkpoints}}
            if name in energy_names:
                for energy in (e for e in args.energies if e < 1):
                    curves[energy] = truncated_memory(U, K, owner, args.batch, checkpoints, energy, ridge)
            for energy, curve in curves.items():
                null_dims, final = int(U.shape[1]), curve[checkpoints[-1]]
                half = next((c for c in checkpoints if curve[c] >= null_dims / 2), None) if null_dims else None
                metrics = {"null_dims": null_dims, "held_dims": final, "room_left": null_dims - final,
                           "held_share": final / null_dims if null_dims else None, "facts_to_half": half}
                records.append(make_record(
                    editor="null-space memory", model=lm.name, dataset=dataset, split=split, mode="lifelong",
                    n_edits=n, metrics=metrics, edit_time_s=0.0, peak_rss_mb=None, command=command, seed=0,
                    module=name, layer=lm.adapter.layer_of(name), threshold=threshold, energy=energy,
                    ridge=ridge, ridge_rel=ridge / float(K.pow(2).sum(1).mean()), batch=args.batch,
                    contrast=args.contrast, contrast_memory=args.contrast_memory,
                    n_rows=int(len(K)), held_by_facts={str(c): v for c, v in curve.items()}))
        log.info("%s: layer %d done (%.0f s)", dataset, lm.adapter.layer_of(name), time.perf_counter() - started)
    rows = f", with {args.contrast} contrast rows per fact (memory of {args.contrast_memory})" if args.contrast else ""
    write_results(records, args.out, RESULTS_DIR, title=f"Room of a null-space memory, {dataset} {split}{rows}", notes=NOTES,
                  columns=("layer", "threshold", "energy"))
    plot(records, args.out)
    return records


def plot(records: list[dict], out: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from hyperedit.bench.records import save_figure

    fig, ax = plt.subplots(figsize=(8, 4.5))
    full = [r for r in records if r["energy"] == 1.0]
    for i, threshold in enumerate(sorted({r["threshold"] for r in full})):
        rows = sorted((r for r in full if r["threshold"] == threshold), key=lambda r: r["layer"])
        layers = [r["layer"] for r in rows]
        color = f"C{i}"
        ax.plot(layers, [r["metrics"]["null_dims"] for r in rows], "-o", color=color, ms=3,
                label=f"null space, threshold {threshold:g}")
        ax.plot(layers, [r["metrics"]["room_left"] for r in rows], "--", color=color,
                label=f"left after {rows[0]['n_edits']} facts")
    ax.set_xlabel("layer (down_proj)")
    ax.set_ylabel("directions (of 1,536)")
    ax.set_title(f"Room of a null-space memory: {full[0]['dataset']} {full[0]['split']}, unedited keys")
    ax.legend(fontsize=7)
    save_figure(fig, RESULTS_DIR / f"{out}.png")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--data", default="zsre:knowedit-test")
    parser.add_argument("--n", type=int, default=1000, help="facts (the first n requests of the split)")
    parser.add_argument("--batch", type=int, default=5, help="requests per edit (for --energies)")
    parser.add_argument("--every", type=int, default=100, help="facts between two counts")
    parser.add_argument("--layers", default="4-29")
    parser.add_argument("--thresholds", type=lambda s: [float(x) for x in s.split(",")], default=[0.02, 0.1, 0.3])
    parser.add_argument("--energies", type=lambda s: [float(x) for x in s.split(",") if x], default=[0.9, 0.5])
    parser.add_argument("--energy-layers", default="24-29")
    parser.add_argument("--contrast", type=int, default=0,
                        help="also remember this many subject-swapped prompts per request (contrast rows)")
    parser.add_argument("--contrast-memory", type=int, default=0, help="with --contrast: swap in the subjects of "
                        "this many earlier requests too, as a stream with contrast_memory does")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default="memory_room")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    run(args)


if __name__ == "__main__":
    main()
