"""`--seeds 1,2,3` sweeps the fine-tune/evaluate stages over seeds by setting `finetune.seeds`."""

import pytest

from flows.cli import main


def test_seeds_flag_plans_one_finetune_and_evaluate_per_task_and_seed(micro_config, tmp_path, capsys):
    assert main(["stages", "--config", str(micro_config), "--workspace", str(tmp_path), "--seeds", "1,2"]) == 0
    out = capsys.readouterr().out
    for task in ("sst2", "story_cloze"):
        for seed in (1, 2):
            assert f"finetune[{task}-seed{seed}]" in out and f"evaluate[{task}-seed{seed}]" in out
    assert "finetune[sst2] " not in out


def test_seeds_flag_rejects_non_integers(micro_config, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["stages", "--config", str(micro_config), "--workspace", str(tmp_path), "--seeds", "1,x"])
    assert exit_.value.code == 2
    assert "--seeds: expected comma-separated integers such as 1,2,3, got '1,x'" in capsys.readouterr().err
