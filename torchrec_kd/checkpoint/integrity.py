"""Sizes and sha256 of the files an artifact is made of, recorded when written, checked when read.

Checkpoints (final models and training state) and exports record every file; loading
refuses one whose bytes changed, naming the file and what to do, before anything is
deserialised.

Example::

    records = file_records(path / "model")
    verify_files(path / "model", records, "re-run train-teacher")
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, Dict, Iterable, Mapping

from torchrec_kd.errors import CorruptArtifactError


def sha256_file(path: Path) -> str:
    """The hex sha256 of a file, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def file_records(root: Path, exclude: Iterable[str] = ()) -> Dict[str, Dict[str, Any]]:
    """``{relative path: {"bytes", "sha256"}}`` of every file under ``root`` but the excluded names."""
    root = Path(root)
    skip = set(exclude)
    return {str(p.relative_to(root)): {"bytes": p.stat().st_size, "sha256": sha256_file(p)}
            for p in sorted(root.rglob("*")) if p.is_file() and p.name not in skip}


def verify_files(root: Path, records: Mapping[str, Mapping[str, Any]], what_to_do: str) -> None:
    """Check every recorded file under ``root`` is there with its recorded size and hash.

    Args:
        root (Path): the directory the records are relative to.
        records (Mapping[str, dict]): from :func:`file_records`.
        what_to_do (str): the advice that ends the error (e.g. "re-run quantize").

    Raises:
        CorruptArtifactError: a file is missing, truncated or altered.
    """
    root = Path(root)
    for rel, want in records.items():
        f = root / rel
        if not f.is_file():
            raise CorruptArtifactError(f"{f}: missing; {what_to_do}")
        size = f.stat().st_size
        if size != want["bytes"] or sha256_file(f) != want["sha256"]:
            raise CorruptArtifactError(f"{f}: {size} bytes, expected {want['bytes']} with sha256 "
                                       f"{want['sha256'][:12]}… — truncated or corrupted; {what_to_do}")
