"""Editors: one module per method, each registering itself with its capabilities.

The contracts are in ``editors.protocols``; ``get_editor(name, ...)`` builds a registered editor.
"""
from .base import EditorEntry, editor_entry, editor_names, editors_that, get_editor, make_config, register_editor
from .protocols import (Capabilities, Editor, LearnedRidge, MemoryReport, PinnableTargets, Proposal, SequentialState,
                        TrajectoryTrainable)

__all__ = [
    "Capabilities", "Editor", "EditorEntry", "LearnedRidge", "MemoryReport", "PinnableTargets", "Proposal",
    "SequentialState", "TrajectoryTrainable", "editor_entry", "editor_names", "editors_that", "get_editor",
    "make_config", "register_editor",
]
