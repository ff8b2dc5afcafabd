"""The cache key covers exactly what is computed: a property test over every leaf of the config.

Each leaf either changes what some stage hashes (its kind, version and typed section), or carries
an `observation` / `placement` role in gpt/config/fields.py and then changes no stage at all. Because a
stage's compute receives only its section (tasks/definition.py), a value that reaches a compute is a
value its key hashes. Upstream outputs join the key at run time (early cutoff); that part is tested
end to end in tests/test_cache_e2e.py.
"""

from __future__ import annotations

import dataclasses
import hashlib
import typing
from pathlib import Path

import pytest
import yaml

from gpt.config.experiment import ExperimentConfig, flatten
from gpt.config.fields import OBSERVATION, PLACEMENT
from gpt.config.loader import load_config
from tasks.plan import build_plan

ROOT = Path(__file__).resolve().parents[1]

# A base config with every section populated: a custom task, per-task overrides, zero-shot scoring.
BASE = [
    "finetune.tasks=[sst2, reviews]",
    "finetune.per_task={sst2: {lr: 0.001}}",
    "pretrain.zeroshot_tasks=[sst2]",
    "pretrain.tokens_per_step=8192",  # a fixed global batch: devices and nodes only spread it (4 x 8 x 256 tokens)
    "harness.tasks=[storycloze_2016]",
]

# Values for leaves a generic change (+1, x0.5, not) would make invalid or leave meaningless.
NEW_VALUE: dict[str, object] = {
    "sweep.method": "random",
    "sweep.trials": 3,
    "sweep.metric": "sst2.f1",
    "sweep.goal": "minimize",
    "sweep.sampler_seed": 5,
    "notify.urls": ["json://127.0.0.1:9/hook"],
    "notify.on": ["failure", "finish"],
    "corpus.source": "gutenberg",
    "pretrain.keep_models": [10],
    "pretrain.cooldown_steps": 10,
    "finetune.from_checkpoints": ["10", "last"],
    "harness.tasks": ["storycloze_2016", "lambada_openai"],
    "harness.limit": 10,
    "corpus.sources": [{"source": "tinyshakespeare", "weight": 1.0}],
    "corpus.max_bytes": 100_000,
    "tokenizer.kind": "gpt2",
    "tokenizer.max_train_bytes": 100_000,
    "model.n_head": 8,
    "model.n_embd": 512,
    "model.norm": "pre",
    "model.activation": "gelu_new",
    "pretrain.precision": "16-mixed",  # never what `auto` resolves to on a CPU
    "pretrain.strategy": "ddp",
    "pretrain.devices": "2",
    "pretrain.accelerator": "cpu",
    "pretrain.schedule": "linear",
    "pretrain.tokens_per_step": 4096,
    "pretrain.compile": True,  # unset resolves to off on a CPU: on must re-key
    "pretrain.launcher": "srun",
    "pretrain.zeroshot_tasks": ["story_cloze"],
    "pretrain.zeroshot_examples": 20,
    "pretrain.probe_tasks": ["sst2"],
    "pretrain.probe_examples": 20,
    "finetune.group_by_length": False,
    "finetune.fresh_special_tokens": False,
    "finetune.tasks": ["sst2", "reviews", "rte"],
    "finetune.max_examples": 100,
    "finetune.max_len": 64,
    "finetune.init": "scratch",
    "finetune.early_stopping_patience": 1,
    "finetune.seeds": [1, 2],
    "finetune.per_task.sst2.lr": 0.002,
    **{
        f"finetune.per_task.sst2.{k}": v
        for k, v in {
            "epochs": 2,
            "batch_size": 8,
            "aux_lm_weight": 0.1,
            "warmup_fraction": 0.1,
            "weight_decay": 0.1,
            "clf_dropout": 0.2,
            "max_examples": 10,
            "max_len": 32,
            "group_by_length": False,
            "fresh_special_tokens": False,
            "early_stopping_patience": 2,
            "select_best": True,
        }.items()
    },
    "tasks.reviews.format": "tsv",
    "tasks.reviews.delimiter": ";",
    "tasks.reviews.quoting": "none",
    "tasks.reviews.encoding": "utf-8",
    "tasks.reviews.columns.text": "review",
    "tasks.reviews.label": "stars",
    "tasks.reviews.labels": ["good", "bad"],
    "tasks.reviews.metrics": ["f1"],
    "ablations": ["no_aux_lm"],
    "experiment": "another",
    "fanout.runner": "dask",
    "fanout.max_concurrency": 4,
    "fanout.address": "tcp://127.0.0.1:8786",
    "fanout.threads_per_stage": 2,
}
# Leaves the property cannot vary on its own (they must change together with others to stay valid).
SKIP = {
    "model.vocab_size",  # the tokenizer's: an experiment config refuses it (tests/test_config.py)
    "tasks.reviews.type",  # another type needs other columns; tests/test_tasks_custom.py covers the types
    "tasks.reviews.train",  # file content is what counts: tests/test_cache_e2e.py edits the files
    "tasks.reviews.dev",
    "tasks.reviews.columns.hypothesis",  # other task types' columns: None here
    "tasks.reviews.columns.premise",
    "tasks.reviews.columns.a",
    "tasks.reviews.columns.b",
    "tasks.reviews.columns.context",
    "tasks.reviews.columns.answers",
    "tasks.reviews.score_range",  # excludes `labels`
    "tasks.reviews.test",
    "claims",  # needs an ablation to compare with; tests/test_claims.py checks claims change no stage key
    "pretrain.init_from",  # weights' content is what counts: tests/test_init_from.py moves and edits them
    "pretrain.resume_from",  # a finished stage; its checkpoint's content is keyed (tests/test_continue_pretraining.py)
    "harness.include_path",  # its files' content is what counts: tests/test_harness.py edits a task YAML
}


