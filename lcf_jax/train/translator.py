"""Training a KV translator: `lcf train` with `adapter.kind = "kv_translator"` (configs/kv_translator.py).

Self-supervised, both models frozen: they read the same texts, and for each receiver layer t the
map turns sharer layer `source_layers[t]`'s pre-RoPE keys and values into the receiver's own
(`lcf_jax.messages.translate`). The loss is each layer's MSE relative to its target's variance (so a
layer counts the same whatever its scale), keys and values averaged; with `train.kl_weight > 0`
it adds the receiver's next-token KL: the receiver reads the translated entries of each text's
first half and its own tokens after them, against reading the whole text itself (what the
message is for; the issue's option, ours to weigh).

Init (`translator.init`): "ridge" starts from the closed-form least-squares fit on the first
`translator.ridge_texts` texts (the exact MSE minimum for a linear map on those texts: training
then generalises it over more text and, with the KL term, toward what the receiver uses), "zeros"
from nothing. AdamW (`make_optimizer`; the maps are not "kernel"s, so no weight decay), Orbax
checkpoints of parameters, optimizer and the data iterator's place (a killed run resumes),
metrics.jsonl, and when training ends `kv_translator/` (safetensors + JSON: what
`lcf eval --kv-translator`, `lcf export` and `lcf_jax.torch.load_kv_translator` read) and
summary.json with the held-out relative MSE.

Texts (`data.kind`): "split_qa" (each generated question's paragraphs, both agents', as one text),
"text_jsonl" (a file of {"text": ...} lines: the user's own corpus) or "synthetic" (random
tokens, for tiny random models without a tokenizer).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.sharding import NamedSharding

from lcf_jax.adapters.blocks import layer_map as make_layer_map
from lcf_jax.errors import ConfigError
from lcf_jax.kv import KVCache
from lcf_jax.messages.translate import (
    TRANSLATOR_CONFIG,
    KVTranslator,
    array_shapes,
    fit_translator,
    init_trunk,
    map_entries,
    pre_rope,
    relative_mse,
    rotate,
    save_translator,
)
from lcf_jax.models.model import Model, forward
from lcf_jax.progress import Progress
from lcf_jax.sampling import pad_batch
from lcf_jax.sharding import logical_spec, make_mesh
from lcf_jax.sizes import round_up
from lcf_jax.train.checkpoint import Checkpointer, abstract_like
from lcf_jax.train.step import TrainState, make_optimizer
from lcf_jax.train.workdir import CHECKPOINTS_DIR, write_run_files
from lcf_jax.trees import num_params

log = logging.getLogger("lcf_jax.train")

TRANSLATOR_DIR = "kv_translator"  # in a work directory: the trained translator, saved when training ends
KIND = "kv_translator"


def translator_directory(path) -> Path | None:
    """Where a translator's files are under `path`: `path` itself, or its kv_translator/ (a `lcf
    train` work directory); None when neither holds one."""
    root = Path(path)
    return next((d for d in (root, root / TRANSLATOR_DIR) if (d / TRANSLATOR_CONFIG).exists()), None)


# --- texts -------------------------------------------------------------------------------------


def build_texts(config: ml_collections.ConfigDict, sharer: Model, split: str = "train") -> list[list[int]]:
    """Token ids both models read (`data.kind`); `split="test"` gives held-out texts."""
    data = config.data
    count = data.count if split == "train" else max(4, data.count // 10)
    if data.kind == "synthetic":
        rng = np.random.default_rng([data.seed, split == "test"])
        low = max(2, data.max_length // 2)
        return [
            rng.integers(1, sharer.config.vocab_size, rng.integers(low, data.max_length + 1)).tolist()
            for _ in range(count)
        ]
    if sharer.tokenizer is None:
        raise ConfigError(f"data.kind={data.kind!r} needs models with a tokenizer; random models use 'synthetic'")
    encode = functools.partial(sharer.tokenizer.encode, add_special_tokens=False)
    if data.kind == "split_qa":
        from lcf_jax.data.split_qa import generate_questions  # noqa: PLC0415 - only for this kind

        questions = generate_questions(split, count, seed=data.seed + (split == "test"), variant=data.variant)
        texts = [encode("\n".join((*q.sharer_context, *q.receiver_context))) for q in questions]
    elif data.kind == "text_jsonl":
        texts = [encode(t) for t in read_texts(data.path, split, data.limit or None)]
    else:
        raise ConfigError(
            f"unknown data.kind {data.kind!r} for a KV translator: 'split_qa', 'text_jsonl' or 'synthetic'"
        )
    return [t[: data.max_length] for t in texts if len(t) >= 2]


def read_texts(path: str, split: str, limit: int | None) -> list[str]:
    """{"text": ...} lines of `path`; the last tenth (at least one line) is held out as "test"."""
    if not path or not Path(path).is_file():
        raise FileNotFoundError(f'data.path {path!r} is not a file: give a JSONL file of {{"text": ...}} lines')
    texts = []
    for number, line in enumerate(Path(path).read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise ConfigError(f"{path}:{number}: not JSON ({e.msg})") from None
        if not isinstance(row, dict) or not isinstance(row.get("text"), str):
            raise ConfigError(f'{path}:{number}: expected an object with a "text" string')
        texts.append(row["text"])
    if len(texts) < 2:
        raise ConfigError(f"{path} holds {len(texts)} texts: a translator needs at least 2 (one is held out)")
    held = max(1, len(texts) // 10)
    chosen = texts[:-held] if split == "train" else texts[-held:]
    return chosen[:limit]


@dataclasses.dataclass
class TextBatches:
    """Fixed-size batches of texts in a seeded order per epoch, right-padded to a multiple of
    `bucket`; the state (epoch, position) goes into every checkpoint. Every host walks the same
    global order and keeps its own rows."""

    texts: Sequence[Sequence[int]]
    batch_size: int
    seed: int = 0
    bucket: int = 16
    pad_id: int = 0
    process_index: int = 0
    process_count: int = 1
    epoch: int = 0
    position: int = 0

    def __post_init__(self):
        if len(self.texts) < self.batch_size:
            raise ConfigError(f"{len(self.texts)} texts cannot fill one batch of {self.batch_size}: raise data.count")
        if self.batch_size % self.process_count:
            raise ConfigError(f"batch {self.batch_size} does not split over {self.process_count} hosts")

    def __next__(self) -> tuple[np.ndarray, np.ndarray]:
        if self.position >= len(self.texts) // self.batch_size:
            self.epoch, self.position = self.epoch + 1, 0
        order = np.random.default_rng([self.seed, self.epoch]).permutation(len(self.texts))
        chosen = [self.texts[i] for i in order[self.position * self.batch_size :][: self.batch_size]]
        self.position += 1
        # One width for the global batch: every host pads its rows alike.
        width = round_up(max(len(t) for t in chosen), self.bucket)
        per_host = self.batch_size // self.process_count
        rows = chosen[self.process_index * per_host :][:per_host]
        return pad_batch(rows, pad_id=self.pad_id, width=width)

    def get_state(self) -> dict[str, int]:
        return {"epoch": int(self.epoch), "position": int(self.position)}

    def set_state(self, state: dict[str, Any]) -> None:
        self.epoch, self.position = int(state["epoch"]), int(state["position"])


# --- the loss ----------------------------------------------------------------------------------


def pre_rope_entries(model: Model, params, tokens, lengths, *, logits: bool = False):
    """One prefill of `tokens` `[B, T]`: every layer's pre-RoPE keys and values `[L, B, T, K*H]`
    (and the logits `[B, T, V]` with `logits=True`)."""
    b, t = tokens.shape
    cache = KVCache.init(model.config, b, t, model.dtype)
    out, cache = forward(model.graphdef, params, tokens, cache, lengths, last_only=not logits)
    keys, values = pre_rope(cache, model.config)
    return keys, values, out


def _relative_error(prediction, target, mask):
    """Per layer: masked MSE / masked variance of the target (the variance held constant)."""
    count = jnp.maximum(mask.sum(), 1) * target.shape[-1]
    m = mask[None, :, :, None]
    error = jnp.sum(jnp.where(m, (prediction - target) ** 2, 0), axis=(1, 2, 3)) / count
    mean = jnp.sum(jnp.where(m, target, 0), axis=(1, 2), keepdims=True) / jnp.maximum(mask.sum(), 1)
    variance = jnp.sum(jnp.where(m, (target - mean) ** 2, 0), axis=(1, 2, 3)) / count
    return error / jax.lax.stop_gradient(jnp.maximum(variance, 1e-12))


def _kl_half(receiver: Model, receiver_params, keys, values, tokens, lengths, own_logits):
    """KL(receiver reading the whole text || receiver reading the translated entries of the first
    half, then its own tokens), averaged over the second half's next-token predictions."""
    b, t = tokens.shape
    cfg = receiver.config
    split = lengths // 2
    positions = jnp.broadcast_to(jnp.arange(t), keys.shape[:3])
    shape = (*keys.shape[:3], cfg.num_kv_heads, cfg.head_dim)
    k = rotate(keys.reshape(shape), positions, cfg)
    sent = (jnp.arange(t)[None, :] < split[:, None])[None, :, :, None, None]
    pad = ((0, 0), (0, 0), (0, t), (0, 0), (0, 0))  # room for the rest of the text after the entries
    cache = KVCache(
        jnp.pad(jnp.where(sent, k, 0), pad).astype(receiver.dtype),
        jnp.pad(jnp.where(sent, values.reshape(shape), 0), pad).astype(receiver.dtype),
        split.astype(jnp.int32),
    )
    index = jnp.minimum(split[:, None] + jnp.arange(t)[None, :], t - 1)  # rest token j = token split + j
    rest = jnp.take_along_axis(tokens, index, axis=1)
    rest_lengths = lengths - split
    read, _ = forward(receiver.graphdef, receiver_params, rest, cache, rest_lengths)
    target = jnp.take_along_axis(own_logits, index[:, :, None], axis=1)
    p, q = jax.nn.log_softmax(target, -1), jax.nn.log_softmax(read.astype(jnp.float32), -1)
    kl = jnp.sum(jnp.exp(p) * (p - q), -1)  # [B, T]
    mask = jnp.arange(t)[None, :] < rest_lengths[:, None]
    return jnp.sum(jnp.where(mask, kl, 0)) / jnp.maximum(mask.sum(), 1)


def translator_loss(
    params, frozen, tokens, lengths, *, sharer: Model, receiver: Model, source, kl_weight: float, mapper=map_entries
):
    """(loss, metrics) of the translator `params` on one batch of texts. `mapper(params, keys,
    values)` maps pre-RoPE entries `[Lr, B, T, Ks*Hs]` (the linear `map_entries`; experiments
    pass others)."""
    sharer_params, receiver_params = frozen
    xk, xv, _ = pre_rope_entries(sharer, sharer_params, tokens, lengths)
    yk, yv, own = pre_rope_entries(receiver, receiver_params, tokens, lengths, logits=kl_weight > 0)
    xk, xv = jax.lax.stop_gradient((xk[source], xv[source]))
    pk, pv = mapper(params, xk, xv)
    mask = jnp.arange(tokens.shape[1])[None, :] < lengths[:, None]
    key_error = _relative_error(pk, jax.lax.stop_gradient(yk), mask).mean()
    value_error = _relative_error(pv, jax.lax.stop_gradient(yv), mask).mean()
    loss = (key_error + value_error) / 2
    metrics = {"key_relative_mse": key_error, "value_relative_mse": value_error}
    if kl_weight > 0:
        kl = _kl_half(receiver, receiver_params, pk, pv, tokens, lengths, jax.lax.stop_gradient(own))
        loss = loss + kl_weight * kl
        metrics["kl"] = kl
    return loss, {"loss": loss, **metrics}


# --- the run -----------------------------------------------------------------------------------


def initial_arrays(config, sharer: Model, receiver: Model, texts) -> tuple[tuple[int, ...], dict[str, np.ndarray]]:
    """(source layers, arrays) to start from: the linear maps from the ridge fit on the first texts
    (or zeros), and a trunk that adds nothing yet (`translator.width` > 0)."""
    options = config.translator
    if options.init == "ridge":
        fitted, fit = fit_translator(
            sharer, receiver, texts[: options.ridge_texts], layer_map=options.layer_map, ridge=options.ridge
        )
        log.info("ridge init on %d texts: relative MSE keys %.4f, values %.4f", options.ridge_texts,
                 fit["key_relative_mse"], fit["value_relative_mse"])  # fmt: skip
        source, arrays = fitted.source_layers, dict(fitted.arrays)
    elif options.init == "zeros":
        source = tuple(make_layer_map(options.layer_map, sharer.config.num_layers, receiver.config.num_layers))
        arrays = {n: np.zeros(s, np.float32) for n, s in array_shapes(sharer.config, receiver.config).items()}
    else:
        raise ConfigError(f"translator.init {options.init!r}: choose 'ridge' or 'zeros'")
    if options.width:
        arrays |= init_trunk(sharer.config, receiver.config, options.width, seed=config.seed)
    return source, arrays


def check_pair(sharer, receiver) -> None:
    """A translator maps between two different models that share a tokenizer."""
    if sharer is receiver:
        raise ConfigError("a KV translator maps between two different models: one model's entries need none")
    if sharer.config.vocab_size != receiver.config.vocab_size:
        raise ConfigError(
            f"a KV translator needs models that share a tokenizer (positions are token positions); the sharer's "
            f"vocabulary has {sharer.config.vocab_size} ids, the receiver's {receiver.config.vocab_size}"
        )


def _finish(config, workdir: Path, state, iterator, checkpointer, models, source, start: int, metrics) -> dict:
    """The last checkpoint, the translator and its held-out error, summary.json and config.json."""
    sharer, receiver = models
    t = config.train
    if checkpointer.latest_step() != t.steps:
        checkpointer.save(t.steps, state, iterator.get_state(), force=True)
    checkpointer.wait()
    checkpointer.close()
    translator = KVTranslator(
        sharer.config, receiver.config, source, {k: np.asarray(v) for k, v in jax.device_get(state.params).items()}
    )
    held_out = relative_mse(translator, sharer, receiver, build_texts(config, sharer, "test")[:16])
    summary = {
        "kind": KIND,
        "steps": t.steps,
        "resumed_from": start,
        "parameters": {"translator": num_params(state.params)},
        "source_layers": list(source),
        "final": {k: float(v) for k, v in jax.device_get(metrics).items()} if metrics else {},
        "held_out": held_out,
    }
    if jax.process_index() == 0:
        save_translator(translator, workdir / TRANSLATOR_DIR)
        write_run_files(workdir, summary, config)
    return summary


def train_translator(
    config: ml_collections.ConfigDict, workdir: str | Path, *, progress: bool = True, models=None
) -> dict[str, Any]:
    """Run (or resume) the translator training the config describes; returns the summary."""
    from lcf_jax.train.loop import MetricsLog, build_models, put_global  # noqa: PLC0415 - loop dispatches here

    workdir = Path(workdir)
    primary = jax.process_index() == 0
    if primary:
        workdir.mkdir(parents=True, exist_ok=True)
    t = config.train
    sharer, receiver = models or build_models(config)
    check_pair(sharer, receiver)
    devices = jax.devices()[: config.mesh.num_devices] if config.mesh.num_devices else None
    mesh = make_mesh(config.mesh.data, config.mesh.fsdp, config.mesh.tensor, devices)
    replicated = NamedSharding(mesh, jax.sharding.PartitionSpec())
    texts = build_texts(config, sharer)
    optimizer = make_optimizer(
        learning_rate=t.learning_rate, steps=t.steps, warmup_fraction=t.warmup_fraction,
        weight_decay=t.weight_decay, clip=t.clip,
    )  # fmt: skip
    checkpointer = Checkpointer(
        workdir / CHECKPOINTS_DIR, every=config.checkpoint.every, keep=config.checkpoint.keep,
        async_save=config.checkpoint.async_save,
    )  # fmt: skip
    iterator = TextBatches(
        texts, t.batch_size, seed=config.seed, bucket=config.data.bucket, pad_id=receiver.config.pad_token_id or 0,
        process_index=jax.process_index(), process_count=jax.process_count(),
    )  # fmt: skip
    source = tuple(make_layer_map(config.translator.layer_map, sharer.config.num_layers, receiver.config.num_layers))
    shapes = {
        n: jax.ShapeDtypeStruct(shape, jnp.float32)
        for n, shape in array_shapes(sharer.config, receiver.config, config.translator.width).items()
    }
    abstract = jax.eval_shape(lambda p: TrainState(jnp.int32(0), p, optimizer.init(p)), shapes)
    shardings = jax.tree.map(lambda _: replicated, abstract)
    restored = checkpointer.restore(abstract_like(abstract, shardings))
    if restored is None:
        source, arrays = initial_arrays(config, sharer, receiver, texts)
        params = {k: jnp.asarray(v) for k, v in arrays.items()}
        state = jax.device_put(TrainState(jnp.int32(0), params, optimizer.init(params)), replicated)
    else:
        state, data_state = restored
        iterator.set_state(data_state)
    start = int(jax.device_get(state.step))
    frozen = jax.tree.map(lambda x: put_global(np.asarray(x), replicated), (sharer.params, receiver.params))

    loss_fn = functools.partial(
        translator_loss, sharer=sharer, receiver=receiver, source=np.asarray(source), kl_weight=float(t.kl_weight)
    )

    def step(state: TrainState, frozen, tokens, lengths):
        grads, metrics = jax.grad(loss_fn, has_aux=True)(state.params, frozen, tokens, lengths)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = jax.tree.map(lambda p, u: p + u, state.params, updates)
        return TrainState(state.step + 1, params, opt_state), metrics

    step_fn = jax.jit(step, donate_argnums=(0,))
    metrics_log = MetricsLog(workdir, primary)
    count = num_params(state.params)
    if primary:
        log.info("KV translator %s -> %s: %d receiver layers reading sharer layers %s; %s parameters",
                 sharer.config.family, receiver.config.family, len(source), list(source), f"{count:,}")  # fmt: skip
        metrics_log.write({"event": "start" if start == 0 else "resume", "from_step": start, "parameters": count})

    def put(x):
        shape = (x.shape[0] * jax.process_count(), *x.shape[1:])
        return jax.make_array_from_process_local_data(
            NamedSharding(mesh, logical_spec(("batch",) + (None,) * (x.ndim - 1))), x, shape
        )

    metrics: dict[str, Any] = {}
    bar = Progress("train", t.steps, unit="steps", mode="auto" if progress and primary else "off", done=start)
    with bar:
        last, shown = time.perf_counter(), ""
        for n in range(start, t.steps):
            tokens, lengths = next(iterator)
            state, metrics = step_fn(state, frozen, put(tokens), put(lengths))
            checkpointer.save(n + 1, state, iterator.get_state())
            if (n + 1) % config.log_every == 0 or n + 1 == t.steps:
                values = {k: float(v) for k, v in jax.device_get(metrics).items()}
                now = time.perf_counter()
                values["seconds_per_step"] = (now - last) / config.log_every
                last = now
                metrics_log.write({"step": n + 1, **values})
                shown = f"loss {values['loss']:.4f}"
            bar.update(1, shown)
    summary = _finish(config, workdir, state, iterator, checkpointer, (sharer, receiver), source, start, metrics)
    if primary:
        metrics_log.write({"event": "end", **summary})
    metrics_log.close()
    return summary
