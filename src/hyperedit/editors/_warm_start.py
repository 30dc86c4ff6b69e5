"""``--init-from``: which trained editor a training starts from, and the shape it imposes.

An editor declares the editors it may start from at ``register_editor(warm_start=...)``, the
usual one first; the class chooses among them by the checkpoint (``warm_start_editor``, e.g.
HiEdit: a HiEdit checkpoint, else its low level's kind; None: the usual one). The hypernetwork shape of the new
editor's config (``warm_start_shape`` of the source: layers, module kind, rank, blocks, key site,
HiEdit's policy) is set to the checkpoint's, since the weights must fit.
"""
from __future__ import annotations

import logging
from typing import Sequence

from ..errors import HyperEditError

log = logging.getLogger(__name__)


def saved_editor(path: str) -> str | None:
    """The editor name a checkpoint (or training run) directory says it holds (None: unreadable;
    loading it says what is wrong)."""
    from .checkpoint import read_editor

    try:
        return read_editor(path).editor
    except (HyperEditError, OSError):
        return None


def warm_start_source(editor: str, config, checkpoint: str, keep: Sequence[str] = ()):
    """The trained editor at ``checkpoint`` that training ``editor`` starts from. ``config``'s
    shape options are set to the checkpoint's (each change logged), except those in ``keep``
    (e.g. ``token``, given explicitly: shapes do not depend on the key site)."""
    from .base import editor_entry, get_editor

    entry = editor_entry(editor)
    sources = entry.capabilities.warm_start
    if not sources:
        raise HyperEditError(f"--init-from: editor {editor!r} takes no warm start")
    wanted = entry.factory.warm_start_editor(config, saved_editor(checkpoint)) or sources[0]
    source = get_editor(wanted, checkpoint=checkpoint)
    for key in source.warm_start_shape():
        if key in keep:
            log.info("--init-from: %s = %s (given; the checkpoint's is %s)", key, getattr(config, key),
                     getattr(source.config, key))
        elif getattr(config, key) != getattr(source.config, key):
            log.info("--init-from: %s = %s (the checkpoint's)", key, getattr(source.config, key))
            setattr(config, key, getattr(source.config, key))
    return source
