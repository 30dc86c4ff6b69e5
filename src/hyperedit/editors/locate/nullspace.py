"""The null space of preserved keys and the sequential key state (AlphaEdit; reused by the
hypernetwork editors' direction control).

``null_space_basis`` is U, the eigenvectors of a key second moment C = E[k k^T] with eigenvalue
below a threshold; P = U U^T projects onto the directions generic text barely uses. A shift S with
S = U Z changes no output k^T S of a key k orthogonal to U. ``KeyState`` keeps K_p^T K_p, the
keys of the edits made so far per module, so later edits can be asked to keep them too; it is
part of an editor's sequential state (``state_dict`` / ``load_state_dict``, float64).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ...errors import HyperEditError


@dataclass
class NullSpaceOptions:
    """Options of the null space: eigenvalues of C below ``nullspace_threshold`` (times C's
    largest eigenvalue when ``threshold_relative``) span the preserved keys' null space.
    ``memory_weight`` (our extension) scales the earlier edits' keys ``K_p^T K_p`` in every later
    solve: 1 is AlphaEdit's; below 1 a new edit is held back less by the earlier ones and may move
    them more (the balance a long stream strikes between its recent and its earliest edits)."""

    nullspace_threshold: float = 2e-2
    threshold_relative: bool = False
    memory_weight: float = 1.0

    def check_nullspace_options(self) -> None:
        if self.nullspace_threshold <= 0:
            raise ValueError("nullspace_threshold must be positive")
        if not self.memory_weight >= 0:
            raise ValueError("memory_weight must be >= 0")


def null_space_basis(C: torch.Tensor, threshold: float, relative: bool = False) -> torch.Tensor:
    """U (d, r), float64: the eigenvectors of the symmetric C with eigenvalue below ``threshold``
    (times the largest eigenvalue when ``relative``)."""
    evals, evecs = torch.linalg.eigh(C.double())
    cut = threshold * float(evals.max()) if relative else threshold
    return evecs[:, evals < cut]


def null_space_projector(C: torch.Tensor, threshold: float, relative: bool = False) -> torch.Tensor:
    """P = U U^T (d, d), float64, with U = ``null_space_basis(C, threshold, relative)``."""
    U = null_space_basis(C, threshold, relative)
    return U @ U.T


def held_directions(U: torch.Tensor, gram: torch.Tensor | None, ridge: float) -> dict:
    """How full a memory of earlier edits is: of the ``null_dims`` directions of U's range (where a
    new edit may write), ``held_dims`` are those in which ``U^T gram U`` (the weighted K_p^T K_p) is
    above ``ridge``, i.e. where keeping the earlier keys outweighs the ridge and a new shift is cut
    back; ``held_share`` = held_dims / null_dims. ``gram=None``: no memory yet, nothing held."""
    n_held = 0
    if gram is not None:
        U = U.double()
        held = torch.linalg.eigvalsh(U.T @ gram.to(device=U.device, dtype=torch.float64) @ U)  # K_p lives on the CPU
        n_held = int((held > ridge).sum())
    return {"null_dims": int(U.shape[1]), "held_dims": n_held, "held_share": n_held / max(int(U.shape[1]), 1)}


class KeyState:
    """K_p^T K_p per module (float64, on the CPU) and the number of edited requests so far."""

    def __init__(self):
        self.kp: dict[str, torch.Tensor] = {}
        self.n_edits = 0

    def get(self, name: str) -> torch.Tensor | None:
        return self.kp.get(name)

    def add(self, name: str, ktk: torch.Tensor) -> None:
        """Remember the keys of one edit of module ``name`` through their ``K^T K``."""
        ktk = ktk.detach().double().cpu()
        self.kp[name] = self.kp[name] + ktk if name in self.kp else ktk.clone()

    def reset(self) -> None:
        self.kp.clear()
        self.n_edits = 0

    def state_dict(self) -> dict[str, torch.Tensor]:
        """``{"kp/<module>": K_p^T K_p (d_in, d_in) float64, "n_edits": ()}``."""
        state = {f"kp/{name}": t.clone() for name, t in self.kp.items()}
        state["n_edits"] = torch.tensor(self.n_edits)
        return state

    def load_state_dict(self, state: dict[str, torch.Tensor], what: str = "editor") -> None:
        if "n_edits" not in state:
            raise HyperEditError(f"{what} state has no n_edits entry")
        self.kp = {k[len("kp/"):]: v.double().clone() for k, v in state.items() if k.startswith("kp/")}
        self.n_edits = int(state["n_edits"])
