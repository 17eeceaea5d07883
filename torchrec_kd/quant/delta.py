"""Delta exports: what changed between two exports of one model, so a server patches instead of reloading.

A delta directory holds two files:

* ``payload.bin``: the bytes shipped, back to back (tensor bytes as stored, then the file patches'
  literal bytes zlib-compressed);
* ``delta.json``: where they go, the seal (size and sha256 of ``payload.bin``), the sha256 of the
  *previous* export's ``quantized.json`` it applies to, and the size and sha256 of every file of
  the *new* export (what :func:`apply_delta` must produce).

What is shipped:

* ``weights.pt`` as tensors: for every embedding table, the ids of the rows whose **stored**
  bytes differ (quantized rows with their scale and bias) and those rows' bytes; a table whose
  shape or dtype changed (a pruned table keeping other rows) whole; every other tensor (dense
  weights, the TBE's metadata and pruning remappings) whole when its bytes differ. The file is
  rebuilt with ``torch.save`` (byte-deterministic: the delta is refused at write time if the
  rebuilt file is not the new one byte for byte, and the file is then byte-patched instead);
* every other file that differs (``model.ts``, ``quantized.json``, ``contract.json``, the id remap,
  ``plan.json``) as a byte patch: "copy these bytes of the previous file, these of the payload,
  these of a rebuilt tensor". Re-exporting TorchScript is **not** byte-reproducible (the scripted
  code lists ``Final`` attributes in set order, which follows Python's per-process hash seed), so
  ``model.ts`` is patched, never re-exported; the tables it embeds are found in it and filled from
  the patched tensors, so the rows are not shipped twice. Zip archives (``model.ts``) are compared
  record by record, so a record of another length shifts nothing else.

:func:`apply_delta` checks the base, rebuilds every file and checks each against the new
export's size and sha256 before the output appears (atomically, like an export).

Example::

    info = write_delta(run / "windows/3/export/distilled_int8", run / "windows/4/export/distilled_int8",
                       run / "windows/4/delta")
    info.delta_bytes / info.export_bytes          # e.g. 0.08
    apply_delta(server / "current", run / "windows/4/delta", server / "next")   # == windows/4's export
"""

from __future__ import annotations

import hashlib
import io
import json
import tempfile
import zipfile
import zlib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import Tensor

from torchrec_kd.checkpoint.integrity import file_records, sha256_file, verify_files
from torchrec_kd.core.layout import EXPORT_META_FILE, EXPORT_WEIGHTS_FILE
from torchrec_kd.errors import CheckpointError
from torchrec_kd.quant.export import read_quantized_meta, write_dir_atomically

DELTA_FORMAT = "torchrec_kd.delta/1"
DELTA_FILE = "delta.json"
PAYLOAD_FILE = "payload.bin"
# differing byte runs closer than this are shipped as one run (an op costs about this much)
_MERGE_GAP = 16
# tensors smaller than this are not looked for inside other files (a spurious match would be harmless, but useless)
_MIN_SPAN_BYTES = 256

# ["c", prev_offset, n]: bytes of the previous file; ["p", offset, n]: of the (decompressed) literals;
# ["t", tensor_key, tensor_offset, n]: of a rebuilt tensor of weights.pt
Op = List[Any]


@dataclass
class DeltaInfo:
    """What a delta holds and costs.

    Attributes:
        rows_changed (int): embedding rows shipped (a table shipped whole counts all its rows).
        rows_total (int): embedding rows of the new export.
        delta_bytes (int): bytes of the delta directory's files.
        export_bytes (int): bytes of the new export's files (the full reload it replaces).
        tables (Dict[str, List[int]]): ``{table: [rows changed, rows]}``.
        files (Dict[str, str]): how each file of the new export is rebuilt: ``same`` (copied),
            ``tensors`` (``weights.pt`` from patched tensors), ``patch`` or ``whole``.
    """

    rows_changed: int
    rows_total: int
    delta_bytes: int
    export_bytes: int
    tables: Dict[str, List[int]] = field(default_factory=dict)
    files: Dict[str, str] = field(default_factory=dict)

    def to_json(self) -> Dict[str, Any]:
        """A JSON-able dict of the fields."""
        return asdict(self)


