"""The main job's pipeline end to end in a tiny configuration: train both adapters, reuse them on a
second run, evaluate every condition and write the report files."""

from __future__ import annotations

import json

from tiny_pair import tiny_text_models

from lcf_jax.demo import demo
from lcf_jax.train.defaults import demo_config


def tiny_demo_config():
    config = demo_config()
    config.adapter.options.latent_width = 8
    config.data.count = 16
    config.data.bucket = 64
    config.train.batch_size = 8  # the tests run on 8 fake devices
    config.train.steps = 2
    config.train.anneal_steps = 2
    config.checkpoint.async_save = False
    config.eval.count = 4
    config.eval.latency_questions = 2
    config.eval.batch_size = 4
    config.eval.budgets = (6, 12)
    return config


def test_demo_trains_reuses_and_reports(tmp_path, capsys):
    models = tiny_text_models()
    results = demo(tmp_path, config=tiny_demo_config(), models=models, progress=False)
    names = {r.name for r in results}
    assert {"question_only", "half_context", "full_context", "text_6", "text_12", "lcfx"} <= names
    assert {"mismatched_message", "empty_message", "receiver_only"} <= names
    data = json.loads((tmp_path / "results.json").read_text())
    assert set(data) == {"conditions", "meta"}
    for name, row in data["conditions"].items():
        assert {"f1", "em", "ttft_ms", "n"} <= set(row) and row["n"] == 4, name
        assert 0 <= row["f1"] <= 100 and row["ttft_ms"] > 0
    assert data["conditions"]["lcfx"]["message_bytes"] > 0
    assert (tmp_path / "f1_vs_ttft.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert len((tmp_path / "answers.jsonl").read_text().splitlines()) == 4
    for adapter in ("adapter", "control_adapter"):
        assert (tmp_path / "lcfx" / adapter / "adapter.safetensors").exists()
    assert "| lcfx |" in capsys.readouterr().out
    # A second run reuses both adapters instead of training again.
    before = (tmp_path / "lcfx" / "adapter" / "adapter.safetensors").stat().st_mtime_ns
    demo(tmp_path, config=tiny_demo_config(), models=models, progress=False)
    assert (tmp_path / "lcfx" / "adapter" / "adapter.safetensors").stat().st_mtime_ns == before
    err = capsys.readouterr().err
    assert "reusing the lcfx adapter" in err and "reusing the receiver-only control" in err
