"""GPU benchmark section `models_torch` (bench/gpu.py): transformers' model of each shape, random init,
bf16, sdpa attention, in the same process: prefill and decode against the lcf_jax numbers of
`models_jax`. Also PyTorch itself for `parity`: where it runs (`torch_device`) and its model of a
config (`torch_model`)."""

from __future__ import annotations

import gc
import importlib
import inspect
import statistics
from typing import Any

import numpy as np
from common import lcf, row, timed
from gpu_run import Run, SectionSkipped


def torch_device(run: Run) -> tuple[Any, str | None, str | None]:
    """(torch, device, reason): PyTorch and where it runs (CUDA; the CPU when JAX runs on the CPU)."""
    try:
        torch = importlib.import_module("torch")
        importlib.import_module("transformers")
    except Exception as error:  # noqa: BLE001 - ImportError, or a CUDA library clash: skip PyTorch alone
        return None, None, f"torch/transformers not importable: {error!r}"
    if torch.cuda.is_available():
        return torch, "cuda", None
    if run.env["platform"] == "cpu":
        return torch, "cpu", None
    return torch, None, f"torch {torch.__version__} has no CUDA"


def torch_model(config, dtype, device: str):
    """transformers' model of the same architecture, random init, on `device`."""
    transformers = importlib.import_module("transformers")
    torch = importlib.import_module("torch")
    transformers.logging.set_verbosity_error()
    hf = lcf("models").to_hf_config(config)
    hf.setdefault("rope_theta", config.rope_theta)  # transformers 4.x reads this, 5.x rope_parameters
    config_cls = {"llama": "LlamaConfig", "qwen2": "Qwen2Config", "qwen3": "Qwen3Config"}[config.family]
    hf_config = getattr(transformers, config_cls)(**hf)
    with torch.device(device):
        try:
            model = transformers.AutoModelForCausalLM.from_config(hf_config, dtype=dtype, attn_implementation="sdpa")
        except TypeError:  # transformers before `dtype`
            model = transformers.AutoModelForCausalLM.from_config(
                hf_config, torch_dtype=dtype, attn_implementation="sdpa"
            )
    return model.eval()


def _torch_model_bench(run: Run, torch: Any, device: str, name: str) -> tuple[list[dict], dict]:
    """transformers' model of one shape: prefill and decode, against the lcf_jax numbers of this run."""
    sz = run.sizes
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    config = run.config(name)
    model = torch_model(config, torch.bfloat16, device)
    rng = np.random.RandomState(0)
    prompt = torch.tensor(rng.randint(0, config.vocab_size, (1, sz.prompt)), dtype=torch.long, device=device)
    tokens = torch.tensor(rng.randint(0, config.vocab_size, (1, sz.prefill_tokens)), dtype=torch.long, device=device)
    keep = {"logits_to_keep": 1} if "logits_to_keep" in inspect.signature(model.forward).parameters else {}

    def prefill():
        with torch.inference_mode():
            out = model(tokens, use_cache=True, **keep)
        sync()
        return out.logits

    def gen(count: int):
        with torch.inference_mode():
            out = model.generate(
                prompt,
                attention_mask=torch.ones_like(prompt),
                max_new_tokens=count,
                min_new_tokens=count,
                do_sample=False,
                pad_token_id=0,
            )
        sync()
        return out

    t_prefill = timed(prefill, repeats=sz.repeats)
    n = sz.torch_new_tokens
    gen(1)
    gen(n)
    per_token = []
    for _ in range(max(1, sz.decode_repeats - 2)):  # PyTorch's generate is slow: fewer repeats
        t_n = timed(lambda: gen(n), repeats=1, warmup=0)["median_s"]
        t_1 = timed(lambda: gen(1), repeats=1, warmup=0)["median_s"]
        per_token.append((t_n - t_1) / (n - 1))
    decode_s = statistics.median(per_token)
    ours = run.ctx.get("jax", {}).get(name)
    label = f"{name}, bf16, sdpa, {device}"
    rows = [
        row(f"PyTorch prefill {sz.prefill_tokens} tokens ({label})", t_prefill["median_s"] * 1e3, "ms"),
        row(f"PyTorch decode ms/token ({label}; generate, {n} tokens)", decode_s * 1e3, "ms"),
    ]
    if ours:
        rows += [
            row(f"  prefill speed lcf_jax / PyTorch ({name})", t_prefill["median_s"] / ours["prefill_s"], "x", "> 1"),
            row(f"  decode speed lcf_jax / PyTorch ({name})", decode_s / ours["decode_s"], "x", "> 1"),
        ]
    details = {"prefill": t_prefill, "decode_s_per_token": decode_s, "decode_samples_s": per_token, "new_tokens": n}
    return rows, details


def section_models_torch(run: Run) -> tuple[list[dict], dict]:
    torch, device, reason = torch_device(run)
    if device is None:
        raise SectionSkipped(reason)
    rows, notes = [], []
    details: dict[str, Any] = {"device": device, "torch_cuda": getattr(torch.version, "cuda", None)}
    for name in run.sizes.model_names:
        if run.fits(run.sizes.estimate("models_torch"), f"{name} (PyTorch)", notes):
            more, details[name] = _torch_model_bench(run, torch, device, name)
            rows += more
            gc.collect()
            if device == "cuda":
                torch.cuda.empty_cache()
    if not rows:
        raise SectionSkipped("; ".join(notes) or "nothing ran")
    details["notes"] = notes
    return rows, details