@pytest.fixture
def task_files(tmp_path: Path) -> list[str]:
    for split in ("train", "dev"):
        rows = "".join(f"a fine film number {i},{'pos' if i % 2 else 'neg'}\n" for i in range(6))
        (tmp_path / f"{split}.csv").write_text("text,label\n" + rows)
    return [
        f"tasks={{reviews: {{type: classification, train: {tmp_path}/train.csv, dev: {tmp_path}/dev.csv, "
        "columns: {text: text}, labels: [neg, pos]}}",
    ]


def role(key: str) -> str | None:
    """The `role` metadata of the config field a dotted key names (walking dataclasses and dict values)."""
    tp: typing.Any = ExperimentConfig
    meta: typing.Any = {}
    for part in key.split("."):
        if dataclasses.is_dataclass(tp):
            fields = {f.name: f for f in dataclasses.fields(tp)}
            meta = fields[part].metadata
            if meta.get("role"):
                return meta["role"]
            tp = typing.get_type_hints(tp)[part]
        else:  # a dict: every key has the value type
            tp = typing.get_args(tp)[1]
        if typing.get_origin(tp) in (typing.Union, __import__("types").UnionType):
            tp = next(a for a in typing.get_args(tp) if a is not type(None))
    return None


def changed_value(key: str, value: object) -> object:
    if key in NEW_VALUE:
        return NEW_VALUE[key]
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return value + 1
    if isinstance(value, float):
        return value * 0.5 if value else 0.1
    raise AssertionError(f"no changed value for {key}={value!r}: add one to NEW_VALUE")


def stage_digests(cfg: ExperimentConfig, tmp_path: Path) -> dict[str, str]:
    return {s.name: s.section_digest() for s in build_plan(cfg, tmp_path / "artifacts")}


def test_every_config_leaf_is_hashed_or_declared_observation_or_placement(task_files, tmp_path):
    base_overrides = BASE + task_files
    base = load_config(None, base_overrides)
    before = stage_digests(base, tmp_path)
    leaves = {k: v for k, v in flatten(base.to_dict()).items() if k not in SKIP}
    assert len(leaves) > 80  # the walk reaches every section
    unhashed, declared = [], []
    for key, value in leaves.items():
        new = changed_value(key, value)
        cfg = load_config(None, [*base_overrides, f"{key}={yaml.safe_dump(new, default_flow_style=True).strip()}"])
        assert flatten(cfg.to_dict())[key] != value or key.startswith("finetune.tasks"), key
        after = stage_digests(cfg, tmp_path)
        changed = set(before) ^ set(after) | {n for n in before if n in after and before[n] != after[n]}
        if role(key) in (OBSERVATION, PLACEMENT):
            if changed:
                declared.append(f"{key} ({role(key)}) changed {sorted(changed)}")
        elif not changed:
            unhashed.append(key)
    assert not unhashed, f"config keys no stage hashes and not declared observation/placement: {unhashed}"
    assert not declared, f"keys declared observation/placement that change a stage: {declared}"


