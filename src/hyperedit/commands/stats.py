"""``hyperedit stats``: compute, list and export the key statistics of a model (docs/statistics.md)."""
from __future__ import annotations

import logging
from pathlib import Path

from ..errors import HyperEditError
from ._common import add_model_args, emit_json, load_model_from_args

log = logging.getLogger(__name__)


def register(sub) -> None:
    p = sub.add_parser("stats", help="compute, list and export key statistics (MEMIT, AlphaEdit, MetaKE, null spaces)",
                       description="Key statistics C = E[k k^T] of edited modules over a text corpus. `compute` "
                                   "fills the user cache (progress bar; an interrupted run resumes; files are "
                                   "written atomically), `list` shows the cached and shipped files, `export` "
                                   "writes them to a folder (e.g. to ship or share).")
    actions = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    for name, helptext in (("compute", "compute statistics into the user cache"),
                           ("export", "write statistics (from the cache, the shipped files or computed) to a folder")):
        q = actions.add_parser(name, help=helptext)
        add_model_args(q)
        q.add_argument("--layers", required=True, metavar="LIST",
                       help="layers, e.g. 4,5,6 or 4-8 or 4-8,24-29")
        q.add_argument("--module", default="down", help="MLP linear map of each layer (default: %(default)s)")
        q.add_argument("--stats-corpus", metavar="PATH", default=None,
                       help="text file, JSONL (field text) or folder of them; 'benchmark' for the benchmark "
                            "corpus (default: $HYPEREDIT_STATS_CORPUS, else the packaged corpus)")
        q.add_argument("--n-samples", type=int, default=2000, help="corpus texts used (default: %(default)s)")
        q.add_argument("--max-length", type=int, default=128, help="tokens per text (default: %(default)s)")
        q.add_argument("--batch-size", type=int, default=16)
        if name == "export":
            q.add_argument("--out", required=True, help="folder to write <model fingerprint>/<key>.safetensors into")
            q.add_argument("--packed", nargs="?", const="float16", choices=("float16", "float32"), default=None,
                           help="store the upper triangle only, in float16 (default; float32 where float16 "
                                "would overflow) or float32: the shipped layouts")
        q.set_defaults(func=run)
    q = actions.add_parser("list", help="list cached and shipped statistics")
    q.add_argument("--json", action="store_true", help="machine-readable output")
    q.set_defaults(func=run)


def parse_layers(spec: str) -> list[int]:
    """``"4-8,24"`` -> [4, 5, 6, 7, 8, 24]."""
    layers: list[int] = []
    try:
        for part in spec.split(","):
            lo, _, hi = part.strip().partition("-")
            layers += range(int(lo), int(hi or lo) + 1)
    except ValueError:
        raise HyperEditError(f"--layers: expected e.g. 4,5 or 4-8, got {spec!r}") from None
    if not layers or min(layers) < 0:
        raise HyperEditError(f"--layers: expected non-negative layer numbers, got {spec!r}")
    return sorted(set(layers))


def _list(args) -> int:
    from ..stats import list_stats

    rows = list_stats()
    if args.json:
        emit_json(rows)
        return 0
    if not rows:
        print("no key statistics cached or shipped")
    for r in rows:
        where = "shipped" if r["shipped"] else "cache"
        print(f"{where:<8} {r.get('model', '?'):<28} {r.get('module', '?'):<32} corpus {r.get('corpus', '?')} "
              f"n{r.get('n_texts', '?')} len{r.get('max_length', '?')} {r.get('n_tokens', '?')} tokens "
              f"{r['bytes'] / 1e6:.1f} MB")
    return 0


def _check_settings(args) -> None:
    for name in ("n_samples", "max_length", "batch_size"):
        if getattr(args, name) < 1:
            raise HyperEditError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")


def run(args) -> int:
    if args.action == "list":
        return _list(args)
    from ..stats import corpus_texts, key_second_moments, stats_keys
    from ..stats.store import find_stats, read_meta, write_stats

    _check_settings(args)
    layers = parse_layers(args.layers)
    texts = corpus_texts(args.stats_corpus, args.n_samples)  # a bad corpus fails before the model loads
    lm = load_model_from_args(args)
    if max(layers) >= lm.adapter.num_layers:
        raise HyperEditError(f"--layers: {lm.name} has layers 0-{lm.adapter.num_layers - 1}")
    modules = lm.adapter.module_names(layers, args.module)
    keys = stats_keys(lm, modules, texts, args.max_length)
    targets = []
    if args.action == "export":
        out = Path(args.out)
        targets = [out / k.model / f"{k.stem()}{'' if args.packed else '-float32'}.safetensors" for k in keys]
        taken = [str(t) for t in targets if t.exists()]
        if taken:
            raise HyperEditError(f"--out: {taken[0]} exists; export never replaces a file (remove it first)")
    stats = key_second_moments(lm, modules, corpus=texts, max_length=args.max_length, batch_size=args.batch_size)
    for key, target in zip(keys, targets):
        source = find_stats(key, "float32")
        tokens = (read_meta(source[1]) or {}).get("n_tokens", "unknown") if source else "unknown"
        write_stats(target, stats[key.module], key, n_tokens=tokens, dtype="float32", packed=args.packed)
        print(target)
    if args.action == "compute":
        print(f"key statistics of {len(modules)} module(s) of {lm.name} cached ({len(texts)} texts, "
              f"corpus {keys[0].corpus})")
    return 0
