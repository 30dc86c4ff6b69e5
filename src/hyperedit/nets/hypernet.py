"""The MEND/MALMEN hypernetwork: maps (key, value gradient) pairs to (pseudo-key, pseudo-gradient).

One ``HyperNet`` per distinct edited-weight shape ``(d_in, d_out)``, shared by every module of that
shape; modules are told apart by per-module scale/shift embeddings and their own learned ``lr``
and ``log_lambda``. ``HyperNets`` holds the networks of one edited model and routes module names.
"""
from __future__ import annotations

import torch
from torch import nn

from .normalizer import RunningMeanStd
from .shapes import group_by_shape, shape_of


class HyperBlock(nn.Module):
    """Residual low-rank block ``x = y + scale[m] * relu(y A B + b) + shift[m]``.

    ``A`` is random normal (size x rank) and ``B`` zero, so a fresh block is the identity.
    """

    def __init__(self, size: int, rank: int, n_modules: int, generator: torch.Generator | None = None):
        super().__init__()
        self.A = nn.Parameter(torch.randn(size, rank, generator=generator))
        self.B = nn.Parameter(torch.zeros(rank, size))
        self.bias = nn.Parameter(torch.zeros(size))
        self.scale = nn.Parameter(torch.ones(n_modules, size))
        self.shift = nn.Parameter(torch.zeros(n_modules, size))

    def forward(self, y: torch.Tensor, module_index: int) -> torch.Tensor:
        """y: (n, size) -> (n, size)."""
        # clamp, not relu: B and the bias start at zero, where relu's gradient is 0 and the block
        # would never leave the identity; clamp passes the gradient at the boundary.
        hidden = (y @ self.A @ self.B + self.bias).clamp(min=0)
        return y + self.scale[module_index] * hidden + self.shift[module_index]


class HyperNet(nn.Module):
    """Hypernetwork for modules with weight shape (d_in, d_out).

    ``forward(keys (n, d_in), grads (n, d_out), m)`` returns pseudo-keys (n, d_in) and
    pseudo-gradients (n, d_out): the normalised concatenation passed through ``n_blocks`` blocks.
    ``lr[m]`` scales the shift of module ``m``; ``log_lambda[m]`` is MALMEN's log ridge strength.
    """

    def __init__(self, d_in: int, d_out: int, rank: int, n_blocks: int, n_modules: int, lr_init: float,
                 generator: torch.Generator | None = None):
        super().__init__()
        if rank < 1 or n_blocks < 0 or n_modules < 1:
            raise ValueError("rank >= 1, n_blocks >= 0 and n_modules >= 1 required")
        self.d_in, self.d_out = d_in, d_out
        self.normalizer = RunningMeanStd(d_in + d_out)
        self.blocks = nn.ModuleList(HyperBlock(d_in + d_out, rank, n_modules, generator) for _ in range(n_blocks))
        self.lr = nn.Parameter(torch.full((n_modules,), float(lr_init)))
        self.log_lambda = nn.Parameter(torch.zeros(n_modules))

    def forward(self, keys: torch.Tensor, grads: torch.Tensor, module_index: int) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.normalizer(torch.cat((keys, grads), dim=-1))
        for block in self.blocks:
            x = block(x, module_index)
        return x[:, : self.d_in], x[:, self.d_in:]

    def value_diffs(self, keys: torch.Tensor, grads: torch.Tensor, module_index: int) -> torch.Tensor:
        """MALMEN's per-token value differences ``d_i = -lr[m] <k_i, k~_i> g~_i`` (n, d_out)."""
        pseudo_keys, pseudo_grads = self(keys, grads, module_index)
        coeff = (keys * pseudo_keys).sum(-1, keepdim=True)
        return -self.lr[module_index] * coeff * pseudo_grads

    def rank_one_shift(self, keys: torch.Tensor, grads: torch.Tensor, module_index: int) -> torch.Tensor:
        """MEND's shift of these tokens, ``-lr[m] K~^T G~`` (d_in, d_out)."""
        pseudo_keys, pseudo_grads = self(keys, grads, module_index)
        return -self.lr[module_index] * (pseudo_keys.t() @ pseudo_grads)


class HyperNets(nn.Module):
    """The hypernetworks of one edited model: one ``HyperNet`` per shape, routed by module name.

    ``shapes`` maps each edited module name to its (d_in, d_out); modules of equal shape share a
    network and get consecutive module indices in the order given. ``seed`` makes the random
    initialisation independent of the global RNG.
    """

    def __init__(self, shapes: dict[str, tuple[int, int]], rank: int, n_blocks: int, lr_init: float,
                 seed: int | None = None):
        super().__init__()
        generator = None if seed is None else torch.Generator().manual_seed(int(seed))
        self.module_shapes, self.route, counts = group_by_shape(shapes)
        nets = {key: HyperNet(*shape_of(key), rank, n_blocks, count, lr_init, generator)
                for key, count in counts.items()}
        self.nets = nn.ModuleDict(nets)

    @property
    def module_names(self) -> list[str]:
        return list(self.module_shapes)

    def net_for(self, name: str) -> tuple[HyperNet, int]:
        """The network serving module ``name`` and the module's index inside it."""
        key, index = self.route[name]
        return self.nets[key], index
