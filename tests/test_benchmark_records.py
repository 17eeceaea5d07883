"""What the benchmarks record is what they measured: per-model peaks, reused runs, one int4 target."""

import importlib.util
import json
import shlex
import sys
from pathlib import Path

import pytest

from torchrec_kd.training.pipelined_run import peak_rss_gib, reset_peak_rss

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


def _load(name):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="the peak counter resets on Linux only")
def test_peak_rss_restarts_per_model():
    block = bytearray(300 * 2**20)
    block[::4096] = b"\1" * len(block[::4096])  # touch every page: resident
    before = peak_rss_gib()
    del block
    reset_peak_rss()
    assert peak_rss_gib() < before - 0.2  # the next model does not inherit the earlier peak


def test_reused_experiment_models_are_named_and_not_timed(tmp_path):
    dist = _load("distillation")
    seed = tmp_path / "seed_0"
    seed.mkdir()
    entry = {"fingerprint": "f", "train_samples_per_s": 1.0, "auc": 0.7}
    (seed / "metrics.json").write_text(json.dumps({"teacher": entry, "student": entry}))
    before = dist._entries(tmp_path)
    # the launch retrains the student (new timing) and report adds latencies to every entry
    (seed / "metrics.json").write_text(json.dumps({"teacher": {**entry, "latency_ms_b1": 2.0},
                                                   "student": {**entry, "train_samples_per_s": 1.5},
                                                   "distilled": entry}))
    assert dist.reused_models(before, dist._entries(tmp_path)) == ["seed_0/teacher"]
    summary = {"models": {}, "kd_gain": None, "teacher_gap": None}
    timed = dist.targets("equal_data", summary, None)["3-seed benchmark <= 30 min on 2 ranks"]
    assert timed == (None, None)  # not judged on a rerun
    assert dist.targets("equal_data", summary, 1900.0)["3-seed benchmark <= 30 min on 2 ranks"] == (31.7, False)


def test_ratios_only_from_phases_measured():
    training = _load("training")
    ms = lambda v: {"step_ms": v}  # noqa: E731
    partial = training._ratios({"student": ms(20.0), "offline_kd": ms(23.0)})
    assert partial == {training.OFFLINE_RATIO: {"value": 1.15, "met": False}}
    full = training._ratios({"student": ms(20.0), "offline_kd": ms(21.0), "teacher_forward": ms(10.0),
                             "online_kd": ms(31.5)})
    assert full[training.ONLINE_RATIO] == {"value": 1.05, "met": True}


def test_one_int4_speed_target(monkeypatch):
    suite, targets = _load("suite"), _load("targets")
    r = {"training_targets": {}, "scale": {},
         "inference": {"student_int4": {"b2048": {"samples_per_s": 6.0}},
                       "teacher_fp32": {"b2048": {"samples_per_s": 1.0}}},
         "memory_per_row": {"int4": {"d64": {"bytes_per_row": 36, "floor_bytes_per_row": 36}}}}
    name, value, met = suite.targets(r)[0]
    assert (name, value, met) == (targets.INT4_SPEEDUP_TARGET, 6.0, 6.0 >= targets.INT4_SPEEDUP)
    source = (BENCH / "production_student.py").read_text()
    assert "INT4_SPEEDUP * sps" in source and ">= 8" not in source
    monkeypatch.setattr(sys, "argv", ["benchmarks/production_student.py", "--retime", "--seeds", "0"])
    assert shlex.split(_load("launch").command_line()) == ["python", *sys.argv]  # as run, --retime kept


def test_suite_says_which_sections_it_measured():
    suite = _load("suite")
    r = json.loads((BENCH / "results" / "latest.json").read_text())
    r.update({"command": "python benchmarks/suite.py --skip training scale", "wall_s": 61.0,
              "sections": {"training": {"ran": False, "reused": True, "wall_s": None, "file": "training.json",
                                        "reused_date": "2026-12-01"},
                           "inference": {"ran": True, "reused": False, "wall_s": 60.2, "file": "inference_memory.json"},
                           "scale": {"ran": False, "reused": True, "wall_s": None, "file": "scale.json",
                                     "reused_date": None}}})
    first = suite.markdown(r).splitlines()[0]
    assert first == ("`python benchmarks/suite.py --skip training scale` on 2026-12-01: measured inference in 61 s; "
                     "reused training (from training.json, 2026-12-01), scale (from scale.json, undated).")
