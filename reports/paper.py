"""GPT-1's published results (Radford et al. 2018, Tables 2-4), the number each task is compared against."""

from __future__ import annotations

# task -> (metric names that mean the paper's metric, value in points); MNLI's mismatched split as its own task.
PAPER: dict[str, tuple[tuple[str, ...], float]] = {
    "sst2": (("accuracy",), 91.3),
    "rte": (("accuracy",), 56.0),
    "mrpc": (("f1",), 82.3),
    "stsb": (("pearson", "pearson_corr", "pearsonr"), 82.0),
    "story_cloze": (("accuracy",), 86.5),
    "cola": (("matthews", "mcc", "matthews_corr", "matthews_corrcoef"), 45.4),
    "mnli": (("accuracy", "accuracy_matched"), 82.1),
    "mnli_mm": (("accuracy",), 81.4),
    "mnli_mismatched": (("accuracy",), 81.4),
    "qnli": (("accuracy",), 88.1),
    "qqp": (("f1",), 70.3),
    "snli": (("accuracy",), 89.9),
    "scitail": (("accuracy",), 88.3),
    "race": (("accuracy",), 59.0),
}


def paper_number(task: str, metric: str) -> float | None:
    """GPT-1's number for this task and metric (in points), or None when the paper has none.

    A `test_<metric>` (a labelled test split, e.g. Story Cloze's 2016 test set) gets the same number:
    the paper's are test-set results.
    """
    metric = metric.removeprefix("test_")
    if task == "mnli" and metric in ("accuracy_mm", "accuracy_mismatched"):
        return PAPER["mnli_mm"][1]
    entry = PAPER.get(task)
    return entry[1] if entry and metric in entry[0] else None
