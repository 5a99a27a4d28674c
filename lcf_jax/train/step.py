"""The pure train step: `train_step(state, frozen, batch) -> (state, metrics)`.

Both base models are frozen: their parameters come in as `frozen` (never differentiated, never
donated); only the adapter's float32 master weights are differentiated and updated. The loss is the
receiver's next-token cross-entropy over response tokens, computed from the fused cache. Gradient
accumulation scans over micro-batches summing token losses, and divides by the token count of the
whole batch at the end, so any split into micro-batches or devices computes the same step.

With `StepConfig.with_control`, the LCF-X adapter's receiver-only control (the same adapter given
zero messages) trains in the same step on the same rows: it reuses the receiver's prefix pass, which
is most of its cost, and keeps its own parameters and optimizer state (its own clipping and moments),
so it ends where a separate run with `receiver_only=True` ends, up to float rounding.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from lcf_jax.adapters import Adapter, gumbel_temperature
from lcf_jax.data.batch import Batch
from lcf_jax.kv import KVCache
from lcf_jax.models.model import Model, forward
from lcf_jax.typing import Array, PyTree


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class TrainState:
    step: Array  # int32 scalar
    params: PyTree  # the adapter's nnx.Param state, float32
    opt_state: PyTree
    control: PyTree = None  # with_control: {"params": ..., "opt_state": ...} of the receiver-only control


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
    # lcfx: also train that control, alongside, in the same step (state.control holds it).
    with_control: bool = False
    # lcfx: weight of the anti-bypass hinge (`token_losses`), 0 = off (the paper: plain NLL), and its
    # margin in nats per token.
    bypass_weight: float = 0.0
    bypass_margin: float = 0.5
    # lcfx: weight of the distillation term (`token_losses`), 0 = off (the paper: plain NLL); needs
    # batches with a teacher prefix (the full-context prompt).
    distill_weight: float = 0.0


def make_optimizer(
    *,
    learning_rate: float = 1e-4,
    steps: int = 300,
    warmup_fraction: float = 0.1,
    weight_decay: float = 0.01,
    clip: float = 1.0,
    pool_lr_scale: float = 1.0,
) -> optax.GradientTransformation:
    """AdamW with the paper's defaults: linear warmup over 10% of the steps, then linear decay to 0;
    global-norm clipping at 1.0; weight decay on kernels only (not biases, norms or gate logits).

    `pool_lr_scale` multiplies the learning rate of LCF-X's span-pool parameters (`pool.*`: its
    queries start at zero and, at the paper's rate, Adam moves them too little in a short run for
    the pool to become selective; ours, the paper is silent)."""
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

    def adamw(scale: float) -> optax.GradientTransformation:
        lr = schedule if scale == 1.0 else (lambda step: scale * schedule(step))
        return optax.adamw(lr, weight_decay=weight_decay, mask=decay_mask)

    if pool_lr_scale == 1.0:
        return optax.chain(optax.clip_by_global_norm(clip), adamw(1.0))

    def labels(params):
        return jax.tree_util.tree_map_with_path(
            lambda path, _: "pool" if any(getattr(k, "key", None) == "pool" for k in path) else "rest", params
        )

    return optax.chain(
        optax.clip_by_global_norm(clip),
        optax.multi_transform({"pool": adamw(pool_lr_scale), "rest": adamw(1.0)}, labels),
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
    control: Adapter | None = None,
    bypass_margin: float | None = None,
    distill: bool = False,
) -> dict[str, Array]:
    """Sums over the batch's response tokens: "nll" (negative log-likelihood) and "count" (tokens);
    with a `control` adapter "control_nll", from the same receiver prefix pass; with
    `bypass_margin` (LCF-X) "bypass": the anti-bypass hinge, per row max(0, NLL(own message) -
    NLL(the next row's message) + margin) on mean token NLLs, weighted by the row's tokens (so
    dividing by "count" gives a token mean like the NLL's). It rewards a message that helps its own
    question more than another's (Interlat, arXiv 2511.09149), reusing the receiver's prefix pass;
    with `distill` "distill": the KL from the teacher (the frozen receiver reading the batch's
    `teacher_prefix`, the full-context prompt, then the same suffix) to the adapted receiver over
    the vocabulary at every response token (context distillation: xRAG, arXiv 2405.13792;
    Cartridges, arXiv 2506.06266). The soft targets say what the full context makes likely, not
    only the one reference answer."""
    sharer_params, receiver_params = frozen
    b, tp = batch.prefix.shape
    r_cache = KVCache.init(receiver.config, b, tp, receiver.dtype)
    _, r_cache = forward(
        receiver.graphdef, receiver_params, batch.prefix, r_cache, batch.prefix_lengths, last_only=True
    )
    if (receiver_only or control is not None or bypass_margin is not None or distill) and adapter.spec.kind != "lcfx":
        raise ValueError(
            "receiver_only, the control, the anti-bypass and the distillation terms are LCF-X training: use an lcfx "
            "adapter"
        )
    if distill and batch.teacher_prefix is None:
        raise ValueError("distillation needs batches with a teacher_prefix (examples with a teacher_prompt)")
    if receiver_only:
        fused = adapter.receive(adapter.empty_message(b), r_cache, rng=rng, temperature=temperature)
        nll, count = _suffix_losses(receiver, receiver_params, fused, batch)
        return {"nll": nll.sum(), "count": count.sum()}
    s_cache = KVCache.init(sharer.config, b, batch.sharer.shape[1], sharer.dtype)
    _, s_cache = forward(sharer.graphdef, sharer_params, batch.sharer, s_cache, batch.sharer_lengths, last_only=True)
    message = None
    if adapter.spec.kind == "lcfx":
        conditioned_on = r_cache if adapter.spec.receiver_conditioned else None
        message = adapter.summarize(s_cache, batch.span_ids, num_spans, conditioned_on)
        fused = adapter.receive(message, r_cache, rng=rng, temperature=temperature)
    else:
        fused = adapter.fuse(s_cache, r_cache, rng=rng, temperature=temperature)
    nll, count, logp = _suffix_losses(receiver, receiver_params, fused, batch, with_logp=True)
    out = {"nll": nll.sum(), "count": count.sum()}
    if distill:
        out["distill"] = _distillation(receiver, receiver_params, batch, logp)
    if bypass_margin is not None:
        if b < 2:
            raise ValueError("the anti-bypass term rolls messages within a micro-batch: it needs 2 or more rows")
        rolled = jax.tree.map(lambda x: jnp.roll(x, 1, axis=1), message)  # row i gets row i-1's message
        wrong, _ = _suffix_losses(
            receiver, receiver_params, adapter.receive(rolled, r_cache, rng=rng, temperature=temperature), batch
        )
        per_token = lambda x: x / jnp.maximum(count, 1.0)  # noqa: E731
        out["bypass"] = jnp.sum(jax.nn.relu(per_token(nll) - per_token(wrong) + bypass_margin) * count)
    if control is not None:
        control_fused = control.receive(control.empty_message(b), r_cache, rng=rng, temperature=temperature)
        out["control_nll"] = _suffix_losses(receiver, receiver_params, control_fused, batch)[0].sum()
    return out


def calibrate_message_norm(
    adapter_graphdef: nnx.GraphDef, params: PyTree, sharer: Model, receiver: Model, frozen, batch: Batch, num_spans: int
) -> PyTree:
    """The adapter's parameters with LCF-X's message standardisation set from `batch`'s messages
    (`MessageAdapter.calibrate_message_norm`); jit it with the batch's sharding and the statistics are
    over the global batch, the same on every host."""
    sharer_params, receiver_params = frozen
    adapter = nnx.merge(adapter_graphdef, params)
    b = batch.sharer.shape[0]
    s_cache = KVCache.init(sharer.config, b, batch.sharer.shape[1], sharer.dtype)
    _, s_cache = forward(sharer.graphdef, sharer_params, batch.sharer, s_cache, batch.sharer_lengths, last_only=True)
    r_cache = None
    if adapter.spec.receiver_conditioned:
        r_cache = KVCache.init(receiver.config, b, batch.prefix.shape[1], receiver.dtype)
        _, r_cache = forward(
            receiver.graphdef, receiver_params, batch.prefix, r_cache, batch.prefix_lengths, last_only=True
        )
    adapter.calibrate_message_norm(s_cache, batch.span_ids, num_spans, r_cache)
    return nnx.state(adapter, nnx.Param)


def _suffix_logp(receiver: Model, receiver_params: PyTree, cache: KVCache, batch: Batch) -> Array:
    """The receiver runs the suffix (last prompt token, response) on `cache`: log-probabilities of
    each next token `[B, Tq - 1, V]`."""
    cache = cache.with_capacity(cache.capacity + batch.suffix.shape[1])
    logits, _ = forward(receiver.graphdef, receiver_params, batch.suffix, cache, batch.suffix_lengths)
    return jax.nn.log_softmax(logits[:, :-1].astype(jnp.float32), axis=-1)


def _response_mask(batch: Batch) -> Array:
    """`[B, Tq - 1]` True where the suffix predicts a response token."""
    return jnp.arange(batch.suffix.shape[1] - 1)[None, :] < (batch.suffix_lengths - 1)[:, None]


def _suffix_losses(receiver: Model, receiver_params: PyTree, fused: KVCache, batch: Batch, with_logp: bool = False):
    """Per row the sum of response-token NLLs on the fused cache and their count, `[B]` each (and
    the log-probabilities, with `with_logp`)."""
    logp = _suffix_logp(receiver, receiver_params, fused, batch)
    valid = _response_mask(batch)
    nll = -jnp.take_along_axis(logp, batch.suffix[:, 1:, None], axis=-1)[..., 0]
    out = jnp.sum(jnp.where(valid, nll, 0.0), axis=1), jnp.sum(valid, axis=1).astype(jnp.float32)
    return (*out, logp) if with_logp else out


def _distillation(receiver: Model, receiver_params: PyTree, batch: Batch, student_logp: Array) -> Array:
    """Sum over response tokens of KL(teacher || student); the teacher is the frozen receiver
    reading the full-context prompt (`batch.teacher_prefix`) and then the same suffix."""
    b, tt = batch.teacher_prefix.shape
    cache = KVCache.init(receiver.config, b, tt, receiver.dtype)
    _, cache = forward(
        receiver.graphdef, receiver_params, batch.teacher_prefix, cache, batch.teacher_prefix_lengths, last_only=True
    )
    teacher_logp = jax.lax.stop_gradient(_suffix_logp(receiver, receiver_params, cache, batch))
    kl = jnp.sum(jnp.exp(teacher_logp) * (teacher_logp - student_logp), axis=-1)  # [B, Tq - 1]
    return jnp.sum(jnp.where(_response_mask(batch), kl, 0.0))


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
        with_control = config.with_control
        if with_control and state.control is None:
            raise ValueError("StepConfig.with_control needs a state with a control: init_state(..., control=True)")
        trained = (state.params, state.control["params"]) if with_control else (state.params,)

        bypass = config.bypass_weight > 0 and not config.receiver_only  # the control has no message
        distill = config.distill_weight > 0 and not config.receiver_only

        def micro(carry, micro_batch):
            grads_sum, sums = carry

            def loss(params):
                adapters = [nnx.merge(adapter_graphdef, p) for p in params]
                rng = jax.vmap(lambda row: jax.random.fold_in(step_key, row))(micro_batch.row_ids)  # per row
                out = token_losses(
                    adapters[0],
                    sharer,
                    receiver,
                    frozen,
                    micro_batch,
                    rng,
                    temperature,
                    config.num_spans,
                    config.receiver_only,
                    control=adapters[1] if with_control else None,
                    bypass_margin=config.bypass_margin if bypass else None,
                    distill=distill,
                )
                # The two adapters share no parameter: the gradient of the sum is each one's own.
                total = (
                    out["nll"]
                    + config.bypass_weight * out.get("bypass", 0.0)
                    + config.distill_weight * out.get("distill", 0.0)
                    + out.get("control_nll", 0.0)
                )
                return total, out

            (_, out), grads = jax.value_and_grad(loss, has_aux=True)(trained)
            grads_sum = jax.tree.map(jnp.add, grads_sum, grads)
            return (grads_sum, jax.tree.map(jnp.add, sums, out)), None

        zeros = jax.tree.map(jnp.zeros_like, trained)
        keys = ["nll", "count", *(["bypass"] if bypass else []), *(["distill"] if distill else [])]
        keys += ["control_nll"] if with_control else []
        (grads, sums), _ = jax.lax.scan(micro, (zeros, {k: jnp.float32(0.0) for k in keys}), batch)
        count = jnp.maximum(sums["count"], 1.0)
        grads = jax.tree.map(lambda g: g / count, grads)
        updates, opt_state = optimizer.update(grads[0], state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        gate_logits = nnx.merge(adapter_graphdef, state.params).gate_logits()
        metrics = {
            "loss": sums["nll"] / count,
            "grad_norm": optax.tree.norm(grads[0]),
            "response_tokens": count,
            "temperature": temperature,
            "gate_open_fraction": jnp.mean((gate_logits > 0).astype(jnp.float32)),
            "gate_mean": jnp.mean(jax.nn.sigmoid(gate_logits)),
        }
        if bypass:
            metrics["bypass"] = sums["bypass"] / count
        if distill:
            metrics["distill"] = sums["distill"] / count
        control = None
        if with_control:
            c = state.control
            c_updates, c_opt_state = optimizer.update(grads[1], c["opt_state"], c["params"])
            control = {"params": optax.apply_updates(c["params"], c_updates), "opt_state": c_opt_state}
            metrics |= {"control_loss": sums["control_nll"] / count, "control_grad_norm": optax.tree.norm(grads[1])}
        return TrainState(state.step + 1, params, opt_state, control), metrics

    return step


def init_state(adapter_state: PyTree, optimizer: optax.GradientTransformation, *, control: bool = False) -> TrainState:
    """Step 0. `control=True`: the receiver-only control starts from the same parameters (as a
    separate run with the same seed would)."""
    copy = jax.tree.map(jnp.copy, adapter_state)  # its own buffers: the step donates the state
    extra = {"params": copy, "opt_state": optimizer.init(copy)} if control else None
    return TrainState(jnp.int32(0), adapter_state, optimizer.init(adapter_state), extra)
