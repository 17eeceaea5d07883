"""The two-tower model (forward = the towers' row-wise dot), sharded == unsharded, its int8 export's
item index and ``retrieve`` (same top-K as the in-process model), FAISS recall vs exact, bad options."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from torchrec_kd.config import ModelConfig
from torchrec_kd.data.contract import contract_files
from torchrec_kd.data.rows import Jagged, RowBlock
from torchrec_kd.errors import ConfigError
from torchrec_kd.models.build import build_model, build_model_from_meta, model_meta
from torchrec_kd.models.dlrm import make_tables
from torchrec_kd.models.init import init_weights
from torchrec_kd.models.registry import FeatureRoles
from torchrec_kd.quant.embeddings import quantize_model
from torchrec_kd.quant.export import export_torchscript, save_quantized
from torchrec_kd.quant.item_index import compute_item_index, item_index_files, quantize_rows_int8, read_item_index
from torchrec_kd.serving.retrieval import Retriever, index_options, recall_vs_exact

REPO = Path(__file__).resolve().parents[1]
FEATS = ["user_id", "user_history", "item_id", "genre"]
SIZES = [40, 60, 60, 8]
ROLES = FeatureRoles(("user_id", "user_history"), ("item_id", "genre"))
DENSE = 2
N_ITEMS = 60


def _cfg(score: str = "dot", temperature: float = 1.0) -> ModelConfig:
    return ModelConfig(arch="two_tower", embedding_dim=8, table_prefix="s_",
                       args={"user_layer_sizes": [16, 8], "item_layer_sizes": [12, 8], "score": score,
                             "temperature": temperature})


def _model(score: str = "dot", temperature: float = 1.0, seed: int = 0) -> torch.nn.Module:
    cfg = _cfg(score, temperature)
    model = build_model(cfg, make_tables(cfg, FEATS, SIZES), DENSE, device=torch.device("cpu"), roles=ROLES)
    init_weights(model, seed)
    return model


def _users(n: int, seed: int = 0) -> RowBlock:
    """Users' rows with every feature (item columns empty): user id, a history bag of 0..4 items, dense."""
    g = np.random.default_rng(seed)
    hist_len = g.integers(0, 5, n)
    sparse = [Jagged.from_ids(g.integers(0, SIZES[0], n)),
              Jagged.from_lengths(g.integers(0, N_ITEMS, hist_len.sum()), hist_len),
              Jagged.from_lengths(np.zeros(0, np.int64), np.zeros(n, np.int64)),
              Jagged.from_lengths(np.zeros(0, np.int64), np.zeros(n, np.int64))]
    return RowBlock(g.normal(size=(n, DENSE)).astype(np.float32), np.zeros(n, np.float32), sparse)


def _corpus() -> RowBlock:
    """Every item once: item id = corpus index, a genre (items features only, in item_features order)."""
    ids = np.arange(N_ITEMS)
    return RowBlock(np.zeros((N_ITEMS, 0), np.float32), np.zeros(N_ITEMS, np.float32),
                    [Jagged.from_ids(ids), Jagged.from_ids(ids % SIZES[3])])


def _pairs(n: int, seed: int = 1):
    """(user, item) rows with all four features, as training batches carry them."""
    g = np.random.default_rng(seed)
    users = _users(n, seed)
    items = g.integers(0, N_ITEMS, n)
    sparse = users.sparse[:2] + [Jagged.from_ids(items), Jagged.from_ids(items % SIZES[3])]
    return RowBlock(users.dense, np.zeros(n, np.float32), sparse).to_batch(FEATS)


@pytest.mark.parametrize("score,temperature", [("dot", 1.0), ("cosine", 0.1)])
def test_forward_is_the_row_wise_dot_of_the_towers_and_the_score_matrix_diagonal(score, temperature):
    model = _model(score, temperature)
    with torch.no_grad():
        model.logit_bias.fill_(0.25)
        batch = _pairs(12)
        logits = model(batch.dense_features, batch.sparse_features)
        u = model.user_embedding(batch.dense_features, batch.sparse_features)
        v = model.item_embedding(batch.sparse_features)
    assert logits.shape == (12,) and u.shape == v.shape == (12, 8)
    assert torch.allclose(logits, (u * v).sum(1) / temperature + 0.25, atol=1e-6)
    assert torch.allclose(torch.diagonal(model.score_matrix(u, v)), logits, atol=1e-6)
    if score == "cosine":
        assert torch.allclose(u.norm(dim=1), torch.ones(12), atol=1e-5)
    # a tower reads only its own features: an item-only KJT gives the same item rows, a user-only one the same users
    item_only = RowBlock(np.zeros((12, 0), np.float32), np.zeros(12, np.float32),
                         RowBlock.from_batch(batch).sparse[2:]).to_batch(FEATS[2:])
    user_only = RowBlock(batch.dense_features.numpy(), np.zeros(12, np.float32),
                         RowBlock.from_batch(batch).sparse[:2]).to_batch(FEATS[:2])
    with torch.no_grad():
        assert torch.allclose(model.item_embedding(item_only.sparse_features), v, atol=1e-6)
        assert torch.allclose(model.user_embedding(user_only.dense_features, user_only.sparse_features), u, atol=1e-6)
    # rebuilt from its meta: the same towers (the roles travel in the meta)
    meta = json.loads(json.dumps(model_meta(_cfg(score, temperature), make_tables(_cfg(), FEATS, SIZES), DENSE,
                                            roles=ROLES)))
    assert meta["roles"] == {"user": list(ROLES.user), "item": list(ROLES.item)}
    rebuilt = build_model_from_meta(meta)
    rebuilt.load_state_dict(model.state_dict())
    with torch.no_grad():
        assert torch.equal(rebuilt(batch.dense_features, batch.sparse_features), logits)


