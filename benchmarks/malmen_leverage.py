"""How much room MALMEN's least-squares solve leaves each fact, by key site and layers.

For N facts whose key rows are K (answer-predicting positions, as MALMEN solves with) and the ridge
``e^lambda``, the shift is ``S = (K^T K + e^lambda I)^-1 K^T D``, so the output change on any key k
is ``w(k)^T D`` with ``w(k) = K (K^T K + e^lambda I)^-1 k``: the weights with which every edit row's
value difference reaches k. The value differences D (the hypernetwork's part) only scale what these
weights allow, so they bound what any hypernetwork can write through this solve:

- ``self``: for an edit row i, ``w_i(k_i)`` (the hat-matrix diagonal): the share of its own value
  difference written back to it; ``cross``: ``||w_{-i}(k_i)||``, the other facts' reach into it;
- ``para_own``: for a rephrasing row, the summed weight on its own fact's rows (generalisation);
- ``loc_reach_ans``: for a locality prompt, the largest ``||w(k)||`` over its answer-predicting
  positions (where locality is scored); ``loc_reach_tokens`` the same over all its tokens but the
  first (an edit also reaches the scored positions through earlier ones, e.g. a similar subject);
- CounterFact only: ``same_relation_share``, the part of ``cross^2`` that comes from facts of the same
  relation (same prompt template), against ``same_relation_base``, their share of the rows.

Key sites: ``ans`` (MALMEN's rows) and ``subject`` (one row per fact, the last subject token, as
MEMIT and AlphaEdit read keys). Layers: the shipped editor's (24-29) and the locate-then-edit
editors' (4-8). The shipped editor's learned ``e^lambda`` per module sets the ridge relative to the
mean squared key norm of its rows; every other site/layer set gets the same relative ridge.
``--joint`` (our extension) also solves each layer set as one module over the keys of its modules side
by side: the six modules then write a fact together, each row's value difference being what they
write in all, so a fact whose key collides in one layer may be written through another. ``--ridges covariance`` solves
with ``K^T K + r C0`` instead of ``K^T K + r I`` (C0 the key second moment on generic text, scaled to
mean eigenvalue 1; the covariance ridge, MEMIT's penalty), through whitened keys; ``--ridge-scales``
multiplies every ridge, to trace how self and reach trade.

    python benchmarks/malmen_leverage.py --eval-subset 128 --out malmen_leverage
    python benchmarks/malmen_leverage.py --layer-sets 24-29 --sites ans,subject --joint --sizes 16,256,1024 \
        --eval-subset 128 --out malmen_leverage_joint
    python benchmarks/malmen_leverage.py --layer-sets 24-29 --sites ans --joint --sizes 1024 --ridges identity,covariance \
        --ridge-scales 0.3,1,3 --eval-subset 128 --out malmen_leverage_covariance

Writes benchmarks/results/<out>.json/.md (one record per dataset x site x layers x N).
"""
from __future__ import annotations

import argparse
import logging
import time
from collections import defaultdict
from itertools import product
from pathlib import Path

RESULTS_DIR = Path(__file__).resolve().parents[1] / "benchmarks" / "results"

RESULTS = Path(__file__).resolve().parent / "results"
log = logging.getLogger("malmen_leverage")

NOTES = """Leverage of MALMEN's least-squares solve (no edit is made; see the script's docstring).
self: share of an edit row's own value difference the solve writes back to it (1 = fully);
cross: norm of the other facts' weights reaching it; para_own: summed weight of a rephrasing row on
its own fact's rows; loc_reach_ans / loc_reach_tokens: mean over locality prompts of the largest weight norm over their
answer-predicting positions / all their tokens but the first; same_relation_share / same_relation_base (CounterFact): share of cross^2 from facts of
the same relation (prompt template) / their share of the rows. Means over the modules of the layer set and over the
first `n_evaluated` facts (2 rephrasings and 2 locality prompts each). ridge_rel: e^lambda divided
by the mean squared key norm of the rows solved with (the shipped editor's learned value at the
`ans` site of layers 24-29, carried over to the other sites)."""


