import pytest

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
