"""The package is layered: every module imports only from its own floor or those below it.

Each top-level module or sub-package of ``hyperedit`` is a room; ``FLOORS`` puts each room on a
floor. An import that reaches a higher floor, or a cycle between rooms of one floor, fails here,
naming the file and the import.
"""
from __future__ import annotations

import ast
from pathlib import Path

import hyperedit

PACKAGE = Path(hyperedit.__file__).parent

# Lowest first. A room may import rooms on its own floor or below (cycles are checked separately).
FLOORS = [
    {"version", "errors", "atomic", "progress", "outputs", "checkpoints", "distributed"},
    {"requests", "models", "hooks"},
    {"lm", "delta", "data", "nets", "stats", "prefix"},
    {"editors"},
    {"training", "eval", "bench", "ledger"},
    {"service", "suite"},
    {"commands", "cli", "__init__", "__main__"},
]
FLOOR_OF = {room: level for level, rooms in enumerate(FLOORS) for room in rooms}


def _room(path: Path) -> str:
    rel = path.relative_to(PACKAGE)
    return rel.parts[0] if len(rel.parts) > 1 else rel.stem


def _top_or_room(name: str) -> str:
    """``x`` of ``from hyperedit import x``: the room ``x``, or else the package top (``__version__``)."""
    return name if (PACKAGE / name).is_dir() or (PACKAGE / f"{name}.py").is_file() else "__init__"


def _imported_rooms(path: Path) -> set[str]:
    """Rooms of ``hyperedit`` that ``path`` imports (absolute or relative imports, at any depth)."""
    tree = ast.parse(path.read_text())
    depth_of_file = len(path.relative_to(PACKAGE).parts) - 1
    rooms = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                up = node.level - 1
                if up > depth_of_file:
                    continue
                base = list(path.relative_to(PACKAGE).parts[:depth_of_file - up])
                parts = base + (node.module.split(".") if node.module else [])
                if parts:
                    rooms.add(parts[0])
                else:  # ``from .. import x``: x is a room, or a name of the package top
                    rooms.update(_top_or_room(alias.name) for alias in node.names)
            elif node.module and node.module.split(".")[0] == "hyperedit":
                parts = node.module.split(".")[1:]
                rooms.update([parts[0]] if parts else [_top_or_room(a.name) for a in node.names])
        elif isinstance(node, ast.Import):
            for alias in node.names:
                parts = alias.name.split(".")
                if parts[0] == "hyperedit" and len(parts) > 1:
                    rooms.add(parts[1])
    return rooms


def _graph() -> dict[str, dict[str, list[str]]]:
    graph: dict[str, dict[str, list[str]]] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        room = _room(path)
        for other in _imported_rooms(path) - {room}:
            graph.setdefault(room, {}).setdefault(other, []).append(str(path.relative_to(PACKAGE)))
    return graph


def test_every_room_has_a_floor():
    rooms = {_room(p) for p in PACKAGE.rglob("*.py")}
    assert rooms - set(FLOOR_OF) == set(), "add new rooms to FLOORS"


def test_nothing_imports_upward():
    upward = [f"{file} ({room}) imports {other}"
              for room, targets in _graph().items() for other, files in targets.items()
              if other in FLOOR_OF and FLOOR_OF[other] > FLOOR_OF[room] for file in files]
    assert upward == []


def test_no_import_cycles_between_rooms():
    graph = {room: set(targets) for room, targets in _graph().items()}
    cycles = []

    def visit(node, trail):
        for nxt in graph.get(node, ()):
            if nxt == trail[0]:
                cycles.append(" -> ".join(trail + [nxt]))
            elif nxt not in trail and nxt > trail[0]:
                visit(nxt, trail + [nxt])

    for start in graph:
        visit(start, [start])
    assert cycles == []


def test_no_cycles_between_modules_of_commands():
    """``commands/train.py`` and ``commands/_trajectory.py`` once imported each other."""
    folder = PACKAGE / "commands"
    edges = {}
    for path in folder.glob("*.py"):
        tree = ast.parse(path.read_text())
        edges[path.stem] = {node.module for node in ast.walk(tree)
                            if isinstance(node, ast.ImportFrom) and node.level == 1 and node.module}
    mutual = sorted(f"{a} <-> {b}" for a in edges for b in edges[a] if a in edges.get(b, set()) and a < b)
    assert mutual == []


# ----- inside ``editors``: the families and the shared modules ------------------------------------
EDITORS = PACKAGE / "editors"
FAMILIES = ("locate", "hypernet")


def _editor_imports(path: Path, top_level_only: bool) -> set[str]:
    """Modules of ``hyperedit.editors`` (dotted, relative to it) that ``path`` imports."""
    tree = ast.parse(path.read_text())
    package = list(path.relative_to(EDITORS).parts[:-1])
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    found = set()
    for node in nodes:
        if isinstance(node, ast.ImportFrom) and node.level:
            up = node.level - 1
            if up > len(package):
                continue  # reaches above ``editors``
            parts = package[:len(package) - up] + (node.module.split(".") if node.module else [])
            found.add(".".join(parts) if parts else "")
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("hyperedit.editors"):
            found.add(node.module[len("hyperedit.editors."):])
    return found


def test_locate_family_does_not_import_the_hypernetwork_family():
    reaching = [f"{p.relative_to(PACKAGE)} imports {m}" for p in sorted((EDITORS / "locate").rglob("*.py"))
                for m in _editor_imports(p, top_level_only=False) if m.split(".")[0] == "hypernet"]
    assert reaching == []


def test_hypernetwork_family_takes_only_the_null_space_from_locate():
    """MALMEN's direction control reuses AlphaEdit's null space and key memory, nothing else."""
    reaching = [f"{p.relative_to(PACKAGE)} imports {m}" for p in sorted((EDITORS / "hypernet").rglob("*.py"))
                for m in _editor_imports(p, top_level_only=False)
                if m.split(".")[0] == "locate" and m != "locate.nullspace"]
    assert reaching == []


def test_shared_editor_modules_do_not_import_a_family_at_import_time():
    """The registry and the contracts sit below the families (a family is imported when the
    registry is first asked, ``base._load_builtin_editors``)."""
    reaching = [f"{p.relative_to(PACKAGE)} imports {m}" for p in sorted(EDITORS.glob("*.py"))
                for m in _editor_imports(p, top_level_only=True) if m.split(".")[0] in FAMILIES]
    assert reaching == []
