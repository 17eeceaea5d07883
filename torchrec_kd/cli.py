"""Command line: ``python -m torchrec_kd.cli <command> --config X.yaml key=value ...``.

This is what the TorchX components launch (under torchrun, one process per rank).
Commands: ``train-teacher``, ``train-student``, ``distill``, ``distill-qat``, ``score-teacher``, ``quantize``,
``evaluate``, ``experiment``, ``continual``, ``report``, ``predict``, ``retrieve``, ``bench``;
data: ``inspect-data``, ``preprocess``.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import List, Optional

from torchrec_kd.config import RunConfig, config_source, load_config, string_override
from torchrec_kd.core.console import setup_console
from torchrec_kd.errors import ConfigError, UserError

logger = logging.getLogger("torchrec_kd")
# commands that write into the run's output directory (one run at a time there)
WRITES_OUTPUT_DIR = {"train-teacher", "train-student", "distill", "distill-qat", "score-teacher", "quantize",
                     "experiment", "continual", "evaluate", "report"}


def _config_parser(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    p.add_argument("--config", help="YAML run config (see configs/)")
    # --output_dir too: the TorchX components spell their arguments with underscores
    p.add_argument("--output-dir", "--output_dir", dest="output_dir",
                   help="where results go (default outputs/<run_name>)")
    p.add_argument("-v", "--verbose", action="store_true",
                   help="also show third-party logs and warnings on the console (always in <output_dir>/run.log); "
                        "LOGLEVEL=INFO does the same")
    p.add_argument("--plugin", action="append", default=[], metavar="MODULE",
                   help="import this module first (repeatable): it may register model builders (teacher.arch / "
                        "student.arch) and loss terms (docs/own-model.md)")
    p.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. train.steps=100")
    return p


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="torchrec-kd", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    _config_parser(sub.add_parser("train-teacher", help="train the sharded DLRM teacher"))
    _config_parser(sub.add_parser("train-student", help="train the student alone (the baseline distillation must beat)"))
    _config_parser(sub.add_parser("distill", help="distill the trained teacher(s) into the student "
                                                  "(distill.offline=true: from score-teacher's cache)"))
    _config_parser(sub.add_parser("distill-qat", help="quantization-aware distillation: the student's rows are "
                                                      "fake-quantized as distill.qat while it learns (-> distilled_qat)"))
    _config_parser(sub.add_parser("score-teacher", help="score the training stream with the teacher(s) once and "
                                                        "store the outputs for offline distillation"))
    q = _config_parser(sub.add_parser("quantize", help="quantize a trained student's tables, evaluate and export"))
    q.add_argument("--source", default="distilled", choices=["distilled", "distilled_qat", "student"],
                   help="which checkpoint to quantize")
    _config_parser(sub.add_parser("experiment", help="teacher -> student -> distill -> quantize -> report, skipping done steps"))
    _config_parser(sub.add_parser("continual", help="window by window: teacher, warm-started student alone and distilled, "
                                  "from-scratch reference, export + delta; scored on the next window"))
    ev = _config_parser(sub.add_parser("evaluate", help="evaluate a saved model (checkpoint or export) of the run"))
    ev.add_argument("--source", required=True, help="teacher, student, distilled, or an export such as distilled_int4")
    ev.add_argument("--split", default="test", choices=["val", "test"])
    _config_parser(sub.add_parser("report", help="time every model of the run; write report.md, report.png, TensorBoard"))
    b = sub.add_parser("bench", help="the benchmark suite (make bench): training, inference, memory, scale -> "
                                     "benchmarks/results/latest.json and latest.md")
    b.add_argument("--quick", action="store_true", help="scale runs up to 10 M rows only")
    pr = _config_parser(sub.add_parser("predict", help="score data with an exported model, write CSV/Parquet"))
    pr.add_argument("--model", required=True, help="exported model directory (<output_dir>/export/<name>)")
    pr.add_argument("--input", help="traffic to score: a file, folder or glob in the model's input format "
                                    "(contract.json; labels optional); default: the configured --split")
    pr.add_argument("--columns", default="", help="comma-separated input columns copied to the output (ids to join on)")
    pr.add_argument("--split", default="test", choices=["val", "test"], help="which split of the configured data")
    pr.add_argument("--out", required=True, help="output file (.csv, or .parquet with pyarrow installed)")
    rt = _config_parser(sub.add_parser("retrieve", help="each user's top-K items from a two-tower export "
                                                        "(exact, or a FAISS index), written as CSV/Parquet"))
    rt.add_argument("--model", required=True, help="a two-tower export directory (<output_dir>/export/<name>)")
    rt.add_argument("--input", help="users' raw rows (user columns; file, folder or glob in the model's input "
                                    "format); default: the configured data's --split users, seen items excluded")
    rt.add_argument("--k", type=int, default=100, help="items per user")
    rt.add_argument("--index", help="index options: exact (default), or e.g. type=ivf,nlist=1024,nprobe=32 / "
                                    "type=hnsw,m=32,ef_search=128; dtype=int8 searches the int8 rows")
    rt.add_argument("--columns", default="", help="comma-separated input columns copied to the output")
    rt.add_argument("--split", default="test", choices=["val", "test"], help="which users without --input")
    rt.add_argument("--out", required=True, help="output file (.csv, or .parquet with pyarrow installed)")
    ins = _config_parser(sub.add_parser(
        "inspect-data", help="print what a reader sees: rows, positives, bad rows, per-feature ids and bag lengths, "
                             "dense ranges (--config optional: it gives a table schema, split specs, table sizes)"))
    ins.add_argument("--format", required=True, choices=["criteo_tsv", "criteo_npy", "movielens", "table"])
    ins.add_argument("--path", required=True, help="a data file or folder (a single Criteo file is read whole)")
    ins.add_argument("--split", action="append", choices=["train", "val", "test"], help="only these splits (repeatable)")
    ins.add_argument("--limit", type=int, help="read at most this many rows per split")
    pp = _config_parser(sub.add_parser("preprocess", help="raw Criteo TSV -> TorchRec's .npy layout, streaming "
                                                          "(every file named by data.criteo.train/val/test)"))
    pp.add_argument("--out", help="output folder (default data.criteo.npy_path)")
    pp.add_argument("--workers", type=int, default=1, help="files converted in parallel")
    pp.add_argument("--overwrite", action="store_true", help="redo files already converted")
    return parser


def _dispatch(args: argparse.Namespace, cfg: RunConfig) -> None:
    if args.command in ("train-teacher", "train-student"):
        from torchrec_kd.recipes.train_model import run

        role = args.command.split("-")[1]
        entry = run(cfg, role)
        logger.info("%s test auc %.4f ne %.4f logloss %.4f", role, entry["auc"], entry["ne"], entry["logloss"])
    elif args.command == "distill":
        from torchrec_kd.recipes.distill import run as run_distill

        entry = run_distill(cfg)
        logger.info("distilled test auc %.4f ne %.4f logloss %.4f", entry["auc"], entry["ne"], entry["logloss"])
    elif args.command == "distill-qat":
        from torchrec_kd.recipes.distill import run as run_distill

        if cfg.distill.qat is None:
            raise ConfigError("distill-qat needs distill.qat (int8, int4, int2 or fp16), e.g. distill.qat=int4")
        entry = run_distill(cfg, qat=cfg.distill.qat)
        logger.info("distilled_qat (%s) test auc %.4f ne %.4f", cfg.distill.qat, entry["auc"], entry["ne"])
    elif args.command == "score-teacher":
        from torchrec_kd.recipes.score_teacher import run as run_score

        run_score(cfg)
    elif args.command == "quantize":
        from torchrec_kd.recipes.quantize import run as run_quantize

        # a QAT student is exported in the format it was trained for
        run_quantize(cfg, args.source, [cfg.distill.qat] if args.source == "distilled_qat" and cfg.distill.qat else None)
    elif args.command == "experiment":
        from torchrec_kd.workflows.experiment import run as run_experiment

        run_experiment(cfg)
    elif args.command == "continual":
        from torchrec_kd.workflows.continual import run as run_continual

        run_continual(cfg)
    elif args.command == "evaluate":
        from torchrec_kd.recipes.evaluate import run as run_evaluate

        run_evaluate(cfg, args.source, args.split)
    elif args.command == "report":
        from torchrec_kd.recipes.report import run as run_report

        run_report(cfg)
    elif args.command == "predict":
        from torchrec_kd.recipes.predict import run as run_predict

        run_predict(cfg, args.model, args.split, args.out, args.input, [c for c in args.columns.split(",") if c])
    elif args.command == "retrieve":
        from torchrec_kd.recipes.retrieve import parse_index
        from torchrec_kd.recipes.retrieve import run as run_retrieve

        run_retrieve(cfg, args.model, args.out, args.input, args.k, parse_index(args.index),
                     [c for c in args.columns.split(",") if c], args.split)
    elif args.command == "inspect-data":
        from torchrec_kd.data.inspect import run_inspect

        print(run_inspect(cfg, args.format, args.path, args.split, args.limit), flush=True)
    elif args.command == "preprocess":
        from torchrec_kd.data.preprocess import preprocess_criteo

        results = preprocess_criteo(cfg.data, args.out, args.workers, args.overwrite)
        logger.info("preprocessed %d file(s): %d rows, %d bad rows skipped", len(results),
                    sum(r.rows for r in results), sum(r.bad_rows for r in results))


def _bench(quick: bool) -> int:
    """Run the repository's benchmark suite (it lives beside the package, not inside it)."""
    import subprocess
    from pathlib import Path

    suite = Path(__file__).resolve().parents[1] / "benchmarks" / "suite.py"
    if not suite.is_file():
        print(f"error: {suite} not found: `bench` runs from a source checkout of torchrec_kd", file=sys.stderr)
        return 2
    return subprocess.call([sys.executable, str(suite), *(["--quick"] if quick else [])], cwd=suite.parents[1])