def test_bad_two_tower_args_and_missing_roles_are_one_line_config_errors():
    tables = make_tables(_cfg(), FEATS, SIZES)
    with pytest.raises(ConfigError, match="data.retrieval"):
        build_model(_cfg(), tables, DENSE)
    bad = ModelConfig(arch="two_tower", args={"user_layer_sizes": [16, 8], "item_layer_sizes": [4]})
    with pytest.raises(ConfigError, match="same width") as e:
        build_model(bad, tables, DENSE, roles=ROLES)
    assert "\n" not in str(e.value)
    with pytest.raises(ConfigError, match="score"):
        build_model(ModelConfig(arch="two_tower", args={"score": "l2"}), tables, DENSE, roles=ROLES)
    with pytest.raises(ConfigError, match="no table"):
        build_model(_cfg(), tables, DENSE, roles=FeatureRoles(("user_id", "age"), ("item_id",)))
    with pytest.raises(ConfigError, match="both user and item"):
        build_model(_cfg(), tables, DENSE, roles=FeatureRoles(("user_id", "item_id"), ("item_id",)))


def test_sharded_by_the_planner_on_one_process_scores_as_the_unsharded_model():
    from torchrec_kd.config import DistributedConfig, TrainConfig
    from torchrec_kd.distributed.env import init_distributed
    from torchrec_kd.distributed.sharding import build_optimizer, shard
    from torchrec_kd.models.build import model_io
    from torchrec_kd.models.train import RankerTrain

    env = init_distributed(DistributedConfig())
    cfg = _cfg()
    tables = make_tables(cfg, FEATS, SIZES)
    dmp = shard(RankerTrain(build_model(cfg, tables, DENSE, roles=ROLES), model_io(cfg)), env, 16, {})
    init_weights(dmp, seed=3, prefix="model.")
    plain = _model(seed=3)
    batch = _pairs(16, seed=5)
    with torch.no_grad():
        sharded = dmp.module.model(batch.dense_features, batch.sparse_features)
        assert torch.allclose(sharded, plain(batch.dense_features, batch.sparse_features), atol=1e-5)
    # it trains like a ranker: BCE on the pair logits through the fused table optimizer
    opt = build_optimizer(dmp, TrainConfig())
    batch.labels[::2] = 1.0
    loss = dmp(batch)[0]
    loss.backward()
    opt.step()
    with torch.no_grad():
        assert not torch.allclose(dmp.module.model(batch.dense_features, batch.sparse_features), sharded)


def _export(tmp_path: Path, model: torch.nn.Module, dtype: str = "int8") -> Path:
    """What quantize writes for a two-tower: the quantized model, contract, TorchScript program, item index."""
    from torchrec_kd.quant.scoring_head import ScoringHead
    from torchrec_kd.training.export_from_loop import features_contract

    cfg = _cfg()
    meta = model_meta(cfg, make_tables(cfg, FEATS, SIZES), DENSE, roles=ROLES)
    qm = quantize_model(model, dtype)
    index = compute_item_index(qm, _corpus(), FEATS[2:], np.arange(N_ITEMS) + 1000)
    program = ScoringHead(qm, "logit", None)
    extras = {**contract_files(features_contract(meta, ["age", "hour"])), **item_index_files(index),
              "model.ts": lambda f: export_torchscript(program, f)}
    return save_quantized(qm, tmp_path / f"two_tower_{dtype}", meta, extras=extras)


