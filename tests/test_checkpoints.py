"""Fine-tuning from kept pretraining checkpoints: the variants planned and the checks before compute."""

from __future__ import annotations

from pathlib import Path

import pytest

from gpt.config.fields import ConfigError
from gpt.config.loader import load_config
from tasks.variants import check_checkpoints, variants

MICRO = Path(__file__).resolve().parents[1] / "configs" / "micro.yaml"


def test_each_task_runs_from_each_checkpoint_and_scratch_only_once():
    cfg = load_config(
        MICRO,
        ["pretrain.keep_models=[10, 20]", "finetune.from_checkpoints=[10, 20, last]", "finetune.tasks=[sst2]",
         "ablations=[no_pretraining]"],
    )  # fmt: skip
    assert [v.name for v in variants(cfg)] == [
        "sst2-step10", "sst2-step20", "sst2", "sst2-no_pretraining",
    ]  # fmt: skip


def test_without_checkpoints_the_variants_keep_their_names():
    cfg = load_config(MICRO, ["finetune.tasks=[sst2]", "finetune.seeds=[1, 2]"])
    assert [v.name for v in variants(cfg)] == ["sst2-seed1", "sst2-seed2"]


def test_a_step_that_was_not_kept_is_one_line_naming_the_key():
    cfg = load_config(MICRO, ["pretrain.keep_models=[20]", "finetune.from_checkpoints=[20, 30]"])
    with pytest.raises(ConfigError, match=r"'finetune.from_checkpoints\[1\]': step 30 is not kept"):
        check_checkpoints(cfg)


def test_kept_steps_lie_within_the_run_and_checkpoints_are_steps():
    with pytest.raises(ConfigError, match=r"pretrain.keep_models.*outside 1..max_steps \(40\)"):
        load_config(MICRO, ["pretrain.keep_models=[50]"])
    with pytest.raises(ConfigError, match=r"finetune.from_checkpoints.*a list of steps and `last`"):
        load_config(MICRO, ["finetune.from_checkpoints=[final]"])
