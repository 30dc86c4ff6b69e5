"""Shared editing code of the hypernetwork editors (MALMEN, MEND).

An edit streams over the requests in chunks of ``lm_batch_size``: one forward + backward of the
LM caches keys K and value gradients G of every edited module (``hyperedit.lm``), the
hypernetwork turns them into per-token contributions in chunks of ``net_batch_size`` tokens, and
an editor-specific accumulator (least squares for MALMEN, a plain sum for MEND) folds them in.
Memory is therefore bounded by the chunk sizes and the accumulators (``d_in x d_in`` for
MALMEN), never by the number of requests. Meta-training (``hyperedit.training``) reuses the same
accumulators on an in-memory cache and calls ``backward`` to push dL/dS into the hypernetwork.
"""
from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import torch
from safetensors.torch import load_file, save_file

from ..delta import EditDelta
from ..distributed import World, all_reduce_sum_, current_world, shard
from ..errors import HyperEditError
from ..lm import TOKEN_SITES, cache_keys_and_value_grads, iter_chunks
from ..nets import HyperNets
from ..requests import EditRequest
from ._nullspace import KeyState
from .base import make_config

log = logging.getLogger(__name__)

CONFIG_FILE = "editor.json"
WEIGHTS_FILE = "editor.safetensors"
DEFAULT_NUM_LAYERS = 6

Cache = dict[str, tuple[torch.Tensor, torch.Tensor]]  # module -> (K (n, d_in), G (n, d_out))


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


def accumulator_tensors(acc: dict, names: list[str]) -> list[torch.Tensor]:
    """The tensors of an accumulator before ``finish``, in a fixed order (each is a sum over tokens)."""
    tensors = []
    for name in names:
        value = acc[name]
        parts = value if isinstance(value, (tuple, list)) else [value]
        tensors.extend(t for t in parts if isinstance(t, torch.Tensor))
    return tensors


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


# ----- least squares: the normal equation and its closed-form gradient -------------------
def ridge_matrix(ktk: torch.Tensor, log_lambda: torch.Tensor, ridge: torch.Tensor | None = None) -> torch.Tensor:
    """M = K^T K + e^lambda R, with R the identity (``ridge`` None) or a given SPD matrix (e.g. C0)."""
    lam = log_lambda.to(ktk.dtype).exp()
    if ridge is None:
        return ktk + lam * torch.eye(ktk.shape[0], dtype=ktk.dtype, device=ktk.device)
    return ktk + lam * ridge.to(ktk.dtype)


def ridge_solve(ktk: torch.Tensor, ktd: torch.Tensor, log_lambda: torch.Tensor,
                ridge: torch.Tensor | None = None) -> torch.Tensor:
    """S = (K^T K + e^lambda R)^{-1} K^T D, from accumulated K^T K (d_in, d_in) and K^T D (d_in, d_out)."""
    return torch.linalg.solve(ridge_matrix(ktk, log_lambda, ridge), ktd)


class RidgeFactor:
    """A factorisation of M = K^T K + e^lambda R, reused by the forward solve and its backward.

    Cholesky (M is symmetric positive definite), falling back to LU when rounding makes the
    Cholesky factorisation fail.
    """

    def __init__(self, ktk: torch.Tensor, log_lambda: torch.Tensor, ridge: torch.Tensor | None = None):
        m = ridge_matrix(ktk, log_lambda.detach(), ridge)
        factor, info = torch.linalg.cholesky_ex(m)
        self.cholesky = int(info) == 0
        self.factor = factor if self.cholesky else torch.linalg.lu_factor(m)

    def solve(self, rhs: torch.Tensor) -> torch.Tensor:
        if self.cholesky:
            return torch.cholesky_solve(rhs, self.factor)
        return torch.linalg.lu_solve(*self.factor, rhs)


