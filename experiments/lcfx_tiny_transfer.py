"""Does an LCF-X message carry what only the sharer knows? The tiny config trained 150 steps on
`sharer_only_task` (the answer is in the sharer's spans; the receiver's prompt is the same for all),
then held-out token NLL with the own message, the next example's and none (README, "LCF-X recipe").

    python experiments/lcfx_tiny_transfer.py paper1 fix1 paper2 fix2

Tasks: 1 = one span of one token, the token asked (the default of the data kind); 2 = two spans of
three tokens, the first token asked. "fix" = zero up-init + the anti-bypass hinge (weight 1).
"""

from __future__ import annotations

import functools
import shutil
import sys

import jax
import jax.numpy as jnp

import lcf_jax.train.loop as loop
from lcf_jax.adapters.io import load_adapter
from lcf_jax.config import load_config
from lcf_jax.data.pipeline import BatchIterator
from lcf_jax.data.synthetic import sharer_only_task
from lcf_jax.train.step import token_losses

TASKS = {"1": dict(spans=1, span_length=1, response_length=1), "2": dict(spans=2, span_length=3, response_length=1)}


def run(name: str) -> dict[str, float]:
    task = TASKS[name[-1]]
    config = load_config("configs/tiny.py:lcfx")
    config.data.kind, config.data.count = "sharer_only", 512
    config.train.steps = config.train.anneal_steps = 150
    config.checkpoint.every, config.log_every = 1000, 50
    if name.startswith("fix"):
        with config.unlocked():
            config.adapter.options.up_init = "zeros"
        config.train.bypass_weight = 1.0
    workdir = f"/tmp/lcfx-tiny-{name}"
    shutil.rmtree(workdir, ignore_errors=True)
    loop.sharer_only_task = functools.partial(sharer_only_task, **task)  # the data kind's task shape
    loop.train(config, workdir, progress=False)
    sharer, receiver = loop.build_models(config)
    adapter = load_adapter(f"{workdir}/adapter")
    batch = next(BatchIterator(sharer_only_task(64, vocab=receiver.config.vocab_size, seed=99, **task), 64, bucket=8))
    summarize, out = type(adapter).summarize, {}
    changes = {"matched": lambda m: m, "mismatched": lambda m: jax.tree.map(lambda x: jnp.roll(x, 1, 1), m),
               "empty": lambda m: adapter.empty_message(m.batch_size)}  # fmt: skip
    for condition, change in changes.items():
        type(adapter).summarize = lambda self, *a, change=change, **k: change(summarize(self, *a, **k))
        try:
            losses = token_losses(adapter, sharer, receiver, (sharer.params, receiver.params), batch, None, 1.0, 16)
        finally:
            type(adapter).summarize = summarize
        out[condition] = round(float(losses["nll"] / losses["count"]), 3)
    return out


if __name__ == "__main__":
    for name in sys.argv[1:] or ["paper1", "fix1", "paper2", "fix2"]:
        print(name, run(name), flush=True)
