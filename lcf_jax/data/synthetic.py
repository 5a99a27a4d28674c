"""Small learnable tasks for tiny random models (tests, the `tiny` config).

`sharer_only_task`: the answer is only in the sharer's spans (does a message carry information?).
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


def sharer_only_task(
    count: int, *, vocab: int, span_length: int = 1, spans: int = 1, response_length: int = 1, seed: int = 0
) -> list[Example]:
    """LCF-X examples whose answer only the sharer holds: the sharer reads `spans` spans of random
    tokens, the receiver's prompt is the same for every example, and the response is the first
    `response_length` tokens of the first span. Without the message the best a receiver can do is
    a uniform guess (loss ~ln(vocab - 3) per token); another example's message is worse than none.
    The default (one span of one token) is the smallest such task: 150 steps of the tiny config
    bring the matched loss to 1.6 nats against 4.8 with another example's message. With two spans
    of 3 tokens and the first token asked, the same run gives 3.8 against 4.4 (the pool must find it)."""
    rng = np.random.default_rng(seed)
    prompt = tuple(int(t) for t in np.random.default_rng(12345).integers(3, vocab, 6))
    examples = []
    for _ in range(count):
        context = tuple(tuple(int(t) for t in rng.integers(3, vocab, span_length)) for _ in range(spans))
        examples.append(Example(prompt, context[0][:response_length], sharer_context=context))
    return examples
