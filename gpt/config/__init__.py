"""The experiment config: fields that document and check themselves, composed from each component's section.

`fields` holds the building blocks (`knob`, checks, roles, `Section`), `experiment` composes the
sections into `ExperimentConfig`, `loader` reads YAML and `--set` overrides into it, and `reference`
lists every key for `gptflow config`. Each section is defined next to the code it configures
(`gpt.model.config`, `gpt.data.config`, `gpt.train.config`, `gpt.downstream.config`).
"""
