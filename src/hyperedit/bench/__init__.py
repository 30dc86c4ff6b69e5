"""Benchmark helpers: result records of one schema, tables, memory measurement."""
from .records import current_command, make_record, peak_rss_during, write_results

__all__ = ["current_command", "make_record", "peak_rss_during", "write_results"]
