"""gptflow's ML library: a GPT-1-style model, its data, training and downstream tasks; no Prefect, no MLflow.

The names a notebook needs are importable from here; they load on first use, so `import gpt` (and
the planner, which imports only configs) never pays for torch or tiktoken::

    import gpt
    model = gpt.load_model("workspace/.../pretrain-.../model")    # a directory `save_model` wrote
    enc = gpt.load_tokenizer("workspace/.../pretrain-.../model")  # the model dir holds its tokenizer
    ids = gpt.generate(model, enc.encode_ordinary("The "), 40, temperature=0.8, top_k=40)
    print(enc.decode(ids))
    clf = gpt.load_task_model("workspace/.../finetune-.../task_model")

Where each job lives: `gpt.config` (fields, the experiment config, the YAML loader), `gpt.model`
(the GPT, generation, Hugging Face conversion), `gpt.data` (sources, corpus, tokenizer, shards,
LM windows), `gpt.train` (optimizer, callbacks, pretraining and fine-tuning), `gpt.downstream`
(task specs, built-ins, hub and custom tasks, input transformations, metrics, zero-shot scoring).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from gpt.config.experiment import ExperimentConfig
    from gpt.config.loader import load_config
    from gpt.data.tokenizer import load_tokenizer
    from gpt.model.config import ModelConfig
    from gpt.model.generate import generate
    from gpt.model.hf import from_hf
    from gpt.model.transformer import GPT, load_model, save_model
    from gpt.train.finetune import TaskModel, load_task_model

_PUBLIC = {
    "GPT": "gpt.model.transformer",
    "ModelConfig": "gpt.model.config",
    "load_model": "gpt.model.transformer",
    "save_model": "gpt.model.transformer",
    "generate": "gpt.model.generate",
    "from_hf": "gpt.model.hf",
    "load_tokenizer": "gpt.data.tokenizer",
    "TaskModel": "gpt.train.finetune",
    "load_task_model": "gpt.train.finetune",
    "ExperimentConfig": "gpt.config.experiment",
    "load_config": "gpt.config.loader",
}
__all__ = [
    "GPT",
    "ExperimentConfig",
    "ModelConfig",
    "TaskModel",
    "from_hf",
    "generate",
    "load_config",
    "load_model",
    "load_task_model",
    "load_tokenizer",
    "save_model",
]


def __getattr__(name: str) -> Any:
    """Import a public name's module on first use (PEP 562)."""
    if name in _PUBLIC:
        return getattr(importlib.import_module(_PUBLIC[name]), name)
    raise AttributeError(f"module 'gpt' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_PUBLIC])
