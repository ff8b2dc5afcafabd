"""Built-in mirror tasks, hub loaders on local fixtures, and the plan's task variants (ablations, seeds)."""

from pathlib import Path

import pytest

from gpt.config.loader import load_config
from gpt.downstream.builtin import get_task
from tasks.plan import build_plan
from tasks.variants import recipe, variants

FIXTURE_MIRROR = Path(__file__).parent / "fixtures" / "mirror"


@pytest.mark.parametrize(
    ("name", "train", "dev", "n_fields", "labels"),
    [
        ("rte", 2490, 277, 2, {0, 1}),
        ("mrpc", 3668, 408, 2, {0, 1}),
    ],
)
def test_glue_classification_tasks_from_mirror(tmp_path, name, train, dev, n_fields, labels):
    spec = get_task(name)
    dev_examples = spec.load("dev", tmp_path)
    assert len(spec.load("train", tmp_path)) == train and len(dev_examples) == dev
    assert {len(e.fields) for e in dev_examples} == {n_fields} and {e.label for e in dev_examples} == labels


def test_mrpc_positives_and_stsb_scores(tmp_path):
    mrpc = get_task("mrpc").load("dev", tmp_path)
    assert sum(e.label for e in mrpc) == 279  # PROVENANCE: dev 1 = 279, 0 = 129
    stsb = get_task("stsb")
    dev = stsb.load("dev", tmp_path)
    assert stsb.regression and stsb.num_outputs == 1 and stsb.metrics == ("pearson", "spearman")
    assert len(dev) == 1500 and all(isinstance(e.label, float) and 0 <= e.label <= 5 for e in dev)
    assert dev[0] == type(dev[0])(("A man with a hard hat is dancing.", "A man wearing a hard hat is dancing."), 5.0)


@pytest.mark.parametrize(
    ("name", "split", "n", "first"),
    [
        ("cola", "train", 4, (("Our friends won't buy this analysis, let alone the next one we propose.",), 1)),
        ("mnli", "dev", 2, (("The new rights are nice enough", "Everyone really likes the newest benefits"), 1)),
        ("qnli", "dev", 1, None),
        ("qqp", "train", 2, None),
        ("snli", "train", 3, None),  # the row with label -1 (no gold label) is dropped
        ("snli", "test", 1, None),
        ("scitail", "test", 3, None),
        ("race", "dev", 2, None),
    ],
)
def test_hub_loaders_on_fixtures(monkeypatch, tmp_path, name, split, n, first):
    monkeypatch.setenv("GPTFLOW_MIRROR", str(FIXTURE_MIRROR))
    spec = get_task(name)
    examples = spec.load(split, tmp_path)
    assert len(examples) == n
    if first:
        assert (examples[0].fields, examples[0].label) == first
    if name == "race":
        story = examples[0]
        assert len(story.fields) == 5 and story.label == 2 and spec.num_outputs == 4
        assert story.fields[0].endswith("What did Nancy try to do before she fell over?")
    if name == "scitail":
        assert [e.label for e in examples] == [1, 1, 0]


def test_unknown_task_lists_known_ones():
    with pytest.raises(KeyError, match="known: .*cola.*mrpc.*race.*sst2.*stsb"):
        get_task("glu")


def test_ablation_and_seed_variants_in_the_plan(tmp_path):
    cfg = load_config(
        None,
        [
            "finetune.tasks=[sst2, story_cloze]",
            "ablations=[no_pretraining, no_aux_lm]",
            "finetune.per_task={sst2: {lr: 0.001, epochs: 1}}",
        ],
    )
    names = [v.name for v in variants(cfg)]
    assert names == [
        "sst2",
        "sst2-no_pretraining",
        "sst2-no_aux_lm",
        "story_cloze",
        "story_cloze-no_pretraining",
        "story_cloze-no_aux_lm",
    ]
    by_name = {s.name: s for s in build_plan(cfg, tmp_path)}
    scratch = by_name["finetune[sst2-no_pretraining]"]
    assert scratch.upstream == ["tokenizer"] and scratch.section.recipe.init == "scratch"
    assert scratch.section.recipe.lr == 0.001 and scratch.section.recipe.epochs == 1
    assert by_name["finetune[sst2-no_aux_lm]"].section.recipe.aux_lm_weight == 0.0
    assert by_name["finetune[story_cloze]"].section.recipe.lr == 6.25e-5
    assert by_name["finetune[story_cloze]"].upstream == ["pretrain", "tokenizer"]
    assert by_name["evaluate[sst2-no_pretraining]"].variant.name == "sst2-no_pretraining"
    # evaluation of all variants of a task reads the same dev examples
    assert by_name["evaluate[sst2]"].section == by_name["evaluate[sst2-no_aux_lm]"].section
    assert by_name["evaluate[sst2]"].upstream != by_name["evaluate[sst2-no_aux_lm]"].upstream  # other weights

    seeded = load_config(None, ["finetune.tasks=[sst2]", "finetune.seeds=[1, 2, 3]"])
    assert [v.name for v in variants(seeded)] == ["sst2-seed1", "sst2-seed2", "sst2-seed3"]
    plan = {s.name: s for s in build_plan(seeded, tmp_path)}
    assert plan["finetune[sst2-seed2]"].section.seed == 2 and plan["finetune[sst2-seed2]"].section.data_seed == 1234
    assert recipe(seeded, variants(seeded)[0]).tasks == ["sst2"]
