"""Shared-context multiple choice from logits on the tiny pair: the split-last path scores like one
forward over the whole prompt, and an adapter with closed gates scores exactly like the receiver."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
from tiny_pair import tiny_text_models

from lcf_jax.adapters import build
from lcf_jax.data.mcq import MCQ
from lcf_jax.eval.mcq import mcq_prompt, mcq_summary, run_mcq
from lcf_jax.eval.metrics import letter_token_ids
from lcf_jax.models.model import forward

ITEMS = [
    MCQ("m0", "Which is a colour?", ("red", "dog", "six"), 0, "test"),
    MCQ("m1", "2 + 2?", ("3", "4", "5", "22"), 1, "test"),
    MCQ("m2", "Capital of Peru?", ("Quito", "Lima"), 1, "test"),
]


def test_mcq_scores_from_letter_logits_and_closed_gates_change_nothing():
    sharer, receiver = tiny_text_models()
    closed = build("lcf", sharer, receiver, latent_width=8, gate_init=-1.0)
    opened = build("lcf", sharer, receiver, latent_width=8, gate_init=1.0)
    correct = run_mcq(sharer, receiver, ITEMS, {"closed": closed, "lcf": opened}, batch_size=2, progress=False)
    assert set(correct) == {"receiver", "sharer", "closed", "lcf", "oracle"}
    for item, right in zip(ITEMS, correct["receiver"]):
        prompt = mcq_prompt(receiver, item)
        logits, _ = forward(
            receiver.graphdef,
            receiver.params,
            jnp.asarray([prompt]),
            receiver.new_cache(1, len(prompt)),
            last_only=True,
        )
        letters = letter_token_ids(receiver.tokenizer, len(item.choices))
        assert bool(right) == (int(np.argmax(np.asarray(logits[0, 0])[letters])) == item.answer)
    np.testing.assert_array_equal(correct["closed"], correct["receiver"])
    np.testing.assert_array_equal(correct["oracle"], correct["receiver"] | correct["sharer"])
    summary = mcq_summary(correct, reference="closed")
    assert summary["receiver"]["n"] == 3 and summary["receiver"]["mcnemar_p_greater"] == 1.0
    assert 0 <= summary["lcf"]["accuracy"] <= 100