def main(argv: Optional[List[str]] = None) -> int:
    """Entry point of ``torchrec-kd`` and ``python -m torchrec_kd.cli``.

    Returns:
        int: 0 on success, 2 on bad input (config, checkpoint, data), with the reason on stderr.
    """
    args = _parser().parse_args(argv)
    if args.command == "bench":
        return _bench(args.quick)
    overrides = list(args.overrides)
    if args.output_dir is not None:  # '' too: the loader refuses it rather than falling back to the default
        overrides.append(string_override("output_dir", args.output_dir))
    from torchrec_kd.distributed.env import shutdown_distributed

    ok = False
    try:
        from torchrec_kd.core.plugins import load_plugins

        load_plugins(args.plugin)  # before the config: it names what plugins register
        if args.command in ("predict", "retrieve") and args.config is None:  # the config the exported model was trained with
            from torchrec_kd.recipes.predict import export_config

            cfg = export_config(args.model, overrides)
        else:
            cfg = load_config(args.config, overrides)
        writes = args.command in WRITES_OUTPUT_DIR
        if writes and os.environ.get("RANK", "0") == "0":
            from torchrec_kd.core.run_lock import hold_output_dir

            hold_output_dir(cfg.out_dir)  # writable, and no other run in it, before any work
        log_file = setup_console(args.verbose, cfg.out_dir if writes else None)
        if log_file is not None and os.environ.get("RANK", "0") == "0":
            logger.info("%s: %s (details in %s)", args.command, cfg.run_name, log_file)
        if args.command not in ("inspect-data", "preprocess"):  # model and loss names and args, before any work
            from torchrec_kd.losses import check_loss_names, check_tower_losses
            from torchrec_kd.models.build import check_models

            check_models(cfg, config_source(args.config, overrides))
            check_loss_names(cfg.distill.losses, config_source(args.config, overrides))
            check_tower_losses(cfg.train.tower_losses, config_source(args.config, overrides))
        _dispatch(args, cfg)
        ok = True
    except UserError as e:  # bad input: a message that says what to do, not a traceback
        if os.environ.get("RANK", "0") == "0":  # every rank sees the same bad input: say it once
            print(f"error: {e}", file=sys.stderr)
        else:  # let rank 0 print and exit first, so the launcher reports its exit (and nothing else)
            import time

            time.sleep(3)
        return 2
    finally:
        shutdown_distributed(synchronize=ok)
        from torchrec_kd.core.run_lock import release_output_dirs

        release_output_dirs()
    return 0


if __name__ == "__main__":
    sys.exit(main())
