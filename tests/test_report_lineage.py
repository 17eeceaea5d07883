"""A report shows one lineage: models made by another config or from an older model are named and left out
of the table, the picture and every figure. Plus the report's honest warnings and small formats.

The run directories are built by hand: metrics.json entries and checkpoint meta.json files record the
fingerprints ``step_fingerprint`` gives, exactly as training, distillation and quantize record them.
"""

import json
import logging

import matplotlib
import pytest

from tests.conftest import TINY
from torchrec_kd.config import load_config
from torchrec_kd.core.fingerprint import step_fingerprint
from torchrec_kd.reporting.lineage import expected_fingerprints, split_lineage
from torchrec_kd.reporting.plot import RC, build_figure
from torchrec_kd.reporting.report import kd_summary, write_markdown, write_report
from torchrec_kd.reporting.summary import TIE_AUC, announce_once, signed, summarize, summary_markdown, teacher_warning

OLD = load_config(TINY, ["distill.qat=int4"])
NEW = load_config(TINY, ["distill.qat=int4", "teacher.over_arch_layer_sizes=[64,1]"])  # the teacher retrained otherwise
AUC = {"teacher": 0.7101, "student": 0.6702, "distilled": 0.6803, "distilled_int8": 0.6802,
       "distilled_int4": 0.6123, "distilled_qat": 0.9999, "distilled_qat_int4": 0.9998}


def _entry(fp, auc, nbytes, **extra):
    return {"auc": auc, "ne": 0.93, "logloss": 0.52, "embedding_bytes": nbytes, "params": 1000,
            "train_samples_per_s": 400.0, "fingerprint": fp["digest"], "base": fp["base"], "best_step": 20,
            "best_val": {"auc": auc}, "steps": 20, "max_steps": 40, **extra}


def _train(out, metrics, cfg, name, **upstream):
    fp = step_fingerprint(cfg, name, upstream or None)
    (out / name).mkdir(parents=True, exist_ok=True)
    (out / name / "meta.json").write_text(json.dumps({"fingerprint": fp, "config": {"run_name": cfg.run_name}}))
    metrics[name] = _entry(fp, AUC[name], 256_000 if name == "teacher" else 128_000)
    return fp["digest"]


def _export(metrics, cfg, name, source_digest):
    fp = step_fingerprint(cfg, name, {"source": source_digest})
    source, _, dtype = name.rpartition("_")
    metrics[name] = {**_entry(fp, AUC[name], 48_000 if dtype == "int8" else 32_000), "source": source,
                     "source_fingerprint": source_digest, "dtype": dtype}


def _experiment(out, metrics, cfg, dtypes=("int8", "int4"), qat=True, teacher=True):
    """What `experiment` records: teacher, student, distilled from that teacher, exports, QAT."""
    t = _train(out, metrics, cfg, "teacher") if teacher else expected_fingerprints(cfg)["teacher"]["digest"]
    _train(out, metrics, cfg, "student")
    d = _train(out, metrics, cfg, "distilled", teachers=t)
    for dtype in dtypes:
        _export(metrics, cfg, f"distilled_{dtype}", d)
    if qat:
        _export(metrics, cfg, "distilled_qat_int4", _train(out, metrics, cfg, "distilled_qat", teachers=t))
    (out / "metrics.json").write_text(json.dumps(metrics))
    return metrics


def test_a_retrained_teacher_leaves_the_students_distilled_from_the_old_one_out(tmp_path):
    metrics = _experiment(tmp_path, {}, OLD)
    assert split_lineage(metrics, OLD, tmp_path).left_out == {}  # one lineage: everything is current
    _train(tmp_path, metrics, NEW, "teacher")  # retrain the teacher with another config, then report with it
    lineage = split_lineage(metrics, NEW, tmp_path)
    assert list(lineage.current) == ["teacher", "student"]
    assert lineage.left_out["distilled"].startswith("distilled from another teacher")
    assert lineage.left_out["distilled_qat"].startswith("distilled from another teacher")
    assert lineage.left_out["distilled_int4"] == "exported from the left-out distilled"
    assert lineage.left_out["distilled_qat_int4"] == "exported from the left-out distilled_qat"
    write_report(lineage.current, tmp_path, "run", left_out=lineage.left_out)
    md = (tmp_path / "report.md").read_text().splitlines()
    assert md[2].startswith("Left out of this report") and "distilled (distilled from another teacher" in md[2]
    rows = [line.split("|")[1].strip() for line in md if line.startswith("| ") and "---" not in line]
    assert rows == ["model", "teacher", "student"]
    assert not any(str(AUC[m]) in line for line in md[3:] for m in lineage.left_out)


