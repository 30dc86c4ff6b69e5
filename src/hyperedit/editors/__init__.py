"""Editors: one module per method, each registering itself behind the ``Editor`` protocol."""
from .base import Editor, editor_entry, editor_names, get_editor, make_config, register_editor

__all__ = ["Editor", "editor_entry", "editor_names", "get_editor", "make_config", "register_editor"]
