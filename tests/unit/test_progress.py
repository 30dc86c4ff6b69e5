"""Progress bars: one switch (HYPEREDIT_PROGRESS) for every long loop, and a caller can silence its own."""
from __future__ import annotations

import pytest

from hyperedit.progress import progress


@pytest.mark.parametrize("setting, enabled, shown", [
    ("1", True, True),
    ("1", False, False),   # e.g. a non-main rank, or a caller asked to be quiet
    ("0", True, False),
    ("0", False, False),
])
def test_bar_follows_environment_and_caller(monkeypatch, setting, enabled, shown):
    monkeypatch.setenv("HYPEREDIT_PROGRESS", setting)
    bar = progress(range(4), desc="work", enabled=enabled)
    assert bar.disable is (not shown)
    assert list(bar) == [0, 1, 2, 3]


def test_off_writes_nothing(monkeypatch, capsys):
    monkeypatch.setenv("HYPEREDIT_PROGRESS", "0")
    bar = progress(total=5, initial=2, desc="train", unit="step")
    bar.update(3)
    bar.close()
    assert capsys.readouterr().err == ""


def test_resumed_bar_starts_at_initial(monkeypatch):
    monkeypatch.setenv("HYPEREDIT_PROGRESS", "1")
    bar = progress(total=10, initial=4, desc="train", unit="step")
    assert bar.n == 4
    bar.close()
