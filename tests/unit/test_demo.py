"""``hyperedit demo``: MetaKE by default, and the unrelated rows whose answer changed are named."""
from __future__ import annotations

import json

from hyperedit.cli import build_parser, main


def test_default_editor_is_metake():
    assert build_parser().parse_args(["demo"]).editor == "metake"


def test_changed_unrelated_rows_are_reported(model_dir, capsys):
    # a large step on every layer: the tiny model's unrelated answers move too
    assert main(["demo", "--model", model_dir, "--editor", "ft", "--tokens", "3", "--json", "-q",
                 "--set", "lr=0.5", "--set", "max_rel_norm=10", "--set", "steps=10"]) == 0
    out = json.loads(capsys.readouterr().out)
    unrelated = [r for r in out["rows"] if r["kind"] == "unrelated"]
    assert out["unrelated_rows"] == len(unrelated) == 4
    assert out["unrelated_changed"] == [r["prompt"] for r in unrelated if r["before"] != r["after"]]
    assert out["unrelated_changed"], "this edit was meant to disturb unrelated answers"
    assert out["edit_time_s"] > 0
