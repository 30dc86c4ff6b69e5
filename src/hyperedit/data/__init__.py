"""Data loaders: benchmark splits and user files as ``EditRequest`` lists, general-ability
tasks as multiple-choice rows, and a text corpus for activation statistics.

See docs/data.md for the formats and the mapping of each benchmark's fields.
"""
from hyperedit.data._common import ENV_VAR, resolve_data_dir
from hyperedit.data.corpus import load_text_corpus
from hyperedit.data.fever import claim_prompt
from hyperedit.data.general import GENERAL_TASKS, load_general_tasks
from hyperedit.data.load import DATASETS, detect_format, load_file, load_requests

__all__ = [
    "DATASETS",
    "ENV_VAR",
    "GENERAL_TASKS",
    "claim_prompt",
    "detect_format",
    "load_file",
    "load_general_tasks",
    "load_requests",
    "load_text_corpus",
    "resolve_data_dir",
]
