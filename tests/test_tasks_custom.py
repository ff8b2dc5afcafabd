"""Custom tasks by configuration alone: file formats, and one clear error per kind of bad input."""

import textwrap

import pytest

from gpt.config.fields import ConfigError
from gpt.config.loader import load_config
from gpt.downstream.builtin import get_task
from gpt.downstream.spec import TaskDataError
from tasks.variants import check_task_inputs


def write(path, text, encoding="utf-8"):
    path.write_text(textwrap.dedent(text).lstrip("\n"), encoding=encoding)
    return path


def config(tmp_path, task_yaml, tasks="[mine]"):
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(
        f"finetune:\n  tasks: {tasks}\ntasks:\n  mine:\n" + textwrap.indent(textwrap.dedent(task_yaml), "    ")
    )
    return load_config(cfg)


def test_csv_with_bom_and_quotes(tmp_path):
    write(tmp_path / "train.csv", 'review,stars\n"Good, really good",pos\nbad,neg\n', encoding="utf-8-sig")
    write(tmp_path / "dev.csv", "review,stars\nfine,pos\n")
    cfg = config(
        tmp_path,
        f"""
        type: classification
        train: {tmp_path}/train.csv
        dev: {tmp_path}/dev.csv
        columns: {{text: review}}
        label: stars
        labels: [neg, pos]
        metrics: [accuracy, f1]
        """,
    )
    check_task_inputs(cfg)
    spec = get_task("mine", cfg.tasks)
    assert (spec.type, spec.num_outputs, spec.metrics, spec.label_names) == (
        "classification",
        2,
        ("accuracy", "f1"),
        ("neg", "pos"),
    )
    train = spec.load("train", tmp_path)
    assert [(e.fields, e.label) for e in train] == [(("Good, really good",), 1), (("bad",), 0)]


def test_jsonl_multiple_choice_and_tsv_regression(tmp_path):
    write(
        tmp_path / "mc.jsonl",
        '{"story": "s1", "e1": "a", "e2": "b", "right": 2}\n{"story": "s2", "e1": "c", "e2": "d", "right": 1}\n',
    )
    write(tmp_path / "sim.tsv", 's1\ts2\tscore\nA "cat"\ta dog\t3.5\n')
    cfg_mc = config(
        tmp_path,
        f"""
        type: multiple_choice
        train: {tmp_path}/mc.jsonl
        dev: {tmp_path}/mc.jsonl
        columns: {{context: story, answers: [e1, e2]}}
        label: right
        labels: ["1", "2"]
        """,
    )
    mc = get_task("mine", cfg_mc.tasks).load("dev", tmp_path)
    assert [(e.fields, e.label) for e in mc] == [(("s1", "a", "b"), 1), (("s2", "c", "d"), 0)]
    cfg_sim = config(
        tmp_path,
        f"""
        type: similarity
        train: {tmp_path}/sim.tsv
        dev: {tmp_path}/sim.tsv
        quoting: none
        columns: {{a: s1, b: s2}}
        label: score
        score_range: [0, 5]
        """,
    )
    spec = get_task("mine", cfg_sim.tasks)
    assert spec.regression and spec.num_outputs == 1 and spec.metrics == ("pearson", "spearman")
    assert [(e.fields, e.label) for e in spec.load("train", tmp_path)] == [(('A "cat"', "a dog"), 3.5)]


def _tsv_task(tmp_path, train_text, **extra):
    train = write(tmp_path / "train.tsv", train_text)
    write(tmp_path / "dev.tsv", "sentence\tlabel\nok\t1\n")
    lines = [
        "type: classification",
        f"train: {train}",
        f"dev: {tmp_path}/dev.tsv",
        "columns: {text: sentence}",
        "labels: ['0', '1']",
        *(f"{k}: {v}" for k, v in extra.items()),
    ]
    return config(tmp_path, "\n".join(lines) + "\n")


@pytest.mark.parametrize(
    ("train_text", "message"),
    [
        ("text\tlabel\nhello\t1\n", r"train\.tsv: no column 'sentence' \(tasks\.mine\.columns\.text\)"),
        ("sentence\tgold\nhello\t1\n", r"train\.tsv: no column 'label' \(tasks\.mine\.label\)"),
        ("sentence\tlabel\nhello\t1\nbye\t7\n", r"train\.tsv:3: column 'label' has label '7', not in the label set"),
        ("", r"train\.tsv: file is empty"),
        ("sentence\tlabel\n", r"train\.tsv: no data rows"),
        ("sentence\tlabel\nhello\t1\textra\n", r"train\.tsv:2: 3 fields, the header has 2"),
    ],
)
def test_bad_files_fail_before_compute_naming_file_and_column(tmp_path, train_text, message):
    cfg = _tsv_task(tmp_path, train_text)
    with pytest.raises(TaskDataError, match=message):
        check_task_inputs(cfg)