class _Payload:
    """The payload bytes being collected: ``add`` returns where a piece sits."""

    def __init__(self) -> None:
        self.parts: List[bytes] = []
        self.size = 0

    def add(self, data: bytes) -> List[int]:
        self.parts.append(data)
        self.size += len(data)
        return [self.size - len(data), len(data)]


def _tensor_bytes(t: Tensor) -> bytes:
    return t.detach().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()


def _row_bytes(t: Tensor) -> np.ndarray:
    """``[rows, bytes per row]`` uint8 view of a table tensor's stored bytes."""
    flat = t.detach().contiguous().view(torch.uint8) if t.dim() > 1 else t.detach().contiguous().reshape(-1, 1).view(torch.uint8)
    return flat.reshape(t.shape[0], -1).numpy()


def _dtype(name: str) -> torch.dtype:
    dtype = getattr(torch, name, None)
    if not isinstance(dtype, torch.dtype):
        raise CheckpointError(f"{DELTA_FILE}: unknown tensor dtype {name!r}; re-write the delta with this version")
    return dtype


def _table_of(key: str, tables: Sequence[str]) -> Optional[str]:
    """The table a weights key belongs to (a dotted component names it), or None for a dense / TBE tensor."""
    parts = key.split(".")
    return next((t for t in tables if t in parts), None)


def _load_weights(path: Path) -> Dict[str, Tensor]:
    try:
        return torch.load(path / EXPORT_WEIGHTS_FILE, map_location="cpu", weights_only=True)
    except Exception as e:  # never fall back to unpickling
        raise CheckpointError(f"{path / EXPORT_WEIGHTS_FILE}: not a tensor file an export wrote ({type(e).__name__}); "
                              "re-run quantize") from None


def _sealed(path: Path, what_to_do: str) -> Dict[str, Any]:
    """An export's sidecar after checking every file against its seal."""
    sidecar = read_quantized_meta(path)
    verify_files(path, sidecar["files"], what_to_do)
    return sidecar


# ---------------------------------------------------------------- tensors of weights.pt

def _diff_weights(prev: Dict[str, Tensor], new: Dict[str, Tensor], tables: Sequence[str],
                  payload: _Payload, info: DeltaInfo) -> Dict[str, Any]:
    """The ``weights`` section: per key ``same`` / ``rows`` (ids + rows) / ``whole``, in the new file's order."""
    entries: Dict[str, Dict[str, Any]] = {}
    for key, t in new.items():
        entry: Dict[str, Any] = {"dtype": str(t.dtype).removeprefix("torch."), "shape": list(t.shape)}
        old = prev.get(key)
        same_layout = old is not None and old.dtype == t.dtype and old.shape == t.shape
        table = _table_of(key, tables)
        if table is not None and t.dim() >= 1 and t.shape[0] > 0:
            n = int(t.shape[0])
            ids = np.zeros(0, np.int64)
            id_dtype = np.dtype(np.int32 if n < 2**31 else np.int64)
            if same_layout:
                assert old is not None
                stored = _row_bytes(t)
                ids = np.flatnonzero((_row_bytes(old) != stored).any(axis=1))
            # rows with their ids, unless the table whole is smaller (most rows moved: a pruned table
            # that keeps other rows, a remapping that changed)
            if same_layout and len(ids) * (stored.shape[1] + id_dtype.itemsize) < n * stored.shape[1]:
                entry.update(kind="rows" if len(ids) else "same", id_dtype=id_dtype.name)
                if len(ids):
                    entry.update(ids=payload.add(ids.astype(id_dtype).tobytes()), rows=payload.add(stored[ids].tobytes()))
                changed = len(ids)
            else:  # another size or dtype, or most rows changed: the table whole
                entry.update(kind="whole", data=payload.add(_tensor_bytes(t)))
                changed = n
            done, total = info.tables.get(table, [0, 0])
            info.tables[table] = [done + changed, total + n]
        elif same_layout and _tensor_bytes(old) == _tensor_bytes(t):
            entry["kind"] = "same"
        else:  # dense weights, TBE metadata, pruning remappings: whole whenever they differ
            entry.update(kind="whole", data=payload.add(_tensor_bytes(t)))
        entries[key] = entry
    return {"order": list(new), "tensors": entries}


