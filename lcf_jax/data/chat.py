"""Chat data from local JSONL in the OpenHermes-2.5 `conversations` format, tokenized with the
receiver's chat template, labels on the response only.

One object a line: {"conversations": [{"from": "system"|"human"|"gpt", "value": "..."}, ...]}.
The last `gpt` turn is the response; everything before it (earlier turns included) is the prompt.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from lcf_jax.align import align_tokens
from lcf_jax.data.examples import Example
from lcf_jax.errors import DataError

ROLES = {"system": "system", "human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant"}


def read_conversations(path: str | os.PathLike) -> Iterator[list[dict[str, str]]]:
    """Chat messages (`role`, `content`) per line, ending with the assistant's response."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no data file at {path}")
    with path.open() as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                turns = json.loads(line)["conversations"]
                messages = [{"role": ROLES[t["from"]], "content": t["value"]} for t in turns]
            except (json.JSONDecodeError, KeyError, TypeError) as e:
                raise DataError(
                    f'{path}:{number}: expected {{"conversations": [{{"from": "human"|"gpt"|"system", '
                    f'"value": ...}}]}} ({type(e).__name__}: {e})'
                ) from None
            last = max((i for i, m in enumerate(messages) if m["role"] == "assistant"), default=None)
            if last is None or last == 0:
                continue  # nothing to learn: no response, or no prompt before it
            yield messages[: last + 1]


def token_ids(encoded: Any) -> list[int]:
    if isinstance(encoded, dict) or hasattr(encoded, "input_ids"):
        encoded = encoded["input_ids"]
    return list(encoded)


def tokenize_chat(messages: list[dict[str, str]], receiver_tokenizer: Any, sharer_tokenizer: Any = None) -> Example:
    """Prompt = the template up to the assistant's turn; response = what the full template adds."""
    prompt = token_ids(receiver_tokenizer.apply_chat_template(messages[:-1], add_generation_prompt=True, tokenize=True))
    full = token_ids(receiver_tokenizer.apply_chat_template(messages, tokenize=True))
    if full[: len(prompt)] == prompt and len(full) > len(prompt):
        response = full[len(prompt) :]
    else:  # templates that rewrite earlier turns (e.g. dropping reasoning): encode the answer itself
        response = receiver_tokenizer.encode(messages[-1]["content"], add_special_tokens=False)
        if receiver_tokenizer.eos_token_id is not None:
            response.append(receiver_tokenizer.eos_token_id)
    sharer_prompt = None
    if sharer_tokenizer is not None and sharer_tokenizer.get_vocab() != receiver_tokenizer.get_vocab():
        sharer_prompt = tuple(align_tokens(receiver_tokenizer, sharer_tokenizer, prompt)[0])
    return Example(tuple(prompt), tuple(response), sharer_prompt)


def load_chat_examples(
    path: str | os.PathLike,
    receiver_tokenizer: Any,
    sharer_tokenizer: Any = None,
    *,
    max_length: int = 2048,
    limit: int | None = None,
) -> list[Example]:
    """Tokenized examples of at most `max_length` tokens (longer ones are skipped, as in the paper)."""
    examples = []
    for messages in read_conversations(path):
        example = tokenize_chat(messages, receiver_tokenizer, sharer_tokenizer)
        if example.length <= max_length:
            examples.append(example)
        if limit is not None and len(examples) >= limit:
            break
    if not examples:
        raise DataError(f"{path} yielded no usable examples (<= {max_length} tokens with a prompt and a response)")
    return examples