def test_the_int8_export_retrieves_the_same_top_k_as_the_in_process_int8_model(tmp_path):
    import torchrec_kd

    model = _model(seed=7)
    out = _export(tmp_path, model)
    served = torchrec_kd.load_model(out)
    users = _users(30, seed=11)
    ids, logits = served.retrieve(users, k=10)
    # the same model in process: quantized tables, the towers, the full score matrix, top-K
    qm = quantize_model(model, "int8")
    batch = users.to_batch(FEATS)
    corpus = _corpus().to_batch(FEATS[2:])
    with torch.no_grad():
        scores = qm.score_matrix(qm.user_embedding(batch.dense_features, batch.sparse_features),
                                 qm.item_embedding(corpus.sparse_features))
    top = torch.topk(scores, 10, dim=1)
    assert ids.shape == (30, 10)
    assert np.array_equal(ids, top.indices.numpy() + 1000)  # raw ids, best first
    assert np.allclose(logits, top.values.numpy(), atol=1e-5)
    # raw user rows (item columns absent) give the same answer; so does the user-only block
    frame = pd.DataFrame({"age": users.dense[:, 0], "hour": users.dense[:, 1], "user_id": users.sparse[0].values,
                          "user_history": ["|".join(map(str, users.sparse[1].values[a:b]))
                                           for a, b in zip(users.sparse[1].offsets[:-1], users.sparse[1].offsets[1:])]})
    assert np.array_equal(served.retrieve(frame, k=10)[0], ids)
    user_only = RowBlock(users.dense, users.labels, users.sparse[:2])
    assert np.array_equal(served.retrieve(user_only, k=10)[0], ids)
    # seen items are never returned; the int8 rows are searched on request
    seen = [top.indices[i, :3].numpy() for i in range(30)]
    ex_ids, _ = served.retrieve(users, k=10, exclude=seen)
    assert not any(np.isin(ex_ids[i], seen[i] + 1000).any() for i in range(30))
    assert np.array_equal(ex_ids[:, :7], ids[:, 3:])
    int8_ids, _ = served.retrieve(users, k=10, index={"dtype": "int8"})
    assert recall_vs_exact(torch.from_numpy(int8_ids), torch.from_numpy(ids)) > 0.9
    # the export's TorchScript program still scores pairs (the ranking contract)
    program = torch.jit.load(str(out / "model.ts"))
    pairs = _pairs(8)
    with torch.no_grad():
        assert torch.allclose(program(pairs.dense_features, pairs.sparse_features)["logit"].reshape(-1),
                              qm(pairs.dense_features, pairs.sparse_features), atol=1e-5)
    index = read_item_index(out)
    assert index is not None and len(index) == N_ITEMS and index.nbytes("int8") == N_ITEMS * (8 + 4)


def test_row_wise_int8_rows_are_within_half_a_step_of_fp32():
    rows = torch.randn(50, 16) * torch.rand(50, 1) * 5
    rows[3] = 0.0
    q, scale = quantize_rows_int8(rows)
    assert q.dtype == torch.int8 and q.abs().max() <= 127
    assert ((q.float() * scale.unsqueeze(1) - rows).abs() <= scale.unsqueeze(1) / 2 + 1e-6).all()


