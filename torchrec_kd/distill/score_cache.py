"""On-disk cache of teacher outputs, keyed by row of the training stream.

At step ``s`` the global batch has ``G`` rows and rank ``r`` of ``W`` holds rows
``[r*L, (r+1)*L)`` (``L = G // W``); a row's key is ``s*G + r*L + j``. The stream is the
same for any ``W``, so a cache written by 2 ranks is read by 1 or 4.

Layout of ``<dir>``::

    manifest.json                       written last, by rank 0: the cache is complete
    rank{r}-of-{W}.{field}.npy          writer rank r's rows: file row s*L + j = global row s*G + r*L + j
    rank{r}-of-{W}.digest.npy           [steps, 4] float64 digest of writer rank r's rows of each step

Fields are ``.npy`` memmaps, so writing or reading one step touches only its rows.
A reader checks the manifest against what the run expects (format version, batch size,
steps, fields, fingerprint, file sizes) and each batch's data digest against the stored
one, and refuses with a :class:`~torchrec_kd.errors.CacheError` naming what differs.

Example::

    spec = CacheSpec(steps=300, global_batch=2048, fields={"logits": ()}, fingerprint={"seed": 0})
    w = ScoreCacheWriter(path, spec, rank, world_size)
    w.write(step, {"logits": logits}, batch_digest(dense, kjt.values(), kjt.lengths(), labels))
    w.flush(); dist.barrier(); write_manifest(path, spec, world_size, steps)   # rank 0
    reader = open_cache(path, {"seed": 0}, steps=300, global_batch=2048, fields=["logits"])
    outputs, digest = reader.read(step, rank, world_size)
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Tuple

import numpy as np
import torch
from torch import Tensor

from torchrec_kd.errors import CacheError

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
RERUN = "re-run score-teacher with this config"


@dataclass
class CacheSpec:
    """What a cache holds.

    Args:
        steps (int): training steps scored.
        global_batch (int): rows per step across ranks.
        fields (Dict[str, Tuple[int, ...]]): per-row shape of each stored output.
        dtypes (Dict[str, str]): numpy dtype per field (default float32; float16 halves disk).
        fingerprint (Dict[str, Any]): JSON facts a run must match (teacher, data, seed).
    """

    steps: int
    global_batch: int
    fields: Dict[str, Tuple[int, ...]]
    dtypes: Dict[str, str] = field(default_factory=dict)
    fingerprint: Dict[str, Any] = field(default_factory=dict)

    def dtype(self, name: str) -> str:
        return self.dtypes.get(name, "float32")


def batch_digest(dense: Tensor, sparse_values: Tensor, sparse_lengths: Tensor, labels: Tensor) -> Tensor:
    """A cheap float64 [4] digest of a local batch, additive over rows.

    Sums of labels, dense values, ids and id counts: a different data source, seed, split
    or batch boundary changes them (with overwhelming odds on real data). Being plain
    sums, the digest of a batch is the sum of its parts' digests, so readers with another
    world size can check the union of the writer ranks' rows.

    Args:
        dense (Tensor): [B, num_dense].
        sparse_values (Tensor): the KJT's values.
        sparse_lengths (Tensor): the KJT's lengths.
        labels (Tensor): [B].

    Returns:
        Tensor: float64 [4].
    """
    return torch.stack([labels.double().sum(), dense.double().sum(), sparse_values.double().sum(),
                        sparse_lengths.double().sum()])


def check_digest(expected: Optional[Tensor], actual: Tensor, path: Path, step: int, rank: int) -> None:
    """Refuse a batch whose data digest differs from the one stored for its rows.

    Args:
        expected (Optional[Tensor]): the stored digest (None: not comparable, skipped).
        actual (Tensor): the batch's :func:`batch_digest`.
        path (Path): the cache (for the message).
        step (int): the step.
        rank (int): the reading rank.

    Raises:
        CacheError: the digests differ beyond a relative 1e-6.
    """
    if expected is None:
        return
    if not torch.allclose(expected.double(), actual.double().cpu(), rtol=1e-6, atol=1e-6):
        raise CacheError(f"teacher-score cache {path} was made from different data: step {step} rank {rank} digest "
                          f"{expected.tolist()} != this run's {actual.tolist()}; {RERUN} on this data")


def _file(path: Path, rank: int, world_size: int, name: str) -> Path:
    return Path(path) / f"rank{rank}-of-{world_size}.{name}.npy"


class ScoreCacheWriter:
    """One rank's writer.

    Args:
        path (Path): the cache directory (created).
        spec (CacheSpec): what is stored.
        rank (int): this rank.
        world_size (int): ranks writing.
    """

    def __init__(self, path: Path, spec: CacheSpec, rank: int, world_size: int) -> None:
        if spec.global_batch % world_size:
            raise ValueError(f"global batch {spec.global_batch} is not divisible by {world_size} ranks")
        self.path, self.spec, self.rank, self.world_size = Path(path), spec, rank, world_size
        self.local = spec.global_batch // world_size
        self.path.mkdir(parents=True, exist_ok=True)
        if rank == 0 and (self.path / MANIFEST).exists():
            (self.path / MANIFEST).unlink()  # being rewritten: incomplete until the new manifest lands
        rows = spec.steps * self.local
        self.arrays = {name: np.lib.format.open_memmap(_file(self.path, rank, world_size, name), mode="w+",
                                                       dtype=spec.dtype(name), shape=(rows, *shape))
                       for name, shape in spec.fields.items()}
        self.digests = np.lib.format.open_memmap(_file(self.path, rank, world_size, "digest"), mode="w+",
                                                 dtype="float64", shape=(spec.steps, 4))

    def write(self, step: int, outputs: Dict[str, Tensor], digest: Tensor) -> None:
        """Store this rank's rows of ``step``.

        Args:
            step (int): 0-based step.
            outputs (Dict[str, Tensor]): every field, each [L, *shape].
            digest (Tensor): :func:`batch_digest` of this rank's batch.
        """
        if not 0 <= step < self.spec.steps:
            raise ValueError(f"step {step} is outside the cache's {self.spec.steps} steps")
        if set(outputs) != set(self.spec.fields):
            raise ValueError(f"fields {sorted(outputs)} differ from the cache's {sorted(self.spec.fields)}")
        lo = step * self.local
        for name, value in outputs.items():
            want = (self.local, *self.spec.fields[name])
            if tuple(value.shape) != want:
                raise ValueError(f"field '{name}': shape {tuple(value.shape)}, expected {want}")
            self.arrays[name][lo: lo + self.local] = value.detach().cpu().numpy()
        self.digests[step] = digest.detach().double().cpu().numpy()

    def flush(self) -> None:
        """Write everything to disk (each rank, before the barrier that precedes the manifest)."""
        for arr in [*self.arrays.values(), self.digests]:
            arr.flush()


def write_manifest(path: Path, spec: CacheSpec, world_size: int, steps_written: int) -> None:
    """Mark the cache complete (rank 0, after every rank flushed); atomic replace."""
    path = Path(path)
    names = [*spec.fields, "digest"]
    files = {_file(path, r, world_size, n).name: _file(path, r, world_size, n).stat().st_size
             for r in range(world_size) for n in names}
    manifest = {"version": FORMAT_VERSION, "steps": spec.steps, "global_batch": spec.global_batch,
                "fields": {k: list(v) for k, v in spec.fields.items()},
                "dtypes": {k: spec.dtype(k) for k in spec.fields}, "world_size": world_size,
                "fingerprint": spec.fingerprint, "steps_written": steps_written, "files": files}
    tmp = path / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=2, sort_keys=True))
    os.replace(tmp, path / MANIFEST)


class ScoreCacheReader:
    """Reads any rank's rows of any step, whatever the writers' world size.

    Args:
        path (Path): the cache directory.
        manifest (Dict[str, Any]): its validated manifest.
        fields (List[str]): fields to read.
    """

    def __init__(self, path: Path, manifest: Dict[str, Any], fields: List[str]) -> None:
        self.path, self.manifest, self.fields = Path(path), manifest, fields
        self.world_size = manifest["world_size"]
        self.global_batch = manifest["global_batch"]
        self.local = self.global_batch // self.world_size
        self.arrays = [{n: np.load(_file(path, r, self.world_size, n), mmap_mode="r") for n in fields}
                       for r in range(self.world_size)]
        self.digests = [np.load(_file(path, r, self.world_size, "digest"), mmap_mode="r")
                        for r in range(self.world_size)]

    def read(self, step: int, rank: int, world_size: int) -> Tuple[Dict[str, Tensor], Optional[Tensor]]:
        """The reader rank's rows of ``step``.

        Args:
            step (int): 0-based step.
            rank (int): the reading rank.
            world_size (int): ranks of the reading run.

        Returns:
            Tuple[Dict[str, Tensor], Optional[Tensor]]: float32 outputs per field, and the
            stored digest of exactly these rows (None when they do not cover whole writer blocks).
        """
        if self.global_batch % world_size:
            raise CacheError(f"teacher-score cache {self.path}: global batch {self.global_batch} is not divisible "
                              f"by {world_size} ranks")
        size = self.global_batch // world_size
        lo, hi = rank * size, (rank + 1) * size  # within the global batch
        pieces: Dict[str, List[np.ndarray]] = {n: [] for n in self.fields}
        digest = np.zeros(4)
        whole = lo % self.local == 0 and hi % self.local == 0
        for w in range(lo // self.local, (hi - 1) // self.local + 1):
            a, b = max(lo, w * self.local) - w * self.local, min(hi, (w + 1) * self.local) - w * self.local
            base = step * self.local
            for n in self.fields:
                pieces[n].append(self.arrays[w][n][base + a: base + b])
            digest += self.digests[w][step]
        out = {n: torch.from_numpy(np.concatenate(p).astype(np.float32, copy=False)) for n, p in pieces.items()}
        return out, torch.from_numpy(digest) if whole else None


def open_cache(path: Path, fingerprint: Dict[str, Any], steps: int, global_batch: int,
               fields: Iterable[str]) -> ScoreCacheReader:
    """Open a complete cache that matches the run, or refuse naming what differs.

    Args:
        path (Path): the cache directory.
        fingerprint (Dict[str, Any]): facts the cache must have been made with.
        steps (int): steps the run reads.
        global_batch (int): the run's global batch size.
        fields (Iterable[str]): fields the run needs.

    Returns:
        ScoreCacheReader: ready to read.

    Raises:
        CacheError: missing or incomplete cache, or any mismatch.
    """
    path = Path(path)
    fields = list(fields)
    mf = path / MANIFEST
    if not mf.is_file():
        why = "does not exist" if not path.exists() else "has no manifest.json: the scoring run did not finish"
        raise CacheError(f"teacher-score cache {path} {why}; {RERUN} (or set distill.teacher_scores)")
    m = json.loads(mf.read_text())
    if m.get("version") != FORMAT_VERSION:
        raise CacheError(f"teacher-score cache {path} has format version {m.get('version')}, this code reads "
                          f"{FORMAT_VERSION}; {RERUN}")
    if m["global_batch"] != global_batch:
        raise CacheError(f"teacher-score cache {path} was scored with global batch {m['global_batch']}, this run uses "
                          f"{global_batch}; {RERUN}")
    if m["steps_written"] < steps:
        raise CacheError(f"teacher-score cache {path} holds {m['steps_written']} steps, this run needs {steps}; {RERUN}")
    missing = [f for f in fields if f not in m["fields"]]
    if missing:
        raise CacheError(f"teacher-score cache {path} has no {missing} (it has {sorted(m['fields'])}), which the "
                          f"configured loss terms need; {RERUN}")
    for key in sorted(set(fingerprint) | set(m["fingerprint"])):
        have, want = m["fingerprint"].get(key), fingerprint.get(key)
        if have != want:
            raise CacheError(f"teacher-score cache {path} was made with {key}={json.dumps(have)} but this run has "
                              f"{key}={json.dumps(want)}; {RERUN}")
    for name, size in m["files"].items():
        f = path / name
        if not f.is_file() or f.stat().st_size != size:
            got = f.stat().st_size if f.is_file() else "missing"
            raise CacheError(f"teacher-score cache {path}: {name} is {got} bytes, the manifest says {size} "
                              f"(truncated or replaced); {RERUN}")
    return ScoreCacheReader(path, m, fields)
