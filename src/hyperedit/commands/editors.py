"""``hyperedit editors``: list the available editing methods and their options."""
from __future__ import annotations

import dataclasses


def register(sub) -> None:
    p = sub.add_parser("editors", help="list editing methods and their options")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..editors import editor_entry, editor_names
    from ..editors.hypernet import shipped_folders

    for name in editor_names():
        entry = editor_entry(name)
        shipped = [model for model in shipped_folders(name) if model]
        trained = ""
        if entry.needs_checkpoint:
            trained = (f" (trained: shipped for {', '.join(shipped)}; other models need --checkpoint)" if shipped
                       else " (trained: needs --checkpoint)")
        print(f"{name:<12} {entry.summary}{trained}")
        for f in dataclasses.fields(entry.config_class):
            default = f.default if f.default is not dataclasses.MISSING else (
                f.default_factory() if f.default_factory is not dataclasses.MISSING else "required")
            print(f"{'':<14}--set {f.name}={default!r}")
    return 0