def _patch_weights(prev: Dict[str, Tensor], section: Dict[str, Any], payload: bytes) -> Dict[str, Tensor]:
    """The new export's tensors, from the previous ones and the ``weights`` section."""
    out: Dict[str, Tensor] = {}
    for key in section["order"]:
        e = section["tensors"][key]
        dtype, shape = _dtype(e["dtype"]), tuple(e["shape"])
        if e["kind"] == "whole":
            a, n = e["data"]
            raw = torch.frombuffer(bytearray(payload[a:a + n]), dtype=torch.uint8) if n else torch.zeros(0, dtype=torch.uint8)
            out[key] = raw.view(dtype).reshape(shape).clone()
            continue
        if key not in prev:
            raise CheckpointError(f"{DELTA_FILE}: tensor {key} is not in the previous export; apply the delta to the "
                                  "export it was written against")
        t = prev[key].clone()
        if e["kind"] == "rows":
            (ia, il), (ra, rl) = e["ids"], e["rows"]
            ids = torch.from_numpy(np.frombuffer(payload[ia:ia + il], dtype=e["id_dtype"]).astype(np.int64))
            rows_view = t.view(torch.uint8) if t.dim() > 1 else t.reshape(-1, 1).view(torch.uint8)
            rows_view = rows_view.reshape(t.shape[0], -1)
            rows_view[ids] = torch.frombuffer(bytearray(payload[ra:ra + rl]), dtype=torch.uint8).reshape(len(ids), -1)
        out[key] = t
    return out


def _save_bytes(tensors: Dict[str, Tensor]) -> bytes:
    """The bytes ``torch.save`` writes for ``tensors`` as a file named ``weights.pt``.

    A real file of that name: torch names the archive's records after the file (a buffer would give
    other bytes).
    """
    with tempfile.TemporaryDirectory(prefix="torchrec_kd-delta-") as scratch:
        f = Path(scratch) / EXPORT_WEIGHTS_FILE
        torch.save(tensors, f)
        return f.read_bytes()


# ---------------------------------------------------------------- byte patches of files

def _zip_regions(data: bytes) -> Optional[List[Tuple[Tuple[str, str], int, int]]]:
    """``[((record, part), start, end)]`` covering a zip archive (headers, data, gaps, the central directory)."""
    if not data.startswith(b"PK\x03\x04"):
        return None
    try:
        infos = sorted(zipfile.ZipFile(io.BytesIO(data)).infolist(), key=lambda i: i.header_offset)
    except (zipfile.BadZipFile, ValueError):
        return None
    regions: List[Tuple[Tuple[str, str], int, int]] = []
    pos = 0
    for info in infos:
        h = info.header_offset
        if h < pos:
            return None
        if h > pos:
            regions.append(((info.filename, "gap"), pos, h))
        name_len = int.from_bytes(data[h + 26:h + 28], "little")
        extra_len = int.from_bytes(data[h + 28:h + 30], "little")
        start = h + 30 + name_len + extra_len
        end = start + info.compress_size
        regions.append(((info.filename, "header"), h, start))
        regions.append(((info.filename, "data"), start, end))
        pos = end
    regions.append((("", "tail"), pos, len(data)))
    return regions


def _aligned(prev: bytes, new: bytes) -> List[Tuple[int, int, Optional[int]]]:
    """``[(start, end, prev start or None)]`` covering ``new``: the pieces comparable byte for byte with ``prev``."""
    if len(prev) == len(new):
        return [(0, len(new), 0)]
    new_regions, prev_regions = _zip_regions(new), _zip_regions(prev)
    if new_regions is None or prev_regions is None:
        return [(0, len(new), None)]
    where = {key: (a, b) for key, a, b in prev_regions}
    out: List[Tuple[int, int, Optional[int]]] = []
    for key, a, b in new_regions:
        old = where.get(key)
        out.append((a, b, old[0] if old is not None and old[1] - old[0] == b - a else None))
    return out


