import pytest
import torch

from gpt.data.tokenizer import SPLIT_PATTERN, build_encoding, special_ids, train_bpe
from gpt.downstream.builtin import Example, cap_examples, get_task
from gpt.downstream.transforms import collate, encode_examples, truncate
from gpt.model.config import ModelConfig
from gpt.model.transformer import GPT
from gpt.train.finetune import TaskModel


def encode_example(example, task_type, enc, max_len):
    return encode_examples([example], task_type, enc, max_len)[0]


@pytest.fixture(scope="module")
def enc():
    return build_encoding(train_bpe(["a story about a cat and a dog. " * 20], 280), SPLIT_PATTERN)


def test_truncate_trims_longest_first():
    assert [len(s) for s in truncate([[1] * 10, [2] * 3], 8)] == [5, 3]
    assert [len(s) for s in truncate([[1] * 4, [2] * 4], 6)] == [3, 3]


def test_input_formats(enc):
    ids = special_ids(enc)
    cls = encode_example(Example(("a cat",), 1), "classification", enc, 32).sequences
    assert len(cls) == 1 and cls[0][0] == ids["start"] and cls[0][-1] == ids["extract"]
    ent = encode_example(Example(("a cat", "a dog"), 0), "entailment", enc, 32).sequences[0]
    assert ent.count(ids["delim"]) == 1
    sim = encode_example(Example(("a cat", "a dog"), 0), "similarity", enc, 32).sequences
    assert len(sim) == 2 and sim[0] != sim[1] and sorted(sim[0]) == sorted(sim[1])
    mc = encode_example(Example(("story", "end one", "end two"), 1), "multiple_choice", enc, 32)
    assert len(mc.sequences) == 2 and mc.label == 1
    assert all(s[-1] == ids["extract"] and ids["delim"] in s for s in mc.sequences)


def test_truncation_keeps_extract(enc):
    seq = encode_example(Example(("a cat " * 50, "a dog"), 0), "entailment", enc, 16).sequences[0]
    assert len(seq) == 16 and seq[-1] == special_ids(enc)["extract"]


@pytest.mark.parametrize(
    ("task_type", "n_fields", "outputs"),
    [
        ("classification", 1, 3),
        ("entailment", 2, 2),
        ("similarity", 2, 2),
        ("multiple_choice", 4, 3),
    ],
)
def test_task_model_heads(enc, task_type, n_fields, outputs):
    examples = [Example(tuple(f"a cat {i} " * (j + 1) for j in range(n_fields)), 0) for i in range(3)]
    batch = collate(encode_examples(examples, task_type, enc, 32))
    gpt = GPT(ModelConfig(vocab_size=enc.n_vocab, n_layer=1, n_head=2, n_embd=16, block_size=32, dropout=0.0))
    num = n_fields - 1 if task_type == "multiple_choice" else outputs
    logits, lm_loss = TaskModel(gpt, task_type, num, 0.0)(batch["tokens"], batch["lengths"])
    assert logits.shape == (3, num)
    assert lm_loss.ndim == 0 and torch.isfinite(lm_loss)


def test_padding_does_not_change_outputs(enc):
    gpt = GPT(ModelConfig(vocab_size=enc.n_vocab, n_layer=1, n_head=2, n_embd=16, block_size=32, dropout=0.0))
    model = TaskModel(gpt, "classification", 2, 0.0).eval()
    short = encode_example(Example(("a cat",), 0), "classification", enc, 32)
    long = encode_example(Example(("a cat and a dog and a cat",), 1), "classification", enc, 32)
    alone = model(**{k: v for k, v in collate([short]).items() if k != "labels"})
    padded = model(**{k: v for k, v in collate([short, long]).items() if k != "labels"})
    assert torch.allclose(alone[0][0], padded[0][0], atol=1e-5)


def test_builtin_tasks_load_from_mirror(tmp_path):
    sst = get_task("sst2")
    dev = sst.load("dev", tmp_path)
    assert len(dev) == 872 and {e.label for e in dev} == {0, 1}
    cloze = get_task("story_cloze")
    train, dev = cloze.load("train", tmp_path), cloze.load("dev", tmp_path)
    assert (len(train), len(dev)) == (1497, 374)
    assert not {e.fields for e in train} & {e.fields for e in dev}
    assert all(len(e.fields) == 3 and e.label in (0, 1) for e in dev)
    assert len(cap_examples(train, 10, seed=0)) == 10


@pytest.fixture(scope="module")
def byte_enc():
    """Bytes only, no merges: a character's id is its byte value; eot/start/delim/extract are 256..259."""
    return build_encoding({bytes([i]): i for i in range(256)}, SPLIT_PATTERN)


S, D, X = 257, 258, 259  # start, delim, extract in byte_enc


def test_exact_sequences_of_each_transformation(byte_enc):
    assert special_ids(byte_enc) == {"eot": 256, "start": S, "delim": D, "extract": X}
    ab, cd, ef = [97, 98], [99, 100], [101, 102]
    assert encode_example(Example(("ab",), 1), "classification", byte_enc, 32).sequences == [[S, *ab, X]]
    assert encode_example(Example(("ab", "cd"), 0), "entailment", byte_enc, 32).sequences == [[S, *ab, D, *cd, X]]
    assert encode_example(Example(("ab", "cd"), 0), "similarity", byte_enc, 32).sequences == [
        [S, *ab, D, *cd, X],
        [S, *cd, D, *ab, X],
    ]
    mc = encode_example(Example(("ab", "cd", "ef"), 1), "multiple_choice", byte_enc, 32)
    assert mc.sequences == [[S, *ab, D, *cd, X], [S, *ab, D, *ef, X]] and mc.label == 1
    # special-token text inside the data stays text
    assert encode_example(Example(("<|extract|>",), 0), "classification", byte_enc, 32).sequences[0].count(X) == 1


def test_exact_truncation_trims_longest_segment_first(byte_enc):
    # budget 8 = start + delim + extract + 5 content tokens; "abcdefg" (7) is cut to 3, "xy" (2) kept
    seq = encode_example(Example(("abcdefg", "xy"), 0), "entailment", byte_enc, 8).sequences[0]
    assert seq == [S, 97, 98, 99, D, 120, 121, X]
    both = encode_example(Example(("abcd", "wxyz"), 0), "entailment", byte_enc, 7).sequences[0]
    assert both == [S, 97, 98, D, 119, 120, X]
