"""HiEdit: a high-level policy picks which candidate modules each edit changes; a MEND- or
MALMEN-style hypernetwork (``low``) computes the shifts of the chosen ones (ALGORITHMS.md).

Training (``training.trajectory``) is RLEdit's, with two additions: the hypernetwork sees
``dL/dS_m = mask_m * dL/dW_m`` (only chosen modules are shifted), and the policy's gate gets the
extrinsic loss through the straight-through mask, ``dL/dmask_m = <dL/dW_m, S_m>`` (W carries
``mask_m * S_m``; shifts are applied as data, so nothing is lost through ``weight.data``), plus the
intrinsic sparsity term ``sparsity_coef * sum_m mask_m ||S_m||^2 / k``. The extrinsic return is
also measured relative to editing every candidate (logged as ``advantage_vs_all``).
"""
from __future__ import annotations

import zlib
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch

from ...delta import EditDelta
from ...distributed import World
from ...errors import HyperEditError
from ...nets import HyperNets
from ...nets.policy import LayerPolicy
from ..base import register_editor
from ..checkpoint import read_editor
from ..protocols import MemoryReport, Proposal
from . import checkpoint
from .base import cache_requests, edit_in_rounds, scale_shifts
from .config import DirectionOptions, HyperEditorConfig
from .malmen import MalmenConfig, MalmenEditor
from .mend import MendConfig, MendEditor

LOW = {"malmen": (MalmenEditor, MalmenConfig), "mend": (MendEditor, MendConfig)}


@dataclass
class HiEditConfig(HyperEditorConfig, DirectionOptions):
    """HiEdit settings: ``layers`` are the candidate modules' layers, ``top_k`` of them are edited
    per edit; ``low`` is the low-level editor (malmen | mend); ``policy_hidden`` the encoder width;
    ``sparsity_coef`` weighs the intrinsic reward. The solve options (``DirectionOptions``:
    covariance ridge, null-space projection, our extensions) apply to ``low=malmen``.
    ``selection`` (edit time only; training always uses the policy): ``policy`` (the default);
    ``random``, ``top_k`` candidates drawn uniformly per edit, seeded by the edit's prompts so a
    stream and its resumption draw the same; or ``lowest``, the ``top_k`` lowest candidate layers
    for every edit (a fixed choice). The two controls say what the learned per-edit choice adds.
    ``memory_modules`` (``nullspace``, edit time only; our extension): the modules whose memory of
    earlier edits an edit's keys join: ``candidates`` (the default) every candidate, chosen or not,
    so a later edit of any module keeps them; ``chosen`` only the modules the edit wrote, which
    halves the rows each memory holds (docs/lifelong.md, round 17: the rows fill the memory) and
    leaves an earlier fact unprotected in the modules it was not written to."""

    low: str = "malmen"
    top_k: int = 3
    policy_hidden: int = 256
    sparsity_coef: float = 1e-3
    selection: str = "policy"
    memory_modules: str = "candidates"

    RUNTIME = HyperEditorConfig.RUNTIME + DirectionOptions.DIRECTION_RUNTIME + ("selection", "memory_modules")

    def __post_init__(self) -> None:
        super().__post_init__()
        self.check_direction_options()
        if self.low not in LOW:
            raise ValueError(f"low must be one of {sorted(LOW)}")
        if self.partition:
            raise ValueError("partition is for batch edits (malmen, mend, rledit); hiedit's policy chooses the modules")
        if self.selection not in ("policy", "random", "lowest"):
            raise ValueError("selection must be policy, random or lowest")
        if self.memory_modules not in ("candidates", "chosen"):
            raise ValueError("memory_modules must be candidates or chosen")
        if self.top_k < 1 or self.policy_hidden < 1 or self.sparsity_coef < 0:
            raise ValueError("top_k and policy_hidden must be >= 1, sparsity_coef >= 0")
        if self.low != "malmen" and (self.nullspace or self.ridge != "identity" or self.joint):
            raise ValueError("ridge, nullspace and joint need low=malmen (a least-squares solve)")

    def low_config(self) -> HyperEditorConfig:
        cls = LOW[self.low][1]
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in asdict(self).items() if k in known})