def test_new_teacher_with_int8_only_never_uses_the_old_int4_or_qat(tmp_path):
    metrics = _experiment(tmp_path, {}, OLD)
    _experiment(tmp_path, metrics, load_config(TINY, ["teacher.over_arch_layer_sizes=[64,1]", "quantize.dtypes=[int8]",
                                                      "distill.qat=null"]), dtypes=("int8",), qat=False)
    cfg = load_config(TINY, ["teacher.over_arch_layer_sizes=[64,1]", "quantize.dtypes=[int8]", "distill.qat=null"])
    lineage = split_lineage(metrics, cfg, tmp_path)
    assert list(lineage.current) == ["teacher", "student", "distilled", "distilled_int8"]
    assert lineage.left_out["distilled_int4"].startswith("exported from an earlier distilled model")
    assert set(lineage.left_out) == {"distilled_int4", "distilled_qat", "distilled_qat_int4"}
    write_report(lineage.current, tmp_path, "run", left_out=lineage.left_out)
    md = (tmp_path / "report.md").read_text()
    # the old int4 (0.6123) and the old QAT student (0.9999, it would be the best row) appear in no number
    assert "0.6123" not in md and "0.9999" not in md and "0.9998" not in md
    assert "Its int8 tables hold 48,000 bytes" in md and "| distilled_qat" not in md and "| distilled_int4" not in md
    with matplotlib.rc_context(RC):
        fig = build_figure(lineage.current, list(lineage.current), left_out=sorted(lineage.left_out))
    fig.canvas.draw()
    texts = [t.get_text() for ax in fig.axes for t in ax.texts] + [fig._supxlabel.get_text()]
    assert not any("distilled_qat " in t or "distilled_int4 " in t for t in texts[:-1])  # no point, no label
    assert texts[-1].startswith("not drawn (another lineage") and "distilled_int4" in texts[-1]
    assert (tmp_path / "report.png").stat().st_size > 10_000
    # the experiment's summary of the same directory: the left-out models are named, and in no row
    summary = summarize({0: lineage.current}, {0: lineage.left_out})
    assert "distilled_qat" not in summary["models"] and "distilled_int4" not in summary["models"]
    assert "Left out on seed 0" in summary_markdown(summary, "run") and "0.9999" not in summary_markdown(summary, "run")


def test_report_with_a_config_whose_lineage_is_absent_is_refused_in_one_line(tmp_path, capsys):
    from torchrec_kd.cli import main

    _experiment(tmp_path, {}, OLD)
    code = main(["report", "--config", str(TINY), "--output-dir", str(tmp_path), "distill.qat=int4", "seed=1"])
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert code == 2 and len(errors) == 1 and "Traceback" not in err, err
    assert "run_name 'tiny_synthetic'" in errors[0] and "made by another config" in errors[0]
    assert "seed: 0 -> 1" in errors[0] and "(its -> this config's)" in errors[0]
    assert "Report with the config that made them" in errors[0]


@pytest.mark.parametrize("command", ["report", "experiment"])
def test_a_damaged_metrics_json_is_one_line_and_exit_2(tmp_path, capsys, command):
    from torchrec_kd.cli import main

    (tmp_path / "metrics.json").write_text('{"teacher": {"auc": 0.71, "ne"')  # truncated mid-write
    code = main([command, "--config", str(TINY), "--output-dir", str(tmp_path)])
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert code == 2 and len(errors) == 1 and "Traceback" not in err and "JSONDecodeError" not in err, err
    assert f"{tmp_path / 'metrics.json'} is damaged (not valid JSON" in errors[0]
    assert "restore it from a copy, or delete it" in errors[0]
    assert not (tmp_path / "teacher").exists()  # refused before any work


