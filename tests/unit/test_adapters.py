"""ModelAdapter: module tables, weight orientation, shift conversion, encoding."""
from __future__ import annotations

import random

import pytest
import torch

from hyperedit.delta import EditDelta
from hyperedit.errors import HyperEditError, ModelLoadError
from hyperedit.models.adapters import ARCHITECTURES, ModelAdapter
from tiny import WORDS

EXPECTED_NAMES = {
    "llama": ("model.layers.{}.mlp.down_proj", "model.layers.{}.mlp.up_proj", 4),
    "gpt2": ("transformer.h.{}.mlp.c_proj", "transformer.h.{}.mlp.c_fc", 4),
    "t5": ("decoder.block.{}.layer.2.DenseReluDense.wo", "decoder.block.{}.layer.2.DenseReluDense.wi", 2),
    "gemma3_text": ("model.layers.{}.mlp.down_proj", "model.layers.{}.mlp.up_proj", 4),
}


def test_module_names_per_architecture(tiny_any):
    adapter = tiny_any.adapter
    down, up, n_layers = EXPECTED_NAMES[adapter.model_type]
    assert adapter.num_layers == n_layers
    assert adapter.module_names(range(n_layers)) == [down.format(i) for i in range(n_layers)]
    assert adapter.module_name(1, "up") == up.format(1)
    modules = dict(tiny_any.model.named_modules())
    for name in adapter.module_names(range(n_layers)):
        assert name in modules
        assert adapter.get_module(name) is modules[name]
        assert adapter.layer_of(name) == int(name.split(".")[2])


def test_module_name_errors(tiny_llama):
    adapter = tiny_llama.adapter
    with pytest.raises(ValueError, match="out of range"):
        adapter.module_name(4)
    with pytest.raises(ValueError, match="out of range"):
        adapter.module_name(-1)
    with pytest.raises(ValueError, match="no MLP module"):
        adapter.module_name(0, "nonexistent")
    # Bad layer options are user errors (one line in the CLI) and still ValueErrors for callers.
    with pytest.raises(HyperEditError, match="out of range"):
        adapter.module_names([1, 9])
    with pytest.raises(HyperEditError, match="layer numbers"):
        adapter.module_names("abc")
    with pytest.raises(ValueError, match="layer numbers"):
        adapter.module_names(5)
    assert adapter.module_names(["1", 2]) == [adapter.module_name(1), adapter.module_name(2)]
    with pytest.raises(ValueError, match="not inside"):
        adapter.layer_of("lm_head")
    with pytest.raises(ValueError, match="no module"):
        adapter.get_module("model.layers.9.mlp.down_proj")


def test_default_layers_are_upper_middle(tiny_llama, tiny_t5):
    assert tiny_llama.adapter.default_layers(1) == [2]
    assert tiny_llama.adapter.default_layers(2) == [1, 2]
    assert tiny_llama.adapter.default_layers(4) == [0, 1, 2, 3]
    assert tiny_t5.adapter.default_layers(1) == [1]


def test_in_out_shape_orientation(tiny_any):
    adapter = tiny_any.adapter
    name = adapter.module_name(0)
    d_in, d_out = adapter.in_out_shape(name)
    # The down projection maps the MLP's inner width to the hidden width (32 in every tiny model).
    assert d_out == 32 and d_in > 32
    assert tuple(adapter.weight_in_out(name).shape) == (d_in, d_out)
    if adapter.spec.stores_in_out:
        assert tuple(adapter.weight(name).shape) == (d_in, d_out)
    else:
        assert tuple(adapter.weight(name).shape) == (d_out, d_in)


@pytest.mark.parametrize("kind", ["down", "up"])
def test_weight_in_out_is_the_modules_linear_map(tiny_any, kind):
    """x @ W_in_out (+ bias) equals the module's own forward, for Conv1D and Linear alike."""
    adapter = tiny_any.adapter
    name = adapter.module_name(1, kind)
    module = adapter.get_module(name)
    d_in, _ = adapter.in_out_shape(name)
    x = torch.randn(3, 5, d_in, generator=torch.Generator().manual_seed(0))
    expected = x @ adapter.weight_in_out(name)
    if getattr(module, "bias", None) is not None:
        expected = expected + module.bias
    with torch.no_grad():
        assert torch.allclose(module(x), expected, atol=1e-5)