@register_editor("hiedit", HiEditConfig, "policy-selected modules + hypernetwork shifts (lifelong, trained)",
                 needs_checkpoint=True, training="trajectory", warm_start=("hiedit", "malmen", "mend"), stateful=True)
class HiEditEditor:
    """Per edit: encode [k; g] of every candidate, keep the top-k modules, shift only those."""

    config_class = HiEditConfig

    def __init__(self, config: HiEditConfig, low, policy: LayerPolicy, meta: dict | None = None):
        self.config, self.low, self.policy = config, low, policy
        self.meta = dict(meta or {})

    @classmethod
    def create(cls, config: HiEditConfig, lm, seed: int = 0) -> "HiEditEditor":
        """A fresh editor: an untrained low-level hypernetwork and policy over the candidate modules."""
        low = LOW[config.low][0].create(config.low_config(), lm, seed=seed)
        config.layers = low.config.layers
        shapes = {n: lm.adapter.in_out_shape(n) for n in low.module_names}
        if config.top_k > len(shapes):
            raise HyperEditError(f"top_k {config.top_k} exceeds the {len(shapes)} candidate modules")
        return cls(config, low, LayerPolicy(shapes, config.top_k, config.policy_hidden, seed=seed).to(lm.device))

    @property
    def module_names(self) -> list[str]:
        return self.low.module_names

    # ----- editing -----------------------------------------------------------------------------
    def select(self, cache: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """(straight-through mask, gate values) of the policy for one edit's cache."""
        return self.policy({n: torch.cat(cache[n], dim=-1) for n in self.module_names})

    def random_choice(self, requests) -> list[str]:
        """``top_k`` candidates drawn uniformly; the same edit (its prompts) always draws the same."""
        seed = zlib.crc32("\n".join(r.prompt for r in requests).encode())
        order = torch.randperm(len(self.module_names), generator=torch.Generator().manual_seed(seed))
        return [self.module_names[i] for i in sorted(order[: self.config.top_k].tolist())]

    def edit(self, lm, requests) -> EditDelta:
        """Shifts of the policy's top-k modules, in ``rounds``; the model is left unchanged."""
        return edit_in_rounds(self, lm, requests)

    def check_model(self, lm) -> None:
        self.low.check_model(lm)

    def edit_round(self, lm, requests, first: bool) -> tuple[dict[str, torch.Tensor], dict]:
        """Shifts of the policy's top-k modules only (one round of ``edit_in_rounds``)."""
        self.policy.to(lm.device).eval()
        self.low.nets.to(lm.device).eval()
        self.low.prepare(lm)
        cache = cache_requests(lm.adapter, list(requests), self.module_names, self.config.token)
        if self.config.online_norm and first:
            self.update_normalizers(cache)
        with torch.no_grad():
            if self.config.selection == "random":
                chosen = self.random_choice(requests)
            elif self.config.selection == "lowest":
                chosen = sorted(self.module_names, key=lm.adapter.layer_of)[: self.config.top_k]
            else:
                mask, _ = self.select(cache)
                chosen = [n for n, m in zip(self.module_names, mask.tolist()) if m > 0.5]
            acc = self.low.new_accumulator()
            contrast = self.low.contrast_gram(lm, list(requests), self.module_names)
            for name in chosen:
                self.low.accumulate(acc, name, *cache[name])
            self.low.add_rows(acc, contrast)
            shifts = scale_shifts(self.low.finish(acc), self.config.shift_scale)
        if first:  # by default every candidate's keys are kept, chosen or not: a later edit of that module must keep them
            remembered = chosen if self.config.memory_modules == "chosen" else list(cache)
            kept = {n: cache[n][0].double().T @ cache[n][0].double() + contrast.get(n, 0) for n in remembered}
            self.low.remember_keys(kept, len(requests))
            self.low.remember_subjects(list(requests))
        return shifts, {"n_candidates": len(self.module_names)}

    # ----- trajectory protocol (training.trajectory) -------------------------------------------
    def parameters(self):
        yield from self.low.nets.parameters()
        yield from self.policy.parameters()

    def parameter_groups(self, meta_lr: float, lr_meta_lr: float) -> list[dict]:
        return self.low.parameter_groups(meta_lr, lr_meta_lr) + [{"params": list(self.policy.parameters()), "lr": meta_lr}]

    def edit_lr_parameters(self) -> list:
        return self.low.edit_lr_parameters()

    def train_mode(self, flag: bool = True) -> None:
        self.low.nets.train(flag)
        self.policy.train(flag)

    def cache(self, lm, requests) -> dict:
        return cache_requests(lm.adapter, list(requests), self.module_names, self.config.token)

    def update_normalizers(self, cache: dict, world: World | None = None) -> None:
        self.low.update_normalizers(cache, world)
        self.policy.update_normalizers({n: torch.cat(cache[n], dim=-1) for n in self.module_names}, world)

    def prepare(self, lm) -> None:
        self.low.prepare(lm)

    def memory_fill(self, lm=None) -> dict[str, dict]:
        """How full the low level's null-space memory is per candidate module (``MalmenEditor.memory_fill``;
        empty when the low level has none)."""
        return self.low.memory_fill(lm) if isinstance(self.low, MemoryReport) else {}

    def begin_trajectory(self) -> None:
        self.low.keys.reset()

    def stream_state(self) -> tuple[dict[str, torch.Tensor], dict]:
        """The low level's stream state plus the policy's normaliser statistics."""
        tensors, meta = self.low.stream_state()
        tensors.update({f"policy/{k}": v.clone() for k, v in self.policy.state_dict().items() if ".normalizer." in k})
        return tensors, meta

    def load_stream_state(self, tensors: dict[str, torch.Tensor], meta: dict) -> None:
        self.low.load_stream_state({k: v for k, v in tensors.items() if not k.startswith("policy/")}, meta)
        norms = {k[7:]: v for k, v in tensors.items() if k.startswith("policy/")}
        self.policy.load_state_dict({**self.policy.state_dict(), **norms})

    def contrast_rows(self, lm, requests) -> dict[str, torch.Tensor]:
        """``contrast``: the rows of ``requests`` for every candidate module (see ``RLEditEditor``)."""
        return self.low.contrast_gram(lm, list(requests), self.module_names)

    def trajectory_propose(self, cache: dict, rows: dict | None = None) -> Proposal:
        """Shifts of the chosen modules; ``rows`` (``contrast_rows``) join every candidate's solve
        and K_p, as in ``edit_round``."""
        mask, gate = self.select(cache)  # keeps the policy's graph
        acc, full = self.low.predict(cache, rows=rows)
        self.low.remember_keys(acc.key_grams(), 0)  # every candidate's keys; the request count is not used in training
        chosen = {n: full[n] for n, m in zip(self.module_names, mask.tolist()) if m > 0.5}
        return Proposal(shifts=chosen, full=full, state={"cache": cache, "acc": acc, "mask": mask, "gate": gate})

    def trajectory_backward(self, proposal: Proposal, grads: dict[str, torch.Tensor], reg_coef: float) -> None:
        """Hypernetwork: ``mask_m (dL/dW_m + 2 reg S_m)``; policy: extrinsic ``<dL/dW_m, S_m>`` and
        intrinsic sparsity through the straight-through mask."""
        mask, full, names = proposal.state["mask"], proposal.full, self.module_names
        hard = mask.detach()
        grad_shifts = {n: hard[i] * (grads[n] + 2 * reg_coef * full[n]) for i, n in enumerate(names)}
        self.low.backward(proposal.state["cache"], proposal.state["acc"], full, grad_shifts)
        self.policy_loss(mask, grads, full).backward()

    def policy_loss(self, mask: torch.Tensor, grads: dict[str, torch.Tensor], full: dict[str, torch.Tensor],
                    extrinsic: bool = True, intrinsic: bool = True) -> torch.Tensor:
        """Surrogate whose gradient w.r.t. the mask is the policy's: extrinsic ``<dL/dW_m, S_m>`` and
        intrinsic ``sparsity_coef ||S_m||^2 / k`` per module."""
        names = self.module_names
        zero = mask.sum() * 0
        ext = sum(mask[i] * (grads[n] * full[n]).sum() for i, n in enumerate(names)) if extrinsic else zero
        norms = torch.stack([full[n].pow(2).sum() for n in names])
        intr = self.config.sparsity_coef * (mask * norms).sum() / self.config.top_k if intrinsic else zero
        return ext + intr

    @staticmethod
    def warm_start_editor(config: HiEditConfig, saved: str | None) -> str:
        """``--init-from``: a HiEdit checkpoint as a HiEdit (policy included), else a trained editor
        of the low level's kind."""
        return "hiedit" if saved == "hiedit" else config.low

    def warm_start_shape(self) -> tuple[str, ...]:
        shape = self.low.warm_start_shape()
        return shape[:-1] + ("low", "top_k", "policy_hidden") + shape[-1:]

    def warm_start(self, source) -> None:
        """Start from a trained HiEdit (low level and policy, e.g. to train a shipped one on with
        other options), or the low level from a trained editor of its kind (MALMEN or MEND) over
        the same modules."""
        if isinstance(source, HiEditEditor):
            self.low.nets.load_state_dict(source.low.nets.state_dict())
            self.policy.load_state_dict(source.policy.state_dict())
            return
        if not isinstance(source, type(self.low)):
            raise HyperEditError(f"hiedit low={self.config.low} cannot start from a {source.name} editor")
        self.low.nets.load_state_dict(source.nets.state_dict())

    # ----- persistence -------------------------------------------------------------------------
    def save(self, path: str | Path, extra_meta: dict | None = None) -> Path:
        """``editor.json`` + ``editor.safetensors`` (``low.*`` hypernetwork, ``policy.*`` gate)."""
        state = {f"low.{k}": v for k, v in self.low.nets.state_dict().items()}
        state.update({f"policy.{k}": v for k, v in self.policy.state_dict().items()})
        return checkpoint.save_hypernet(path, self.name, self.config, state, self.low.model,
                                        self.low.nets.module_shapes, {**self.meta, **(extra_meta or {})})

    def load_weights(self, folder: str | Path) -> None:
        saved = read_editor(folder)
        tensors = saved.tensors()
        saved.load_into(self.low.nets, tensors, prefix="low.")
        saved.load_into(self.policy, tensors, prefix="policy.")

    @classmethod
    def from_checkpoint(cls, path: str | Path, lm=None, **overrides) -> "HiEditEditor":
        """Load a trained HiEdit editor (checkpoint or training run directory)."""
        saved = read_editor(path, cls.name)
        config = checkpoint.trained_config(HiEditConfig, saved, overrides, cls.name)
        shapes = saved.module_shapes
        low_cls = LOW[config.low][0]
        low = low_cls(config.low_config(), HyperNets(shapes, config.rank, config.n_blocks, config.lr_init), saved.model)
        editor = cls(config, low, LayerPolicy(shapes, config.top_k, config.policy_hidden), saved.extra)
        editor.load_weights(saved.folder)
        if lm is not None:
            low.check_model(lm)
            low.nets.to(lm.device), editor.policy.to(lm.device)
        return editor
