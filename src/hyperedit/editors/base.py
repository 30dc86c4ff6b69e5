"""The registry every editor joins, with what it declares it can do.

An editor turns requests into an ``EditDelta`` and leaves the model as it found it
(``protocols.Editor``). The CLI, the evaluation runners and the benchmarks only talk to the
protocols of ``editors.protocols`` and to the ``Capabilities`` declared here, never to a method
by name. Editors with learned state (hypernetworks) also implement ``from_checkpoint``.
"""
from __future__ import annotations

import dataclasses
import functools
import logging
import math
from typing import Any, Callable, Sequence

from ..delta import EditDelta
from ..errors import HyperEditError, OptionError
from ..models.limits import check_request_lengths
from ..models.loading import LoadedModel
from ..requests import EditRequest
from .protocols import TRAINING_KINDS, Capabilities, Editor, SequentialState, TrajectoryTrainable, implements

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class EditorEntry:
    name: str
    factory: Callable[..., Editor]
    config_class: type
    needs_checkpoint: bool
    summary: str
    capabilities: Capabilities = Capabilities()


_REGISTRY: dict[str, EditorEntry] = {}


def register_editor(name: str, config_class: type, summary: str, needs_checkpoint: bool = False, *,
                    splittable: bool = False, training: str | None = None, warm_start: Sequence[str] = (),
                    stateful: bool = False):
    """Class decorator: add an editor to the registry under ``name`` (duplicates rejected), with
    its ``Capabilities`` (see there). A declared capability the class lacks is refused here."""
    capabilities = Capabilities(splittable, training, tuple(warm_start), stateful)

    def decorate(cls):
        if name in _REGISTRY:
            raise RuntimeError(f"editor {name!r} registered twice")
        _check_capabilities(name, cls, capabilities)
        _REGISTRY[name] = EditorEntry(name, cls, config_class, needs_checkpoint, summary, capabilities)
        cls.name = name
        cls.edit = _length_checked(cls.edit)
        return cls

    return decorate


def _check_capabilities(name: str, cls: type, capabilities: Capabilities) -> None:
    if capabilities.training not in (None, *TRAINING_KINDS):
        raise RuntimeError(f"editor {name!r}: training must be one of {TRAINING_KINDS} or None")
    if capabilities.stateful != implements(cls, SequentialState):
        raise RuntimeError(f"editor {name!r}: stateful={capabilities.stateful} but the class "
                           f"{'lacks' if capabilities.stateful else 'has'} stream_state/load_stream_state")
    if capabilities.training == "trajectory" and not implements(cls, TrajectoryTrainable):
        raise RuntimeError(f"editor {name!r}: trajectory training needs the TrajectoryTrainable protocol")


def _length_checked(edit: Callable) -> Callable:
    """``edit`` that first refuses requests longer than the model's context (one line, no model work)
    and never returns a delta with non-finite shifts (``EditDelta.check_finite``)."""
    if getattr(edit, "checks_lengths", False):  # inherited from a registered parent class
        return edit

    @functools.wraps(edit)
    def checked(self, lm: LoadedModel, requests: Sequence[EditRequest], *args, **kwargs) -> EditDelta:
        check_request_lengths(lm.adapter, requests)
        delta = edit(self, lm, requests, *args, **kwargs)
        delta.check_finite()
        return delta

    checked.checks_lengths = True
    return checked


def editor_names() -> list[str]:
    _load_builtin_editors()
    return sorted(_REGISTRY)


def editors_that(test: Callable[[Capabilities], bool]) -> list[str]:
    """Names of the registered editors whose capabilities pass ``test``, sorted."""
    _load_builtin_editors()
    return sorted(n for n, entry in _REGISTRY.items() if test(entry.capabilities))


