"""Claims: what an experiment is meant to show, written as comparisons of variants of one task.

    claims:
      - sst2: pretrained > no_pretraining
      - story_cloze: aux_lm >= no_aux_lm

An arm is the full recipe (`recipe`, or the names a claim reads best with: `pretrained`, `aux_lm`)
or one of the run's `ablations`. `>` claims the left arm scores higher on the task's headline
metric; `>=` that it scores no lower. Verdicts are decided over fine-tuning seeds in reports/claims.py.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from gpt.config.fields import FieldError

RECIPE_ARMS = ("recipe", "pretrained", "aux_lm")  # every name of the full recipe (no ablation)
COMPARISONS = (">=", ">", "<=", "<")
CLAIM = re.compile(r"^\s*(?P<left>[a-z0-9_]+)\s*(?P<op>>=|<=|>|<)\s*(?P<right>[a-z0-9_]+)\s*$")


@dataclass(frozen=True)
class Claim:
    """`task: left op right`; an arm is None for the recipe, else an ablation's name."""

    task: str
    left: str | None
    op: str
    right: str | None
    text: str  # as written, `sst2: pretrained > no_pretraining`

    @staticmethod
    def arm_name(arm: str | None) -> str:
        """How an arm is shown: `recipe` or the ablation."""
        return arm or "recipe"


def parse_claim(index: int, item: Any, ablations: list[str]) -> Claim:
    """One `- task: left op right` entry; FieldError names `claims[index]` and what is wrong."""
    key = f"claims[{index}]"
    if not (isinstance(item, dict) and len(item) == 1):
        raise FieldError(key, f"must be one 'task: arm > arm' line, got {item!r}")
    ((task, text),) = item.items()
    m = CLAIM.match(str(text))
    if not m:
        raise FieldError(key, f"must read '<arm> > <arm>' (or >=, <, <=), got {text!r}")

    def arm(name: str) -> str | None:
        if name in RECIPE_ARMS:
            return None
        if name not in ablations:
            known = ", ".join([*RECIPE_ARMS, *ablations])
            raise FieldError(
                key, f"names arm {name!r}, which this run does not have (arms: {known}; add it to ablations)"
            )
        return name

    left, right = arm(m["left"]), arm(m["right"])
    if left == right:
        raise FieldError(key, f"compares an arm with itself: {text!r}")
    return Claim(str(task), left, m["op"], right, f"{task}: {m['left']} {m['op']} {m['right']}")