def read_keys(lm, pairs, subjects, names, site: str, batch_size: int = 32):
    """Keys of every module in ``names`` for (prompt, target) ``pairs`` at ``site``: ``ans`` or
    ``subject`` (``hyperedit.lm.site_mask``; here a pair without its subject in the prompt gives no
    row), or ``tokens``, every token but the first (the attention sink, whose key norm is up to ten
    times the others'). Returns ``({name: (rows, d_in)}, owner)``, ``owner[r]`` the pair of row r."""
    import torch

    from hyperedit.hooks import capture
    from hyperedit.lm import site_mask

    keys, owner = defaultdict(list), []
    for start in range(0, len(pairs), batch_size):
        chunk = pairs[start:start + batch_size]
        prompts = [p for p, _ in chunk]
        batch = lm.adapter.encode(prompts, [t for _, t in chunk], device=lm.device)
        if site == "tokens":
            mask = batch["attention_mask"].bool().clone()
            mask[:, 0] = False
        else:
            chunk_subjects = subjects[start:start + len(chunk)]
            mask = site_mask(lm.adapter, batch, site, prompts, chunk_subjects)
            if site == "subject":
                mask[[not (s and s in p) for p, s in zip(prompts, chunk_subjects)]] = False
        owner += (start + torch.nonzero(mask)[:, 0]).tolist()
        with torch.no_grad(), capture(lm.model, names, grads=False) as cap:
            cap.mask = mask
            lm.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False)
        for name in names:
            keys[name].append(cap.key(name).double().cpu())
    return {n: torch.cat(v) for n, v in keys.items()}, torch.tensor(owner, dtype=torch.long)


def leverage(K, ridge, probes):
    """``W = K A^-1 P^T`` (rows of K x probe rows) with ``A = K^T K + ridge I``, for each probe
    matrix in ``probes``. Solved in the smaller of the two spaces: ``K A^-1 = (K K^T + ridge I)^-1 K``
    when there are fewer rows than key dimensions (the joint key of several layers)."""
    import torch

    if K.shape[0] < K.shape[1]:
        G = K @ K.T
        G.diagonal().add_(ridge)
        L = torch.linalg.cholesky(G)
        return [torch.cholesky_solve(K @ P.T, L) for P in probes]
    A = K.T @ K
    A.diagonal().add_(ridge)
    L = torch.linalg.cholesky(A)
    return [K @ torch.cholesky_solve(P.T, L) for P in probes]


def measure(edit, para, loc, n: int, n_eval: int, ridge: float, relations=None) -> dict:
    """The leverage metrics of one module for the first ``n`` facts (see the docstring)."""
    import torch

    (Ke, oe), (Kp, op) = edit, para
    rows = oe < n
    K, owner = Ke[rows], oe[rows]
    ev = owner < n_eval
    pm = op < n_eval
    loc_masks = {site: ol < n_eval for site, (_, ol) in loc.items()}
    W_e, W_p, *W_locs = leverage(K, ridge, [K[ev], Kp[pm]] + [Kl[loc_masks[s]] for s, (Kl, _) in loc.items()])
    out = {}
    idx = torch.nonzero(ev).flatten()
    own = W_e[idx, torch.arange(len(idx))]
    out["self"] = float(own.mean())
    cross = W_e.pow(2).sum(0) - own.pow(2)
    out["cross"] = float(cross.clamp_min(0).sqrt().mean())
    same_fact = owner[:, None] == op[pm][None, :]
    out["para_own"] = float((W_p * same_fact).sum(0).mean()) if W_p.numel() else None
    for (site, (_, ol)), W_l in zip(loc.items(), W_locs):
        reach = W_l.pow(2).sum(0).sqrt()
        per_prompt = defaultdict(float)
        for r, o in zip(reach.tolist(), ol[loc_masks[site]].tolist()):
            per_prompt[o] = max(per_prompt[o], r)
        out[f"loc_reach_{site}"] = sum(per_prompt.values()) / max(len(per_prompt), 1)
    if relations is not None:
        ids = {t: i for i, t in enumerate(dict.fromkeys(relations))}
        rel = torch.tensor([ids[relations[int(o)]] for o in owner])
        same = (rel[:, None] == rel[idx][None, :]) & (owner[:, None] != owner[idx][None, :])
        other = owner[:, None] != owner[idx][None, :]
        share = (W_e.pow(2) * same).sum(0) / (W_e.pow(2) * other).sum(0).clamp_min(1e-30)
        out["same_relation_share"] = float(share.mean())
        out["same_relation_base"] = float((same.sum(0).double() / other.sum(0).clamp_min(1)).mean())
    return out