def test_missing_file_and_bad_encoding(tmp_path):
    cfg = _tsv_task(tmp_path, "sentence\tlabel\nhi\t1\n")
    (tmp_path / "train.tsv").write_bytes(b"sentence\tlabel\n\xff\xfe\t1\n")
    with pytest.raises(TaskDataError, match=r"train\.tsv: not utf-8-sig text"):
        check_task_inputs(cfg)
    (tmp_path / "train.tsv").unlink()
    with pytest.raises(TaskDataError, match=r"train\.tsv: task file not found"):
        check_task_inputs(cfg)


@pytest.mark.parametrize(
    ("task_yaml", "message"),
    [
        (
            "type: classification\ntrain: a.csv\ndev: b.csv\nlabels: [x, y]\n",
            r"'tasks\.mine\.columns\.text' is required",
        ),
        (
            "type: classification\ntrain: a.csv\ndev: b.csv\ncolumns: {text: t, premise: p}\nlabels: [x, y]\n",
            r"'tasks\.mine\.columns\.premise' is not used by a classification task",
        ),
        (
            "type: entailment\ntrain: a.csv\ndev: b.csv\ncolumns: {premise: p, hypothesis: h}\n",
            r"'tasks\.mine\.labels' must list",
        ),
        (
            "type: similarity\ntrain: a.csv\ndev: b.csv\ncolumns: {a: x, b: y}\nlabels: [p, q]\nscore_range: [0, 1]\n",
            r"'tasks\.mine\.labels' and 'score_range' exclude each other",
        ),
        (
            "type: classification\ntrain: a.csv\ndev: b.csv\ncolumns: {text: t}\nlabels: [x, y]\nmetrics: [pearson]\n",
            r"'tasks\.mine\.metrics\[0\]' must be one of accuracy \| f1 \| matthews",
        ),
        (
            "type: classification\ntrain: a.xlsx\ndev: b.csv\ncolumns: {text: t}\nlabels: [x, y]\n",
            r"'tasks\.mine\.train': cannot tell the format",
        ),
        (
            "type: multiple_choice\ntrain: a.csv\ndev: b.csv\ncolumns: {context: c, answers: [a]}\n",
            r"'tasks\.mine\.columns\.answers' must list at least 2",
        ),
        ("type: ranking\ntrain: a.csv\ndev: b.csv\n", r"'tasks\.mine\.type' must be one of classification"),
        (
            "type: classification\ndev: b.csv\ncolumns: {text: t}\nlabels: [x, y]\n",
            r"missing config key 'tasks\.mine\.train'",
        ),
    ],
)
def test_config_errors_name_the_key(tmp_path, task_yaml, message):
    with pytest.raises(ConfigError, match=message):
        config(tmp_path, task_yaml)


def test_unknown_task_and_stray_override(tmp_path):
    with pytest.raises(ConfigError, match=r"'finetune\.tasks\[0\]': unknown task 'nope'"):
        check_task_inputs(load_config(None, ["finetune.tasks=[nope]"]))
    with pytest.raises(ConfigError, match=r"'finetune\.per_task\.rte': 'rte' is not in finetune\.tasks"):
        check_task_inputs(load_config(None, ["finetune.tasks=[sst2]", "finetune.per_task={rte: {lr: 0.1}}"]))
    with pytest.raises(ConfigError, match=r"'finetune\.init' must be pretrained \| scratch \| a model directory"):
        check_task_inputs(load_config(None, ["finetune.init=/no/such/dir"]))


def test_url_splits_are_downloaded_with_their_checksum(tmp_path, monkeypatch):
    local = write(tmp_path / "fetched", "text,label\nhi,b\n")
    calls = []

    def fake_download(url, sha256, cache_dir):
        calls.append((url, sha256, cache_dir))
        return local

    monkeypatch.setattr("gpt.downstream.custom.download", fake_download)
    cfg = config(
        tmp_path,
        """
        type: classification
        train: https://example.org/data/train.csv#sha256=abababababababababababababababababababababababababababababababab
        dev: https://example.org/data/dev.csv#sha256=dededededededededededededededededededededededededededededededede
        columns: {text: text}
        labels: [a, b]
        """,
    )
    check_task_inputs(cfg)  # URL splits are not fetched before compute
    assert calls == []
    examples = get_task("mine", cfg.tasks).load("train", tmp_path / "cache")
    assert [(e.fields, e.label) for e in examples] == [(("hi",), 1)]
    assert calls == [("https://example.org/data/train.csv", "ab" * 32, tmp_path / "cache")]
    with pytest.raises(ConfigError, match=r"'tasks\.mine\.dev': an https file needs '#sha256=<64 hex digits>'"):
        config(
            tmp_path,
            "type: classification\ntrain: a.csv\ndev: https://e.org/dev.csv\ncolumns: {text: t}\nlabels: [a, b]\n",
        )


