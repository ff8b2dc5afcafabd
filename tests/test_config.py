from pathlib import Path

import pytest

from gpt.config.experiment import ExperimentConfig
from gpt.config.fields import ConfigError
from gpt.config.loader import load_config


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "c.yaml"
    p.write_text(text)
    return p


def test_defaults_and_overrides(tmp_path):
    cfg = load_config(write(tmp_path, "model:\n  n_layer: 3\n"), ["pretrain.lr=1e-3", "finetune.tasks=[sst2]"])
    assert cfg.model.n_layer == 3
    assert cfg.pretrain.lr == pytest.approx(1e-3)
    assert cfg.finetune.tasks == ["sst2"]
    assert cfg.flat()["model.n_layer"] == 3


def test_digest_changes_with_content(tmp_path):
    a = load_config(None, ["seed=1"])
    b = load_config(None, ["seed=2"])
    assert a.digest() != b.digest()
    assert a.digest() == load_config(None, ["seed=1"]).digest()


@pytest.mark.parametrize(
    ("text", "overrides", "needle"),
    [
        ("model:\n  n_layers: 3\n", [], "'model.n_layers'"),
        ("model:\n  n_layer: three\n", [], "'model.n_layer' must be an integer"),
        ("model:\n  n_embd: 100\n  n_head: 3\n", [], "'model.n_embd' (100) must be divisible by 'n_head' (3)"),
        ("", ["pretrain.lr=-1"], "'pretrain.lr' must be > 0"),
        ("", ["model.dropout=1.0"], "'model.dropout' must be in [0, 1)"),
        ("", ["model.norm=middle"], "'model.norm' must be one of post | pre"),
        ("", ["tokenizer.kind=wordpiece"], "'tokenizer.kind'"),
        ("model: [1, 2]\n", [], "'model' must be a mapping"),
        ("", ["finetune.max_len=1000"], "'finetune.max_len' (1000) exceeds 'model.block_size'"),
        ("", ["bogus"], "expected key.path=value"),
    ],
)
def test_bad_config_names_the_key(tmp_path, text, overrides, needle):
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path, text), overrides)
    assert needle in str(err.value)


def test_malformed_yaml_names_file_and_line(tmp_path):
    path = write(tmp_path, "model:\n  n_layer: 2\n  n_head: [1,\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert str(path) in str(err.value) and "line" in str(err.value)


def test_missing_config_file(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")


def test_presets_load():
    root = Path(__file__).resolve().parents[1] / "configs"
    for preset in root.glob("*.yaml"):
        assert isinstance(load_config(preset), ExperimentConfig)
