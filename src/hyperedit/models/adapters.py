"""Per-architecture knowledge: which MLP modules are editable, weight orientation, tokenisation.

Adapters are chosen by ``config.model_type`` from a table, never by substrings of a name.
Every editor works with shifts ``S`` in one orientation, ``(d_in, d_out)``; the adapter converts
to and from the parameter's own layout (``nn.Linear`` stores ``(d_out, d_in)``, GPT-2's Conv1D
stores ``(d_in, d_out)``), because square weights make shape-guessing ambiguous.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..errors import ModelLoadError, OptionError


@dataclass(frozen=True)
class ArchSpec:
    """Module paths of one architecture family, relative to the model root."""

    layers: str  # attribute path of the layer list
    layer_count_attr: str  # config attribute holding the number of layers
    mlp_modules: dict[str, str]  # semantic name -> path inside one layer
    default_module: str  # semantic name edited by default (the MLP output projection)
    stores_in_out: bool  # True when the weight is stored (d_in, d_out), e.g. GPT-2 Conv1D
    seq2seq: bool = False
    fast_logits: bool = True  # the logits are a function of lm_head(last hidden) alone (see head_logits)
    softcap_attr: str | None = None  # config attribute of a final logit soft-cap, cap * tanh(logits / cap)
    post_mlp_norm: str | None = None  # path inside a layer of an RMSNorm (weight 1 + w) on the MLP output


_LLAMA = ArchSpec(
    layers="model.layers",
    layer_count_attr="num_hidden_layers",
    mlp_modules={"down": "mlp.down_proj", "up": "mlp.up_proj", "gate": "mlp.gate_proj"},
    default_module="down",
    stores_in_out=False,
)
ARCHITECTURES: dict[str, ArchSpec] = {
    "llama": _LLAMA,
    "qwen2": _LLAMA,
    "mistral": _LLAMA,
    "gemma": _LLAMA,
    # Gemma 2 (and Gemma 3 configs that set it) soft-cap the final logits; head_logits applies the cap.
    # Both also normalise the MLP output before adding it to the residual stream (output_scale).
    "gemma2": ArchSpec(**{**_LLAMA.__dict__, "softcap_attr": "final_logit_softcapping",
                          "post_mlp_norm": "post_feedforward_layernorm"}),
    "gemma3_text": ArchSpec(**{**_LLAMA.__dict__, "softcap_attr": "final_logit_softcapping",
                               "post_mlp_norm": "post_feedforward_layernorm"}),
    "gpt2": ArchSpec(
        layers="transformer.h",
        layer_count_attr="n_layer",
        mlp_modules={"down": "mlp.c_proj", "up": "mlp.c_fc"},
        default_module="down",
        stores_in_out=True,
    ),
    "gptj": ArchSpec(
        layers="transformer.h",
        layer_count_attr="n_layer",
        mlp_modules={"down": "mlp.fc_out", "up": "mlp.fc_in"},
        default_module="down",
        stores_in_out=False,
    ),
    "gpt_neox": ArchSpec(
        layers="gpt_neox.layers",
        layer_count_attr="num_hidden_layers",
        mlp_modules={"down": "mlp.dense_4h_to_h", "up": "mlp.dense_h_to_4h"},
        default_module="down",
        stores_in_out=False,
    ),
    "t5": ArchSpec(
        layers="decoder.block",
        layer_count_attr="num_decoder_layers",
        mlp_modules={"down": "layer.2.DenseReluDense.wo", "up": "layer.2.DenseReluDense.wi"},
        default_module="down",
        stores_in_out=False,
        seq2seq=True,
        fast_logits=False,
    ),
}


def _get_attr_path(root: nn.Module, path: str) -> nn.Module:
    obj = root
    for part in path.split("."):
        obj = getattr(obj, part)
    return obj


class ModelAdapter:
    """Architecture-aware access to one loaded model's editable modules and tokenisation."""

    def __init__(self, model: nn.Module, tokenizer, chat_template: bool = False):
        model_type = getattr(model.config, "model_type", None)
        if model_type not in ARCHITECTURES:
            known = ", ".join(sorted(ARCHITECTURES))
            raise ModelLoadError(f"unsupported architecture model_type={model_type!r}; supported: {known}")
        self.model = model
        self.tokenizer = tokenizer
        self.model_type = model_type
        self.spec = ARCHITECTURES[model_type]
        self.chat_template = chat_template

    # ----- structure -----------------------------------------------------------------
    @property
    def num_layers(self) -> int:
        return int(getattr(self.model.config, self.spec.layer_count_attr))

    @property
    def is_seq2seq(self) -> bool:
        return self.spec.seq2seq

    def module_name(self, layer: int, kind: str | None = None) -> str:
        """Full parameter-path name of an MLP module, e.g. ``model.layers.3.mlp.down_proj``."""
        kind = kind or self.spec.default_module
        if kind not in self.spec.mlp_modules:
            raise OptionError(f"{self.model_type} has no MLP module {kind!r}; known: {sorted(self.spec.mlp_modules)}")
        if not 0 <= layer < self.num_layers:
            raise OptionError(f"layer {layer} out of range 0..{self.num_layers - 1}")
        return f"{self.spec.layers}.{layer}.{self.spec.mlp_modules[kind]}"

    def module_names(self, layers, kind: str | None = None) -> list[str]:
        try:
            numbers = [int(layer) for layer in layers]
        except (TypeError, ValueError):
            raise OptionError(f"layers must be a list of layer numbers, got {layers!r}") from None
        return [self.module_name(layer, kind) for layer in numbers]

    def layer_of(self, module_name: str) -> int:
        prefix = self.spec.layers + "."
        if not module_name.startswith(prefix):
            raise ValueError(f"{module_name!r} is not inside {self.spec.layers}")
        return int(module_name[len(prefix):].split(".")[0])

    def default_layers(self, count: int = 1) -> list[int]:
        """Upper-middle layers, where MLP edits of factual associations work well."""
        n = self.num_layers
        top = max(count, int(round(n * 0.8)))
        return list(range(top - count, top))

    def head_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """The model's logits from final hidden states (``spec.fast_logits`` models): the output
        head, then the final soft-cap where the config sets one (Gemma 2/3)."""
        logits = self.model.get_output_embeddings()(hidden)
        cap = getattr(self.model.config, self.spec.softcap_attr, None) if self.spec.softcap_attr else None
        return cap * torch.tanh(logits / cap) if cap else logits

    def output_scale(self, name: str, keys: torch.Tensor, floor: float = 0.05) -> torch.Tensor | None:
        """Per key and output dimension (n, d_out): the factor turning a wanted change R of the
        residual stream into the change of module ``name``'s output that makes it, to first order;
        None where the output is added to the residual stream as is (Llama, GPT-2, ...).

        Gemma 2/3 add ``g * o / rms(o)`` (g = 1 + w, per dimension) for the down projection's output
        o = k W, so the change is ``rms(o) R / g``: exact up to one common scale of the normalised
        output (the norm fixes its size, which later layers make up). Dimensions with |g| below
        ``floor`` times the median |g| cannot be moved by this layer and get factor 0.
        """
        norm_path = self.spec.post_mlp_norm
        if norm_path is None or not name.endswith("." + self.spec.mlp_modules[self.spec.default_module]):
            return None
        norm = self.get_module(f"{self.spec.layers}.{self.layer_of(name)}.{norm_path}")
        out = keys.double() @ self.weight_in_out(name).double().to(keys.device)
        rms = (out.pow(2).mean(-1, keepdim=True) + float(getattr(norm, "eps", 1e-6))).sqrt()
        gain = 1.0 + norm.weight.double().to(keys.device)
        inverse = torch.where(gain.abs() >= floor * gain.abs().median(), 1.0 / gain, torch.zeros_like(gain))
        return (rms * inverse).to(keys.dtype)

    def get_module(self, name: str) -> nn.Module:
        try:
            return _get_attr_path(self.model, name)
        except AttributeError as exc:
            raise ValueError(f"model has no module {name!r}") from exc

    def weight(self, name: str) -> nn.Parameter:
        return self.get_module(name).weight

    def in_out_shape(self, name: str) -> tuple[int, int]:
        """(d_in, d_out) of a module's linear map."""
        shape = tuple(self.weight(name).shape)
        return shape if self.spec.stores_in_out else (shape[1], shape[0])

    def weight_in_out(self, name: str) -> torch.Tensor:
        """The weight as a (d_in, d_out) view."""
        w = self.weight(name)
        return w if self.spec.stores_in_out else w.t()

    def shift_to_param(self, name: str, shift_in_out: torch.Tensor) -> torch.Tensor:
        """Convert a (d_in, d_out) shift to the parameter's own layout (and dtype)."""
        w = self.weight(name)
        s = shift_in_out if self.spec.stores_in_out else shift_in_out.t()
        return s.to(dtype=w.dtype, device=w.device).contiguous()

    def param_to_in_out(self, name: str, tensor: torch.Tensor) -> torch.Tensor:
        return tensor if self.spec.stores_in_out else tensor.t()

    def identity(self) -> dict:
        """What a delta must match to be applied: architecture and sizes."""
        cfg = self.model.config
        return {
            "model_type": self.model_type,
            "num_layers": self.num_layers,
            "hidden_size": int(getattr(cfg, "hidden_size", getattr(cfg, "n_embd", getattr(cfg, "d_model", 0)))),
            "vocab_size": int(getattr(cfg, "vocab_size", 0)),
            "name": getattr(self.model, "hyperedit_name", None) or getattr(cfg, "_name_or_path", None),
        }

    # ----- tokenisation ----------------------------------------------------------------
    def format_prompt(self, prompt: str) -> str:
        if not self.chat_template:
            return prompt
        return self.tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True
        )

    def _prompt_target_ids(self, prompt: str, target: str) -> tuple[list[int], list[int]]:
        """Token ids of the prompt and of the target continuation (with a leading space).

        Tokenising the whole string and splitting at the prompt boundary keeps the merge the model
        would see; when the prompt's tokens are not a prefix of the whole, fall back to tokenising
        the target on its own.
        """
        tok = self.tokenizer
        prompt = self.format_prompt(prompt)
        sep = "" if (self.chat_template or prompt.endswith((" ", "\n"))) else " "
        prompt_ids = tok(prompt, add_special_tokens=True)["input_ids"]
        if self.is_seq2seq:
            return prompt_ids, tok(target, add_special_tokens=True)["input_ids"]
        full_ids = tok(prompt + sep + target, add_special_tokens=True)["input_ids"]
        if full_ids[: len(prompt_ids)] == prompt_ids and len(full_ids) > len(prompt_ids):
            return prompt_ids, full_ids[len(prompt_ids):]
        return prompt_ids, tok(sep + target, add_special_tokens=False)["input_ids"]

    def token_count(self, prompt: str, target: str | None = None) -> int:
        """Tokens the model reads for ``prompt`` followed by ``target`` (as ``encode`` builds them), or
        for ``prompt`` alone (as ``encode_prompts`` does)."""
        if target is None:
            return len(self.tokenizer(self.format_prompt(prompt), add_special_tokens=True)["input_ids"])
        prompt_ids, target_ids = self._prompt_target_ids(prompt, target)
        return len(prompt_ids) + len(target_ids)

    def encode(self, prompts: list[str], targets: list[str], device=None) -> dict[str, torch.Tensor]:
        """Batch of (prompt, target) pairs, right-padded.

        Causal LMs: ``input_ids`` = prompt + target, ``labels`` = -100 except on target tokens.
        Seq2seq: encoder ``input_ids`` = prompt, ``labels`` = target (decoder side).
        """
        if len(prompts) != len(targets):
            raise ValueError("prompts and targets differ in length")
        pad_id = self.tokenizer.pad_token_id
        if pad_id is None:
            pad_id = self.tokenizer.eos_token_id or 0
        pairs = [self._prompt_target_ids(p, t) for p, t in zip(prompts, targets)]
        if self.is_seq2seq:
            inputs = [p for p, _ in pairs]
            labels = [t for _, t in pairs]
            batch = _pad(inputs, pad_id, "input_ids")
            batch["labels"] = _pad(labels, -100, "labels")["labels"]
        else:
            seqs = [p + t for p, t in pairs]
            labels = [[-100] * len(p) + t for p, t in pairs]
            batch = _pad(seqs, pad_id, "input_ids")
            batch["labels"] = _pad(labels, -100, "labels")["labels"]
        if device is not None:
            batch = {k: v.to(device) for k, v in batch.items()}
        return batch

    def encode_prompts(self, prompts: list[str], device=None) -> dict[str, torch.Tensor]:
        """Prompts alone, left-padded (for generation and last-token reads)."""
        pad_id = self.tokenizer.pad_token_id
        if pad_id is None:
            pad_id = self.tokenizer.eos_token_id or 0
        ids = [self.tokenizer(self.format_prompt(p), add_special_tokens=True)["input_ids"] for p in prompts]
        batch = _pad(ids, pad_id, "input_ids", left=True)
        if device is not None:
            batch = {k: v.to(device) for k, v in batch.items()}
        return batch


def _pad(seqs: list[list[int]], pad_value: int, key: str, left: bool = False) -> dict[str, torch.Tensor]:
    width = max(len(s) for s in seqs)
    out = torch.full((len(seqs), width), pad_value, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        if left:
            out[i, width - len(s):] = torch.tensor(s, dtype=torch.long)
            mask[i, width - len(s):] = 1
        else:
            out[i, : len(s)] = torch.tensor(s, dtype=torch.long)
            mask[i, : len(s)] = 1
    result = {key: out}
    if key == "input_ids":
        result["attention_mask"] = mask
    return result
