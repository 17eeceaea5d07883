"""Distillation on 2 gloo ranks: every EBC pipelined, pipelined == eager, teacher frozen, soft targets the
teachers' logits; for TorchRec's DLRM, DLRM_DCN, SimpleDeepFMNN and a plugin's non-DLRM ranker, mixed."""

import pytest

from tests.conftest import TINY, copy_teacher
from tests.multiprocess import run_ranks
from tests.pipelined import assert_pipelined_equals_eager_and_teacher_frozen, pipelined_vs_eager
from torchrec_kd.config import load_config
from torchrec_kd.training.model_run import TrainModelRun

STEPS = 5


def _overrides(out_dir):
    return [f"output_dir={out_dir}", f"train.steps={STEPS}"]


PLUGIN = "examples.custom_ranker.kd_plugin"
# teachers of three architectures (the DCN one shares the tiny config's table prefix: it never meets the DLRM)
TEACHERS = {"dlrm": [], "dcn": ["teacher.arch=dlrm_dcn", "teacher.dcn_low_rank_dim=8"],
            "deepfm": ["teacher.arch=deepfm", "teacher.args={hidden_layer_size: 16, deep_fm_dimension: 8}",
                       "teacher.table_prefix=t2_"]}
DEEPFM_STUDENT = ["student.arch=deepfm", "student.args={hidden_layer_size: 8, deep_fm_dimension: 4}"]
FEATURE_TERMS = ("[{name: hard_bce, weight: 0.5}, {name: soft_bce, weight: 0.5}, {name: hint_mse, weight: 0.1%s},"
                 " {name: embedding_cosine, weight: 0.1}]")


def _train_teachers(rank, world_size, out_dir):
    for name, overrides in TEACHERS.items():
        if name == "dlrm":  # the session's tiny teacher (conftest.tiny_teacher)
            continue
        r = TrainModelRun(load_config(TINY, _overrides(f"{out_dir}/{name}") + overrides), "teacher")
        r.setup()
        r.train()
        r.save({})


def _distill_pipelined_vs_eager(rank, world_size, out_dir, teachers):
    runs = {  # DLRM -> DLRM, with the loss the tiny config names
        "dlrm": pipelined_vs_eager(rank, world_size, f"{out_dir}/dlrm", STEPS,
                                   [f"distill.teacher_checkpoint={teachers}/dlrm/teacher"]),
        # DLRM_DCN -> SimpleDeepFMNN (a probability head), hint and embedding terms at both models' defaults
        "dcn_to_deepfm": pipelined_vs_eager(
            rank, world_size, f"{out_dir}/dcn", STEPS,
            [f"distill.teacher_checkpoint={teachers}/dcn/teacher", *TEACHERS["dcn"], *DEEPFM_STUDENT,
             f"distill.losses={FEATURE_TERMS % ''}"]),
        # DLRM + DeepFM ensemble -> the plugin's MLP ranker, its hint tapped by path inside the DLRM's over arch
        "ensemble_to_mlp": pipelined_vs_eager(
            rank, world_size, f"{out_dir}/mlp", STEPS,
            [f"distill.teachers=[{{checkpoint: {teachers}/dlrm/teacher}}, {{checkpoint: {teachers}/deepfm/teacher}}]",
             "student.arch=mlp_ranker", "student.args={hidden: [16, 8]}",
             "distill.losses=" + FEATURE_TERMS % ", args: {student: mlp, teacher: over_arch.model.0}"],
            plugins=[PLUGIN]),
    }
    return runs


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory, tiny_teacher):
    """<dir>/{dlrm,dcn,deepfm}/teacher: the session's DLRM teacher and two trained here on 2 ranks."""
    out = tmp_path_factory.mktemp("kd")
    copy_teacher(tiny_teacher, out / "dlrm")
    run_ranks(_train_teachers, 2, out, str(out))
    return out


def test_distillation_pipelined_equals_eager_and_teacher_stays_frozen_for_any_architectures(teacher_dir, tmp_path):
    results = run_ranks(_distill_pipelined_vs_eager, 2, tmp_path, str(tmp_path), str(teacher_dir))
    for runs in results:
        assert_pipelined_equals_eager_and_teacher_frozen(runs["dlrm"])
        assert_pipelined_equals_eager_and_teacher_frozen(runs["dcn_to_deepfm"])
        assert runs["dcn_to_deepfm"]["taps"] == ["student/hint:inter_arch", "teacher/hint:inter_arch",
                                                 "student/embeddings:sparse_arch", "teacher/embeddings:sparse_arch"]
        # three embedding collections: two teachers' and the student's
        assert_pipelined_equals_eager_and_teacher_frozen(runs["ensemble_to_mlp"], n_pipelined=3)
        assert runs["ensemble_to_mlp"]["taps"] == ["student/hint:mlp", "teacher/hint:over_arch.model.0",
                                                   "student/embeddings:ebc", "teacher/embeddings:sparse_arch"]