def probe_texts(requests, n_eval: int):
    """(pairs, owners) of the rephrasings (with the new target) and locality prompts (with their
    answer) of the first ``n_eval`` requests, two of each."""
    para, para_owner, loc, loc_owner = [], [], [], []
    for i, r in enumerate(requests[:n_eval]):
        for text in r.rephrasings[:2]:
            para.append((text, r.target))
            para_owner.append(i)
        for item in r.locality[:2]:
            if item.answer:
                loc.append((item.prompt, item.answer))
                loc_owner.append(i)
    return para, para_owner, loc, loc_owner


def run(args) -> list[dict]:
    import torch

    from hyperedit.bench import current_command, make_record, write_results
    from hyperedit.commands._common import dataset_label
    from hyperedit.commands._training_setup import parse_layers
    from hyperedit.data import load_requests
    from hyperedit.editors import get_editor
    from hyperedit.models import load_model

    torch.set_num_threads(args.threads)
    lm = load_model(args.model)
    editor = get_editor("malmen", lm=lm)
    shipped = editor.module_names
    learned = {}
    for name in shipped:
        net, index = editor.nets.net_for(name)
        learned[name] = float(net.log_lambda[index].detach().exp())
    layer_sets = {spec: shipped if spec == "24-29" else lm.adapter.module_names(parse_layers(spec), "down")
                  for spec in args.layer_sets.split(",")}
    joint = {f"{spec} joint": names for spec, names in layer_sets.items()} if args.joint else {}
    sizes = [int(s) for s in args.sizes.split(",")]
    ridges, scales = args.ridges, args.ridge_scales
    whiteners = None
    command, records = current_command(), []
    for spec in args.datasets.split(","):
        dataset, split = dataset_label(spec)
        requests = load_requests(spec, limit=max(sizes))
        n_eval = min(args.eval_subset, len(requests))
        para, para_owner, loc, loc_owner = probe_texts(requests, n_eval)
        subjects = [r.subject for r in requests]
        # CounterFact (EasyEdit format) has no relation id: the prompt template stands for it.
        relations = ([r.prompt.replace(r.subject, "{}") if r.subject else f"#{i}" for i, r in enumerate(requests)]
                     if dataset == "counterfact" else None)
        all_names = sorted(set(sum(layer_sets.values(), [])), key=lm.adapter.layer_of)
        if "covariance" in ridges and whiteners is None:
            from hyperedit.stats import key_second_moments

            whiteners = {n: whitening(c) for n, c in key_second_moments(lm, all_names, n_samples=args.ridge_samples).items()}
        loc_sets = {}
        for loc_site in ("ans", "tokens"):
            loc_keys, rows = read_keys(lm, loc, [None] * len(loc), all_names, loc_site)
            loc_sets[loc_site] = (loc_keys, torch.tensor(loc_owner)[rows])
        for site in args.sites.split(","):
            log.info("%s: reading %s keys", spec, site)
            edit_keys, edit_owner = read_keys(lm, [(r.prompt, r.target) for r in requests], subjects, all_names, site)
            para_subjects = [requests[o].subject for o in para_owner]
            para_keys, para_rows = read_keys(lm, para, para_subjects, all_names, site)
            para_owner_t = torch.tensor(para_owner)[para_rows]
            # per ridge: the keys solved with (whitened by C0 for the covariance ridge), joint sets added
            keyed = {kind: [_with_joint(_whitened(keys, whiteners if kind == "covariance" else None), joint)
                            for keys in (edit_keys, para_keys, *(v[0] for v in loc_sets.values()))]
                     for kind in ridges}
            if site == "ans":
                ratios = {min(n, len(requests)): _ridge_ratio(learned, edit_keys, edit_owner, min(n, len(requests)))
                          for n in sizes}
            loc_owners = [owner for _, owner in loc_sets.values()]
            solved_sets = {**layer_sets, **{j: [j] for j in joint}}
            for kind, scale, (layers, names), n in product(ridges, scales, solved_sets.items(),
                                                            sorted({min(n, len(requests)) for n in sizes})):
                edit_k, para_k, *loc_k = keyed[kind]
                started, per_module = time.perf_counter(), []
                for name in names:
                    # the ridge is set on the raw keys; a joint key's squared norm is its modules' sum
                    mean_sq = sum(float(edit_keys[m][edit_owner < n].pow(2).sum(1).mean())
                                  for m in joint.get(name, [name]))
                    ridge = scale * (learned[name] if site == "ans" and layers == "24-29"
                                     else (args.ridge_rel or ratios[n]) * mean_sq)
                    loc_named = {ls: (keys[name], owner) for ls, keys, owner in zip(loc_sets, loc_k, loc_owners)}
                    m = measure((edit_k[name], edit_owner), (para_k[name], para_owner_t), loc_named,
                                n, min(n, n_eval), ridge, relations)
                    per_module.append(m | {"ridge_rel": ridge / mean_sq})
                metrics = {k: _mean([m[k] for m in per_module]) for k in per_module[0]}
                label = layers + ("" if kind == "identity" else f", {kind}") + ("" if scale == 1 else f", x{scale:g}")
                records.append(make_record(
                    editor=f"malmen-solve[{site},{label}]", model=lm.name, dataset=dataset, split=split,
                    mode="batch", n_edits=n, metrics=metrics, edit_time_s=time.perf_counter() - started,
                    peak_rss_mb=None, command=command, seed=0, site=site, layers=layers, ridge=kind,
                    ridge_scale=scale, n_evaluated=min(n, n_eval), n_rows=int((edit_owner < n).sum())))
                log.info("%s %s %s n=%d: %s", dataset, site, label, n,
                         {k: round(v, 3) for k, v in metrics.items() if v is not None})
                write_results(records, args.out, RESULTS_DIR, title="Leverage of MALMEN's least-squares solve", notes=NOTES)
    return records