def test_observation_and_placement_keys_are_the_documented_ones():
    leaves = flatten(load_config(None, BASE).to_dict())
    roles = {k: role(k) for k in leaves if role(k)}
    assert {k for k, r in roles.items() if r == OBSERVATION} == {
        "experiment",
        "claims",
        "pretrain.val_every",
        "pretrain.ckpt_every",
        "pretrain.log_every",
        "pretrain.sample_tokens",
        "pretrain.ckpt_keep",
        "pretrain.zeroshot_tasks",
        "pretrain.zeroshot_examples",
        "pretrain.probe_tasks",
        "pretrain.probe_examples",
        "finetune.ckpt_every",
        "sweep.method",
        "sweep.trials",
        "sweep.metric",
        "sweep.goal",
        "sweep.sampler_seed",
        "notify.urls",
        "notify.on",
    }
    assert {k for k, r in roles.items() if r == PLACEMENT} == {
        "pretrain.strategy",
        "pretrain.devices",
        "pretrain.num_nodes",
        "pretrain.launcher",
        "pretrain.activation_checkpointing",
        "harness.batch_size",
        "fanout.runner",
        "fanout.max_concurrency",
        "fanout.address",
        "fanout.threads_per_stage",
    }


def test_data_seed_and_precision_are_in_the_finetune_key(tmp_path):
    """The bugs this issue named: a no_pretraining variant's training subset follows `seed`; precision counts."""
    base = ["ablations=[no_pretraining]", "finetune.tasks=[sst2]", "finetune.seeds=[1]", "finetune.max_examples=50"]
    name = "finetune[sst2-no_pretraining-seed1]"

    def digest(*extra: str) -> str:
        return stage_digests(load_config(None, [*base, *extra]), tmp_path)[name]

    assert digest("seed=1") != digest("seed=2")
    assert digest("pretrain.precision=32-true") != digest("pretrain.precision=bf16-mixed")


def corpus_digest(source: str, tmp_path: Path) -> str:
    (corpus,) = [
        s for s in build_plan(load_config(None, [f"corpus.source={source}"]), tmp_path / "a") if s.kind == "corpus"
    ]
    return corpus.section_digest()


def test_local_corpus_files_folders_and_globs_are_keyed_by_content(tmp_path):
    folder = tmp_path / "corpus"
    folder.mkdir()
    (folder / "a.txt").write_text("one document\n")
    (folder / "b.txt").write_text("another document\n")
    keys = {src: corpus_digest(src, tmp_path) for src in (str(folder), f"{folder}/*.txt", str(folder / "a.txt"))}
    (folder / "a.txt").write_text("one document, edited\n")
    assert all(corpus_digest(src, tmp_path) != key for src, key in keys.items())  # an edit: every form sees it
    before = corpus_digest(str(folder), tmp_path)
    (folder / "c.txt").write_text("a new file\n")
    assert corpus_digest(str(folder), tmp_path) != before  # a file added to the folder
    assert corpus_digest("tinyshakespeare", tmp_path) == corpus_digest("tinyshakespeare", tmp_path)  # pinned by name


def test_custom_task_files_and_init_model_dirs_are_keyed_by_content(task_files, tmp_path):
    import shutil

    def digests(*extra: str) -> dict[str, str]:
        return stage_digests(load_config(None, [*BASE, *task_files, *extra]), tmp_path)

    before = digests()
    train = tmp_path / "train.csv"
    train.write_text(train.read_text().replace("number 0,neg", "number 0,pos"))
    after = digests()
    assert {n for n in before if before[n] != after[n]} == {"finetune[reviews]"}  # evaluate reads only dev
    (tmp_path / "dev.csv").write_text((tmp_path / "dev.csv").read_text() + "one more,pos\n")
    again = digests()
    assert {n for n in after if after[n] != again[n]} == {"evaluate[reviews]"}  # no early stopping: only it reads dev

    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    (model / "model.safetensors").write_bytes(b"weights")
    name = "finetune[sst2]"
    first = digests(f"finetune.init={model}")[name]
    (model / "model.safetensors").write_bytes(b"other weights")
    assert digests(f"finetune.init={model}")[name] != first
    moved = tmp_path / "elsewhere"
    shutil.copytree(model, moved)
    assert digests(f"finetune.init={moved}")[name] == digests(f"finetune.init={model}")[name]  # content, not path


def test_a_multiple_choice_context_column_list_is_in_the_task_stages_keys(tmp_path):
    (tmp_path / "mc.csv").write_text("s1,s2,s3,e1,e2,label\na,b,c,d,e,0\n")
    mc = f"type: multiple_choice, train: {tmp_path}/mc.csv, dev: {tmp_path}/mc.csv, label: label"

    def digests(context: str) -> dict[str, str]:
        task = f"tasks={{mc: {{{mc}, columns: {{context: {context}, answers: [e1, e2]}}}}}}"
        return stage_digests(load_config(None, ["finetune.tasks=[mc]", task]), tmp_path)

    one, two, three = digests("s1"), digests("[s1, s2]"), digests("[s2, s1]")
    for name in ("finetune[mc]", "evaluate[mc]"):
        assert len({one[name], two[name], three[name]}) == 3  # which columns, and their order
    assert digests("[s1]") != one  # the same column, but a list: the config section says so


