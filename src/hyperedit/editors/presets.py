"""Editor settings measured for embedded models other than the default one.

The editors' own defaults were chosen on SmolLM2-135M (docs/locate_then_edit.md, editors/ft.py).
Another embedded model may need other values; those measured on its own CounterFact *train*
sample are listed here (Gemma-3-270M: docs/gemma.md, "Locate-then-edit configuration" and "ft
configuration") and used when the caller does not set the option. Explicit options always win.
"""
from __future__ import annotations

_GEMMA_LOCATE = {"layers": [6, 7, 8, 9], "v_lr": 5.0}

MODEL_PRESETS: dict[str, dict[str, dict]] = {
    "gemma3-270m": {
        "memit": _GEMMA_LOCATE,
        "alphaedit": _GEMMA_LOCATE,
        "metake": _GEMMA_LOCATE,
        "ft": {"max_rel_norm": 0.015},
    },
}


def preset_options(editor: str, model_name: str, explicit: dict | None = None) -> dict:
    """The measured settings of ``editor`` on ``model_name`` that ``explicit`` does not set."""
    preset = MODEL_PRESETS.get(model_name, {}).get(editor, {})
    explicit = explicit or {}
    return {k: (list(v) if isinstance(v, list) else v) for k, v in preset.items() if k not in explicit}
