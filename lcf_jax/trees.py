"""Parameter trees by name: the dotted path of an `nnx` state entry ("layers.mlp.up_proj.kernel"),
a state as `{dotted path: array}`, and parameter counts. One home for what loading, saving,
exporting and logging all need."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
from flax import nnx


def dotted(path: Sequence[Any]) -> str:
    """An `nnx.to_flat_state` path `("layers", "mlp", "up_proj", "kernel")` as "layers.mlp.up_proj.kernel"."""
    return ".".join(map(str, path))


def flat_arrays(state: nnx.State) -> dict[str, Any]:
    """`{dotted path: array}` for every entry of a state."""
    return {dotted(path): v.get_value() for path, v in nnx.to_flat_state(state)}


def num_params(tree: Any) -> int:
    """How many numbers a tree of arrays (or shape-only arrays) holds."""
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))
