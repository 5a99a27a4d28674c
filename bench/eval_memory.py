"""Peak resident memory and wall time of `lcf eval` (every condition) on long split-context questions.

    python bench/eval_memory.py [--contexts 250 1000 2000] [--count 48] [--checkpoint DIR] [--json OUT]

For each context size it writes split-context questions whose ten paragraphs hold about that many
tokens in all (half the sharer's, half the receiver's, as in HotpotQA), runs `lcf eval` on them in a
child process with the embedded default pair (SmolLM2-135M-Instruct, `configs/smollm2_qa.py`) and
every condition (receiver alone x3, text 50-200, LCF-X, mismatched, empty, receiver-only), and
records the child's peak resident memory (`getrusage` of the waited child: the kernel's high-water
mark, nothing sampled away) and its wall time, plus resident memory every second (plotted with
`--plot`). Extra `lcf eval` flags go after `--`.

The adapters: `--checkpoint` (a `lcf demo` or `lcf train` work directory with its control), or by
default untrained LCF-X adapters of the demo's shape (memory and time do not depend on the weights).
`--code DIR` runs the `lcf_jax` found in DIR (e.g. an older commit extracted with `git archive`), so
before and after are measured by the same script; `--kill-above-gb` stops a run that grows past a
limit and records where it was.

Questions: the generated `split_qa` test questions (lcf_jax/data/split_qa.py), each paragraph
lengthened with sentences from other generated questions (validation split, so no name or answer
repeats) until each side reaches its share of the tokens.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from common import ROOT, markdown_table, report, tune_allocator

from lcf_jax.adapters import build
from lcf_jax.adapters.io import save_adapter
from lcf_jax.data.qa import Question, write_questions
from lcf_jax.data.split_qa import generate_questions
from lcf_jax.loading import resolve_source
from lcf_jax.loading.gguf import load_gguf_tokenizer
from lcf_jax.train.defaults import demo_config
from lcf_jax.train.workdir import ADAPTER_DIR, CONTROL_DIR

MODEL = "smollm2-135m"


def long_questions(count: int, context_tokens: int, tokenizer, *, seed: int = 0) -> list[Question]:
    """`count` split_qa test questions whose paragraphs are lengthened with distractor sentences
    until each side's paragraphs hold about `context_tokens / 2` tokens."""
    filler = [s for q in generate_questions("validation", 4 * count + 64, seed=seed + 1) for s in q.sharer_context]
    filler += [s for q in generate_questions("validation", 4 * count + 64, seed=seed + 2) for s in q.receiver_context]
    take = iter(filler * 64)
    out = []
    for q in generate_questions("test", count, seed=seed):
        sides = []
        for side in (q.sharer_context, q.receiver_context):
            paragraphs = list(side)
            size = lambda ps: sum(len(tokenizer.encode(p + "\n", add_special_tokens=False)) for p in ps)  # noqa: E731
            i = 0
            while size(paragraphs) < context_tokens // 2:
                paragraphs[i % len(paragraphs)] += " " + next(take)
                i += 1
            sides.append(tuple(paragraphs))
        out.append(Question(q.id, q.question, sides[0], sides[1], q.answers))
    return out


def untrained_checkpoint(directory: Path) -> Path:
    """A directory with an LCF-X adapter and a receiver-only control of the demo's shape (untrained)."""
    options = dict(demo_config().adapter.options)
    for name, seed in ((ADAPTER_DIR, 0), (CONTROL_DIR, 1)):
        save_adapter(build("lcfx", MODEL, MODEL, seed=seed, **options), directory / name)
    return directory


class RssSampler(threading.Thread):
    """Resident memory of a process, once a second (Linux /proc), and a kill switch above a limit."""

    def __init__(self, pid: int, kill_above_gb: float | None):
        super().__init__(daemon=True)
        self.pid, self.limit, self.samples, self.killed_at = pid, kill_above_gb, [], None
        self.start_time = time.perf_counter()

    def run(self) -> None:
        status = Path(f"/proc/{self.pid}/status")
        while True:
            try:
                line = next(x for x in status.read_text().splitlines() if x.startswith("VmRSS:"))
            except (OSError, StopIteration):
                return
            gb = int(line.split()[1]) / 2**20
            self.samples.append((round(time.perf_counter() - self.start_time, 1), round(gb, 3)))
            if self.limit is not None and gb > self.limit and self.killed_at is None:
                self.killed_at = self.samples[-1]
                os.kill(self.pid, 9)
            time.sleep(1.0)


