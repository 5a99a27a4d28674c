"""Experiment configs: `configs/<name>.py` files whose `get_config(arg)` returns an
`ml_collections.ConfigDict`, loaded as `path[:arg]` with `--config.key=value` overrides.

The config is locked after loading, so an override of a key that does not exist is an error that
lists the valid keys, and a value is converted to the type the key already has.
"""

from __future__ import annotations

import ast
import importlib.util
import json
import os
from collections.abc import Sequence
from pathlib import Path

import ml_collections

from lcf_jax.errors import ConfigError
from lcf_jax.json_values import excerpt


def flat_keys(config: ml_collections.ConfigDict, prefix: str = "") -> list[str]:
    keys = []
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, ml_collections.ConfigDict):
            keys += flat_keys(value, name + ".")
        else:
            keys.append(name)
    return sorted(keys)


def load_config(
    spec: str | os.PathLike, overrides: Sequence[str] = (), *, defaults: ml_collections.ConfigDict | None = None
) -> ml_collections.ConfigDict:
    """Load `configs/x.py`, `configs/x.py:arg` or the `config.json` a `lcf train` run wrote, then
    apply `key=value` overrides. A JSON config must be an object; given `defaults` (for training
    runs, `lcf_jax.train.defaults.base_config()`), each of its values must have their type."""
    if str(spec).endswith(".json"):
        try:
            data = json.loads(Path(spec).read_text())
        except (OSError, ValueError) as e:  # ValueError: not JSON (JSONDecodeError), or not UTF-8 text
            raise ConfigError(f"cannot read the config {spec} ({type(e).__name__}: {e})") from None
        problem = saved_config_problem(data, ml_collections.ConfigDict() if defaults is None else defaults)
        if problem:
            raise ConfigError(
                f"the config {spec} cannot be used: {problem}; pass the experiment config the run was trained with "
                "(--config configs/NAME.py[:ARG])"
            )
        config = ml_collections.ConfigDict(data)
        config.lock()
        for override in overrides:
            apply_override(config, override)
        return config
    path_text, _, arg = str(spec).partition(":")
    path = find_config(path_text)
    module_spec = importlib.util.spec_from_file_location(f"lcf_config_{path.stem}", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    if not hasattr(module, "get_config"):
        raise ConfigError(f"{path} has no get_config(arg) function")
    config = module.get_config(arg) if arg else module.get_config()
    config.lock()
    for override in overrides:
        apply_override(config, override)
    return config


# Parts of a saved config whose keys are the recipe's own (a model architecture, adapter options).
FREE_FORM = ("sharer_arch", "receiver_arch", "adapter.options")


def saved_config_problem(data, defaults: ml_collections.ConfigDict, prefix: str = "") -> str | None:
    """What is wrong with a saved config (parsed JSON) against `defaults` (for a training run, the
    defaults every recipe starts from, `base_config`): a JSON object where they hold one, and each of
    their values of the same type, so a damaged file is refused here rather than failing deep in
    training or evaluation. Keys they lack (a recipe's own) are not checked, nor keys missing from the
    file (a config saved before the key existed: readers fall back on the old behaviour)."""
    if not isinstance(data, dict):
        return f"{prefix.rstrip('.') or 'it'} is {excerpt(data)}, expected a JSON object"
    for key, default in defaults.items():
        if key not in data:
            continue
        name, value = prefix + key, data[key]
        if isinstance(default, ml_collections.ConfigDict):  # a section: checked key by key (FREE_FORM: its type)
            empty = ml_collections.ConfigDict()
            problem = saved_config_problem(value, empty if name in FREE_FORM else default, name + ".")
            if problem:
                return problem
        elif not _same_type(value, default):
            return f"{name} is {excerpt(value)}, expected {_TYPE_NAMES[type(default)]}"
    return None


_TYPE_NAMES = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}


def _same_type(value, default) -> bool:
    """Whether a JSON value can stand where the defaults hold `default` (an int where a float goes too)."""
    if isinstance(default, bool) or isinstance(value, bool):
        return isinstance(value, bool) and isinstance(default, bool)
    if isinstance(default, float):
        return isinstance(value, int | float)
    return isinstance(value, type(default))


# The shipped recipes (configs/ at the top of the repository, linked into the package as
# lcf_jax/configs so that a pip-installed lcf_jax has them too).
SHIPPED = Path(__file__).resolve().parent / "configs"


def shipped_configs() -> list[str]:
    return sorted(p.stem for p in SHIPPED.glob("*.py") if p.stem != "__init__")


def find_config(path_text: str) -> Path:
    """A config file: the path if it exists, else a shipped recipe named by it (`paper_lcfx`, or
    `configs/paper_lcfx.py` outside a clone)."""
    path = Path(path_text)
    if path.exists():
        return path
    name = path.stem if path.suffix == ".py" and path.parent.name in ("configs", "") else path_text
    if "/" not in name and (SHIPPED / f"{name}.py").exists():
        return SHIPPED / f"{name}.py"
    raise ConfigError(f"no config file at {path}; shipped configs (by name): {', '.join(shipped_configs())}")


def _convert(text: str, current):
    if isinstance(current, bool):
        if text.lower() in ("true", "1", "yes"):
            return True
        if text.lower() in ("false", "0", "no"):
            return False
        raise ConfigError(f"expected true or false, got {text!r}")
    if isinstance(current, int):
        return int(text)
    if isinstance(current, float):
        return float(text)
    if isinstance(current, str):
        return text
    try:  # None, tuples, lists, dicts: a Python literal
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def apply_override(config: ml_collections.ConfigDict, override: str) -> None:
    """Apply one `key.path=value` (a leading `config.` or `--config.` is accepted)."""
    key, sep, text = override.removeprefix("--").removeprefix("config.").partition("=")
    if not sep:
        raise ConfigError(f"override {override!r} is not key=value")
    if key not in flat_keys(config):
        raise ConfigError(f"unknown config key {key!r}; valid keys: {', '.join(flat_keys(config))}")
    parent = config
    *parents, last = key.split(".")
    for name in parents:
        parent = parent[name]
    try:
        value = _convert(text, parent[last])
        with parent.unlocked():
            parent[last] = value
    except (ValueError, TypeError) as e:
        raise ConfigError(f"bad value for {key}: {e}") from None
