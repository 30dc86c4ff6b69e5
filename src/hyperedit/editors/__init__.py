"""Editors: one module per method, each registering itself with its capabilities.

Two families share their pieces inside a package each: ``editors.locate`` (MEMIT, AlphaEdit,
MetaKE: closed-form writes of optimised target vectors) and ``editors.hypernet`` (MALMEN, MEND,
RLEdit, HiEdit, UltraEdit: shifts from keys and value gradients); ``ft`` stands alone. The
contracts are in ``editors.protocols``, the registry in ``editors.base`` (``get_editor(name, ...)``
builds a registered editor; the first registry call imports the families, which register
themselves), the saved-editor files in ``editors.checkpoint``.
"""
from .base import EditorEntry, editor_entry, editor_names, editors_that, get_editor, make_config, register_editor
from .protocols import (Capabilities, Editor, LearnedRidge, MemoryReport, PinnableTargets, Proposal, SequentialState,
                        TrajectoryTrainable)

__all__ = [
    "Capabilities", "Editor", "EditorEntry", "LearnedRidge", "MemoryReport", "PinnableTargets", "Proposal",
    "SequentialState", "TrajectoryTrainable", "editor_entry", "editor_names", "editors_that", "get_editor",
    "make_config", "register_editor",
]
