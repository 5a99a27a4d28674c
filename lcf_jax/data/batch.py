"""The training batch: what one step reads, already split around the fused section.

Per the method, the fused section is every prompt token except the last; the last prompt token and
the response run through the receiver alone, attending to the fused cache. So a batch carries:

  prefix  `[B, Tp]` (+ lengths): the receiver's prompt minus its last token;
  sharer  `[B, Ts]` (+ lengths): shared context: the sharer's tokens aligned with the prefix;
                                 lcfx: the sharer's own context, with `span_ids` `[B, Ts]`;
  suffix  `[B, Tq]` (+ lengths): the last prompt token, then the response; the loss is the
                                 next-token cross-entropy over the response only.
  teacher_prefix `[B, Tt]` (+ lengths), optional: the receiver's prompt with the full context minus
                 its last token, for distillation (`StepConfig.distill_weight`): the receiver reading
                 it then the same suffix is the teacher.
  row_ids `[B]`: each row's index in the global batch; training noise (Gumbel gates, dropout) is
                 keyed by it, so a row draws the same noise whichever micro-batch, device or host
                 computes it.
With gradient accumulation every array has a leading micro-batch axis `[A, B, ...]`.
"""

from __future__ import annotations

import dataclasses

import jax
import numpy as np

from lcf_jax.typing import Array


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Batch:
    prefix: Array
    prefix_lengths: Array
    sharer: Array
    sharer_lengths: Array
    span_ids: Array
    suffix: Array
    suffix_lengths: Array
    row_ids: Array
    teacher_prefix: Array | None = None
    teacher_prefix_lengths: Array | None = None

    @property
    def num_tokens(self) -> int:
        """Tokens the step reads (both models), for throughput."""
        teacher = 0 if self.teacher_prefix_lengths is None else np.sum(self.teacher_prefix_lengths)
        return int(np.sum(self.prefix_lengths) + np.sum(self.sharer_lengths) + np.sum(self.suffix_lengths) + teacher)

    def micro_batches(self, count: int) -> Batch:
        """`[B, ...]` -> `[count, B / count, ...]` for gradient accumulation."""
        b = self.prefix.shape[0]
        if b % count:
            raise ValueError(f"batch of {b} rows does not split into {count} micro-batches")
        return jax.tree.map(lambda x: x.reshape(count, b // count, *x.shape[1:]), self)
