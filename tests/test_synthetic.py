import torch
from torchmetrics.functional.classification import binary_auroc

from torchrec_kd.config import SyntheticDataConfig
from torchrec_kd.data.synthetic import SyntheticClickLog

CFG = SyntheticDataConfig(num_dense=5, num_sparse=6, num_embeddings=5000, latent_dim=8, num_clusters=128, block_rows=32)


def _rows(batch):
    """Hashable rows: dense values + each feature's ids."""
    kjt = batch.sparse_features.to_dict()
    ids = [kjt[k].to_dense() for k in batch.sparse_features.keys()]
    return {(tuple(batch.dense_features[i].tolist()), tuple(tuple(x[i].tolist()) for x in ids))
            for i in range(batch.labels.numel())}


def test_shapes_and_kjt_layout():
    gen = SyntheticClickLog(SyntheticDataConfig(num_sparse=3, num_dense=2, num_embeddings=[10, 100, 1000],
                                                pooling=[1, 3, 2], block_rows=16, num_clusters=8, latent_dim=4))
    b = gen.batch("train", 0, 64)
    assert b.dense_features.shape == (64, 2)
    assert b.labels.shape == (64,)
    kjt = b.sparse_features
    assert kjt.keys() == ["cat_0", "cat_1", "cat_2"]
    for key, n, pool in zip(kjt.keys(), [10, 100, 1000], [1, 3, 2]):
        jt = kjt[key]
        assert jt.lengths().min() >= 1 and jt.lengths().max() <= pool
        assert jt.values().min() >= 0 and jt.values().max() < n
    assert set(b.labels.unique().tolist()) <= {0.0, 1.0}


def test_deterministic_by_seed():
    a = SyntheticClickLog(CFG, seed=3).batch("train", 5, 64)
    b = SyntheticClickLog(CFG, seed=3).batch("train", 5, 64)
    c = SyntheticClickLog(CFG, seed=4).batch("train", 5, 64)
    assert torch.equal(a.dense_features, b.dense_features)
    assert torch.equal(a.sparse_features.values(), b.sparse_features.values())
    assert torch.equal(a.labels, b.labels)
    assert not torch.equal(a.sparse_features.values(), c.sparse_features.values())


def test_splits_disjoint():
    gen = SyntheticClickLog(CFG, seed=0, val_rows=512, test_rows=512)
    seen = {s: set().union(*(_rows(b) for b in gen.batches(s, 128, num_batches=4))) for s in ("train", "val", "test")}
    assert len(seen["train"]) == 512
    assert not seen["train"] & seen["val"] and not seen["train"] & seen["test"] and not seen["val"] & seen["test"]
    assert len(list(gen.batches("test", 128))) == 4  # fixed-size split ends


def test_rank_shares_partition_the_global_batch():
    gen = SyntheticClickLog(CFG, seed=0)
    whole = gen.batch("train", 2, 128)
    parts = [gen.batch("train", 2, 128, rank=r, world_size=2) for r in range(2)]
    assert torch.equal(torch.cat([p.dense_features for p in parts]), whole.dense_features)
    assert torch.equal(torch.cat([p.labels for p in parts]), whole.labels)
    assert _rows(parts[0]) | _rows(parts[1]) == _rows(whole)
    assert not _rows(parts[0]) & _rows(parts[1])


def test_oracle_auc_is_what_its_probabilities_imply():
    """Labels are Bernoulli(oracle p): the AUC of p against them must equal the AUC
    expected from p alone, E[AUC] = sum_{i,j} p_i (1-p_j) [p_i > p_j] / (sum p * sum (1-p))."""
    gen = SyntheticClickLog(CFG, seed=1, test_rows=16384)
    probs, labels = zip(*((p, b.labels) for b, p in (gen.batch("test", i, 4096, with_oracle=True) for i in range(4))))
    p, y = torch.cat(probs).double(), torch.cat(labels)
    observed = float(binary_auroc(p, y.long()))
    ps, _ = torch.sort(p)
    below = torch.cumsum(1 - ps, 0) - (1 - ps)  # sum of (1 - p_j) over p_j < p_i
    expected = float((ps * below).sum() / (p.sum() * (1 - p).sum()))
    assert abs(observed - expected) < 0.01, (observed, expected)
    assert expected > 0.8  # the oracle is informative: a model has something to learn
    assert abs(float(y.mean()) - CFG.positive_rate) < 0.02
    assert abs(gen.oracle_auc("test", 4096, 4) - observed) < 1e-6