def test_a_builtin_tasks_test_file_keys_evaluate_alone_by_content(tmp_path):
    test = tmp_path / "cloze_test.csv"
    test.write_text("InputStoryid,AnswerRightEnding\nx,1\n")  # planning hashes it; check_task_inputs reads it

    def digests(*extra: str) -> dict[str, str]:
        return stage_digests(load_config(None, ["finetune.tasks=[sst2, story_cloze]", *extra]), tmp_path)

    without = digests()
    with_test = digests(f"builtin_tasks={{story_cloze: {{test: {test}}}}}")
    assert {n for n in without if without[n] != with_test[n]} == {"evaluate[story_cloze]"}
    test.write_text("InputStoryid,AnswerRightEnding\nx,2\n")
    edited = digests(f"builtin_tasks={{story_cloze: {{test: {test}}}}}")
    assert {n for n in with_test if with_test[n] != edited[n]} == {"evaluate[story_cloze]"}
    cfg = load_config(None, [f"builtin_tasks={{story_cloze: {{test: {test}}}}}"])
    (evaluate,) = [s for s in build_plan(cfg, tmp_path) if s.name == "evaluate[story_cloze]"]
    assert evaluate.section.task.files == {str(test): hashlib.sha256(test.read_bytes()).hexdigest()}


def test_an_unreadable_input_stops_before_compute_naming_it(tmp_path, monkeypatch, capsys):
    from flows.cli import main
    from tasks import content

    folder = tmp_path / "corpus"
    folder.mkdir()
    (folder / "a.txt").write_text("text\n")
    real_open = open

    def deny(path, *args, **kwargs):
        if str(path).endswith("a.txt"):
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(content, "open", deny, raising=False)
    code = main(["run", "--workspace", str(tmp_path / "ws"), "--set", f"corpus.source={folder}"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and f"{folder / 'a.txt'}: cannot read it" in err[0], err
    assert not (tmp_path / "ws" / "artifacts").exists() or not list((tmp_path / "ws" / "artifacts").rglob("*.partial"))


# Section digests of configs/micro.yaml (+ an ablation) as recorded when gpt/ was restructured into
# subpackages; that refactor changed none of them, so a workspace written before it is reused whole.
# Moved on purpose since: corpus (the unwrap_lines field), pretrain (version 4, compile resolved at
# planning), finetune (version 6): fused AdamW and the LM loss over the padded width.
STABLE_SECTIONS = {
    "corpus": "f659840c77847fdd",
    "tokenizer": "8b1a2e2e01f5028d",
    "encode": "c9245b3046226a68",
    "pretrain": "50b6f276f0c106b0",
    "finetune[sst2]": "b754a46938b2f2a4",
    "finetune[sst2-no_pretraining]": "f58958e4e2349795",
    "finetune[story_cloze]": "ea89db4f5534ce7d",
    "finetune[story_cloze-no_pretraining]": "17a9bd15b862e1ba",
    "evaluate[sst2]": "db790bfbea65eb21",
    "evaluate[sst2-no_pretraining]": "db790bfbea65eb21",
    "evaluate[story_cloze]": "f8539e8918f348ed",
    "evaluate[story_cloze-no_pretraining]": "f8539e8918f348ed",
}


def test_a_schema_change_does_not_move_keys_unnoticed(tmp_path, monkeypatch):
    """A new config field, a renamed section field or a new default moves every key that hashes it, and
    recomputes finished stages. If that is meant (the stage now computes something else), record the new
    digests here; if not (the field only observes, places, or is derived), give the field its role."""
    import gpt.train.config
    from tasks.placement import visible_gpus

    if visible_gpus():
        pytest.skip("the sections record the device kind; these digests are the CPU ones")
    # `precision: auto` resolves by the CPU's bf16 support; these digests are for a CPU without it
    monkeypatch.setattr(gpt.train.config, "cpu_has_native_bf16", lambda: False)
    cfg = load_config(ROOT / "configs/micro.yaml", ["ablations=[no_pretraining]"])
    digests = {s.name: s.section_digest() for s in build_plan(cfg, tmp_path) if s.kind != "report"}
    assert digests == STABLE_SECTIONS
