"""Reading a ledger entry's sequential state (shared by the unit and integration ledger tests)."""
from __future__ import annotations

import torch


def kept_keys(ledger, entry) -> dict[str, torch.Tensor]:
    """The null-space memory ``K_p`` (per module) stored with ``entry``."""
    return {k: v for k, v in ledger.blobs.get(entry.state_hash).items() if k.startswith(("kp/", "keys/kp/"))}


def n_edits(ledger, entry) -> int:
    """How many edits the state stored with ``entry`` has seen."""
    state = ledger.blobs.get(entry.state_hash)
    return int(state.get("n_edits", state.get("keys/n_edits")))


def assert_memory_grew(first: dict, second: dict) -> None:
    """``second`` = ``first`` + a PSD, nonzero ``K^T K`` of one more edit, module by module."""
    assert first and first.keys() == second.keys()
    for key in first:
        added = torch.linalg.eigvalsh(second[key].double() - first[key].double())
        assert float(added.min()) > -1e-6 * float(added.max()) and float(added.max()) > 0, key
