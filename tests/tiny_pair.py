"""Tiny random sharer/receiver pairs of different shapes, for adapter and pipeline tests."""

from __future__ import annotations

from lcf_jax.models.config import ModelConfig
from lcf_jax.models.model import Model

SHARER = ModelConfig(
    family="qwen2",
    vocab_size=97,
    hidden_size=32,
    intermediate_size=48,
    num_layers=3,
    num_heads=4,
    num_kv_heads=2,
    head_dim=8,
    qkv_bias=True,
    tie_word_embeddings=True,
)
RECEIVER = ModelConfig(
    family="qwen3",
    vocab_size=97,
    hidden_size=48,
    intermediate_size=64,
    num_layers=4,
    num_heads=4,
    num_kv_heads=2,
    head_dim=16,
    qk_norm=True,
)


def tiny_models(seed: int = 0) -> tuple[Model, Model]:
    return Model.random(SHARER, seed=seed), Model.random(RECEIVER, seed=seed + 1)


CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def tiny_tokenizer():
    """A character-level tokenizer with a chat template (vocab 100: printable ASCII, newline and
    four special tokens), for pipeline tests that go through text."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = ["<unk>", "<pad>", "<|im_start|>", "<|im_end|>"]
    chars = [chr(c) for c in range(32, 127)] + ["\n"]
    vocab = {t: i for i, t in enumerate(specials + chars)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split("", behavior="isolated")
    tok.decoder = decoders.Fuse()
    out = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="<unk>",
        pad_token="<pad>",
        eos_token="<|im_end|>",
        additional_special_tokens=["<|im_start|>"],
    )
    out.chat_template = CHAT_TEMPLATE
    return out


def tiny_text_models(seed: int = 0) -> tuple[Model, Model]:
    """The tiny pair with a shared character tokenizer (vocab 100)."""
    import dataclasses

    tokenizer = tiny_tokenizer()
    sharer = dataclasses.replace(SHARER, vocab_size=100, eos_token_id=3, pad_token_id=1)
    receiver = dataclasses.replace(RECEIVER, vocab_size=100, eos_token_id=3, pad_token_id=1)
    return (
        Model.random(sharer, seed=seed, tokenizer=tokenizer),
        Model.random(receiver, seed=seed + 1, tokenizer=tokenizer),
    )