def test_gpt2_and_llama_store_opposite_layouts(tiny_gpt2, tiny_llama):
    assert type(tiny_gpt2.adapter.get_module("transformer.h.0.mlp.c_proj")).__name__ == "Conv1D"
    assert tiny_gpt2.adapter.weight_in_out("transformer.h.0.mlp.c_proj") is \
        tiny_gpt2.adapter.weight("transformer.h.0.mlp.c_proj")
    w = tiny_llama.adapter.weight("model.layers.0.mlp.down_proj")
    assert torch.equal(tiny_llama.adapter.weight_in_out("model.layers.0.mlp.down_proj"), w.t())


def test_shift_to_param_round_trip_and_effect(tiny_any):
    """A (d_in, d_out) shift S, converted and added to the weight, changes module(x) by x @ S."""
    adapter = tiny_any.adapter
    name = adapter.module_name(0)
    d_in, d_out = adapter.in_out_shape(name)
    s = torch.randn(d_in, d_out, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    param = adapter.shift_to_param(name, s)
    weight = adapter.weight(name)
    assert param.shape == weight.shape and param.dtype == weight.dtype and param.is_contiguous()
    assert torch.equal(adapter.param_to_in_out(name, param), s.float())
    if not adapter.spec.stores_in_out:
        assert torch.equal(param, s.float().t())

    module = adapter.get_module(name)
    x = torch.randn(4, d_in, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        before = module(x)
        delta = EditDelta.from_in_out(adapter, {name: s}, editor="test")
        with delta.applied(tiny_any.model):
            after = module(x)
    assert torch.allclose(after - before, x @ s.float(), atol=1e-4)


def test_identity(tiny_any):
    ident = tiny_any.adapter.identity()
    assert ident["model_type"] == tiny_any.adapter.model_type
    assert ident["hidden_size"] == 32
    assert ident["num_layers"] == tiny_any.adapter.num_layers
    assert ident["vocab_size"] == tiny_any.model.config.vocab_size
    assert ident["name"] == tiny_any.name


def test_encode_causal_labels_and_padding(tiny_llama):
    adapter, tok = tiny_llama.adapter, tiny_llama.tokenizer
    prompts = ["the eiffel tower is located in the city of", "paris is in"]
    targets = ["rome", "the country of france"]
    batch = adapter.encode(prompts, targets)
    ids, mask, labels = batch["input_ids"], batch["attention_mask"], batch["labels"]
    assert ids.shape == mask.shape == labels.shape
    for i, (p, t) in enumerate(zip(prompts, targets)):
        p_ids = tok(p)["input_ids"]
        t_ids = tok(t, add_special_tokens=False)["input_ids"]
        n = len(p_ids) + len(t_ids)
        assert ids[i, :n].tolist() == p_ids + t_ids
        assert mask[i, :n].all() and not mask[i, n:].any()
        assert (labels[i, :len(p_ids)] == -100).all()  # prompt masked
        assert labels[i, len(p_ids):n].tolist() == t_ids  # target tokens kept
        assert (labels[i, n:] == -100).all()  # padding masked
        assert (ids[i, n:] == tok.pad_token_id).all()
    # The shorter example really is padded.
    assert not mask[0].all() or not mask[1].all()


def test_encode_seq2seq(tiny_t5):
    adapter, tok = tiny_t5.adapter, tiny_t5.tokenizer
    batch = adapter.encode(["the capital of france is", "paris is"], ["rome", "the capital of italy"])
    assert batch["input_ids"][0].tolist() == tok("the capital of france is")["input_ids"]
    assert batch["labels"][0].tolist()[:1] == tok("rome")["input_ids"]
    assert (batch["labels"][0, 1:] == -100).all()
    assert batch["labels"][1].tolist() == tok("the capital of italy")["input_ids"]
    assert batch["attention_mask"][1].tolist() == [1, 1, 0, 0, 0]


def test_encode_length_mismatch(tiny_llama):
    with pytest.raises(ValueError, match="differ in length"):
        tiny_llama.adapter.encode(["the city"], [])


def test_encode_prompts_left_padded(tiny_gpt2):
    adapter, tok = tiny_gpt2.adapter, tiny_gpt2.tokenizer
    batch = adapter.encode_prompts(["the capital of france is", "paris"])
    assert batch["input_ids"][1, -1].item() == tok("paris")["input_ids"][0]
    assert batch["attention_mask"][1].tolist() == [0, 0, 0, 0, 1]
    assert (batch["input_ids"][1, :4] == tok.pad_token_id).all()


@pytest.fixture(scope="module")
def bpe_tokenizer():
    """A small byte-level BPE tokenizer (GPT-2 style) where ' paris' and 'paris' differ."""
    from tokenizers import ByteLevelBPETokenizer
    from transformers import PreTrainedTokenizerFast

    rng = random.Random(0)
    sentences = [" ".join(rng.choice(WORDS[:80]) for _ in range(8)) for _ in range(300)]
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(sentences, vocab_size=400, min_frequency=2, special_tokens=["<pad>", "</s>"])
    return PreTrainedTokenizerFast(tokenizer_object=bpe._tokenizer, pad_token="<pad>", eos_token="</s>")


def test_encode_target_gets_leading_space(tiny_gpt2, bpe_tokenizer):
    tok = bpe_tokenizer
    assert tok(" paris")["input_ids"] != tok("paris")["input_ids"]  # the test is meaningful
    adapter = ModelAdapter(tiny_gpt2.model, tok)
    batch = adapter.encode(["the city of"], ["paris"])
    p_ids = tok("the city of")["input_ids"]
    target_ids = batch["labels"][0][batch["labels"][0] != -100].tolist()
    assert target_ids == tok(" paris", add_special_tokens=False)["input_ids"]
    assert batch["input_ids"][0].tolist() == tok("the city of paris")["input_ids"]
    assert batch["input_ids"][0, :len(p_ids)].tolist() == p_ids


def test_unknown_model_type_raises_model_load_error(tiny_llama):
    from transformers import BertConfig, BertModel

    bert = BertModel(BertConfig(vocab_size=50, hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
                                intermediate_size=16))
    assert "bert" not in ARCHITECTURES
    with pytest.raises(ModelLoadError, match="unsupported architecture.*bert"):
        ModelAdapter(bert, tiny_llama.tokenizer)


def test_output_scale_turns_a_residual_change_into_the_mlp_output_change_that_makes_it(tiny_gemma3, tiny_llama):
    """Gemma normalises the MLP output before the residual add: writing ``scale * R`` into the down
    projection's output moves the block output by R, up to the norm's scale direction (to first
    order, so R is small here)."""
    from hyperedit.hooks import capture, edit_output

    lm = tiny_gemma3
    name = lm.adapter.module_name(1)
    assert tiny_llama.adapter.output_scale(tiny_llama.adapter.module_name(1), torch.ones(1, 64)) is None
    assert lm.adapter.output_scale(lm.adapter.module_name(1, "up"), torch.ones(1, 32)) is None
    batch = lm.adapter.encode_prompts(["the eiffel tower is located in the city of"])
    pos = batch["input_ids"].shape[1] - 1

    def block_output():
        got = {}

        def read(inputs, out):
            got["h"] = out[0, pos].detach().clone()
            return out

        with capture(lm.model, [name], grads=False) as cap, edit_output(lm.model, "model.layers.1", read):
            lm.model(**batch)
        return cap.key(name)[pos], got["h"]

    key, before = block_output()
    scale = lm.adapter.output_scale(name, key[None].double())[0]
    torch.manual_seed(0)
    R = torch.randn(before.shape, dtype=torch.float64) * 1e-3 * float(before.norm()) / before.numel() ** 0.5
    R[scale == 0] = 0.0  # dimensions the layer cannot move
    change = (scale * R).float()
    shift = key[:, None] * change[None, :] / float(key @ key)  # (d_in, d_out): key @ shift == change
    weight = lm.adapter.weight(name)
    with torch.no_grad():
        weight += lm.adapter.shift_to_param(name, shift)
    try:
        _, after = block_output()
    finally:
        with torch.no_grad():
            weight -= lm.adapter.shift_to_param(name, shift)
    # To first order the realised change is R minus a multiple of the normalised MLP output y (the
    # one direction a norm cannot move: its scale); orthogonal to y it matches R.
    norm = lm.adapter.get_module("model.layers.1.post_feedforward_layernorm")
    with torch.no_grad():
        y = norm((key @ lm.adapter.weight_in_out(name))[None])[0].double()
    miss = (after - before).double() - R
    off_y = miss - (miss @ y) / (y @ y) * y
    assert float(off_y.norm() / R.norm()) < 0.02
    assert float((miss @ y).abs() / (y.norm() * R.norm())) < 0.5
