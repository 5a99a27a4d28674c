"""Which entries a KV message should keep: F1 of the KV rows by policy and unit on the demo's
questions (accuracy only, no latency), the attempts behind `messages.kv.DEFAULT_POLICY`.

    python experiments/kv_policies.py --count 64 --policy attention --unit token
    python experiments/kv_policies.py --count 64 --policy query --unit token
    python experiments/kv_policies.py --count 64 --policy query --unit span

SmolLM2-135M-Instruct is sharer and receiver; questions: the first `--count` of `lcf demo`'s test
questions. Rows: half_context, full_context, full_context_sharer_first, kv_share and
kv_share_<M> for each `--entries`, and the mismatched control. Results in README ("KV-cache
messages").
"""

from __future__ import annotations

import argparse
import time

from lcf_jax.data.split_qa import generate_questions
from lcf_jax.eval.condition import kv_conditions
from lcf_jax.eval.conditions import Setup, run_answers
from lcf_jax.eval.metrics import score
from lcf_jax.loading import load_model
from lcf_jax.train.defaults import MODEL, demo_config


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=64)
    parser.add_argument("--policy", default="query", choices=["attention", "query"])
    parser.add_argument("--unit", default="span", choices=["span", "token"])
    parser.add_argument("--entries", type=int, nargs="+", default=[8, 16, 32, 48])
    args = parser.parse_args()
    config = demo_config()
    model = load_model(MODEL, dtype=config.model_dtype)
    questions = generate_questions("test", args.count, seed=config.eval.seed, variant=config.data.variant)
    rows = kv_conditions(args.policy, entries=tuple(args.entries), unit=args.unit)
    setup = Setup(model, model, budgets=(), receiver_alone=("half_context", "full_context"), kv=rows)
    start = time.perf_counter()
    answers = run_answers(setup, questions, progress=False)
    print(f"{args.policy} by {args.unit}, {args.count} questions, {time.perf_counter() - start:.0f} s")
    for name in setup.conditions():
        f1 = score(answers.by_condition[name], [q.answers for q in questions], clean=True)["f1_mean"]
        print(f"{name:28s} F1 {f1:5.1f}  bytes {answers.message_bytes(setup, name)}")


if __name__ == "__main__":
    main()