def _with_joint(keys: dict, joint: dict) -> dict:
    """``keys`` and, under each joint set's name, the keys of its modules side by side: one solve over
    the concatenated key (the rows are the same positions in every module). Its ridge is the same
    multiple of the mean squared key norm as the modules'."""
    import torch

    return {**keys, **{name: torch.cat([keys[n] for n in names], dim=1) for name, names in joint.items()}}


def whitening(C):
    """``W`` with ``W W^T = C^-1``, C scaled to mean eigenvalue 1 (eigenvalues clamped at 1e-9), so that
    the covariance ridge's weights ``K (K^T K + r C)^-1 k`` are the identity ridge's on whitened keys
    ``K W`` and ``W^T k``: ``K W (W^T K^T K W + r I)^-1 W^T k``. The scaling makes the ridge ``r`` carry
    the same weight on average as with the identity (C0 on generic text; MEMIT's and the covariance
    ridge's penalty)."""
    import torch

    C = C.double()
    e, V = torch.linalg.eigh(C * C.shape[0] / C.trace())
    return V / e.clamp_min(1e-9).sqrt()


def _ridge_kinds(value: str) -> list[str]:
    kinds = value.split(",")
    if not set(kinds) <= {"identity", "covariance"}:
        raise argparse.ArgumentTypeError("identity and/or covariance")
    return kinds


def _whitened(keys: dict, whiteners: dict | None) -> dict:
    return keys if whiteners is None else {n: k @ whiteners[n] for n, k in keys.items()}


def _ridge_ratio(learned: dict, ans_keys: dict, owner, n: int) -> float:
    """Mean over the shipped modules of ``e^lambda / mean ||k||^2`` of their answer-site rows for n facts."""
    return sum(lam / float(ans_keys[m][owner < n].pow(2).sum(1).mean()) for m, lam in learned.items()) / len(learned)


def _mean(values):
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--datasets", default="counterfact:val,zsre:knowedit-test")
    parser.add_argument("--sizes", default="16,64,256,1024")
    parser.add_argument("--eval-subset", type=int, default=64)
    parser.add_argument("--ridge-rel", type=float, default=None,
                        help="e^lambda / mean squared key norm for every site (default: the shipped editor's)")
    parser.add_argument("--ridges", type=_ridge_kinds, default="identity",
                        help="identity and/or covariance (the key second moment C0 on generic text, scaled to mean "
                             "eigenvalue 1, as the ridge's shape)")
    parser.add_argument("--ridge-scales", type=lambda v: [float(x) for x in v.split(",")], default="1",
                        help="comma-separated multipliers of every ridge")
    parser.add_argument("--ridge-samples", type=int, default=2000, help="corpus texts for C0")
    parser.add_argument("--layer-sets", default="24-29,4-8", help="comma-separated layer ranges")
    parser.add_argument("--sites", default="ans,subject")
    parser.add_argument("--joint", action="store_true",
                        help="also solve each layer set as one module over its concatenated keys (our extension)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default="malmen_leverage")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    run(args)


if __name__ == "__main__":
    main()
