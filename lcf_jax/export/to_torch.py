"""`lcf export`: a trained adapter as the files `lcf_jax.torch` (PyTorch, no JAX) loads:
`adapter.safetensors` (float32 or bfloat16) and `adapter_config.json` (`lcf_jax.adapters.io`).

From an adapter directory, a `lcf train` work directory (its `adapter/`), a `lcf demo` work
directory (its LCF-X adapter), or Orbax training checkpoints. A checkpoint holds parameters only,
so the adapter's architecture comes from the run's `config.json`, which `lcf train` writes when it
ends; for a run that did not end, pass the experiment config it was trained with (`config=`).

A KV translator (`lcf train` with configs/kv_translator.py) exports the same way: from its
`kv_translator/` directory, its work directory or its Orbax checkpoints, as `kv_translator.json` +
`kv_translator.safetensors` (float32), which `lcf_jax.torch.load_kv_translator` reads.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import ml_collections

from lcf_jax.adapters import Adapter, AdapterSpec
from lcf_jax.adapters.blocks import layer_map
from lcf_jax.adapters.io import adapter_from_tensors, load_adapter, save_adapter
from lcf_jax.config import load_config
from lcf_jax.errors import CheckpointError, ConfigError, DataError
from lcf_jax.messages.translate import (
    KVTranslator,
    array_shapes,
    load_translator,
    save_translator,
)
from lcf_jax.train.checkpoint import restore_params
from lcf_jax.train.defaults import base_config, demo_config
from lcf_jax.train.loop import adapter_spec, model_configs
from lcf_jax.train.translator import KIND, translator_directory
from lcf_jax.train.workdir import (
    ADAPTER_DIR,
    CHECKPOINTS_DIR,
    DEMO_RUN,
    OrbaxLocation,
    adapter_dirs,
    find_orbax,
    newest_step,
    trained_steps,
)

log = logging.getLogger(__name__)

ConfigLike = AdapterSpec | ml_collections.ConfigDict | str | os.PathLike


def _experiment_config(config: ml_collections.ConfigDict | str | os.PathLike) -> ml_collections.ConfigDict:
    """A ConfigDict, a `configs/NAME.py[:ARG]` file, or the `config.json` a `lcf train` run wrote."""
    return config if isinstance(config, ml_collections.ConfigDict) else load_config(config, defaults=base_config())


def spec_from_config(config: ConfigLike) -> AdapterSpec:
    """The adapter a training config describes. Its shapes need both models' architectures: the
    models the config names are loaded for them (random test models are not built)."""
    if isinstance(config, AdapterSpec):
        return config
    config = _experiment_config(config)
    return adapter_spec(config, *model_configs(config))


def adapter_from_orbax(checkpoint_dir: str | os.PathLike, config: ConfigLike, *, step: int | None = None) -> Adapter:
    """The adapter of an Orbax training checkpoint: `checkpoint_dir` is a `checkpoints` folder (the
    newest readable step, or `step`) or one numbered step in it; `config` is its AdapterSpec or the
    training config (ConfigDict, config file or `config.json`)."""
    location = find_orbax(checkpoint_dir)
    if location is None:
        raise FileNotFoundError(
            f"no Orbax checkpoint at {checkpoint_dir}: expected a `checkpoints` folder of `lcf train` (numbered step "
            "folders) or one step folder in it"
        )
    spec = spec_from_config(config)
    found_step, tensors = restore_params(location.checkpoints, step if step is not None else location.step)
    adapter = adapter_from_tensors(
        spec,
        {name: t.shape for name, t in tensors.items()},
        tensors.__getitem__,
        f"the checkpoint of step {found_step} in {location.checkpoints}",
    )
    log.info("restored the %s adapter of step %d from %s", spec.kind, found_step, location.checkpoints)
    return adapter


def export_from_orbax(
    checkpoint_dir: str | os.PathLike,
    config: ConfigLike,
    out: str | os.PathLike,
    *,
    dtype: str = "float32",
    step: int | None = None,
) -> Path:
    """Export the adapter of an Orbax training checkpoint (see `adapter_from_orbax`) into `out`."""
    return save_adapter(adapter_from_orbax(checkpoint_dir, config, step=step), out, dtype=dtype)


def _translator_dtype(dtype: str) -> None:
    if dtype != "float32":
        raise ConfigError(f"a KV translator is exported in float32 (it is small); --dtype {dtype} is for adapters")


def translator_from_orbax(location: OrbaxLocation, config: ml_collections.ConfigDict) -> KVTranslator:
    """The KV translator of a translator run's Orbax checkpoint (one that did not finish)."""
    sharer, receiver = model_configs(config)
    step, arrays = restore_params(location.checkpoints, location.step)
    source = layer_map(config.translator.layer_map, sharer.num_layers, receiver.num_layers)
    want = array_shapes(sharer, receiver, config.translator.width)
    if {n: tuple(a.shape) for n, a in arrays.items()} != want:
        raise CheckpointError(
            f"the checkpoint of step {step} in {location.checkpoints} does not hold the translator the config "
            f"describes (arrays {sorted(arrays)}; expected {sorted(want)} with these shapes)"
        )
    log.info("restored the KV translator of step %d from %s", step, location.checkpoints)
    return KVTranslator(sharer, receiver, tuple(source), {n: arrays[n] for n in want})


