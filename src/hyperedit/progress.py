"""Progress bars for long work: tqdm on stderr, shown only on a terminal unless asked.

``HYPEREDIT_PROGRESS=1`` forces bars on (e.g. in logs), ``=0`` turns them off.
"""
from __future__ import annotations

import os
import sys

from tqdm.auto import tqdm


def progress_enabled() -> bool:
    setting = os.environ.get("HYPEREDIT_PROGRESS")
    if setting is not None:
        return setting not in ("0", "", "false", "no")
    return sys.stderr.isatty()


def progress(iterable=None, total: int | None = None, desc: str | None = None, unit: str = "it",
             initial: int = 0, enabled: bool = True):
    """A tqdm bar (a silent pass-through when progress display is off, or when ``enabled`` is false,
    e.g. on every rank but the main one, or when the caller was asked to be quiet)."""
    return tqdm(iterable, total=total, desc=desc, unit=unit, initial=initial, leave=False,
                disable=not (enabled and progress_enabled()), dynamic_ncols=True)
