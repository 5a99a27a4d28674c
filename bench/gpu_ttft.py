"""GPU benchmark section `ttft` (bench/gpu.py): time to first token at batch 1, stage by stage (each
stage blocked on), for the receiver alone, LCF-X (a latent message), LCF and C2C (fusing the sharer's
cache into the receiver's over a shared context) and text messages of each budget. Every condition
runs once first (compiles); the timed passes must compile nothing."""

from __future__ import annotations

import functools
import statistics
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from common import block, compile_count, lcf, row
from flax import nnx
from gpu_run import RECEIVER, SHARER, Run


@functools.partial(jax.jit, static_argnames=("graphdef", "num_spans"))
def _summarize(graphdef, params, sharer_cache, span_ids, num_spans):
    """The LCF-X summary alone (what `communicate.send` runs after the sharer's prefill)."""
    return nnx.merge(graphdef, params).summarize(sharer_cache, span_ids, num_spans)


def stage(times: dict, name: str, fn: Callable[[], Any]) -> Any:
    """`fn()`, blocked on, its seconds recorded as `times[name]`."""
    start = time.perf_counter()
    out = block(fn())
    times[name] = time.perf_counter() - start
    return out


def transfer(times: dict, x: Any) -> Any:
    """Device -> host -> device, as a message between two machines would travel."""
    start = time.perf_counter()
    host = jax.device_get(x)
    back = block(jax.device_put(host))
    times["transfer"] = time.perf_counter() - start
    return back


class Conditions:
    """The models, adapters and random contexts of the TTFT conditions, and one pass of each: a dict
    of stage -> seconds. `bytes_sent` records what each condition's message weighs."""

    def __init__(self, run: Run):
        sz = self.sizes = run.sizes
        self.communicate, self.sampling, self.adapters = lcf("communicate"), lcf("sampling"), lcf("adapters")
        sharer, receiver = self.sharer, self.receiver = run.model(SHARER), run.model(RECEIVER)
        self.ctx_len = ctx_len = sz.context
        rng = np.random.RandomState(1)
        self.shared = rng.randint(0, min(sharer.config.vocab_size, receiver.config.vocab_size), ctx_len).tolist()
        self.sharer_ctx = rng.randint(0, sharer.config.vocab_size, ctx_len).tolist()
        self.receiver_prompt = rng.randint(0, receiver.config.vocab_size, ctx_len).tolist()
        per_span = ctx_len // sz.spans
        self.span_lengths = [per_span] * (sz.spans - 1) + [ctx_len - per_span * (sz.spans - 1)]
        self.built = self._build_adapters()
        counts = ", ".join(f"{k} {self.adapters.count_params(a):,} params" for k, a in self.built.items())
        run.log(f"adapters built: {counts}")
        self.bytes_sent: dict[str, int] = {}

    def _build_adapters(self) -> dict[str, Any]:
        sz, build = self.sizes, self.adapters.build
        s, r = self.sharer.config, self.receiver.config
        options = dict(latent_width=sz.latent_width, compute_dtype="bfloat16")
        built = {
            "lcf": build("lcf", s, r, **options),
            "c2c": build("c2c", s, r, hidden_width=sz.c2c_hidden, compute_dtype="bfloat16"),
            "lcfx": build("lcfx", s, r, **options),
        }
        if sz.ttft_paper_pair:
            built["lcfx_qwen3_pair"] = build("lcfx", r, r, **options)
        return built

    def all(self) -> dict[str, Callable[[], dict]]:
        """Every condition, by the name its results carry."""
        sz = self.sizes
        paper_pair = {"lcfx_qwen3_pair": lambda: self.latent("lcfx_qwen3_pair", self.receiver)}
        return {
            "receiver_alone": self.alone,
            "lcfx": lambda: self.latent("lcfx", self.sharer),
            **(paper_pair if sz.ttft_paper_pair else {}),
            "lcf": lambda: self.shared_context("lcf"),
            "c2c": lambda: self.shared_context("c2c"),
            **{f"text_{b}": (lambda b=b: self.text(b)) for b in sz.budgets},
        }

    def receiver_stage(self, times: dict, prompt: list[int], apply=None) -> None:
        """The receiver's prefill of all but the last prompt token, `apply` (a message) to its cache,
        and the first token from the last prompt token."""
        receiver, communicate = self.receiver, self.communicate
        cache = stage(times, "receiver_prefill", lambda: communicate.prefill(receiver, [prompt[:-1]], bucket=128))
        if apply is not None:
            cache = stage(times, "receiver_apply", lambda: apply(cache))
        stage(
            times,
            "first_token",
            lambda: self.sampling.generate(receiver, [prompt[-1:]], 1, cache=cache, bucket=1, stop_tokens=[]).tokens,
        )

    def latent(self, kind: str, sharer_model) -> dict:
        """LCF-X: sharer prefill, summary, transfer of the message, receiver prefill + apply + first token."""
        adapter, communicate = self.built[kind], self.communicate
        graphdef, params = nnx.split(adapter)
        times: dict[str, float] = {}
        cache = stage(times, "sharer_prefill", lambda: communicate.prefill(sharer_model, [self.sharer_ctx]))
        span_ids, num_spans = self.adapters.spans_from_lengths([self.span_lengths], cache.capacity)
        num_spans = lcf("sizes").round_up(num_spans, 8)  # as communicate.send rounds it
        message = stage(times, "summary", lambda: _summarize(graphdef, params, cache, jnp.asarray(span_ids), num_spans))
        self.bytes_sent[kind] = message.nbytes
        message = transfer(times, message)
        self.receiver_stage(times, self.receiver_prompt, lambda c: communicate.receive(adapter, message, c))
        return times

    def shared_context(self, kind: str) -> dict:
        """LCF / C2C: both prefill the shared context, the sharer's cache travels and is fused in."""
        adapter, communicate, shared = self.built[kind], self.communicate, self.shared
        receiver, generate = self.receiver, self.sampling.generate
        times: dict[str, float] = {}
        heads = shared[:-1]
        s_cache = stage(times, "sharer_prefill", lambda: communicate.prefill(self.sharer, [heads]))
        self.bytes_sent[kind] = int(s_cache.k.nbytes + s_cache.v.nbytes)
        s_cache = transfer(times, s_cache)
        r_cache = stage(times, "receiver_prefill", lambda: communicate.prefill(receiver, [heads]))
        fused = stage(times, "fuse", lambda: communicate.fuse(adapter, s_cache, r_cache))
        stage(
            times,
            "first_token",
            lambda: generate(receiver, [shared[-1:]], 1, cache=fused, bucket=1, stop_tokens=[]).tokens,
        )
        return times

    def text(self, budget: int) -> dict:
        """Text: the sharer generates `budget` tokens, the receiver reads them inside its prompt."""
        times: dict[str, float] = {}
        tokens = stage(
            times,
            "sharer_generate",
            lambda: self.sampling.generate(self.sharer, [self.sharer_ctx], budget, stop_tokens=[], bucket=128).tokens,
        )
        message = [int(t) for t in tokens[0]]
        self.bytes_sent[f"text_{budget}"] = 4 * len(message)  # token ids; the text itself is ~4 bytes a token too
        prompt = self.receiver_prompt
        self.receiver_stage(times, prompt[:-1] + message + prompt[-1:])
        return times

    def alone(self) -> dict:
        times: dict[str, float] = {}
        self.receiver_stage(times, self.receiver_prompt)
        return times


