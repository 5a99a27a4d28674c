"""The paper-scale LCF-X run (configs/smollm2_lcfx_scale.py, scripts/lcfx_scale.sh) on its tiny
variant: the real SmolLM2 pair trains 2 steps of the "fixed" recipe and is evaluated with every
control on 2 questions, through the script a GPU user runs. A check of the path, not a result."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from lcf_jax.config import load_config

ROOT = Path(__file__).resolve().parents[1]


def test_the_scale_config_is_the_papers_size_and_recipes_differ_only_where_the_paper_is_silent():
    paper, fixed = (load_config(f"{ROOT}/configs/smollm2_lcfx_scale.py:{r}") for r in ("paper", "fixed"))
    assert (paper.train.batch_size, paper.train.steps, paper.data.count) == (256, 276, 276 * 256)
    assert paper.train.learning_rate == 1e-4 and paper.adapter.options.latent_width == 128
    assert paper.train.bypass_weight == 0.0 and paper.train.pool_lr_scale == 1.0
    assert paper.train.distill_weight == 0.0 and fixed.train.distill_weight > 0
    assert "up_init" not in paper.adapter.options and fixed.adapter.options.up_init == "zeros"
    assert "message_norm" not in paper.adapter.options and fixed.adapter.options.message_norm == "standardize"
    with pytest.raises(ValueError, match="takes 'paper' or 'fixed'"):
        load_config(f"{ROOT}/configs/smollm2_lcfx_scale.py:huge")


@pytest.mark.real_model
@pytest.mark.slow
def test_the_tiny_scale_run_trains_and_evaluates_every_control(tmp_path):
    run = subprocess.run(
        ["bash", str(ROOT / "scripts/lcfx_scale.sh"), str(tmp_path / "run"), "fixed,tiny", "2", "0"],
        capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    results = json.loads((tmp_path / "run" / "eval" / "results.json").read_text())["conditions"]
    for name in ("lcfx", "mismatched_message", "empty_message", "receiver_only", "kv_share_32", "text_200"):
        assert results[name]["n"] == 2, name
    assert results["lcfx"]["delta_vs_mismatched"] is not None
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["steps"] == 2 and "bypass" in summary["final"] and "distill" in summary["final"]
