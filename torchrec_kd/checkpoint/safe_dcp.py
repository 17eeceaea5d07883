"""Read ``torch.distributed.checkpoint`` directories without unpickling arbitrary objects.

DCP stores tensors in a safe way (read back with ``weights_only=True``) but its
``.metadata`` file is a pickle. :class:`SafeFileSystemReader` reads it with an
unpickler that only builds DCP's own metadata classes, ``torch.Size``, dtypes and
paths; anything else — a tampered or foreign file — is refused with an error that
names the class and the file instead of being executed.
"""

from __future__ import annotations

import pickle
from typing import Any

import torch
from torch.distributed.checkpoint import FileSystemReader
from torch.distributed.checkpoint.metadata import Metadata, StorageMeta

from torchrec_kd.errors import UnsafeCheckpointError

_ALLOWED_MODULE_PREFIXES = ("torch.distributed.checkpoint.",)
_ALLOWED = {("torch", "Size"), ("pathlib", "PosixPath"), ("pathlib", "PurePosixPath"), ("pathlib", "WindowsPath"),
            ("pathlib", "PureWindowsPath"), ("collections", "OrderedDict"), ("builtins", "set"),
            ("builtins", "frozenset"), ("torch.serialization", "_get_layout")}


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, file: Any, path: str) -> None:
        super().__init__(file)
        self.path = path

    def find_class(self, module: str, name: str) -> Any:
        if module.startswith(_ALLOWED_MODULE_PREFIXES) or (module, name) in _ALLOWED:
            return super().find_class(module, name)
        if module == "torch" and isinstance(getattr(torch, name, None), (torch.dtype, torch.layout, torch.memory_format)):
            return getattr(torch, name)
        raise UnsafeCheckpointError(
            f"{self.path}: refusing to load checkpoint metadata that builds {module}.{name}; "
            "it is not a torch.distributed.checkpoint metadata file from a trusted source")


class SafeFileSystemReader(FileSystemReader):
    """``FileSystemReader`` whose metadata is read with an allow-listing unpickler."""

    def read_metadata(self, *args: Any, **kwargs: Any) -> Metadata:
        """Metadata of the checkpoint, built only from allow-listed classes."""
        path = self._get_metadata_path(kwargs.get("rank"))
        with self.fs.create_stream(path, "rb") as f:
            try:
                metadata = _RestrictedUnpickler(f, str(path)).load()
            except UnsafeCheckpointError:
                raise
            except Exception as e:  # truncated or corrupted bytes
                raise UnsafeCheckpointError(f"{path}: checkpoint metadata is unreadable ({type(e).__name__}: {e}); "
                                            "the checkpoint is truncated or corrupted") from None
        if not isinstance(metadata, Metadata):
            raise UnsafeCheckpointError(f"{path}: not a torch.distributed.checkpoint metadata file")
        if getattr(metadata, "storage_meta", None) is None:
            metadata.storage_meta = StorageMeta()
        metadata.storage_meta.load_id = self.load_id
        return metadata
