"""Running a model on prompts: `prefill` and `extend` read token rows into a cache (chunked when
asked), and generation is one jitted function that prefills the prompt and runs the whole decode
loop on device (`lax.while_loop`, cache donated), with greedy, temperature and top-p sampling and
stop tokens.

Prompts are right-padded to a multiple of `bucket` tokens so prompts of similar length share one
compiled program.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from lcf_jax.kv import KVCache
from lcf_jax.models.model import Model, forward
from lcf_jax.sizes import round_up
from lcf_jax.typing import Array

# Prompt rows are right-padded to a multiple of this many tokens (prefill), so similar lengths
# share one compiled program.
BUCKET = 64

SMALL_LEAVES = ("lengths", "entry_mask", "position_shift")  # KVCache fields besides k and v


@dataclasses.dataclass(frozen=True)
class Generation:
    """tokens `[B, N]`: generated ids, each row ending at its stop token (included) and filled with
    `pad_id` after it; lengths `[B]`: generated tokens per row; cache: prompt + generated tokens."""

    tokens: np.ndarray
    lengths: np.ndarray
    cache: KVCache

    def token_lists(self, *, strip_stop: bool = True, stop_tokens: Sequence[int] = ()) -> list[list[int]]:
        rows = [row[:n].tolist() for row, n in zip(self.tokens, self.lengths)]
        if strip_stop:
            rows = [r[:-1] if r and r[-1] in stop_tokens else r for r in rows]
        return rows


def pad_batch(
    sequences: Sequence[Sequence[int]],
    *,
    pad_id: int = 0,
    multiple: int = 1,
    width: int | None = None,
    allow_empty: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Right-pad token lists to one `[B, T]` int32 array plus lengths `[B]`: T is the longest rounded
    up to `multiple`, or `width` (e.g. one width for every host's rows of a global batch). Empty
    sequences are an error unless `allow_empty` (a row with nothing to append)."""
    if not sequences or (not allow_empty and any(len(s) == 0 for s in sequences)):
        raise ValueError("pad_batch needs at least one sequence and no empty sequences")
    lengths = np.array([len(s) for s in sequences], np.int32)
    if width is None:
        width = round_up(int(lengths.max()), multiple)
    elif width < lengths.max():
        raise ValueError(f"a sequence of {int(lengths.max())} tokens does not fit the width {width}")
    tokens = np.full((len(sequences), width), pad_id, np.int32)
    for row, seq in zip(tokens, sequences):
        row[: len(seq)] = seq
    return tokens, lengths


def prefill(
    model: Model,
    prompts: Sequence[Sequence[int]],
    *,
    bucket: int = BUCKET,
    chunk: int | None = None,
    attention_mass: bool = False,
):
    """The cache of each prompt (rows right-padded to a multiple of `bucket` tokens). With `chunk`,
    prompts longer than that many tokens are read `chunk` tokens at a time (`extend`), which bounds
    the attention scores a call holds to `rows x heads x chunk x cache length`. With
    `attention_mass`, returns `(cache, mass)`: the attention each entry received from the prompt's
    tokens `[L, B, S]` (see `extend`)."""
    if chunk is not None and max(len(p) for p in prompts) > chunk:
        empty = model.new_cache(len(prompts), 0)
        return extend(model, empty, prompts, bucket=bucket, chunk=chunk, attention_mass=attention_mass)
    tokens, lengths = pad_batch(prompts, pad_id=model.config.pad_token_id or 0, multiple=bucket)
    cache = model.new_cache(len(prompts), tokens.shape[1])
    _, cache, *mass = forward(
        model.graphdef, model.params, jnp.asarray(tokens), cache, jnp.asarray(lengths), True, attention_mass
    )
    return (cache, mass[0]) if attention_mass else cache


