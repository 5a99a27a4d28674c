"""The training loop: `prepare` builds the mesh, the models (loaded straight onto their shardings),
adapter, optimizer, data and checkpointer from a config, and the state (resumed from the work
directory, or fresh); `run` steps it (the jitted step), with progress, logs (JSONL + TensorBoard),
checkpoints and the final files. `train` is the two.

Only process 0 logs and writes files other than checkpoints (Orbax coordinates those itself).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import time
from pathlib import Path
from typing import Any

import jax
import ml_collections
import numpy as np
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding

from lcf_jax.adapters import AdapterSpec, make_adapter, make_spec
from lcf_jax.adapters.io import save_adapter
from lcf_jax.data.batch import Batch
from lcf_jax.data.chat import load_chat_examples
from lcf_jax.data.examples import Example
from lcf_jax.data.pipeline import BatchIterator
from lcf_jax.data.qa import load_question_examples, question_example
from lcf_jax.data.synthetic import copy_task, sharer_only_task
from lcf_jax.errors import ConfigError
from lcf_jax.loading import load_model, load_model_config, place
from lcf_jax.models.config import ModelConfig
from lcf_jax.models.model import Model
from lcf_jax.progress import Progress
from lcf_jax.sharding import describe, logical_spec, make_mesh, param_sharding, tree_shardings
from lcf_jax.train.checkpoint import Checkpointer, abstract_like
from lcf_jax.train.step import (
    StepConfig,
    TrainState,
    calibrate_message_norm,
    init_state,
    make_optimizer,
    make_train_step,
)
from lcf_jax.train.workdir import ADAPTER_DIR, CHECKPOINTS_DIR, CONTROL_DIR, write_run_files
from lcf_jax.trees import num_params

log = logging.getLogger("lcf_jax.train")


def build_model(config: ml_collections.ConfigDict, role: str, mesh: Mesh | None = None) -> Model:
    """`config.<role>` is a load_model source, or "random" with `config.<role>_arch` (tests). With a
    `mesh`, a checkpoint loads straight onto its parameters' shardings there (`param_sharding`, as
    `tree_shardings` gives them), each host materialising only its shards; a random model is made
    whole on the default device either way."""
    source = config[role]
    if source == "random":
        return Model.random(
            _random_arch(config, role), dtype=config.model_dtype, seed=config.seed + 1 + (role == "receiver")
        )
    sharding = None if mesh is None else functools.partial(param_sharding, mesh=mesh)
    return load_model(source, dtype=config.model_dtype, sharding=sharding)


def _random_arch(config: ml_collections.ConfigDict, role: str) -> ModelConfig:
    return ModelConfig(**config[f"{role}_arch"])


def build_models(config: ml_collections.ConfigDict, mesh: Mesh | None = None) -> tuple[Model, Model]:
    """The config's sharer and receiver (`build_model`), loaded once when they are the same model
    (two "random" models differ: each has its own architecture and seed)."""
    sharer = build_model(config, "sharer", mesh)
    same = config.receiver == config.sharer != "random"
    return sharer, sharer if same else build_model(config, "receiver", mesh)


def model_configs(config: ml_collections.ConfigDict) -> tuple[ModelConfig, ModelConfig]:
    """Both models' architectures, without building a model or reading a checkpoint's weights."""

    def arch(role: str) -> ModelConfig:
        return _random_arch(config, role) if config[role] == "random" else load_model_config(config[role])

    return arch("sharer"), arch("receiver")


def adapter_spec(config: ml_collections.ConfigDict, sharer: ModelConfig, receiver: ModelConfig) -> AdapterSpec:
    """The adapter the config trains (`config.adapter.kind` and `.options`) between two models."""
    try:
        return make_spec(config.adapter.kind, sharer, receiver, **dict(config.adapter.options))
    except TypeError as e:  # an adapter.options key make_spec does not take
        raise ConfigError(
            f"bad adapter.options in the config: {e}; see lcf_jax.adapters.build for the options"
        ) from None


def build_examples(config: ml_collections.ConfigDict, sharer: Model, receiver: Model) -> list[Example]:
    data = config.data
    teacher = config.train.get("distill_weight", 0.0) > 0  # distillation reads full-context prompts
    if teacher and data.kind not in ("qa_jsonl", "split_qa"):
        raise ConfigError(
            f"train.distill_weight needs question data with both halves of the context (data.kind 'qa_jsonl' or "
            f"'split_qa'), not {data.kind!r}: set train.distill_weight=0"
        )
    if data.kind == "synthetic":
        return copy_task(
            data.count,
            vocab=receiver.config.vocab_size,
            seed=data.seed,
            lcfx=config.adapter.kind == "lcfx",
            fixed_response=data.fixed_response,
        )
    if data.kind == "sharer_only":  # LCF-X: the answer is only in the sharer's spans
        return sharer_only_task(data.count, vocab=receiver.config.vocab_size, seed=data.seed)
    if data.kind == "jsonl":
        if receiver.tokenizer is None:
            raise ConfigError("data.kind='jsonl' needs a receiver with a tokenizer (its chat template)")
        return load_chat_examples(
            data.path, receiver.tokenizer, sharer.tokenizer, max_length=data.max_length, limit=data.limit or None
        )
    if data.kind == "qa_jsonl":
        if receiver.tokenizer is None:
            raise ConfigError("data.kind='qa_jsonl' needs a receiver with a tokenizer (its chat template)")
        return load_question_examples(
            data.path,
            receiver.tokenizer,
            sharer.tokenizer,
            sees_question=data.sharer_sees_question,
            max_length=data.max_length,
            limit=data.limit or None,
            teacher=teacher,
        )
    if data.kind == "split_qa":
        if receiver.tokenizer is None:
            raise ConfigError("data.kind='split_qa' needs a receiver with a tokenizer (its chat template)")
        # Imported here: the generator is only needed for this data kind.
        from lcf_jax.data.split_qa import generate_questions  # noqa: PLC0415

        questions = generate_questions(
            "train",
            data.count,
            seed=data.seed,
            variant=data.variant,
            sharer_gold_only=data.get("sharer_gold_only", False),
        )
        return [
            question_example(
                q, receiver.tokenizer, sharer.tokenizer, sees_question=data.sharer_sees_question, teacher=teacher
            )
            for q in questions
        ]
    raise ConfigError(
        f"unknown data.kind {data.kind!r}; choose 'synthetic', 'sharer_only', 'jsonl' (chat), 'qa_jsonl' or 'split_qa'"
    )


def put_global(array: np.ndarray, sharding: NamedSharding) -> jax.Array:
    """Place a host array that every process holds in full onto a (possibly multi-host) sharding."""
    return place(array, sharding)


def put_batch(batch: Batch, mesh, process_count: int) -> Batch:
    """Per-host rows `[A, b, ...]` -> one global batch sharded over the batch axis."""

    def one(x):
        spec = logical_spec((None, "batch") + (None,) * (x.ndim - 2))
        global_shape = (x.shape[0], x.shape[1] * process_count, *x.shape[2:])
        return jax.make_array_from_process_local_data(NamedSharding(mesh, spec), x, global_shape)

    return jax.tree.map(one, batch)


class MetricsLog:
    """metrics.jsonl (appended, flushed per line: a killed run keeps what it logged) + TensorBoard."""

    def __init__(self, workdir: Path, enabled: bool):
        self.enabled = enabled
        self.file = (workdir / "metrics.jsonl").open("a") if enabled else None
        self.tb = None
        if enabled:
            try:
                from tensorboardX import SummaryWriter  # noqa: PLC0415 - optional

                self.tb = SummaryWriter(str(workdir / "tensorboard"))
            except ImportError:
                log.warning("tensorboardX is not installed: no TensorBoard event files")

    def write(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        self.file.write(json.dumps(record) + "\n")
        self.file.flush()
        if self.tb is not None and "step" in record:
            for key, value in record.items():
                if isinstance(value, (int, float)) and key != "step":
                    self.tb.add_scalar(f"train/{key}", value, record["step"])
            self.tb.flush()

    def close(self) -> None:
        if self.enabled:
            self.file.close()
            if self.tb is not None:
                self.tb.close()


def train(
    config: ml_collections.ConfigDict,
    workdir: str | Path,
    *,
    progress: bool = True,
    models: tuple[Model, Model] | None = None,
) -> dict[str, Any]:
    """Run (or resume) the training the config describes; returns the final summary. `models`
    (sharer, receiver) replaces loading them from the config (e.g. models already in memory).
    `adapter.kind = "kv_translator"` trains a KV translator instead (`lcf_jax.train.translator`)."""
    if config.adapter.kind == "kv_translator":
        from lcf_jax.train.translator import train_translator  # noqa: PLC0415 - it imports this module

        return train_translator(config, workdir, progress=progress, models=models)
    return run(prepare(config, workdir, models=models), progress=progress)


@dataclasses.dataclass
class TrainSetup:
    """Everything a training run needs, from `prepare`: the mesh, the frozen models and their
    parameters on it, the adapter, the optimizer, the data, the checkpointer, and the state to start
    from (restored from the work directory, or fresh). `run` steps it (and replaces `state`)."""

    config: ml_collections.ConfigDict
    workdir: Path
    primary: bool  # process 0: it logs and writes the files other than checkpoints
    mesh: Mesh
    sharer: Model
    receiver: Model
    frozen: tuple[Any, Any]  # the sharer's and receiver's parameters on the mesh
    frozen_shardings: tuple[Any, Any]
    spec: AdapterSpec
    graphdef: nnx.GraphDef  # the adapter's
    optimizer: optax.GradientTransformation
    state: TrainState
    state_shardings: Any
    iterator: BatchIterator
    checkpointer: Checkpointer
    start: int  # the step `state` is at
    with_control: bool


def prepare(
    config: ml_collections.ConfigDict, workdir: str | Path, *, models: tuple[Model, Model] | None = None
) -> TrainSetup:
    """Set up the training the config describes (`TrainSetup`): the models load straight onto
    their shardings (`models`, already loaded, are placed there); the state is the work directory's
    newest readable checkpoint, or a fresh one (LCF-X message standardisation calibrated on the first
    batch)."""
    workdir = Path(workdir)
    primary = jax.process_index() == 0
    if primary:
        workdir.mkdir(parents=True, exist_ok=True)
    with_control = bool(config.adapter.with_control)
    if with_control and (config.adapter.kind != "lcfx" or config.adapter.receiver_only):  # before loading
        raise ConfigError(
            "adapter.with_control trains the LCF-X receiver-only control alongside an LCF-X adapter: it needs "
            f"adapter.kind='lcfx' (got {config.adapter.kind!r}) and adapter.receiver_only=False"
        )
    devices = jax.devices()[: config.mesh.num_devices] if config.mesh.num_devices else None
    mesh = make_mesh(config.mesh.data, config.mesh.fsdp, config.mesh.tensor, devices)
    sharer, receiver = models or build_models(config, mesh)
    spec = adapter_spec(config, sharer.config, receiver.config)
    optimizer = build_optimizer(config.train)

    def fresh_state() -> TrainState:
        adapter_state = nnx.state(make_adapter(spec, rngs=nnx.Rngs(config.seed)), nnx.Param)
        return init_state(adapter_state, optimizer, control=with_control)

    abstract = jax.eval_shape(fresh_state)
    state_shardings = tree_shardings(abstract, mesh)
    frozen_shardings = (tree_shardings(sharer.params, mesh), tree_shardings(receiver.params, mesh))
    frozen = jax.tree.map(placed, (sharer.params, receiver.params), frozen_shardings)
    graphdef = nnx.graphdef(nnx.eval_shape(lambda: make_adapter(spec, rngs=nnx.Rngs(0))))
    iterator = BatchIterator(
        build_examples(config, sharer, receiver),
        config.train.batch_size,
        seed=config.seed,
        bucket=config.data.bucket,
        pad_id=receiver.config.pad_token_id or 0,
        process_index=jax.process_index(),
        process_count=jax.process_count(),
    )
    checkpointer = Checkpointer(
        workdir / CHECKPOINTS_DIR,
        every=config.checkpoint.every,
        keep=config.checkpoint.keep,
        async_save=config.checkpoint.async_save,
    )
    restored = checkpointer.restore(abstract_like(abstract, state_shardings))
    if restored is None:
        state = jax.jit(fresh_state, out_shardings=state_shardings)()
        if spec.message_norm == "standardize":
            state = _calibrated(state, graphdef, (sharer, receiver), frozen, iterator, mesh, config, state_shardings)
    else:
        state, data_state = restored
        iterator.set_state(data_state)
    return TrainSetup(
        config=config,
        workdir=workdir,
        primary=primary,
        mesh=mesh,
        sharer=sharer,
        receiver=receiver,
        frozen=frozen,
        frozen_shardings=frozen_shardings,
        spec=spec,
        graphdef=graphdef,
        optimizer=optimizer,
        state=state,
        state_shardings=state_shardings,
        iterator=iterator,
        checkpointer=checkpointer,
        start=int(jax.device_get(state.step)),
        with_control=with_control,
    )


def build_optimizer(t: ml_collections.ConfigDict) -> optax.GradientTransformation:
    """The optimizer of the config's `train` section."""
    return make_optimizer(
        learning_rate=t.learning_rate,
        steps=t.steps,
        warmup_fraction=t.warmup_fraction,
        weight_decay=t.weight_decay,
        clip=t.clip,
        pool_lr_scale=t.get("pool_lr_scale", 1.0),  # configs saved before the option lack it
    )