def _pair(t_val, s_val, t_test=0.70, s_test=0.69, validated=True):
    t = {"auc": t_test, "ne": 0.9, "best_val": {"auc": t_val} if validated else None}
    s = {"auc": s_test, "ne": 0.9, "best_val": {"auc": s_val} if validated else None}
    return {"teacher": t, "student": s}


def test_teacher_warning_claims_no_more_than_one_seed_shows():
    tie = teacher_warning(_pair(0.7838, 0.7841))  # the numbers: a tie on one seed
    assert tie.startswith("The teacher and the student alone are tied (validation AUC 0.7838 against 0.7841")
    assert "cannot help" not in tie and "below" not in tie and "soft labels can still help" in tie
    below = teacher_warning(_pair(0.70, 0.70 + TIE_AUC + 0.001))
    assert below.startswith("This teacher scores below the student alone") and "cannot help" not in below
    assert teacher_warning(_pair(0.79, 0.78)) is None
    # without validations the check runs on the test metrics, and says so
    untested = teacher_warning(_pair(None, None, t_test=0.6537, s_test=0.6996, validated=False))
    assert "test AUC (no validation) 0.6537 against 0.6996" in untested and "scores below" in untested
    # across seeds: the paired interval of teacher − student alone decides
    seeds = {s: {**_pair(0.8, 0.8, t_test=0.70 + d, s_test=0.70), "distilled": {"auc": 0.7, "ne": 0.9}}
             for s, d in enumerate([0.004, -0.003, 0.001])}
    note = summarize(seeds)["teacher_note"]
    assert note.startswith("The teacher is not shown to score above the student alone") and "3 seeds" in note


def test_the_teacher_warning_is_printed_once_per_process(tmp_path, caplog):
    from torchrec_kd.training.distill_run import warn_if_teacher_not_better

    pair = _pair(0.7838, 0.7841)
    (tmp_path / "teacher").mkdir()
    (tmp_path / "teacher" / "meta.json").write_text(json.dumps({"selection": pair["teacher"]}))
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "metrics.json").write_text(json.dumps({"student": pair["student"]}))
    cfg = load_config(TINY, [f"output_dir={tmp_path / 'run'}"])
    with caplog.at_level(logging.WARNING):
        for _ in range(3):  # distill, distill-qat, … of one experiment
            assert warn_if_teacher_not_better(cfg, tmp_path / "teacher") == teacher_warning(pair)
    assert sum("are tied" in r.getMessage() for r in caplog.records) == 1
    assert not announce_once(teacher_warning(pair))  # the experiment's report states it: nothing more


def _distill_dir(tmp_path, student_cfg, teacher_best_val):
    """A run directory as distill meets it: its teacher checkpoint and a student alone made by ``student_cfg``."""
    from torchrec_kd.training.distill_run import warn_if_teacher_not_better

    run = tmp_path / "run"
    cfg = load_config(TINY, [f"output_dir={run}"])
    metrics = {}
    t_fp = step_fingerprint(cfg, "teacher")
    s_fp = step_fingerprint(student_cfg, "student")
    metrics["teacher"] = _entry(t_fp, 0.6537, 256_000, best_val=teacher_best_val)
    metrics["student"] = _entry(s_fp, 0.6996, 128_000, best_val={"auc": 0.70})
    (run / "teacher").mkdir(parents=True)
    (run / "teacher" / "meta.json").write_text(json.dumps(
        {"fingerprint": t_fp, "selection": {"best_step": 20, "best_val": teacher_best_val, "steps": 20}}))
    (run / "metrics.json").write_text(json.dumps(metrics))
    return warn_if_teacher_not_better(cfg, run / "teacher")


