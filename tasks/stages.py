"""Every stage kind of the pipeline, in execution order: adding a kind means adding its definition here."""

from __future__ import annotations

from tasks import corpus, encode, evaluate, finetune, pretrain, report, tokenizer
from tasks.definition import StageDef

DEFINITIONS: tuple[StageDef, ...] = (
    corpus.DEFINITION,
    tokenizer.DEFINITION,
    encode.DEFINITION,
    pretrain.DEFINITION,
    finetune.DEFINITION,
    evaluate.DEFINITION,
    report.DEFINITION,
)
BY_KIND: dict[str, StageDef] = {d.kind: d for d in DEFINITIONS}
VERSIONS: dict[str, str] = {d.kind: d.version for d in DEFINITIONS}
STAGE_KINDS: tuple[str, ...] = tuple(BY_KIND)
