"""The user-facing exception types: bad input a user can fix (a path, a file, a config value, a
model pair). Each message names the problem and the fix; `lcf` prints a `UserError` (and a missing
file) as one line, and lets every other exception, a bug, keep its traceback.

All are `ValueError`s (except `ModelNotAvailableError`, a `FileNotFoundError`), so callers that
caught `ValueError` keep working. This module imports nothing: `lcf_jax.torch` uses it without JAX.
"""

from __future__ import annotations


class UserError(ValueError):
    """Input that cannot be used as given; the message says what to change."""


class ConfigError(UserError):
    """A config file, argument, option or override that cannot be used; names it and the fix."""


class DataError(UserError):
    """A data file that cannot be read as documented; names the file, the line and the fix."""


class CheckpointError(UserError):
    """A checkpoint whose tensors do not fit the architecture (missing, extra, wrong shape, corrupt)."""


class AdapterFormatError(UserError):
    """An export that cannot be used: a bad config, a missing or misshapen tensor, or an adapter
    built for other models (raised by `lcf_jax.torch`)."""


class UnsupportedArchitectureError(UserError):
    """A checkpoint whose architecture or settings lcf_jax does not implement."""


class ShardingError(UserError):
    """A mesh or logical-axis layout that cannot work."""


class RunMismatchError(UserError):
    """The work directory holds an evaluation of something else."""


class ContextTooLongError(UserError):
    """Questions whose prompts do not fit the models' positions (or the configured cap)."""


class ModelNotAvailableError(FileNotFoundError):
    """A registered model whose files are not installed and cannot be fetched."""
