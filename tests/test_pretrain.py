import lightning as L
import pytest
import torch

from gpt.data.tokenizer import SPLIT_PATTERN, build_encoding, train_bpe
from gpt.model.config import ModelConfig
from gpt.train.config import PretrainConfig
from gpt.train.pretrain import LAST_CKPT, accumulation, pretrain


def _setup(vocab: int, norm: str = "post", **train):
    model = ModelConfig(n_layer=1, n_head=2, n_embd=32, block_size=16, dropout=0.0, norm=norm, pad_vocab_to=64)
    gcfg = model.with_vocab(vocab)
    kw = dict(max_steps=12, batch_size=4, lr=3e-3, warmup_steps=2, val_every=6, val_batches=2, ckpt_every=4)
    return gcfg, PretrainConfig(**{**kw, "log_every": 2, **train})


@pytest.mark.parametrize(("norm", "schedule"), [("post", "cosine"), ("pre", "linear")])
def test_loss_goes_down(shards, tmp_path, norm, schedule):
    shard_dir, vocab = shards
    _, result = pretrain(*_setup(vocab, norm, schedule=schedule), shard_dir, tmp_path / "ckpt", seed=0)
    assert result.steps == 12
    assert result.final_val_loss < result.initial_val_loss
    assert result.tokens_per_sec > 0 and 0 < result.mfu < 1
    assert (tmp_path / "ckpt" / LAST_CKPT).is_file()


class PoisonAt(L.Callback):
    """Makes the loss NaN from optimizer step `step` on, as a diverged run would."""

    def __init__(self, step: int):
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, *_):
        if trainer.global_step == self.step:
            with torch.no_grad():
                pl_module.model.wte.weight.fill_(float("nan"))


def test_nan_loss_stops_naming_the_step_and_keeps_the_good_checkpoint(shards, tmp_path):
    shard_dir, vocab = shards
    with pytest.raises(FloatingPointError) as err:
        pretrain(*_setup(vocab), shard_dir, tmp_path, seed=0, extra_callbacks=[PoisonAt(7)])
    message = str(err.value)  # the 8th step is the first bad one; it would also have been checkpointed
    assert "non-finite loss" in message and "step 8" in message and "\n" not in message
    ckpt = torch.load(tmp_path / LAST_CKPT, weights_only=True)
    assert ckpt["global_step"] == 4
    assert all(torch.isfinite(t).all() for t in ckpt["state_dict"].values())


def test_accumulation_reaches_tokens_per_step():
    assert accumulation(PretrainConfig(batch_size=8), 64) == 1
    assert accumulation(PretrainConfig(batch_size=8, tokens_per_step=8 * 64 * 4), 64) == 4
    assert accumulation(PretrainConfig(batch_size=8, tokens_per_step=8 * 64 * 4), 64, world_size=2) == 2
    assert accumulation(PretrainConfig(batch_size=8, tokens_per_step=8 * 64 * 4), 64, world_size=4) == 1
    assert accumulation(PretrainConfig(batch_size=8, tokens_per_step=100), 64) == 1


@pytest.mark.slow  # ~15 s: a fresh MLflow SQLite store
def test_samples_are_logged_to_mlflow_at_each_validation(shards, tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)  # MLFlowLogger sets it; don't leak it to other tests
    from mlflow.tracking import MlflowClient

    from gpt.train.samples import SampleCallback
    from tasks.mlflow_logger import stage_logger

    shard_dir, vocab = shards
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    exp = client.create_experiment("e", artifact_location=(tmp_path / "art").as_uri())
    run_id = client.create_run(exp).info.run_id
    docs = [f"Once upon a time, story {i} told of a king and a cat who lived by the sea." * 8 for i in range(40)]
    enc = build_encoding(train_bpe(docs, 300), SPLIT_PATTERN)
    logger = stage_logger(uri, run_id)
    callbacks = [
        SampleCallback(enc, 8, 0, lambda step, text: client.log_text(run_id, text, f"samples/step_{step:07d}.txt"))
    ]
    pretrain(
        *_setup(vocab),
        shard_dir,
        tmp_path / "ckpt",
        seed=0,
        logger=logger,
        extra_callbacks=callbacks,
    )
    names = sorted(a.path for a in client.list_artifacts(run_id, "samples"))
    assert names == ["samples/step_0000000.txt", "samples/step_0000006.txt", "samples/step_0000012.txt"]
    metrics = client.get_run(run_id).data.metrics
    assert {"train_loss", "val_loss"} <= set(metrics)
    assert any(k.startswith("lr-AdamW") for k in metrics) and any(k.endswith("mfu") for k in metrics)
