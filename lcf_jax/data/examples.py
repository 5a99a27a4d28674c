"""A tokenized training or evaluation example, and how examples become a `Batch`."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from lcf_jax.data.batch import Batch
from lcf_jax.sampling import pad_batch
from lcf_jax.sizes import round_up


@dataclasses.dataclass(frozen=True)
class Example:
    """prompt: the receiver's prompt ids (its last token starts the answer); response: the target ids.
    Shared context: `sharer_prompt` aligned one to one with `prompt` (None: the same ids).
    Different contexts (lcfx): `sharer_context`, the sharer's own context as spans of ids;
    `teacher_prompt` (optional), the receiver's prompt with the full context, ending in the same
    token as `prompt`: the teacher of distillation."""

    prompt: tuple[int, ...]
    response: tuple[int, ...]
    sharer_prompt: tuple[int, ...] | None = None
    sharer_context: tuple[tuple[int, ...], ...] | None = None
    teacher_prompt: tuple[int, ...] | None = None

    def __post_init__(self):
        if len(self.prompt) < 2 or not self.response:
            raise ValueError("an example needs a prompt of at least 2 tokens and a non-empty response")
        if self.sharer_prompt is not None and len(self.sharer_prompt) != len(self.prompt):
            raise ValueError("sharer_prompt must align one to one with prompt")
        if self.teacher_prompt is not None and (
            len(self.teacher_prompt) < 2 or self.teacher_prompt[-1] != self.prompt[-1]
        ):
            raise ValueError("teacher_prompt must end with prompt's last token (both then read the same suffix)")

    @property
    def length(self) -> int:
        return len(self.prompt) + len(self.response)


def _pad(rows: Sequence[Sequence[int]], width: int, pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    return pad_batch(rows, pad_id=pad_id, width=width, allow_empty=True)


def _bucketed(n: int, bucket: int) -> int:
    """At least one bucket, so an empty part still has a width."""
    return max(bucket, round_up(n, bucket))


def batch_widths(examples: Sequence[Example], bucket: int) -> tuple[int, int, int, int]:
    """(prefix, sharer, suffix, teacher prefix) widths for these examples, rounded up to `bucket` so
    batches of similar lengths share one compiled step (teacher: 0 when they have no teacher)."""
    prefix = max(len(e.prompt) - 1 for e in examples)
    suffix = max(len(e.response) + 1 for e in examples)
    sharer = max(
        sum(len(s) for s in e.sharer_context) if e.sharer_context is not None else len(e.prompt) - 1 for e in examples
    )
    teachers = [len(e.teacher_prompt) - 1 for e in examples if e.teacher_prompt is not None]
    if teachers and len(teachers) != len(examples):
        raise ValueError("some examples have a teacher_prompt and some do not: give every example one, or none")
    teacher = _bucketed(max(teachers), bucket) if teachers else 0
    return _bucketed(prefix, bucket), _bucketed(max(sharer, 1), bucket), _bucketed(suffix, bucket), teacher


def make_batch(
    examples: Sequence[Example],
    *,
    pad_id: int = 0,
    widths: tuple[int, int, int, int] | None = None,
    bucket: int = 16,
    first_row: int = 0,
) -> Batch:
    """Pad examples into a `Batch` (the layout `data.batch` documents); `first_row` is the global
    index of the first example (a host's offset in the global batch)."""
    tp, ts, tq, tt = widths or batch_widths(examples, bucket)
    prefix, prefix_lengths = _pad([e.prompt[:-1] for e in examples], tp, pad_id)
    suffix, suffix_lengths = _pad([(e.prompt[-1], *e.response) for e in examples], tq, pad_id)
    span_ids = np.full((len(examples), ts), -1, np.int32)
    sharer_rows = []
    for i, e in enumerate(examples):
        if e.sharer_context is not None:
            row = [t for span in e.sharer_context for t in span]
            span_ids[i, : len(row)] = np.repeat(np.arange(len(e.sharer_context)), [len(s) for s in e.sharer_context])
        else:
            row = list((e.sharer_prompt or e.prompt)[:-1])
        sharer_rows.append(row)
    sharer, sharer_lengths = _pad(sharer_rows, ts, pad_id)
    row_ids = np.arange(first_row, first_row + len(examples), dtype=np.int32)
    teacher = _pad([e.teacher_prompt[:-1] for e in examples], tt, pad_id) if tt else (None, None)
    return Batch(prefix, prefix_lengths, sharer, sharer_lengths, span_ids, suffix, suffix_lengths, row_ids, *teacher)
