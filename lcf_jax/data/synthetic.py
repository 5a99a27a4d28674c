"""Small learnable tasks for tiny random models (tests, the `tiny` config).

`copy_task`: the response repeats the prompt's first tokens (content the adapter must route);
with `fixed_response`, every response is the same short sequence, which a frozen random receiver
does not produce but an adapter learns to steer it to within a few dozen steps."""

from __future__ import annotations

import numpy as np

from lcf_jax.data.examples import Example


def copy_task(
    count: int,
    *,
    vocab: int,
    prompt_length: int = 12,
    response_length: int = 4,
    seed: int = 0,
    lcfx: bool = False,
    fixed_response: bool = False,
) -> list[Example]:
    rng = np.random.default_rng(seed)
    examples = []
    for _ in range(count):
        n = int(rng.integers(prompt_length // 2, prompt_length + 1))
        prompt = tuple(int(t) for t in rng.integers(3, vocab, n))
        response = tuple(range(3, 3 + response_length)) if fixed_response else prompt[:response_length]
        context = None
        if lcfx:  # the sharer holds the prompt as two spans; the receiver only sees its own copy
            context = (prompt[: n // 2], prompt[n // 2 :])
        examples.append(Example(prompt, response, sharer_context=context))
    return examples
