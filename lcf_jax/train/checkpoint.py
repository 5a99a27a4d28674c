"""Orbax checkpoints of what training creates: adapter parameters, optimizer state, step and the data
iterator's state. Base models are re-read from their source, never saved.

Saves are asynchronous every `every` steps, the last `keep` are kept, and a restore goes into an
abstract, sharded target (arrays land directly on their devices). If the newest checkpoint cannot
be read (a partial or corrupt write), that is reported and the one before it is used.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp

from lcf_jax.train.step import TrainState

log = logging.getLogger(__name__)


def _as_tree(state: TrainState) -> dict[str, Any]:
    return {"step": state.step, "params": state.params, "opt_state": state.opt_state}


class Checkpointer:
    def __init__(self, directory: str | os.PathLike, *, every: int = 100, keep: int = 3, async_save: bool = True):
        self.directory = Path(directory).absolute()
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep, save_interval_steps=every, enable_async_checkpointing=async_save, create=True
        )
        self.manager = ocp.CheckpointManager(self.directory, options=options)

    def save(self, step: int, state: TrainState, data_state: dict[str, Any], *, force: bool = False) -> bool:
        args = ocp.args.Composite(state=ocp.args.StandardSave(_as_tree(state)), data=ocp.args.JsonSave(data_state))
        return self.manager.save(step, args=args, force=force)

    def restore(self, abstract: TrainState) -> tuple[TrainState, dict[str, Any]] | None:
        """The newest readable checkpoint restored into `abstract` (ShapeDtypeStructs with shardings),
        or None when there is none."""
        steps = sorted(self.manager.all_steps(), reverse=True)
        for step in steps:
            try:
                restored = self.manager.restore(
                    step,
                    args=ocp.args.Composite(
                        state=ocp.args.StandardRestore(_as_tree(abstract)), data=ocp.args.JsonRestore()
                    ),
                )
            except Exception as e:  # orbax raises many types for partial or damaged files
                log.warning(
                    "checkpoint at step %d in %s is unreadable (%s: %s); trying an older one",
                    step,
                    self.directory,
                    type(e).__name__,
                    str(e).splitlines()[0][:200],
                )
                continue
            tree = restored["state"]
            return TrainState(tree["step"], tree["params"], tree["opt_state"]), restored["data"]
        return None

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.close()


def abstract_like(state: TrainState, shardings: Any) -> TrainState:
    """ShapeDtypeStructs of `state` carrying `shardings`: the restore target."""
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), state, shardings)
