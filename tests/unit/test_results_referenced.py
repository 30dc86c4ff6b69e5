"""Every committed result file backs a statement, and every result file a doc names exists.

A file under ``benchmarks/results/`` (outside ``leaderboard/``, which ``hyperedit bench report``
reads whole) is *named* when README.md, a user doc (``docs/*.md``), a research page
(``research/**/*.md``) or a shipped editor's ``training.json`` writes its name: the path under
``benchmarks/results/``, the file name alone, or ``stem.{md,png}`` style. The ``.json`` and
``.png`` of a named ``.md`` count as named, and so do the files of a folder whose ``README.md``
is named. A wildcard (``locate_*.md``) names nothing, but it must match a file.

To add a result: commit it and name its ``.md`` (or the file) where the statement it backs is
made. To drop one: remove it and every README/docs mention; research notes may keep citing it by
name (they say which commit holds the files that left the tree).
"""
from __future__ import annotations

import fnmatch
import itertools
import json
import re
import subprocess
from pathlib import Path

import pytest
from script_loader import load_script

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "benchmarks" / "results"
EXEMPT = "leaderboard"
RESULT_SUFFIXES = {".md", ".json", ".png", ".jsonl", ".txt", ".log"}
TOKEN = re.compile(r"[\w./{},*\-]+")


def _expand(token: str) -> list[str]:
    """``a.{md,png}`` -> ``a.md``, ``a.png`` (nested braces too)."""
    match = re.search(r"\{([^{}]*)\}", token)
    if not match:
        return [token]
    return list(itertools.chain.from_iterable(
        _expand(token[:match.start()] + part + token[match.end():]) for part in match.group(1).split(",")))


def mentions(text: str) -> list[tuple[str, bool]]:
    """Every file-like name in ``text``: (name relative to the results folder when written with
    ``benchmarks/results/``, else as written; whether it was written with that path)."""
    out = []
    for token in TOKEN.findall(text):
        for name in _expand(token):
            name = name.strip(".,")
            if Path(name).suffix not in RESULT_SUFFIXES and not name.endswith("/"):
                continue
            qualified = "benchmarks/results/" in name
            out.append((name.split("benchmarks/results/")[-1].rstrip("/"), qualified))
    return out


def result_files() -> list[str]:
    return sorted(p.relative_to(RESULTS).as_posix() for p in RESULTS.rglob("*")
                  if p.is_file() and p.relative_to(RESULTS).parts[0] != EXEMPT)


def sources(user_facing_only: bool = False) -> list[Path]:
    found = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    if not user_facing_only:
        found += sorted((ROOT / "research").rglob("*.md"))
        found += sorted((ROOT / "src" / "hyperedit").rglob("training.json"))
    return found


def is_named(rel: str, names: set[str]) -> bool:
    path = Path(rel)
    candidates = {rel, path.name}
    if path.suffix in {".json", ".png"}:
        candidates |= {path.with_suffix(".md").as_posix(), path.with_suffix(".md").name}
    for parent in path.parents:
        if parent != Path("."):
            candidates |= {parent.as_posix(), (parent / "README.md").as_posix()}
    return bool(candidates & names)


def _looks_like_a_result(name: str, families: set[str], elsewhere: set[str]) -> bool:
    """A bare file name a doc may mean as a result: its first word is one that result files
    start with (``malmen``, ``locate``, ...) and no other file of the repository has that name."""
    stem = Path(name).name.split(".")[0]
    return "_" in stem and stem.split("_")[0] in families and Path(name).name not in elsewhere


pytestmark = pytest.mark.skipif(not RESULTS.is_dir(), reason="no benchmarks/results in this checkout")


def test_mentions_expand_braces_and_strip_the_results_path():
    text = "see `benchmarks/results/a_b.{md,png}` and ../benchmarks/results/c_d.json, or e.md."
    assert mentions(text) == [("a_b.md", True), ("a_b.png", True), ("c_d.json", True), ("e.md", False)]
    assert is_named("a_b.json", {"a_b.md"}) and not is_named("a_b.json", {"a_bc.md"})
    assert is_named("dir/x.jsonl", {"dir/README.md"}) and not is_named("x_y.md", {"x_y.png"})


def test_every_result_file_is_named_by_a_doc():
    names = {name for src in sources() for name, _ in mentions(src.read_text())}
    unnamed = [rel for rel in result_files() if not is_named(rel, names)]
    assert not unnamed, (
        f"{len(unnamed)} file(s) under benchmarks/results/ back no statement: name each (its .md) in "
        f"README.md, docs/*.md or research/ where its finding is stated, or remove it: {unnamed}")


def test_every_result_file_the_readme_and_docs_name_exists():
    present = result_files()
    families = {Path(rel).name.split("_")[0] for rel in present if "_" in Path(rel).name}
    elsewhere = {p.name for top in ("docs", "research", "src", "tests", "benchmarks", "scripts")
                 for p in (ROOT / top).rglob("*") if p.is_file() and RESULTS not in p.parents}
    elsewhere |= {p.name for p in ROOT.iterdir() if p.is_file()}
    missing = []
    for src in sources(user_facing_only=True):
        for name, qualified in mentions(src.read_text()):
            if not (qualified or _looks_like_a_result(name, families, elsewhere)):
                continue
            if "*" in name:
                found = any(fnmatch.fnmatch(rel, name) or fnmatch.fnmatch(Path(rel).name, name) for rel in present)
            else:
                found = (RESULTS / name).exists() or any(Path(rel).name == name for rel in present)
            if not found:
                missing.append(f"{src.relative_to(ROOT)}: {name}")
    assert not missing, f"named as results but not under benchmarks/results/: {sorted(set(missing))}"


def _has_commit(revision: str) -> bool:
    try:
        return subprocess.run(["git", "-C", str(ROOT), "cat-file", "-e", f"{revision}^{{commit}}"],
                              capture_output=True).returncode == 0
    except OSError:
        return False


def test_a_study_reads_present_inputs_from_the_tree_and_refuses_unknown_ones_in_one_line():
    committed = load_script("research/committed_results.py")
    assert committed.read_records("malmen_tradeoff") == json.loads((RESULTS / "malmen_tradeoff.json").read_text())
    with pytest.raises(SystemExit, match=r"benchmarks/results/no_such_result\.json: not in the tree"):
        committed.read_records("no_such_result")


def test_the_tradeoff_map_recollected_through_git_history_is_the_committed_one():
    committed = load_script("research/committed_results.py")
    if not _has_commit(committed.PRUNED_AT):
        pytest.skip(f"this checkout has no commit {committed.PRUNED_AT} (shallow clone or no git)")
    rows = load_script("research/malmen_tradeoff.py").collect()
    saved = json.loads((RESULTS / "malmen_tradeoff.json").read_text())
    assert len(rows) == len(saved) > 0
    key = lambda r: (r["label"], r["dataset"], r["editor"])  # noqa: E731
    assert {key(r): r["metrics"] for r in rows} == {key(r): r["metrics"] for r in saved}