def _time_conditions(run: Run, conditions: dict[str, Callable[[], dict]]) -> tuple[dict[str, list[dict]], float, int]:
    """(samples by condition, warm-up seconds, compilations during the timed passes): every condition
    once to compile, then `ttft_repeats` passes over all of them while the budget allows."""
    start = time.perf_counter()
    for fn in conditions.values():  # compile every shape
        fn()
    warmup_s = time.perf_counter() - start
    run.log(f"ttft: warm-up (compilation) {warmup_s:.1f} s")
    before = compile_count()
    samples: dict[str, list[dict]] = {k: [] for k in conditions}
    for i in range(run.sizes.ttft_repeats):
        if i and not run.fits(5.0, f"ttft repeat {i + 1}", []):
            break
        for name, fn in conditions.items():
            samples[name].append(fn())
    return samples, warmup_s, compile_count() - before


def _medians(samples: dict[str, list[dict]], bytes_sent: dict[str, int]) -> dict[str, dict]:
    """Per condition: median TTFT (sum of its stages), median of each stage, the samples, bytes sent."""
    results = {}
    for name, runs in samples.items():
        stages = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
        results[name] = {
            "ttft_s": statistics.median(sum(r.values()) for r in runs),
            "stages_s": stages,
            "samples": runs,
            "bytes_sent": bytes_sent.get(name),
        }
    return results


def _ttft_rows(run: Run, results: dict[str, dict], recompiles: int) -> list[dict]:
    sz = run.sizes
    longest = f"text_{max(sz.budgets)}"
    ratio = results[longest]["ttft_s"] / results["lcfx"]["ttft_s"]
    pair = f"{SHARER} -> {RECEIVER}"
    rows = []
    for name, r in results.items():
        stages = ", ".join(f"{k} {1e3 * v:.2f}" for k, v in r["stages_s"].items())
        what = {
            "receiver_alone": f"receiver alone ({RECEIVER}, own {sz.context}-token context)",
            "lcfx": f"LCF-X ({pair})",
            "lcfx_qwen3_pair": f"LCF-X ({RECEIVER} -> {RECEIVER}, the paper's pair)",
            "lcf": f"LCF, shared context ({pair})",
            "c2c": f"C2C, shared context ({pair})",
        }.get(name) or f"text, {name.removeprefix('text_')}-token message ({pair})"
        rows.append(row(f"TTFT {what}", 1e3 * r["ttft_s"], "ms", bytes_sent=r["bytes_sent"], note=stages))
    return rows + [
        row(f"TTFT({longest}) / TTFT(lcfx)", ratio, "x", ">= 20", ratio >= 20),
        row(
            f"TTFT(text_{min(sz.budgets)}) / TTFT(lcfx)",
            results[f"text_{min(sz.budgets)}"]["ttft_s"] / results["lcfx"]["ttft_s"],
            "x",
        ),
        row("ttft: compilations during timed passes", recompiles, "", "0", recompiles == 0),
    ]


def section_ttft(run: Run) -> tuple[list[dict], dict]:
    conditions = Conditions(run)
    samples, warmup_s, recompiles = _time_conditions(run, conditions.all())
    results = _medians(samples, conditions.bytes_sent)
    details = {
        "conditions": results,
        "context_tokens": conditions.ctx_len,
        "spans": conditions.span_lengths,
        "warmup_s": warmup_s,
        "repeats": len(samples["lcfx"]),
        "compiles_during_timing": recompiles,
        "adapter_params": {k: conditions.adapters.count_params(a) for k, a in conditions.built.items()},
    }
    return _ttft_rows(run, results, recompiles), details
