"""The pyfunc model every registered gptflow model runs (MLflow "models from code": this file is copied into it).

`predict` takes a list of strings: prompts for a pretrained GPT (it returns greedy continuations),
or texts for a fine-tuned task model, fields joined by `|||` (it returns {label, probabilities}).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import mlflow.models
from mlflow.pyfunc import PythonModel

if TYPE_CHECKING:
    from gpt.model.transformer import GPT
    from gpt.train.finetune import TaskModel


class GPTflowModel(PythonModel):
    """A pretrained GPT or a fine-tuned task model, with the tokenizer it was trained with."""

    def load_context(self, context: Any) -> None:
        from gpt.data.tokenizer import load_tokenizer

        self.enc = load_tokenizer(context.artifacts["tokenizer"])
        model_dir = Path(context.artifacts["model"])
        self.is_task = (model_dir / "task_model.json").is_file()
        self.model: TaskModel | GPT
        if self.is_task:
            from gpt.train.finetune import load_task_model

            self.model = load_task_model(model_dir)
        else:
            from gpt.model.transformer import load_model

            self.model = load_model(model_dir)

    def predict(self, context: Any, model_input: list[str], params: dict[str, Any] | None = None) -> list:
        from gpt.model.transformer import GPT
        from tasks.registry import classify

        if not isinstance(self.model, GPT):  # a fine-tuned task model (`is_task`)
            return classify(self.model, self.enc, [[f.strip() for f in t.split("|||")] for t in model_input])
        from gpt.model.generate import generate

        n = int((params or {}).get("max_new_tokens", 32))
        prompts = [self.enc.encode_ordinary(t) for t in model_input]
        return [self.enc.decode(generate(self.model, p, n, temperature=0)) for p in prompts]


mlflow.models.set_model(GPTflowModel())
