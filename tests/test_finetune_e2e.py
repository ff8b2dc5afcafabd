"""End to end, in process (no Prefect): the finetune and evaluate stages of each built-in task type on a tiny GPT."""

import csv
import json

import pytest
import torch

from gpt.config.loader import load_config
from gpt.data.tokenizer import SPLIT_PATTERN, build_encoding, save_tokenizer
from gpt.model.transformer import GPT, save_model
from tasks import evaluate, finetune
from tasks.definition import StageEnv
from tasks.plan import build_plan
from tasks.pretrain import MODEL_DIR

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::DeprecationWarning")

TINY = ["model.n_layer=1", "model.n_head=2", "model.n_embd=16", "model.block_size=64", "model.dropout=0.0"]
QUICK = ["finetune.max_examples=24", "finetune.epochs=1", "finetune.batch_size=8", "finetune.lr=0.001"]


@pytest.fixture(scope="module")
def upstream(tmp_path_factory):
    """A byte-level tokenizer directory and a 'pretrained' (random) tiny model directory."""
    root = tmp_path_factory.mktemp("upstream")
    ranks = {bytes([i]): i for i in range(256)}
    enc = build_encoding(ranks, SPLIT_PATTERN)
    save_tokenizer(enc, ranks, root / "tokenizer")
    cfg = load_config(None, TINY)
    gpt = GPT(cfg.model.with_vocab(enc.n_vocab))
    save_model(gpt, root / "pretrain" / MODEL_DIR)
    return {"tokenizer": root / "tokenizer", "pretrain": root / "pretrain"}


def run_variant(tmp_path, upstream, cfg, variant):
    """Run finetune[variant] then evaluate[variant] the way the pipeline does, returning the evaluate output."""
    stages = {s.name: s for s in build_plan(cfg, tmp_path / "artifacts")}
    ft_stage, ev_stage = stages[f"finetune[{variant}]"], stages[f"evaluate[{variant}]"]
    ft_out, ev_out = tmp_path / "ft", tmp_path / "ev"
    ft_out.mkdir()
    ev_out.mkdir()
    ft_inputs = {name: upstream[name] for name in ft_stage.upstream}
    ft = finetune.compute(ft_stage.section, ft_inputs, ft_out, StageEnv(ft_stage.name, None, None, tmp_path / "cache"))
    assert ft.summary["steps"] == 3 and ft.summary["train_examples"] == 24
    ev_inputs = {ft_stage.name: ft_out, "tokenizer": upstream["tokenizer"]}
    ev = evaluate.compute(ev_stage.section, ev_inputs, ev_out, StageEnv(ev_stage.name, None, None, tmp_path / "cache"))
    with open(ev_out / evaluate.PREDICTIONS_FILE, newline="") as f:
        assert len(list(csv.DictReader(f))) == 24 == ev.summary["examples"]
    return ev, ev_out


@pytest.mark.parametrize(
    ("task", "metrics", "classes"),
    [
        ("sst2", {"accuracy"}, ["negative", "positive"]),  # classification
        ("rte", {"accuracy"}, ["entailment", "not_entailment"]),  # entailment
        ("mrpc", {"f1", "accuracy"}, ["not_paraphrase", "paraphrase"]),  # similarity, classes
        ("stsb", {"pearson", "spearman"}, None),  # similarity, regression
        ("story_cloze", {"accuracy"}, ["ending_1", "ending_2"]),  # multiple choice
    ],
)
def test_finetune_and_evaluate_each_task_type(tmp_path, upstream, task, metrics, classes):
    cfg = load_config(None, [*TINY, *QUICK, f"finetune.tasks=[{task}]"])
    ev, out = run_variant(tmp_path, upstream, cfg, task)
    assert metrics <= set(ev.summary)
    for m in metrics:
        assert -1.0 <= ev.summary[m] <= 1.0
    if classes:
        confusion = json.loads((out / evaluate.CONFUSION_FILE).read_text())
        assert confusion["labels"] == classes
        assert sum(map(sum, confusion["matrix"])) == 24
        assert "majority_rate" in ev.summary
    else:
        assert not (out / evaluate.CONFUSION_FILE).exists()


def test_no_pretraining_variant_needs_no_pretrained_model(tmp_path, upstream):
    cfg = load_config(None, [*TINY, *QUICK, "finetune.tasks=[sst2]", "ablations=[no_pretraining]"])
    ev, _ = run_variant(tmp_path, {"tokenizer": upstream["tokenizer"]}, cfg, "sst2-no_pretraining")
    assert 0.0 <= ev.summary["accuracy"] <= 1.0


def test_init_from_a_model_directory_with_a_smaller_vocabulary(tmp_path, upstream):
    """Like an `import-hf` directory: the model lacks the special tokens, so its embedding grows."""
    cfg = load_config(None, TINY)
    small = GPT(cfg.model.with_vocab(200))
    save_model(small, tmp_path / "imported")
    cfg = load_config(None, [*TINY, *QUICK, "finetune.tasks=[rte]", f"finetune.init={tmp_path / 'imported'}"])
    stages = {s.name: s for s in build_plan(cfg, tmp_path / "artifacts")}
    assert stages["finetune[rte]"].upstream == ["tokenizer"]
    ev, _ = run_variant(tmp_path, {"tokenizer": upstream["tokenizer"]}, cfg, "rte")
    assert 0.0 <= ev.summary["accuracy"] <= 1.0


def test_finetune_is_a_function_of_its_inputs_and_seed_not_the_global_rng(tmp_path, upstream):
    """What drew from the process-global torch RNG before the stage (pretraining in process, another
    stage on the same worker) must not change the task head's init, hence the fine-tuned weights."""
    from safetensors.torch import load_file

    cfg = load_config(None, [*TINY, *QUICK, "finetune.tasks=[sst2]"])
    weights = []
    for global_seed in (1, 2):
        (tmp_path / str(global_seed)).mkdir()
        torch.manual_seed(global_seed)
        run_variant(tmp_path / str(global_seed), upstream, cfg, "sst2")
        weights.append(load_file(tmp_path / str(global_seed) / "ft" / finetune.TASK_MODEL_DIR / "model.safetensors"))
    assert weights[0].keys() == weights[1].keys()
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])


def test_story_cloze_test_file_is_scored_as_test_accuracy(tmp_path, upstream):
    """GPT-1's Table 3 number: accuracy on the labelled 2016 test set, besides dev on the held-out val stories."""
    header = "InputStoryid,InputSentence1,InputSentence2,InputSentence3,InputSentence4,"
    header += "RandomFifthSentenceQuiz1,RandomFifthSentenceQuiz2,AnswerRightEnding\n"
    rows = "".join(f"id{i},A{i}.,B{i}.,C{i}.,D{i}.,Good {i}.,Bad {i}.,{1 + i % 2}\n" for i in range(6))
    (tmp_path / "cloze_test.csv").write_text(header + rows)
    test = f"builtin_tasks={{story_cloze: {{test: {tmp_path / 'cloze_test.csv'}}}}}"
    cfg = load_config(None, [*TINY, *QUICK, "finetune.tasks=[story_cloze]", test])
    ev, out = run_variant(tmp_path, upstream, cfg, "story_cloze")
    assert ev.summary["test_examples"] == 6 and 0.0 <= ev.summary["test_accuracy"] <= 1.0
    assert 0.0 <= ev.summary["accuracy"] <= 1.0 and ev.summary["examples"] == 24  # dev: the val stories
    with open(out / "predictions_test.csv", newline="") as f:
        assert sorted(row["label"] for row in csv.DictReader(f)) == ["0", "0", "0", "1", "1", "1"]  # shuffled