def extend(
    model: Model,
    cache: KVCache,
    rows: Sequence[Sequence[int]],
    *,
    bucket: int = 32,
    chunk: int | None = None,
    attention_mass: bool = False,
):
    """The cache with each row's tokens appended after what it holds (rows may be empty; the cache
    grows as needed). Chunked prefill: equal to prefilling the concatenated prompts at once. With
    `chunk`, rows are appended at most `chunk` tokens per call (the cache grows once, up front).
    With `attention_mass`, returns `(cache, mass)`: the attention each cache entry received from
    the appended tokens, per layer, summed over heads and tokens `[L, B, S]` (summed over chunks
    too, so it equals one call's)."""
    if not any(rows):
        if attention_mass:
            return cache, jnp.zeros((cache.num_layers, cache.batch_size, cache.capacity), jnp.float32)
        return cache
    longest = max(len(r) for r in rows)
    step = longest if chunk is None else chunk
    pieces = [[list(r[i : i + step]) for r in rows] for i in range(0, longest, step)]
    widths = [round_up(max(len(r) for r in piece), bucket) for piece in pieces]
    cache = cache.with_room(int(np.max(np.asarray(cache.lengths))) + sum(widths))
    pad_id = model.config.pad_token_id or 0
    total = 0.0
    for piece, width in zip(pieces, widths):
        tokens, lengths = pad_batch(piece, pad_id=pad_id, width=width, allow_empty=True)
        _, cache, *mass = forward(
            model.graphdef, model.params, jnp.asarray(tokens), cache, jnp.asarray(lengths), True, attention_mass
        )
        if attention_mass:
            total = total + mass[0]
    return (cache, total) if attention_mass else cache


def stop_token_ids(model: Model) -> tuple[int, ...]:
    """End-of-sequence ids from the config and the tokenizer (chat models often add `<|im_end|>`)."""
    ids = model.config.eos_token_id
    found = set(ids if isinstance(ids, tuple) else [] if ids is None else [ids])
    if model.tokenizer is not None and model.tokenizer.eos_token_id is not None:
        found.add(int(model.tokenizer.eos_token_id))
    return tuple(sorted(found))


def sample_logits(logits: Array, rng: Array, temperature: Array, top_p: Array) -> Array:
    """Sample ids `[B]` from logits `[B, V]` at `temperature`, keeping the smallest set of tokens
    whose probability reaches `top_p` (the most likely token always stays)."""
    logits = logits / temperature
    sorted_logits = jnp.sort(logits, axis=-1)[:, ::-1]
    probs = jax.nn.softmax(sorted_logits, axis=-1)
    before = jnp.cumsum(probs, axis=-1) - probs  # mass of strictly more likely tokens
    kept = before < top_p
    threshold = jnp.min(jnp.where(kept, sorted_logits, jnp.inf), axis=-1, keepdims=True)
    logits = jnp.where(logits >= threshold, logits, -jnp.inf)
    return jax.random.categorical(rng, logits, axis=-1).astype(jnp.int32)


@functools.partial(jax.jit, static_argnames=("graphdef", "max_new_tokens", "greedy"), donate_argnames=("cache",))
def _generate(graphdef, params, tokens, lengths, cache, stop, rng, temperature, top_p, pad_id, max_new_tokens, greedy):
    model = nnx.merge(graphdef, params)

    def choose(logits, rng):
        if greedy:
            return jnp.argmax(logits, axis=-1).astype(jnp.int32)
        return sample_logits(logits, rng, temperature, top_p)

    b = tokens.shape[0]
    logits, cache = model(tokens, cache, lengths, last_only=True)
    rng, sub = jax.random.split(rng)
    first = choose(logits[:, 0], sub)
    out = jnp.full((b, max_new_tokens), pad_id, jnp.int32).at[:, 0].set(first)
    done = jnp.isin(first, stop)
    count = jnp.ones((b,), jnp.int32)

    def keep_going(state):
        step, _, _, _, done, _, _ = state
        return (step < max_new_tokens) & ~jnp.all(done)

    def decode_one(state):
        step, out, cache, last, done, count, rng = state
        # A finished row feeds 0 real tokens: its cache and length stay as they were.
        logits, cache = model(last[:, None], cache, jnp.where(done, 0, 1).astype(jnp.int32), last_only=True)
        rng, sub = jax.random.split(rng)
        token = jnp.where(done, pad_id, choose(logits[:, 0], sub))
        out = out.at[:, step].set(token)
        count = count + (~done).astype(jnp.int32)
        done = done | jnp.isin(token, stop)
        return step + 1, out, cache, token, done, count, rng

    state = (jnp.int32(1), out, cache, first, done, count, rng)
    _, out, cache, _, _, count, _ = jax.lax.while_loop(keep_going, decode_one, state)
    return out, count, cache