def ridge_solve_backward(keys: torch.Tensor, ktk: torch.Tensor, shift: torch.Tensor, grad_shift: torch.Tensor,
                         log_lambda: torch.Tensor, ridge: torch.Tensor | None = None,
                         factor: RidgeFactor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Gradients of a loss L(S) through ``ridge_solve``: (dL/dD (n, d_out), dL/dlambda (scalar)).

    With M = K^T K + e^lambda R (symmetric) and X = M^{-1} dL/dS: dL/dD = K X and
    dL/dlambda = -e^lambda <X, R S>. ``factor``: the forward solve's ``RidgeFactor`` of M.
    """
    lam = log_lambda.to(ktk.dtype).exp()
    grad_shift = grad_shift.to(ktk.dtype)
    x = factor.solve(grad_shift) if factor is not None else torch.linalg.solve(ridge_matrix(ktk, log_lambda, ridge),
                                                                              grad_shift)
    shift = shift.to(ktk.dtype)
    ridge_shift = shift if ridge is None else ridge.to(ktk.dtype) @ shift
    return keys.to(ktk.dtype) @ x, -lam * (x * ridge_shift).sum()


def read_checkpoint_meta(path: str | Path) -> tuple[Path, dict]:
    """(folder, ``editor.json`` contents) of a hypernetwork-editor checkpoint, or of a training run's
    latest; HyperEditError when there is none or its JSON is invalid."""
    from ..checkpoints import resolve_checkpoint

    folder = resolve_checkpoint(path, CONFIG_FILE)
    try:
        meta = json.loads((folder / CONFIG_FILE).read_text())
    except json.JSONDecodeError as exc:
        raise HyperEditError(f"{folder / CONFIG_FILE}: invalid JSON ({exc.msg})") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise HyperEditError(f"{folder / CONFIG_FILE}: unreadable ({exc})") from None
    if not isinstance(meta, dict):
        raise HyperEditError(f"{folder / CONFIG_FILE}: not an editor checkpoint (expected a JSON object)")
    missing = [k for k, kind in (("editor", str), ("config", dict), ("modules", dict)) if not isinstance(meta.get(k), kind)]
    if not (folder / WEIGHTS_FILE).is_file():
        missing.append(WEIGHTS_FILE)
    if missing:
        raise HyperEditError(f"{folder}: not a complete editor checkpoint; missing or malformed: {', '.join(missing)}")
    return folder, meta


# ----- the editor base class -----------------------------------------------------------------
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
        return cls(config, nets.to(lm.device), _identity(adapter))

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
        mine, theirs = self.model, _identity(lm.adapter)
        diffs = [f"{k} {mine.get(k)} vs {theirs.get(k)}" for k in ("model_type", "num_layers", "hidden_size", "vocab_size")
                 if k in mine and mine.get(k) != theirs.get(k)]
        if diffs:
            raise HyperEditError(f"{self.name} checkpoint was trained for model {mine.get('name')!r}, "
                                 f"not {theirs.get('name')!r} ({'; '.join(diffs)})")
        for name, shape in self.nets.module_shapes.items():
            try:
                actual = tuple(lm.adapter.in_out_shape(name))
            except ValueError:
                raise HyperEditError(f"{self.name} checkpoint edits {name}, which model {theirs.get('name')!r} lacks") from None
            if actual != tuple(shape):
                raise HyperEditError(f"{self.name} checkpoint expects {name} of shape {tuple(shape)}, the model has {actual}")
        if mine.get("name") and mine.get("name") != theirs.get("name"):
            log.warning("checkpoint trained on %s, applied to %s (same architecture)", mine.get("name"), theirs.get("name"))

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
        from ..progress import progress

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
        all_reduce_sum_(accumulator_tensors(acc, names), world)
        with torch.no_grad():
            shifts = scale_shifts(self.finish(acc), self.config.shift_scale)
        if first:
            self.remember_keys(acc, len(requests))
            self.remember_subjects(requests)
        return shifts, {}

    def _chunk_modules(self, index: int) -> list[str]:
        """The modules chunk ``index`` of an edit is written to: all, or one (``partition``)."""
        names = self.module_names
        return [names[index % len(names)]] if self.config.partition else names

    def _accumulate_cache(self, acc: dict, cache: Cache, names: list[str]) -> None:
        with torch.no_grad():
            for name in names:
                self.accumulate(acc, name, *cache[name])

    def update_normalizers(self, cache: Cache, world: World | None = None) -> None:
        """Merge a cache's ``[k; g]`` rows into each module's running normaliser (float64, deterministic);
        with a data-parallel ``world``, the rows of every rank's cache."""
        for name in self.module_names:
            self.nets.net_for(name)[0].normalizer.update(torch.cat(cache[name], dim=-1), world)

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
    def remember_keys(self, acc: dict, n_requests: int) -> None:
        """After an edit: record its keys for later solves (nothing by default)."""

    def prepare(self, lm) -> None:
        """Load what the aggregation needs from the model before solving (nothing by default)."""

    def contrast_gram(self, lm, requests: Sequence[EditRequest], names: list[str]) -> dict[str, torch.Tensor]:
        """``K_c^T K_c`` of rows the edit must keep, per module (none by default)."""
        return {}

    def add_rows(self, acc: dict, grams: dict[str, torch.Tensor]) -> None:
        """Add rows with target 0, given by their ``K^T K`` per module, to the accumulator before
        the solve (ignored by default: only a least-squares solve has room for them)."""

    def add_contrast(self, acc: dict, lm, requests: Sequence[EditRequest]) -> None:
        """Add the contrast rows of ``requests`` (``contrast_gram``) to the accumulator before the solve."""
        self.add_rows(acc, self.contrast_gram(lm, requests, list(acc)))

    def remember_subjects(self, requests: Sequence[EditRequest]) -> None:
        """After an edit: record what it asked about for later contrast rows (nothing by default)."""

    def new_accumulator(self) -> dict:
        raise NotImplementedError

    def accumulate(self, acc: dict, name: str, keys: torch.Tensor, grads: torch.Tensor) -> None:
        raise NotImplementedError

    def finish(self, acc: dict) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def backward(self, cache: Cache, acc: dict, shifts: dict[str, torch.Tensor],
                 grad_shifts: dict[str, torch.Tensor], replicated: bool = True) -> None:
        """Add to the hypernetwork's ``.grad`` the gradient of a loss whose dL/dS is ``grad_shifts``.

        In a data-parallel step ``cache`` is this rank's share of the tokens and the ranks' gradients
        are summed afterwards; terms that every rank computes identically from the reduced sums
        (MALMEN's dL/dlambda) are added only where ``replicated`` is true (one rank).
        """
        raise NotImplementedError

    def predict(self, cache: Cache, world: World | None = None,
                rows: dict[str, torch.Tensor] | None = None) -> tuple[dict, dict[str, torch.Tensor]]:
        """(accumulator, shifts) for an in-memory cache, without gradients (meta-training step 2).

        With a data-parallel ``world``, ``cache`` is this rank's share and the accumulated sums are
        all-reduced before the solve, so every rank gets the shifts of the whole batch. ``rows``:
        ``K^T K`` of rows with target 0 per module (``contrast_gram`` of the whole edit, the same on
        every rank), added after the reduction (``add_rows``).
        """
        acc = self.new_accumulator()
        self._accumulate_cache(acc, cache, self.module_names)  # training: never partitioned
        all_reduce_sum_(accumulator_tensors(acc, self.module_names), world or World())
        if rows:
            self.add_rows(acc, rows)
        with torch.no_grad():
            return acc, self.finish(acc)

    # ----- persistence ----------------------------------------------------------------------
    def save(self, path: str | Path, extra_meta: dict | None = None) -> Path:
        """Write ``editor.json`` (config, model identity, module shapes) and ``editor.safetensors``."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().contiguous().cpu() for k, v in self.nets.state_dict().items()}
        save_file(state, str(path / WEIGHTS_FILE))
        meta = {"editor": self.name, "config": asdict(self.config), "model": self.model,
                "modules": {n: list(s) for n, s in self.nets.module_shapes.items()},
                **self.meta, **(extra_meta or {})}
        (path / CONFIG_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True))
        return path

    @classmethod
    def from_checkpoint(cls, path: str | Path, lm=None, **overrides) -> "HyperEditor":
        """Load a trained editor (a checkpoint directory or a training run directory).

        Only runtime settings (``lm_batch_size``, ``net_batch_size``) may be overridden; with
        ``lm`` given, a checkpoint made for another model is refused with a HyperEditError.
        """
        folder, meta = read_checkpoint_meta(path)
        if meta.get("editor") != cls.name:
            raise HyperEditError(f"{path} holds a {meta.get('editor')!r} checkpoint, not {cls.name!r}")
        fixed = sorted(set(overrides) - set(cls.config_class.RUNTIME))
        if fixed:
            raise HyperEditError(f"cannot override {', '.join(fixed)} of a trained {cls.name} editor; "
                                 f"only {', '.join(cls.config_class.RUNTIME)} may change")
        config = make_config(cls.config_class, overrides, base=meta["config"])
        shapes = {name: tuple(shape) for name, shape in meta["modules"].items()}
        nets = HyperNets(shapes, config.rank, config.n_blocks, config.lr_init)
        try:
            nets.load_state_dict(load_file(str(folder / WEIGHTS_FILE)))
        except (RuntimeError, OSError) as exc:
            first = str(exc).strip().splitlines()
            raise HyperEditError(f"{folder / WEIGHTS_FILE} does not match its {CONFIG_FILE}: "
                                 f"{first[-1].strip() if first else exc}") from None
        extra = {k: v for k, v in meta.items() if k not in ("editor", "config", "model", "modules")}
        editor = cls(config, nets, meta.get("model"), extra)
        if lm is not None:
            editor.check_model(lm)
            nets.to(lm.device)
        return editor


def _identity(adapter) -> dict:
    return dict(adapter.identity())
