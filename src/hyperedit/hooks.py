"""The one place where forward/backward hooks are registered.

``capture`` records, for chosen modules, the module inputs (keys) and the gradients of the
module outputs (value gradients) at selected token positions. It removes exactly the handles
it added, also when the forward or backward pass raises.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

import torch
from torch import nn


@dataclass
class Captured:
    """Keys and value gradients per module, each a list of (n_tokens, dim) tensors (one per pass)."""

    keys: dict[str, list[torch.Tensor]] = field(default_factory=dict)
    grads: dict[str, list[torch.Tensor]] = field(default_factory=dict)
    mask: torch.Tensor | None = None  # (batch, seq) bool: positions to keep; None keeps all

    def key(self, name: str) -> torch.Tensor:
        return torch.cat(self.keys[name], dim=0)

    def grad(self, name: str) -> torch.Tensor:
        # Backward visits passes in the same order as forward only per graph; we store per pass.
        return torch.cat(self.grads[name], dim=0)

    def clear(self) -> None:
        for store in (self.keys, self.grads):
            for values in store.values():
                values.clear()


def _select(t: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    if mask is None:
        return t.reshape(-1, t.shape[-1])
    if t.shape[:2] != mask.shape:
        raise ValueError(f"position mask of shape {tuple(mask.shape)} does not match activations {tuple(t.shape[:2])}")
    return t[mask]


@contextlib.contextmanager
def capture(model: nn.Module, module_names: list[str], keys: bool = True, grads: bool = True,
            detach: bool = True):
    """Context manager yielding a ``Captured``; set ``captured.mask`` before each forward.

    Keys are recorded in the forward pass; value gradients when ``backward`` reaches the module
    output (the output must be part of a graph that requires grad).
    """
    captured = Captured(keys={n: [] for n in module_names}, grads={n: [] for n in module_names})
    modules = dict(model.named_modules())
    missing = [n for n in module_names if n not in modules]
    if missing:
        raise ValueError(f"model has no modules {missing}")
    handles = []

    def make_hook(name: str):
        def hook(module, inputs, output):
            mask = captured.mask
            if keys:
                k = _select(inputs[0], mask)
                captured.keys[name].append(k.detach() if detach else k)
            if grads and isinstance(output, torch.Tensor) and output.requires_grad:
                def on_grad(grad, mask=mask):
                    captured.grads[name].append(_select(grad, mask).detach())
                output.register_hook(on_grad)
        return hook

    try:
        for name in module_names:
            handles.append(modules[name].register_forward_hook(make_hook(name)))
        yield captured
    finally:
        for handle in handles:
            handle.remove()


class StopForward(Exception):
    """Raised by ``stop_after`` to end a forward pass early; never escapes its context manager."""


@contextlib.contextmanager
def stop_after(model: nn.Module, module_name: str):
    """Inside the block, a forward pass stops right after ``module_name`` has run.

    Use for reading activations of early layers without paying for the layers above. The block
    should hold one forward call: the pass is ended by an exception that the context swallows.
    """
    module = dict(model.named_modules()).get(module_name)
    if module is None:
        raise ValueError(f"model has no module {module_name!r}")

    def hook(mod, inputs, output):
        raise StopForward

    handle = module.register_forward_hook(hook)
    try:
        yield
    except StopForward:
        pass
    finally:
        handle.remove()


@contextlib.contextmanager
def edit_output(model: nn.Module, module_name: str, fn):
    """Inside the block, the output of ``module_name`` is replaced by ``fn(inputs, output)``.

    ``output`` is the module's first output tensor (modules returning tuples keep the rest of
    the tuple); ``fn`` must return a tensor of the same shape. Removes only its own handle.
    """
    module = dict(model.named_modules()).get(module_name)
    if module is None:
        raise ValueError(f"model has no module {module_name!r}")

    def hook(mod, inputs, output):
        if isinstance(output, tuple):
            return (fn(inputs, output[0]),) + tuple(output[1:])
        return fn(inputs, output)

    handle = module.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


@contextlib.contextmanager
def read_input(model: nn.Module, module_name: str, stop: bool = False):
    """Inside the block, each forward appends the first input of ``module_name`` to the yielded list.

    With ``stop`` the pass ends right there (nothing above the module runs), as in ``stop_after``.
    """
    module = dict(model.named_modules()).get(module_name)
    if module is None:
        raise ValueError(f"model has no module {module_name!r}")
    inputs_seen: list[torch.Tensor] = []

    def hook(mod, args, kwargs):
        hidden = args[0] if args else kwargs["hidden_states"]
        inputs_seen.append(hidden.detach())
        if stop:
            raise StopForward

    handle = module.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        yield inputs_seen
    except StopForward:
        pass
    finally:
        handle.remove()
