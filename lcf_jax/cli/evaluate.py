"""`lcf eval`: latent against text communication, with every control, on generated or your own questions."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from lcf_jax.cli.common import HelpFormatter, examples, quiet_logs
from lcf_jax.errors import ConfigError


def eval_config(args: argparse.Namespace, run_dir: Path | None):
    """--config, or the `config.json` the checkpoint's training run wrote."""
    from lcf_jax.config import load_config  # noqa: PLC0415
    from lcf_jax.train.defaults import base_config  # noqa: PLC0415

    if args.config:
        return load_config(args.config, defaults=base_config())
    saved = (
        None if run_dir is None else next((p for p in (run_dir, run_dir.parent) if (p / "config.json").exists()), None)
    )
    if saved is None:
        where = f"{args.checkpoint} records no config.json" if args.checkpoint else "there is no --checkpoint"
        raise ConfigError(
            f"--config is needed: {where} (pass the experiment config, e.g. --config configs/smollm2_qa.py)"
        )
    print(f"models and options from {saved / 'config.json'}", file=sys.stderr, flush=True)
    return load_config(saved / "config.json", defaults=base_config())


def run(args: argparse.Namespace) -> int:
    quiet_logs()
    from lcf_jax.adapters.io import load_adapter  # noqa: PLC0415
    from lcf_jax.data.qa import load_questions  # noqa: PLC0415
    from lcf_jax.data.split_qa import generate_questions  # noqa: PLC0415
    from lcf_jax.eval.conditions import Setup  # noqa: PLC0415
    from lcf_jax.eval.inputs import check_adapter_fits, fit_questions  # noqa: PLC0415
    from lcf_jax.eval.record import check_fingerprint  # noqa: PLC0415
    from lcf_jax.eval.run import evaluate, input_fingerprint  # noqa: PLC0415
    from lcf_jax.train.loop import build_models  # noqa: PLC0415
    from lcf_jax.train.workdir import adapter_dirs  # noqa: PLC0415

    # Every input is checked before a model loads: the checkpoint, the config, the data, the work directory.
    adapter = control = run_dir = None
    if args.checkpoint:
        main, control_dir = adapter_dirs(args.checkpoint)
        run_dir = main.parent
        adapter = load_adapter(main)
        if adapter.spec.kind != "lcfx" and not args.mcq:
            raise ConfigError(
                f"{main} holds a {adapter.spec.kind!r} (shared-context) adapter: evaluate it on multiple choice with "
                "--mcq FILE.jsonl|DIR; split-context questions need an lcfx adapter"
            )
        control_dir = control_dir or args.control
        control = load_adapter(control_dir, expect_kind="lcfx") if control_dir and not args.mcq else None
    translator = kv_translator(args.kv_translator) if args.kv_translator else None
    config = eval_config(args, run_dir)
    if args.mcq:
        return eval_mcq(args, config)
    if args.data:
        questions = load_questions(args.data, limit=args.count or None)
        dataset = str(args.data)
    else:
        questions = generate_questions(
            "test", args.count or 300, seed=args.seed, variant=config.data.get("variant", "single_hop")
        )
        dataset = f"split_qa test, seed {args.seed}"
    if not args.restart:
        check_fingerprint(args.workdir, input_fingerprint(questions, args.latency_questions))
    sharer, receiver = build_models(config)
    for name, a in (("--checkpoint", adapter), ("the control", control)):
        if a is not None:
            check_adapter_fits(a, sharer, receiver, name)
    if translator is not None:
        check_translator_fits(translator, sharer, receiver, args.kv_translator)
    setup = Setup(
        sharer,
        receiver,
        adapter=adapter,
        control=control,
        sharer_sees_question=config.data.sharer_sees_question,
        batch_size=args.batch_size,
        batch_tokens=args.batch_tokens,
        progress="off" if args.no_progress else "auto",
        progress_every=args.progress_every,
        kv_translator=translator,
    )
    questions = fit_questions(setup, questions, cap=args.max_tokens, truncate=args.truncate)
    meta = {"dataset": dataset, "config": args.config or "config.json of the checkpoint", "checkpoint": args.checkpoint}
    evaluate(
        setup,
        questions,
        args.workdir,
        latency_questions=args.latency_questions,
        meta=meta,
        progress=not args.no_progress,
        restart=args.restart,
    )
    print((Path(args.workdir) / "results.md").read_text())  # the table and the stage times
    print(f"wrote {args.workdir}/results.json, results.md, f1_vs_ttft.png, answers.jsonl")
    return 0


