"""Gate rules, written as users write them: "toy_judge >= 1", "clip >= 0.26", "aesthetic > 5.5".

    rules = parse_rules(["toy_judge >= 1"], scorers=["toy_judge"])   # ConfigError naming the bad one
    failed(rules, {"toy_judge": 0.5})                                  # -> ["toy_judge >= 1"]

The grammar is `<scorer> <op> <number>`: a scorer name, one of `>= > <= <`, and a decimal number
(sign, fraction and exponent allowed; not nan or inf). It is matched by one regular expression and
nothing is ever evaluated. A rule on a score that is missing (the scorer failed on that image) does
not hold: the gate cannot vouch for what it could not measure.
"""

from __future__ import annotations

import math
import operator
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from pipeline.config_schema import SCORERS, ConfigError

OPS = {">=": operator.ge, ">": operator.gt, "<=": operator.le, "<": operator.lt}
_NUMBER = r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?"
_RULE = re.compile(rf"\s*([A-Za-z_][A-Za-z0-9_]*)\s*(>=|<=|>|<)\s*({_NUMBER})\s*")
_LOOSE = re.compile(r"\s*([A-Za-z_][A-Za-z0-9_]*)\s*([=!<>]+)\s*(\S.*?)\s*")  # to say what is wrong
EXAMPLE = "write '<scorer> <op> <number>', e.g. 'toy_judge >= 1' or 'clip >= 0.26'"


@dataclass(frozen=True)
class Rule:
    scorer: str
    op: str
    threshold: float
    text: str  # "scorer op number", as the figures and the metadata name the rule

    def holds(self, value: Any) -> bool:
        return _finite(value) and OPS[self.op](float(value), self.threshold)

    def margin(self, value: Any) -> float:
        """How far the value lies on the passing side of the threshold (negative: the failing side)."""
        if not _finite(value):
            return -math.inf
        return float(value) - self.threshold if self.op in (">=", ">") else self.threshold - float(value)


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def parse_rule(text: Any, known: Iterable[str] = SCORERS) -> Rule:
    """One rule; ValueError saying what is wrong and how to write it."""
    if not isinstance(text, str):
        raise ValueError(f"a rule is text, not {type(text).__name__}; {EXAMPLE}")
    m = _RULE.fullmatch(text)
    if m is None:
        loose = _LOOSE.fullmatch(text)
        if loose is None:
            raise ValueError(f"not a rule; {EXAMPLE}")
        _, op, number = loose.groups()
        if op not in OPS:
            raise ValueError(f"operator {op!r} is not one of {', '.join(OPS)}; {EXAMPLE}")
        raise ValueError(f"threshold {number!r} is not a number; {EXAMPLE}")
    scorer, op, number = m.groups()
    known = tuple(known)
    if scorer not in known:
        raise ValueError(f"unknown scorer {scorer!r}; choose from {', '.join(known)}")
    return Rule(scorer, op, float(number), f"{scorer} {op} {number}")


def parse_rules(texts: list[Any], scorers: list[str], key: str = "gate.rules") -> list[Rule]:
    """Every rule of the config, each on a scorer the run computes (scoring.scorers)."""
    rules = []
    for i, text in enumerate(texts):
        try:
            rule = parse_rule(text)
        except ValueError as e:
            raise ConfigError(f"{key}[{i}]={text!r}: {e}") from None
        if rule.scorer not in scorers:
            raise ConfigError(f"{key}[{i}]={text!r}: scorer {rule.scorer!r} is not computed by this run; add it "
                              f"to scoring.scorers (now {list(scorers)})")
        rules.append(rule)
    texts_seen = [r.text for r in rules]
    if len(set(texts_seen)) != len(texts_seen):
        raise ConfigError(f"{key}={list(texts)} names a rule twice")
    return rules


def failed(rules: list[Rule], scores: dict[str, Any] | None) -> list[str]:
    """The rules one image's scores fail (their texts, in rule order); [] means it passes."""
    scores = scores or {}
    return [r.text for r in rules if not r.holds(scores.get(r.scorer))]


def best(rules: list[Rule], tries_scores: list[dict[str, Any] | None]) -> int:
    """Index of the best of some tries (gate.on_fail=best): the one that passes most rules; among
    those, the one furthest past the first rule's threshold; the earliest on a tie."""
    def key(i: int) -> tuple:
        s = tries_scores[i] or {}
        return (-len(failed(rules, s)), rules[0].margin(s.get(rules[0].scorer)), -i)

    return max(range(len(tries_scores)), key=key)