def _runs(x: np.ndarray, y: np.ndarray) -> List[Tuple[int, int]]:
    """``[(start, end)]`` of the differing bytes of two equal-length arrays, runs closer than the gap merged."""
    d = np.flatnonzero(x != y)
    if not len(d):
        return []
    breaks = np.flatnonzero(np.diff(d) > _MERGE_GAP)
    starts = np.concatenate([[d[0]], d[breaks + 1]])
    ends = np.concatenate([d[breaks], [d[-1]]]) + 1
    return list(zip(starts.tolist(), ends.tolist()))


def _file_ops(prev: Optional[bytes], new: bytes, spans: List[Tuple[int, int, str, int]], payload: _Payload) -> List[Op]:
    """Ops that build ``new`` from ``prev``, the payload and the tensors' bytes (``spans``: where they sit in ``new``)."""
    ops: List[Op] = []

    def emit(op: Op) -> None:
        last = ops[-1] if ops else None
        if last is not None and last[0] == op[0] == "c" and last[1] + last[2] == op[1]:
            last[2] += op[2]
        elif last is not None and last[0] == op[0] == "p" and last[1] + last[2] == op[1]:
            last[2] += op[2]
        else:
            ops.append(op)

    def literal(a: int, b: int) -> None:
        if b > a:
            emit(["p", *payload.add(new[a:b])])

    def compare(a: int, b: int, p: Optional[int]) -> None:
        if b <= a:
            return
        if prev is None or p is None:
            literal(a, b)
            return
        x = np.frombuffer(new, np.uint8, b - a, a)
        y = np.frombuffer(prev, np.uint8, b - a, p)
        pos = a
        for s, e in _runs(x, y):
            if a + s > pos:
                emit(["c", p + pos - a, a + s - pos])
            literal(a + s, a + e)
            pos = a + e
        if b > pos:
            emit(["c", p + pos - a, b - pos])

    pieces = _aligned(prev, new) if prev is not None else [(0, len(new), None)]
    spans = sorted(spans)
    for a, b, p in pieces:
        pos = a
        for s, n, key, t_off in spans:
            if s < a or s + n > b:
                continue
            compare(pos, s, None if p is None else p + pos - a)
            if n:
                ops.append(["t", key, t_off, n])
            pos = s + n
        compare(pos, b, None if p is None else p + pos - a)
    return ops


def _tensor_spans(data: bytes, tensors: Dict[str, Tensor]) -> List[Tuple[int, int, str, int]]:
    """Where whole tensors' bytes sit inside ``data`` (a TorchScript archive embeds the weights), not overlapping."""
    spans: List[Tuple[int, int, str, int]] = []
    taken: List[Tuple[int, int]] = []
    for key, t in sorted(tensors.items(), key=lambda kv: -kv[1].numel() * kv[1].element_size()):
        raw = _tensor_bytes(t)
        if len(raw) < _MIN_SPAN_BYTES:
            continue
        at = data.find(raw)
        if at < 0 or any(at < e and s < at + len(raw) for s, e in taken):
            continue
        spans.append((at, len(raw), key, 0))
        taken.append((at, at + len(raw)))
    return spans


def _build_file(ops: List[Op], prev: Optional[bytes], payload: bytes, tensor_bytes: Dict[str, bytes]) -> bytes:
    out = bytearray()
    for op in ops:
        if op[0] == "c":
            if prev is None:
                raise CheckpointError(f"{DELTA_FILE}: a patch copies from a file the previous export lacks; apply "
                                      "the delta to the export it was written against")
            out += prev[op[1]:op[1] + op[2]]
        elif op[0] == "p":
            out += payload[op[1]:op[1] + op[2]]
        else:
            out += tensor_bytes[op[1]][op[2]:op[2] + op[3]]
    return bytes(out)


# ---------------------------------------------------------------- write and apply

