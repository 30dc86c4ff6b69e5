"""Shared editing code of the hypernetwork editors (MALMEN, MEND, RLEdit; HiEdit's low level).

An edit streams over the requests in chunks of ``lm_batch_size``: one forward + backward of the
LM caches keys K and value gradients G of every edited module (``hyperedit.lm``), the
hypernetwork turns them into per-token contributions in chunks of ``net_batch_size`` tokens, and
an editor-specific ``Accumulator`` (least squares for MALMEN, a plain sum for MEND) folds them in.
Memory is therefore bounded by the chunk sizes and the accumulators (``d_in x d_in`` for
MALMEN), never by the number of requests. Meta-training (``hyperedit.training``) reuses the same
accumulators on an in-memory cache and calls ``backward`` to push dL/dS into the hypernetwork.
"""
from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Protocol, Sequence

import torch

from ...delta import EditDelta
from ...distributed import World, all_reduce_sum_, current_world, shard
from ...errors import HyperEditError
from ...lm import cache_keys_and_value_grads, iter_chunks
from ...nets import HyperNets
from ...requests import EditRequest
from ..checkpoint import read_editor
from ..locate.nullspace import KeyState
from . import checkpoint
from .config import HyperEditorConfig, resolve_layers

Cache = dict[str, tuple[torch.Tensor, torch.Tensor]]  # module -> (K (n, d_in), G (n, d_out))


class Accumulator(Protocol):
    """What an edit sums over its chunks before the solve (``HyperEditor.new_accumulator``)."""

    def modules(self) -> list[str]:
        """The modules accumulated so far, in order."""
        ...

    def sums(self, names: Sequence[str]) -> list[torch.Tensor]:
        """The running sums of ``names`` that a data-parallel edit all-reduces, in a fixed order."""
        ...

    def key_grams(self) -> dict[str, torch.Tensor]:
        """After the solve: ``K^T K`` per module of the keys the edit adds to the memory (``nullspace``)."""
        ...


def cache_requests(adapter, requests: Sequence[EditRequest], names: list[str], token: str,
                   device: torch.device | str | None = None) -> Cache:
    """Keys and value gradients (float32) of the edit loss on ``requests``, in one LM pass; on
    ``device`` (the hypernetwork's) when given, as a model placed over several devices yields them
    on the devices of their layers."""
    raw = cache_keys_and_value_grads(adapter, [r.prompt for r in requests], [r.target for r in requests],
                                     names, chunk_size=max(1, len(requests)), token=token,
                                     subjects=[r.subject for r in requests])
    return {name: (k.float().to(device), g.float().to(device)) for name, (k, g) in raw.items()}


def scale_shifts(shifts: dict[str, torch.Tensor], scale: float) -> dict[str, torch.Tensor]:
    """The shifts an edit writes: the predicted ones times ``shift_scale``."""
    return shifts if scale == 1.0 else {name: shift * scale for name, shift in shifts.items()}


def token_slices(n: int, size: int):
    """Slices covering range(n) in consecutive pieces of at most ``size``."""
    for start in range(0, n, size):
        yield slice(start, min(n, start + size))


def edit_in_rounds(editor, lm, requests: Sequence[EditRequest]) -> EditDelta:
    """The edit of a hypernetwork editor (``check_model``, ``edit_round``, ``config.rounds``);
    the model is left unchanged.

    With ``rounds`` > 1 each further round computes the shifts of the same requests on the model
    with the earlier rounds' shifts applied (temporarily) and adds them: a fact the earlier rounds
    wrote has a small gradient and is barely moved again, one they missed gets another step. Keys
    are remembered (``nullspace``) and normalisers updated (``online_norm``) in the first round
    only, so a stream's state changes once per edit.
    """
    editor.check_model(lm)
    if not requests:
        raise HyperEditError("no requests to edit")
    shifts, meta = editor.edit_round(lm, requests, first=True)
    for _ in range(1, editor.config.rounds):
        with EditDelta.from_in_out(lm.adapter, shifts, editor=editor.name).applied(lm.model):
            more, _ = editor.edit_round(lm, requests, first=False)
        shifts = {name: shifts.get(name, 0) + more.get(name, 0) for name in {**shifts, **more}}
    return EditDelta.from_in_out(lm.adapter, shifts, editor=editor.name, config=asdict(editor.config),
                                 n_requests=len(requests), **meta)


