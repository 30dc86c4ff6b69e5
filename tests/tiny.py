"""Tiny randomly initialised models (Llama, GPT-2, T5, Gemma-3 shapes) with a word-level tokenizer.

Built from configs and saved as ordinary Hugging Face model directories, so tests go through
the same ``load_model`` path as real models.
"""
from __future__ import annotations

from pathlib import Path

import torch

WORDS = (
    "the a an of in on at to is was by for with and or not are be it its this that from as "
    "city country capital language river mountain company product team sport music band album "
    "paris rome berlin london madrid tokyo moscow vienna lisbon athens cairo delhi beijing oslo "
    "france italy germany england spain japan russia austria portugal greece egypt india china norway "
    "french italian german english spanish japanese russian portuguese greek arabic hindi chinese "
    "eiffel tower colosseum louvre museum bridge palace castle church station airport university "
    "apple google microsoft toyota nokia sony intel amazon tesla ford "
    "football tennis golf chess cricket hockey baseball basketball "
    "piano guitar violin drums jazz rock opera "
    "red green blue black white yellow "
    "located born died plays speaks owns made founded written directed played sang "
    "where who what which when how does did do name answer question true false yes no "
    "one two three four five six seven eight nine ten "
    "john mary peter anna paul lisa mark sara tom emma "
    "cat dog bird fish horse cow lion tiger bear wolf "
    "mother father son daughter friend teacher doctor king queen "
    "is_a famous old new big small good bad first last "
    "sentence review sentiment positive negative claim evidence "
    ". , ? ! : ' - ( )"
).split()
SPECIALS = ["<pad>", "<unk>", "<s>", "</s>"]


def word_tokenizer(path: Path):
    """A word-level fast tokenizer over WORDS, saved into ``path``."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(SPECIALS + sorted(set(WORDS)))}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Whitespace()])
    tok = PreTrainedTokenizerFast(tokenizer_object=core, pad_token="<pad>", unk_token="<unk>",
                                  bos_token="<s>", eos_token="</s>")
    tok.save_pretrained(path)
    return tok


def build_tiny(kind: str, path: Path, seed: int = 0) -> Path:
    """Write a tiny random model of ``kind`` (llama | gpt2 | t5 | gemma3) with its tokenizer into ``path``.

    The Gemma-3 one has what sets the family apart: scaled embeddings, (1 + w) RMSNorms before and
    after attention and MLP, a tied head, sliding-window layers (window 4, shorter than most test
    prompts) and, unlike the real 270M model, a final logit soft-cap.
    """
    from transformers import (Gemma3ForCausalLM, Gemma3TextConfig, GPT2Config, GPT2LMHeadModel, LlamaConfig,
                              LlamaForCausalLM, T5Config, T5ForConditionalGeneration)

    path.mkdir(parents=True, exist_ok=True)
    tok = word_tokenizer(path)
    vocab = len(tok)
    torch.manual_seed(seed)
    if kind == "llama":
        config = LlamaConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=4,
                             num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                             pad_token_id=0, bos_token_id=2, eos_token_id=3, tie_word_embeddings=False)
        model = LlamaForCausalLM(config)
    elif kind == "gpt2":
        config = GPT2Config(vocab_size=vocab, n_embd=32, n_layer=4, n_head=4, n_positions=128,
                            bos_token_id=2, eos_token_id=3, pad_token_id=0)
        model = GPT2LMHeadModel(config)
    elif kind == "t5":
        config = T5Config(vocab_size=vocab, d_model=32, d_ff=64, d_kv=8, num_layers=2, num_decoder_layers=2,
                          num_heads=4, pad_token_id=0, eos_token_id=3, decoder_start_token_id=0)
        model = T5ForConditionalGeneration(config)
    elif kind == "gemma3":
        config = Gemma3TextConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=4,
                                  num_attention_heads=4, num_key_value_heads=1, head_dim=8,
                                  max_position_embeddings=128, sliding_window=4,
                                  layer_types=["sliding_attention", "sliding_attention", "full_attention",
                                               "sliding_attention"],
                                  final_logit_softcapping=5.0, pad_token_id=0, bos_token_id=2, eos_token_id=3,
                                  tie_word_embeddings=True)
        model = Gemma3ForCausalLM(config)
        with torch.no_grad():  # non-zero norm weights, so a missed (1 + w) offset would show
            for name, p in model.named_parameters():
                if name.endswith("norm.weight"):
                    p.normal_(0.0, 0.5)
    else:
        raise ValueError(kind)
    model.save_pretrained(path, safe_serialization=True)
    return path