def write_delta(prev_export_dir: Union[str, Path], new_export_dir: Union[str, Path],
                delta_dir: Union[str, Path]) -> DeltaInfo:
    """Write what turns ``prev_export_dir`` into ``new_export_dir`` (atomically, sealed) and measure it.

    Args:
        prev_export_dir (str | Path): the export servers hold (sealed, as quantize wrote it).
        new_export_dir (str | Path): the export to ship (same model, e.g. the next window's).
        delta_dir (str | Path): the delta's directory (replaced whole if it exists).

    Returns:
        DeltaInfo: rows changed of rows, delta bytes beside the new export's bytes, how each file ships.

    Raises:
        CheckpointError: an export is missing, unsealed or altered.
    """
    prev_dir, new_dir = Path(prev_export_dir), Path(new_export_dir)
    _sealed(prev_dir, "re-run quantize for the previous export")
    sidecar = _sealed(new_dir, "re-run quantize for the new export")
    target = file_records(new_dir)
    payload = _Payload()
    info = DeltaInfo(0, 0, 0, sum(r["bytes"] for r in target.values()))
    prev_w, new_w = _load_weights(prev_dir), _load_weights(new_dir)
    weights = _diff_weights(prev_w, new_w, list(sidecar["table_dtypes"]), payload, info)
    info.rows_changed = sum(c for c, _ in info.tables.values())
    info.rows_total = sum(n for _, n in info.tables.values())
    files: Dict[str, Dict[str, Any]] = {}

    literals = _Payload()  # file bytes shipped as they are: JSON, pickles, code, zip directories (compressed)

    def fill(staging: Path) -> None:
        rebuilt = _patch_weights(prev_w, weights, b"".join(payload.parts))
        by_tensors = _save_bytes(rebuilt) == (new_dir / EXPORT_WEIGHTS_FILE).read_bytes()
        tensor_bytes = {k: _tensor_bytes(t) for k, t in rebuilt.items()} if by_tensors else {}
        for name in target:
            new = (new_dir / name).read_bytes()
            prev = (prev_dir / name).read_bytes() if (prev_dir / name).is_file() else None
            if prev == new:
                files[name], info.files[name] = {"kind": "same"}, "same"
            elif name == EXPORT_WEIGHTS_FILE and by_tensors:
                files[name], info.files[name] = {"kind": "tensors"}, "tensors"
            else:
                spans = _tensor_spans(new, rebuilt) if tensor_bytes and new.startswith(b"PK") else []
                ops = _file_ops(prev, new, spans, literals)
                whole = all(op[0] == "p" for op in ops)
                files[name], info.files[name] = {"kind": "patch", "ops": ops}, ("whole" if whole else "patch")
        packed = zlib.compress(b"".join(literals.parts), 6)
        literal_at = payload.add(packed) + [literals.size]
        data = b"".join(payload.parts)
        (staging / PAYLOAD_FILE).write_bytes(data)
        manifest = {"format": DELTA_FORMAT,
                    "base": {"file": EXPORT_META_FILE, "sha256": sha256_file(prev_dir / EXPORT_META_FILE)},
                    "target": target, "weights": weights, "files": files, "literals": literal_at,
                    "payload": {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()},
                    "rows": {"changed": info.rows_changed, "total": info.rows_total, "tables": info.tables}}
        (staging / DELTA_FILE).write_text(json.dumps(manifest, indent=1, sort_keys=True))
        # never ship a delta that does not rebuild the new export: apply it here, to the bytes
        _rebuild(prev_dir, staging, lambda name, data: None)

    out = write_dir_atomically(Path(delta_dir), fill)
    info.delta_bytes = sum(f.stat().st_size for f in out.iterdir() if f.is_file())
    return info


