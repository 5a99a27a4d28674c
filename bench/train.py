"""Training step time against the cost of its parts, measured in the same run.

    python bench/train.py [--kind lcf] [--batch 4] [--prefix 128] [--suffix 32] [--repeats 5] [--json OUT]

The pair is SmolLM2-135M-Instruct as sharer and receiver (the embedded default). Parts: the sharer's
forward over the fused section, the receiver's forward over it, and the receiver's forward and
backward over the suffix (gradient with respect to the fused cache, which is what reaches the
adapter). The step adds only the adapter's own forward/backward and the optimizer; the goal is a
step costing at most 1.3x its parts.
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
from common import report, timeit, tune_allocator
from flax import nnx

from lcf_jax import load_model
from lcf_jax.adapters import count_params, make_adapter, make_spec
from lcf_jax.data.examples import make_batch
from lcf_jax.data.synthetic import copy_task
from lcf_jax.kv import KVCache
from lcf_jax.models.model import forward
from lcf_jax.train.step import StepConfig, init_state, make_optimizer, make_train_step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kind", default="lcf", choices=["lcf", "lcfx", "c2c"])
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--prefix", type=int, default=128)
    parser.add_argument("--suffix", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    tune_allocator()  # the `lcf` command's allocator settings, before anything allocates (bench/common.py)

    model = load_model("smollm2-135m")
    spec = make_spec(args.kind, model.config, model.config, latent_width=128, dropout=0.0)
    graphdef, params = nnx.split(make_adapter(spec, rngs=nnx.Rngs(0)), nnx.Param)
    optimizer = make_optimizer()
    examples = copy_task(
        args.batch,
        vocab=model.config.vocab_size,
        prompt_length=args.prefix + 1,
        response_length=args.suffix - 1,
        lcfx=args.kind == "lcfx",
    )
    # Full-length prompts so the widths are exactly --prefix and --suffix.
    examples = [
        e.__class__(e.prompt + (5,) * (args.prefix + 1 - len(e.prompt)), e.response, None, e.sharer_context)
        for e in examples
    ]
    batch = make_batch(examples, bucket=16)
    frozen = (model.params, model.params)
    step = jax.jit(make_train_step(graphdef, model, model, optimizer, StepConfig()), donate_argnums=0)
    state = init_state(params, optimizer)
    micro = batch.micro_batches(1)

    def run_step():
        nonlocal state
        state, metrics = step(state, frozen, micro)
        return metrics["loss"]

    step_s = timeit(run_step, repeats=args.repeats)

    b, tp = batch.prefix.shape
    prefix_forward = jax.jit(
        lambda p, tokens, lengths: forward(
            model.graphdef, p, tokens, KVCache.init(model.config, b, tokens.shape[1]), lengths, last_only=True
        )[1]
    )
    sharer_s = timeit(lambda: prefix_forward(model.params, batch.sharer, batch.sharer_lengths), repeats=args.repeats)
    receiver_s = timeit(lambda: prefix_forward(model.params, batch.prefix, batch.prefix_lengths), repeats=args.repeats)
    cache = prefix_forward(model.params, batch.prefix, batch.prefix_lengths)
    tq = batch.suffix.shape[1]

    @jax.jit
    def suffix_grad(k, v):
        def loss(k, v):
            c = cache.replace(k=k, v=v).with_capacity(tp + tq)
            logits, _ = forward(model.graphdef, model.params, batch.suffix, c, batch.suffix_lengths)
            logp = jax.nn.log_softmax(logits[:, :-1])
            return -jnp.mean(jnp.take_along_axis(logp, batch.suffix[:, 1:, None], axis=-1))

        return jax.grad(loss, argnums=(0, 1))(k, v)

    backward_s = timeit(lambda: suffix_grad(cache.k, cache.v), repeats=args.repeats)
    parts = sharer_s + receiver_s + backward_s
    rows = [
        {"what": f"sharer forward, {b}x{tp} tokens", "ms": sharer_s * 1e3},
        {"what": f"receiver forward, {b}x{tp} tokens", "ms": receiver_s * 1e3},
        {"what": f"receiver forward+backward to the cache, {b}x{tq} tokens", "ms": backward_s * 1e3},
        {"what": "parts, total", "ms": parts * 1e3},
        {
            "what": f"train step ({args.kind}, {count_params(make_adapter(spec, rngs=nnx.Rngs(0))):,} adapter params)",
            "ms": step_s * 1e3,
            "step / parts": f"{step_s / parts:.2f}x",
        },
    ]
    report(
        f"Train step vs its parts (SmolLM2-135M pair, float32, {args.kind})",
        rows,
        ["what", "ms", "step / parts"],
        json_path=args.json,
        notes=[f"Goal: step <= 1.3x parts. Measured {step_s / parts:.2f}x."],
    )


if __name__ == "__main__":
    main()
