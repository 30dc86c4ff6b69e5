"""Grouping of edited modules by weight shape: one shared network per ``(d_in, d_out)``."""
from __future__ import annotations


def group_by_shape(shapes: dict[str, tuple[int, int]]):
    """For modules ``{name: (d_in, d_out)}`` return ``(module_shapes, route, counts)``:
    ``route[name] = (shape_key, index within its group)`` with ``shape_key = "DINxDOUT"``, and
    ``counts[shape_key]`` the number of modules of that shape (insertion order kept)."""
    module_shapes = {name: (int(a), int(b)) for name, (a, b) in shapes.items()}
    route: dict[str, tuple[str, int]] = {}
    counts: dict[str, int] = {}
    for name, (d_in, d_out) in module_shapes.items():
        key = f"{d_in}x{d_out}"
        route[name] = (key, counts.get(key, 0))
        counts[key] = counts.get(key, 0) + 1
    return module_shapes, route, counts


def shape_of(key: str) -> tuple[int, int]:
    """``"DINxDOUT"`` -> ``(d_in, d_out)``."""
    d_in, d_out = (int(v) for v in key.split("x"))
    return d_in, d_out
