"""Linear probes of h(extract) during pretraining: features, the choice margin, the callback, the config check."""

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from gpt.config.fields import ConfigError
from gpt.config.loader import load_config
from gpt.data.tokenizer import SPLIT_PATTERN, build_encoding
from gpt.downstream.builtin import get_task
from gpt.downstream.probe import ProbeEval, ProbeSet, build_probe_set, extract_features, probe_accuracy
from gpt.downstream.spec import Example
from gpt.downstream.transforms import encode_examples
from gpt.model.config import ModelConfig
from gpt.model.transformer import GPT
from tasks.variants import check_task_inputs


@pytest.fixture(scope="module")
def enc():
    return build_encoding({bytes([i]): i for i in range(256)}, SPLIT_PATTERN)


def tiny_gpt(enc) -> GPT:
    torch.manual_seed(0)
    return GPT(ModelConfig(vocab_size=enc.n_vocab, n_layer=1, n_head=2, n_embd=32, block_size=64, dropout=0.0))


def sentiment_set(enc, n: int, seed: int) -> list:
    """A word that decides the label, among random filler: linearly readable even from random features."""
    rng = np.random.default_rng(seed)
    words = ["cat", "dog", "sun", "map", "pen", "box"]
    examples = []
    for _ in range(n):
        label = int(rng.integers(2))
        filler = " ".join(rng.choice(words, size=3))
        examples.append(Example((f"{filler} {'awful' if label == 0 else 'great'}",), label))
    return encode_examples(examples, "classification", enc, 64)


def test_a_probe_reads_a_label_the_features_carry(enc):
    data = ProbeSet("toy", "classification", sentiment_set(enc, 200, 0), sentiment_set(enc, 100, 1))
    assert probe_accuracy(tiny_gpt(enc), data) > 0.9


def test_multiple_choice_features_are_the_answers_margin(enc):
    examples = [Example(("pick one", "yes", "no"), 0), Example(("pick one", "no", "yes"), 1)]
    encoded = encode_examples(examples, "multiple_choice", enc, 64)
    model = tiny_gpt(enc).eval()
    a, b = extract_features(model, encoded, "multiple_choice")
    assert np.allclose(a, -b, atol=1e-5)  # the same two endings, swapped: the margin flips sign


def test_callback_logs_a_probe_point_per_task(enc, tmp_path):
    logged = {}
    model = tiny_gpt(enc).train()
    sets = [build_probe_set(get_task("sst2"), enc, tmp_path, 40, 64, seed=0)]
    assert len(sets[0].train) == 40 and len(sets[0].dev) == 872
    module = SimpleNamespace(model=model, log=lambda k, v: logged.__setitem__(k, v))
    ProbeEval(sets).on_validation_epoch_end(SimpleNamespace(sanity_checking=False), module)
    assert set(logged) == {"probe/sst2"} and 0.0 <= logged["probe/sst2"] <= 1.0
    assert model.training  # restored


def test_probe_config_is_checked_before_compute():
    check_task_inputs(load_config(None, ["pretrain.probe_tasks=[sst2, story_cloze, mrpc]"]))
    with pytest.raises(ConfigError, match=r"'pretrain\.probe_tasks\[0\]': 'stsb' has no linear-probe form"):
        check_task_inputs(load_config(None, ["pretrain.probe_tasks=[stsb]"]))
    with pytest.raises(ConfigError, match=r"'pretrain\.probe_tasks\[0\]'"):
        check_task_inputs(load_config(None, ["pretrain.probe_tasks=[nope]"]))
