"""Placing one model over several devices (``--device-map``), with accelerate under transformers.

A model too large for one GPU is loaded with ``device_map``: ``auto`` (accelerate's
``infer_auto_device_map`` fills the GPUs in order, then CPU memory, then ``--offload-folder`` on
disk, within ``--max-memory``), ``balanced``/``balanced_low_0``/``sequential``, or an explicit
JSON map ``{"model.layers.0": 0, "model.layers.1": "cpu", "lm_head": "disk", ...}``. accelerate's
hooks move activations between devices and load disk-offloaded weights for each forward pass.
The edited layers must be on a real device (a GPU or the CPU, not offloaded), since an edit adds
its shifts to their weights in place.
"""
from __future__ import annotations

import json
from pathlib import Path

from ..errors import HyperEditError

STRATEGIES = ("auto", "balanced", "balanced_low_0", "sequential")
PLACES = ("cpu", "disk")


def parse_device_map(spec: str | None) -> str | dict | None:
    """``--device-map``: a strategy name, or a JSON file mapping module names to devices."""
    if not spec or spec in STRATEGIES:
        return spec or None
    path = Path(spec)
    if not path.is_file():
        raise HyperEditError(f"--device-map {spec!r}: use one of {', '.join(STRATEGIES)} or a JSON file "
                             "mapping module names to devices")
    try:
        mapping = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise HyperEditError(f"{path}: invalid JSON ({exc.msg} at line {exc.lineno})") from None
    if not isinstance(mapping, dict) or not mapping:
        raise HyperEditError(f"{path}: a device map is a JSON object {{module name: device}}")
    for module, device in mapping.items():
        if not (isinstance(device, int) and device >= 0) and not (isinstance(device, str) and _is_place(device)):
            raise HyperEditError(f"{path}: module {module!r}: device {device!r} is not a GPU index, "
                                 "cuda:N, cpu or disk")
    return mapping


def parse_max_memory(spec: str | None) -> dict | None:
    """``--max-memory 0=20GiB,1=20GiB,cpu=60GiB`` -> {0: "20GiB", 1: "20GiB", "cpu": "60GiB"}."""
    if not spec:
        return None
    out: dict = {}
    for item in spec.split(","):
        device, sep, amount = item.partition("=")
        device = device.strip()
        if not sep or not amount.strip() or not (device.isdigit() or device in PLACES):
            raise HyperEditError(f"--max-memory {spec!r}: expected DEVICE=AMOUNT,... e.g. 0=20GiB,cpu=60GiB")
        out[int(device) if device.isdigit() else device] = amount.strip()
    return out


def _is_place(device: str) -> bool:
    return device in PLACES or (device.startswith("cuda:") and device[5:].isdigit()) or device.isdigit()


def check_on_device(model, module_names: list[str]) -> None:
    """Raise HyperEditError when an edited module's weight is offloaded (not on a real device)."""
    modules = dict(model.named_modules())
    for name in module_names:
        weight = getattr(modules.get(name), "weight", None)
        if weight is not None and weight.device.type == "meta":
            raise HyperEditError(f"{name} is offloaded by the device map; the edited layers must be placed on "
                                 "a GPU or the CPU")