def generate(
    model: Model,
    tokens: Any,
    max_new_tokens: int,
    *,
    lengths: Any = None,
    temperature: float = 0.0,
    top_p: float = 1.0,
    stop_tokens: Sequence[int] | None = None,
    seed: int = 0,
    bucket: int = 64,
    cache: KVCache | None = None,
) -> Generation:
    """Continue each row of `tokens` (`[B, T]` ids, right-padded with `lengths`, or a list of token
    lists) by up to `max_new_tokens` tokens. `temperature=0` is greedy; `stop_tokens` default to the
    model's end-of-sequence ids. With `cache`, the tokens come after what the cache holds (e.g. a
    receiver cache an adapter has rewritten)."""
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    if temperature < 0 or not 0 < top_p <= 1:
        raise ValueError(f"need temperature >= 0 and 0 < top_p <= 1, got {temperature}, {top_p}")
    pad_id = model.config.pad_token_id or 0
    if isinstance(tokens, (list, tuple)) and tokens and isinstance(tokens[0], (list, tuple)):
        tokens, lengths = pad_batch(tokens, pad_id=pad_id)
    tokens = model._check_tokens(tokens)
    b, t = tokens.shape
    lengths = jnp.full((b,), t, jnp.int32) if lengths is None else jnp.asarray(lengths, jnp.int32)
    width = round_up(t, bucket)
    tokens = jnp.pad(tokens, ((0, 0), (0, width - t)), constant_values=pad_id)
    stop = stop_token_ids(model) if stop_tokens is None else tuple(stop_tokens)
    if cache is None:
        cache = model.new_cache(b, width + max_new_tokens)
    else:
        cache.check_compatible(model.config, b)
        grown = cache.with_room(int(jnp.max(cache.lengths)) + width + max_new_tokens)
        # The loop donates its cache; never hand it the caller's own buffers (a grown cache has new
        # k and v but shares the small leaves: lengths, entry mask, position shift).
        if grown is cache:
            cache = jax.tree.map(jnp.copy, cache)
        else:
            cache = grown.replace(**{f: jax.tree.map(jnp.copy, getattr(grown, f)) for f in SMALL_LEAVES})
    out, count, cache = _generate(
        model.graphdef,
        model.params,
        tokens,
        lengths,
        cache,
        jnp.asarray(stop or (-1,), jnp.int32),
        jax.random.key(seed),
        jnp.float32(max(temperature, 1e-6)),
        jnp.float32(top_p),
        jnp.int32(pad_id),
        max_new_tokens=max_new_tokens,
        greedy=temperature == 0,
    )
    return Generation(np.asarray(out), np.asarray(count), cache)


def chat_prompt(model: Model, messages: Sequence[dict[str, str]] | str) -> list[int]:
    """Token ids of a chat through the model's chat template, ending where the assistant speaks."""
    if model.tokenizer is None:
        raise ValueError("this model has no tokenizer; load it from a directory with tokenizer files or a GGUF file")
    if isinstance(messages, str):
        messages = [{"role": "user", "content": messages}]
    ids = model.tokenizer.apply_chat_template(list(messages), add_generation_prompt=True, tokenize=True)
    if isinstance(ids, dict) or hasattr(ids, "input_ids"):
        ids = ids["input_ids"]
    return list(ids)
