"""report.md / report.png / TensorBoard from a metrics.json, and latency timing."""

import torch

from torchrec_kd.config import SyntheticDataConfig
from torchrec_kd.data.synthetic import SyntheticClickLog
from torchrec_kd.latency import latency_ms, take_rows
from torchrec_kd.report import kd_summary, write_report

METRICS = {
    "teacher": {"auc": 0.80, "ne": 0.78, "logloss": 0.43, "embedding_bytes": 64_000_000, "params": 16_000_000,
                "train_samples_per_s": 20_000.0, "loss_curve": [[100, 0.5], [200, 0.45]], "steps": 200},
    "student": {"auc": 0.78, "ne": 0.82, "logloss": 0.45, "embedding_bytes": 16_000_000, "params": 4_000_000,
                "train_samples_per_s": 50_000.0, "loss_curve": [[100, 0.52]], "steps": 100},
    "distilled": {"auc": 0.79, "ne": 0.80, "logloss": 0.44, "embedding_bytes": 16_000_000, "params": 4_000_000,
                  "train_samples_per_s": 30_000.0, "loss_curve": [[100, 0.51]], "steps": 100,
                  "val_curve": [{"step": 50, "auc": 0.77, "ne": 0.83, "logloss": 0.46}]},
    "distilled_int4": {"auc": 0.7899, "ne": 0.80, "logloss": 0.44, "embedding_bytes": 2_000_000, "params": 4_000_000,
                       "latency_ms_b1": 0.2},
}


def test_summary_states_what_kd_bought_and_that_one_seed_is_not_a_result():
    text = kd_summary(METRICS)
    assert text.startswith("Distilled − student alone: +0.0100 test AUC on one seed")
    assert "one seed has no interval, so this alone is not a result to act on" in text
    assert "Test AUC 0.7800 alone" in text and "0.7900 distilled" in text and "same data and maximum budget" in text
    assert "same steps and seed" not in text and "closing" not in text
    assert "int4 tables hold 2,000,000 bytes, 32x less" in text and "-0.0001 AUC" in text


def test_report_files(tmp_path):
    paths = write_report(METRICS, tmp_path, "run")
    md = (tmp_path / "report.md").read_text()
    assert "| distilled_int4 | 0.7899 |" in md and "| teacher | 0.8000 |" in md
    assert md.index("| teacher") < md.index("| student") < md.index("| distilled |")
    png = (tmp_path / "report.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    events = list((tmp_path / "tensorboard" / "distilled").glob("events.out.tfevents.*"))
    assert events and events[0].stat().st_size > 0
    assert len(paths) == 3


def test_take_rows_and_latency():
    gen = SyntheticClickLog(SyntheticDataConfig(num_sparse=3, num_dense=2, num_embeddings=50, pooling=[1, 3, 2],
                                                block_rows=16, num_clusters=8, latent_dim=4))
    batch = gen.batch("test", 0, 64)
    few = take_rows(batch, 5)
    assert few.labels.tolist() == batch.labels[:5].tolist()
    full, part = batch.sparse_features.to_dict(), few.sparse_features.to_dict()
    for key in batch.sparse_features.keys():
        assert all(torch.equal(a, b) for a, b in zip(part[key].to_dense(), full[key].to_dense()[:5]))
    lat = latency_ms(lambda b: b.dense_features.sum(1), batch, (1, 64), min_run_time=0.01)
    assert set(lat) == {"latency_ms_b1", "latency_ms_b64"} and all(v > 0 for v in lat.values())
