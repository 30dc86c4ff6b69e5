"""Benchmark helpers: result records of one schema, tables, figures, memory measurement."""
from .records import current_command, make_record, peak_rss_during, save_figure, write_results

__all__ = ["current_command", "make_record", "peak_rss_during", "save_figure", "write_results"]
