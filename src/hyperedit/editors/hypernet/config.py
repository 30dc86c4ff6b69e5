"""The options of the hypernetwork editors: the hypernetwork's (``HyperEditorConfig``) and, for the
least-squares editors (MALMEN, RLEdit, HiEdit ``low=malmen``), the solve's (``DirectionOptions``).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ...lm import TOKEN_SITES
from ..locate.nullspace import NullSpaceOptions

DEFAULT_NUM_LAYERS = 6
SOLVE_DTYPES = {"float32": torch.float32, "float64": torch.float64}
RIDGES = ("identity", "covariance")


@dataclass
class HyperEditorConfig:
    """Hypernetwork editor settings.

    ``layers``: edited layers (MLP ``module_kind`` projections); None means the last
    ``DEFAULT_NUM_LAYERS`` layers. ``rank``/``n_blocks`` shape the hypernetwork; ``lr_init`` is the
    initial per-module learning rate. ``token``: where keys and value gradients are read
    (``hyperedit.lm.site_mask``): ``ans`` (the positions predicting the target, the papers'
    choice), ``all``, or ``subject`` (our extension: the last subject token, one row per fact, where
    MEMIT reads its keys). ``lm_batch_size`` requests per LM pass and
    ``net_batch_size`` tokens per hypernetwork pass only change speed and memory, not results.
    ``shift_scale`` multiplies the shifts an edit writes (1.0: as trained). Training never uses
    it; it lets a stream apply a trained hypernetwork with smaller steps than it was trained for.
    ``online_norm`` (our extension for lifelong streams): each edit first merges its keys and value
    gradients into the hypernetwork's running normalisers, as trajectory training does, so the
    normalisers follow the model the stream has edited; their state is part of the stream state.
    ``rounds`` (our extension): edit the same requests that many times, each round on the model
    with the earlier rounds' shifts applied, and write the sum (see ``edit_in_rounds``); each
    round costs one more LM pass.
    ``partition`` (our extension, edit time only): chunk i of ``lm_batch_size`` requests is written
    to module i mod M only (M edited modules), so each module's least-squares solve holds about 1/M
    of the edit's rows instead of all of them; each fact is then written in one module, not M.
    """

    layers: list[int] | None = None
    module_kind: str = "down"
    rank: int = 256
    n_blocks: int = 2
    lr_init: float = 1e-4
    token: str = "ans"
    lm_batch_size: int = 16
    net_batch_size: int = 4096
    shift_scale: float = 1.0
    online_norm: bool = False
    rounds: int = 1
    partition: bool = False

    RUNTIME = ("lm_batch_size", "net_batch_size", "shift_scale", "online_norm", "rounds",
               "partition")  # may differ from the checkpoint's values

    def __post_init__(self) -> None:
        if self.layers is not None:
            self.layers = [int(v) for v in self.layers]
            if not self.layers or len(set(self.layers)) != len(self.layers):
                raise ValueError("layers must be a non-empty list of distinct layer indices")
        if self.rank < 1 or self.n_blocks < 0:
            raise ValueError("rank must be >= 1 and n_blocks >= 0")
        if self.token not in TOKEN_SITES:
            raise ValueError(f"token must be one of {', '.join(TOKEN_SITES)}")
        if self.lm_batch_size < 1 or self.net_batch_size < 1:
            raise ValueError("lm_batch_size and net_batch_size must be >= 1")
        if not self.shift_scale > 0:
            raise ValueError("shift_scale must be > 0")
        if self.rounds < 1:
            raise ValueError("rounds must be >= 1")


def resolve_layers(adapter, layers: list[int] | None) -> list[int]:
    """The configured layers, or the last ``DEFAULT_NUM_LAYERS`` layers of the model."""
    if layers is None:
        n = adapter.num_layers
        return list(range(max(0, n - DEFAULT_NUM_LAYERS), n))
    return list(layers)


@dataclass
class DirectionOptions(NullSpaceOptions):
    """How the least-squares shift is solved; every option may be changed on a trained checkpoint.

    ``solve_dtype``: precision of the accumulated normal equations. ``ridge``: the regulariser,
    ``identity`` (the paper's ``e^lambda ||S||^2``) or ``covariance`` (our extension:
    ``e^lambda tr(S^T C0 S)`` with C0 the key second moment on generic text, ``hyperedit.stats``,
    so shifts are cheap where the model's ordinary keys lie and the edit reaches unrelated text
    less). ``ridge_samples``: corpus texts for C0. ``nullspace`` (our extension, AlphaEdit's
    projector): shifts confined to the null space of C0 (``nullspace_threshold``,
    ``threshold_relative``) and kept off the keys of earlier edits; needs ``ridge="identity"``.
    ``contrast`` (our extension, ``contrast``): per request, that many prompts with the subject
    of another request of the edit, whose keys the shift must keep (target 0, weight
    ``contrast_weight`` against an edit row); each costs a forward pass, no backward.
    ``contrast_memory``: in a stream, the subjects of that many earlier requests may also be
    swapped in (after the edit's own), so edits of one request get contrast rows too.
    ``contrast_subjects``: generic subjects swapped in after those (a fixed list, no data), so a
    small edit gets its ``contrast`` rows even when it has too few requests of its own.
    ``joint`` (our extension): one least-squares solve over the keys of all modules side by side
    instead of one per module (``joint.solve_joint``); identity ridge only, one rank; trainable without
    ``nullspace`` and ``contrast``, with them an edit-time option.
    The learned ``lambda`` was fitted for the solve the editor was trained with.
    """

    solve_dtype: str = "float32"
    ridge: str = "identity"
    ridge_samples: int = 2000
    nullspace: bool = False
    contrast: int = 0
    contrast_weight: float = 1.0
    contrast_memory: int = 0
    contrast_subjects: list[str] | None = None
    joint: bool = False

    DIRECTION_RUNTIME = ("solve_dtype", "ridge", "ridge_samples", "nullspace", "nullspace_threshold",
                         "threshold_relative", "memory_weight", "contrast", "contrast_weight", "contrast_memory",
                         "contrast_subjects", "joint")

    def check_direction_options(self) -> None:
        self.check_nullspace_options()
        if self.solve_dtype not in SOLVE_DTYPES:
            raise ValueError(f"solve_dtype must be one of {sorted(SOLVE_DTYPES)}")
        if self.ridge not in RIDGES:
            raise ValueError(f"ridge must be one of {', '.join(RIDGES)}")
        if self.nullspace and self.ridge != "identity":
            raise ValueError("nullspace needs ridge=identity (the null space already sets the direction)")
        if self.ridge_samples < 1:
            raise ValueError("ridge_samples must be >= 1")
        if self.contrast < 0 or self.contrast_memory < 0 or not self.contrast_weight > 0:
            raise ValueError("contrast and contrast_memory must be >= 0, contrast_weight > 0")
        subjects = self.contrast_subjects
        if subjects is not None and (not isinstance(subjects, list)
                                     or not all(isinstance(x, str) and x.strip() for x in subjects)):
            raise ValueError("contrast_subjects must be a list of non-empty strings")
        if self.joint and self.ridge != "identity":
            raise ValueError("joint needs ridge=identity")
