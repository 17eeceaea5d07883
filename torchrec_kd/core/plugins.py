"""Bring a user's code into a run: ``--plugin my_pkg.kd`` imports a module before the config is checked.

A plugin is a plain Python module that registers model builders
(:func:`torchrec_kd.models.registry.register_model`) and loss terms
(:func:`torchrec_kd.losses.register_loss`) when imported; configs then name them like
built-ins (``student.arch: my_ranker``, ``{name: my_loss, args: {...}}``) and stay data.

Example::

    python -m torchrec_kd.cli distill --plugin my_pkg.kd --config my.yaml
    load_plugins(["my_pkg.kd"])   # the same from Python
"""

from __future__ import annotations

import hashlib
import importlib
import os
import sys
import traceback
from pathlib import Path
from typing import Dict, List, Sequence

from torchrec_kd.errors import ConfigError

_LOADED: List[str] = []


def load_plugins(names: Sequence[str]) -> List[str]:
    """Import each plugin module once, in order.

    Args:
        names (Sequence[str]): dotted module names (importable from the working directory or installed).

    Returns:
        List[str]: every plugin loaded in this process so far.

    Raises:
        ConfigError: a module that cannot be imported (the first line of why), or one that
            fails while registering (its last frame).
    """
    if names and os.getcwd() not in sys.path and "" not in sys.path:  # the `torchrec-kd` script: like python -m
        sys.path.append(os.getcwd())
    for name in names:
        if name in _LOADED:
            continue
        try:
            importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name and name.startswith(e.name):
                raise ConfigError(f"--plugin {name}: no module named '{e.name}'; give an importable module "
                                  "(installed, or a package under the working directory)") from None
            raise ConfigError(f"--plugin {name}: importing it failed: {e}") from None
        except ConfigError:
            raise
        except Exception as e:  # the plugin's own bug: say where, in one line
            frame = traceback.extract_tb(e.__traceback__)[-1]
            raise ConfigError(f"--plugin {name}: importing it failed at {frame.filename}:{frame.lineno}: "
                              f"{type(e).__name__}: {e}") from None
        _LOADED.append(name)
    return list(_LOADED)


def plugin_digests() -> Dict[str, str]:
    """sha256 (16 hex digits) of each loaded plugin's source file: what a result's fingerprint records of them,
    so an edited plugin model or loss term never reuses an artifact the old code made."""
    out: Dict[str, str] = {}
    for name in _LOADED:
        path = getattr(sys.modules.get(name), "__file__", None)
        out[name] = hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16] if path and Path(path).is_file() else "?"
    return out


def loaded_plugins() -> List[str]:
    """The plugin modules loaded in this process (recorded in every checkpoint's meta.json)."""
    return list(_LOADED)
