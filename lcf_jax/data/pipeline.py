"""The batch iterator: deterministic order from a seed, bucketed padding, a per-host slice of each
global batch, and a small state (epoch, position) that checkpoints save and restore.

Every host walks the same global order and pads to the same widths (computed from the whole global
batch), then keeps only its own rows, so the pieces assemble into one global array.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from lcf_jax.data.batch import Batch
from lcf_jax.data.examples import Example, batch_widths, make_batch
from lcf_jax.errors import ConfigError


@dataclasses.dataclass
class BatchIterator(Iterator[Batch]):
    examples: Sequence[Example]
    global_batch_size: int
    seed: int = 42
    bucket: int = 16
    pad_id: int = 0
    process_index: int = 0
    process_count: int = 1
    epoch: int = 0
    position: int = 0  # index of the next global batch within the epoch

    def __post_init__(self):
        if self.global_batch_size % self.process_count:
            raise ConfigError(f"global batch {self.global_batch_size} does not split over {self.process_count} hosts")
        if len(self.examples) < self.global_batch_size:
            raise ConfigError(f"{len(self.examples)} examples cannot fill one batch of {self.global_batch_size}")

    @property
    def batches_per_epoch(self) -> int:
        return len(self.examples) // self.global_batch_size  # the incomplete last batch is dropped

    def _order(self, epoch: int) -> np.ndarray:
        return np.random.default_rng([self.seed, epoch]).permutation(len(self.examples))

    def __next__(self) -> Batch:
        if self.position >= self.batches_per_epoch:
            self.epoch, self.position = self.epoch + 1, 0
        order = self._order(self.epoch)
        start = self.position * self.global_batch_size
        chosen = [self.examples[i] for i in order[start : start + self.global_batch_size]]
        self.position += 1
        widths = batch_widths(chosen, self.bucket)
        per_host = self.global_batch_size // self.process_count
        first = self.process_index * per_host
        return make_batch(chosen[first : first + per_host], pad_id=self.pad_id, widths=widths, first_row=first)

    def get_state(self) -> dict[str, Any]:
        return {
            "epoch": int(self.epoch),
            "position": int(self.position),
            "seed": int(self.seed),
            "examples": len(self.examples),
        }

    def set_state(self, state: dict[str, Any]) -> None:
        if state.get("examples") not in (None, len(self.examples)) or state.get("seed") not in (None, self.seed):
            raise ConfigError(
                f"checkpointed data state {state} was made for another dataset or seed "
                f"({len(self.examples)} examples, seed {self.seed} now)"
            )
        self.epoch, self.position = int(state["epoch"]), int(state["position"])
