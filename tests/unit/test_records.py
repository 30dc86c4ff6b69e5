"""Result records: schema, atomic JSON + markdown output, peak-RSS measurement."""
from __future__ import annotations

import datetime as dt
import json
import mmap
import sys
import time

import pytest

from hyperedit.bench.records import (
    REQUIRED,
    current_command,
    make_record,
    peak_rss_during,
    records_table,
    write_results,
)


def _record(**over):
    fields = dict(editor="ft", model="tiny", dataset="counterfact", split="val", mode="batch", n_edits=2,
                  metrics={"ES": 1.0, "GS": 0.5}, edit_time_s=1.23456, peak_rss_mb=123.456, command="hyperedit eval",
                  seed=3)
    fields.update(over)
    return make_record(**fields)


def test_make_record_has_every_required_field():
    r = _record(extra_field=7)
    assert all(k in r for k in REQUIRED)
    assert r["metrics"] == {"ES": 1.0, "GS": 0.5, "LS": None}  # missing metrics default to None
    assert r["edit_time_s"] == 1.2346 and r["peak_rss_mb"] == 123.5
    assert r["seed"] == 3 and r["n_edits"] == 2 and r["extra_field"] == 7
    assert dt.datetime.fromisoformat(r["date"]).tzinfo is not None
    json.dumps(r)  # serialisable


def test_make_record_rejects_unknown_mode():
    with pytest.raises(ValueError, match="mode"):
        _record(mode="parallel")


def test_make_record_default_command(monkeypatch):
    monkeypatch.setattr(sys, "argv", ["/usr/bin/hyperedit", "eval", "--data", "my file.jsonl"])
    assert current_command() == "hyperedit eval --data 'my file.jsonl'"
    assert _record(command=None)["command"] == "hyperedit eval --data 'my file.jsonl'"
    monkeypatch.setattr(sys, "argv", ["bench.py", "--n", "3"])
    assert current_command() == "python bench.py --n 3"


def test_write_results(tmp_path):
    records = [_record(), _record(editor="memit", mode="sequential", metrics={"ES": 0.25, "LS": 0.875, "fluency": 5.5},
                                  command="hyperedit eval --editor memit")]
    json_path, md_path = write_results(records, "run1", tmp_path / "results", title="My run", notes="Some notes.")
    assert json_path == tmp_path / "results" / "run1.json" and md_path == tmp_path / "results" / "run1.md"
    assert sorted(p.name for p in (tmp_path / "results").iterdir()) == ["run1.json", "run1.md"]  # no temp files
    assert json.loads(json_path.read_text()) == records
    md = md_path.read_text()
    assert md.startswith("# My run\n\nSome notes.\n")
    header = next(line for line in md.splitlines() if line.startswith("| editor"))
    assert header.split(" | ")[5:9] == ["ES", "GS", "LS", "fluency"]
    row = next(line for line in md.splitlines() if line.startswith("| memit"))
    assert "0.250" in row and "0.875" in row and "5.500" in row and " - " in row  # None shown as "-"
    assert "    hyperedit eval --editor memit" in md and "    hyperedit eval\n" in md


def test_write_results_overwrites(tmp_path):
    write_results([_record()], "x", tmp_path)
    write_results([_record(editor="again")], "x", tmp_path)
    assert json.loads((tmp_path / "x.json").read_text())[0]["editor"] == "again"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.json", "x.md"]


@pytest.mark.parametrize("missing", ["metrics", "seed", "date", "command"])
def test_write_results_refuses_incomplete_record(tmp_path, missing):
    bad = _record()
    del bad[missing]
    with pytest.raises(ValueError, match=missing):
        write_results([_record(), bad], "x", tmp_path)
    assert not tmp_path.exists() or list(tmp_path.iterdir()) == []


def test_records_table_rows():
    table = records_table([_record(), _record(split="test")])
    lines = table.strip().splitlines()
    assert len(lines) == 4 and lines[1].startswith("|---")
    assert lines[2].startswith("| ft | counterfact | val | batch | 2 | 1.000 | 0.500 | - |")


def test_records_table_names_the_model_when_records_mix_models():
    lines = records_table([_record(), _record(model="other")]).strip().splitlines()
    assert lines[0].startswith("| editor | model | dataset |")
    assert lines[2].startswith("| ft | tiny | counterfact |") and lines[3].startswith("| ft | other | counterfact |")


def _rss_mb() -> float:
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return float(line.split()[1]) / 1024
    pytest.skip("no /proc/self/status")


def test_peak_rss_during():
    before = _rss_mb()

    def allocate(n):
        # Fresh pages from the kernel, each touched: really resident. (A bytes object could be served
        # from memory the allocator already holds, e.g. after earlier memory-heavy tests.)
        with mmap.mmap(-1, n) as pages:
            for offset in range(0, n, mmap.PAGESIZE):
                pages[offset] = 1
            time.sleep(0.2)  # a peak that lasts, as in a real edit; it is unmapped before the call returns
            return len(pages)

    result, seconds, peak = peak_rss_during(allocate, 150 * 2**20)
    assert result == 150 * 2**20
    assert seconds >= 0
    assert peak >= before + 100  # the 150 MiB buffer was resident during the call


def test_records_table_shows_the_named_columns():
    table = records_table([_record(rows="same", n_rows=8), _record(rows="none")], columns=("rows", "n_rows"))
    head, _, first, second = table.strip().splitlines()
    assert head.split(" | ")[5:7] == ["rows", "n_rows"]
    assert first.split(" | ")[5:7] == ["same", "8"] and second.split(" | ")[5:7] == ["none", "-"]


def _figure():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots()
    ax.plot([0, 1], [1, 0])
    return fig


def test_save_figure_writes_png_and_replaces_only_our_results(tmp_path):
    import matplotlib.pyplot as plt

    from hyperedit.bench import save_figure
    from hyperedit.outputs import OutputError

    write_results([_record()], "run", tmp_path)
    fig = _figure()
    path = save_figure(fig, tmp_path / "run.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not plt.fignum_exists(fig.number)  # closed
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run.json", "run.md", "run.png"]  # no temp files
    first = path.read_bytes()
    save_figure(_figure(), path)  # an earlier result PNG beside its JSON is replaced
    assert path.is_file() and path.read_bytes()[:8] == first[:8]

    (tmp_path / "report.md").write_text("# a report\n\nProduced by:\n\n    python bench.py\n")
    save_figure(_figure(), tmp_path / "report.png")  # beside a result report: ours
    save_figure(_figure(), tmp_path / "report.png")

    foreign = tmp_path / "holiday.png"
    foreign.write_bytes(b"not ours")
    fig = _figure()
    with pytest.raises(OutputError, match="did not write"):
        save_figure(fig, foreign)
    assert foreign.read_bytes() == b"not ours"
    assert not plt.fignum_exists(fig.number)


def test_plots_without_matplotlib_fail_with_one_line_before_writing(tmp_path, monkeypatch):
    import sys

    from hyperedit.errors import HyperEditError
    from hyperedit.eval.lifelong_report import write_lifelong

    monkeypatch.setitem(sys.modules, "matplotlib", None)  # what an install without the plots extra sees
    with pytest.raises(HyperEditError, match=r"hyperedit\[plots\]"):
        write_lifelong([_record()], "run", tmp_path)
    assert list(tmp_path.iterdir()) == []
