"""Benchmark: inference latency/throughput of teacher and student (fp32, int8, int4) and
embedding bytes per row against each format's floor.

Models are built from the config with fresh weights (latency does not depend on what
they learned); inputs are test rows of the configured data. Writes
``benchmarks/results/inference_memory.{json,md}``::

    python benchmarks/inference_memory.py [--config configs/perf_criteo_shaped_synthetic.yaml] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from torchrec_kd.config import load_config
from torchrec_kd.data import build_data
from torchrec_kd.models.dlrm import build_dlrm, make_tables
from torchrec_kd.quant.embeddings import embedding_storage_bytes_per_table, floor_bytes_per_row, quantize_model
from torchrec_kd.reporting.latency import latency_profile

RESULTS = Path(__file__).resolve().parent / "results"
BATCH_SIZES = (1, 64, 2048)
DTYPES = ("fp32", "fp16", "int8", "int4", "int2")
DIMS = (16, 32, 64, 128)


def inference(cfg, threads: int) -> dict:
    data = build_data(cfg.data, cfg.seed)
    rows = next(iter(data.batches("test", max(BATCH_SIZES), num_batches=1)))
    dense_in = len(data.dense_names)
    teacher = build_dlrm(cfg.teacher, make_tables(cfg.teacher, data.sparse_names, data.num_embeddings), dense_in,
                         torch.device("cpu")).eval()
    student = build_dlrm(cfg.student, make_tables(cfg.student, data.sparse_names, data.num_embeddings), dense_in,
                         torch.device("cpu")).eval()
    models = {"teacher_fp32": teacher, "student_fp32": student,
              "student_int8": quantize_model(student, "int8"), "student_int4": quantize_model(student, "int4")}
    torch.set_num_threads(threads)
    out = {}
    for name, model in models.items():
        prof = latency_profile(lambda b, m=model: m(b.dense_features, b.sparse_features), rows, BATCH_SIZES, 1.0)
        out[name] = {f"b{size}": p for size, p in prof.items()}
    return out


def memory() -> dict:
    from torchrec_kd.config import ModelConfig

    out = {}
    for dtype in DTYPES:
        out[dtype] = {}
        for dim in DIMS:
            cfg = ModelConfig(embedding_dim=dim, dense_arch_layer_sizes=[dim], over_arch_layer_sizes=[4, 1], table_prefix="m_")
            model = build_dlrm(cfg, make_tables(cfg, ["cat_0"], [1000]), 1, torch.device("cpu"))
            q = quantize_model(model, dtype)
            stored = embedding_storage_bytes_per_table(q)["m_cat_0"] / 1000
            out[dtype][f"d{dim}"] = {"bytes_per_row": stored, "floor_bytes_per_row": floor_bytes_per_row(dim, dtype)}
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="configs/perf_criteo_shaped_synthetic.yaml")
    p.add_argument("--threads", type=int, default=1, help="intra-op threads (1: one serving worker per core)")
    a = p.parse_args()
    cfg = load_config(a.config)
    result = {"config": a.config, "threads": a.threads, "inference": inference(cfg, a.threads), "memory": memory()}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "inference_memory.json").write_text(json.dumps(result, indent=2))
    lines = ["| model | batch | p50 ms | p99 ms | samples/s |", "|---|---|---|---|---|"]
    for name, sizes in result["inference"].items():
        for b, v in sizes.items():
            lines.append(f"| {name} | {b[1:]} | {v['p50_ms']:.3f} | {v['p99_ms']:.3f} | {v['samples_per_s']:,.0f} |")
    t = result["inference"]
    ratio = t["student_int4"]["b2048"]["samples_per_s"] / t["teacher_fp32"]["b2048"]["samples_per_s"]
    lines += ["", f"int4 student / fp32 teacher samples/s at batch 2048: {ratio:.2f}x", "",
              "| dtype | " + " | ".join(f"d={d} bytes/row (floor)" for d in DIMS) + " |", "|---" * (len(DIMS) + 1) + "|"]
    for dtype, dims in result["memory"].items():
        lines.append(f"| {dtype} | " + " | ".join(f"{v['bytes_per_row']:.0f} ({v['floor_bytes_per_row']})"
                                                  for v in dims.values()) + " |")
    md = "\n".join(lines) + "\n"
    (RESULTS / "inference_memory.md").write_text(md)
    print(md)


if __name__ == "__main__":
    main()