def add_parser(sub) -> None:
    """`lcf eval`: its flags, help and examples."""
    evaluate = sub.add_parser(
        "eval",
        formatter_class=HelpFormatter,
        help="evaluate latent against text communication on split-context questions",
        description="Run every condition on the same split-context questions: the receiver alone with the "
        "question only, half or full context; text messages of 50, 100, 150 and 200 tokens written by the "
        "sharer; and, with --checkpoint, LCF-X with its controls (another question's message, an empty "
        "message, and the receiver-only adapter when the checkpoint has one); when sharer and receiver are one "
        "model, KV-cache messages too (kv_share: every entry of the sharer's cache for its paragraphs; "
        "kv_share_8/16/32: that many entries per layer, the question's attention by paragraph; another "
        "question's message; and full_context_sharer_first, their text reference), which need no checkpoint. "
        "Answers are scored (EM, F1, "
        "paired tests against the best text condition) and the first --latency-questions are timed one at a "
        "time. Writes results.json, results.md, f1_vs_ttft.png and answers.jsonl to --workdir and prints the "
        "table.\n\n"
        "Memory stays bounded whatever the data: batches hold at most --batch-tokens cache entries and long "
        "prompts are read in chunks. Every input (the data file, all of it; the checkpoint; the config) is "
        "checked before a model loads, and a question longer than the models can read is named (or cut, "
        "with --truncate). Answers are recorded in --workdir as each batch finishes: after a crash or a kill, "
        "the same command continues where it stopped.\n\n"
        "With --mcq, it scores shared-context multiple choice instead (the receiver, the sharer, their oracle "
        "and the --checkpoint's lcf or c2c adapter) and writes mcq.json. The models come from --config.",
        epilog=examples(
            "lcf eval --checkpoint lcf-demo --workdir lcf-eval",
            "lcf eval --config configs/smollm2_qa.py --checkpoint RUN --data my_questions.jsonl --workdir out",
            "lcf eval --config configs/smollm2_qa.py --data my_questions.jsonl --workdir out  # text and KV rows",
            "lcf eval --config configs/paper_lcf.py --checkpoint RUN --mcq mmlu_redux.jsonl --workdir mcq-out",
        ),
    )
    _input_flags(evaluate)
    _run_flags(evaluate)
    evaluate.set_defaults(run=run)


def _input_flags(evaluate) -> None:
    """What is evaluated: models and adapters, questions."""
    evaluate.add_argument(
        "--config",
        default=None,
        help="the experiment config the sharer and receiver come from: configs/NAME.py (default: the config.json "
        "that `lcf train` or `lcf demo` wrote beside --checkpoint)",
    )
    evaluate.add_argument(
        "--checkpoint",
        default=None,
        help="an adapter directory, or the work directory of `lcf train` or `lcf demo` (default: none, only the "
        "receiver-alone and text conditions run)",
    )
    evaluate.add_argument(
        "--control",
        default=None,
        help="a receiver-only lcfx adapter directory, when --checkpoint has none (default: none; a `lcf demo` "
        "work directory brings its own)",
    )
    evaluate.add_argument(
        "--kv-translator",
        default=None,
        help="a KV translator between the config's two models (its kv_translator/ directory, or the work directory "
        "of `lcf train --config configs/kv_translator.py`): adds the KV rows when sharer and receiver differ "
        "(default: none; one model needs none)",
    )
    evaluate.add_argument(
        "--data",
        default=None,
        help="split-context questions JSONL, format in lcf_jax/data/qa.py (default: generated split_qa test questions)",
    )
    evaluate.add_argument(
        "--mcq",
        default=None,
        help="score multiple choice instead: a JSONL file (MMLU-Redux, ARC or OpenBookQA layout) or a directory "
        "of them, with an lcf or c2c --checkpoint (default: none)",
    )
    evaluate.add_argument(
        "--count",
        type=int,
        default=0,
        help="questions to evaluate (default: 0, meaning all of --data or --mcq, or 300 generated)",
    )
    evaluate.add_argument(
        "--seed", type=int, default=1, help="seed of the generated questions, without --data (default: 1)"
    )
    evaluate.add_argument(
        "--latency-questions",
        type=int,
        default=5,
        help="questions timed one at a time for time to first token; 0 skips timing (default: 5)",
    )


