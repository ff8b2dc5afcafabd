"""Every stage kind of the pipeline, in execution order: adding a kind means adding its definition here."""

from __future__ import annotations

from typing import Any

from tasks import corpus, encode, evaluate, finetune, lm_eval, pretrain, report, tokenizer
from tasks.definition import StageDef

# Any: each kind has its own section type; a Stage pairs a definition with a section of that type.
DEFINITIONS: tuple[StageDef[Any], ...] = (
    corpus.DEFINITION,
    tokenizer.DEFINITION,
    encode.DEFINITION,
    pretrain.DEFINITION,
    finetune.DEFINITION,
    evaluate.DEFINITION,
    lm_eval.DEFINITION,
    report.DEFINITION,
)
BY_KIND: dict[str, StageDef[Any]] = {d.kind: d for d in DEFINITIONS}
VERSIONS: dict[str, str] = {d.kind: d.version for d in DEFINITIONS}
STAGE_KINDS: tuple[str, ...] = tuple(BY_KIND)