def _warn_if_stale(adapter_dir: Path) -> None:
    """A `lcf train` run resumed with more steps and stopped early leaves newer checkpoints than its
    `adapter/` (saved only when training ends): say so, since the export is of the older adapter."""
    if adapter_dir.name != ADAPTER_DIR:
        return
    run = adapter_dir.parent
    newest = newest_step(run / CHECKPOINTS_DIR)
    try:
        trained = trained_steps(run)
    except DataError as e:  # the export goes on (adapter/ is what it exports), but says what it cannot check
        log.warning("%s: cannot tell whether %s is older than the run's newest checkpoint", e, adapter_dir)
        return
    if newest is not None and trained is not None and newest > trained:
        log.warning(
            "%s is the adapter of step %d, but %s holds a newer checkpoint (step %d) from a run that did not "
            "finish; exporting %s (export_from_orbax(%r, config, out) exports step %d)",
            adapter_dir,
            trained,
            run / CHECKPOINTS_DIR,
            newest,
            adapter_dir,
            str(run / CHECKPOINTS_DIR),
            newest,
        )


def _orbax_config(location: OrbaxLocation, config: ConfigLike | None) -> ConfigLike:
    if config is not None:
        return config
    saved = location.saved_config()
    if saved is not None:
        return saved
    if location.is_demo_run:
        return demo_config()
    raise ConfigError(
        f"{location.checkpoints} holds Orbax checkpoints but no adapter/ and no config.json (the training run did "
        "not finish): the checkpoint stores parameters only, so pass the experiment config it was trained with "
        "(`lcf export --config configs/NAME.py[:ARG]`, or config= in Python)"
    )


def export_adapter(
    checkpoint: str | os.PathLike,
    out: str | os.PathLike,
    *,
    dtype: str = "float32",
    config: ConfigLike | None = None,
) -> Path:
    """Write the adapter found at `checkpoint` into `out` for `lcf_jax.torch.load_adapter`; returns
    `out`. `checkpoint`: an adapter directory, a `lcf train` work directory (its adapter/, or else its
    newest Orbax checkpoint), a `lcf demo` work directory (the LCF-X adapter) or Orbax checkpoints.
    `dtype`: "float32" (exact) or "bfloat16" (half the size). `config`: the training config, needed
    only for a checkpoint of a run that did not finish (see `export_from_orbax`)."""
    root = Path(checkpoint)
    if not root.exists():
        raise FileNotFoundError(
            f"nothing at {root}: give an adapter directory, a `lcf train` or `lcf demo` work directory, or a "
            "`checkpoints` folder"
        )
    translator = translator_directory(root)
    if translator is not None:  # a KV translator: its files are what lcf_jax.torch.load_kv_translator reads
        _translator_dtype(dtype)
        if Path(out).resolve() == translator.resolve():
            raise ConfigError(f"--out {out} is the translator directory being exported: choose another directory")
        return save_translator(load_translator(translator), out)
    try:
        source, _ = adapter_dirs(root)
    except FileNotFoundError:
        source = None
    if source is not None:
        if Path(out).resolve() == source.resolve():
            raise ConfigError(f"--out {out} is the adapter directory being exported: choose another directory")
        _warn_if_stale(source)
        return save_adapter(load_adapter(source), out, dtype=dtype)
    location = find_orbax(root)
    if location is None:
        raise FileNotFoundError(
            f"no adapter under {root}: expected adapter_config.json there, in {root / ADAPTER_DIR} (a `lcf train` "
            f"work directory), in {root / DEMO_RUN / ADAPTER_DIR} (a `lcf demo` work directory), or Orbax "
            f"checkpoints in {root / CHECKPOINTS_DIR}"
        )
    config = _orbax_config(location, config)
    if _experiment_config(config).adapter.kind == KIND:
        _translator_dtype(dtype)
        return save_translator(translator_from_orbax(location, _experiment_config(config)), out)
    return export_from_orbax(location.checkpoints, config, out, dtype=dtype, step=location.step)
