"""Parity with transformers' PyTorch models on tiny random checkpoints: logits, every layer's cache,
chunked prefill + decode, padded batches, and the HF round trip."""

from __future__ import annotations

import json

import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from flax import nnx
from hf_tiny import CASES, save_tiny, tiny_hf_model
from safetensors.numpy import load_file

import lcf_jax
from lcf_jax.models.layers import Attention, attention_kernel

TOKENS = np.random.RandomState(0).randint(0, 97, (2, 13)).astype(np.int32)


@pytest.fixture(scope="module", params=sorted(CASES))
def pair(request, tmp_path_factory):
    family, overrides = CASES[request.param]
    torch_model = tiny_hf_model(family, **overrides)
    directory = save_tiny(torch_model, tmp_path_factory.mktemp(request.param))
    return torch_model, lcf_jax.load_model(directory), directory


def torch_forward(model, tokens, attention_mask=None):
    with torch.no_grad():
        mask = None if attention_mask is None else torch.tensor(attention_mask)
        out = model(torch.tensor(tokens, dtype=torch.long), attention_mask=mask, use_cache=True)
    return out.logits.numpy(), out.past_key_values


def test_logits_and_every_layer_cache_match_transformers(pair):
    torch_model, model, _ = pair
    ref_logits, ref_cache = torch_forward(torch_model, TOKENS)
    logits, cache = model(TOKENS)
    assert logits.shape == ref_logits.shape
    assert np.abs(np.asarray(logits) - ref_logits).max() <= 1e-4
    for layer in range(model.config.num_layers):
        # transformers caches [B, K, S, H]; ours [B, S, K, H].
        ref_k = ref_cache.layers[layer].keys.numpy().transpose(0, 2, 1, 3)
        ref_v = ref_cache.layers[layer].values.numpy().transpose(0, 2, 1, 3)
        k, v = cache.layer(layer)
        assert np.abs(np.asarray(k) - ref_k).max() <= 1e-5, f"layer {layer} keys"
        assert np.abs(np.asarray(v) - ref_v).max() <= 1e-5, f"layer {layer} values"
    np.testing.assert_array_equal(np.asarray(cache.lengths), [13, 13])


def test_chunked_prefill_and_token_by_token_decode_equal_one_forward(pair):
    _, model, _ = pair
    full, full_cache = model(TOKENS)
    pieces, cache = [], None
    for start, stop in ((0, 5), (5, 9), (9, 10), (10, 11), (11, 12), (12, 13)):
        logits, cache = model(TOKENS[:, start:stop], cache)
        pieces.append(np.asarray(logits))
    assert np.abs(np.concatenate(pieces, axis=1) - np.asarray(full)).max() <= 1e-4
    valid = int(cache.lengths[0])
    assert valid == 13
    assert np.abs(np.asarray(cache.k[:, :, :valid]) - np.asarray(full_cache.k)).max() <= 1e-5


def test_padded_batch_equals_rows_run_alone(pair):
    torch_model, model, _ = pair
    rows = [TOKENS[0, :13], TOKENS[1, :6], TOKENS[0, 3:12]]
    tokens, lengths = lcf_jax.sampling.pad_batch([r.tolist() for r in rows], pad_id=5)
    logits, cache = model(tokens, lengths=lengths)
    # Then one decode step per row, each at its own position.
    step_logits, cache = model(np.array([[7], [8], [9]], np.int32), cache)
    for i, row in enumerate(rows):
        alone, alone_cache = model(row[None])
        n = len(row)
        assert np.abs(np.asarray(logits[i, :n]) - np.asarray(alone[0])).max() <= 1e-4
        assert np.abs(np.asarray(cache.k[:, i, :n]) - np.asarray(alone_cache.k[:, 0])).max() <= 1e-5
        alone_step, _ = model(np.array([[7 + i]], np.int32), alone_cache)
        assert np.abs(np.asarray(step_logits[i]) - np.asarray(alone_step[0])).max() <= 1e-4
    np.testing.assert_array_equal(np.asarray(cache.lengths), [14, 7, 10])