def placed(array, sharding: NamedSharding) -> jax.Array:
    """`array` on `sharding`: as it is when it is there already (a model loaded onto its shardings),
    else placed from a host copy (`put_global`)."""
    if isinstance(array, jax.Array) and array.sharding == sharding:
        return array
    return put_global(np.asarray(array), sharding)


def run(setup: TrainSetup, *, progress: bool = True) -> dict[str, Any]:
    """Train from `setup.state` to `train.steps`: step, log (metrics.jsonl, TensorBoard, progress),
    checkpoint, then write the adapter(s), summary.json and config.json; returns the summary."""
    config, t, mesh, iterator = setup.config, setup.config.train, setup.mesh, setup.iterator
    step_fn = jax.jit(
        make_train_step(setup.graphdef, setup.sharer, setup.receiver, setup.optimizer, step_config(config)),
        in_shardings=(setup.state_shardings, setup.frozen_shardings, None),
        out_shardings=(setup.state_shardings, None),
        donate_argnums=(0,),
    )
    metrics_log = MetricsLog(setup.workdir, setup.primary)
    counts = {
        "sharer": setup.sharer.num_params(),
        "receiver": setup.receiver.num_params(),
        "adapter": count_params_state(setup.state),
    }
    if setup.primary:
        _log_start(setup, counts, metrics_log)
    mode = "auto" if progress and setup.primary else "off"
    state, metrics, shown = setup.state, {}, ""
    with Progress("train", t.steps, unit="steps", mode=mode, done=setup.start) as bar:
        last_time, tokens = time.perf_counter(), 0
        for step in range(setup.start, t.steps):
            local = next(iterator)
            tokens += local.num_tokens * jax.process_count()
            batch = put_batch(local.micro_batches(t.micro_batches), mesh, jax.process_count())
            state, metrics = step_fn(state, setup.frozen, batch)
            setup.state = state
            setup.checkpointer.save(step + 1, state, iterator.get_state())
            if (step + 1) % config.log_every == 0 or step + 1 == t.steps:
                values = {k: float(v) for k, v in jax.device_get(metrics).items()}
                now = time.perf_counter()
                values["tokens_per_second"] = tokens / max(now - last_time, 1e-9)
                last_time, tokens = now, 0
                metrics_log.write({"step": step + 1, **values})
                shown = f"loss {values['loss']:.4f}, {values['tokens_per_second']:.0f} tokens/s"
                if setup.with_control:
                    shown += f", control loss {values['control_loss']:.4f}"
            bar.update(1, shown)
    return _finish(setup, metrics, counts, metrics_log)


