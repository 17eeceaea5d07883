"""How embedding tables are named in state dicts (TorchRec's collections and our QAT sparse arch)."""

from __future__ import annotations

# Where embedding tables sit in a state dict: TorchRec's EmbeddingBagCollection, or the
# EmbeddingCollection of the quantization-aware sparse arch (torchrec_kd.quant.qat).
TABLE_KEY_PARTS = ("embedding_bags.", "embedding_collection.embeddings.")


def is_table_key(name: str) -> bool:
    """Whether a parameter / state-dict key names an embedding table.

    Args:
        name (str): a parameter or state-dict key.

    Returns:
        bool: True for a table's weight (in either collection layout).
    """
    return any(part in name for part in TABLE_KEY_PARTS)


def ebc_layout_key(key: str) -> str:
    """A state-dict key in TorchRec's ``SparseArch(EmbeddingBagCollection)`` layout.

    The quantization-aware sparse arch keeps its tables in an ``EmbeddingCollection``;
    renaming its keys lets a QAT checkpoint load into a plain DLRM (quantize, export) and
    keeps weight initialisation identical to the plain model's.

    Args:
        key (str): e.g. ``student.sparse_arch.embedding_collection.embeddings.s_cat_0.weight``.

    Returns:
        str: e.g. ``student.sparse_arch.embedding_bag_collection.embedding_bags.s_cat_0.weight``.
    """
    return key.replace("sparse_arch.embedding_collection.embeddings.", "sparse_arch.embedding_bag_collection.embedding_bags.")
