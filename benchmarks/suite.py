"""The benchmark suite behind ``make bench``: training, inference, memory and scale side by side.

Runs ``training.py`` (throughput and memory of student / online KD / offline KD / teacher,
with a profile of the online-KD step), ``inference_memory.py`` (latency and samples/s at
batch 1, 64, 2048; bytes per row against each format's floor) and ``scale.py`` (1 M → 50 M
rows on 2 ranks, and a batch-size sweep), then writes ``benchmarks/results/latest.json``,
a dated copy and ``latest.md``, with the command as run, its whole wall time and which sections
it measured; ``--skip`` sections are taken from their last results file and recorded as reused
(with that file's date), never timed. ``--quick`` stops the scale runs at 10 M rows::

    python benchmarks/suite.py [--quick]          # or: python -m torchrec_kd.cli bench
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from datetime import date
from pathlib import Path
from typing import Any, Dict, List

sys.path.insert(0, str(Path(__file__).resolve().parent))
from launch import command_line  # noqa: E402
from targets import INT4_SPEEDUP, INT4_SPEEDUP_TARGET  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
SECTIONS = {"training": "training.json", "inference": "inference_memory.json", "scale": "scale.json"}


def _run(script: str, *args: str) -> float:
    """Run one benchmark script; return its wall seconds."""
    t0 = time.perf_counter()
    subprocess.run([sys.executable, str(REPO / "benchmarks" / script), *args], cwd=REPO, check=True)
    return round(time.perf_counter() - t0, 1)


def _load(name: str) -> Dict[str, Any]:
    return json.loads((RESULTS / name).read_text())


def targets(r: Dict[str, Any]) -> List[List[Any]]:
    """Every target of the performance issue: [name, value, met]."""
    out = [[k, v["value"], v["met"]] for k, v in r["training_targets"].items()]
    inf = r["inference"]
    ratio = inf["student_int4"]["b2048"]["samples_per_s"] / inf["teacher_fp32"]["b2048"]["samples_per_s"]
    out.append([INT4_SPEEDUP_TARGET, round(ratio, 2), ratio >= INT4_SPEEDUP])
    worst = max(v["bytes_per_row"] / v["floor_bytes_per_row"] for dims in r["memory_per_row"].values()
                for d, v in dims.items() if int(d[1:]) >= 32)
    out.append(["bytes per row / floor (d >= 32, every dtype) <= 1.10", round(worst, 3), worst <= 1.10])
    if big := next((v for v in r["scale"].values() if "teacher_distill_share" in v), None):
        for key, what in (("teacher_distill_share", "fp32 tables"), ("teacher_distill_fp16_share", "fp16 tables"),
                          ("teacher_distill_int8_share", "int8 tables; set-up loads them as fp16 first")):
            if key in big:
                out.append([f"at scale: teacher's share of the distillation peak / its training peak <= 1/3 ({what})",
                            round(big[key], 3), big[key] <= 1 / 3])
        for what in ("fp32", "fp16", "int8"):
            key = "teacher_distill_steps_share" if what == "fp32" else f"teacher_distill_{what}_steps_share"
            if key in big:
                out.append([f"at scale, during the steps: teacher's share of distillation / of training <= 1/3 ({what} tables)",
                            round(big[key], 3), big[key] <= 1 / 3])
    if "50000000" in r["scale"]:
        peak = round(r["scale"]["50000000"]["distill_peak_rss_gib"], 2)
        out.append(["50 M-row teacher trains and distills on 2 ranks", peak, True])
    return out


def markdown(r: Dict[str, Any]) -> str:
    t, m = r["train"], r["memory"]
    sections = r.get("sections", {})
    ran = [k for k, v in sections.items() if v["ran"]]
    reused = [f"{k} (from {v['file']}, {v.get('reused_date') or 'undated'})" for k, v in sections.items() if not v["ran"]]
    header = [f"`{r['command']}` on {r['date']}: measured {', '.join(ran) or 'nothing'} in {r['wall_s']:,.0f} s"
              + (f"; reused {', '.join(reused)}" if reused else "") + ".", ""] if sections else []
    lines = [*header, "## Training (samples/s, 2 ranks, configs/perf_criteo_shaped_synthetic.yaml)", "",
             "| student | online KD | offline KD | teacher forward | teacher train |", "|---|---|---|---|---|",
             f"| {t['student_samples_per_s']:,.0f} | {t['online_kd_samples_per_s']:,.0f} | {t['offline_kd_samples_per_s']:,.0f} "
             f"| {t['teacher_forward_samples_per_s']:,.0f} | {t['teacher_train_samples_per_s']:,.0f} |", "",
             *([f"Evaluating the distilled student: {t['eval']['student_only_samples_per_s']:,.0f} samples/s alone, "
                f"{t['eval']['with_teacher_samples_per_s']:,.0f} with the teacher running too.", ""] if t.get("eval") else []),
             f"Teacher peak resident memory (all ranks): training {m['teacher_train_rss_gib']:.3f} GiB, online distillation "
             f"{m['teacher_distill_rss_gib']:.3f} GiB ({m['teacher_distill_fp16_rss_gib']:.3f} GiB with fp16 tables, "
             f"{m.get('teacher_distill_int8_rss_gib', float('nan')):.3f} GiB int8), offline "
             f"distillation {m['teacher_offline_distill_rss_gib']:.3f} GiB. Standing between steps: training "
             f"{m['teacher_train_standing_gib']:.3f} GiB, online distillation {m['teacher_distill_standing_gib']:.3f} GiB "
             f"({m['teacher_distill_fp16_standing_gib']:.3f} GiB fp16, "
             f"{m.get('teacher_distill_int8_standing_gib', float('nan')):.3f} GiB int8).", "",
             "## Inference", "", "| model | batch | p50 ms | p99 ms | samples/s |", "|---|---|---|---|---|"]
    for name, sizes in r["inference"].items():
        for b, v in sizes.items():
            lines.append(f"| {name} | {b[1:]} | {v['p50_ms']:.3f} | {v['p99_ms']:.3f} | {v['samples_per_s']:,.0f} |")
    dims_header = " | ".join(next(iter(r["memory_per_row"].values())))
    lines += ["", "## Bytes per embedding row (floor)", "", "| dtype | " + dims_header + " |",
              "|---" * (1 + len(next(iter(r["memory_per_row"].values())))) + "|"]
    for dtype, dims in r["memory_per_row"].items():
        cells = " | ".join(f"{v['bytes_per_row']:.0f} ({v['floor_bytes_per_row']})" for v in dims.values())
        lines.append(f"| {dtype} | {cells} |")
    lines += ["", "## Scale (2 ranks)", "",
              "| total rows | teacher step s | teacher peak GiB | distill step s | distill peak GiB |",
              "|---|---|---|---|---|"]
    for rows, v in r["scale"].items():
        lines.append(f"| {int(rows):,} | {v['step_s']:.3f} | {v['peak_rss_gib']:.2f} | {v['distill_step_s']:.3f} | "
                     f"{v['distill_peak_rss_gib']:.2f} |")
    big = next((v for v in r["scale"].values() if "teacher_distill_share" in v), None)
    if big:
        lines += ["", f"At the largest size the student alone peaks at {big['student_peak_rss_gib']:.2f} GiB; the teacher "
                  f"adds {big['distill_peak_rss_gib'] - big['student_peak_rss_gib']:.2f} GiB to distillation's peak "
                  f"({big['distill_fp16_peak_rss_gib'] - big['student_peak_rss_gib']:.2f} GiB with fp16 tables, step "
                  f"{big['distill_fp16_step_s']:.3f} s): {big['teacher_distill_share']:.2f} "
                  f"({big['teacher_distill_fp16_share']:.2f}) of its training peak."]
        if "distill_int8_steps_peak_rss_gib" in big:
            lines += ["", f"During the timed steps (peak counter reset after set-up) the teacher adds "
                      f"{big['distill_steps_peak_rss_gib'] - big['student_steps_peak_rss_gib']:.2f} GiB with fp32 tables, "
                      f"{big['distill_fp16_steps_peak_rss_gib'] - big['student_steps_peak_rss_gib']:.2f} GiB fp16, "
                      f"{big['distill_int8_steps_peak_rss_gib'] - big['student_steps_peak_rss_gib']:.2f} GiB int8 "
                      f"(step {big['distill_int8_step_s']:.3f} s) against a teacher-training peak of "
                      f"{big['steps_peak_rss_gib']:.2f} GiB: {big['teacher_distill_steps_share']:.2f} / "
                      f"{big['teacher_distill_fp16_steps_share']:.2f} / {big['teacher_distill_int8_steps_share']:.2f}. "
                      f"An int8 teacher is loaded in fp16, then quantized: its whole-run peak is "
                      f"{big['distill_int8_peak_rss_gib']:.2f} GiB."]
    sweep = r.get("batch_sweep", {})
    if sweep:
        lines += ["", f"Batch sweep at {sweep['total_rows']:,} rows (teacher train): " + ", ".join(
            f"b{b}: {v['samples_per_s']:,.0f} samples/s, {v['peak_rss_gib']:.2f} GiB"
            for b, v in sweep.items() if b != "total_rows")]
    lines += ["", "## Targets", "", "| target | value | met |", "|---|---|---|"]
    lines += [f"| {n} | {v} | {'yes' if ok else 'no'} |" for n, v, ok in r["targets"]]
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="scale runs up to 10 M rows only")
    p.add_argument("--skip", nargs="*", default=[], choices=["training", "inference", "scale"],
                   help="reuse these sections' last results")
    a = p.parse_args()
    t0 = time.perf_counter()
    command = command_line()
    args = {"training": ("training.py", "--profile"), "inference": ("inference_memory.py",),
            "scale": ("scale.py", *(["--rows", "1000000", "10000000", "--batches", "1024", "4096"] if a.quick else []))}
    # which sections this command measured, and which it took from an earlier run's results file
    sections: Dict[str, Dict[str, Any]] = {}
    for name, (script, *extra) in args.items():
        if name in a.skip:
            earlier = _load(SECTIONS[name])
            sections[name] = {"ran": False, "reused": True, "wall_s": None, "file": SECTIONS[name],
                              "reused_date": earlier.get("date"), "reused_command": earlier.get("command")}
        else:
            sections[name] = {"ran": True, "reused": False, "wall_s": _run(script, *extra), "file": SECTIONS[name]}
    training, inference, scale = _load("training.json"), _load("inference_memory.json"), _load("scale.json")
    result: Dict[str, Any] = {
        "date": date.today().isoformat(),
        "command": command,
        "sections": sections,
        "train": training["train"],
        # memory.<dtype>.{bytes_per_row, floor_bytes_per_row} at the teacher's dim 64; all dims below
        "memory": {**training["memory"], **{d: v["d64"] for d, v in inference["memory"].items()}},
        "memory_per_row": inference["memory"],
        "inference": inference["inference"],
        "scale": scale["scale"], "batch_sweep": scale.get("batch_sweep", {}),
        "profile_online_kd": training.get("profile_online_kd"),
        "training_targets": training["targets"],
        "harness": {"training": training["harness"], "scale": scale["harness"]},
    }
    result["targets"] = targets(result)
    # the whole command; with sections skipped it covers only what ran (see "sections")
    result["wall_s"] = round(time.perf_counter() - t0, 1)
    text = json.dumps(result, indent=2)
    (RESULTS / "latest.json").write_text(text)
    (RESULTS / f"bench-{result['date']}.json").write_text(text)
    md = markdown(result)
    (RESULTS / "latest.md").write_text(md)
    print(md)


if __name__ == "__main__":
    main()
