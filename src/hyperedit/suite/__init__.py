"""The benchmark suite: named protocols in config files, one result JSON per experiment, and the
leaderboard written from those results (``hyperedit bench run`` / ``hyperedit bench report``).

It sits above ``eval`` and ``bench`` (whose records ``eval`` writes), so it lives in a room of its own.
"""
from .protocols import Protocol, load_protocols
from .report import write_report
from .run import experiment_name, run_protocol

__all__ = ["Protocol", "experiment_name", "load_protocols", "run_protocol", "write_report"]