def _clustered(n: int, d: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(64, d, generator=g)
    return centers[torch.randint(0, 64, (n,), generator=g)] + 0.3 * torch.randn(n, d, generator=g)


@pytest.mark.parametrize("spec", [{"type": "ivf", "nlist": 64, "nprobe": 16}, {"type": "hnsw", "m": 16}])
def test_faiss_recall_at_k_against_exact_on_a_small_corpus(spec):
    pytest.importorskip("faiss", reason="faiss-cpu is not installed (pip install faiss-cpu)")
    from torchrec_kd.quant.item_index import ItemIndex

    items = _clustered(5000, 16, 0)
    q, s = quantize_rows_int8(items)
    index = ItemIndex(np.arange(5000), items, q, s)
    users = _clustered(200, 16, 1)
    exact, exact_logits = Retriever(index).search(users, 20)
    approx, approx_logits = Retriever(index, spec).search(users, 20)
    recall = recall_vs_exact(approx, exact)
    print(f"{spec['type']} recall@20 vs exact: {recall:.3f}")
    assert recall >= 0.9
    assert (approx_logits <= exact_logits[:, :1] + 1e-4).all()  # never better than the true best
    seen = [exact[i, :5].numpy() for i in range(200)]
    excluded, _ = Retriever(index, spec).search(users, 20, exclude=seen)
    assert not any(np.isin(excluded[i].numpy(), seen[i]).any() for i in range(200))


def test_bad_index_options_are_one_line_config_errors(tmp_path, capsys):
    for spec, words in [({"type": "annoy"}, "index.type"), ({"nprob": 4}, "nprobe"), ({"dtype": "int4"}, "index.dtype"),
                        ({"type": "ivf", "nlist": 0}, "nlist")]:
        with pytest.raises(ConfigError, match=words) as e:
            index_options(spec)
        assert "\n" not in str(e.value)
    # the CLI says it in one error line and exits 2 (a bad option stops before any work)
    from torchrec_kd.cli import main

    out = _export(tmp_path, _model())
    rc = main(["retrieve", "--config", str(REPO / "configs" / "tiny_synthetic.yaml"), "--model", str(out), "--index",
               "type=ivff", "--out", str(tmp_path / "top.csv")])
    assert rc == 2
    assert capsys.readouterr().err.strip().splitlines()[-1].startswith("error: --index.type must be one of")
    assert not (tmp_path / "top.csv").exists()


def test_retrieve_command_writes_each_users_top_k(tmp_path):
    from torchrec_kd.cli import main

    out = _export(tmp_path, _model(seed=2))
    users = _users(5, seed=4)
    frame = pd.DataFrame({"uid": [f"u{i}" for i in range(5)], "age": users.dense[:, 0], "hour": users.dense[:, 1],
                          "user_id": users.sparse[0].values, "user_history": [""] * 5})
    frame.to_csv(tmp_path / "users.csv", index=False)
    rc = main(["retrieve", "--config", str(REPO / "configs" / "tiny_synthetic.yaml"), "--model", str(out), "--input",
               str(tmp_path / "users.csv"), "--columns", "uid", "--k", "7", "--out", str(tmp_path / "top.csv")])
    assert rc == 0
    written = pd.read_csv(tmp_path / "top.csv")
    assert list(written.columns) == ["row", "uid", "rank", "item", "logit"]
    assert len(written) == 35 and list(written["rank"][:7]) == list(range(1, 8))
    import torchrec_kd

    ids, _ = torchrec_kd.load_model(out).retrieve(frame, 7)
    assert np.array_equal(written["item"].to_numpy().reshape(5, 7), ids)


SMALL_WORLD = ["data.retrieval.synthetic.num_users=200", "data.retrieval.synthetic.num_items=300"]


def test_a_retrieval_source_exports_its_corpus_index_and_retrieve_serves_its_eval_users(tmp_path):
    import torchrec_kd
    from torchrec_kd.cli import main
    from torchrec_kd.config import load_config
    from torchrec_kd.data import build_data
    from torchrec_kd.data.contract import input_contract
    from torchrec_kd.models.registry import feature_roles
    from torchrec_kd.quant.item_index import corpus_index, item_index_files

    config = REPO / "configs" / "retrieval_synthetic.yaml"
    cfg = load_config(config, [*SMALL_WORLD, f"output_dir={tmp_path / 'run'}"])
    data = build_data(cfg.data, cfg.seed, tasks=cfg.tasks)
    roles = feature_roles(cfg.data.retrieval)
    tables = make_tables(cfg.student, data.sparse_names, data.num_embeddings)
    model = build_model(cfg.student, tables, len(data.dense_names), device=torch.device("cpu"), roles=roles)
    init_weights(model, 0)
    batch = next(iter(data.batches("train", 64)))
    with torch.no_grad():  # the ranking contract on the source's own (user, item) rows
        assert model(batch.dense_features, batch.sparse_features).shape == (64,)
    qm = quantize_model(model, "int8")
    meta = model_meta(cfg.student, tables, len(data.dense_names), roles=roles)
    contract = input_contract(cfg.data, data.dense_names, data.sparse_names, data.num_embeddings)
    out = save_quantized(qm, tmp_path / "run" / "export" / "student_int8", meta,
                         extras={**contract_files(contract), **item_index_files(corpus_index(qm, data))})
    served, users, corpus = torchrec_kd.load_model(out), data.eval_users("test"), data.corpus()
    ids, _ = served.retrieve(users.block, 20, exclude=users.seen)
    # in process: every corpus item scored, the user's seen items out, the top 20
    with torch.no_grad():
        u_batch = users.block.to_batch(users.sparse_names)
        scores = qm.score_matrix(qm.user_embedding(u_batch.dense_features, u_batch.sparse_features),
                                 qm.item_embedding(corpus.block.to_batch(corpus.sparse_names).sparse_features))
    for i, seen in enumerate(users.seen):
        scores[i, torch.from_numpy(seen)] = -float("inf")
    assert np.array_equal(ids, corpus.ids[torch.topk(scores, 20, dim=1).indices.numpy()])
    # the command: the configured split's users, seen items excluded, one line per (user, rank)
    rc = main(["retrieve", "--config", str(config), *SMALL_WORLD, "--model", str(out), "--k", "20",
               "--out", str(tmp_path / "top.csv")])
    assert rc == 0
    written = pd.read_csv(tmp_path / "top.csv")
    assert len(written) == len(users) * 20
    assert np.array_equal(written["item"].to_numpy().reshape(len(users), 20), ids)