def step_config(config: ml_collections.ConfigDict) -> StepConfig:
    t = config.train
    return StepConfig(
        num_spans=config.adapter.num_spans,
        tau_initial=t.tau_initial,
        tau_final=t.tau_final,
        anneal_steps=t.anneal_steps,
        seed=config.seed,
        receiver_only=config.adapter.receiver_only,
        with_control=bool(config.adapter.with_control),
        bypass_weight=t.get("bypass_weight", 0.0),
        bypass_margin=t.get("bypass_margin", 0.5),
        distill_weight=t.get("distill_weight", 0.0),
    )


def _log_start(setup: TrainSetup, counts: dict[str, int], metrics_log: MetricsLog) -> None:
    log.info("%s; %s", describe(setup.mesh), setup.spec.describe())
    log.info(
        "parameters: sharer %s, receiver %s, adapter %s (trainable)",
        *(f"{counts[k]:,}" for k in ("sharer", "receiver", "adapter")),
    )
    metrics_log.write(
        {
            "event": "start" if setup.start == 0 else "resume",
            "from_step": setup.start,
            "parameters": counts,
            "mesh": dict(setup.mesh.shape),
            "processes": jax.process_count(),
        }
    )


def _finish(setup: TrainSetup, metrics, counts: dict[str, int], metrics_log: MetricsLog) -> dict[str, Any]:
    """The last checkpoint (when the loop's schedule did not write it), then, from process 0, the
    trained adapter(s), the end record, summary.json and config.json."""
    steps, state, checkpointer = setup.config.train.steps, setup.state, setup.checkpointer
    if checkpointer.latest_step() != steps:
        checkpointer.save(steps, state, setup.iterator.get_state(), force=True)
    checkpointer.wait()
    checkpointer.close()
    summary = {
        "steps": steps,
        "resumed_from": setup.start,
        "parameters": counts,
        "final": {k: float(v) for k, v in jax.device_get(metrics).items()} if metrics else {},
    }
    if setup.primary:
        # The trained adapter as safetensors + adapter_config.json: what `lcf eval` and export read.
        save_adapter(nnx.merge(setup.graphdef, jax.device_get(state.params)), setup.workdir / ADAPTER_DIR)
        if setup.with_control:
            control = nnx.merge(setup.graphdef, jax.device_get(state.control["params"]))
            save_adapter(control, setup.workdir / CONTROL_DIR)
        metrics_log.write({"event": "end", **summary})
        write_run_files(setup.workdir, summary, setup.config)
    metrics_log.close()
    return summary


def _calibrated(state, graphdef, models, frozen, iterator, mesh, config, state_shardings) -> TrainState:
    """LCF-X's message standardisation set from the first training batch (which training then
    starts on: the iterator is rewound), over the global batch."""
    saved = iterator.get_state()
    first = put_batch(next(iterator).micro_batches(1), mesh, jax.process_count())
    iterator.set_state(saved)

    def calibrate(params, frozen, batch):
        one = jax.tree.map(lambda x: x[0], batch)  # the micro-batch axis of 1
        return calibrate_message_norm(graphdef, params, *models, frozen, one, config.adapter.num_spans)

    params = jax.jit(calibrate, out_shardings=state_shardings.params)(state.params, frozen, first)
    return dataclasses.replace(state, params=params)


def count_params_state(state: TrainState) -> int:
    return num_params(state.params)
