"""The errors a user can fix: one base the CLI turns into a one-line message and exit code 2.

Everything the user controls (config, data, checkpoints and exports on disk, the offline
score cache, the output directory) fails with a :class:`UserError` subclass whose message
names the file, key or line and says what to do. Anything else is a bug and keeps its
traceback.

Example::

    try:
        run(cfg)
    except UserError as e:   # what torchrec_kd.cli does
        print(f"error: {e}", file=sys.stderr); sys.exit(2)
"""

from __future__ import annotations

import pickle


class UserError(Exception):
    """Bad input the user can fix; the message says where and what to do."""


class ConfigError(UserError, ValueError):
    """A config file, override or command-line argument is invalid (or the output directory is unusable)."""


class DataError(UserError):
    """Input data is unusable (bad row with ``on_bad_row: error``, missing file or column, empty split)."""


class CheckpointError(UserError):
    """A checkpoint or export is missing, from another run, or does not fit this config."""


class CorruptArtifactError(CheckpointError):
    """An artifact's files do not match what was recorded when it was written."""


class UnsafeCheckpointError(CheckpointError, pickle.UnpicklingError):
    """A checkpoint's metadata is unreadable or asks to build something outside the allow-list."""


class CacheError(UserError):
    """The offline teacher-score cache is missing, incomplete or was made for other inputs."""
