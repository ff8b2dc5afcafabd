"""MLflow Model Registry: pretrained and fine-tuned models, each logged with its tokenizer.

Names: `<experiment>-pretrained` and `<experiment>-<task>`. Every registered version carries its
score as tags; `@latest` is MLflow's built-in alias for the newest version, and gptflow moves the
alias `best` to the best score (lowest pretraining val loss, highest task metric). A logged model
is an MLflow pyfunc whose artifacts are the gptflow model directory and the tokenizer directory,
so `models:/NAME@ALIAS` alone is enough to generate or classify. Logging uses
`mlflow.pyfunc.save_model` with explicit pip requirements: `mlflow.pytorch` costs ~9 s to import
and requirement inference ~11 s (STACK-NOTES).
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import TYPE_CHECKING, Any

import mlflow.pyfunc
from mlflow.exceptions import MlflowException
from mlflow.models import Model
from mlflow.tracking import MlflowClient

from gpt.config.fields import ConfigError
from tasks.evaluate import EvaluateSection
from tasks.finetune import TASK_MODEL_DIR
from tasks.pretrain_job import MODEL_DIR
from tasks.stage import Stage

if TYPE_CHECKING:
    import tiktoken

    from gpt.train.finetune import TaskModel

MODEL_ARTIFACT = "registered_model"  # artifact path of the logged pyfunc model inside the stage run
LATEST, BEST = "latest", "best"
PYFUNC_CODE = Path(__file__).with_name("pyfunc_model.py")
REQUIREMENTS = ("torch", "tiktoken", "safetensors", "numpy", "mlflow")


class RegistryError(ConfigError):
    """A model reference that cannot be resolved; the message names it."""


def classify(model: TaskModel, enc: tiktoken.Encoding, inputs: list[list[str]]) -> list[dict[str, Any]]:
    """Class probabilities (or, for a regression head, the score) of a TaskModel for raw inputs."""
    from gpt.downstream.builtin import Example
    from gpt.downstream.transforms import encode_examples
    from gpt.train.finetune import predict

    examples = [Example(tuple(fields), 0) for fields in inputs]
    encoded = encode_examples(examples, model.task_type, enc, model.gpt.config.block_size)
    logits = predict(model, encoded)
    if getattr(model, "regression", False):
        return [{"score": float(x[0])} for x in logits]
    probs = logits.softmax(-1)
    return [{"label": int(p.argmax()), "probabilities": [round(float(x), 4) for x in p]} for p in probs]


def _requirements() -> list[str]:
    out = []
    for name in REQUIREMENTS:
        try:
            out.append(f"{name}=={version(name).split('+')[0]}")
        except PackageNotFoundError:
            out.append(name)
    return out


@dataclass
class Registered:
    """One registered model version and the aliases it holds now."""

    name: str
    version: str
    aliases: list[str]


def register_model(
    client: MlflowClient,
    name: str,
    run_id: str,
    model_dir: Path,
    tokenizer_dir: Path,
    score: tuple[str, float, bool],
) -> Registered:
    """Log model + tokenizer as a pyfunc model in `run_id`, register it as a new version of `name`.

    `score` is (metric name, value, higher is better); `best` moves to this version when it beats the
    version holding `best` now.
    """
    metric, value, higher = score
    with tempfile.TemporaryDirectory(prefix="gptflow-model-") as tmp:
        bundle = Path(tmp) / "model"  # the model dir with the tokenizer files beside the weights
        shutil.copytree(model_dir, bundle)
        for f in tokenizer_dir.iterdir():
            if f.is_file() and not (bundle / f.name).exists():
                shutil.copy2(f, bundle / f.name)
        local = Path(tmp) / MODEL_ARTIFACT
        mlflow.pyfunc.save_model(
            str(local),
            python_model=str(PYFUNC_CODE),  # MLflow "models from code": no pickled objects
            artifacts={"model": str(bundle), "tokenizer": str(tokenizer_dir)},
            pip_requirements=_requirements(),
        )
        client.log_artifacts(run_id, str(local), MODEL_ARTIFACT)
    try:
        client.create_registered_model(name, description="gptflow model with its tokenizer (pyfunc)")
    except MlflowException as e:
        if e.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
    source = f"{client.get_run(run_id).info.artifact_uri}/{MODEL_ARTIFACT}"
    tags = {"metric": metric, "metric_value": repr(value), "higher_is_better": str(higher).lower()}
    mv = client.create_model_version(name, source, run_id=run_id, tags=tags)
    aliases = [LATEST]  # MLflow reserves `latest`: it always resolves to the newest version
    try:
        best = client.get_model_version_by_alias(name, BEST)
        best_value = float(best.tags.get("metric_value", "nan"))
        better = value > best_value if higher else value < best_value
        better = better or best_value != best_value  # NaN: no score recorded
    except MlflowException:
        better = True
    if better:
        client.set_registered_model_alias(name, BEST, mv.version)
        aliases.append(BEST)
    return Registered(name, str(mv.version), aliases)


def register_stage_model(
    client: MlflowClient, experiment: str, stage: Stage, run_id: str, cached: bool
) -> Registered | None:
    """Pipeline hook after a stage whose definition registers: the pretrained model after a computed
    `pretrain`, and the fine-tuned model (scored by its task metric) after a computed `evaluate[task]`."""
    if cached:
        return None
    if stage.variant is not None and stage.variant.ablation:  # not the experiment's model; seeds compete for `best`
        return None
    summary = stage.manifest().get("summary", {})
    task = stage.variant.task if stage.variant is not None else ""
    tokenizer = next(u.dir for u in stage.upstream_stages if u.kind == "tokenizer")
    if stage.kind == "pretrain":
        value = float(summary.get("final_val_loss", float("nan")))
        score = ("final_val_loss", value, False)
        return register_model(client, f"{experiment}-pretrained", run_id, stage.dir / MODEL_DIR, tokenizer, score)
    from gpt.downstream.builtin import get_task
    from gpt.downstream.metrics import HIGHER_IS_BETTER

    section = stage.section
    assert isinstance(section, EvaluateSection), stage.name  # only evaluate and pretrain register
    metric = get_task(task, section.task.custom()).metric
    finetune = next(u.dir for u in stage.upstream_stages if u.kind == "finetune")
    return register_model(
        client,
        f"{experiment}-{task}",
        run_id,
        finetune / TASK_MODEL_DIR,
        tokenizer,
        (metric, float(summary.get(metric, float("nan"))), HIGHER_IS_BETTER.get(metric, True)),
    )


def resolve_model_uri(uri: str, tracking_uri: str | None = None) -> tuple[Path, Path]:
    """(model dir, tokenizer dir) of `models:/NAME@ALIAS`, `models:/NAME/VERSION` or a local pyfunc model dir.

    Registry models are downloaded (a local store's files are used in place). Raises RegistryError
    naming the reference when it does not resolve.
    """
    if not uri.startswith("models:/"):
        local = Path(uri)
        if not (local / "MLmodel").is_file():
            raise RegistryError(f"model {uri!r}: not a models:/ URI and not a directory with an MLmodel file")
        return _model_paths(local, uri)
    from mlflow.artifacts import download_artifacts

    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    body = uri.removeprefix("models:/")
    try:
        if "@" in body:
            name, alias = body.split("@", 1)
            mv = client.get_model_version_by_alias(name, alias)
        else:
            name, _, ver = body.partition("/")
            mv = client.get_model_version(name, ver)
    except MlflowException as e:
        raise RegistryError(f"model {uri!r} not found in the registry at {client.tracking_uri}: {e.message}") from None
    return _model_paths(Path(download_artifacts(artifact_uri=mv.source, tracking_uri=client.tracking_uri)), uri)


def _model_paths(local: Path, uri: str) -> tuple[Path, Path]:
    # save_model copies each artifact under artifacts/<basename>; MLmodel records where each key went.
    paths = Model.load(str(local)).flavors.get("python_function", {}).get("artifacts", {})
    if not {"model", "tokenizer"} <= set(paths):
        raise RegistryError(f"model {uri!r} is not a gptflow model: no model/tokenizer artifacts")
    return local / paths["model"]["path"], local / paths["tokenizer"]["path"]


def predict_text(uri: str, task: str, fields: list[str], tracking_uri: str | None = None) -> dict[str, Any]:
    """Classify one input (its text fields in the task's order) with a registered fine-tuned model.

    Returns {"label": name, "probabilities": {name: p}}; label names come from the task when known.
    """
    from gpt.data.tokenizer import load_tokenizer
    from gpt.downstream.builtin import get_task
    from gpt.train.finetune import load_task_model

    model_dir, tok_dir = resolve_model_uri(uri, tracking_uri)
    if not (model_dir / "task_model.json").is_file():
        raise RegistryError(f"model {uri!r} is a pretrained model, not a fine-tuned one; use `gptflow generate`")
    try:
        spec = get_task(task)
    except KeyError as e:
        raise RegistryError(f"--task {task!r}: {e.args[0]}") from None
    model = load_task_model(model_dir)
    if model.task_type != spec.type:
        raise RegistryError(f"model {uri!r} was fine-tuned for a {model.task_type} task, not {task} ({spec.type})")
    (result,) = classify(model, load_tokenizer(tok_dir), [fields])
    if "score" in result:  # a regression task (STS-B-like): the predicted score
        return {"label": f"{result['score']:.3f}", "probabilities": {}}
    probs = result["probabilities"]
    names = list(spec.label_names) if len(spec.label_names) == len(probs) else [str(i) for i in range(len(probs))]
    return {"label": names[result["label"]], "probabilities": dict(zip(names, probs, strict=True))}