def test_distill_compares_its_teacher_only_with_a_student_of_its_own_lineage(tmp_path):
    other = load_config(TINY, ["train.steps=10", "student.over_arch_layer_sizes=[8,1]"])  # another config's student
    assert step_fingerprint(other, "student")["digest"] != step_fingerprint(load_config(TINY), "student")["digest"]
    assert _distill_dir(tmp_path / "a", other, {"auc": 0.60}) is None  # 0.60 against 0.70: not this lineage's
    same = _distill_dir(tmp_path / "b", load_config(TINY), {"auc": 0.60})
    assert same.startswith("This teacher scores below the student alone (validation AUC 0.6000 against 0.7000")


def test_distill_falls_back_to_test_aucs_when_the_teacher_had_no_validation(tmp_path):
    warning = _distill_dir(tmp_path, load_config(TINY), None)
    assert warning is not None and "test AUC (no validation) 0.6537 against 0.6996" in warning, warning
    assert warning == teacher_warning({"teacher": {"auc": 0.6537, "best_val": None},
                                       "student": {"auc": 0.6996, "best_val": {"auc": 0.70}}})


def test_no_validation_is_said_first_and_ne_above_one_is_flagged(tmp_path):
    metrics = {"teacher": {"auc": 0.6537, "ne": 1.17, "embedding_bytes": 256_000, "best_val": None},
               "student": {"auc": 0.6996, "ne": 0.95, "embedding_bytes": 128_000, "best_val": None, "steps": 900},
               "distilled": {"auc": 0.7001, "ne": 0.94, "embedding_bytes": 128_000, "best_val": None, "steps": 900}}
    text = kd_summary(metrics)
    assert text.startswith("No validation: the student alone or the distilled student is its last training step")
    assert "its last step, 900, never validated" in text
    assert "Worse than predicting the base rate (test NE above 1): teacher (NE 1.1700)" in text
    md = write_markdown(metrics, tmp_path, "run").read_text()
    assert "| teacher | 0.6537 | 1.1700 (> 1: worse than the base rate) |" in md
    assert "| student | 0.6996 | 0.9500 |" in md


def test_deltas_have_no_negative_zero_and_exports_no_borrowed_training_speed(tmp_path):
    assert [signed(x) for x in (-0.00001, 0.0, -0.0, 0.00004, -0.0012)] == \
        ["+0.0000", "+0.0000", "+0.0000", "+0.0000", "-0.0012"]
    metrics = {"teacher": {"auc": 0.71, "ne": 0.9, "embedding_bytes": 256_000},
               "student": {"auc": 0.67, "ne": 0.9, "best_val": {"auc": 0.66}, "train_samples_per_s": 329.0},
               "distilled": {"auc": 0.678101, "ne": 0.9, "best_val": {"auc": 0.67}, "embedding_bytes": 128_000,
                             "train_samples_per_s": 317.0},
               "distilled_int4": {"auc": 0.678097, "ne": 0.9, "embedding_bytes": 32_000, "source": "distilled",
                                  "train_samples_per_s": 317.0}}
    text = kd_summary(metrics)
    assert "for +0.0000 AUC against fp32" in text and "-0.0000" not in text
    md = write_markdown(metrics, tmp_path, "run").read_text()
    int4 = next(line for line in md.splitlines() if line.startswith("| distilled_int4 "))
    distilled = next(line for line in md.splitlines() if line.startswith("| distilled "))
    assert int4.rstrip(" |").endswith("–") and distilled.rstrip(" |").endswith("317")


def test_a_student_retrained_with_another_config_is_left_out_and_nothing_is_compared(tmp_path):
    metrics = _experiment(tmp_path, {}, OLD)
    _train(tmp_path, metrics, load_config(TINY, ["distill.qat=int4", "student.embedding_dim=4",
                                                 "student.dense_arch_layer_sizes=[16,4]"]), "student")
    lineage = split_lineage(metrics, OLD, tmp_path)
    assert lineage.left_out == {"student": "made by another config (its -> this config's): "
                                           "student.dense_arch_layer_sizes: [16, 4] -> [16, 8]; "
                                           "student.embedding_dim: 4 -> 8"}
    md = write_markdown(lineage.current, tmp_path, "run", lineage.left_out).read_text()
    assert "No comparison: the student alone in this directory is not of this config's lineage" in md
    assert "Distilled − student alone" not in md and "| student |" not in md
