import pytest

from gpt.config.fields import ConfigError
from gpt.config.loader import load_config
from tasks.plan import build_plan, check_inputs, descendants, select


def keys(cfg, tmp_path):
    """What each stage itself hashes (kind, version, section); upstream outputs join the key at run time."""
    return {s.name: s.section_digest() for s in build_plan(cfg, tmp_path)}


def fake_done(plan, skip=()):
    """Mark stages done in plan order (a manifest and no files), so their downstream keys resolve."""
    for stage in plan:
        if stage.name in skip:
            continue
        stage.dir.mkdir(parents=True)
        (stage.dir / "manifest.json").write_text(f'{{"key": "{stage.key}", "files": {{}}}}')


def test_plan_order_and_names(tmp_path):
    plan = build_plan(load_config(None), tmp_path)
    assert [s.name for s in plan] == [
        "corpus",
        "tokenizer",
        "encode",
        "pretrain",
        "finetune[sst2]",
        "finetune[story_cloze]",
        "evaluate[sst2]",
        "evaluate[story_cloze]",
        "report",
    ]


def test_changing_finetune_lr_changes_only_downstream_keys(tmp_path):
    a = keys(load_config(None), tmp_path)
    b = keys(load_config(None, ["finetune.lr=1e-4"]), tmp_path)
    changed = {n for n in a if a[n] != b[n]}
    assert changed == {"finetune[sst2]", "finetune[story_cloze]"}  # evaluate follows when the weights differ


def test_changing_the_model_keeps_data_stages(tmp_path):
    a = keys(load_config(None), tmp_path)
    b = keys(load_config(None, ["model.n_layer=2"]), tmp_path)
    assert {n for n in a if a[n] != b[n]} == {"pretrain"}


def test_gpt2_tokenizer_does_not_depend_on_corpus(tmp_path):
    a = keys(load_config(None, ["tokenizer.kind=gpt2"]), tmp_path)
    b = keys(load_config(None, ["tokenizer.kind=gpt2", "corpus.max_bytes=1000"]), tmp_path)
    assert a["tokenizer"] == b["tokenizer"] and a["corpus"] != b["corpus"]
    plan = {s.name: s for s in build_plan(load_config(None, ["tokenizer.kind=gpt2"]), tmp_path)}
    assert plan["tokenizer"].upstream == [] and plan["tokenizer"].key_or_none() is not None


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


def test_force_invalidates_exactly_the_downstream_stages(tmp_path):
    plan = build_plan(load_config(None), tmp_path)
    for forced_stage, expected in {
        "corpus": {s.name for s in plan} - set(),
        "encode": {s.name for s in plan} - {"corpus", "tokenizer"},
        "finetune[story_cloze]": {"finetune[story_cloze]", "evaluate[story_cloze]", "report"},
        "report": {"report"},
    }.items():
        _, forced = select(plan, None, None, [forced_stage])
        assert forced == expected, forced_stage
    _, forced = select(plan, None, None, ["finetune"])  # a kind selects every stage of that kind
    assert forced == {s.name for s in plan if s.kind in ("finetune", "evaluate", "report")}


def test_only_with_force_recomputes_just_the_named_stage(tmp_path):
    plan = build_plan(load_config(None), tmp_path)
    fake_done(plan)  # pretend everything is done
    selected, forced = select(plan, ["pretrain"], None, ["pretrain"])
    assert [s.name for s in selected] == ["pretrain"]
    assert "pretrain" in forced  # its downstream is invalidated too, but not run by --only
    selected, forced = select(plan, ["evaluate"], "finetune", None)
    assert {s.name for s in selected} == {"evaluate[sst2]", "evaluate[story_cloze]"}
    assert {"finetune[sst2]", "evaluate[sst2]"} <= forced and "pretrain" not in forced


def test_from_a_stage_reuses_what_came_before(tmp_path):
    plan = build_plan(load_config(None), tmp_path)
    fake_done(plan, skip=("finetune[sst2]", "evaluate[sst2]", "report"))  # all done but these
    selected, forced = select(plan, None, "finetune[sst2]", None)
    assert [s.name for s in selected] == ["finetune[sst2]", "evaluate[sst2]", "report"]
    assert forced == {"finetune[sst2]", "evaluate[sst2]", "report"}
