"""Nothing lost when an evaluation dies: a run killed with SIGKILL at several points, then run
again on the same work directory, writes the answers and scores of a run that never stopped; a run
whose output is not a terminal says where it is; a work directory of another evaluation is refused.

The killed runs are child processes (tests/eval_child.py); the reruns and the uninterrupted
references run in this process, on the same seeded models, so compiled programs are shared."""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from eval_child import QUESTIONS, tiny_setup
from test_demo import tiny_demo_config
from tiny_pair import tiny_text_models

from lcf_jax.demo import demo
from lcf_jax.eval import record as R
from lcf_jax.eval.run import evaluate

CHILD = [sys.executable, str(Path(__file__).parent / "eval_child.py")]
TIMED = ("ttft_ms", "answer_ms")  # measured times: two runs never agree on them


def killed_child(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "TQDM_DISABLE": "1"}
    run = subprocess.run([*CHILD, *args], capture_output=True, text=True, timeout=600, env=env)
    assert run.returncode == -9, run.stderr  # died by SIGKILL, mid-way
    return run


def scores(workdir: Path) -> dict:
    data = json.loads((workdir / "results.json").read_text())["conditions"]
    return {name: {k: v for k, v in row.items() if k not in TIMED} for name, row in data.items()}


@pytest.fixture(scope="module")
def setup():
    return tiny_setup()


@pytest.fixture(scope="module")
def uninterrupted(setup, tmp_path_factory):
    """A whole run, with its progress lines (this process's stderr is not a terminal)."""
    workdir = tmp_path_factory.mktemp("whole")
    lines = []
    handler = logging.Handler()
    handler.emit = lambda record: lines.append(record.getMessage())
    logging.getLogger("lcf_jax").addHandler(handler)
    logging.getLogger("lcf_jax").setLevel(logging.INFO)
    try:
        evaluate(setup, QUESTIONS, workdir, latency_questions=2)
    finally:
        logging.getLogger("lcf_jax").removeHandler(handler)
    return workdir, "\n".join(lines)


def test_a_run_off_a_terminal_reports_each_stage_and_its_counts(uninterrupted):
    _, log = uninterrupted
    for stage in ("sharer writes", "sharer summarises", "receiver answers", "latency"):
        assert f"{stage}: started" in log and f"{stage}: finished" in log, stage
    # progress_every=0: a line after every batch, with the counts.
    assert "receiver answers: 2/6 questions" in log and "receiver answers: 4/6 questions" in log
    assert "9 conditions each" in log


def test_progress_lines_come_on_time_while_a_unit_takes_long(caplog):
    import time

    from lcf_jax.progress import Progress

    with caplog.at_level(logging.INFO, logger="lcf_jax"), Progress("slow", 3, mode="lines", every=0.2) as bar:
        time.sleep(0.7)  # one unit taking longer than several intervals
        bar.update(1)
    messages = [r.getMessage() for r in caplog.records]
    assert messages[0] == "slow: started, 3 questions"
    assert sum(m.startswith("slow: 0/3 questions") for m in messages) >= 2
    assert messages[-1].startswith("slow: finished, 1/3 questions")


@pytest.mark.slow
@pytest.mark.parametrize("kill_after", ["messages", "answers", "latency"])
def test_killed_run_continues_to_the_same_results(setup, uninterrupted, tmp_path, kill_after, caplog):
    reference, _ = uninterrupted
    killed_child("eval", str(tmp_path), "--kill-after", kill_after)
    assert not (tmp_path / "results.json").exists()
    recorded = {"messages": R.MESSAGES_FILE, "answers": R.ANSWERS_FILE, "latency": R.LATENCY_FILE}[kill_after]
    assert (tmp_path / recorded).read_text().strip()  # something was kept
    with caplog.at_level(logging.INFO, logger="lcf_jax"):
        evaluate(setup, QUESTIONS, tmp_path, latency_questions=2)  # the same evaluation, again
    assert "continuing the evaluation" in caplog.text
    assert scores(tmp_path) == scores(reference)
    assert (tmp_path / "answers.jsonl").read_text() == (reference / "answers.jsonl").read_text()


@pytest.mark.slow
def test_killed_demo_evaluation_continues(tmp_path, capsys, caplog):
    cut = tmp_path / "cut"
    killed_child("demo", str(cut), "--kill-after", "answers")  # trained, then killed in its evaluation
    assert (cut / "lcfx" / "adapter").is_dir() and (cut / R.ANSWERS_FILE).read_text().strip()
    # The reference: the same trained adapters evaluated without a stop.
    whole = tmp_path / "whole"
    shutil.copytree(cut / "lcfx", whole / "lcfx")
    models = tiny_text_models()
    demo(whole, config=tiny_demo_config(), models=models, progress=False)
    with caplog.at_level(logging.INFO, logger="lcf_jax"):
        demo(cut, config=tiny_demo_config(), models=models, progress=False)
    assert "reusing the lcfx adapter" in capsys.readouterr().err and "continuing the evaluation" in caplog.text
    assert scores(cut) == scores(whole)
    assert (cut / "answers.jsonl").read_text() == (whole / "answers.jsonl").read_text()


def test_a_line_cut_off_by_a_kill_is_dropped(tmp_path):
    record = R.RunRecord(tmp_path, {"questions": "a"})
    record.add_answers([{"id": "q0", "x": "one"}, {"id": "q1", "x": "two"}])
    with (tmp_path / R.ANSWERS_FILE).open("a") as f:
        f.write('{"id": "q2", "x": "thr')  # the kill came mid-write
    again = R.RunRecord(tmp_path, {"questions": "a"})
    assert sorted(again.answers) == ["q0", "q1"]
    again.add_answers([{"id": "q2", "x": "three"}])
    assert sorted(R.RunRecord(tmp_path, {"questions": "a"}).answers) == ["q0", "q1", "q2"]


def test_a_work_directory_of_another_evaluation_is_refused_or_restarted(tmp_path):
    R.RunRecord(tmp_path, {"questions": "a", "adapters": "x"}).add_answers([{"id": "q0"}])
    with pytest.raises(R.RunMismatchError, match="other adapters.*--restart"):
        R.RunRecord(tmp_path, {"questions": "a", "adapters": "y"})
    fresh = R.RunRecord(tmp_path, {"questions": "a", "adapters": "y"}, restart=True)
    assert not fresh.answers and not fresh.resumed