def editor_entry(name: str) -> EditorEntry:
    _load_builtin_editors()
    if name not in _REGISTRY:
        raise HyperEditError(f"unknown editor {name!r}; available: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name]


def make_config(config_class: type, overrides: dict | None, base: dict | None = None) -> Any:
    """Build a config dataclass from a dict; every problem is one ``OptionError`` line.

    The one place editor options are validated (the CLI, the ledger and the service all build
    configs here): unknown keys, wrong types, numbers that are not finite (``lr=1e999`` is
    infinite and passes ``lr > 0``; NaN passes every comparison), and the ranges each config
    class checks in its ``__post_init__`` (its ValueError becomes an ``OptionError``).
    ``base`` (e.g. a checkpoint's saved config) fills the fields that ``overrides`` leaves out;
    its keys that the class no longer knows are ignored.
    """
    overrides = dict(overrides or {})
    fields = {f.name: f for f in dataclasses.fields(config_class)}
    unknown = sorted(set(overrides) - set(fields))
    if unknown:
        raise OptionError(
            f"unknown option(s) {', '.join(unknown)} for {config_class.__name__}; known: {', '.join(sorted(fields))}"
        )
    for key, value in overrides.items():
        _check_option_type(config_class, fields[key], value)
        _check_finite(config_class, key, value)
    merged = {k: v for k, v in (base or {}).items() if k in fields}
    try:
        config = config_class(**{**merged, **overrides})
    except (TypeError, ValueError, OverflowError) as exc:
        raise OptionError(f"invalid {config_class.__name__}: {exc}") from None
    for field in fields:
        _check_finite(config_class, field, getattr(config, field, None))
    return config


def _numbers(value: Any):
    """The floats in an option value, also inside lists, tuples and dicts."""
    if isinstance(value, float):
        yield value
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from _numbers(item)
    elif isinstance(value, dict):
        for item in value.values():
            yield from _numbers(item)


def _check_finite(config_class: type, name: str, value: Any) -> None:
    if any(not math.isfinite(x) for x in _numbers(value)):
        raise OptionError(f"option {name}={value!r} of {config_class.__name__}: must be a finite number")


def _check_option_type(config_class: type, field: dataclasses.Field, value: Any) -> None:
    """Reject a value whose type does not match a scalar default (bool, int, float, str) of the field."""
    expected = type(field.default)
    if field.default is None or expected not in (bool, int, float, str):
        return
    if expected is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    elif expected is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    else:
        ok = isinstance(value, expected)
    if not ok:
        raise OptionError(f"option {field.name}={value!r} of {config_class.__name__}: expected {expected.__name__}, "
                             f"got {type(value).__name__}")


def get_editor(name: str, checkpoint: str | None = None, lm: LoadedModel | None = None, **overrides) -> Editor:
    """Instantiate a registered editor with config overrides (and its checkpoint, for trained editors).

    A trained editor without ``checkpoint`` uses the one shipped for ``lm``'s model, if any.
    """
    entry = editor_entry(name)
    if entry.needs_checkpoint:
        if checkpoint is None:
            from .hypernet.shipped import missing_checkpoint_message, shipped_checkpoint

            checkpoint = shipped_checkpoint(name, lm)
            if checkpoint is None:
                raise HyperEditError(missing_checkpoint_message(name, lm))
            log.info("no checkpoint given: using the %s editor shipped for %s (%s)", name, lm.name, checkpoint)
        return entry.factory.from_checkpoint(checkpoint, lm=lm, **overrides)
    if checkpoint is not None:
        raise HyperEditError(f"editor {name!r} takes no checkpoint")
    return entry.factory(make_config(entry.config_class, overrides))


def _load_builtin_editors() -> None:
    """Import the editor modules and families (``locate``, ``hypernet``) so they register
    themselves (deferred: nothing runs at import)."""
    import importlib
    import pkgutil

    from .. import editors as package

    for info in pkgutil.iter_modules(package.__path__):
        if not info.name.startswith("_") and info.name not in ("base", "protocols", "checkpoint", "presets"):
            importlib.import_module(f"{package.__name__}.{info.name}")
