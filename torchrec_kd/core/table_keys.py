"""How embedding tables are named in state dicts (TorchRec's collections and our QAT collection)."""

from __future__ import annotations

# Where embedding tables sit in a state dict, wherever the collection is in the model:
# TorchRec's EmbeddingBagCollection (``<path>.embedding_bags.<table>.weight``), its
# EmbeddingCollection (``<path>.embeddings.<table>.weight``; also inside the
# quantization-aware collection of torchrec_kd.quant.qat, ``<path>.qat_tables.embeddings.…``).
TABLE_KEY_PARTS = ("embedding_bags.", "embeddings.")
QAT_TABLES = "qat_tables.embeddings."


def is_table_key(name: str) -> bool:
    """Whether a parameter / state-dict key names an embedding table.

    Args:
        name (str): a parameter or state-dict key.

    Returns:
        bool: True for a table's weight (in either collection layout).
    """
    return any(part in name for part in TABLE_KEY_PARTS)


def ebc_layout_key(key: str) -> str:
    """A state-dict key in TorchRec's ``EmbeddingBagCollection`` layout.

    The quantization-aware collection (at the path of the ``EmbeddingBagCollection`` it
    replaced) keeps its tables in an ``EmbeddingCollection`` named ``qat_tables``; renaming
    its keys lets a QAT checkpoint load into the plain model (quantize, export) and keeps
    weight initialisation identical to the plain model's.

    Args:
        key (str): e.g. ``student.sparse_arch.embedding_bag_collection.qat_tables.embeddings.s_cat_0.weight``.

    Returns:
        str: e.g. ``student.sparse_arch.embedding_bag_collection.embedding_bags.s_cat_0.weight``.
    """
    return key.replace(QAT_TABLES, "embedding_bags.")
