"""The axis-letter glossary used in every einsum, name and shape comment of lcf_jax.

B batch          T query (new token) length    S cache length (capacity)
D model width    N query heads                 K kv heads
G = N // K       H head dim                    F MLP width
V vocab          L layers                      P spans
R latent width

Shapes are written in the real axis order, e.g. the KV cache is `[L, B, S, K, H]` and a query
projection kernel is `[D, N*H]`.
"""

from __future__ import annotations

from typing import Any

import jax

Array = jax.Array
PyTree = Any
DType = Any
