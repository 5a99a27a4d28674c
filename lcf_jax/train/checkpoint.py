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
import numpy as np
import orbax.checkpoint as ocp

from lcf_jax.errors import CheckpointError
from lcf_jax.train.step import TrainState

log = logging.getLogger(__name__)


def _as_tree(state: TrainState) -> dict[str, Any]:
    tree = {"step": state.step, "params": state.params, "opt_state": state.opt_state}
    if state.control is not None:  # the receiver-only control trained alongside (with_control)
        tree["control"] = state.control
    return tree


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
            return TrainState(tree["step"], tree["params"], tree["opt_state"], tree.get("control")), restored["data"]
        return None

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.close()


def restore_params(directory: str | os.PathLike, step: int | None = None) -> tuple[int, dict[str, np.ndarray]]:
    """The adapter parameters of one checkpoint under `directory` (a `checkpoints` folder written by
    `Checkpointer`) as flat names (`projectors.down.kernel`, as `save_adapter` names them) -> host
    arrays, and its step. `step=None`: the newest readable one.

    Needs neither the optimizer nor the topology that saved it: the restore target is built from
    the checkpoint's own metadata, on one local device."""
    directory = Path(directory).absolute()
    # Not read_only (orbax warns about that on every use); create=False and no save: nothing is written.
    options = ocp.CheckpointManagerOptions(create=False)
    handlers = {"state": ocp.StandardCheckpointHandler(), "data": ocp.JsonCheckpointHandler()}
    with ocp.CheckpointManager(directory, options=options, item_handlers=handlers) as manager:
        steps = sorted(manager.all_steps(), reverse=True)
        if not steps:
            raise FileNotFoundError(f"no Orbax checkpoint in {directory}: expected numbered step folders (`lcf train`)")
        if step is not None:
            if step not in steps:
                raise FileNotFoundError(f"{directory} has no checkpoint of step {step}; it has steps {sorted(steps)}")
            steps = [step]
        device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
        errors = []
        for candidate in steps:
            try:
                metadata = manager.item_metadata(candidate)["state"]
                target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device), metadata)
                state = manager.restore(candidate, args=ocp.args.Composite(state=ocp.args.StandardRestore(target)))
            except Exception as e:  # orbax raises many types for partial or damaged files
                errors.append(f"step {candidate}: {type(e).__name__}: {str(e).splitlines()[0][:200]}")
                log.warning("checkpoint at %s is unreadable (%s); trying an older one", directory, errors[-1])
                continue
            flat = {}
            for path, value in jax.tree_util.tree_flatten_with_path(state["state"]["params"])[0]:
                keys = [str(getattr(k, "key", getattr(k, "name", k))) for k in path]
                if keys[-1] == "value":  # an nnx Variable is saved as {"value": array}
                    keys = keys[:-1]
                flat[".".join(keys)] = np.asarray(jax.device_get(value))
            return candidate, flat
    raise CheckpointError(f"no readable checkpoint in {directory}: {'; '.join(errors)}")


def abstract_like(state: TrainState, shardings: Any) -> TrainState:
    """ShapeDtypeStructs of `state` carrying `shardings`: the restore target."""
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), state, shardings)
