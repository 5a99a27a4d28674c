"""GPU benchmark section `parity` (bench/gpu.py): a correctness check before any speed number. For each
model shape (2 layers at full size), lcf_jax's float32 forward logits against transformers' PyTorch
model holding the same random weights (biases and norms perturbed so a mistake there shows), greedy
tokens against PyTorch's `generate`, and `generate` with new prompts of one shape compiling nothing
after the first call."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from common import compile_count, lcf, row
from gpu_models_torch import torch_device, torch_model
from gpu_run import Run, SectionSkipped


def _perturbed_model(config) -> tuple[Any, dict]:
    """A float32 model of `config` with random weights, and its flat parameters. Biases start at 0 and
    norms at 1: they are perturbed so a mistake there would show in the logits."""
    model_mod = lcf("models.model")
    model = model_mod.Model.random(config, dtype="float32", seed=7)
    flat = model_mod.flat_from_state(model.params)
    key = jax.random.key(1)
    for i, path in enumerate(sorted(flat)):
        if path.endswith("bias") or "norm" in path:
            flat[path] = flat[path] + 0.1 * jax.random.normal(jax.random.fold_in(key, i), flat[path].shape)
    model = model_mod.Model(config, model.graphdef, model_mod.state_from_flat(model.params, flat), dtype=jnp.float32)
    return model, flat


def _torch_twin(torch: Any, config, flat: dict, device: str):
    """transformers' float32 model holding the same weights as `flat`."""
    hf = torch_model(config, torch.float32, device)
    state = {
        k: torch.from_numpy(np.array(v, np.float32))
        for k, v in lcf("loading.keymap").flat_to_hf({p: np.asarray(a) for p, a in flat.items()}).items()
    }
    result = hf.load_state_dict(state, strict=False)
    missing = [k for k in result.missing_keys if not (k == "lm_head.weight" and config.tie_word_embeddings)]
    if missing or result.unexpected_keys:
        raise RuntimeError(f"weight transfer: missing {missing}, unexpected {result.unexpected_keys}")
    return hf


def _generate_recompiles(run: Run, model, config) -> tuple[list[int], int]:
    """(greedy tokens of the last call, compilations on calls 2-3): three `generate` calls with new
    prompts of one shape, at "highest" matmul precision."""
    sz = run.sizes
    sampling = lcf("sampling")
    gen_tokens = []
    with jax.default_matmul_precision("highest"):
        before = None
        for seed in range(3):
            prompt = np.random.RandomState(10 + seed).randint(0, config.vocab_size, (1, sz.parity_tokens))
            if seed == 1:
                before = compile_count()
            gen_tokens.append(
                sampling.generate(model, prompt.astype(np.int32), sz.parity_new_tokens, stop_tokens=[]).tokens
            )
        recompiles = compile_count() - before
    return gen_tokens[-1][0].tolist(), recompiles


def _torch_generate(run: Run, torch: Any, hf, config, device: str) -> list[int]:
    """PyTorch's greedy tokens after the prompt of the last `_generate_recompiles` call."""
    sz = run.sizes
    prompt = np.random.RandomState(12).randint(0, config.vocab_size, (1, sz.parity_tokens))
    with torch.inference_mode():
        return hf.generate(
            torch.tensor(prompt, dtype=torch.long, device=device),
            attention_mask=torch.ones((1, sz.parity_tokens), dtype=torch.long, device=device),
            max_new_tokens=sz.parity_new_tokens,
            min_new_tokens=sz.parity_new_tokens,
            do_sample=False,
            pad_token_id=0,
        )[0, sz.parity_tokens :].tolist()


def _parity_rows(run: Run, name: str, config, m: dict[str, Any]) -> list[dict]:
    sz = run.sizes
    diff, diff_default, scale, recompiles = m["diff"], m["diff_default"], m["scale"], m["recompiles"]
    label = f"{name} shape, {config.num_layers} layers, float32, {sz.parity_tokens} tokens"
    return [
        row(
            f"logits max |diff| / max |logit| vs PyTorch ({label}; JAX highest precision)",
            diff / scale,
            "",
            "<= 1e-4",
            diff / scale <= 1e-4,
            abs_diff=diff,
            max_logit=scale,
        ),
        row(f"  same, JAX default matmul precision ({name})", diff_default / scale, ""),
        row(f"  argmax agreement, all positions ({name})", m["argmax"], "fraction"),
        row(
            f"  greedy tokens equal to PyTorch generate ({name})",
            f"{m['agree']}/{sz.parity_new_tokens}",
            "",
            note="random weights: near-ties may differ",
        ),
        row(f"generate: compilations on calls 2-3 with new prompts ({name})", recompiles, "", "0", recompiles == 0),
    ]


def _parity_one(run: Run, torch: Any, device: str, name: str) -> tuple[list[dict], dict]:
    """The checks for one model shape: rows, and details (differences and the largest logit)."""
    sz = run.sizes
    config = run.config(name)
    if not sz.tiny:
        config = config.replace(num_layers=sz.parity_layers)
    model, flat = _perturbed_model(config)
    tokens = np.random.RandomState(3).randint(0, config.vocab_size, (1, sz.parity_tokens)).astype(np.int32)
    with jax.default_matmul_precision("highest"):
        ours = np.asarray(model(tokens)[0])
    ours_default = np.asarray(model(tokens)[0])

    hf = _torch_twin(torch, config, flat, device)
    with torch.inference_mode():
        ids = torch.tensor(tokens, dtype=torch.long, device=device)
        ref = hf(ids).logits.float().cpu().numpy()
    scale = float(np.abs(ref).max())
    measured = {
        "diff": float(np.abs(ours - ref).max()),
        "diff_default": float(np.abs(ours_default - ref).max()),
        "scale": scale,
        "argmax": float((ours.argmax(-1) == ref.argmax(-1)).mean()),
    }
    jax_tokens, measured["recompiles"] = _generate_recompiles(run, model, config)
    torch_tokens = _torch_generate(run, torch, hf, config, device)
    measured["agree"] = sum(int(a == b) for a, b in zip(jax_tokens, torch_tokens))
    del hf
    details = {"abs_diff": measured["diff"], "abs_diff_default_precision": measured["diff_default"], "max_logit": scale}
    return _parity_rows(run, name, config, measured), details


def section_parity(run: Run) -> tuple[list[dict], dict]:
    torch, device, reason = torch_device(run)
    if torch is None:
        raise SectionSkipped(reason)
    if device is None:
        device = "cpu"  # a float32 reference works anywhere
    torch.set_float32_matmul_precision("highest")
    rows, details = [], {"torch_device": device}
    for name in run.sizes.model_names:
        more, details[name] = _parity_one(run, torch, device, name)
        rows += more
    return rows, details
