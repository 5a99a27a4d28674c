"""Cross-tokenizer alignment, on two small tokenizers built here with different vocabularies."""

from __future__ import annotations

import numpy as np
import pytest
from tiny_pair import RECEIVER, SHARER, tiny_models
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from lcf_jax import communicate
from lcf_jax.adapters import build
from lcf_jax.align import align_batch, align_tokens


@pytest.fixture(scope="module")
def tokenizers():
    words = {"<s>": 0, "<unk>": 1, "hello": 2, "world": 3, "qqq": 4, "wo": 5}
    receiver = Tokenizer(models.WordLevel(words, unk_token="<unk>"))
    receiver.pre_tokenizer = pre_tokenizers.Whitespace()
    pieces = {"[UNK]": 0, "he": 1, "##llo": 2, "wor": 3, "##ld": 4, "w": 5, "##o": 6}
    sharer = Tokenizer(models.WordPiece(pieces, unk_token="[UNK]"))
    sharer.pre_tokenizer = pre_tokenizers.Whitespace()
    sharer.decoder = decoders.WordPiece()
    return (
        PreTrainedTokenizerFast(tokenizer_object=receiver, unk_token="<unk>", bos_token="<s>"),
        PreTrainedTokenizerFast(tokenizer_object=sharer, unk_token="[UNK]"),
    )


def test_first_and_longest_strategies(tokenizers):
    r, s = tokenizers
    ids = r.convert_tokens_to_ids(["<s>", "hello", "world", "qqq", "wo"])
    first, fuse = align_tokens(r, s, ids, strategy="first")
    longest, _ = align_tokens(r, s, ids, strategy="longest")
    names = s.convert_ids_to_tokens
    # hello -> he ##llo: first takes "he", longest takes "llo"; world -> wor ##ld: "wor" both ways.
    assert names(first[1:]) == ["he", "wor", "[UNK]", "w"]
    assert names(longest[1:]) == ["##llo", "wor", "[UNK]", "w"]
    assert fuse == [False, True, True, True, True]  # the template/special token is not fused


def test_template_mask_and_bad_strategy(tokenizers):
    r, s = tokenizers
    ids = r.convert_tokens_to_ids(["hello", "world"])
    _, fuse = align_tokens(r, s, ids, template_mask=[True, False])
    assert fuse == [False, True]
    with pytest.raises(ValueError, match="strategy"):
        align_tokens(r, s, ids, strategy="middle")


def test_aligned_prompts_drive_shared_context_fusion(tokenizers):
    r, s = tokenizers
    sharer, receiver = tiny_models()
    prompts = [
        r.convert_tokens_to_ids(["<s>", "hello", "world", "wo"]),
        r.convert_tokens_to_ids(["<s>", "qqq", "hello"]),
    ]
    sharer_prompts, masks = align_batch(r, s, prompts)
    assert [len(p) for p in sharer_prompts] == [len(p) for p in prompts]
    adapter = build("lcf", SHARER, RECEIVER, gate_init=1.0)
    out = communicate.answer_shared_context(
        adapter, sharer, receiver, prompts, 4, sharer_prompts=sharer_prompts, fuse_mask=masks, stop_tokens=[]
    )
    assert out.tokens.shape == (2, 4)
    # Positions not fused are left exactly as the receiver computed them.
    heads = [p[:-1] for p in prompts]
    r_cache = communicate.prefill(receiver, heads, bucket=8)
    s_cache = communicate.prefill(sharer, [p[:-1] for p in sharer_prompts], bucket=8)
    mask = np.zeros((2, 8), bool)
    for row, m in zip(mask, masks):
        row[: len(m) - 1] = m[:-1]
    fused = communicate.fuse(adapter, s_cache, r_cache, mask)
    np.testing.assert_array_equal(np.asarray(fused.k[:, :, 0]), np.asarray(r_cache.k[:, :, 0]))  # <s> untouched
    assert not np.array_equal(np.asarray(fused.k[:, 0, 1]), np.asarray(r_cache.k[:, 0, 1]))
