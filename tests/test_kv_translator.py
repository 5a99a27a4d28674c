"""KV translators between two different tiny models (layers, kv heads, head dims, RoPE bases,
families differ): fitted on generated split_qa paragraphs, they predict the receiver's own entries
on held-out text better than its mean, and the receiver reading translated entries of a context
moves toward reading that context itself."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from tiny_pair import tiny_text_models

from lcf_jax import communicate
from lcf_jax.data.split_qa import generate_questions
from lcf_jax.messages.translate import fit_translator, relative_mse
from lcf_jax.models.model import Model, forward


@pytest.fixture(scope="module")
def pair():
    sharer, receiver = tiny_text_models(seed=4)
    # A different RoPE base too (the tiny pair shares the default).
    config = dataclasses.replace(receiver.config, rope_theta=500_000.0)
    receiver = Model(config, receiver.graphdef, receiver.params, tokenizer=receiver.tokenizer)
    return sharer, receiver


def paragraphs(pair, split, count):
    tok = pair[0].tokenizer
    return [
        tok.encode(p, add_special_tokens=False)
        for q in generate_questions(split, count, seed=3)
        for p in q.sharer_context
    ]


@pytest.fixture(scope="module")
def fitted(pair):
    return fit_translator(*pair, paragraphs(pair, "train", 12))


def test_the_fit_predicts_held_out_entries_better_than_their_mean(pair, fitted):
    translator, train = fitted
    assert translator.arrays["key_map"].shape == (4, 2 * 8, 2 * 16)  # receiver layers, sharer K*H, receiver K*H
    held_out = relative_mse(translator, *pair, paragraphs(pair, "test", 4))
    print("relative MSE, train", train, "held out", held_out)
    assert held_out["key_relative_mse"] < 0.9 and held_out["value_relative_mse"] < 0.9


def next_token_kl(p_logits, q_logits):
    p, q = jax.nn.log_softmax(p_logits, -1), jax.nn.log_softmax(q_logits, -1)
    return float(jnp.mean(jnp.sum(jnp.exp(p) * (p - q), -1)))


def test_translated_entries_close_part_of_the_gap_to_the_receivers_own_context(pair, fitted):
    sharer, receiver = pair
    translator, _ = fitted
    tok = receiver.tokenizer
    questions = generate_questions("test", 6, seed=9)
    opening = tok.encode("Facts:\n", add_special_tokens=False)
    contexts = [[tok.encode("\n".join(q.sharer_context), add_special_tokens=False)] for q in questions]
    rests = [tok.encode(f"\nQuestion: {q.question}\nAnswer:", add_special_tokens=False) for q in questions]

    def last_logits(cache, rows):
        cache = communicate.extend(receiver, cache, [r[:-1] for r in rows], bucket=8)
        logits, _ = forward(receiver.graphdef, receiver.params, jnp.asarray([[r[-1]] for r in rows]), cache, None, True)
        return logits[:, 0]

    own = last_logits(communicate.prefill(receiver, [opening + c[0] for c in contexts], bucket=8), rests)
    none = last_logits(communicate.prefill(receiver, [opening] * len(rests), bucket=8), rests)
    message = communicate.send(None, sharer, contexts, kind="kv", opening=opening)
    placed = communicate.receive(translator, message, communicate.prefill(receiver, [opening] * len(rests), bucket=8),
                                 receiver=receiver)  # fmt: skip
    translated = last_logits(placed, rests)
    gap, left = next_token_kl(own, none), next_token_kl(own, translated)
    print(f"KL to the receiver's own context: none {gap:.4f}, translated {left:.4f}: {1 - left / gap:.0%} closed")
    assert left < gap


def test_a_saved_translator_loads_identically_and_bad_files_are_named(pair, fitted, tmp_path):
    from lcf_jax.messages.translate import load_translator, save_translator

    translator, _ = fitted
    loaded = load_translator(save_translator(translator, tmp_path / "t"))
    assert loaded.source_layers == translator.source_layers and loaded.receiver == translator.receiver
    np.testing.assert_array_equal(loaded.arrays["key_map"], translator.arrays["key_map"])
    with pytest.raises(FileNotFoundError, match="no kv_translator.json"):
        load_translator(tmp_path / "missing")
    from safetensors.numpy import save_file

    save_file({"key_map": np.zeros((1, 2), np.float32)}, tmp_path / "t" / "kv_translator.safetensors")
    with pytest.raises(ValueError, match="'key_map' has shape"):
        load_translator(tmp_path / "t")
    (tmp_path / "t" / "kv_translator.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match="not a readable safetensors file"):
        load_translator(tmp_path / "t")


def test_translator_input_is_checked(pair, fitted):
    sharer, receiver = pair
    translator, _ = fitted
    opening = [5, 6]
    message = communicate.send(None, receiver, [[[10, 11, 12]]], kind="kv", opening=opening)
    with pytest.raises(ValueError, match="this translator maps"):
        translator.translate(message)
    partial = communicate.send(None, sharer, [[[10, 11, 12]]], kind="kv", opening=opening, layers=(0,))
    with pytest.raises(ValueError, match="lacks sharer layers"):
        translator.translate(partial)
    untranslated = communicate.send(None, sharer, [[[10, 11, 12]]], kind="kv", opening=opening)
    with pytest.raises(ValueError, match="another model"):
        communicate.receive(None, untranslated, communicate.prefill(receiver, [opening], bucket=8), receiver=receiver)
    other = Model.random(dataclasses.replace(sharer.config, vocab_size=50), seed=0)
    with pytest.raises(ValueError, match="share a tokenizer"):
        fit_translator(other, receiver, [[1, 2, 3]])
    assert np.isfinite(translator.arrays["key_map"]).all()
