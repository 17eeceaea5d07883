"""The CLI end to end in one process on the tiny config."""

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from tests.conftest import REPO, TINY, copy_teacher


def test_train_teacher_cli_writes_metrics(tmp_path):
    out = subprocess.run([sys.executable, "-m", "torchrec_kd.cli", "train-teacher", "--config", str(TINY),
                          "--output-dir", str(tmp_path), "train.steps=10", "train.log_every=5"],
                         cwd=REPO, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    entry = json.loads((tmp_path / "metrics.json").read_text())["teacher"]
    for key in ("auc", "ne", "logloss", "params", "embedding_bytes", "train_samples_per_s"):
        assert key in entry
    assert entry["embedding_bytes"] == 4 * 1000 * 16 * 4  # 4 tables x 1000 rows x dim 16 x fp32
    assert [s for s, _ in entry["loss_curve"]] == [5, 10]
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tmp_path / "tensorboard" / "teacher")).Reload()
    assert [e.step for e in events.Scalars("train/loss")] == [5, 10]  # streamed while training
    assert "teacher test auc" in out.stderr
    # the console: our lines only; TorchRec's planner and the rest in the run's log file
    log = (tmp_path / "run.log").read_text()
    assert f"details in {tmp_path / 'run.log'}" in out.stderr.splitlines()[0]
    # the partitioner's per-plan INFO lines (97% of a run's log) are kept out of both unless -v
    assert "GreedyPerfPartitioner" not in out.stderr and "GreedyPerfPartitioner" not in log
    assert "sharding plan:" in log and "sharding plan:" not in out.stderr
    assert "teacher step 10/10 loss" in out.stderr and "FutureWarning" not in out.stderr
    assert len(out.stderr.splitlines()) < 20, out.stderr


