"""Fine-tuning tasks loaded from the Hugging Face hub with `datasets`: CoLA, MNLI, QNLI, QQP, SNLI, SciTail, RACE.

A mirror may serve a hub split as `<mirror>/hf/<dataset id>/<config>/<split>.jsonl` or `.parquet`
(rows as the hub gives them); that is how they are tested offline. Otherwise `datasets` fetches them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gpt.data.sources import SourceError, hf_mirror_files, hf_offline_hint
from gpt.downstream.spec import Example, TaskSpec, TaskType

GLUE = "nyu-mll/glue"


@dataclass(frozen=True)
class HubSource:
    """Where a task's splits live on the hub and how one row becomes an Example (None: unlabelled, skipped)."""

    dataset: str
    config: str | None
    splits: dict[str, str]  # our split name -> the hub's
    to_example: Callable[[dict[str, Any]], Example | None]
    revision: str | None = None  # pin a commit for reproducible downloads

    def load(self, split: str, cache_dir: Path) -> list[Example]:
        """The examples of one of our splits (train / dev / test), from the mirror if it has them."""
        import datasets

        source = f"hf://{self.dataset}{'/' + self.config if self.config else ''}?split={self.splits[split]}"
        mirrored = hf_mirror_files(source)
        hf_cache = str(cache_dir / "hf_datasets")
        try:
            if mirrored:
                builder = "parquet" if mirrored[0].suffix == ".parquet" else "json"
                files = [str(p) for p in mirrored]
                rows = datasets.load_dataset(builder, data_files=files, split="train", cache_dir=hf_cache)
            else:
                rows = datasets.load_dataset(
                    self.dataset, self.config, split=self.splits[split], revision=self.revision, cache_dir=hf_cache
                )
        except OSError as e:  # offline, no network, unknown data set or revision
            raise SourceError(f"cannot load {source} ({type(e).__name__}: {e}); {hf_offline_hint(source)}") from None
        return [e for e in map(self.to_example, rows) if e is not None]


def _pair(first: str, second: str) -> Callable[[dict[str, Any]], Example | None]:
    """Two text columns and an integer label; -1 (GLUE/SNLI's "no gold label") is skipped."""
    return lambda r: Example((r[first].strip(), r[second].strip()), int(r["label"])) if r["label"] >= 0 else None


def _cola(row: dict[str, Any]) -> Example | None:
    return Example((row["sentence"].strip(),), int(row["label"])) if row["label"] >= 0 else None


def _scitail(row: dict[str, Any]) -> Example:
    return Example((row["premise"].strip(), row["hypothesis"].strip()), ("entails", "neutral").index(row["label"]))


def _race(row: dict[str, Any]) -> Example:
    context = f"{row['article'].strip()} {row['question'].strip()}"
    return Example((context, *(o.strip() for o in row["options"])), "ABCD".index(row["answer"]))


def _spec(
    name: str,
    type_: TaskType,
    num_outputs: int,
    metrics: tuple[str, ...],
    source: HubSource,
    label_names: tuple[str, ...],
) -> TaskSpec:
    return TaskSpec(
        name,
        type_,
        num_outputs,
        metrics,
        source.load,
        label_names=label_names,
        splits=tuple(source.splits),
    )


_NLI3 = ("entailment", "neutral", "contradiction")
_GLUE_SPLITS = {"train": "train", "dev": "validation"}

HUB_TASKS: dict[str, TaskSpec] = {
    "cola": _spec(
        "cola", "classification", 2, ("matthews", "accuracy"), HubSource(GLUE, "cola", _GLUE_SPLITS, _cola),
        ("unacceptable", "acceptable"),
    ),
    "mnli": _spec(
        "mnli", "entailment", 3, ("accuracy",),
        HubSource(GLUE, "mnli", {"train": "train", "dev": "validation_matched"}, _pair("premise", "hypothesis")),
        _NLI3,
    ),
    "qnli": _spec(
        "qnli", "entailment", 2, ("accuracy",), HubSource(GLUE, "qnli", _GLUE_SPLITS, _pair("question", "sentence")),
        ("entailment", "not_entailment"),
    ),
    "qqp": _spec(
        "qqp", "similarity", 2, ("f1", "accuracy"),
        HubSource(GLUE, "qqp", _GLUE_SPLITS, _pair("question1", "question2")),
        ("not_duplicate", "duplicate"),
    ),
    "snli": _spec(
        "snli", "entailment", 3, ("accuracy",),
        HubSource("stanfordnlp/snli", None, {"train": "train", "dev": "validation", "test": "test"},
                  _pair("premise", "hypothesis")),
        _NLI3,
    ),
    "scitail": _spec(
        "scitail", "entailment", 2, ("accuracy",),
        HubSource("allenai/scitail", "tsv_format", {"train": "train", "dev": "validation", "test": "test"}, _scitail),
        ("entails", "neutral"),
    ),
    "race": _spec(
        "race", "multiple_choice", 4, ("accuracy",),
        HubSource("ehovy/race", "all", {"train": "train", "dev": "validation", "test": "test"}, _race),
        ("A", "B", "C", "D"),
    ),
}  # fmt: skip
