"""Teacher-score cache: round trip across world sizes, and every way a cache can be refused."""

import pytest
import torch

from torchrec_kd.distill.score_cache import CacheSpec, ScoreCacheWriter, batch_digest, check_digest, open_cache, write_manifest
from torchrec_kd.errors import CacheError

G, STEPS, H = 8, 3, 5
FP = {"teacher": "abc", "seed": 0}


def _rows(step):
    g = torch.Generator().manual_seed(step)
    return {"logits": torch.randn(G, generator=g), "hint": torch.randn(G, H, generator=g)}


def _data(step):
    g = torch.Generator().manual_seed(100 + step)
    return torch.randn(G, 2, generator=g), torch.randint(0, 50, (G * 3,), generator=g), torch.ones(G * 3, dtype=torch.long)


def _digest(step, lo, hi):
    dense, values, lengths = _data(step)
    return batch_digest(dense[lo:hi], values[lo * 3: hi * 3], lengths[lo * 3: hi * 3], torch.ones(hi - lo))


def _write(path, world=2, dtypes=None):
    spec = CacheSpec(steps=STEPS, global_batch=G, fields={"logits": (), "hint": (H,)}, dtypes=dtypes or {}, fingerprint=FP)
    local = G // world
    for r in range(world):
        w = ScoreCacheWriter(path, spec, r, world)
        for s in range(STEPS):
            rows = _rows(s)
            w.write(s, {k: v[r * local:(r + 1) * local] for k, v in rows.items()}, _digest(s, r * local, (r + 1) * local))
        w.flush()
    write_manifest(path, spec, world, STEPS)
    return spec


@pytest.mark.parametrize("readers", [1, 2, 4])
def test_round_trip_for_any_reader_world_size(tmp_path, readers):
    _write(tmp_path, world=2, dtypes={"hint": "float16"})
    reader = open_cache(tmp_path, FP, steps=STEPS, global_batch=G, fields=["logits", "hint"])
    size = G // readers
    for s in range(STEPS):
        for r in range(readers):
            out, digest = reader.read(s, r, readers)
            assert torch.equal(out["logits"], _rows(s)["logits"][r * size:(r + 1) * size])
            assert torch.allclose(out["hint"], _rows(s)["hint"][r * size:(r + 1) * size], atol=2e-3, rtol=1e-3)
            want = _digest(s, r * size, (r + 1) * size)
            if readers <= 2:  # whole writer blocks: the stored digest is comparable
                check_digest(digest, want, tmp_path, s, r)
            else:
                assert digest is None


def test_digest_is_additive_and_catches_other_data(tmp_path):
    assert torch.allclose(_digest(0, 0, 4) + _digest(0, 4, 8), _digest(0, 0, 8))
    with pytest.raises(CacheError, match="different data: step 1 rank 0"):
        check_digest(_digest(0, 0, 8), _digest(1, 0, 8), tmp_path, 1, 0)


def test_refusals_name_what_differs(tmp_path):
    with pytest.raises(CacheError, match="does not exist"):
        open_cache(tmp_path / "none", FP, steps=STEPS, global_batch=G, fields=["logits"])
    _write(tmp_path)
    with pytest.raises(CacheError, match='teacher="abc" but this run has teacher="xyz"'):
        open_cache(tmp_path, {**FP, "teacher": "xyz"}, steps=STEPS, global_batch=G, fields=["logits"])
    with pytest.raises(CacheError, match="holds 3 steps, this run needs 5"):
        open_cache(tmp_path, FP, steps=5, global_batch=G, fields=["logits"])
    with pytest.raises(CacheError, match="global batch 8"):
        open_cache(tmp_path, FP, steps=STEPS, global_batch=16, fields=["logits"])
    with pytest.raises(CacheError, match="no \\['embeddings'\\]"):
        open_cache(tmp_path, FP, steps=STEPS, global_batch=G, fields=["logits", "embeddings"])
    f = tmp_path / "rank1-of-2.hint.npy"
    f.write_bytes(f.read_bytes()[:-7])
    with pytest.raises(CacheError, match="rank1-of-2.hint.npy.*truncated"):
        open_cache(tmp_path, FP, steps=STEPS, global_batch=G, fields=["logits"])
    (tmp_path / "manifest.json").unlink()
    with pytest.raises(CacheError, match="did not finish"):
        open_cache(tmp_path, FP, steps=STEPS, global_batch=G, fields=["logits"])


def test_writer_refuses_wrong_shapes_fields_and_steps(tmp_path):
    spec = CacheSpec(steps=2, global_batch=G, fields={"logits": ()})
    w = ScoreCacheWriter(tmp_path, spec, 0, 2)
    with pytest.raises(ValueError, match="shape"):
        w.write(0, {"logits": torch.zeros(G)}, torch.zeros(4))
    with pytest.raises(ValueError, match="fields"):
        w.write(0, {"hint": torch.zeros(4)}, torch.zeros(4))
    with pytest.raises(ValueError, match="outside"):
        w.write(2, {"logits": torch.zeros(4)}, torch.zeros(4))
    with pytest.raises(ValueError, match="divisible"):
        ScoreCacheWriter(tmp_path, spec, 0, 3)