def test_verbose_puts_third_party_logs_back_on_the_console(tmp_path):
    out = subprocess.run([sys.executable, "-m", "torchrec_kd.cli", "train-teacher", "-v", "--config", str(TINY),
                          "--output_dir", str(tmp_path), "train.steps=2"], cwd=REPO, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "GreedyPerfPartitioner" in out.stderr and "sharding plan:" in out.stderr
    assert (tmp_path / "metrics.json").is_file()  # --output_dir (the components' spelling) works too


def test_cli_bad_config_is_a_clear_error(tmp_path):
    out = subprocess.run([sys.executable, "-m", "torchrec_kd.cli", "train-teacher", "--config", str(TINY),
                          "teacher.embeding_dim=8"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 2
    assert "unknown key 'embeding_dim'; did you mean 'embedding_dim'?" in out.stderr
    assert "Traceback" not in out.stderr


def roc_auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Rank-sum AUC (ties ignored; scores are continuous)."""
    order = np.argsort(scores)
    ranks = np.empty(len(scores))
    ranks[order] = np.arange(1, len(scores) + 1)
    pos = labels == 1
    return (ranks[pos].sum() - pos.sum() * (pos.sum() + 1) / 2) / (pos.sum() * (~pos).sum())


def _cli(*args, cwd=REPO):
    return subprocess.run([sys.executable, "-m", "torchrec_kd.cli", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=600, env={**__import__("os").environ, "OMP_NUM_THREADS": "1"})


# The student is the plugin's non-DLRM ranker, distilled with the plugin's own loss term and a hint tapped by path.
PLUGIN = ["--plugin", "examples.custom_ranker.kd_plugin"]
PLUGIN_STUDENT = ["student.arch=mlp_ranker", "student.args={hidden: [16, 8]}",
                  "distill.losses=[{name: hard_bce, weight: 0.5}, {name: confident_soft_bce, weight: 0.5, "
                  "args: {gamma: 0.5}}, {name: hint_mse, weight: 0.05, args: {student: mlp, teacher: over_arch.model.0}}]"]


def test_teacher_student_distill_quantize_chain_with_a_plugin_student(tiny_teacher, tmp_path):
    common = [*PLUGIN, "--config", str(TINY), "--output-dir", str(tmp_path), "train.steps=8", "train.log_every=4",
              *PLUGIN_STUDENT]
    copy_teacher(tiny_teacher, tmp_path)  # the session's tiny teacher stands in for `train-teacher`
    for command in ("train-student", "distill"):
        out = _cli(command, *common)
        assert out.returncode == 0, (command, out.stderr[-3000:])
    assert json.loads((tmp_path / "distilled" / "meta.json").read_text())["model"]["arch"] == "mlp_ranker"

    out = _cli("quantize", *common, "quantize.dtypes=[int8,int4]")
    assert out.returncode == 0, out.stderr[-3000:]
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert {"teacher", "student", "distilled", "distilled_int8", "distilled_int4"} <= metrics.keys()
    for name in ("student", "distilled", "distilled_int8", "distilled_int4"):
        for key in ("auc", "ne", "logloss", "params", "embedding_bytes", "train_samples_per_s"):
            assert metrics[name][key] is not None, (name, key)
    # student alone and distilled are the same architecture; int4 rows: 8/2 + 4 bytes, 4 tables x 1000 rows
    assert metrics["student"]["params"] == metrics["distilled"]["params"]
    assert metrics["distilled_int4"]["embedding_bytes"] == 4 * 1000 * (8 // 2 + 4)
    assert metrics["distilled_int8"]["embedding_bytes"] == 4 * 1000 * (8 + 4)
    assert abs(metrics["distilled_int8"]["auc"] - metrics["distilled"]["auc"]) < 0.01
    assert (tmp_path / "export" / "distilled_int4" / "model.ts").is_file()

    # evaluate reproduces the recorded numbers, from a float checkpoint and from an export (in this process)
    from torchrec_kd.cli import main

    for source in ("distilled", "distilled_int4"):
        assert main(["evaluate", *common, "--source", source]) == 0
        again = json.loads((tmp_path / f"eval_{source}_test.json").read_text())
        assert abs(again["auc"] - metrics[source]["auc"]) < 1e-6, source

    # predict with the exported int4 student: one process and two ranks write the same scores
    model = str(tmp_path / "export" / "distilled_int4")
    assert main(["predict", *common, "--model", model, "--out", str(tmp_path / "p1.csv")]) == 0
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                          "-m", "torchrec_kd.cli", "predict", *common, "--model", model, "--out", str(tmp_path / "p2.csv")],
                         cwd=REPO, capture_output=True, text=True, timeout=600)
    assert two.returncode == 0, two.stderr[-3000:]
    p1, p2 = pd.read_csv(tmp_path / "p1.csv"), pd.read_csv(tmp_path / "p2.csv")
    assert len(p1) == 1024 and p1.equals(p2)
    auc = roc_auc(p1["probability"].to_numpy(), p1["label"].to_numpy())
    assert abs(auc - metrics["distilled_int4"]["auc"]) < 1e-3


def test_distill_refuses_a_mismatched_teacher(tiny_teacher, tmp_path):
    common = ["--config", str(TINY), "--output-dir", str(copy_teacher(tiny_teacher, tmp_path)), "train.steps=2"]
    out = _cli("distill", *common, "teacher.dense_arch_layer_sizes=[64,16]")
    assert out.returncode == 2, out.stderr[-3000:]  # a user error: one line, no traceback
    assert "Traceback" not in out.stderr
    assert ("was trained for another teacher or data (checkpoint -> this config): "
            "dense_arch_layer_sizes: [32, 16] -> [64, 16]; use the data and teacher config") in out.stderr


# Each documented bad input and the words its error promises (docs/configuration.md, "Bad input").
BAD_INPUTS = [
    (["teacher.embeding_dim=8"], "unknown key 'embeding_dim'; did you mean 'embedding_dim'?"),
    (["distributed.backend=mpi"], "distributed.backend: 'mpi' is not accepted; use one of 'auto' | 'gloo' | 'nccl'"),
    (["teacher.arch=dlrm_dnc"], "teacher.arch: unknown model 'dlrm_dnc'; did you mean 'dlrm_dcn'?"),
    (["student.arch=deepfm", "student.args={hidden_size: 8}"],
     "student.args: unknown key 'hidden_size'; did you mean 'hidden_layer_size'?"),
    (["distill.losses=[{name: hint_mse, args: {studnet: mlp}}]"],
     "distill.losses[0].args: unknown key 'studnet'; did you mean 'student'?"),
    (["train.steps=many"], "train.steps: expected int, got 'many'"),
    (["teacher.embedding_dim=32"], "teacher.dense_arch_layer_sizes must end with teacher.embedding_dim (32)"),
    (["student.table_prefix=t_"], "teacher.table_prefix and student.table_prefix must differ"),
    (["distill.losses=[{name: soft_bc}]"], "distill.losses[0].name: unknown loss 'soft_bc'; did you mean 'soft_bce'?"),
    (["sharding.default=row_wise"], "sharding.default: 'row_wise' is not available on cpu"),
    (["sharding.tables={t_cat_9: table_wise}"], "sharding.tables: unknown table(s) ['t_cat_9']"),
    (["data.batch_size=100"], "data.batch_size=100 must split over 1 rank(s)"),
]


@pytest.mark.parametrize("overrides,message", BAD_INPUTS, ids=[o[0] for o, _ in BAD_INPUTS])
def test_documented_bad_inputs_give_their_error(overrides, message, capsys, tmp_path):
    from torchrec_kd.cli import main

    assert main(["train-teacher", "--config", str(TINY), "--output-dir", str(tmp_path), *overrides]) == 2
    err = capsys.readouterr().err
    assert message in err, err[-2000:]
    assert "Traceback" not in err


def test_missing_config_file_and_missing_teacher(capsys, tmp_path):
    from torchrec_kd.cli import main

    assert main(["train-teacher", "--config", str(tmp_path / "nope.yaml")]) == 2
    assert "config file" in capsys.readouterr().err
    assert main(["distill", "--config", str(TINY), "--output-dir", str(tmp_path)]) == 2
    assert "is not a torchrec_kd checkpoint (run train-teacher" in capsys.readouterr().err
