"""Generation: the on-device decode loop against step-by-step model calls, stop tokens, sampling."""

from __future__ import annotations

import numpy as np
import pytest
from hf_tiny import save_tiny, tiny_hf_model

import lcf_jax
from lcf_jax.kv import KVCache
from lcf_jax.sampling import pad_batch, sample_logits


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    torch_model = tiny_hf_model("llama", num_attention_heads=4, num_key_value_heads=2)
    return lcf_jax.load_model(save_tiny(torch_model, tmp_path_factory.mktemp("gen")))


def greedy_by_hand(model, prompt, steps):
    logits, cache = model(np.array([prompt], np.int32))
    out = [int(np.argmax(logits[0, -1]))]
    for _ in range(steps - 1):
        logits, cache = model(np.array([[out[-1]]], np.int32), cache)
        out.append(int(np.argmax(logits[0, -1])))
    return out


def test_greedy_generate_equals_step_by_step_calls(model):
    prompts = [[5, 9, 13, 2, 77], [41, 3], [8, 8, 8, 1, 60, 61, 62]]
    result = lcf_jax.generate(model, prompts, 12, stop_tokens=[])
    assert result.tokens.shape == (3, 12)
    np.testing.assert_array_equal(result.lengths, [12, 12, 12])
    for row, prompt in zip(result.tokens, prompts):
        assert row.tolist() == greedy_by_hand(model, prompt, 12)
    np.testing.assert_array_equal(np.asarray(result.cache.lengths), [5 + 12 - 1, 2 + 11, 7 + 11])


def test_stop_token_ends_a_row_and_keeps_its_cache(model):
    prompt = [5, 9, 13, 2, 77]
    free = greedy_by_hand(model, prompt, 10)
    stop = free[3]
    first_stop = free.index(stop)
    result = lcf_jax.generate(model, [prompt, [41, 3]], 10, stop_tokens=[stop])
    assert result.lengths[0] == first_stop + 1
    assert result.tokens[0, : first_stop + 1].tolist() == free[: first_stop + 1]
    assert (result.tokens[0, first_stop + 1 :] == 0).all()  # pad id after the stop
    assert result.token_lists(stop_tokens=[stop])[0] == free[:first_stop]
    # The finished row's cache holds the prompt and its tokens up to (not including) the stop token.
    assert int(result.cache.lengths[0]) == len(prompt) + first_stop


def test_sampling_is_seeded_and_top_p_near_zero_is_greedy(model):
    prompt = [[5, 9, 13, 2, 77]]
    a = lcf_jax.generate(model, prompt, 8, temperature=1.0, seed=3, stop_tokens=[])
    b = lcf_jax.generate(model, prompt, 8, temperature=1.0, seed=3, stop_tokens=[])
    c = lcf_jax.generate(model, prompt, 8, temperature=1.0, seed=4, stop_tokens=[])
    np.testing.assert_array_equal(a.tokens, b.tokens)
    assert not np.array_equal(a.tokens, c.tokens)
    nucleus = lcf_jax.generate(model, prompt, 8, temperature=1.0, top_p=1e-6, seed=5, stop_tokens=[])
    assert nucleus.tokens[0].tolist() == greedy_by_hand(model, prompt[0], 8)


def test_top_p_keeps_the_smallest_set_reaching_p():
    import jax

    logits = np.log(np.array([[0.5, 0.3, 0.15, 0.05]], np.float32))
    draws = [int(sample_logits(logits, jax.random.key(i), 1.0, 0.7)[0]) for i in range(200)]
    assert set(draws) == {0, 1}  # 0.5 < 0.7, 0.5 + 0.3 reaches it: tokens 2 and 3 are cut


def test_pad_batch_and_bad_arguments(model):
    tokens, lengths = pad_batch([[1, 2, 3], [4]], pad_id=9, multiple=4)
    np.testing.assert_array_equal(tokens, [[1, 2, 3, 9], [4, 9, 9, 9]])
    np.testing.assert_array_equal(lengths, [3, 1])
    with pytest.raises(ValueError, match="max_new_tokens"):
        lcf_jax.generate(model, [[1, 2]], 0)
    with pytest.raises(ValueError, match="top_p"):
        lcf_jax.generate(model, [[1, 2]], 3, top_p=0.0)


def test_concatenated_caches_continue_as_their_rows_alone(model):
    """Rows of caches with different capacities, joined into one batch: each continues exactly as
    it would in its own cache (the smaller capacity is zero-padded; lengths keep the rows apart)."""
    short = lcf_jax.generate(model, [[5, 9, 13], [41, 3]], 4, stop_tokens=[], bucket=4)
    long = lcf_jax.generate(model, [[8, 8, 8, 1, 60, 61, 62, 7, 7, 2, 9]], 4, stop_tokens=[], bucket=16)
    assert short.cache.capacity != long.cache.capacity
    joined = KVCache.concatenate([short.cache, long.cache])
    assert joined.batch_size == 3 and joined.capacity == max(short.cache.capacity, long.cache.capacity)
    last = [[int(r[-1])] for r in (*short.tokens, *long.tokens)]
    together = lcf_jax.generate(model, last, 5, stop_tokens=[], cache=joined, bucket=1).tokens
    alone = [
        lcf_jax.generate(model, last[i : i + 1], 5, stop_tokens=[], cache=c.take_rows([j]), bucket=1).tokens[0]
        for i, (c, j) in enumerate([(short.cache, 0), (short.cache, 1), (long.cache, 0)])
    ]
    np.testing.assert_array_equal(together, np.stack(alone))
    with pytest.raises(ValueError, match="at least one cache"):
        KVCache.concatenate([])
