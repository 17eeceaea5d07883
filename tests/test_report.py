"""report.md / report.png / TensorBoard from a metrics.json, and latency timing."""

import itertools
import math
import struct

import matplotlib
import pytest
import torch

from torchrec_kd.config import SyntheticDataConfig
from torchrec_kd.data.synthetic import SyntheticClickLog
from torchrec_kd.reporting.latency import latency_ms, take_rows
from torchrec_kd.reporting.plot import RC, build_figure, finite, format_bytes, model_colours, pareto_front, place_labels
from torchrec_kd.reporting.report import kd_summary, write_experiment_plot, write_markdown, write_plot, write_report

METRICS = {
    "teacher": {"auc": 0.80, "ne": 0.78, "logloss": 0.43, "embedding_bytes": 64_000_000, "params": 16_000_000,
                "train_samples_per_s": 20_000.0, "loss_curve": [[100, 0.5], [200, 0.45]], "steps": 200},
    "student": {"auc": 0.78, "ne": 0.82, "logloss": 0.45, "embedding_bytes": 16_000_000, "params": 4_000_000,
                "train_samples_per_s": 50_000.0, "loss_curve": [[100, 0.52]], "steps": 100, "best_step": 100,
                "best_val": {"auc": 0.775}},
    "distilled": {"auc": 0.79, "ne": 0.80, "logloss": 0.44, "embedding_bytes": 16_000_000, "params": 4_000_000,
                  "train_samples_per_s": 30_000.0, "loss_curve": [[100, 0.51]], "steps": 100,
                  "val_curve": [{"step": 50, "auc": 0.77, "ne": 0.83, "logloss": 0.46},
                                {"step": 100, "auc": 0.785, "ne": 0.81, "logloss": 0.45}], "best_step": 100,
                  "best_val": {"auc": 0.785}},
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


class _Pipeline:
    """Stands in for TrainPipelineSparseDist: each ``progress`` takes a batch and returns a loss."""

    def progress(self, batches):
        next(batches)
        return (torch.tensor(0.5),)


@pytest.mark.parametrize("steps,timed", [(1, False), (3, False), (4, True), (6, True)])
def test_a_run_too_short_to_time_records_no_train_speed_and_the_report_prints_a_dash(steps, timed, tmp_path):
    from torchrec_kd.distributed.env import DistEnv
    from torchrec_kd.training.loop import WARMUP_STEPS, train

    env = DistEnv(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"), backend="gloo")
    stats = train(_Pipeline(), iter(range(steps)), steps, env, global_batch_size=32, log_every=0)
    assert stats.steps == steps
    assert (stats.samples_per_s is not None and stats.samples_per_s > 0) == timed == (steps > WARMUP_STEPS)
    metrics = {**METRICS, "teacher": {**METRICS["teacher"], "train_samples_per_s": stats.samples_per_s}}
    md = write_markdown(metrics, tmp_path, "run").read_text()
    row = next(line for line in md.splitlines() if line.startswith("| teacher "))
    assert row.rstrip(" |").endswith("–") != timed, row  # never "0": no figure is shown as a speed


SUMMARY = {"seeds": [0, 1, 2],
           "models": {"teacher": {"auc_mean": 0.801, "auc_std": 0.002}, "student": {"auc_mean": 0.781, "auc_std": 0.003},
                      "distilled": {"auc_mean": 0.790, "auc_std": 0.002},
                      "distilled_int4": {"auc_mean": 0.7898, "auc_std": 0.002}},
           "kd_gain": {"auc_mean": 0.009, "auc_ci95": [0.002, 0.016], "significant": True,
                       "per_seed": [0.007, 0.009, 0.011]},
           "teacher_gap": {"auc_mean": 0.02, "auc_ci95": [0.01, 0.03], "significant": True,
                           "per_seed": [0.02, 0.019, 0.021]}}


def _png_size(path):
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", data[16:24])


def test_pareto_front_keeps_models_no_smaller_or_equal_model_beats():
    points = {"a": (100, 0.70), "tie": (100, 0.70), "b": (200, 0.75), "same_size_worse": (200, 0.74),
              "bigger_worse": (300, 0.72), "e": (400, 0.80), "nan_auc": (50, math.nan), "no_bytes": (None, 0.9),
              "zero_bytes": (0, 0.95), "bad": ("x", 0.99)}
    assert pareto_front(points) == ["a", "tie", "b", "e"]
    assert pareto_front({"only": (10, 0.5)}) == ["only"]
    assert pareto_front({}) == [] and pareto_front({"x": (None, None)}) == []


def test_finite_and_format_bytes():
    assert finite(1) == 1.0 and finite(0.5) == 0.5
    assert finite(math.nan) is None and finite(math.inf) is None and finite(None) is None
    assert finite("3") is None and finite(True) is None
    assert [format_bytes(n) for n in (512, 124_920, 666_240, 999_999, 2_664_960, 1e9)] == \
        ["512 B", "125 KB", "666 KB", "1 MB", "2.66 MB", "1 GB"]
    assert format_bytes(math.nan) == "?"


def test_place_labels_clear_of_each_other_the_points_and_the_edges():
    anchors = [(100.0 + 6 * i, 100.0 + 3 * (i % 2)) for i in range(6)]  # a tight cluster
    marks = [(x - 5, y - 5, x + 5, y + 5) for x, y in anchors]
    bounds = (0.0, 0.0, 400.0, 300.0)
    boxes = place_labels(anchors, [(60.0, 12.0)] * len(anchors), bounds, marks)
    overlap = lambda a, b: min(a[2], b[2]) > max(a[0], b[0]) and min(a[3], b[3]) > max(a[1], b[1])  # noqa: E731
    assert not any(overlap(a, b) for a, b in itertools.combinations(boxes, 2))
    assert not any(overlap(b, m) for b in boxes for m in marks)
    assert all(b[0] >= 0 and b[1] >= 0 and b[2] <= 400 and b[3] <= 300 for b in boxes)
    # a point at the right edge gets its label on the left, inside the frame
    (box,) = place_labels([(395.0, 150.0)], [(60.0, 12.0)], bounds)
    assert box[2] <= 395.0 and box[0] >= 0


def test_model_colours_fixed_per_model_and_shaded_for_quantized():
    one = model_colours(["teacher", "student", "distilled", "distilled_int8", "distilled_int4", "mystery"])
    two = model_colours(["distilled", "distilled_int4", "teacher"])
    assert len(set(one.values())) == 6
    assert one["distilled"] == two["distilled"] and one["distilled_int4"] == two["distilled_int4"]
    assert one["teacher"] == two["teacher"]


def _label_boxes(fig):
    fig.canvas.draw()  # a label's box patch is sized when drawn
    renderer = fig.canvas.get_renderer()
    ax = fig.axes[0]
    return [t.get_bbox_patch().get_window_extent(renderer) for t in ax.texts if t.get_bbox_patch() is not None]


@pytest.mark.parametrize("summary", [None, SUMMARY])
def test_figure_panels_and_labels_do_not_overlap(summary):
    with matplotlib.rc_context(RC):
        fig = build_figure(METRICS, list(METRICS), summary=summary, title="run")
    axes = fig.axes
    assert len(axes) == (3 if summary else 2)
    size_ax, curves_ax = axes[0], axes[1]
    assert size_ax.get_xscale() == "log"
    ticks = [t.get_text() for t in size_ax.get_xticklabels() if t.get_text()]
    assert ticks and all(t.endswith(("B", "KB", "MB")) for t in ticks) and not any("e+" in t for t in ticks)
    boxes = _label_boxes(fig)
    assert len(boxes) == 4  # every model with AUC and bytes is labelled
    assert not any(a.overlaps(b) for a, b in itertools.combinations(boxes, 2))
    front = size_ax.get_lines()[0]  # the Pareto step line: no label sits on it
    drawn = front.get_transform().transform_path(front.get_path())
    assert len(drawn.vertices) > 2 and not any(drawn.intersects_bbox(b, filled=False) for b in boxes)
    assert all(b.x1 <= size_ax.get_window_extent().x1 for b in boxes)  # nothing runs past the panel's right edge
    # validation curves of the trained models only, and a star at the distilled model's best step
    curve_labels = [line.get_label() for line in curves_ax.get_lines() if not line.get_label().startswith("_")]
    assert curve_labels == ["distilled"]
    stars = [line for line in curves_ax.get_lines() if line.get_marker() == "*"]
    assert [tuple(s.get_xydata()[0]) for s in stars] == [(100.0, 0.785)]
    if summary:
        assert axes[2].get_title().startswith("KD gain: significant")
        assert "mean ± std, 3 seeds" in size_ax.get_title()
        # the Pareto line uses the seeds' means: teacher's mean, not this run's 0.80
        step_line = size_ax.get_lines()[0]
        assert 0.801 in list(step_line.get_ydata())


def test_plot_written_with_and_without_summary(tmp_path):
    (tmp_path / "one").mkdir()
    (tmp_path / "exp").mkdir()
    path = write_plot(METRICS, tmp_path / "one")
    assert path == tmp_path / "one" / "report.png" and _png_size(path) == (1540, 550)
    top = write_experiment_plot(SUMMARY, {0: METRICS, 1: METRICS, 2: METRICS}, tmp_path / "exp", title="exp")
    assert top == tmp_path / "exp" / "report.png" and _png_size(top) == (1540, 550)
    assert write_experiment_plot({"seeds": []}, {}, tmp_path / "exp") is None
    paths = write_report(METRICS, tmp_path / "exp", "exp", summary=SUMMARY)
    assert paths[1] == tmp_path / "exp" / "report.png"


NAN = math.nan
DEGENERATE = {
    "empty": ({}, None),
    "single model": ({"teacher": {"auc": 0.8, "embedding_bytes": 1000}}, None),
    "nan and missing values": ({"teacher": {"auc": NAN, "embedding_bytes": 1e6, "best_step": 5,
                                            "val_curve": [{"step": 1, "auc": NAN}, {"step": None}]},
                                "student": {"auc": 0.7, "embedding_bytes": NAN, "loss_curve": [[1, NAN], [2]]},
                                "distilled": {"auc": None}, "odd": {"auc": "x", "embedding_bytes": -5, "val_curve": "x"}},
                               None),
    "loss curves only, 6 decades": ({"teacher": {"auc": 0.8, "embedding_bytes": 4e9, "loss_curve": [[100, 0.5]]},
                                     "student": {"auc": 0.78, "embedding_bytes": 2e3, "loss_curve": [[100, 0.52]]}},
                                    None),
    "seeds but no comparison": (METRICS, {"seeds": [0, 1], "models": {}, "not_comparable": [0]}),
    "one seed summary": (METRICS, {"seeds": [0], "models": {}, "kd_gain": {"auc_mean": 0.01, "auc_ci95": None}}),
    "nan interval": (METRICS, {"seeds": [0, 1], "models": {"teacher": {"auc_mean": NAN, "auc_std": None}},
                               "kd_gain": {"auc_mean": 0.002, "auc_ci95": [NAN, 0.01], "significant": False,
                                           "per_seed": [0.001, NAN]}}),
}


@pytest.mark.parametrize("case", list(DEGENERATE))
def test_degenerate_inputs_still_draw(tmp_path, case):
    metrics, summary = DEGENERATE[case]
    path = write_plot(metrics, tmp_path, summary=summary, title=case)
    assert _png_size(path) == (1540, 550)


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