def read_delta(delta_dir: Union[str, Path]) -> Dict[str, Any]:
    """A delta's manifest, its payload checked against the seal.

    Args:
        delta_dir (str | Path): a directory :func:`write_delta` wrote.

    Returns:
        Dict[str, Any]: ``delta.json`` (keys ``base``, ``target``, ``weights``, ``files``, ``payload``, ``rows``).

    Raises:
        CheckpointError: no delta there, an unreadable or foreign manifest, or a payload that changed.
    """
    delta_dir = Path(delta_dir)
    f = delta_dir / DELTA_FILE
    if not f.is_file():
        raise CheckpointError(f"{f} not found: {delta_dir} is not a delta export (write it with write_delta)")
    try:
        manifest = json.loads(f.read_text())
    except (ValueError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{f}: unreadable ({e}); write the delta again") from None
    if not isinstance(manifest, dict) or manifest.get("format") != DELTA_FORMAT:
        raise CheckpointError(f"{f}: not a {DELTA_FORMAT} manifest; write the delta again")
    verify_files(delta_dir, {PAYLOAD_FILE: manifest["payload"]}, "write the delta again")
    return manifest


def delta_info(delta_dir: Union[str, Path]) -> DeltaInfo:
    """The :class:`DeltaInfo` of a written delta (read back from its manifest and file sizes).

    Args:
        delta_dir (str | Path): a directory :func:`write_delta` wrote.

    Returns:
        DeltaInfo: as :func:`write_delta` returned it.
    """
    delta_dir = Path(delta_dir)
    m = read_delta(delta_dir)
    kinds = {name: ("whole" if f["kind"] == "patch" and all(op[0] == "p" for op in f["ops"]) else f["kind"])
             for name, f in m["files"].items()}
    return DeltaInfo(m["rows"]["changed"], m["rows"]["total"],
                     sum(f.stat().st_size for f in delta_dir.iterdir() if f.is_file()),
                     sum(r["bytes"] for r in m["target"].values()), {t: list(v) for t, v in m["rows"]["tables"].items()},
                     kinds)


def _rebuild(prev_dir: Path, delta_dir: Path, write: Any) -> None:
    """Rebuild every file of the new export from ``prev_dir`` and the delta, each checked against its seal."""
    m = read_delta(delta_dir)
    base = prev_dir / m["base"]["file"]
    if not base.is_file():
        raise CheckpointError(f"{base} not found: {prev_dir} is not an export; apply the delta to the export it was "
                              "written against")
    got = sha256_file(base)
    if got != m["base"]["sha256"]:
        raise CheckpointError(f"{delta_dir}: written against the export whose {m['base']['file']} has sha256 "
                              f"{m['base']['sha256'][:12]}…, but {prev_dir}'s has {got[:12]}…; apply it to that export "
                              "(or ship the full export)")
    _sealed(prev_dir, "ship the full export instead of a delta")
    payload = (delta_dir / PAYLOAD_FILE).read_bytes()
    at, n, size = m["literals"]
    literals = zlib.decompress(payload[at:at + n])
    if len(literals) != size:
        raise CheckpointError(f"{delta_dir / PAYLOAD_FILE}: damaged file patches; write the delta again")
    prev_w = _load_weights(prev_dir)
    tensors = _patch_weights(prev_w, m["weights"], payload)
    tensor_bytes: Optional[Dict[str, bytes]] = None
    for name, want in m["target"].items():
        spec = m["files"][name]
        prev_file = prev_dir / name
        if spec["kind"] == "same":
            data = prev_file.read_bytes()
        elif spec["kind"] == "tensors":
            data = _save_bytes(tensors)
        else:
            if tensor_bytes is None:
                tensor_bytes = {k: _tensor_bytes(t) for k, t in tensors.items()}
            data = _build_file(spec["ops"], prev_file.read_bytes() if prev_file.is_file() else None, literals, tensor_bytes)
        if len(data) != want["bytes"] or hashlib.sha256(data).hexdigest() != want["sha256"]:
            raise CheckpointError(f"{delta_dir}: rebuilt {name} is not the new export's ({len(data)} bytes, expected "
                                  f"{want['bytes']}); write the delta again or ship the full export")
        write(name, data)


def apply_delta(prev_export_dir: Union[str, Path], delta_dir: Union[str, Path], out_dir: Union[str, Path]) -> Path:
    """Rebuild the new export from the previous one and a delta, bit for bit, atomically.

    Every file is checked against the new export's recorded size and sha256 before ``out_dir``
    appears (it may be ``prev_export_dir`` itself: the export is then replaced whole).

    Args:
        prev_export_dir (str | Path): the export the delta was written against.
        delta_dir (str | Path): a directory :func:`write_delta` wrote.
        out_dir (str | Path): where the new export goes.

    Returns:
        Path: ``out_dir``.

    Raises:
        CheckpointError: the delta was written against another export, or a file is damaged.
    """
    prev_dir, delta_dir = Path(prev_export_dir), Path(delta_dir)

    def fill(staging: Path) -> None:
        def write(name: str, data: bytes) -> None:
            f = staging / name
            f.parent.mkdir(parents=True, exist_ok=True)
            f.write_bytes(data)

        _rebuild(prev_dir, delta_dir, write)

    return write_dir_atomically(Path(out_dir), fill)
