"""Which lm-evaluation-harness tasks gptflow can run, and where their data comes from offline.

An lm-eval task is named as lm-eval names it (`storycloze_2016`, `lambada_openai`) or is a YAML task in the
config's `harness.include_path` folder. Tasks whose hub data set cannot be fetched by script (Story Cloze is
distributed by request, as CSV files) read gptflow's copy of the data instead: lm-eval's own task config
(prompt, choices, metrics) with its `dataset_path` pointed at the local CSV and the CSV's columns renamed to
the hub's field names, so the task is lm-eval's, unchanged, on the same stories.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gpt.data.sources import CATALOG, RemoteFile, fetch

# lm-eval's Story Cloze fields, from the CSV columns of the 2016 val/test files.
STORY_CLOZE_FIELDS = {
    "InputSentence1": "input_sentence_1",
    "InputSentence2": "input_sentence_2",
    "InputSentence3": "input_sentence_3",
    "InputSentence4": "input_sentence_4",
    "RandomFifthSentenceQuiz1": "sentence_quiz1",
    "RandomFifthSentenceQuiz2": "sentence_quiz2",
    "AnswerRightEnding": "answer_right_ending",
}


@dataclass(frozen=True)
class MirroredTask:
    """An lm-eval task whose data gptflow supplies: the catalog file of its split and its column renames."""

    split: str  # the lm-eval split the file is (validation | test)
    remote: RemoteFile
    fields: dict[str, str]


MIRRORED: dict[str, MirroredTask] = {
    "storycloze_2016": MirroredTask("validation", CATALOG["story_cloze/val"][0], STORY_CLOZE_FIELDS),
}


class HarnessTaskError(ValueError):
    """An lm-eval task gptflow cannot resolve (unknown name, missing YAML)."""


@functools.cache
def task_manager(include_path: str | None = None) -> Any:
    """lm-eval's TaskManager, indexing its own tasks and the YAML tasks of `include_path` (built once)."""
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=include_path)


def check_harness_task(name: str, include_path: str | None) -> None:
    """HarnessTaskError when lm-eval (with `include_path`) has no task of that name."""
    if name in MIRRORED:
        return
    if name not in task_manager(include_path).all_tasks:
        where = f" or in {include_path}" if include_path else " (give a folder of YAML tasks in harness.include_path)"
        raise HarnessTaskError(f"lm-eval has no task {name!r}{where}")


LOCAL_BUILDERS = ("json", "csv", "text", "parquet", "arrow")  # datasets' builders of local data_files


def task_yaml(name: str, include_path: str | None) -> dict[str, Any] | None:
    """The raw YAML config of task `name` (no `!function` resolved), or None for a group, tag or Python task."""
    from lm_eval.tasks._yaml_loader import load_yaml

    entry = task_manager(include_path).task_index.get(name)
    if entry is None or entry.yaml_path is None:
        return None
    return load_yaml(entry.yaml_path, resolve_func=False)


def data_files_of(config: dict[str, Any]) -> list[str]:
    """The `dataset_kwargs.data_files` a task config names, flattened (a string, a list or a split dict)."""
    files = (config.get("dataset_kwargs") or {}).get("data_files")
    if isinstance(files, dict):
        files = list(files.values())
    flat: list[str] = []
    for f in files if isinstance(files, list) else [files] if files else []:
        flat.extend(f if isinstance(f, list) else [f])
    return [str(f) for f in flat]


def local_data_files(root: Path) -> list[Path]:
    """Local files named by the `dataset_kwargs.data_files` of the YAML tasks under `root`."""
    from lm_eval.tasks._yaml_loader import load_yaml

    out = []
    for path in sorted(root.rglob("*.yaml")):
        config = load_yaml(path, resolve_func=False)
        out += [Path(f).expanduser() for f in data_files_of(config) if "://" not in f]
    return [p.resolve() for p in out if p.is_file()]


def check_harness_data(name: str, include_path: str | None, timeout: float = 5.0) -> None:
    """HarnessTaskError when task `name`'s data is neither local, nor in the Hugging Face cache, nor reachable."""
    if name in MIRRORED:
        return
    config = task_yaml(name, include_path)
    if config is None or not config.get("dataset_path"):
        return  # a group or tag (its tasks are checked when lm-eval builds them) or a Python task
    dataset = str(config["dataset_path"])
    if dataset in LOCAL_BUILDERS or Path(dataset).expanduser().exists():
        missing = [f for f in data_files_of(config) if "://" not in f and not Path(f).expanduser().is_file()]
        if missing:
            raise HarnessTaskError(f"lm-eval task {name!r} reads {missing[0]}, which does not exist")
        return
    if _hub_cached(dataset) or _hub_reachable(dataset, timeout):
        return
    raise HarnessTaskError(
        f"lm-eval task {name!r} reads the hub data set {dataset!r}, which is not cached and the hub is not "
        f"reachable; gptflow supplies the data of {', '.join(MIRRORED)}, or point a YAML task in "
        "harness.include_path at local files"
    )


def _hub_cached(dataset: str) -> bool:
    from datasets import config

    return (Path(config.HF_DATASETS_CACHE) / dataset.replace("/", "___")).exists() or (
        Path(config.HF_CACHE_HOME) / "hub" / f"datasets--{dataset.replace('/', '--')}"
    ).exists()


def _hub_reachable(dataset: str, timeout: float) -> bool:
    from huggingface_hub import HfApi

    try:
        HfApi().dataset_info(dataset, timeout=timeout)
    except Exception:  # offline, unknown or gated: lm-eval could not load it either
        return False
    return True


def harness_task_specs(names: list[str], cache_dir: Path, include_path: str | None) -> tuple[list[Any], Any]:
    """What `simple_evaluate` is given: each task as a name or (mirrored tasks) a config dict, and the manager."""
    manager = task_manager(include_path)
    specs: list[Any] = [mirrored_config(n, manager, cache_dir) if n in MIRRORED else n for n in names]
    return specs, manager


def mirrored_config(name: str, manager: Any, cache_dir: Path) -> dict[str, Any]:
    """lm-eval's config of task `name`, reading gptflow's copy of its data (`MIRRORED`)."""
    from lm_eval.tasks._yaml_loader import load_yaml

    mirror = MIRRORED[name]
    config = dict(load_yaml(manager.task_index[name].yaml_path, resolve_func=True))
    path = fetch(mirror.remote, cache_dir)
    config.update(
        dataset_path="csv",
        dataset_name=None,
        dataset_kwargs={"data_files": {mirror.split: str(path)}},
        validation_split=mirror.split if mirror.split == "validation" else None,
        test_split=mirror.split if mirror.split == "test" else None,
        process_docs=_renamer(mirror.fields),
    )
    config.pop("tag", None)
    return config


def _renamer(fields: dict[str, str]) -> Callable[[Any], Any]:
    def process_docs(dataset: Any) -> Any:
        return dataset.rename_columns({k: v for k, v in fields.items() if k in dataset.column_names})

    return process_docs
