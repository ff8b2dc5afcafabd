import pytest

from gpt.config import ConfigError, load_config
from tasks.plan import build_plan, check_inputs, descendants, select


def keys(cfg, tmp_path):
    return {s.name: s.key for s in build_plan(cfg, tmp_path)}


def test_plan_order_and_names(tmp_path):
    plan = build_plan(load_config(None), tmp_path)
    assert [s.name for s in plan] == [
        "corpus",
        "tokenizer",
        "encode",
        "pretrain",
        "finetune[sst2]",
        "evaluate[sst2]",
        "finetune[story_cloze]",
        "evaluate[story_cloze]",
        "report",
    ]


def test_changing_finetune_lr_changes_only_downstream_keys(tmp_path):
    a = keys(load_config(None), tmp_path)
    b = keys(load_config(None, ["finetune.lr=1e-4"]), tmp_path)
    changed = {n for n in a if a[n] != b[n]}
    assert changed == {"finetune[sst2]", "evaluate[sst2]", "finetune[story_cloze]", "evaluate[story_cloze]", "report"}


def test_changing_the_model_keeps_data_stages(tmp_path):
    a = keys(load_config(None), tmp_path)
    b = keys(load_config(None, ["model.n_layer=2"]), tmp_path)
    assert {n for n in a if a[n] == b[n]} == {"corpus", "tokenizer", "encode"}


def test_gpt2_tokenizer_does_not_depend_on_corpus(tmp_path):
    a = keys(load_config(None, ["tokenizer.kind=gpt2"]), tmp_path)
    b = keys(load_config(None, ["tokenizer.kind=gpt2", "corpus.max_bytes=1000"]), tmp_path)
    assert a["tokenizer"] == b["tokenizer"] and a["encode"] != b["encode"]


def test_select_force_and_from(tmp_path):
    plan = build_plan(load_config(None), tmp_path)
    selected, forced = select(plan, None, None, ["finetune[sst2]"])
    assert len(selected) == len(plan)
    assert forced == {"finetune[sst2]", "evaluate[sst2]", "report"}
    assert descendants(plan, {"pretrain"}) >= {"finetune[story_cloze]", "evaluate[story_cloze]"}
    with pytest.raises(ConfigError, match="needs 'encode', which is not done"):
        select(plan, None, "pretrain", None)
    with pytest.raises(ConfigError, match="unknown stage 'pretrian'"):
        select(plan, ["pretrian"], None, None)


def test_only_requires_done_upstream(tmp_path):
    plan = build_plan(load_config(None), tmp_path)
    selected, _ = select(plan, ["corpus", "tokenizer"], None, None)
    assert [s.name for s in selected] == ["corpus", "tokenizer"]
    with pytest.raises(ConfigError, match="'evaluate\\[sst2\\]' needs 'finetune\\[sst2\\]'"):
        select(plan, ["evaluate"], None, None)


def test_check_inputs_names_the_key(tmp_path):
    with pytest.raises(ConfigError, match="'finetune.tasks\\[1\\]': unknown task 'glue'"):
        check_inputs(load_config(None, ["finetune.tasks=[sst2, glue]"]))
    with pytest.raises(ConfigError, match="'corpus.source': corpus source not found"):
        check_inputs(load_config(None, [f"corpus.source={tmp_path}/missing.txt"]))