STORY_HEADER = (
    "InputStoryid,InputSentence1,InputSentence2,InputSentence3,InputSentence4,"
    "RandomFifthSentenceQuiz1,RandomFifthSentenceQuiz2,AnswerRightEnding\n"
)
STORY_COLUMNS = """
    columns:
      context: [InputSentence1, InputSentence2, InputSentence3, InputSentence4]
      answers: [RandomFifthSentenceQuiz1, RandomFifthSentenceQuiz2]
    label: AnswerRightEnding
    labels: ["1", "2"]
"""


def _story_task(tmp_path, header=STORY_HEADER, columns=STORY_COLUMNS):
    """A custom multiple-choice task on a file with the official Story Cloze columns, unprocessed."""
    write(
        tmp_path / "stories.csv", header + 'id1,Tom woke up.,"He was late, again.",He ran.,He made it. ,Yay.,Boo.,1\n'
    )
    files = f"type: multiple_choice\ntrain: {tmp_path}/stories.csv\ndev: {tmp_path}/stories.csv\n"
    return config(tmp_path, files + textwrap.dedent(columns).lstrip("\n"))


def test_multiple_choice_context_joins_listed_columns_in_order(tmp_path):
    cfg = _story_task(tmp_path)
    assert cfg.tasks["mine"].columns.context == ["InputSentence1", "InputSentence2", "InputSentence3", "InputSentence4"]
    check_task_inputs(cfg)
    (story,) = get_task("mine", cfg.tasks).load("dev", tmp_path)
    assert story.fields == ("Tom woke up. He was late, again. He ran. He made it.", "Yay.", "Boo.")
    assert story.label == 0


def test_story_cloze_val_file_loads_as_a_custom_task_like_the_builtin(tmp_path):
    """The official val CSV from the mirror, no preprocessing: the built-in's stories, context joined the same way."""
    source = "mirror://story_cloze/cloze_test_val__spring2016.csv"
    cfg = config(
        tmp_path,
        f"type: multiple_choice\ntrain: {source}\ndev: {source}\n" + textwrap.dedent(STORY_COLUMNS).lstrip("\n"),
    )
    custom = get_task("mine", cfg.tasks).load("dev", tmp_path)
    builtin = get_task("story_cloze")
    assert len(custom) == 1871
    assert set(custom) == {*builtin.load("train", tmp_path), *builtin.load("dev", tmp_path)}


def test_a_missing_listed_context_column_names_file_and_index(tmp_path):
    cfg = _story_task(tmp_path, header=STORY_HEADER.replace("InputSentence3", "Sentence3"))
    with pytest.raises(TaskDataError) as caught:
        check_task_inputs(cfg)
    message = str(caught.value)
    assert message.startswith(f"{tmp_path}/stories.csv: no column 'InputSentence3' (tasks.mine.columns.context[2])")
    assert "\n" not in message


@pytest.mark.parametrize(
    ("context", "message"),
    [
        ("[]", r"'tasks\.mine\.columns\.context' must name a column or list at least 1"),
        ("{a: b}", r"'tasks\.mine\.columns\.context' must be a string"),
        ("[s1, [s2]]", r"'tasks\.mine\.columns\.context\[1\]' must be a string"),
    ],
)
def test_bad_context_lists_name_the_key(tmp_path, context, message):
    task = f"type: multiple_choice\ntrain: a.csv\ndev: b.csv\ncolumns: {{context: {context}, answers: [x, y]}}\n"
    with pytest.raises(ConfigError, match=message):
        config(tmp_path, task)


def test_a_context_list_is_refused_for_other_task_types(tmp_path):
    task = "type: classification\ntrain: a.csv\ndev: b.csv\ncolumns: {text: t, context: [a, b]}\nlabels: [x, y]\n"
    with pytest.raises(ConfigError, match=r"'tasks\.mine\.columns\.context' is not used by a classification task"):
        config(tmp_path, task)
