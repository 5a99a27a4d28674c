"""What `lcf train` and `lcf demo` leave in a work directory, and where a trained adapter lives in
what the user points at: an adapter directory, a `lcf train` or `lcf demo` work directory, or Orbax
checkpoints (a `checkpoints` folder or one numbered step in it).

    adapter directory    adapter_config.json + adapter.safetensors
    lcf train workdir    adapter/ (written when training ends), control_adapter/ (adapter.with_control:
                         the receiver-only control), checkpoints/<step>/, config.json, summary.json
    lcf demo workdir     lcfx/, a `lcf train` work directory with its control (runs before 2026-11-28
                         trained the control separately, in receiver_only/)
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

from lcf_jax.adapter_format import CONFIG_FILE
from lcf_jax.errors import DataError

ADAPTER_DIR = "adapter"  # the trained adapter, saved when training ends
CONTROL_DIR = "control_adapter"  # the receiver-only control trained alongside it (adapter.with_control)
CHECKPOINTS_DIR = "checkpoints"  # Orbax checkpoints, one numbered folder per saved step
DEMO_RUN = "lcfx"  # a `lcf demo` work directory's training run
DEMO_CONTROL = "receiver_only"  # where older demo runs trained the control separately
SUMMARY_FILE = "summary.json"  # what a finished `lcf train` reports: {"steps", ...}
RUN_CONFIG = "config.json"  # its config (load_config reads it back)


def adapter_dirs(checkpoint: str | os.PathLike) -> tuple[Path, Path | None]:
    """(adapter directory, receiver-only control directory or None) from an adapter directory, a
    `lcf train` work directory or a `lcf demo` work directory."""
    root = Path(checkpoint)
    for main, controls in (
        (root, ()),
        (root / ADAPTER_DIR, (root / CONTROL_DIR,)),
        (root / DEMO_RUN / ADAPTER_DIR, (root / DEMO_RUN / CONTROL_DIR, root / DEMO_CONTROL / ADAPTER_DIR)),
    ):
        if (main / CONFIG_FILE).exists():
            return main, next((c for c in controls if (c / CONFIG_FILE).exists()), None)
    raise FileNotFoundError(
        f"no adapter under {root}: expected {CONFIG_FILE} there, in {root / ADAPTER_DIR} (a `lcf train` work "
        f"directory) or in {root / DEMO_RUN / ADAPTER_DIR} (a `lcf demo` work directory)"
    )


@dataclasses.dataclass(frozen=True)
class OrbaxLocation:
    """Orbax checkpoints found under a path: the `checkpoints` folder, the step asked for (None:
    the newest), and the run's work directory if it is one (it may hold `config.json`)."""

    checkpoints: Path
    step: int | None
    run: Path | None

    @property
    def is_demo_run(self) -> bool:
        return self.run is not None and self.run.name == DEMO_RUN

    def saved_config(self) -> Path | None:
        """The run's `config.json` (written when `lcf train` ends), if there is one."""
        path = None if self.run is None else self.run / RUN_CONFIG
        return path if path is not None and path.exists() else None


def _is_step(path: Path) -> bool:
    return path.is_dir() and path.name.isdigit() and (path / "state").is_dir()


def _has_steps(path: Path) -> bool:
    return path.is_dir() and any(_is_step(p) for p in path.iterdir())


def find_orbax(checkpoint: str | os.PathLike) -> OrbaxLocation | None:
    """The Orbax checkpoints under `checkpoint`, or None when there are none."""
    root = Path(checkpoint)
    if _is_step(root):
        run = root.parent.parent if root.parent.name == CHECKPOINTS_DIR else None
        return OrbaxLocation(root.parent, int(root.name), run)
    if _has_steps(root):
        return OrbaxLocation(root, None, root.parent if root.name == CHECKPOINTS_DIR else None)
    for run in (root, root / DEMO_RUN):
        if _has_steps(run / CHECKPOINTS_DIR):
            return OrbaxLocation(run / CHECKPOINTS_DIR, None, run)
    return None


def newest_step(checkpoints: Path) -> int | None:
    steps = [int(p.name) for p in checkpoints.iterdir() if _is_step(p)] if checkpoints.is_dir() else []
    return max(steps, default=None)


def write_run_files(run: Path, summary: dict[str, Any], config) -> None:
    """summary.json and config.json, written when `lcf train` finishes (`config` a ConfigDict)."""
    (run / SUMMARY_FILE).write_text(json.dumps(summary, indent=2) + "\n")
    (run / RUN_CONFIG).write_text(config.to_json_best_effort(indent=2) + "\n")


def trained_steps(run: Path) -> int | None:
    """The step count `lcf train` reported when it last finished in `run` (its adapter's step); None
    when it never finished there (no summary.json). A summary.json that does not say is a
    `DataError`: the caller decides what it costs, instead of this guessing that the run never
    finished."""
    path = run / SUMMARY_FILE
    try:
        summary = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:  # ValueError: not JSON (JSONDecodeError), or not UTF-8 text
        raise DataError(f"{path} cannot be read ({type(e).__name__}: {e})") from None
    steps = summary.get("steps") if isinstance(summary, dict) else None
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 0:
        raise DataError(f"{path} does not record the run's step count (a 'steps' integer)")
    return steps
