"""The leaderboard, written from the suite's result files only.

``write_report`` reads every record under the results folder that names its protocol, and writes
``docs/leaderboard.md``: per protocol a table of teacher-forced and generated metrics side by side
with how far the generated ones fall below, the ranking of editors by each, and a figure beside it
(quality against number of facts; quality against edit time per fact). The README's table of
where each method stands is ``readme_table`` over the same records (``readme_block`` between the
markers), so a test can keep the two equal.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

from ..atomic import atomic_write_text
from ..bench.records import save_figure
from ..outputs import claim
from .run import LEADERBOARD_DIR

log = logging.getLogger(__name__)

README_START, README_END = "<!-- leaderboard:start -->", "<!-- leaderboard:end -->"
TRIPLES = (("ES", "GS", "LS"), ("ES_gen", "GS_gen", "LS_gen"))
EXTRA = ("PS", "PS_gen", "MH", "MH_tf", "MH_pre")
# The README summary: protocol name -> column title.
README_PROTOCOLS = {"counterfact-val-100": "CounterFact val, 100 facts", "zsre-100": "zsRE, 100 facts"}


def load_records(results_dir: str | Path | None = None) -> list[dict]:
    """Every record with a ``protocol`` in the folder's JSON files, in a stable order."""
    folder = Path(results_dir) if results_dir is not None else LEADERBOARD_DIR
    records = []
    for path in sorted(folder.glob("*.json")):
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            log.warning("%s: not a readable JSON file, left out", path)
            continue
        if isinstance(data, list):
            records += [r for r in data if isinstance(r, dict) and r.get("protocol")]
    return sorted(records, key=lambda r: (r["protocol"], r["model"], r.get("editor_label", r["editor"])))


def _fmt(value) -> str:
    return "-" if value is None else f"{value:.3f}".replace("0.", ".", 1) if isinstance(value, float) else str(value)


def _triple(metrics: dict, keys) -> str:
    return " / ".join(_fmt(metrics.get(k)) for k in keys)


def score(metrics: dict, keys) -> float | None:
    """Mean of the three metrics (None when one is missing)."""
    values = [metrics.get(k) for k in keys]
    return None if any(v is None for v in values) else sum(values) / len(values)


def per_fact_seconds(record: dict) -> float:
    return record["edit_time_s"] / max(1, record["n_edits"])


def _label(record: dict) -> str:
    return record.get("editor_label", record["editor"])


def gaps(metrics: dict) -> list[float | None]:
    """Generated minus teacher-forced ES, GS, LS (None where either is missing)."""
    return [None if metrics.get(g) is None or metrics.get(t) is None else metrics[g] - metrics[t]
            for t, g in zip(*TRIPLES)]


def _gap(value: float | None) -> str:
    return "-" if value is None else f"{value:+.3f}"