def test_padded_batch_matches_transformers_with_attention_mask(pair):
    torch_model, model, _ = pair
    tokens, lengths = lcf_jax.sampling.pad_batch([TOKENS[0, :13].tolist(), TOKENS[1, :8].tolist()])
    mask = (np.arange(tokens.shape[1])[None] < lengths[:, None]).astype(np.int64)
    ref_logits, _ = torch_forward(torch_model, tokens, mask)
    logits, _ = model(tokens, lengths=lengths)
    for i, n in enumerate(lengths):
        assert np.abs(np.asarray(logits[i, :n]) - ref_logits[i, :n]).max() <= 1e-4


def test_hf_round_trip_reproduces_every_weight_exactly(pair, tmp_path):
    torch_model, model, directory = pair
    out = lcf_jax.save_hf(model, tmp_path / "saved")
    original, saved = load_file(str(directory / "model.safetensors")), load_file(str(out / "model.safetensors"))
    if torch_model.config.tie_word_embeddings:
        original.pop("lm_head.weight", None)
    assert sorted(original) == sorted(saved)
    for name in original:
        np.testing.assert_array_equal(original[name], saved[name], err_msg=name)
    # transformers itself reads the saved directory back to the same model.
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    ref, _ = torch_forward(torch_model, TOKENS)
    again, _ = torch_forward(reloaded, TOKENS)
    np.testing.assert_array_equal(ref, again)
    hf_config = json.loads((out / "config.json").read_text())
    assert lcf_jax.models.from_hf_config(hf_config) == model.config


def test_bfloat16_load_tracks_float32(pair):
    _, model, directory = pair
    bf16 = lcf_jax.load_model(directory, dtype="bfloat16")
    assert all(x.dtype == np.dtype("bfloat16") for x in __import__("jax").tree.leaves(bf16.params))
    ref, _ = model(TOKENS)
    logits, cache = bf16(TOKENS)
    assert cache.k.dtype == np.dtype("bfloat16")
    # bf16 keeps ~3 significant digits; logits of these random models are O(10).
    assert np.abs(np.asarray(logits) - np.asarray(ref)).max() <= 0.05 * np.abs(np.asarray(ref)).max()


@pytest.mark.parametrize("kernel", ["fused", "einsum"])
def test_attention_kernels_match_transformers_on_padded_chunked_prefill(pair, kernel):
    """attention="fused" (jax.nn.dot_product_attention: cuDNN on GPUs, XLA here) and the einsum
    kernel give transformers' logits for a padded batch prefilled in two chunks."""
    torch_model, model, _ = pair
    model = model.with_attention(kernel)  # a new graphdef: compiled for this kernel, no stale trace
    assert attention_kernel(jnp.zeros((1, 4, 2, 8)), model.attention) == kernel
    assert {m.kernel for _, m in nnx.iter_graph(model.module) if isinstance(m, Attention)} == {kernel}
    tokens, lengths = lcf_jax.sampling.pad_batch([TOKENS[0, :13].tolist(), TOKENS[1, :8].tolist()])
    mask = (np.arange(tokens.shape[1])[None] < lengths[:, None]).astype(np.int64)
    ref_logits, _ = torch_forward(torch_model, tokens, mask)
    first, cache = model(tokens[:, :5])
    rest, _ = model(tokens[:, 5:], cache, lengths=lengths - 5)
    logits = np.concatenate([np.asarray(first), np.asarray(rest)], axis=1)
    for i, n in enumerate(lengths):
        assert np.abs(logits[i, :n] - ref_logits[i, :n]).max() <= 1e-4


def test_unknown_attention_kernel_is_a_clear_error(pair):
    with pytest.raises(ValueError, match="attention='flash': choose one of auto, einsum, fused"):
        attention_kernel(jnp.zeros((1, 4, 2, 8)), "flash")
    with pytest.raises(ValueError, match="attention='flash'"):
        pair[1].with_attention("flash")
