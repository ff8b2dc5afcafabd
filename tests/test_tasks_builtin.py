"""Built-in mirror tasks, hub loaders on local fixtures, and the plan's task variants (ablations, seeds)."""

from pathlib import Path

import pytest

from gpt.config.fields import ConfigError
from gpt.config.loader import load_config
from gpt.downstream.builtin import get_task
from gpt.downstream.spec import TaskDataError
from tasks.plan import build_plan
from tasks.variants import check_task_inputs, recipe, variants

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


STORY_CLOZE_HEADER = (
    "InputStoryid,InputSentence1,InputSentence2,InputSentence3,InputSentence4,"
    "RandomFifthSentenceQuiz1,RandomFifthSentenceQuiz2,AnswerRightEnding\n"
)


def story_cloze_test_file(path: Path, rows: int = 4, header: str = STORY_CLOZE_HEADER, answer: str = "") -> Path:
    """A small Story Cloze 2016 test CSV (the val file's columns); `answer` overrides the last row's label."""
    lines = [
        f'id{i},S{i} one.,"S{i}, two.",S{i} three.,S{i} four.,End {i}a.,End {i}b.,{1 + i % 2}\n' for i in range(rows)
    ]
    if answer:
        lines[-1] = lines[-1].rsplit(",", 1)[0] + f",{answer}\n"
    path.write_text(header + "".join(lines), encoding="utf-8")
    return path


def test_story_cloze_takes_a_labelled_test_file(tmp_path):
    from gpt.downstream.builtin import TEST_FILE_READERS
    from gpt.downstream.config import TEST_FILE_TASKS

    test = story_cloze_test_file(tmp_path / "test.csv")
    cfg = load_config(None, ["finetune.tasks=[story_cloze]", f"builtin_tasks={{story_cloze: {{test: {test}}}}}"])
    check_task_inputs(cfg)
    plain, tested = get_task("story_cloze"), get_task("story_cloze", cfg.tasks, cfg.builtin_tasks)
    assert plain.splits == ("train", "dev") and tested.splits == ("train", "dev", "test")
    examples = tested.load("test", tmp_path)
    assert [(e.fields, e.label) for e in examples[:2]] == [
        (("S0 one. S0, two. S0 three. S0 four.", "End 0a.", "End 0b."), 0),
        (("S1 one. S1, two. S1 three. S1 four.", "End 1a.", "End 1b."), 1),
    ]
    assert tested.load("dev", tmp_path) == plain.load("dev", tmp_path)  # the 374 held-out val stories stay dev
    assert set(TEST_FILE_READERS) == set(TEST_FILE_TASKS)


@pytest.mark.parametrize(
    ("header", "answer", "message"),
    [
        (
            STORY_CLOZE_HEADER.replace("AnswerRightEnding", "Answer"),
            "",
            r"no column 'AnswerRightEnding' \(builtin_tasks\.story_cloze\.test",
        ),
        (
            STORY_CLOZE_HEADER,
            "3",
            r"test\.csv:5: column 'AnswerRightEnding' has label '3', not in the label set \['1', '2'\]",
        ),
        (STORY_CLOZE_HEADER.replace("InputStoryid,", ""), "", r"test\.csv:2: 8 fields, the header has 7"),
    ],
)
def test_a_bad_story_cloze_test_file_fails_before_compute(tmp_path, header, answer, message):
    test = story_cloze_test_file(tmp_path / "test.csv", header=header, answer=answer)
    cfg = load_config(None, ["finetune.tasks=[story_cloze]", f"builtin_tasks={{story_cloze: {{test: {test}}}}}"])
    with pytest.raises(TaskDataError, match=message):
        check_task_inputs(cfg)
    test.unlink()
    with pytest.raises(TaskDataError, match=r"test\.csv: task file not found"):
        check_task_inputs(cfg)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["builtin_tasks={sst2: {test: t.tsv}}"], r"'builtin_tasks\.sst2': only story_cloze takes a test file"),
        (
            [
                "builtin_tasks={story_cloze: {test: t.csv}}",
                "tasks={story_cloze: {type: multiple_choice, train: a.csv, "
                "dev: b.csv, columns: {context: c, answers: [x, y]}}}",
            ],
            r"'builtin_tasks\.story_cloze': tasks\.story_cloze is a custom task of that name",
        ),
        (
            ["builtin_tasks={story_cloze: {test: 'https://e.org/t.csv'}}"],
            r"'builtin_tasks\.story_cloze\.test' must be a local path",
        ),
        (["builtin_tasks={story_cloze: {dev: t.csv}}"], r"unknown config key 'builtin_tasks\.story_cloze\.dev'"),
    ],
)
def test_builtin_task_options_are_checked_when_the_config_loads(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, overrides)
