"""lm-evaluation-harness on gptflow's GPT: the adapter's scores, the task checks, and the metrics' names."""

from __future__ import annotations

import math
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from gpt.config.fields import ConfigError
from gpt.config.loader import load_config
from gpt.data.tokenizer import SPLIT_PATTERN, build_encoding
from gpt.downstream.harness import HarnessLM, score_continuations, split_pair
from gpt.model.config import ModelConfig
from gpt.model.transformer import GPT
from tasks.lm_eval import check_harness, metrics_of

MICRO = Path(__file__).resolve().parents[1] / "configs" / "micro.yaml"


@pytest.fixture(scope="module")
def enc():
    return build_encoding({bytes([i]): i for i in range(256)}, SPLIT_PATTERN)


@pytest.fixture(scope="module")
def model(enc):
    torch.manual_seed(0)
    return GPT(ModelConfig(vocab_size=enc.n_vocab, n_layer=1, n_head=2, n_embd=32, block_size=16, dropout=0.0)).eval()


def brute_logprob(model, tokens: list[int], start: int) -> float:
    """log p(tokens[start:] | tokens[:start]) one token at a time, each with the most context the block allows."""
    block = model.config.block_size
    total = 0.0
    for i in range(start, len(tokens)):
        ctx = tokens[max(0, i - block) : i]
        with torch.no_grad():
            logits = model(torch.tensor([ctx]))[0, -1]
        total += float(F.log_softmax(logits.float(), -1)[tokens[i]])
    return total


def test_trailing_spaces_of_the_context_move_to_the_continuation(enc):
    context, continuation = split_pair(enc, "The end is ", "near")
    assert enc.decode(context) == "The end is" and enc.decode(continuation) == " near"


def test_scores_match_token_by_token_log_likelihoods(enc, model):
    pairs = [split_pair(enc, c, x) for c, x in [("ab", " cd"), ("hello", " friend"), ("x", " yz w")]]
    scored = score_continuations(model, pairs, batch_size=2)
    for (c, x), (total, _) in zip(pairs, scored, strict=True):
        assert total == pytest.approx(brute_logprob(model, c + x, len(c)), abs=1e-4)


def test_a_context_longer_than_the_block_is_cut_from_the_left(enc, model):
    context, continuation = split_pair(enc, "a long context of many bytes", " ok")
    ((total, _),) = score_continuations(model, [(context, continuation)])
    kept = (context + continuation)[-(model.config.block_size + 1) :]
    assert total == pytest.approx(brute_logprob(model, kept, len(kept) - len(continuation)), abs=1e-4)


def test_greedy_is_true_exactly_for_the_argmax_continuation(enc, model):
    context = enc.encode_ordinary("abc")
    best = int(model(torch.tensor([context]))[0, -1].argmax())
    other = (best + 1) % 256
    (_, greedy), (_, not_greedy) = score_continuations(model, [(context, [best]), (context, [other])])
    assert greedy and not not_greedy


def test_rolling_log_likelihood_scores_every_token_once(enc, model):
    lm = HarnessLM(model, enc, batch_size=4)
    text = "a text longer than one block of sixteen bytes"  # 45 bytes: three windows
    (rolling,) = lm.loglikelihood_rolling([SimpleNamespace(args=(text,))])
    tokens = [lm.eot, *enc.encode_ordinary(text)]
    # each window keeps as much context as fits: brute force with the same windows' contexts
    step, expected = model.config.block_size, 0.0
    for lo in range(1, len(tokens), step):
        chunk = tokens[lo : lo + step]
        ctx = tokens[:lo][-(model.config.block_size + 1 - len(chunk)) :]
        expected += brute_logprob(model, ctx + chunk, len(ctx))
    assert rolling == pytest.approx(expected, abs=1e-3)
    assert math.isfinite(rolling) and rolling < 0


def test_generation_stops_at_the_until_string(enc, model):
    lm = HarnessLM(model, enc)
    (full,) = lm.generate_until([SimpleNamespace(args=("ab", {"until": [], "max_gen_toks": 8}))])
    assert len(full.encode()) <= 8 * 4
    if len(full) > 2:
        cut = full[1:2]
        (short,) = lm.generate_until([SimpleNamespace(args=("ab", {"until": [cut], "max_gen_toks": 8}))])
        assert short == full[: full.find(cut)]


def test_metric_names_drop_the_default_filter_and_stderr_strings():
    results = {"storycloze_2016": {"alias": "x", "acc,none": 0.5, "acc_stderr,none": "N/A", "acc_norm,none": 0.6}}
    assert metrics_of(results) == {"lm_eval/storycloze_2016/acc": 0.5, "lm_eval/storycloze_2016/acc_norm": 0.6}


def test_unknown_task_and_unreachable_data_name_the_key(tmp_path, monkeypatch):
    import gpt.downstream.harness_tasks as harness_tasks

    monkeypatch.setattr(harness_tasks, "_hub_reachable", lambda dataset, timeout: False)  # as offline, here or in CI
    cfg = load_config(MICRO, ["harness.tasks=[storycloze_2016, not_a_task]"])
    with pytest.raises(ConfigError, match=r"harness.tasks\[1\].*no task 'not_a_task'"):
        check_harness(cfg)
    cfg = load_config(MICRO, ["harness.tasks=[lambada_openai]"])
    with pytest.raises(ConfigError, match=r"harness.tasks\[0\].*not cached and the hub is not reachable"):
        check_harness(cfg)
    cfg = load_config(MICRO, [f"harness.include_path={tmp_path / 'nope'}", "harness.tasks=[x]"])
    with pytest.raises(ConfigError, match="harness.include_path.*not a folder"):
        check_harness(cfg)


def test_the_key_holds_the_content_of_include_path_and_its_data_files(tmp_path):
    tasks_dir, data = tmp_path / "lm_tasks", tmp_path / "data.jsonl"
    tasks_dir.mkdir()
    data.write_text('{"context": "a", "choices": [" b", " c"], "label": 0}\n')
    yaml_file = tasks_dir / "tiny.yaml"
    yaml_file.write_text(f"task: tiny\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {data}\n")
    cfg = load_config(MICRO, [f"harness.include_path={tasks_dir}", "harness.tasks=[tiny]"])

    def digest() -> str:
        return digest_of(cfg, tmp_path)

    first = digest()
    moved = tmp_path / "elsewhere"
    shutil.copytree(tasks_dir, moved)
    assert digest_of(load_config(MICRO, [f"harness.include_path={moved}", "harness.tasks=[tiny]"]), tmp_path) == first
    data.write_text('{"context": "a", "choices": [" b", " c"], "label": 1}\n')  # the data file, outside the folder
    second = digest()
    yaml_file.write_text(yaml_file.read_text() + "num_fewshot: 0\n")
    assert len({first, second, digest()}) == 3


def digest_of(cfg, tmp_path: Path) -> str:
    """The section digest of the `lm_eval` stage `cfg` plans."""
    from tasks.plan import build_plan

    (stage,) = [s for s in build_plan(cfg, tmp_path / "artifacts") if s.name == "lm_eval"]
    return stage.section_digest()
