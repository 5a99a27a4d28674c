"""The pure train step: `train_step(state, frozen, batch) -> (state, metrics)`.

Both base models are frozen: their parameters come in as `frozen` (never differentiated, never
donated); only the adapter's float32 master weights are differentiated and updated. The loss is the
receiver's next-token cross-entropy over response tokens, computed from the fused cache. Gradient
accumulation scans over micro-batches summing token losses, and divides by the token count of the
whole batch at the end, so any split into micro-batches or devices computes the same step.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from lcf_jax.adapters import Adapter, Message, gumbel_temperature
from lcf_jax.kv import KVCache
from lcf_jax.models.model import Model, forward
from lcf_jax.train.batch import Batch
from lcf_jax.typing import Array, PyTree


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class TrainState:
    step: Array  # int32 scalar
    params: PyTree  # the adapter's nnx.Param state, float32
    opt_state: PyTree


@dataclasses.dataclass(frozen=True)
class StepConfig:
    num_spans: int = 16  # lcfx: span slots per row (static)
    tau_initial: float = 1.0
    tau_final: float = 0.001
    anneal_steps: int = 1929
    seed: int = 42
    # lcfx control: the message is replaced by zeros, so the adapter can learn the task from the
    # receiver's own cache but receives nothing (and the sharer is never run).
    receiver_only: bool = False


def make_optimizer(
    *,
    learning_rate: float = 1e-4,
    steps: int = 300,
    warmup_fraction: float = 0.1,
    weight_decay: float = 0.01,
    clip: float = 1.0,
) -> optax.GradientTransformation:
    """AdamW with the paper's defaults: linear warmup over 10% of the steps, then linear decay to 0;
    global-norm clipping at 1.0; weight decay on kernels only (not biases, norms or gate logits)."""
    warmup = max(1, int(round(warmup_fraction * steps)))
    schedule = optax.join_schedules(
        [
            optax.linear_schedule(0.0, learning_rate, warmup),
            optax.linear_schedule(learning_rate, 0.0, max(1, steps - warmup)),
        ],
        [warmup],
    )

    def decay_mask(params):
        return jax.tree_util.tree_map_with_path(
            lambda path, _: any(getattr(k, "key", None) == "kernel" for k in path), params
        )

    return optax.chain(
        optax.clip_by_global_norm(clip), optax.adamw(schedule, weight_decay=weight_decay, mask=decay_mask)
    )


def token_losses(
    adapter: Adapter,
    sharer: Model,
    receiver: Model,
    frozen: tuple[PyTree, PyTree],
    batch: Batch,
    rng: Array | None,
    temperature,
    num_spans: int,
    receiver_only: bool = False,
) -> tuple[Array, Array]:
    """(sum of response-token negative log-likelihoods, number of response tokens) for one batch."""
    sharer_params, receiver_params = frozen
    b, tp = batch.prefix.shape
    r_cache = KVCache.init(receiver.config, b, tp, receiver.dtype)
    _, r_cache = forward(
        receiver.graphdef, receiver_params, batch.prefix, r_cache, batch.prefix_lengths, last_only=True
    )
    if receiver_only:
        if adapter.spec.kind != "lcfx":
            raise ValueError("receiver_only training is the LCF-X control: it needs an lcfx adapter")
        spec = adapter.spec
        shape = (len(spec.layers), b, spec.message_slots, spec.sharer.num_kv_heads, spec.sharer.head_dim)
        empty = Message(jnp.zeros(shape, jnp.float32), jnp.zeros(shape, jnp.float32))
        fused = adapter.receive(empty, r_cache, rng=rng, temperature=temperature)
        return _suffix_losses(receiver, receiver_params, fused, batch)
    s_cache = KVCache.init(sharer.config, b, batch.sharer.shape[1], sharer.dtype)
    _, s_cache = forward(sharer.graphdef, sharer_params, batch.sharer, s_cache, batch.sharer_lengths, last_only=True)
    if adapter.spec.kind == "lcfx":
        conditioned_on = r_cache if adapter.spec.receiver_conditioned else None
        message = adapter.summarize(s_cache, batch.span_ids, num_spans, conditioned_on)
        fused = adapter.receive(message, r_cache, rng=rng, temperature=temperature)
    else:
        fused = adapter.fuse(s_cache, r_cache, rng=rng, temperature=temperature)
    return _suffix_losses(receiver, receiver_params, fused, batch)


def _suffix_losses(receiver: Model, receiver_params: PyTree, fused: KVCache, batch: Batch) -> tuple[Array, Array]:
    """The receiver runs the suffix (last prompt token, response) on the fused cache."""
    tq = batch.suffix.shape[1]
    fused = fused.with_capacity(fused.capacity + tq)
    logits, _ = forward(receiver.graphdef, receiver_params, batch.suffix, fused, batch.suffix_lengths)
    targets = batch.suffix[:, 1:]
    valid = jnp.arange(tq - 1)[None, :] < (batch.suffix_lengths - 1)[:, None]
    logp = jax.nn.log_softmax(logits[:, :-1], axis=-1)
    nll = -jnp.take_along_axis(logp, targets[..., None], axis=-1)[..., 0]
    return jnp.sum(jnp.where(valid, nll, 0.0)), jnp.sum(valid).astype(jnp.float32)


def make_train_step(
    adapter_graphdef: nnx.GraphDef,
    sharer: Model,
    receiver: Model,
    optimizer: optax.GradientTransformation,
    config: StepConfig,
) -> Callable[[TrainState, tuple[PyTree, PyTree], Batch], tuple[TrainState, dict[str, Array]]]:
    """The pure step over a batch with a leading micro-batch axis `[A, B, ...]`."""

    def step(state: TrainState, frozen: tuple[PyTree, PyTree], batch: Batch):
        temperature = gumbel_temperature(
            state.step, initial=config.tau_initial, final=config.tau_final, anneal_steps=config.anneal_steps
        )
        step_key = jax.random.fold_in(jax.random.key(config.seed), state.step)

        def micro(carry, inputs):
            grads_sum, nll_sum, count = carry
            micro_batch = inputs

            def loss(params):
                adapter = nnx.merge(adapter_graphdef, params)
                rng = jax.vmap(lambda row: jax.random.fold_in(step_key, row))(micro_batch.row_ids)  # per row
                return token_losses(
                    adapter,
                    sharer,
                    receiver,
                    frozen,
                    micro_batch,
                    rng,
                    temperature,
                    config.num_spans,
                    config.receiver_only,
                )

            (nll, n), grads = jax.value_and_grad(loss, has_aux=True)(state.params)
            grads_sum = jax.tree.map(jnp.add, grads_sum, grads)
            return (grads_sum, nll_sum + nll, count + n), None

        zeros = jax.tree.map(jnp.zeros_like, state.params)
        (grads, nll, count), _ = jax.lax.scan(micro, (zeros, jnp.float32(0.0), jnp.float32(0.0)), batch)
        count = jnp.maximum(count, 1.0)
        grads = jax.tree.map(lambda g: g / count, grads)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        gate_logits = nnx.merge(adapter_graphdef, state.params).gate_logits()
        metrics = {
            "loss": nll / count,
            "grad_norm": optax.tree.norm(grads),
            "response_tokens": count,
            "temperature": temperature,
            "gate_open_fraction": jnp.mean((gate_logits > 0).astype(jnp.float32)),
            "gate_mean": jnp.mean(jax.nn.sigmoid(gate_logits)),
        }
        return TrainState(state.step + 1, params, opt_state), metrics

    return step


def init_state(adapter_state: PyTree, optimizer: optax.GradientTransformation) -> TrainState:
    return TrainState(jnp.int32(0), adapter_state, optimizer.init(adapter_state))


def frozen_params(sharer: Model, receiver: Model) -> tuple[Any, Any]:
    return sharer.params, receiver.params
