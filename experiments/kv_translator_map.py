"""Which map should a KV translator use: linear per layer, or the LCF projector's trunk (without the
receiver input)? Same data, same loss (`lcf_jax.train.translator.translator_loss`), same steps;
held-out relative MSE of keys and values, and the receiver's next-token KL when it reads the
translated entries of each text's first half (lower is better for all three).

    python experiments/kv_translator_map.py --steps 300

The pair: the tests' tiny heterogeneous models (qwen2, 3 layers, 2 kv heads of 8 -> qwen3, 4 layers,
2 kv heads of 16, RoPE base 1e4 -> 5e5) with a shared character tokenizer, reading generated
split_qa paragraphs (no real second model installs offline). Every map starts from zeros (or random
trunk inputs) here, so none gets the closed-form head start `lcf train` gives the linear part.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from tiny_pair import tiny_text_models  # noqa: E402

from lcf_jax.adapters.blocks import layer_map  # noqa: E402
from lcf_jax.data.split_qa import generate_questions  # noqa: E402
from lcf_jax.messages.translate import array_shapes, init_trunk, map_entries  # noqa: E402
from lcf_jax.models.model import Model  # noqa: E402
from lcf_jax.sampling import pad_batch  # noqa: E402
from lcf_jax.train.translator import translator_loss  # noqa: E402


def trunk_init(layers: int, ins: int, outs: int, width: int, seed: int) -> dict[str, jax.Array]:
    """Per layer: down(concat(K, V)) -> two residual GELU FFN blocks (4x) -> k_up(z[:d/2]), v_up(z[d/2:])."""
    keys = iter(jax.random.split(jax.random.key(seed), 8))
    normal = lambda shape, fan_in: jax.random.normal(next(keys), (layers, *shape)) / np.sqrt(fan_in)  # noqa: E731
    half = width // 2
    return {
        "down": normal((2 * ins, width), 2 * ins), "down_b": jnp.zeros((layers, width)),
        "w0": normal((width, 4 * width), width), "b0": jnp.zeros((layers, 4 * width)),
        "o0": normal((4 * width, width), 4 * width) * 0.1, "w1": normal((width, 4 * width), width),
        "b1": jnp.zeros((layers, 4 * width)), "o1": normal((4 * width, width), 4 * width) * 0.1,
        "k_up": normal((half, outs), half), "k_b": jnp.zeros((layers, outs)),
        "v_up": normal((half, outs), half), "v_b": jnp.zeros((layers, outs)),
    }  # fmt: skip


def trunk_map(p, keys, values):
    x = jnp.concatenate([keys, values], -1)
    lay = lambda a, w, b: jnp.einsum("L...I,LIO->L...O", a, w) + b[:, None, None]  # noqa: E731
    z = lay(x, p["down"], p["down_b"])
    for w, b, o in (("w0", "b0", "o0"), ("w1", "b1", "o1")):
        z = z + jnp.einsum("L...I,LIO->L...O", jax.nn.gelu(lay(z, p[w], p[b])), p[o])
    half = z.shape[-1] // 2
    return lay(z[..., :half], p["k_up"], p["k_b"]), lay(z[..., half:], p["v_up"], p["v_b"])


def texts(tokenizer, split: str, count: int, seed: int) -> list[list[int]]:
    qs = generate_questions(split, count, seed=seed)
    return [tokenizer.encode("\n".join((*q.sharer_context, *q.receiver_context)), add_special_tokens=False)[:256]
            for q in qs]  # fmt: skip


def run(name, params, mapper, sharer, receiver, train, test, steps, lr, batch):
    source = np.asarray(layer_map("k_nearest", sharer.config.num_layers, receiver.config.num_layers))
    loss = functools.partial(translator_loss, sharer=sharer, receiver=receiver, source=source, mapper=mapper)
    opt = optax.adam(optax.cosine_decay_schedule(lr, max(steps, 1)))
    frozen = (sharer.params, receiver.params)

    @jax.jit
    def step(params, state, tokens, lengths):
        grads, metrics = jax.grad(functools.partial(loss, kl_weight=0.0), has_aux=True)(params, frozen, tokens, lengths)
        updates, state = opt.update(grads, state, params)
        return optax.apply_updates(params, updates), state, metrics

    state, rng = opt.init(params), np.random.default_rng(0)
    for n in range(steps):
        rows = [train[i] for i in rng.choice(len(train), batch, replace=False)]
        tokens, lengths = pad_batch(rows, pad_id=1, multiple=32)
        params, state, metrics = step(params, state, jnp.asarray(tokens), jnp.asarray(lengths))
        if (n + 1) % max(1, steps // 5) == 0:
            print(f"  {name} step {n + 1}: loss {float(metrics['loss']):.4f}", flush=True)
    tokens, lengths = pad_batch(test, pad_id=1, multiple=32)
    _, held = jax.jit(functools.partial(loss, kl_weight=1.0))(params, frozen, jnp.asarray(tokens), jnp.asarray(lengths))
    count = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params))
    out = {k: float(v) for k, v in held.items() if k != "loss"} | {"parameters": count}
    print(f"{name}: {out}", flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--width", type=int, default=64, help="the trunk's latent width d")
    parser.add_argument("--train-texts", type=int, default=400)
    parser.add_argument("--out", default="experiments/kv_translator_map.json")
    args = parser.parse_args()
    sharer, receiver = tiny_text_models(seed=4)
    receiver = Model(dataclasses.replace(receiver.config, rope_theta=500_000.0), receiver.graphdef, receiver.params,
                     tokenizer=receiver.tokenizer)  # fmt: skip
    train, test = texts(sharer.tokenizer, "train", args.train_texts, 3), texts(sharer.tokenizer, "test", 16, 5)
    lr_, ins = receiver.config.num_layers, sharer.config.num_kv_heads * sharer.config.head_dim
    outs = receiver.config.num_kv_heads * receiver.config.head_dim
    common = (sharer, receiver, train, test, args.steps, args.lr, args.batch)
    zeros = {n: jnp.zeros(shape) for n, shape in array_shapes(sharer.config, receiver.config).items()}
    both = lambda d: zeros | {k: jnp.asarray(v) for k, v in init_trunk(sharer.config, receiver.config, d).items()}  # noqa: E731
    results = {
        "zero entries": run("zeros", zeros, map_entries, *common[:4], 0, args.lr, args.batch),
        "linear": run("linear", zeros, map_entries, *common),
        f"trunk alone, d={args.width}": run("trunk", trunk_init(lr_, ins, outs, args.width, 0), trunk_map, *common),
        f"linear + trunk, d={args.width} (lcf_jax's map)": run("linear+trunk", both(args.width), map_entries, *common),
        "linear + trunk, d=16": run("linear+trunk16", both(16), map_entries, *common),
    }
    Path(args.out).write_text(json.dumps({"args": vars(args), "results": results}, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
