"""The memory-room benchmark's counting: a memory compressed per edit against the full one (float64)."""
from __future__ import annotations

import pytest
import torch
from script_loader import load_script

from hyperedit.editors.locate import held_directions


@pytest.fixture(scope="module")
def room():
    return load_script("benchmarks/memory_room.py")


def test_compressed_memory_keeps_each_edits_strongest_directions(room):
    U = torch.eye(4, dtype=torch.float64)
    # edit 0 (one request): energy 9 along e0 and 1 along e1; edit 1: 4 along e2 and 0.25 along e3
    keys = torch.tensor([[3.0, 0, 0, 0], [0, 1.0, 0, 0], [0, 0, 2.0, 0], [0, 0, 0, 0.5]], dtype=torch.float64)
    owner = torch.tensor([0, 0, 1, 1])
    full = room.truncated_memory(U, keys, owner, batch=1, checkpoints=[1, 2], energy=1.0, ridge=0.1)
    assert full == {1: 2, 2: 4}
    assert full[2] == held_directions(U, keys.T @ keys, 0.1)["held_dims"]
    # 80 % of each edit's energy: e0 alone holds .9 of edit 0, e2 alone .94 of edit 1
    assert room.truncated_memory(U, keys, owner, batch=1, checkpoints=[1, 2], energy=0.8, ridge=0.1) == {1: 1, 2: 2}
    # the ridge decides what counts as held: e3's 0.25 is below 0.3
    assert room.truncated_memory(U, keys, owner, batch=1, checkpoints=[2], energy=1.0, ridge=0.3) == {2: 3}


def test_only_the_null_space_counts(room):
    U = torch.eye(4, dtype=torch.float64)[:, 2:]  # a null space of e2, e3
    keys = torch.tensor([[5.0, 0, 0, 0], [0, 0, 1.0, 0]], dtype=torch.float64)
    assert room.truncated_memory(U, keys, torch.tensor([0, 0]), batch=1, checkpoints=[1], energy=1.0,
                                 ridge=0.5) == {1: 1}
