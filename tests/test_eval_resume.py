"""Nothing lost when an evaluation dies: a run killed with SIGKILL at several points, then run
again on the same work directory, writes the answers and scores of a run that never stopped; a run
piped to a file says where it is; a work directory of another evaluation is refused."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from lcf_jax.eval import record as R

CHILD = [sys.executable, str(Path(__file__).parent / "eval_child.py")]
TIMED = ("ttft_ms", "answer_ms")  # measured times: two runs never agree on them


def child(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "TQDM_DISABLE": "1"}
    return subprocess.run([*CHILD, *args], capture_output=True, text=True, timeout=600, env=env)


def scores(workdir: Path) -> dict:
    data = json.loads((workdir / "results.json").read_text())["conditions"]
    return {name: {k: v for k, v in row.items() if k not in TIMED} for name, row in data.items()}


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("whole")
    run = child("eval", str(workdir))
    assert run.returncode == 0, run.stderr
    return workdir, run.stderr


def test_a_run_piped_to_a_file_reports_each_stage_and_its_counts(uninterrupted):
    _, log = uninterrupted
    for stage in ("sharer writes", "sharer summarises", "receiver answers", "latency"):
        assert f"{stage}: started" in log and f"{stage}: finished" in log, stage
    # progress_every=0: a line after every batch, with the counts.
    assert "receiver answers: 2/6 questions" in log and "receiver answers: 4/6 questions" in log
    assert "9 conditions each" in log


@pytest.mark.slow
@pytest.mark.parametrize("kill_after", ["messages", "answers", "latency"])
def test_killed_run_continues_to_the_same_results(uninterrupted, tmp_path, kill_after):
    reference, _ = uninterrupted
    killed = child("eval", str(tmp_path), "--kill-after", kill_after)
    assert killed.returncode == -9, killed.stderr  # died by SIGKILL, mid-way
    assert not (tmp_path / "results.json").exists()
    recorded = {"messages": R.MESSAGES_FILE, "answers": R.ANSWERS_FILE, "latency": R.LATENCY_FILE}[kill_after]
    assert (tmp_path / recorded).read_text().strip()  # something was kept
    again = child("eval", str(tmp_path))
    assert again.returncode == 0, again.stderr
    assert "continuing the evaluation" in again.stderr
    assert scores(tmp_path) == scores(reference)
    assert (tmp_path / "answers.jsonl").read_text() == (reference / "answers.jsonl").read_text()


@pytest.mark.slow
def test_killed_demo_evaluation_continues(tmp_path):
    whole = tmp_path / "whole"
    assert child("demo", str(whole)).returncode == 0
    cut = tmp_path / "cut"
    assert child("demo", str(cut), "--kill-after", "answers").returncode == -9
    again = child("demo", str(cut))
    assert again.returncode == 0, again.stderr
    assert "reusing the lcfx adapter" in again.stderr and "continuing the evaluation" in again.stderr
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
