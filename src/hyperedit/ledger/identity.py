"""What a ledger is bound to: the base model's identity, and the editor checkpoint's hash."""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

import torch


def weights_fingerprint(model: torch.nn.Module) -> str:
    """sha256 over every tensor of the state dict (names, dtypes, shapes and bytes)."""
    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        tensor = tensor.detach().cpu().contiguous()
        h.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        h.update(tensor.reshape(-1).view(torch.uint8).numpy())
    return h.hexdigest()


def base_identity(lm, spec: str | None = None) -> dict:
    """Name, how to load it (``spec``), architecture and weight fingerprint of an unedited model."""
    dtype = str(next(lm.model.parameters()).dtype).replace("torch.", "")
    return {"name": lm.name, "spec": spec or lm.name, "architecture": lm.adapter.identity(), "dtype": dtype,
            "fingerprint": weights_fingerprint(lm.model)}


def directory_hash(path: str | os.PathLike | None) -> str | None:
    """sha256 over the relative names and bytes of every file under ``path`` (None for no path)."""
    if path is None:
        return None
    root = Path(path)
    h = hashlib.sha256()
    files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
    for file in files:
        h.update(str(file.relative_to(root) if file != root else file.name).encode() + b"\0")
        with open(file, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()
