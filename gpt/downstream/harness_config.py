"""The `harness` section: lm-evaluation-harness tasks run on the pretrained model (the `lm_eval` stage)."""

from __future__ import annotations

from dataclasses import dataclass

from gpt.config.fields import Section, at_least, knob, placement


@dataclass
class HarnessConfig(Section):
    """lm-eval's `simple_evaluate` on the pretrained model (and each kept checkpoint fine-tuned from).

    No tasks: no `lm_eval` stage. Metrics land in MLflow as `lm_eval/<task>/<metric>`.
    """

    tasks: list[str] = knob(
        None,
        "lm-eval task names (storycloze_2016 reads gptflow's copy of the data) or YAML tasks of include_path",
        factory=list,
    )
    limit: int | None = knob(None, "examples per task, the first ones (lm-eval's limit); unset: all", check=at_least(1))
    num_fewshot: int = knob(0, "few-shot examples in each prompt", check=at_least(0))
    include_path: str | None = knob(
        None,
        "a folder of lm-eval task YAMLs; the key hashes its files and the local data_files they name",
        role="location",
    )
    batch_size: int = placement(16, "sequences scored per forward pass", check=at_least(1))