def edit_lr_parameters(nets: HyperNets) -> list:
    """The per-module edit ``lr`` scalars of a ``HyperNets``."""
    return [p for n, p in nets.named_parameters() if n.endswith(".lr")]


def parameter_groups(nets: HyperNets, meta_lr: float, lr_meta_lr: float,
                     lambda_meta_lr: float | None = None) -> list[dict]:
    """Adam groups of a ``HyperNets``: the per-module edit ``lr`` scalars get their own step size,
    and so do the ridge strengths ``log_lambda`` when ``lambda_meta_lr`` is given (meta-training);
    every other parameter gets ``meta_lr``."""
    own = (".lr",) if lambda_meta_lr is None else (".lr", ".log_lambda")
    groups = [{"params": [p for n, p in nets.named_parameters() if not n.endswith(own)], "lr": meta_lr},
              {"params": edit_lr_parameters(nets), "lr": lr_meta_lr}]
    if lambda_meta_lr is not None:
        groups.append({"params": [p for n, p in nets.named_parameters() if n.endswith(".log_lambda")],
                       "lr": lambda_meta_lr})
    return groups


class HyperEditor:
    """Base of the hypernetwork editors: owns the config, the ``HyperNets`` and the model identity.

    Subclasses define ``new_accumulator``, ``accumulate`` (one cache chunk), ``finish``
    (accumulator -> shifts) and ``backward`` (meta-training: dL/dS -> hypernetwork gradients).
    """

    name = "hypernet"
    config_class = HyperEditorConfig

    def __init__(self, config: HyperEditorConfig, nets: HyperNets | None = None, model: dict | None = None,
                 meta: dict | None = None):
        self.config = config
        self.nets = nets
        self.model = dict(model or {})  # identity of the model the nets were built for
        self.meta = dict(meta or {})
        self.keys = KeyState()  # keys of earlier edits (used by ``nullspace`` solves)
        self.asked: list[tuple[str, str]] = []  # (template, subject) of earlier edits (``contrast_memory``)

    # ----- construction -----------------------------------------------------------------
    @classmethod
    def create(cls, config: HyperEditorConfig, lm, seed: int = 0) -> "HyperEditor":
        """A fresh (untrained) editor for ``lm``: hypernetworks built from its edited-module shapes."""
        adapter = lm.adapter
        layers = resolve_layers(adapter, config.layers)
        names = adapter.module_names(layers, config.module_kind)
        shapes = {name: adapter.in_out_shape(name) for name in names}
        nets = HyperNets(shapes, config.rank, config.n_blocks, config.lr_init, seed=seed)
        config.layers = layers
        return cls(config, nets.to(lm.device), dict(adapter.identity()))

    @property
    def module_names(self) -> list[str]:
        return self.nets.module_names if self.nets is not None else []

    SHAPE = ("layers", "module_kind", "rank", "n_blocks", "token")  # what ``--init-from`` takes over

    @staticmethod
    def warm_start_editor(config, saved: str | None) -> str | None:
        """Which of the declared warm-start editors ``--init-from`` loads (None: the usual one)."""
        return None

    def warm_start_shape(self) -> tuple[str, ...]:
        """Config fields a warm start from this editor takes over (``_warm_start``): the
        hypernetwork's shape and its key site."""
        return self.SHAPE

    def warm_start(self, source: "HyperEditor") -> None:
        """Start training from ``source``'s trained hypernetwork over the same modules (weights,
        normaliser statistics, edit ``lr`` and ridge strength)."""
        self.nets.load_state_dict(source.nets.state_dict())

    def check_model(self, lm) -> None:
        """Raise HyperEditError unless ``lm`` is the kind of model this editor was trained for."""
        if self.nets is None:
            raise HyperEditError(f"{self.name} editor has no hypernetwork: load a checkpoint or train one")
        checkpoint.check_trained_for(self.name, self.model, self.nets.module_shapes, lm.adapter)

    # ----- editing -------------------------------------------------------------------------
    def edit(self, lm, requests: Sequence[EditRequest]) -> EditDelta:
        """Shifts for all ``requests`` at once, in ``rounds``; the model is left unchanged."""
        return edit_in_rounds(self, lm, requests)

    def edit_round(self, lm, requests: Sequence[EditRequest], first: bool) -> tuple[dict[str, torch.Tensor], dict]:
        """One round of ``edit``: (d_in, d_out) shifts of every module, streamed in chunks, and
        extra delta metadata.

        In a data-parallel run (``hyperedit.distributed``) each rank takes its share of the
        requests and the accumulated sums are all-reduced before the solve, so every rank returns
        the shifts of all requests.
        """
        from ...progress import progress

        world = current_world()
        if len(requests) < world.size:
            raise HyperEditError(f"{len(requests)} requests cannot be shared by {world.size} ranks")
        adapter, names = lm.adapter, self.module_names
        self.nets.to(lm.device).eval()
        self.prepare(lm)
        acc = self.new_accumulator()
        mine = shard(list(requests), world)
        chunks = list(iter_chunks(mine, self.config.lm_batch_size))
        online = self.config.online_norm and first
        if online and world.size > 1:
            raise HyperEditError("online_norm is not supported in a data-parallel run")
        held = []  # online_norm: every chunk's cache, accumulated after the normalisers saw them all
        for i, chunk in enumerate(progress(chunks, desc=f"{self.name} edit", unit="chunk")):
            cache = cache_requests(adapter, chunk, names, self.config.token, lm.device)
            if online:
                self.update_normalizers(cache)
                held.append((i, cache))
                continue
            self._accumulate_cache(acc, cache, self._chunk_modules(i))
            del cache
        for i, cache in held:
            self._accumulate_cache(acc, cache, self._chunk_modules(i))
        self.add_contrast(acc, lm, mine)
        all_reduce_sum_(acc.sums(names), world)
        with torch.no_grad():
            shifts = scale_shifts(self.finish(acc), self.config.shift_scale)
        if first:
            self.remember_keys(acc.key_grams(), len(requests))
            self.remember_subjects(requests)
        return shifts, {}

    def _chunk_modules(self, index: int) -> list[str]:
        """The modules chunk ``index`` of an edit is written to: all, or one (``partition``)."""
        names = self.module_names
        return [names[index % len(names)]] if self.config.partition else names

    def _accumulate_cache(self, acc: Accumulator, cache: Cache, names: list[str]) -> None:
        with torch.no_grad():
            for name in names:
                self.accumulate(acc, name, *cache[name])

    def update_normalizers(self, cache: Cache, world: World | None = None) -> None:
        """Merge a cache's ``[k; g]`` rows into each module's running normaliser (float64, deterministic);
        with a data-parallel ``world``, the rows of every rank's cache."""
        for name in self.module_names:
            self.nets.net_for(name)[0].normalizer.update(torch.cat(cache[name], dim=-1), world)

    def predict(self, cache: Cache, world: World | None = None,
                rows: dict[str, torch.Tensor] | None = None) -> tuple[Accumulator, dict[str, torch.Tensor]]:
        """(accumulator, shifts) for an in-memory cache, without gradients (meta-training step 2).

        With a data-parallel ``world``, ``cache`` is this rank's share and the accumulated sums are
        all-reduced before the solve, so every rank gets the shifts of the whole batch. ``rows``:
        ``K^T K`` of rows with target 0 per module (``contrast_gram`` of the whole edit, the same on
        every rank), added after the reduction (``add_rows``).
        """
        acc = self.new_accumulator()
        self._accumulate_cache(acc, cache, self.module_names)  # training: never partitioned
        all_reduce_sum_(acc.sums(self.module_names), world or World())
        if rows:
            self.add_rows(acc, rows)
        with torch.no_grad():
            return acc, self.finish(acc)

    # ----- sequential state (lifelong streams) ----------------------------------------------
    def stream_state(self) -> tuple[dict[str, torch.Tensor], dict]:
        """What a stream changes in the editor: the normalisers' statistics (``online_norm``), the
        keys of earlier edits (``nullspace``) and what they asked about (``contrast_memory``, in the
        meta); saved with every lifelong checkpoint."""
        tensors = {f"keys/{k}": v for k, v in self.keys.state_dict().items()}
        tensors.update({f"nets/{k}": v.clone() for k, v in self.nets.state_dict().items() if ".normalizer." in k})
        return tensors, {"kind": "hypernet", "editor": self.name, "asked": [list(a) for a in self.asked]}

    def load_stream_state(self, tensors: dict[str, torch.Tensor], meta: dict) -> None:
        if meta.get("kind") != "hypernet":
            raise HyperEditError(f"the stream's editor state is {meta.get('kind')!r}, not a hypernetwork editor's")
        self.keys.load_state_dict({k[5:]: v for k, v in tensors.items() if k.startswith("keys/")},
                                  what=f"{self.name} stream")
        norms = {k[5:]: v for k, v in tensors.items() if k.startswith("nets/")}
        self.nets.load_state_dict({**self.nets.state_dict(), **norms})
        self.asked = [(str(t), str(s)) for t, s in meta.get("asked", [])]

    # ----- subclass API -------------------------------------------------------------------
    def remember_keys(self, grams: dict[str, torch.Tensor], n_requests: int) -> None:
        """After an edit: record its keys (``K^T K`` per module) for later solves (nothing by default)."""

    def prepare(self, lm) -> None:
        """Load what the aggregation needs from the model before solving (nothing by default)."""

    def contrast_gram(self, lm, requests: Sequence[EditRequest], names: list[str]) -> dict[str, torch.Tensor]:
        """``K_c^T K_c`` of rows the edit must keep, per module (none by default)."""
        return {}

    def add_rows(self, acc: Accumulator, grams: dict[str, torch.Tensor]) -> None:
        """Add rows with target 0, given by their ``K^T K`` per module, to the accumulator before
        the solve (ignored by default: only a least-squares solve has room for them)."""

    def add_contrast(self, acc: Accumulator, lm, requests: Sequence[EditRequest]) -> None:
        """Add the contrast rows of ``requests`` (``contrast_gram``) to the accumulator before the solve."""
        self.add_rows(acc, self.contrast_gram(lm, requests, acc.modules()))

    def remember_subjects(self, requests: Sequence[EditRequest]) -> None:
        """After an edit: record what it asked about for later contrast rows (nothing by default)."""

    def new_accumulator(self) -> Accumulator:
        raise NotImplementedError

    def accumulate(self, acc: Accumulator, name: str, keys: torch.Tensor, grads: torch.Tensor) -> None:
        raise NotImplementedError

    def finish(self, acc: Accumulator) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def backward(self, cache: Cache, acc: Accumulator, shifts: dict[str, torch.Tensor],
                 grad_shifts: dict[str, torch.Tensor], replicated: bool = True) -> None:
        """Add to the hypernetwork's ``.grad`` the gradient of a loss whose dL/dS is ``grad_shifts``.

        In a data-parallel step ``cache`` is this rank's share of the tokens and the ranks' gradients
        are summed afterwards; terms that every rank computes identically from the reduced sums
        (MALMEN's dL/dlambda) are added only where ``replicated`` is true (one rank).
        """
        raise NotImplementedError

    # ----- training ----------------------------------------------------------------------------
    def parameters(self):
        return self.nets.parameters()

    def parameter_groups(self, meta_lr: float, lr_meta_lr: float, lambda_meta_lr: float | None = None) -> list[dict]:
        """Adam groups of the hypernetwork (``parameter_groups``)."""
        return parameter_groups(self.nets, meta_lr, lr_meta_lr, lambda_meta_lr)

    def edit_lr_parameters(self) -> list:
        return edit_lr_parameters(self.nets)

    def train_mode(self, flag: bool = True) -> None:
        self.nets.train(flag)

    # ----- persistence ----------------------------------------------------------------------
    def save(self, path: str | Path, extra_meta: dict | None = None) -> Path:
        """Write ``editor.json`` (config, model identity, module shapes) and ``editor.safetensors``
        (``editors.checkpoint``)."""
        return checkpoint.save_hypernet(path, self.name, self.config, self.nets.state_dict(), self.model,
                                        self.nets.module_shapes, {**self.meta, **(extra_meta or {})})

    def load_weights(self, folder: str | Path) -> None:
        """Load the hypernetwork weights saved in ``folder`` (e.g. to resume a training run)."""
        read_editor(folder).load_into(self.nets)

    @classmethod
    def from_checkpoint(cls, path: str | Path, lm=None, **overrides) -> "HyperEditor":
        """Load a trained editor (a checkpoint directory or a training run directory).

        Only runtime settings (``config_class.RUNTIME``) may be overridden; with ``lm`` given, a
        checkpoint made for another model is refused with a HyperEditError.
        """
        saved = read_editor(path, cls.name)
        config = checkpoint.trained_config(cls.config_class, saved, overrides, cls.name)
        nets = HyperNets(saved.module_shapes, config.rank, config.n_blocks, config.lr_init)
        saved.load_into(nets)
        editor = cls(config, nets, saved.model, saved.extra)
        if lm is not None:
            editor.check_model(lm)
            nets.to(lm.device)
        return editor
