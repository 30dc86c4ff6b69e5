"""``hyperedit data list | fetch | verify``: the benchmark files hyperedit reads, on this machine."""
from __future__ import annotations

import json

from ..errors import HyperEditError

_WHERE = ("--data-dir DIR, else $HYPEREDIT_DATA_DIR, else the per-user directory "
          "($XDG_DATA_HOME/hyperedit/data, ~/.local/share/hyperedit/data)")


def register(sub) -> None:
    p = sub.add_parser("data", help="list, fetch and verify benchmark data (docs/data.md)",
                       description="The registry of the benchmark datasets hyperedit reads: source, licence, "
                                   "layout, sha256 and size of each file. `fetch` downloads into the data "
                                   "directory and checks every file's hash before it is put in place.")
    actions = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    listing = actions.add_parser("list", help="the datasets, their files and which are present")
    listing.add_argument("names", nargs="*", metavar="NAME", help="datasets to show (default: all)")
    listing.add_argument("--json", action="store_true", help="print the registry as JSON")
    fetch = actions.add_parser("fetch", help="download datasets into the data directory (hash-checked)")
    fetch.add_argument("names", nargs="+", metavar="NAME", help="a dataset (counterfact), a split "
                                                                "(counterfact:val) or `all`")
    fetch.add_argument("--mirror", metavar="URL", help="a server with the same paths as "
                                                       "raw.githubusercontent.com (hashes are checked all the same)")
    verify = actions.add_parser("verify", help="check the size and sha256 of the files present")
    verify.add_argument("names", nargs="*", metavar="NAME", help="datasets to check (default: all)")
    for action in (listing, fetch, verify):
        action.add_argument("--data-dir", help=f"data directory (fetch writes to {_WHERE}; list and verify "
                                               "read the directory the loaders read)")
        action.set_defaults(func=run)


def _datasets(names: list[str]):
    from ..data.registry import REGISTRY, get_dataset

    return list(REGISTRY.values()) if not names or names == ["all"] else [get_dataset(n) for n in names]


def _read_dir(explicit):
    """The directory the loaders read, or None when there is none."""
    from ..data._common import DataDirNotFound, resolve_data_dir

    try:
        return resolve_data_dir(explicit)
    except DataDirNotFound:
        return None


def _fetch_targets(names: list[str]):
    """(dataset, files) for each NAME, NAME:SPLIT or ``all``."""
    from ..data.load import DATASETS
    from ..data.registry import get_dataset, registry_file

    targets = []
    for name in names:
        if name in DATASETS:
            entry = registry_file(DATASETS[name])
            targets.append((get_dataset(name.split(":", 1)[0]), (entry,)))
        elif ":" in name:
            raise HyperEditError(f"unknown split {name!r}; known: {', '.join(DATASETS)}")
        else:
            targets += [(d, d.files) for d in _datasets([name])]
    return targets


def run(args) -> int:
    return {"list": _list, "fetch": _fetch, "verify": _verify}[args.action](args)


def _list(args) -> int:
    from ..data.load import SAMPLES

    datasets = _datasets(args.names)
    base = _read_dir(args.data_dir)
    if args.json:
        print(json.dumps([{"name": d.name, "licence": d.licence, "source": d.source, "fetchable": d.fetchable,
                           "files": [{"path": f.path, "records": f.records, "layout": f.layout, "size": f.size,
                                      "sha256": f.sha256, "url": f.url,
                                      "present": bool(base and (base / f.path).is_file())} for f in d.files]}
                          for d in datasets], indent=2))
        return 0
    print(f"data directory: {base if base else 'none yet (hyperedit data fetch NAME creates one)'}")
    for d in datasets:
        how = "hyperedit data fetch " + d.name if d.fetchable else "no confirmed public download: place by hand"
        print(f"\n{d.name}  ({sum(f.size for f in d.files) / 1e6:.1f} MB; {how})")
        print(f"  source:  {d.source}\n  licence: {d.licence}")
        for f in d.files:
            state = "present" if base and (base / f.path).is_file() else "missing"
            print(f"  {f.path:<40} {f.records:>6} records  {f.size / 1e6:>5.2f} MB  {state:<8} {f.layout}")
    print("\npackaged samples (offline, no data directory): " + ", ".join(SAMPLES))
    return 0


def _fetch(args) -> int:
    from ..data.fetch import fetch_dir, fetch_file

    targets = _fetch_targets(args.names)
    base = fetch_dir(args.data_dir)
    unfetchable = [d.name for d, files in targets if not all(f.url for f in files)]
    if unfetchable:
        raise HyperEditError(f"{', '.join(unfetchable)}: no confirmed public download (see `hyperedit data list`);"
                             f" place the files by hand in {base}")
    for _, files in targets:
        for entry in files:
            try:
                state = fetch_file(entry, base, mirror=args.mirror)
            except PermissionError as exc:
                raise HyperEditError(f"{base}: cannot write there ({exc.strerror})") from None
            print(f"{state:<8} {base / entry.path}")
    return 0


def _verify(args) -> int:
    from ..data.fetch import check_file
    from ..data.registry import how_to_get

    base = _read_dir(args.data_dir)
    if base is None:
        print("no benchmark data directory: nothing to verify (hyperedit data fetch NAME)")
        return 0
    print(f"data directory: {base}")
    bad = 0
    for d in _datasets(args.names):
        for f in d.files:
            state = check_file(f, base)
            bad += state not in ("ok", "missing")
            print(f"{state if state in ('ok', 'missing') else 'BAD':<8} {f.path}"
                  + ("" if state == "ok" else f"  ({how_to_get(f.path)})" if state == "missing" else f"  ({state})"))
    if bad:
        print(f"{bad} file(s) differ from the registry: move them away and fetch again")
    return 1 if bad else 0
