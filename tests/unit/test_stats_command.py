"""``hyperedit stats``: compute fills the cache, list shows it, export writes new files only."""
from __future__ import annotations

from pathlib import Path

from hyperedit.cli import main

CORPUS = Path(__file__).parents[1] / "fixtures" / "data" / "corpus.txt"


def test_compute_list_export(model_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HYPEREDIT_STATS_CACHE", str(tmp_path / "cache"))
    common = ["--model", model_dir, "--layers", "1-2", "--stats-corpus", str(CORPUS)]
    assert main(["stats", "compute", *common]) == 0
    cached = sorted((tmp_path / "cache").rglob("*.safetensors"))
    assert len(cached) == 2 and not list((tmp_path / "cache").rglob("partial-*"))
    assert main(["stats", "list"]) == 0
    assert "layers.1.mlp" in capsys.readouterr().out
    out = tmp_path / "export"
    assert main(["stats", "export", *common, "--packed", "--out", str(out)]) == 0
    exported = sorted(out.rglob("*.safetensors"))
    assert len(exported) == 2 and exported[0].stat().st_size < cached[0].stat().st_size
    assert main(["stats", "export", *common, "--packed", "--out", str(out)]) == 2  # never replaces
    assert "exists" in capsys.readouterr().err
    assert main(["stats", "compute", "--model", model_dir, "--layers", "x"]) == 2
    assert main(["stats", "compute", "--model", model_dir, "--layers", "1", "--stats-corpus",
                 str(tmp_path / "missing.txt")]) == 2
