"""The GPU half of the speed story in one run: hardware floors, model prefill/decode (against
transformers in the same process), the adapter training step and communication time to first
token, with a correctness check first. Random weights at the real shapes, no network, no
checkpoints. Run it through `bench/gpu.sh` (which sets the memory flags and keeps a log):

    bash bench/gpu.sh [--tiny] [--budget-s 420] [--only floors,train] [--train-micro 1]
    PYTHONPATH=. python bench/gpu.py --out DIR [...]

Writes `gpu_bench.json` (everything), `gpu_bench.md` (the table) and `progress.log` under `--out`
(default `$OUT`, else `./gpu_out`), rewritten after every section so a run cut short still reports.
`--tiny` (or `GPU_BENCH_TINY=1`) shrinks every shape (2-3 layer models, 64-wide, 512-token vocab,
tens of tokens) so the whole script runs on a CPU in about a minute: the code path, not the numbers.

Sections, in order (each one's exception is recorded and the run goes on; a section whose estimate
does not fit the remaining `--budget-s` is skipped, saying so; a watchdog writes what there is and
exits at `--hard-limit-s`):

floors        device copy bandwidth: y = -x over a 1 GiB bf16 buffer, (bytes read + written) / time
              (also `jnp.copy` and a read-only sum); bf16 matmul peak: 8192^3 `jnp.matmul`, 2 n^3 / time.
              Both: 10 calls dispatched back to back, best of 5 rounds.
parity        lcf_jax float32 forward logits vs transformers' PyTorch model holding the same random
              weights (2-layer Qwen3-0.6B and Qwen2.5-0.5B shapes, 64 tokens, JAX at "highest" matmul
              precision; PyTorch on CUDA with TF32 off, else on the CPU): max |diff| / max |logit|,
              goal <= 1e-4; and three `generate` calls with new prompts of the same shape must
              compile nothing after the first.
models_jax    Qwen3-0.6B and Qwen2.5-0.5B shapes, bf16, batch 1. Decode: `lcf_jax.generate`, 128
              greedy tokens after a 512-token prompt, (time(128) - time(1)) / 127 (both calls use
              one cache capacity, so their prefills are the same program); against the weight-read
              floor = parameter bytes read per token / copy bandwidth (tied embeddings: the whole
              table is the lm head), goal <= 1.5x. Prefill: 2,048 tokens, `last_only` logits;
              model FLOPs = 2 * (layer matmul params) * T + 4 * L * N * H * T(T+1)/2 (causal QK^T
              and PV) + 2 * D * V (one lm-head row), as % of the measured matmul peak, goal >= 40%.
              Also one decode forward (a single dispatch, no loop) and XLA's cost_analysis flops.
ttft          time to first token at batch 1, 512-token contexts of random ids, Qwen2.5-0.5B sharer ->
              Qwen3-0.6B receiver (and the paper's LCF-X pair, Qwen3-0.6B -> Qwen3-0.6B), stage by
              stage, each stage blocked on: sharer prefill; summary (lcfx) or fuse (lcf, c2c); transfer
              (message or sharer cache: device -> host -> device, bytes reported); receiver prefill;
              receiver apply; receiver first token (`generate(..., 1)` from the last prompt token).
              Text: the sharer's prefill + N greedy tokens (one `generate`), the receiver's prefill of
              context + message, first token. Every shape is run once first (compiles); the timed
              passes must compile nothing. Goal TTFT(text_200) / TTFT(lcfx) >= 20.
train         the jitted `make_train_step` for the paper's shared-context pair (Qwen2.5-0.5B ->
              Qwen3-0.6B, lcf, latent 128, all 28 layers, bf16 models, float32 adapter params with
              bf16 matmuls, AdamW), batch 16 x (1,000 prefix + 24 suffix) tokens; steps dispatched
              back to back. MFU = model FLOPs / step time / measured peak, model FLOPs =
                sharer forward over the prefix + receiver forward over the prefix (as prefill above,
                one lm-head row per sequence)
                + receiver suffix forward (24 tokens after 1,000 cached: linear + attention + lm head)
                + its backward to activations (= linear + lm head once more, attention twice: the
                  models are frozen, no weight gradients)
                + adapter forward and backward = 3 * 2 * (adapter matmul params) * B * prefix tokens.
              Goal >= 35%. XLA's `compiled.cost_analysis()` flops are reported beside it (XLA counts a
              while-loop body once, and the layers are a scan, so that number is not comparable).
models_torch  transformers' model of the same config (random init, bf16, `attn_implementation="sdpa"`)
              in the same process: prefill of the same 2,048 tokens (`logits_to_keep=1`) and decode
              ms/token of greedy `generate(min_new_tokens=N)`, (time(N) - time(1)) / (N - 1); ratios
              lcf_jax speed / PyTorch speed (> 1: lcf_jax faster). Skipped when torch has no CUDA while
              JAX runs on a GPU.

FLOP counts leave out norms, RoPE, softmax, biases and the embedding gather.

Files: this entry point (flags, watchdog, the sections in order); bench/gpu_run.py (sizes, run state,
report); one module per section: bench/gpu_floors.py, gpu_parity.py, gpu_models_jax.py, gpu_ttft.py,
gpu_train.py, gpu_models_torch.py; bench/gpu_flops.py (FLOP counts); bench/common.py (environment,
timing, compilation counts, rows; shared with the CPU benchmarks).
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time

import jax
from common import compile_count, import_lcf_jax, third_party_modules, tune_allocator
from gpu_floors import section_floors
from gpu_models_jax import section_models_jax
from gpu_models_torch import section_models_torch
from gpu_parity import section_parity
from gpu_run import FULL, SECTIONS, TINY, Run, markdown
from gpu_train import section_train
from gpu_ttft import section_ttft

PROCESS_START = time.monotonic()  # the budget counts from here (jax is imported; CUDA not yet started)
RUNS = {
    "floors": section_floors,
    "parity": section_parity,
    "models_jax": section_models_jax,
    "ttft": section_ttft,
    "train": section_train,
    "models_torch": section_models_torch,
}
assert tuple(RUNS) == SECTIONS


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tiny", action="store_true", help="tiny shapes (also GPU_BENCH_TINY=1): runs on a CPU")
    parser.add_argument("--budget-s", type=float, default=420.0, help="skip what would not fit in this many seconds")
    parser.add_argument("--hard-limit-s", type=float, default=None, help="write results and exit (default budget + 30)")
    parser.add_argument("--out", default=os.environ.get("OUT") or "gpu_out", help="output directory (default $OUT)")
    parser.add_argument("--only", default="", help=f"comma-separated sections to run ({','.join(SECTIONS)})")
    parser.add_argument("--skip", default="", help="comma-separated sections to skip")
    parser.add_argument("--train-micro", type=int, default=0, help="micro-batches for the train step (default 1)")
    args = parser.parse_args(argv)
    args.tiny = args.tiny or os.environ.get("GPU_BENCH_TINY", "") not in ("", "0")
    args.only = [s for s in args.only.split(",") if s]
    args.skip = [s for s in args.skip.split(",") if s]
    unknown = [s for s in args.only + args.skip if s not in SECTIONS]
    if unknown:
        parser.error(f"unknown sections {unknown}; choose from {SECTIONS}")
    if args.hard_limit_s is None:
        args.hard_limit_s = args.budget_s + 30
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    jax.devices()  # start the backend before anything else loads CUDA libraries (torch)
    imports = import_lcf_jax()
    compile_count()  # counting starts here
    imports["third_party_modules_after_import"] = third_party_modules()
    tune_allocator()  # the `lcf` command's allocator settings (bench/common.py)
    run = Run(args, TINY if args.tiny else FULL, imports, PROCESS_START)
    run.log(f"{run.env['device']}; {run.env['date']}; " + ", ".join(f"{k} {v}" for k, v in run.env["versions"].items()))
    run.log(f"lcf_jax imported as: {imports['mode']}; output in {run.out.resolve()}; budget {args.budget_s:.0f} s")

    def watchdog() -> None:
        if run.current:
            error = f"killed by the watchdog at {args.hard_limit_s:.0f} s"
            run.sections[run.current].update(status="error", error=error)
        run.log(f"watchdog: {args.hard_limit_s:.0f} s reached, writing results and exiting")
        run.write()
        os._exit(3)

    timer = threading.Timer(max(1.0, args.hard_limit_s - run.elapsed()), watchdog)
    timer.daemon = True
    timer.start()
    for name, fn in RUNS.items():
        run.section(name, fn)
    timer.cancel()
    run.finished = True
    run.write()
    print("\n" + markdown(run.result()), flush=True)
    run.log(f"done in {run.elapsed():.0f} s; results in {run.out.resolve()}")
    return 1 if any(s["status"] == "error" for s in run.sections.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
