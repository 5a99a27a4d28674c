"""bench/gpu.sh end to end at tiny shapes on the CPU: the script the GPU run depends on must run through
every section, report numbers for each, and write its JSON, table and log."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SECTIONS = ("floors", "parity", "models_jax", "ttft", "train", "models_torch")


@pytest.mark.slow
def test_gpu_script_tiny_runs_every_section(tmp_path):
    out = tmp_path / "out"
    env = {
        **os.environ,
        "OUT": str(out),
        "PYTHON": sys.executable,
        "JAX_PLATFORMS": "cpu",
        "XLA_FLAGS": "",  # not conftest's 8 fake devices: the script benchmarks one device
    }
    result = subprocess.run(
        ["bash", str(ROOT / "bench" / "gpu.sh"), "--tiny", "--budget-s", "600"],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,  # the script finds the repository from its own path
        timeout=900,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]

    report = json.loads((out / "gpu_bench.json").read_text())
    assert report["finished"]
    env_record = report["environment"]
    for key in ("device", "date", "versions", "command"):
        assert env_record[key], key
    assert "jax" in env_record["versions"] and "--tiny" in env_record["command"]
    assert list(report["sections"]) == list(SECTIONS)
    for name, section in report["sections"].items():
        assert section["status"] in ("ok", "skipped"), (name, section.get("error"), section.get("traceback"))
        if section["status"] == "skipped":  # only PyTorch may be missing (no torch, or no CUDA beside a GPU)
            assert name in ("parity", "models_torch") and section["reason"], name
            continue
        assert section["rows"], name
        numbers = [r["value"] for r in section["rows"] if isinstance(r["value"], int | float)]
        assert numbers and all(math.isfinite(v) for v in numbers), name
    assert not report["summary"]["errors"]

    sections = report["sections"]
    # Correctness and no-recompile checks hold at any size.
    assert all(r["verdict"] == "pass" for r in sections["parity"]["rows"] if r["verdict"]) or (
        sections["parity"]["status"] == "skipped"
    )
    checks = [r for s in sections.values() for r in s.get("rows", []) if "compilations" in r["measurement"]]
    assert checks and all(r["value"] == 0 for r in checks)
    ttft = sections["ttft"]["details"]["conditions"]
    for name in ("lcfx", "lcf", "c2c", "text_5", "text_20", "receiver_alone"):
        assert ttft[name]["ttft_s"] > 0, name
    assert set(ttft["lcfx"]["stages_s"]) == {
        "sharer_prefill",
        "summary",
        "transfer",
        "receiver_prefill",
        "receiver_apply",
        "first_token",
    }
    flops = sections["train"]["details"]["model_flops"]
    assert flops["total"] == sum(v for k, v in flops.items() if k != "total")

    table = (out / "gpu_bench.md").read_text()
    assert "| section | measurement |" in table and "TTFT" in table and "MFU" in table
    log = (out / "gpu_bench.log").read_text()
    assert "== floors" in log and "done in" in log and "exit status 0" in log
