"""Serving a student: traffic scored whole, the loaded export and its program score as predict, plans replay."""

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch

from tests.conftest import REPO, TINY

QUANTIZE = ["quantize.dtypes=[int4]", "quantize.prune.keep_fraction=0.3", "quantize.prune.count_rows=4096",
            "quantize.budget.bytes=24000", "quantize.budget.keep_fractions=[1.0,0.25]"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A briefly trained tiny student, quantized: int4, int4 pruned and a budgeted plan."""
    from torchrec_kd.cli import main

    out = tmp_path_factory.mktemp("serve")
    common = ["--config", str(TINY), "--output-dir", str(out), "train.steps=8", "train.log_every=4"]
    assert main(["train-student", *common]) == 0
    assert main(["quantize", "--source", "student", *common, *QUANTIZE]) == 0
    return out, common


@pytest.fixture(scope="module")
def traffic(run, tmp_path_factory):
    """1,000 raw rows of the test split (not a multiple of the batch), with an id column and no label."""
    from torchrec_kd.config import load_config
    from torchrec_kd.data import build_data
    from torchrec_kd.data.rows import RowBlock

    cfg = load_config(str(TINY))
    data = build_data(cfg.data, cfg.seed)
    block = RowBlock.concat(list(data.row_blocks("test"))).slice(0, 1000)
    cols = {"request_id": [f"r{i:04d}" for i in range(len(block))]}
    cols.update({name: block.dense[:, j] for j, name in enumerate(data.dense_names)})
    for name, jag in zip(data.sparse_names, block.sparse):
        cols[name] = ["|".join(map(str, jag.values[jag.offsets[i]:jag.offsets[i + 1]])) for i in range(len(block))]
    frame = pd.DataFrame(cols)
    path = tmp_path_factory.mktemp("traffic") / "traffic.csv"
    frame.to_csv(path, index=False)
    return frame, path


def test_unlabeled_traffic_with_a_ragged_tail_is_fully_scored_with_its_id_column(run, traffic, tmp_path):
    from torchrec_kd.cli import main

    out, common = run
    frame, path = traffic
    model = str(out / "export" / "student_int4_pruned")
    args = ["predict", *common, "--model", model, "--input", str(path), "--columns", "request_id"]
    assert main([*args, "--out", str(tmp_path / "one.csv")]) == 0
    one = pd.read_csv(tmp_path / "one.csv")
    assert list(one.columns) == ["row", "request_id", "logit", "probability"]  # no label in, none out
    assert len(one) == 1000 and one["request_id"].tolist() == frame["request_id"].tolist()
    assert one["row"].tolist() == list(range(1000))
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                          "-m", "torchrec_kd.cli", *args, "--out", str(tmp_path / "two.csv")],
                         cwd=REPO, capture_output=True, text=True, timeout=600)
    assert two.returncode == 0, two.stderr[-3000:]
    assert pd.read_csv(tmp_path / "two.csv").equals(one)  # 1 process and 2 ranks: the same file


def test_the_loaded_export_and_its_program_score_raw_rows_exactly_as_predict(run, traffic, tmp_path):
    import torchrec  # noqa: F401  (the one import the saved program needs: it registers fbgemm's ops)

    import torchrec_kd
    from torchrec_kd.cli import main

    out, common = run
    frame, path = traffic
    export = out / "export" / "student_budgeted"
    assert main(["predict", *common, "--model", str(export), "--input", str(path), "--out", str(tmp_path / "p.csv")]) == 0
    predicted = pd.read_csv(tmp_path / "p.csv", dtype={"logit": np.float32})
    with torch.inference_mode():  # a server's usual context: loading works inside it too
        served = torchrec_kd.load_model(export)
    scores = served.score(frame.drop(columns=["request_id"]))
    assert np.array_equal(scores["logit"].to_numpy(), predicted["logit"].to_numpy())
    program = torch.jit.load(str(export / "model.ts"))
    batch = served.convert(frame).rows.to_batch(served.contract["features"]["sparse"])
    got = program(batch.dense_features, batch.sparse_features)
    assert got["logit"].grad_fn is None and got["probability"].grad_fn is None
    assert torch.equal(got["logit"], torch.tensor(scores["logit"].to_numpy()))
    assert torch.allclose(got["probability"], torch.sigmoid(got["logit"]))
    # a fresh process needs torch and one import, torchrec, to run the program
    kjt = batch.sparse_features
    torch.save({"dense": batch.dense_features, "values": kjt.values(), "lengths": kjt.lengths(), "keys": kjt.keys()},
               tmp_path / "request.pt")
    script = ("import sys, torch, torchrec\n"
              "r = torch.load(sys.argv[2])\n"
              "kjt = torchrec.KeyedJaggedTensor.from_lengths_sync(keys=r['keys'], values=r['values'], lengths=r['lengths'])\n"
              "out = torch.jit.load(sys.argv[1])(r['dense'], kjt)\n"
              "torch.save(out['logit'], sys.argv[3])\n")
    fresh = subprocess.run([sys.executable, "-c", script, str(export / "model.ts"), str(tmp_path / "request.pt"),
                            str(tmp_path / "logit.pt")], capture_output=True, text=True, timeout=300)
    assert fresh.returncode == 0, fresh.stderr[-2000:]
    assert torch.equal(torch.load(tmp_path / "logit.pt"), got["logit"])


def test_the_budgeted_plan_respects_its_budget_and_replays(run, tmp_path):
    from torchrec_kd.cli import main

    out, common = run
    metrics = json.loads((out / "metrics.json").read_text())
    plan = json.loads((out / "export" / "student_budgeted" / "plan.json").read_text())
    assert metrics["student_budgeted"]["embedding_bytes"] == plan["bytes"] <= 24000
    assert metrics["student_budgeted"]["embedding_bytes"] < metrics["student_int4"]["embedding_bytes"]
    assert set(plan["tables"]) == {f"s_cat_{i}" for i in range(4)}
    # a replay in another run directory rebuilds the same student from plan.json alone
    again = tmp_path / "again"
    again.mkdir()
    (again / "student").symlink_to(out / "student")
    replay = ["--source", "student", "--config", str(TINY), "--output-dir", str(again), "quantize.dtypes=[int4]",
              "quantize.prune.count_rows=4096", f"quantize.budget.replay={out / 'export' / 'student_budgeted'}"]
    assert main(["quantize", *replay]) == 0
    replayed = json.loads((again / "metrics.json").read_text())["student_budgeted"]
    assert replayed["embedding_bytes"] == plan["bytes"]
    assert replayed["auc"] == metrics["student_budgeted"]["auc"]
    assert json.loads((again / "export" / "student_budgeted" / "plan.json").read_text())["tables"] == plan["tables"]


def test_a_replay_without_a_plan_is_refused_before_anything_is_written(run, tmp_path, capsys):
    from torchrec_kd.cli import main

    out, _ = run
    (tmp_path / "student").symlink_to(out / "student")
    code = main(["quantize", "--source", "student", "--config", str(TINY), "--output-dir", str(tmp_path),
                 "quantize.dtypes=[int4]", f"quantize.budget.replay={tmp_path / 'nowhere'}"])
    assert code == 2 and "no plan.json there" in capsys.readouterr().err
    assert not (tmp_path / "export").exists() and not (tmp_path / "metrics.json").exists()


def test_a_bad_row_under_on_bad_row_error_leaves_no_file(run, traffic, tmp_path):
    from torchrec_kd.config import load_config
    from torchrec_kd.errors import DataError
    from torchrec_kd.recipes.predict import run as predict

    out, _ = run
    frame, _ = traffic
    bad = frame.head(300).astype(object)
    bad.loc[250, "int_0"] = "n/a?"  # not a number: the training rules reject the row
    bad.to_csv(tmp_path / "bad.csv", index=False)
    target = tmp_path / "scores.csv"
    cfg = load_config(str(TINY), ["data.on_bad_row=error"])
    # chunks of 100 rows: two chunks are written before the third stops the run
    with pytest.raises(DataError, match="bad.csv:252"):
        predict(cfg, str(out / "export" / "student_int4"), "test", str(target), str(tmp_path / "bad.csv"), chunk_rows=100)
    assert not target.exists() and not (tmp_path / "scores.csv.tmp").exists()


def test_scoring_in_small_chunks_writes_the_same_file(run, traffic, tmp_path):
    from torchrec_kd.config import load_config
    from torchrec_kd.recipes.predict import run as predict

    out, _ = run
    _, path = traffic
    cfg = load_config(str(TINY))
    model = str(out / "export" / "student_int4_pruned")
    whole = predict(cfg, model, "test", str(tmp_path / "whole.csv"), str(path), ["request_id"])
    chunked = predict(cfg, model, "test", str(tmp_path / "chunked.csv"), str(path), ["request_id"], chunk_rows=300)
    a, b = pd.read_csv(chunked), pd.read_csv(whole)  # 4 chunks, a 100-row tail
    assert a.drop(columns="probability").equals(b.drop(columns="probability"))  # logits to the bit
    # torch's vectorised sigmoid may round a batch's tail elements one ulp apart
    assert np.allclose(a["probability"], b["probability"], rtol=0, atol=1e-7)


# ---------------------------------------------------------------- a windowed run's id remap, served

REMAP_ROWS = 50


@pytest.fixture(scope="module")
def remapped_export(tmp_path_factory):
    """An int8 export whose contract carries entity remaps (cat_0, cat_1: raw ids far beyond the table)."""
    import dataclasses

    from torchrec_kd.config import DataConfig
    from torchrec_kd.config.schema import ModelConfig
    from torchrec_kd.data.contract import contract_files, input_contract
    from torchrec_kd.data.id_remap import IdRemap
    from torchrec_kd.models.build import build_model_from_meta, io_from_meta
    from torchrec_kd.quant.embeddings import quantize_model
    from torchrec_kd.quant.export import export_torchscript, save_quantized
    from torchrec_kd.quant.scoring_head import ScoringHead

    torch.manual_seed(0)
    sparse, dense = [f"cat_{i}" for i in range(3)], [f"int_{i}" for i in range(2)]
    cfg = ModelConfig(embedding_dim=8, dense_arch_layer_sizes=[8, 8], over_arch_layer_sizes=[8, 1], table_prefix="s_")
    meta = {"model": dataclasses.asdict(cfg), "dense_in_features": len(dense), "sparse_features": sparse,
            "num_embeddings": [REMAP_ROWS] * 3, "plugins": []}
    qm = quantize_model(build_model_from_meta(meta), "int8")
    remaps = {name: IdRemap(name, REMAP_ROWS) for name in sparse[:2]}
    remaps["cat_0"].extend(np.array([10**12 + 5, 77, 10**12 + 5, 31]))  # rows 1, 2, 3 in order of first appearance
    remaps["cat_1"].extend(np.array([9, 8]))
    contract = input_contract(DataConfig(), dense, sparse, meta["num_embeddings"], remaps=remaps)
    head = ScoringHead(qm, io_from_meta(meta).output)
    out = tmp_path_factory.mktemp("remap") / "export"
    save_quantized(qm, out, meta, extras={**contract_files(contract, remaps), "model.ts": lambda f: export_torchscript(head, f)})
    return out, qm, remaps, sparse, dense


def test_a_served_export_maps_raw_ids_as_training_did_and_unseen_ids_to_the_fallback_row(remapped_export):
    import torchrec_kd
    from torchrec_kd.data.id_remap import apply_remaps
    from torchrec_kd.data.rows import Jagged, RowBlock
    from torchrec_kd.quant.scoring_head import ScoringHead

    path, qm, remaps, sparse, dense = remapped_export
    contract = json.loads((path / "contract.json").read_text())
    assert contract["id_remap"]["file"] == "id_remap.json"
    assert contract["id_remap"]["features"] == {"cat_0": {"ids": 3, "capacity": REMAP_ROWS},
                                                "cat_1": {"ids": 2, "capacity": REMAP_ROWS}}
    assert "id_remap.json" in json.loads((path / "quantized.json").read_text())["files"]  # sealed with the export
    served = torchrec_kd.load_model(path)
    raw0 = [10**12 + 5, 31, 77, 10**12 + 6, 5]  # trained: rows 1, 3, 2; never trained on: the fallback row 0
    raw1 = [8, 9, 123, 8, 9]
    raw2 = [1, 2, 3, REMAP_ROWS + 4, 0]  # not an entity: modulo the table as before
    frame = pd.DataFrame({"int_0": [0.5, -1.0, 2.0, 0.0, 1.0], "int_1": [1.0, 0.0, 0.5, 3.0, -2.0],
                          "cat_0": raw0, "cat_1": raw1, "cat_2": raw2})
    rows = served.convert(frame).rows
    assert rows.sparse[0].values.tolist() == [1, 3, 2, 0, 0]
    assert rows.sparse[1].values.tolist() == [2, 1, 0, 2, 1]
    assert rows.sparse[2].values.tolist() == [1, 2, 3, 4, 0]
    # the scores are the in-process model's on the rows training would have fed it (the same remap)
    raw = RowBlock(frame[dense].to_numpy(np.float32), np.zeros(len(frame), np.float32),
                   [Jagged.from_ids(np.asarray(frame[n].to_numpy() % (REMAP_ROWS if n == "cat_2" else 1 << 62), np.int64))
                    for n in sparse])
    block = RowBlock(raw.dense, raw.labels, apply_remaps(remaps, sparse, raw.sparse))
    batch = block.to_batch(sparse)
    with torch.inference_mode():
        want = ScoringHead(qm)(batch.dense_features, batch.sparse_features)["logit"]
    got = served.score(frame)["logit"].to_numpy()
    assert np.array_equal(got, want.numpy())
    assert got[3] != got[0]  # an unseen id does not score as the trained one


def test_a_contract_with_a_remap_refuses_to_convert_without_it_or_with_another(remapped_export):
    from torchrec_kd.data.contract import RawRows
    from torchrec_kd.data.id_remap import IdRemap
    from torchrec_kd.errors import DataError

    path, _, remaps, _, _ = remapped_export
    contract = json.loads((path / "contract.json").read_text())
    with pytest.raises(DataError, match="id_remap.json"):
        RawRows(contract)
    other = {**remaps, "cat_1": IdRemap("cat_1", REMAP_ROWS)}
    with pytest.raises(DataError, match="another export"):
        RawRows(contract, other)


def test_a_windowed_runs_export_scores_raw_traffic_as_training_read_the_window(tmp_path):
    """End to end: quantize writes the remap, and raw ids of the test window score as the remapped split."""
    import torchrec_kd
    from torchrec_kd.cli import main
    from torchrec_kd.config import load_config
    from torchrec_kd.data import build_data
    from torchrec_kd.recipes.predict import run as predict

    window = ["data.synthetic.drift.windows=3", "data.synthetic.drift.rows_per_window=1536", "data.windows.count=3",
              "data.windows.index=0"]
    common = ["--config", str(TINY), "--output-dir", str(tmp_path), "train.steps=4", *window]
    assert main(["train-student", *common]) == 0
    assert main(["quantize", "--source", "student", *common, "quantize.dtypes=[int8]"]) == 0
    export = tmp_path / "export" / "student_int8"
    served = torchrec_kd.load_model(export)
    log = build_data(load_config(str(TINY), window).data, 0)
    assert set(served.remaps) == set(log.remaps) == {"cat_0", "cat_1"}
    test = log.splits["test"]
    cols = {name: test.dense[:, j] for j, name in enumerate(log.dense_names)}
    for f, name in enumerate(log.sparse_names):  # what traffic carries: raw ids for users / items
        jag = log.test_raw[name] if name in log.test_raw else test.sparse[f]
        cols[name] = ["|".join(map(str, jag.values[jag.offsets[i]:jag.offsets[i + 1]])) for i in range(len(test))]
    frame = pd.DataFrame(cols)
    converted = served.convert(frame).rows
    for f in range(len(log.sparse_names)):
        assert np.array_equal(converted.sparse[f].values, test.sparse[f].values)
    assert (converted.sparse[0].values == 0).any()  # the test window's new ids read the fallback row
    predict(load_config(str(TINY), window), str(export), "test", str(tmp_path / "split.csv"))  # the remapped split
    split = pd.read_csv(tmp_path / "split.csv", dtype={"logit": np.float32})
    assert np.array_equal(served.score(frame)["logit"].to_numpy(), split["logit"].to_numpy())
