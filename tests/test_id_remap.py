"""IdRemap: new ids get rows of their own in order of first appearance, old ids keep theirs, unseen ids read
row 0, a full table counts its overflow, and the JSON round trip is exact."""

import logging

import numpy as np
import pytest

from torchrec_kd.data.id_remap import IdRemap, load_remaps, save_remaps
from torchrec_kd.errors import DataError


def test_rows_in_order_of_first_appearance_and_unseen_ids_read_row_0():
    r = IdRemap("item_id", capacity=10)
    assert r.extend(np.array([42, 7, 42, 10**15, 7])) == 3
    assert r.lookup(np.array([42, 7, 10**15, 5, -3])).tolist() == [1, 2, 3, 0, 0]
    assert r.lookup(np.zeros((2, 2), np.int64)).shape == (2, 2)
    assert IdRemap("x", 4).lookup(np.array([1, 2])).tolist() == [0, 0]  # empty remap: all fallback


def test_extending_keeps_old_rows_and_never_shares_a_row():
    r = IdRemap("user_id", capacity=100)
    r.extend(np.array([5, 3, 9]))
    before = r.copy()
    r.extend(np.array([1, 3, 8, 5, 2]))
    old = np.array([5, 3, 9])
    assert r.lookup(old).tolist() == before.lookup(old).tolist() == [1, 2, 3]
    assert r.lookup(np.array([1, 8, 2])).tolist() == [4, 5, 6]
    rows = r.lookup(r.ids)
    assert len(set(rows.tolist())) == len(r.ids) and 0 not in rows
    # the copy did not move
    assert len(before) == 3 and before.lookup(np.array([1])).tolist() == [0]


def test_a_full_table_counts_overflow_and_warns_once(caplog):
    r = IdRemap("item_id", capacity=3)  # rows 1, 2 for ids; row 0 the fallback
    with caplog.at_level(logging.WARNING, logger="torchrec_kd.data.id_remap"):
        r.extend(np.array([1, 2, 3, 4]))
        r.extend(np.array([5, 3]))
    assert r.lookup(np.array([1, 2, 3, 4, 5])).tolist() == [1, 2, 0, 0, 0]
    assert r.overflow == 3  # 3, 4, 5: distinct ids refused
    assert sum("is full" in m for m in caplog.messages) == 1


def test_json_round_trip_is_exact_and_damage_is_a_data_error(tmp_path):
    a, b = IdRemap("user_id", 50), IdRemap("item_id", 7)
    a.extend(np.array([9, 1, 2**40]))
    b.extend(np.array([3, 4, 5, 6, 7, 8, 9]))  # overflows by one
    path = save_remaps({"user_id": a, "item_id": b}, tmp_path)
    assert path.name == "id_remap.json"
    back = load_remaps(tmp_path)
    raw = np.array([9, 1, 2**40, 3, 8, 9, 77])
    for name, r in (("user_id", a), ("item_id", b)):
        assert back[name].lookup(raw).tolist() == r.lookup(raw).tolist()
        assert back[name].capacity == r.capacity and back[name].overflow == r.overflow
    # same remaps, same bytes (the delta export compares files)
    first = path.read_bytes()
    save_remaps(back, tmp_path)
    assert path.read_bytes() == first
    path.write_text('{"format": "torchrec_kd.id_remap/1", "features": {"u": {"feature": "u", "capacity": 2, '
                    '"ids": [1, 1]}}}')
    with pytest.raises(DataError, match="repeated ids"):
        load_remaps(path)
    path.write_text("not json")
    with pytest.raises(DataError, match="not a readable id remap"):
        load_remaps(path)
    with pytest.raises(DataError, match="no id remap there"):
        load_remaps(tmp_path / "nowhere.json")
