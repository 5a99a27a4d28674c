"""Layer pruning after training, without fine-tuning: dropping a layer's projector is exactly
zeroing its gated residual, so a pruned adapter computes what the full one computes with those
layers' gates closed.

The procedure (the paper's; its layer indices are checkpoint-specific, the procedure is the feature):
 1. gate audit: drop layers whose key and value gate logits are both <= 0 (closed at inference);
 2. single-layer ablation: drop layers whose removal improves the dev metric;
 3. rank the rest by how much the metric falls without them, and keep the top K.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Iterable

import jax
import numpy as np
from flax import nnx
from tqdm.auto import tqdm

from lcf_jax.adapters.adapter import Adapter, make_adapter
from lcf_jax.adapters.build import count_params, size_mb

log = logging.getLogger(__name__)
Metric = Callable[[Adapter], float]


def gate_audit(adapter: Adapter) -> list[int]:
    """Receiver layers whose key and value gates are both closed (logits <= 0)."""
    logits = np.asarray(adapter.gate_logits())
    return [layer for layer, (k, v) in zip(adapter.spec.layers, logits) if k <= 0 and v <= 0]


def keep_layers(adapter: Adapter, layers: Iterable[int]) -> Adapter:
    """A new adapter with only the projectors of `layers` (receiver indices), parameters copied."""
    spec = adapter.spec
    keep = sorted(set(layers))
    missing = sorted(set(keep) - set(spec.layers))
    if missing or not keep:
        raise ValueError(f"cannot keep layers {missing or keep}: the adapter has projectors for {list(spec.layers)}")
    positions = np.array([spec.layers.index(t) for t in keep])
    new_spec = dataclasses.replace(
        spec, layers=tuple(keep), source_layers=tuple(spec.source_layers[i] for i in positions)
    )
    graphdef = nnx.graphdef(nnx.eval_shape(lambda: make_adapter(new_spec, rngs=nnx.Rngs(0))))
    state = jax.tree.map(lambda x: x[positions], nnx.state(adapter))
    return nnx.merge(graphdef, state)


def drop_layers(adapter: Adapter, layers: Iterable[int]) -> Adapter:
    drop = set(layers)
    return keep_layers(adapter, [t for t in adapter.spec.layers if t not in drop])


def ablation(adapter: Adapter, metric: Metric, *, progress: bool = True) -> dict[int, float]:
    """The dev metric with each single layer dropped (layer -> metric)."""
    if len(adapter.spec.layers) < 2:
        return {}
    scores = {}
    for layer in tqdm(adapter.spec.layers, desc="ablating layers", disable=not progress or None, leave=False):
        scores[layer] = float(metric(drop_layers(adapter, [layer])))
    return scores


@dataclasses.dataclass
class PruneReport:
    adapter: Adapter
    baseline: float  # dev metric of the full adapter
    dead: list[int]  # step 1: closed gates
    harmful: list[int]  # step 2: removal improved the metric
    importance: dict[int, float]  # step 3: baseline - metric without the layer (higher: more important)
    kept: list[int]
    final: float  # dev metric of the pruned adapter

    def summary(self) -> str:
        return (
            f"pruned to {len(self.kept)} layers {self.kept}: {count_params(self.adapter):,} parameters, "
            f"{size_mb(self.adapter):.1f} MB in bf16; dev metric {self.baseline:.4g} -> {self.final:.4g} "
            f"(dead {self.dead}, harmful {self.harmful})"
        )


def prune(adapter: Adapter, metric: Metric, top_k: int, *, progress: bool = True) -> PruneReport:
    """Gate audit, single-layer ablation, then the `top_k` most important layers. `metric(adapter)`
    scores an adapter on the dev set (higher is better)."""
    if top_k < 1:
        raise ValueError(f"top_k must be >= 1, got {top_k}")
    baseline = float(metric(adapter))
    dead = gate_audit(adapter)
    alive = [t for t in adapter.spec.layers if t not in dead]
    if not alive:
        raise ValueError("every layer's gates are closed: the adapter does nothing to prune to")
    current = keep_layers(adapter, alive)
    reference = float(metric(current)) if dead else baseline  # equal to baseline: dead layers add nothing
    scores = ablation(current, metric, progress=progress)
    harmful = [t for t, s in scores.items() if s > reference]
    importance = {t: reference - s for t, s in scores.items() if t not in harmful}
    ranked = sorted(importance, key=lambda t: (-importance[t], t))
    kept = sorted(ranked[:top_k] if ranked else alive[:top_k])
    pruned = keep_layers(adapter, kept)
    report = PruneReport(pruned, baseline, dead, harmful, importance, kept, float(metric(pruned)))
    log.info(report.summary())
    return report
