"""A small learnable task for tiny random models (tests, the `tiny` config): the response repeats
the prompt's tokens at fixed offsets, so an adapter that reads the sharer's cache can learn it."""

from __future__ import annotations

import numpy as np

from lcf_jax.data.examples import Example


def copy_task(
    count: int, *, vocab: int, prompt_length: int = 12, response_length: int = 4, seed: int = 0, lcfx: bool = False
) -> list[Example]:
    rng = np.random.default_rng(seed)
    examples = []
    for _ in range(count):
        n = int(rng.integers(prompt_length // 2, prompt_length + 1))
        prompt = tuple(int(t) for t in rng.integers(3, vocab, n))
        response = tuple(prompt[i % n] for i in range(0, 2 * response_length, 2))
        context = None
        if lcfx:  # the sharer holds the prompt as two spans; the receiver only sees its own copy
            context = (prompt[: n // 2], prompt[n // 2 :])
        examples.append(Example(prompt, response, sharer_context=context))
    return examples
