"""Messages made of real cache entries (as opposed to the learned adapters' summaries)."""

from lcf_jax.messages.kv import (
    KVMessage,
    context_share,
    entry_counts,
    layer_scores,
    model_signature,
    pick_layers,
    place,
    select,
)

__all__ = [
    "KVMessage",
    "context_share",
    "entry_counts",
    "layer_scores",
    "model_signature",
    "pick_layers",
    "place",
    "select",
]
