import os
import subprocess
import sys

import pytest

from tests.conftest import REPO, TINY
from torchrec_kd.config import ConfigError, load_config


def test_defaults_and_overrides(tiny_config_path):
    cfg = load_config(tiny_config_path, ["train.steps=7", "teacher.arch=dlrm_dcn", "sharding.default=row_wise"])
    assert cfg.train.steps == 7
    assert cfg.teacher.arch == "dlrm_dcn"
    assert cfg.sharding.default == "row_wise"
    assert cfg.data.synthetic.num_sparse == 4


def test_unknown_key_suggests_nearest(tiny_config_path):
    with pytest.raises(ConfigError) as e:
        load_config(tiny_config_path, ["train.setps=3"])
    msg = str(e.value)
    assert "tiny_synthetic.yaml" in msg and "setps" in msg and "did you mean 'steps'" in msg


def test_bad_literal_lists_accepted_values(tiny_config_path):
    with pytest.raises(ConfigError, match="distributed.backend.*'auto' \\| 'gloo' \\| 'nccl'"):
        load_config(tiny_config_path, ["distributed.backend=mpi"])


def test_an_unknown_arch_or_arg_is_refused_with_the_nearest_registered_name(tiny_config_path):
    from torchrec_kd.models.build import check_models

    with pytest.raises(ConfigError, match="teacher.arch: unknown model 'dlrm_dnc'; did you mean 'dlrm_dcn'.*deepfm"):
        check_models(load_config(tiny_config_path, ["teacher.arch=dlrm_dnc"]), "x.yaml")
    with pytest.raises(ConfigError, match="x.yaml: student.args: unknown key 'hidden_size'; did you mean 'hidden_layer_size'"):
        check_models(load_config(tiny_config_path, ["student.arch=deepfm", "student.args={hidden_size: 8}"]), "x.yaml")
    with pytest.raises(ConfigError, match="student.args: model 'dlrm' takes no args"):
        check_models(load_config(tiny_config_path, ["student.args={hidden: 8}"]), "x.yaml")


def test_wrong_type_and_missing_file(tmp_path, tiny_config_path):
    with pytest.raises(ConfigError, match="data.batch_size: expected int"):
        load_config(tiny_config_path, ["data.batch_size=big"])
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")


def test_cross_field_rules(tiny_config_path):
    with pytest.raises(ConfigError, match="must end with teacher.embedding_dim"):
        load_config(tiny_config_path, ["teacher.embedding_dim=8"])
    with pytest.raises(ConfigError, match="lists 2 values"):
        load_config(tiny_config_path, ["data.synthetic.num_embeddings=[10,20]"])


def test_moved_section_rules_are_checked_by_the_loader(tiny_config_path):
    with pytest.raises(ConfigError, match="quantize.prune.keep_fraction must be in \\(0, 1\\]"):
        load_config(tiny_config_path, ["quantize.prune={keep_fraction: 0}"])
    with pytest.raises(ConfigError, match="quantize.prune.count_rows must be >= 1"):
        load_config(tiny_config_path, ["quantize.prune={count_rows: 0}"])
    with pytest.raises(ConfigError, match="quantize.budget: set exactly one of bytes or max_auc_loss"):
        load_config(tiny_config_path, ["quantize.budget={bytes: 1000, max_auc_loss: 0.01}"])
    with pytest.raises(ConfigError, match="keep_fractions must be in \\(0, 1\\]"):
        load_config(tiny_config_path, ["quantize.budget={bytes: 1000, keep_fractions: [1.5]}"])
    assert load_config(tiny_config_path, ["quantize.budget={bytes: 1000}"]).quantize.budget.bytes == 1000
    assert load_config(tiny_config_path, ["quantize.prune={keep_fraction: 0.5}"]).quantize.prune.keep_fraction == 0.5


def test_eval_every_defaults_to_auto_and_zero_is_kept_as_off(tiny_config_path):
    assert load_config(None).train.eval_every is None
    assert load_config(tiny_config_path).train.eval_every is None
    assert load_config(tiny_config_path, ["train.eval_every=0"]).train.eval_every == 0
    with pytest.raises(ConfigError, match="train.eval_every must be between 0 and"):
        load_config(tiny_config_path, ["train.eval_every=-1"])


def test_an_output_dir_flag_is_taken_as_the_string_it_is():
    from torchrec_kd.config import string_override

    assert string_override("output_dir", "/tmp/x y") == "output_dir=/tmp/x y"
    for value in ("", "2024", "null", "a: b", "[x]", "  "):
        assert load_config(None, [string_override("run_name", value)]).run_name == value


# Bad command lines of a new user and the words their one error line must hold (exit 2, no traceback).
CLI_ERRORS = [
    (["trian.steps=10"], "unknown top-level key 'trian'; did you mean 'train'?"),
    (["train.dense_lr=.inf"], "train.dense_lr must be a finite number, got inf"),
    (["train.dense_lr=.nan"], "train.dense_lr must be a finite number, got nan"),
    (["train.embedding_lr=-inf"], "train.embedding_lr must be a finite number"),
    (["train.dense_lr=-0.01"], "train.dense_lr must be >= 1e-12, got -0.01"),
    (["train.embedding_lr=0"], "train.embedding_lr must be >= 1e-12, got 0"),
    (["distill.losses=[{name: soft_bce, weight: .inf}]"], "distill.losses[0].weight must be a finite number"),
    (["train.eval_every=-2"], "train.eval_every must be between 0 and"),
    (["--output-dir", ""], "output_dir (--output-dir) is empty; name a directory"),
    (["--output-dir", "  "], "output_dir (--output-dir) is empty"),
    (["output_dir="], "output_dir (--output-dir) is empty; name a directory"),  # YAML null, not the default
    (["output_dir=  "], "output_dir (--output-dir) is empty"),
]


@pytest.mark.parametrize("args,message", CLI_ERRORS, ids=[" ".join(a) or repr(a) for a, _ in CLI_ERRORS])
def test_bad_command_lines_give_one_error_line_and_exit_2(args, message, capsys, tmp_path, monkeypatch):
    from torchrec_kd.cli import main

    monkeypatch.chdir(tmp_path)  # a fallback to outputs/<run_name> would land here
    assert main(["train-teacher", "--config", str(TINY), *args]) == 2
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], err
    assert "Traceback" not in err and not (tmp_path / "outputs").exists()


def test_a_config_directory_is_named_as_a_directory(capsys):
    from torchrec_kd.cli import main

    assert main(["train-teacher", "--config", str(REPO / "configs")]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "is a directory, not a file" in lines[0] and "does not exist" not in lines[0], lines
    assert "configs/adult_census.yaml" in lines[0]  # an example of what to pass


def test_an_empty_output_dir_exits_2_in_a_process_of_its_own(tmp_path):
    done = subprocess.run([sys.executable, "-m", "torchrec_kd.cli", "train-teacher", "--config", str(TINY),
                           "--output-dir", "", "train.steps=1"], cwd=tmp_path, capture_output=True, text=True,
                          timeout=120, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert done.returncode == 2, done.stderr[-2000:]
    assert done.stderr.strip().splitlines() == [done.stderr.strip()] and "output_dir (--output-dir) is empty" in done.stderr
    assert "Traceback" not in done.stderr and not (tmp_path / "outputs").exists()