def _run_flags(evaluate) -> None:
    """How: batching, memory, timing, output."""
    evaluate.add_argument("--batch-size", type=int, default=32, help="the most questions in a batch (default: 32)")
    evaluate.add_argument(
        "--batch-tokens",
        type=int,
        default=None,
        help="the most KV-cache entries in a batch (rows x longest row): memory grows with it, about 45 KiB a token "
        "for SmolLM2-135M (default: what fits 768 MiB of the larger model's cache, 17,476 for SmolLM2-135M)",
    )
    evaluate.add_argument(
        "--max-tokens",
        type=int,
        default=None,
        help="the longest sequence a question may put in a cache (prompt, longest message, answer); longer is an "
        "error naming the questions, or cut with --truncate (default: the models' positions)",
    )
    evaluate.add_argument(
        "--truncate",
        action="store_true",
        help="cut the paragraphs of questions that do not fit --max-tokens, with a warning, instead of stopping",
    )
    evaluate.add_argument(
        "--workdir",
        required=True,
        help="the directory the results are written to (required; created if missing). Answers are recorded there "
        "as each batch finishes: the same command again continues a run that was stopped",
    )
    evaluate.add_argument(
        "--restart", action="store_true", help="discard what an earlier run recorded in --workdir and start afresh"
    )
    evaluate.add_argument(
        "--no-progress", action="store_true", help="hide the progress bars and lines (default: shown)"
    )
    evaluate.add_argument(
        "--progress-every",
        type=float,
        default=30.0,
        help="seconds between progress lines when the output is not a terminal (default: 30)",
    )


def kv_translator(path: str):
    """The translator at `path`: a kv_translator/ directory or the work directory that holds one."""
    from lcf_jax.messages.translate import load_translator  # noqa: PLC0415
    from lcf_jax.train.translator import translator_directory  # noqa: PLC0415

    return load_translator(translator_directory(path) or path)  # none there: load_translator names what is missing


def check_translator_fits(translator, sharer, receiver, where: str) -> None:
    from lcf_jax.messages.kv import model_signature  # noqa: PLC0415

    if sharer is receiver:
        raise ConfigError(f"--kv-translator {where}: the config's sharer and receiver are one model, which needs none")
    want = (model_signature(sharer.config), model_signature(receiver.config))
    got = (model_signature(translator.sharer), model_signature(translator.receiver))
    if got != want:
        raise ConfigError(
            f"--kv-translator {where} maps {got[0]} -> {got[1]}, but the config's models are {want[0]} -> {want[1]}: "
            "train one for these models (lcf train --config configs/kv_translator.py)"
        )


def eval_mcq(args: argparse.Namespace, config) -> int:
    """Shared-context multiple choice: receiver, sharer, oracle and the checkpoint's adapter."""
    import json  # noqa: PLC0415

    from lcf_jax.adapters.io import load_adapter  # noqa: PLC0415
    from lcf_jax.data.mcq import read_mcq  # noqa: PLC0415
    from lcf_jax.data.tfds_builders import load_mcq  # noqa: PLC0415
    from lcf_jax.eval.mcq import mcq_summary, run_mcq  # noqa: PLC0415
    from lcf_jax.train.loop import build_models  # noqa: PLC0415
    from lcf_jax.train.workdir import adapter_dirs  # noqa: PLC0415

    source = Path(args.mcq)
    items = list(read_mcq(source)) if source.is_file() else load_mcq(source)
    items = items[: args.count or None]
    adapters = {}
    if args.checkpoint:
        adapter = load_adapter(adapter_dirs(args.checkpoint)[0])
        if adapter.spec.kind == "lcfx":
            raise ConfigError("multiple choice is shared-context: use an lcf or c2c checkpoint (lcfx needs --data)")
        adapters[adapter.spec.kind] = adapter
    sharer, receiver = build_models(config)
    correct = run_mcq(sharer, receiver, items, adapters, progress=not args.no_progress)
    summary = mcq_summary(correct, reference="c2c" if "c2c" in correct else "receiver")
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "mcq.json").write_text(json.dumps({"source": str(source), "conditions": summary}, indent=2) + "\n")
    print("| condition | accuracy | n | p (one-sided McNemar, better than reference) |\n|---|---|---|---|")
    for name, row in summary.items():
        p = row.get("mcnemar_p_greater")
        print(f"| {name} | {row['accuracy']:.1f} | {row['n']} | {'' if p is None else f'{p:.3g}'} |")
    print(f"\nwrote {workdir / 'mcq.json'}")
    return 0
