"""Resume exactness: a run killed mid-training continues from its last checkpoint and ends where an
uninterrupted run ends (same data order, same dropout RNG stream)."""

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from crash import Crash, CrashAt

from gpt.model.config import ModelConfig
from gpt.train.config import PretrainConfig
from gpt.train.pretrain import LAST_CKPT, RNG_KEY, pretrain

ROOT = Path(__file__).resolve().parents[1]

# The child process: train, and SIGKILL itself right after optimizer step `kill_at` (if given).
CHILD = """
import json, os, signal, sys
from pathlib import Path
import lightning as L
from gpt.train.config import PretrainConfig

from gpt.model.config import ModelConfig
from gpt.train.pretrain import pretrain
args = json.loads(sys.argv[1])

class KillAt(L.Callback):
    def on_train_batch_end(self, trainer, *_):
        if trainer.global_step == args["kill_at"]:
            os.kill(os.getpid(), signal.SIGKILL)

callbacks = [KillAt()] if args["kill_at"] else []
_, result = pretrain(ModelConfig(**args["gpt"]), PretrainConfig(**args["train"]), Path(args["shards"]),
                     Path(args["ckpt"]), seed=0, extra_callbacks=callbacks)
print(json.dumps({"final_val_loss": result.final_val_loss, "resumed_from_step": result.resumed_from_step}))
"""


def _setup(vocab: int, **train):
    """Dropout on, so the RNG state matters; gradient accumulation on, so the data index does too."""
    gcfg = (ModelConfig(n_layer=1, n_head=2, n_embd=32, block_size=16, dropout=0.1)).with_vocab(vocab)
    kw = dict(max_steps=12, batch_size=4, lr=3e-3, warmup_steps=2, val_every=6, val_batches=2, ckpt_every=4)
    tcfg = PretrainConfig(**{**kw, "log_every": 2, **train})
    return gcfg, tcfg


def test_crashed_run_resumes_exactly_with_dropout(shards, tmp_path):
    shard_dir, vocab = shards
    _, straight = pretrain(*_setup(vocab), shard_dir, tmp_path / "a", seed=0)
    with pytest.raises(Crash):
        pretrain(*_setup(vocab), shard_dir, tmp_path / "b", seed=0, extra_callbacks=[CrashAt(10)])
    _, resumed = pretrain(*_setup(vocab), shard_dir, tmp_path / "b", seed=0)
    assert resumed.resumed_from_step == 8  # the last checkpoint before the crash, not step 0
    assert resumed.steps == 12
    assert resumed.initial_val_loss == straight.initial_val_loss
    assert resumed.final_val_loss == pytest.approx(straight.final_val_loss, rel=1e-6)


@pytest.mark.slow
def test_resume_without_rng_state_would_differ(shards, tmp_path):
    """The RNG state in the checkpoint is what makes dropout runs exact (the test above can fail)."""
    shard_dir, vocab = shards
    _, straight = pretrain(*_setup(vocab), shard_dir, tmp_path / "a", seed=0)
    with pytest.raises(Crash):
        pretrain(*_setup(vocab), shard_dir, tmp_path / "b", seed=0, extra_callbacks=[CrashAt(10)])
    last = tmp_path / "b" / LAST_CKPT
    ckpt = torch.load(last, weights_only=True)
    del ckpt[RNG_KEY]
    torch.save(ckpt, last)
    _, resumed = pretrain(*_setup(vocab), shard_dir, tmp_path / "b", seed=0)
    assert resumed.final_val_loss != pytest.approx(straight.final_val_loss, rel=1e-6)


def test_checkpoints_load_with_weights_only_and_keep_last_k(shards, tmp_path):
    shard_dir, vocab = shards
    pretrain(*_setup(vocab, ckpt_keep=2), shard_dir, tmp_path, seed=0)
    names = sorted(p.name for p in tmp_path.glob("*.ckpt"))
    assert names == ["last.ckpt", "step=12.ckpt", "step=8.ckpt"]
    ckpt = torch.load(tmp_path / LAST_CKPT, weights_only=True)  # no arbitrary pickle needed
    assert ckpt["global_step"] == 12 and RNG_KEY in ckpt


def test_gradient_accumulation_resumes_exactly(shards, tmp_path):
    shard_dir, vocab = shards
    setup = _setup(vocab, max_steps=6, val_every=3, ckpt_every=2, tokens_per_step=3 * 4 * 16)
    _, straight = pretrain(*setup, shard_dir, tmp_path / "a", seed=0)
    assert straight.accumulate_grad_batches == 3
    with pytest.raises(Crash):
        pretrain(*setup, shard_dir, tmp_path / "b", seed=0, extra_callbacks=[CrashAt(5)])
    _, resumed = pretrain(*setup, shard_dir, tmp_path / "b", seed=0)
    assert resumed.resumed_from_step == 4 and resumed.steps == 6
    assert resumed.final_val_loss == pytest.approx(straight.final_val_loss, rel=1e-6)


def _child(args: dict) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", CHILD, json.dumps(args)], cwd=ROOT, capture_output=True, text=True, timeout=300
    )


@pytest.mark.slow
def test_sigkilled_process_resumes_exactly(shards, tmp_path):
    """A real SIGKILL of a training process between checkpoints; the rerun ends where a straight run ends."""
    shard_dir, vocab = shards
    gcfg, tcfg = _setup(vocab, max_steps=24, ckpt_every=5, val_every=8)
    base = {"gpt": gcfg.__dict__, "train": tcfg.__dict__, "shards": str(shard_dir)}
    straight = _child({**base, "ckpt": str(tmp_path / "a"), "kill_at": 0})
    assert straight.returncode == 0, straight.stderr[-2000:]
    killed = _child({**base, "ckpt": str(tmp_path / "b"), "kill_at": 13})
    assert killed.returncode == -signal.SIGKILL
    resumed = _child({**base, "ckpt": str(tmp_path / "b"), "kill_at": 0})
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    want = json.loads(straight.stdout.strip().splitlines()[-1])
    got = json.loads(resumed.stdout.strip().splitlines()[-1])
    assert got["resumed_from_step"] == 10
    assert got["final_val_loss"] == pytest.approx(want["final_val_loss"], rel=1e-6)


class Payload:
    """An object a pickle could smuggle in; weights_only loading must refuse to rebuild it."""

    def __reduce__(self):
        return (print, ("arbitrary code ran",))


def test_resume_refuses_a_checkpoint_with_arbitrary_pickle(shards, tmp_path):
    import pickle

    shard_dir, vocab = shards
    tmp_path.mkdir(exist_ok=True)
    torch.save({"global_step": 3, "payload": Payload()}, tmp_path / LAST_CKPT)
    with pytest.raises(pickle.UnpicklingError, match="Weights only load failed"):
        pretrain(*_setup(vocab), shard_dir, tmp_path, seed=0)
