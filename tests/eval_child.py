"""A child process for tests/test_eval_resume.py: one evaluation (or demo) on the tiny text pair.

    python tests/eval_child.py eval|demo WORKDIR [--kill-after messages|answers|latency]

With --kill-after, the process sends itself SIGKILL right after the first record of that kind
reaches the disk: a run killed mid-way at a known point, with nothing cleaned up."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")

from tiny_pair import tiny_text_models  # noqa: E402

from lcf_jax.adapters import build  # noqa: E402
from lcf_jax.data.qa import Question  # noqa: E402
from lcf_jax.eval import record as R  # noqa: E402
from lcf_jax.eval.conditions import Setup  # noqa: E402
from lcf_jax.eval.run import evaluate  # noqa: E402

QUESTIONS = [
    Question(f"q{i}", f"Where is {who}?", (f"{who} is in {town}.", "Al is red."), ("Cy likes tea.",), (town,))
    for i, (who, town) in enumerate(
        [("Bo", "Rome"), ("Di", "Oslo"), ("Ed", "Lima"), ("Fo", "Kyiv"), ("Gi", "Riga"), ("Ha", "Bern")]
    )
]


def tiny_setup() -> Setup:
    sharer, receiver = tiny_text_models()
    adapter = build("lcfx", sharer, receiver, latent_width=8, dropout=0.0)
    control = build("lcfx", sharer, receiver, latent_width=8, dropout=0.0, seed=1)
    return Setup(
        sharer, receiver, adapter, control, budgets=(5, 12), max_answer_tokens=4, batch_size=2, progress_every=0.0
    )


def kill_after(kind: str) -> None:
    method = {"messages": "add_messages", "answers": "add_answers", "latency": "add_latency"}[kind]
    original = getattr(R.RunRecord, method)

    def then_die(self, *args, **kwargs):
        original(self, *args, **kwargs)
        os.kill(os.getpid(), signal.SIGKILL)

    setattr(R.RunRecord, method, then_die)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("what", choices=["eval", "demo"])
    parser.add_argument("workdir")
    parser.add_argument("--kill-after", choices=["messages", "answers", "latency"])
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    if args.kill_after:
        kill_after(args.kill_after)
    if args.what == "eval":
        evaluate(tiny_setup(), QUESTIONS, args.workdir, latency_questions=2)
    else:
        from test_demo import tiny_demo_config  # noqa: PLC0415

        from lcf_jax.demo import demo  # noqa: PLC0415

        demo(args.workdir, config=tiny_demo_config(), models=tiny_text_models())


if __name__ == "__main__":
    main()