def protocol_table(records: list[dict]) -> str:
    extras = [k for k in EXTRA if any(r["metrics"].get(k) is not None for r in records)]
    head = ["editor", "model", "facts", "ES / GS / LS", "ES / GS / LS generated", "gap ES, GS, LS", *extras,
            "s per fact"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in records:
        m = r["metrics"]
        cells = [_label(r), r["model"], r["n_edits"], _triple(m, TRIPLES[0]), _triple(m, TRIPLES[1]),
                 ", ".join(map(_gap, gaps(m))), *(_fmt(m.get(k)) for k in extras), f"{per_fact_seconds(r):.2f}"]
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    return "\n".join(lines)


def gap_table(records: list[dict]) -> str:
    """Per editor: the mean over its protocols of generated minus teacher-forced ES, GS, LS."""
    by_editor: dict[str, list[list[float | None]]] = {}
    for r in records:
        by_editor.setdefault(_label(r), []).append(gaps(r["metrics"]))
    lines = ["| editor | protocols | gap ES | gap GS | gap LS | gap of the mean |", "|---|---|---|---|---|---|"]
    for editor, rows in sorted(by_editor.items()):
        means = [_mean([row[k] for row in rows]) for k in range(3)]
        whole = None if None in means else sum(means) / 3
        lines.append(f"| {editor} | {len(rows)} | " + " | ".join(map(_gap, means + [whole])) + " |")
    return "\n".join(lines)


def _mean(values) -> float | None:
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None


MULTIHOP = (("MH_tf",), ("MH",))  # MQuAKE: ranked by multi-hop accuracy, teacher-forced and generated


def ranking_keys(records: list[dict]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """What a protocol's editors are ranked by: the mean of ES, GS, LS, or where fewer than two
    records have it (MQuAKE: no locality prompts) multi-hop accuracy."""
    both = [r for r in records if score(r["metrics"], TRIPLES[0]) is not None
            and score(r["metrics"], TRIPLES[1]) is not None]
    return TRIPLES if len(both) >= 2 or not any(r["metrics"].get("MH") is not None for r in records) else MULTIHOP


def rankings(records: list[dict]) -> tuple[list[str], list[str]]:
    """Editors ordered by ``ranking_keys``: teacher-forced, then generated (those with both)."""
    tf_keys, gen_keys = ranking_keys(records)
    both = [r for r in records if score(r["metrics"], tf_keys) is not None
            and score(r["metrics"], gen_keys) is not None]
    return ([_label(r) for r in sorted(both, key=lambda r: -score(r["metrics"], tf_keys))],
            [_label(r) for r in sorted(both, key=lambda r: -score(r["metrics"], gen_keys))])


def _ranked_by(records: list[dict]) -> str:
    return "mean of ES, GS, LS" if ranking_keys(records) == TRIPLES else "multi-hop accuracy (MH_tf, MH)"


def overtakes(teacher_forced: list[str], generated: list[str]) -> list[tuple[str, str]]:
    """(a, b) for each editor a that ranks below b teacher-forced and above it generated."""
    place = {e: i for i, e in enumerate(generated)}
    return [(low, high) for i, high in enumerate(teacher_forced) for low in teacher_forced[i + 1:]
            if place[low] < place[high]]


def ranking_summary(by_protocol: dict[str, list[dict]]) -> str:
    """One sentence, from the records: in which protocols the ranking of editors (``ranking_keys``)
    changes under the generated metrics, and which editor overtakes which."""
    changed, kept = [], []
    for name, rows in by_protocol.items():
        tf, gen = rankings(rows)
        if len(tf) < 2:
            continue
        swaps = overtakes(tf, gen)
        if swaps:
            changed.append(f"`{name}` ({'; '.join(f'{a} overtakes {b}' for a, b in swaps)})")
        else:
            kept.append(f"`{name}`")
    if not changed and not kept:
        return "No protocol has two editors with both teacher-forced and generated metrics yet."
    parts = []
    if changed:
        parts.append(f"Under the generated metrics the ranking of editors changes in {len(changed)} of "
                     f"{len(changed) + len(kept)} protocols: {', '.join(changed)}.")
    if kept:
        parts.append(f"It stays the same in {', '.join(kept)}.")
    return " ".join(parts)


def report_markdown(records: list[dict], figure: str | None) -> str:
    by_protocol: dict[str, list[dict]] = {}
    for r in records:
        by_protocol.setdefault(r["protocol"], []).append(r)
    out = ["# Leaderboard", "",
           "Written by `hyperedit bench report` from the result files of `hyperedit bench run` "
           "(one per protocol, editor and model); do not edit by hand. ES / GS / LS are teacher-forced "
           "token accuracies; the generated ones score the greedy continuation (prefix match after "
           "normalising case, whitespace and punctuation; LS: the continuation unchanged from the "
           "unedited model's). The gap is generated minus teacher-forced. PS: portability; MH: MQuAKE "
           "multi-hop accuracy (generated; MH_tf teacher-forced, MH_pre before editing).", "",
           ranking_summary(by_protocol), ""]
    if figure:
        out += [f"![quality against number of facts and against edit time]({figure})", ""]
    out += ["## Generated minus teacher-forced, per editor", "",
            "Mean over the protocols an editor was measured in (gap of the mean: of ES, GS, LS together).", "",
            gap_table(records), ""]
    for name, rows in by_protocol.items():
        out += [f"## {rows[0].get('protocol_title', name)} (`{name}`)", "", protocol_table(rows), ""]
        tf, gen = rankings(rows)
        if len(tf) > 1:
            verdict = "same order" if tf == gen else "**the ranking changes**"
            out += [f"Ranking by {_ranked_by(rows)}: teacher-forced {' > '.join(tf)}; generated "
                    f"{' > '.join(gen)} ({verdict}).", ""]
    commands = sorted({r["command"] for r in records})
    out += ["Produced by:", "", *[f"    {c}" for c in commands], "    hyperedit bench report", ""]
    return "\n".join(out)


def _plot(records: list[dict], path: Path) -> bool:
    """Two panels: mean score against number of facts, and against edit seconds per fact."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log.warning("plots skipped: matplotlib is not installed (install it to get docs/leaderboard.png)")
        return False
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    for keys, marker, kind in ((TRIPLES[0], "o", "teacher-forced"), (TRIPLES[1], "x", "generated")):
        by_editor: dict[str, list[tuple[int, float, float]]] = {}
        for r in records:
            s = score(r["metrics"], keys)
            if s is not None and r["mode"] == "batch":
                by_editor.setdefault(_label(r), []).append((r["n_edits"], per_fact_seconds(r), s))
        for editor, points in sorted(by_editor.items()):
            points.sort()
            left.plot([p[0] for p in points], [p[2] for p in points], marker=marker, label=f"{editor} ({kind})")
            right.scatter([max(p[1], 1e-3) for p in points], [p[2] for p in points], marker=marker)
    left.set(xscale="log", xlabel="facts in one edit", ylabel="mean of ES, GS, LS", title="quality vs facts")
    right.set(xscale="log", xlabel="edit seconds per fact", ylabel="mean of ES, GS, LS", title="quality vs edit time")
    left.legend(fontsize=6)
    save_figure(fig, path)
    return True


def write_report(results_dir: str | Path | None = None, out: str | Path = "docs/leaderboard.md",
                 readme: str | Path | None = None) -> list[Path]:
    """Write the leaderboard (and its figure) and, with ``readme``, that file's table block."""
    records = load_records(results_dir)
    if not records:
        from ..errors import HyperEditError

        raise HyperEditError(f"no suite results under {results_dir or LEADERBOARD_DIR}; run `hyperedit bench run` first")
    out = Path(out)
    figure = out.with_suffix(".png")
    claim(out, "result", option="--out", overwrite=True)
    atomic_write_text(out, report_markdown(records, figure.name))
    written = [out]
    if _plot(records, figure):
        written.append(figure)
    if readme is not None:
        path = Path(readme)
        atomic_write_text(path, replace_block(path.read_text(encoding="utf-8"), readme_table(records), str(path)))
        written.append(path)
    return written


def readme_table(records: list[dict]) -> str:
    """The README's table: per editor, teacher-forced and generated ES / GS / LS per summary protocol."""
    wanted = [r for r in records if r["protocol"] in README_PROTOCOLS]
    editors = list(dict.fromkeys(_label(r) for r in wanted))
    found = {(r["protocol"], _label(r)): r["metrics"] for r in wanted}
    head = ["editor"] + [f"{title}: {kind}" for title in README_PROTOCOLS.values()
                         for kind in ("teacher-forced", "generated")]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for editor in editors:
        cells = [editor]
        for protocol in README_PROTOCOLS:
            m = found.get((protocol, editor), {})
            cells += [_triple(m, TRIPLES[0]), _triple(m, TRIPLES[1])]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def readme_block(text: str) -> str | None:
    """The text between the README's markers (None when there are none)."""
    if README_START not in text or README_END not in text:
        return None
    return text.split(README_START, 1)[1].split(README_END, 1)[0].strip("\n") + "\n"


def replace_block(text: str, table: str, source: str = "README.md") -> str:
    from ..errors import HyperEditError

    if readme_block(text) is None:
        raise HyperEditError(f"{source}: no {README_START} ... {README_END} block to fill")
    before, rest = text.split(README_START, 1)
    after = rest.split(README_END, 1)[1]
    return f"{before}{README_START}\n{table}{README_END}{after}"
