"""The `lcf` command line, run as a user runs it: a subprocess."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys

import pytest

from lcf_jax.cli import build_parser, main

LCF = [sys.executable, "-m", "lcf_jax.cli"]


def run(*args, stdin=None):
    env = {**os.environ, "TQDM_DISABLE": "1"}
    return subprocess.run([*LCF, *args], capture_output=True, text=True, input=stdin, timeout=300, env=env)


def test_help_lists_chat_and_its_flags():
    top = run("--help")
    assert top.returncode == 0 and "chat" in top.stdout
    chat = run("chat", "--help")
    for flag in ("--model", "--prompt", "--max-new-tokens", "--temperature", "--top-p", "--dtype"):
        assert flag in chat.stdout


def test_bad_model_path_is_one_clear_line(tmp_path):
    result = run("chat", "--model", str(tmp_path / "missing"), "--prompt", "hi")
    assert result.returncode == 2
    error = result.stderr.strip().splitlines()[-1]
    assert error.startswith("lcf chat: error: no model at") and "missing" in error
    assert "Traceback" not in result.stderr


@pytest.mark.real_model
def test_chat_answers_with_the_embedded_default():
    result = run("chat", "--prompt", "What is the capital of France?", "--max-new-tokens", "24")
    assert result.returncode == 0, result.stderr
    assert "Paris" in result.stdout
    piped = run("chat", "--max-new-tokens", "24", stdin="What is the capital of Germany? Answer in one word.\n")
    assert piped.returncode == 0 and "Berlin" in piped.stdout


def test_eval_and_demo_help_and_a_missing_checkpoint(tmp_path):
    for command, flags in (
        ("eval", ("--config", "--checkpoint", "--control", "--data", "--count", "--latency-questions", "--workdir")),
        ("demo", ("--workdir", "--steps", "--count")),
    ):
        out = run(command, "--help")
        assert out.returncode == 0 and all(f in out.stdout for f in flags), command
    result = run(
        "eval", "--config", "configs/tiny.py", "--checkpoint", str(tmp_path / "nothing"), "--workdir", str(tmp_path)
    )
    assert result.returncode == 2 and "Traceback" not in result.stderr
    error = result.stderr.strip().splitlines()[-1]
    assert error.startswith("lcf eval: error: no adapter under") and "lcf demo" in error


def test_export_and_import_c2c_help_and_a_missing_checkpoint(tmp_path):
    for command, flags in (
        ("export", ("--checkpoint", "--out", "--dtype", "--config")),
        ("import-c2c", ("--c2c", "--sharer", "--receiver", "--out")),
    ):
        out = run(command, "--help")
        assert out.returncode == 0 and all(f in out.stdout for f in flags), command
    result = run("export", "--checkpoint", str(tmp_path / "nothing"), "--out", str(tmp_path / "out"))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    error = result.stderr.strip().splitlines()[-1]
    assert error.startswith("lcf export: error: nothing at") and "lcf train" in error


def _subcommands() -> dict[str, argparse.ArgumentParser]:
    """Every `lcf` subcommand's parser, found from the parser itself (new subcommands are covered)."""
    parser = build_parser()
    (sub,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(sub.choices)


@pytest.mark.parametrize("command", sorted(_subcommands()))
def test_every_subcommand_help_is_complete(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    shown = capsys.readouterr().out
    parser = _subcommands()[command]
    assert parser.description and len(parser.description.split()) >= 15, "a one-paragraph description"
    for action in parser._actions:
        name = "/".join(action.option_strings) or action.dest
        assert action.help and action.help.strip(), f"lcf {command} {name} has no help"
        takes_value = action.nargs != 0 and not isinstance(action, argparse._HelpAction)
        if takes_value and not action.required:
            assert "default" in action.help, f"lcf {command} {name}: the help does not state its default"
    examples = [line.strip() for line in (parser.epilog or "").splitlines()]
    assert any(line.startswith(f"lcf {command} ") or line == f"lcf {command}" for line in examples)
    assert f"lcf {command}" in shown.split("examples:")[-1], "the examples are printed with their line breaks"


def test_a_user_error_is_one_line_and_a_bug_keeps_its_traceback(monkeypatch, capsys):
    from lcf_jax import cli
    from lcf_jax.errors import ConfigError

    def bad_input(args):
        raise ConfigError("train.steps must be positive: set --config.train.steps=N with N >= 1")

    def bug(args):
        raise ValueError("an internal invariant broke")

    parser = cli.build_parser
    monkeypatch.setattr(cli, "build_parser", lambda: _with_run(parser(), bad_input))
    assert cli.main(["demo", "--workdir", "/tmp/unused"]) == 2
    assert (
        capsys.readouterr().err
        == "lcf demo: error: train.steps must be positive: set --config.train.steps=N with N >= 1\n"
    )
    monkeypatch.setattr(cli, "build_parser", lambda: _with_run(parser(), bug))
    with pytest.raises(ValueError, match="internal invariant"):
        cli.main(["demo", "--workdir", "/tmp/unused"])


def _with_run(parser, run):
    """The parser with every command's action replaced by `run`."""
    for action in parser._subparsers._group_actions[0].choices.values():
        action.set_defaults(run=run)
    return parser


def test_a_file_that_is_no_model_is_one_clear_line(tmp_path):
    path = tmp_path / "weights.txt"
    path.write_text("not a model")
    result = run("chat", "--model", str(path), "--prompt", "hi")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        f"lcf chat: error: {path} is neither a model directory nor a .gguf file: pass an HF model directory, "
        "a .gguf file or a registered name"
    )