def run_eval(questions_path: Path, checkpoint: Path, workdir: Path, args, extra: list[str]) -> dict:
    command = [
        sys.executable, "-m", "lcf_jax.cli", "eval", "--config", str(ROOT / "configs" / "smollm2_qa.py"),
        "--checkpoint", str(checkpoint), "--data", str(questions_path), "--workdir", str(workdir),
        "--latency-questions", str(args.latency_questions), *extra,
    ]  # fmt: skip
    env = {**os.environ, "TQDM_DISABLE": "1"}
    if args.code:
        env["PYTHONPATH"] = os.pathsep.join([str(Path(args.code).resolve()), env.get("PYTHONPATH", "")])
    log = (workdir.parent / f"{workdir.name}.log").open("w")
    start = time.perf_counter()
    child = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
    sampler = RssSampler(child.pid, args.kill_above_gb)
    sampler.start()
    _, status, usage = os.wait4(child.pid, 0)
    wall = time.perf_counter() - start
    sampler.join(timeout=2)
    return {
        "rc": os.waitstatus_to_exitcode(status),
        "peak_rss_gb": round(usage.ru_maxrss / 2**20, 2),  # KiB on Linux
        "wall_min": round(wall / 60, 2),
        "killed_at": sampler.killed_at,
        "rss_gb": sampler.samples,
        "log": log.name,
        "command": " ".join(command),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--contexts", type=int, nargs="+", default=[250, 1000, 2000], help="context tokens")
    parser.add_argument("--count", type=int, default=48, help="questions per context size")
    parser.add_argument("--latency-questions", type=int, default=2)
    parser.add_argument("--checkpoint", default=None, help="adapters (default: untrained, demo-shaped)")
    parser.add_argument("--code", default=None, help="a directory whose lcf_jax the child runs")
    parser.add_argument("--kill-above-gb", type=float, default=None)
    parser.add_argument("--workdir", default=None, help="where questions and runs go (default: a temp dir)")
    parser.add_argument("--json", default=None)
    parser.add_argument("--plot", default=None, help="PNG of resident memory over time")
    args, extra = parser.parse_known_args()
    tune_allocator()  # the `lcf` command's allocator settings, before anything allocates (bench/common.py)
    extra = [a for a in extra if a != "--"]
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="eval-memory-"))
    workdir.mkdir(parents=True, exist_ok=True)
    checkpoint = Path(args.checkpoint) if args.checkpoint else untrained_checkpoint(workdir / "adapters")
    tokenizer = load_gguf_tokenizer(resolve_source(MODEL))
    rows = []
    for tokens in args.contexts:
        questions = long_questions(args.count, tokens, tokenizer)
        path = write_questions(questions, workdir / f"questions_{tokens}.jsonl")
        sizes = [len(tokenizer.encode("\n".join(q.sharer_context + q.receiver_context))) for q in questions]
        print(f"{tokens}-token contexts: {len(questions)} questions, {min(sizes)}-{max(sizes)} tokens", flush=True)
        result = run_eval(path, checkpoint, workdir / f"eval_{tokens}", args, extra)
        results = workdir / f"eval_{tokens}" / "results.json"
        stages = json.loads(results.read_text())["meta"].get("wall_s", {}) if results.exists() else {}
        row = {
            "context tokens": tokens,
            "tokens (min-max)": f"{min(sizes)}-{max(sizes)}",
            "questions": len(questions),
            "peak RSS GB": result["peak_rss_gb"],
            "wall min": result["wall_min"],
            "rc": result["rc"],
            "killed at (s, GB)": result["killed_at"] or "",
            "stages s": stages,
            **{k: result[k] for k in ("rss_gb", "log", "command")},
        }
        rows.append(row)
        print(markdown_table([row], [c for c in row if c not in ("rss_gb", "log", "command")]), flush=True)
    columns = ["context tokens", "tokens (min-max)", "questions", "peak RSS GB", "wall min", "rc", "killed at (s, GB)"]
    report("lcf eval peak memory (every condition)", rows, columns, json_path=args.json)
    if args.plot:
        plot(rows, args.plot)


def plot(rows: list[dict], path: str) -> None:
    import matplotlib  # noqa: PLC0415 - only with --plot

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    fig, ax = plt.subplots(figsize=(7, 4))
    for row in rows:
        t, gb = zip(*row["rss_gb"]) if row["rss_gb"] else ((), ())
        ax.plot([x / 60 for x in t], gb, label=f"{row['context tokens']} tokens")
    ax.set_xlabel("minutes")
    ax.set_ylabel("resident memory (GB)")
    ax.set_title("lcf eval, every condition")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    main()
