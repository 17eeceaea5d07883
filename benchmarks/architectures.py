"""Benchmark: distillation across architectures — TorchRec's DLRM, DLRM_DCN, DLRM_Projection, SimpleDeepFMNN
and a plugin's non-DLRM ranker, in the teacher and the student role.

Each pair is one ``experiment`` (teacher -> student alone -> distilled -> int4, each model at its
best validation step, equal data and maximum budget for student alone and distilled) over
several seeds on a small synthetic world (``configs/tiny_synthetic.yaml`` scaled up below), so
the table says, per pair, whether distilling helped — with the paired 95% interval, or "not
significant". Writes ``benchmarks/results/architectures.{json,md}``::

    python benchmarks/architectures.py [--only dcn_to_deepfm] [--seeds 0 1 2] [--nproc 1]
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import date
from pathlib import Path
from typing import Dict, List

sys.path.insert(0, str(Path(__file__).resolve().parent))
from distillation import scenario_table  # noqa: E402
from launch import run_cli  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
CONFIG = "configs/tiny_synthetic.yaml"
PLUGIN = "examples.custom_ranker.kd_plugin"
# a world where a wider teacher has something to teach: 8 features x 5,000 rows, 600 batches an epoch;
# budgets of 3 (teacher) and 4 epochs (students), early stopping after 4 validations without a gain
WORLD = ["data.batch_size=256", "data.val_rows=8192", "data.test_rows=16384", "data.synthetic.num_sparse=8",
         "data.synthetic.num_dense=8", "data.synthetic.num_embeddings=5000", "data.synthetic.train_rows=153600",
         "teacher.embedding_dim=32", "teacher.dense_arch_layer_sizes=[64,32]", "teacher.over_arch_layer_sizes=[64,1]",
         "train.steps=2400", "train.teacher_steps=1800", "train.eval_every=100", "train.log_every=300",
         "train.early_stopping.patience=4", "distill.qat=null", "quantize.dtypes=[int4]",
         "distill.losses=[{name: hard_bce, weight: 0.2}, {name: soft_bce, weight: 0.8}]"]
DEEPFM_ARGS = "{hidden_layer_size: 32, deep_fm_dimension: 8}"
PAIRS: Dict[str, List[str]] = {
    "dlrm_to_dlrm": [],
    "dcn_to_deepfm": ["teacher.arch=dlrm_dcn", "teacher.dcn_low_rank_dim=16", "student.arch=deepfm",
                      "student.args={hidden_layer_size: 16, deep_fm_dimension: 4}"],
    "deepfm_to_dlrm": ["teacher.arch=deepfm", f"teacher.args={DEEPFM_ARGS}"],
    "projection_to_mlp": ["teacher.arch=dlrm_projection",
                          "teacher.args={interaction_branch1_layer_sizes: [64, 64], interaction_branch2_layer_sizes: [64, 64]}",
                          "student.arch=mlp_ranker", "student.args={hidden: [32, 16]}"],
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", nargs="+", choices=list(PAIRS), help="run only these pairs")
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--nproc", type=int, default=1)
    p.add_argument("--out", default="outputs/bench_architectures")
    a = p.parse_args()
    results = {}
    for name in a.only or list(PAIRS):
        out = REPO / a.out / name
        overrides = [*WORLD, *PAIRS[name], "experiment.seeds=[" + ",".join(map(str, a.seeds)) + "]"]
        wall = run_cli("experiment", CONFIG, out, a.nproc, overrides, args=["--plugin", PLUGIN])
        summary = json.loads((out / "summary.json").read_text())
        results[name] = {"config": CONFIG, "overrides": overrides, "nproc": a.nproc, "wall_s": round(wall, 1),
                         "command": f"python benchmarks/architectures.py --only {name}", "summary": summary}
    # read last, so runs of other pairs that finished meanwhile are kept
    previous = json.loads((RESULTS / "architectures.json").read_text()) if (RESULTS / "architectures.json").is_file() else {}
    results = {**(previous.get("pairs", {}) if a.only else {}), **results}
    RESULTS.mkdir(parents=True, exist_ok=True)
    text = json.dumps({"pairs": results}, indent=2)
    (RESULTS / "architectures.json").write_text(text)
    (RESULTS / f"architectures-{date.today().isoformat()}.json").write_text(text)
    md = []
    for name, r in results.items():
        arch = [o for o in r["overrides"] if o.startswith(("teacher.arch", "student.arch"))] or ["dlrm -> dlrm"]
        md += [f"## {name} ({', '.join(arch)}; seeds {r['summary']['seeds']}, {r['nproc']} rank(s), "
               f"{r['wall_s'] / 60:.1f} min)", "", scenario_table(r["summary"]), ""]
    (RESULTS / "architectures.md").write_text("\n".join(md))
    print("\n".join(md))


if __name__ == "__main__":
    main()
