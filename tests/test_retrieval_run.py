"""A retrieval run through the recipes: the sharded two-tower's towers, called apart on one tower's
features, score each (user, item) row as its own forward does; the entry carries GAUC and recall@K."""

import logging
import re

import pytest
import torch
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from tests.conftest import REPO
from torchrec_kd.config import load_config

SMALL = ["train.epochs=null", "train.steps=6", "train.eval_every=3", "train.log_every=0", "data.batch_size=128",
         "data.retrieval.synthetic.num_users=200", "data.retrieval.synthetic.num_items=300",
         "data.retrieval.ks=[5,20]"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from torchrec_kd.training.model_run import TrainModelRun

    out = tmp_path_factory.mktemp("retrieval")
    cfg = load_config(REPO / "configs" / "retrieval_synthetic.yaml", [f"output_dir={out}", *SMALL])
    run = TrainModelRun(cfg, "student")
    run.setup()
    lines, log = _Lines(), logging.getLogger("torchrec_kd.training.loop")
    level = log.level
    log.addHandler(lines)
    log.setLevel(logging.INFO)
    try:
        run.train()
    finally:
        log.removeHandler(lines)
        log.setLevel(level)
    run.console = lines.messages
    return run


class _Lines(logging.Handler):
    def __init__(self):
        super().__init__(logging.INFO)
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())


def _only(kjt, keys):
    parts = kjt.to_dict()
    return KeyedJaggedTensor.from_jt_dict({k: parts[k] for k in keys})


def test_the_towers_called_apart_score_each_row_as_the_forward_does(trained):
    from torchrec_kd.distill.candidates import in_order

    model, keys = trained.scored_model(), list(trained.data.sparse_names)
    batch = next(iter(trained.data.batches("test", 64, 0, 1)))
    with torch.no_grad():
        whole = model(batch.dense_features, batch.sparse_features)
        u = model.user_embedding(batch.dense_features, in_order(_only(batch.sparse_features, trained.data.user_keys), keys))
        v = model.item_embedding(in_order(_only(batch.sparse_features, trained.data.item_keys), keys))
        apart = torch.diagonal(model.score_matrix(u, v))
    torch.testing.assert_close(apart, whole, rtol=1e-5, atol=1e-5)


def test_a_retrieval_entry_has_gauc_and_recall_and_selects_on_recall(trained):
    metrics = trained.evaluate("test")
    assert {"gauc", "gauc_users", "retrieval", "recall@20"} <= metrics.keys()
    assert {"recall@5", "recall@20", "ndcg@20", "hr@20", "mrr", "users"} <= metrics["retrieval"].keys()
    assert metrics["recall@20"] == metrics["retrieval"]["recall@20"]
    assert trained.selector.metric == "recall@20" and "recall@20" in trained.selector.state.best
    # the console's validation line shows the metric that selects (a tower model's recall@20), not AUC alone
    validations = [m for m in trained.console if "| val auc" in m]
    assert len(validations) == 2
    assert all(re.search(r"\| val auc 0\.\d{4} ne \d\.\d{4} recall@20 0\.\d{4} \(best recall@20 0\.\d{4} at \d+\)", m)
               for m in validations), validations


def test_the_quantized_two_tower_entry_has_gauc_and_recall_too(trained):
    from torchrec_kd.recipes import quantize
    from torchrec_kd.reporting.metrics_file import read_metrics

    trained.save(trained.evaluate("test"))
    quantize.run(trained.cfg, "student", ["int8"])
    entry = read_metrics(trained.cfg.out_dir / "metrics.json")["student_int8"]
    assert {"gauc", "retrieval", "recall@20"} <= entry.keys()
    assert 0.0 <= entry["retrieval"]["recall@20"] <= 1.0 and entry["recall@20"] == entry["retrieval"]["recall@20"]
    # the export's int8 item index is judged too: the same users and corpus, the item rows rounded to int8
    index = entry["retrieval_int8_index"]
    assert index.keys() == entry["retrieval"].keys() and abs(index["recall@20"] - entry["recall@20"]) <= 0.05
    assert entry["item_index"]["items"] == 300 and entry["item_index"]["bytes"]["int8"] < entry["item_index"]["bytes"]["fp32"]
